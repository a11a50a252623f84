"""lookahead_objective against a float64 reference written here, on both the torch and the Triton path."""
import pytest
import torch

from infogain_kernels import lookahead_objective, use_backend

NEG_INF = float("-inf")


def expected_objective(next_logits, remaining, cost, variant):
    """Float64 definition: per-position entropy of softmax, mean over remaining positions (0 if none)."""
    p = torch.softmax(next_logits.double(), dim=-1)
    log_p = torch.log_softmax(next_logits.double(), dim=-1)
    entropy = -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(-1)
    entropy = torch.where(remaining, entropy, torch.zeros_like(entropy))  # NaN rows outside are dropped
    count = remaining.sum(dim=1).double()
    h_next = torch.where(count > 0, entropy.sum(dim=1) / count.clamp(min=1), torch.zeros_like(count))
    objective = -h_next if variant == "lookum" else -cost.double() - h_next
    return objective, h_next


def assert_objective_matches(got, next_logits, remaining, cost, variant, *, atol=2e-5, rtol=1e-5):
    objective, h_next = (t.cpu() for t in got)
    next_logits, remaining = next_logits.cpu(), remaining.cpu()
    cost = cost.cpu() if cost is not None else None
    n_candidates = next_logits.shape[0]
    assert objective.shape == h_next.shape == (n_candidates,)
    assert objective.dtype == h_next.dtype == torch.float32
    want_objective, want_h = expected_objective(next_logits, remaining, cost, variant)
    torch.testing.assert_close(h_next.double(), want_h, atol=atol, rtol=rtol)
    torch.testing.assert_close(objective.double(), want_objective, atol=atol, rtol=rtol)


def random_inputs(n_candidates, n_positions, vocab, *, seed=0, keep_fraction=0.6, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    next_logits = torch.randn(n_candidates, n_positions, vocab, generator=generator) * 3.0
    remaining = torch.rand(n_candidates, n_positions, generator=generator) < keep_fraction
    cost = torch.rand(n_candidates, generator=generator) * 5.0
    return next_logits.to(device), remaining.to(device), cost.to(device)


@pytest.mark.parametrize("variant", ["info_gain", "lookum"])
@pytest.mark.parametrize("shape", [(3, 4, 1), (2, 5, 7), (4, 8, 1000), (1, 1, 1000), (2, 2, 50257)])
def test_matches_float64_definition(backend_device, variant, shape):
    next_logits, remaining, cost = random_inputs(*shape, device=backend_device)
    got = lookahead_objective(next_logits, remaining, cost, variant=variant)
    assert_objective_matches(got, next_logits, remaining, cost, variant)


def test_lookum_needs_no_cost(backend_device):
    next_logits, remaining, _ = random_inputs(3, 4, 30, device=backend_device)
    got = lookahead_objective(next_logits, remaining, variant="lookum")
    assert_objective_matches(got, next_logits, remaining, None, "lookum")
    assert torch.equal(got[0], -got[1])


def test_llada_vocabulary_width_reference():
    next_logits, remaining, cost = random_inputs(2, 2, 126464)
    remaining[:, 0] = True
    with use_backend("reference"):
        got = lookahead_objective(next_logits, remaining, cost)
    assert_objective_matches(got, next_logits, remaining, cost, "info_gain")


@pytest.mark.parametrize("remaining_kind", ["all_true", "all_false", "one_row_empty"])
def test_remaining_masks(backend_device, remaining_kind):
    next_logits, remaining, cost = random_inputs(3, 6, 50, device=backend_device)
    if remaining_kind == "all_true":
        remaining[:] = True
    elif remaining_kind == "all_false":
        remaining[:] = False
    else:
        remaining[1] = False
    got = lookahead_objective(next_logits, remaining, cost)
    assert_objective_matches(got, next_logits, remaining, cost, "info_gain")
    empty_rows = ~remaining.any(dim=1)
    assert torch.all(got[1][empty_rows] == 0)
    assert torch.equal(got[0][empty_rows], -cost[empty_rows])


def test_rows_not_remaining_are_not_read(backend_device):
    """NaN / all -inf rows outside ``remaining`` would raise if they were read."""
    next_logits, remaining, cost = random_inputs(2, 5, 40, device=backend_device)
    remaining[:] = True
    remaining[0, 3] = remaining[1, 0] = False
    next_logits[0, 3] = float("nan")
    next_logits[1, 0] = NEG_INF
    got = lookahead_objective(next_logits, remaining, cost)
    assert_objective_matches(got, next_logits, remaining, cost, "info_gain")


def test_neg_inf_entries(backend_device):
    next_logits, remaining, cost = random_inputs(2, 3, 100, device=backend_device)
    remaining[:] = True
    next_logits[0, 0, 1:] = NEG_INF  # one finite token: entropy 0
    next_logits[1, :, ::2] = NEG_INF
    got = lookahead_objective(next_logits, remaining, cost)
    assert_objective_matches(got, next_logits, remaining, cost, "info_gain")


@pytest.mark.parametrize("config", [{"block": 16, "splits": 1}, {"block": 16, "splits": 5}], ids=["unsplit", "split"])
def test_triton_split_vocabulary_and_window_slice(triton_interpreted, monkeypatch, config):
    """The row pass split over the vocabulary (partial states combined per row) on the sampler's
    lookahead layout: a window slice ``next_logits[:, offset:h_end]`` of a padded canvas."""
    from infogain_kernels import _entropy_triton

    monkeypatch.setattr(_entropy_triton, "_FORCE_CONFIG", config)
    canvas, _, cost = random_inputs(3, 9, 157, seed=4)
    canvas[0, :, :40] = NEG_INF
    canvas[1, 2, 150] = 50.0
    next_logits = canvas[:, 2:7]
    remaining = torch.rand(3, 5, generator=torch.Generator().manual_seed(5)) < 0.7
    with use_backend("triton"):
        got = lookahead_objective(next_logits.to(triton_interpreted), remaining.to(triton_interpreted),
                                  cost.to(triton_interpreted))
    assert_objective_matches(tuple(t.cpu() for t in got), next_logits, remaining, cost, "info_gain")


@pytest.mark.parametrize("view", ["candidate_slice", "position_transpose", "vocab_stride"])
def test_non_contiguous_views(backend_device, view):
    base, _, _ = random_inputs(6, 6, 90, device=backend_device)
    next_logits = {
        "candidate_slice": base[::2],
        "position_transpose": base.transpose(0, 1),
        "vocab_stride": base[..., ::2],
    }[view]
    assert not next_logits.is_contiguous()
    generator = torch.Generator().manual_seed(7)
    remaining = (torch.rand(next_logits.shape[:2], generator=generator) < 0.5).t().contiguous().t()
    cost = torch.rand(next_logits.shape[0] * 2, generator=generator)[::2]
    remaining, cost = remaining.to(backend_device), cost.to(backend_device)
    got = lookahead_objective(next_logits, remaining, cost)
    assert_objective_matches(got, next_logits, remaining, cost, "info_gain")


def test_zero_positions_and_zero_candidates(backend_device):
    on = dict(device=backend_device)
    cost = torch.tensor([1.0, 2.0], **on)
    objective, h_next = lookahead_objective(torch.empty(2, 0, 5, **on), torch.empty(2, 0, dtype=torch.bool, **on), cost)
    assert torch.equal(h_next, torch.zeros(2, **on)) and torch.equal(objective, -cost)
    objective, h_next = lookahead_objective(torch.empty(0, 3, 5, **on), torch.empty(0, 3, dtype=torch.bool, **on),
                                            torch.empty(0, **on))
    assert objective.shape == h_next.shape == (0,)


@pytest.mark.parametrize("cost_dtype", [torch.float64, torch.bfloat16])
def test_cost_dtypes_are_accepted(cost_dtype):
    next_logits, remaining, cost = random_inputs(3, 4, 20)
    cost = cost.to(cost_dtype)
    got = lookahead_objective(next_logits, remaining, cost)
    assert_objective_matches(got, next_logits, remaining, cost.float(), "info_gain")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_reference(dtype):
    next_logits, remaining, cost = random_inputs(3, 5, 3000)
    next_logits = next_logits.to(dtype)
    with use_backend("reference"):
        got = lookahead_objective(next_logits, remaining, cost)
    assert_objective_matches(got, next_logits, remaining, cost, "info_gain", atol=5e-5, rtol=1e-4)


# ---- bad inputs ------------------------------------------------------------------------------

def test_nan_in_remaining_row_raises(backend_device):
    next_logits, remaining, cost = random_inputs(3, 4, 30, device=backend_device)
    remaining[2, 1] = True
    next_logits[2, 1, 5] = float("nan")
    with pytest.raises(ValueError, match=r"next_logits row at position \(2, 1\) contains NaN"):
        lookahead_objective(next_logits, remaining, cost)


def test_all_neg_inf_remaining_row_raises(backend_device):
    next_logits, remaining, cost = random_inputs(3, 4, 30, device=backend_device)
    remaining[0, 3] = True
    next_logits[0, 3] = NEG_INF
    with pytest.raises(ValueError, match=r"next_logits row at position \(0, 3\) is entirely -inf"):
        lookahead_objective(next_logits, remaining, cost, variant="lookum")


def test_non_finite_cost_raises():
    next_logits, remaining, cost = random_inputs(3, 4, 30)
    cost[1] = float("nan")
    with pytest.raises(ValueError, match="cost must be finite.*index 1"):
        lookahead_objective(next_logits, remaining, cost)


def test_check_values_false_flags_bad_candidates_without_raising(backend_device):
    next_logits, remaining, cost = random_inputs(4, 4, 30, device=backend_device)
    remaining[2, 1] = remaining[0, 3] = True
    next_logits[2, 1, 5] = float("nan")
    next_logits[0, 3] = NEG_INF
    cost[3] = float("inf")
    objective, h_next = lookahead_objective(next_logits, remaining, cost, check_values=False)
    assert torch.isfinite(objective).tolist() == [False, True, False, False]
    assert torch.isfinite(h_next).tolist() == [False, True, False, True]
    # A good candidate gets the same value as a checked call on it alone.
    alone = lookahead_objective(next_logits[1:2], remaining[1:2], cost[1:2])
    assert torch.equal(alone[0], objective[1:2]) and torch.equal(alone[1], h_next[1:2])
    with pytest.raises(ValueError, match=r"\(0, 3\) is entirely -inf"):
        lookahead_objective(next_logits, remaining, cost)  # the default still checks


def test_check_values_must_be_a_bool():
    next_logits, remaining, cost = random_inputs(2, 3, 10)
    with pytest.raises(TypeError, match="check_values"):
        lookahead_objective(next_logits, remaining, cost, check_values=None)


@pytest.mark.parametrize("shape", [(4, 30), (2, 3, 4, 30)])
def test_wrong_rank_raises(shape):
    with pytest.raises(ValueError, match="next_logits must have 3 dimensions"):
        lookahead_objective(torch.zeros(shape), torch.ones(shape[:2], dtype=torch.bool), torch.zeros(shape[0]))


def test_wrong_logits_dtype_raises():
    with pytest.raises(TypeError, match="next_logits must have dtype"):
        lookahead_objective(torch.zeros(2, 3, 4, dtype=torch.float64), torch.ones(2, 3, dtype=torch.bool),
                            torch.zeros(2))


def test_bad_remaining_raises():
    next_logits, _, cost = random_inputs(2, 3, 10)
    with pytest.raises(TypeError, match="remaining must have dtype"):
        lookahead_objective(next_logits, torch.ones(2, 3), cost)
    with pytest.raises(ValueError, match=r"remaining must have shape \(2, 3\)"):
        lookahead_objective(next_logits, torch.ones(2, 4, dtype=torch.bool), cost)
    with pytest.raises(ValueError, match="remaining must have 2 dimensions"):
        lookahead_objective(next_logits, torch.ones(6, dtype=torch.bool), cost)


def test_bad_cost_raises():
    next_logits, remaining, _ = random_inputs(2, 3, 10)
    with pytest.raises(ValueError, match="cost is required for variant='info_gain'"):
        lookahead_objective(next_logits, remaining, None)
    with pytest.raises(ValueError, match=r"cost must have shape \(2,\)"):
        lookahead_objective(next_logits, remaining, torch.zeros(3))
    with pytest.raises(ValueError, match="cost must have 1 dimensions"):
        lookahead_objective(next_logits, remaining, torch.zeros(2, 1))
    with pytest.raises(TypeError, match="cost must have dtype"):
        lookahead_objective(next_logits, remaining, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"cost must have shape \(2,\)"):
        lookahead_objective(next_logits, remaining, torch.zeros(3), variant="lookum")


def test_bad_variant_raises():
    next_logits, remaining, cost = random_inputs(2, 3, 10)
    with pytest.raises(ValueError, match="variant must be one of"):
        lookahead_objective(next_logits, remaining, cost, variant="infogain")
    with pytest.raises(TypeError, match="variant must be a str"):
        lookahead_objective(next_logits, remaining, cost, variant=None)


def test_mixed_devices_raise():
    next_logits, remaining, cost = random_inputs(2, 3, 10)
    with pytest.raises(ValueError, match="remaining is on meta"):
        lookahead_objective(next_logits, remaining.to("meta"), cost)
    with pytest.raises(ValueError, match="cost is on meta"):
        lookahead_objective(next_logits, remaining, cost.to("meta"))


# ---- torch.library registration ----------------------------------------------------------------

def test_fake_implementation_and_schema():
    next_logits, remaining, cost = random_inputs(3, 4, 11)
    for args in [(next_logits, remaining, cost, "info_gain"), (next_logits, remaining, None, "lookum")]:
        torch.library.opcheck(torch.ops.infogain.lookahead_objective.default, args,
                              test_utils=("test_schema", "test_faketensor"))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake_logits = mode.from_tensor(torch.empty(8, 32, 64, dtype=torch.bfloat16))
        fake_remaining = mode.from_tensor(torch.empty(8, 32, dtype=torch.bool))
        objective, h_next = torch.ops.infogain.lookahead_objective(fake_logits, fake_remaining, None, "lookum")
    assert objective.shape == h_next.shape == (8,)
    assert objective.dtype == h_next.dtype == torch.float32


def test_compiles_with_fullgraph():
    next_logits, remaining, cost = random_inputs(3, 4, 21)
    compiled = torch.compile(lambda x, r, c: torch.ops.infogain.lookahead_objective(x, r, c, "info_gain"),
                             backend="aot_eager", fullgraph=True)
    with use_backend("reference"):
        got = compiled(next_logits, remaining, cost)
    assert_objective_matches(got, next_logits, remaining, cost, "info_gain")


# ---- GPU lane --------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n_positions,vocab", [(32, 126464), (256, 126464), (32, 152064), (17, 151936)])
def test_cuda_real_shapes(dtype, n_positions, vocab):
    next_logits, remaining, cost = random_inputs(8, n_positions, vocab)
    next_logits = next_logits.to(dtype)
    remaining[3] = False
    for variant in ("info_gain", "lookum"):
        got = lookahead_objective(next_logits.cuda(), remaining.cuda(), cost.cuda(), variant=variant)
        assert_objective_matches([t.cpu() for t in got], next_logits, remaining, cost, variant,
                                 atol=5e-5, rtol=1e-4)


@pytest.mark.gpu
def test_cuda_errors():
    next_logits, remaining, cost = random_inputs(2, 3, 1000)
    remaining[1, 2] = True
    next_logits[1, 2] = NEG_INF
    with pytest.raises(ValueError, match="is entirely -inf"):
        lookahead_objective(next_logits.cuda(), remaining.cuda(), cost.cuda())
    with pytest.raises(ValueError, match="remaining is on cpu"):
        lookahead_objective(next_logits.cuda(), remaining, cost.cuda())
