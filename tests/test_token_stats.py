"""token_stats against a float64 reference written here, on both the torch and the Triton path."""
import math

import pytest
import torch

from infogain_kernels import token_stats, use_backend

NEG_INF = float("-inf")


def expected_stats(logits: torch.Tensor):
    """Plain float64 definition: softmax, -sum p log p, sorted probabilities, lowest argmax."""
    x = logits.double()
    p = torch.softmax(x, dim=-1)
    log_p = torch.log_softmax(x, dim=-1)
    entropy = -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(-1)
    ordered = p.sort(dim=-1, descending=True).values
    top1 = ordered[..., 0]
    top2 = ordered[..., 1] if p.shape[-1] > 1 else torch.zeros_like(top1)
    column = torch.arange(p.shape[-1]).expand_as(p)
    top1_id = torch.where(p == top1.unsqueeze(-1), column, p.shape[-1]).min(-1).values
    return entropy, top1, top1_id, top2


def assert_stats_match(got, logits, mask=None, *, atol=2e-5, rtol=1e-5):
    got, logits = [t.cpu() for t in got], logits.cpu()
    mask = mask.cpu() if mask is not None else None
    entropy, top1, top1_id, top2 = got
    lead_shape = logits.shape[:-1]
    for t in got:
        assert t.shape == lead_shape
    assert entropy.dtype == top1.dtype == top2.dtype == torch.float32
    assert top1_id.dtype == torch.int64
    if mask is None:
        mask = torch.ones(lead_shape, dtype=torch.bool)
    want = expected_stats(logits)
    torch.testing.assert_close(entropy[mask].double(), want[0][mask], atol=atol, rtol=rtol)
    torch.testing.assert_close(top1[mask].double(), want[1][mask], atol=atol, rtol=rtol)
    torch.testing.assert_close(top2[mask].double(), want[3][mask], atol=atol, rtol=rtol)
    assert torch.equal(top1_id[mask], want[2][mask])
    skipped = ~mask
    assert torch.all(entropy[skipped] == 0) and torch.all(top1[skipped] == 0)
    assert torch.all(top2[skipped] == 0) and torch.all(top1_id[skipped] == -1)


def random_logits(*shape, scale=3.0, seed=0, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator) * scale).to(device)


@pytest.mark.parametrize("shape", [(4, 1), (3, 7), (2, 3, 1000), (1, 1000), (1000,), (2, 50257)])
def test_matches_float64_definition(backend_device, shape):
    logits = random_logits(*shape, device=backend_device)
    assert_stats_match(token_stats(logits), logits)


def test_llada_vocabulary_width_reference():
    logits = random_logits(2, 126464, scale=5.0)
    with use_backend("reference"):
        assert_stats_match(token_stats(logits), logits)


def test_neg_inf_entries(backend_device):
    logits = random_logits(5, 300, device=backend_device)
    logits[0, :299] = NEG_INF  # a single finite token: entropy 0, probability 1
    logits[1, ::3] = NEG_INF
    logits[2, 150:] = NEG_INF
    logits[3, :1] = NEG_INF
    got = token_stats(logits)
    assert_stats_match(got, logits)
    assert got[0][0] == 0 and got[1][0] == 1 and got[2][0] == 299 and got[3][0] == 0


@pytest.mark.parametrize("config", [{"block": 16, "splits": 1}, {"block": 16, "splits": 4}], ids=["unsplit", "split"])
def test_many_chunks_with_inf_and_max_in_late_chunk(triton_interpreted, monkeypatch, config):
    """Small chunk width: the online rescaling runs many times, across all -inf chunks; split rows
    combine partial states whose maxima differ."""
    from infogain_kernels import _entropy_triton

    monkeypatch.setattr(_entropy_triton, "_FORCE_CONFIG", config)
    logits = random_logits(4, 203)
    logits[0, :64] = NEG_INF
    logits[1, 190] = 40.0
    logits[2, 100:] = NEG_INF
    logits[3, 17] = logits[3, 170] = 30.0  # tie across chunks: lowest index wins
    with use_backend("triton"):
        got = token_stats(logits.to(triton_interpreted))
    assert_stats_match(tuple(t.cpu() for t in got), logits)
    assert got[2][3] == 17


def test_ties_take_lowest_index_and_top2_equals_top1(backend_device):
    logits = torch.zeros(3, 10)
    logits[0, [2, 5, 9]] = 1.0
    logits[1] = 0.0  # uniform
    logits[2, 9] = 2.0
    entropy, top1, top1_id, top2 = (t.cpu() for t in token_stats(logits.to(backend_device)))
    assert top1_id.tolist() == [2, 0, 9]
    assert top2[0] == top1[0] and top2[1] == top1[1]
    assert math.isclose(float(entropy[1]), math.log(10), rel_tol=1e-6)


def test_single_token_vocabulary(backend_device):
    logits = random_logits(6, 1, device=backend_device)
    entropy, top1, top1_id, top2 = token_stats(logits)
    assert torch.all(entropy == 0) and torch.all(top1 == 1) and torch.all(top1_id == 0) and torch.all(top2 == 0)


@pytest.mark.parametrize("view", ["leading_slice", "leading_transpose", "vocab_stride", "transposed_2d"])
def test_non_contiguous_views(backend_device, view):
    base = random_logits(4, 6, 130, device=backend_device)
    logits = {
        "leading_slice": base[1:, ::2],
        "leading_transpose": base.transpose(0, 1),
        "vocab_stride": base[..., ::3],
        "transposed_2d": base[0].t().contiguous().t(),
    }[view]
    assert not logits.is_contiguous()
    mask = (torch.rand(logits.shape[:-1], generator=torch.Generator().manual_seed(1)) > 0.4).to(backend_device)
    assert_stats_match(token_stats(logits), logits)
    assert_stats_match(token_stats(logits, mask), logits, mask)


@pytest.mark.parametrize("mask_kind", ["all_true", "all_false", "random"])
def test_mask(backend_device, mask_kind):
    logits = random_logits(3, 5, 64, device=backend_device)
    mask = {
        "all_true": torch.ones(3, 5, dtype=torch.bool),
        "all_false": torch.zeros(3, 5, dtype=torch.bool),
        "random": torch.rand(3, 5, generator=torch.Generator().manual_seed(2)) > 0.5,
    }[mask_kind].to(backend_device)
    assert_stats_match(token_stats(logits, mask), logits, mask)


def test_skipped_rows_are_not_read(backend_device):
    """A skipped row full of NaN would raise if it were read."""
    logits = random_logits(4, 50, device=backend_device)
    logits[1] = float("nan")
    logits[3] = NEG_INF
    mask = torch.tensor([True, False, True, False], device=backend_device)
    assert_stats_match(token_stats(logits, mask), logits, mask)


def test_empty_leading_shape(backend_device):
    logits = torch.empty(0, 3, 10, device=backend_device)
    got = token_stats(logits)
    assert [t.shape for t in got] == [torch.Size([0, 3])] * 4


@pytest.mark.parametrize("dtype,atol", [(torch.bfloat16, 2e-5), (torch.float16, 2e-5)])
def test_half_precision_reference(dtype, atol):
    """Half inputs are accumulated in float32: compare against float64 of the same rounded values."""
    logits = random_logits(3, 4, 5000, scale=4.0).to(dtype)
    logits[0, 0, :100] = NEG_INF
    mask = torch.rand(3, 4, generator=torch.Generator().manual_seed(3)) > 0.3
    with use_backend("reference"):
        assert_stats_match(token_stats(logits, mask), logits, mask, atol=atol, rtol=1e-4)


def test_large_logits_keep_precision(backend_device):
    """Shifting by the row max keeps entropy accurate when logits are far from 0."""
    logits = random_logits(3, 500, device=backend_device) + 1000.0
    assert_stats_match(token_stats(logits), logits)


# ---- bad inputs ------------------------------------------------------------------------------

def test_nan_raises(backend_device):
    logits = random_logits(2, 3, 40, device=backend_device)
    logits[1, 2, 7] = float("nan")
    with pytest.raises(ValueError, match=r"logits row at position \(1, 2\) contains NaN"):
        token_stats(logits)


def test_all_neg_inf_row_raises(backend_device):
    logits = random_logits(2, 3, 40, device=backend_device)
    logits[0, 1] = NEG_INF
    with pytest.raises(ValueError, match=r"logits row at position \(0, 1\) is entirely -inf"):
        token_stats(logits)


def test_check_values_false_flags_bad_rows_without_raising(backend_device):
    logits = random_logits(2, 3, 40, device=backend_device)
    logits[1, 2, 7] = float("nan")
    logits[0, 1] = NEG_INF
    entropy, _, _, _ = token_stats(logits, check_values=False)
    finite = torch.isfinite(entropy).cpu()
    assert not finite[1, 2] and not finite[0, 1]
    assert int(finite.sum()) == finite.numel() - 2
    # Good rows are unaffected by the flag: the same statistics as the checked call on them.
    good = torch.ones(2, 3, dtype=torch.bool, device=backend_device)
    good[1, 2] = good[0, 1] = False
    checked = token_stats(logits, good)
    unchecked = token_stats(logits, good, check_values=False)
    for a, b in zip(checked, unchecked):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"\(0, 1\) is entirely -inf"):
        token_stats(logits)  # the default still checks (and names the first bad row)


def test_check_values_must_be_a_bool():
    with pytest.raises(TypeError, match="check_values"):
        token_stats(random_logits(2, 5), check_values=torch.tensor(True))


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64, torch.bool])
def test_wrong_dtype_raises(dtype):
    with pytest.raises(TypeError, match="logits must have dtype"):
        token_stats(torch.zeros(2, 5, dtype=dtype))


def test_not_a_tensor_raises():
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        token_stats([[0.0, 1.0]])


def test_scalar_and_empty_vocabulary_raise():
    with pytest.raises(ValueError, match="logits must have at least 1 dimension"):
        token_stats(torch.tensor(1.0))
    with pytest.raises(ValueError, match="logits must have a non-empty last dimension"):
        token_stats(torch.zeros(3, 0))


def test_bad_mask_raises():
    logits = random_logits(3, 4, 10)
    with pytest.raises(ValueError, match=r"mask must have shape \(3, 4\)"):
        token_stats(logits, torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must have dtype"):
        token_stats(logits, torch.ones(3, 4))


def test_mixed_devices_raise():
    logits = random_logits(3, 10)
    with pytest.raises(ValueError, match="mask is on meta"):
        token_stats(logits, torch.ones(3, dtype=torch.bool, device="meta"))


# ---- torch.library registration ----------------------------------------------------------------

def test_traces_as_the_step_stats_op():
    """token_stats is step_stats without draws: under FakeTensorMode and torch.compile it is the one
    custom op ``infogain::step_stats``."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = mode.from_tensor(torch.empty(5, 2, 9, dtype=torch.bfloat16))
        entropy, top1, top1_id, top2 = token_stats(fake, check_values=False)
    assert entropy.shape == top1_id.shape == (5, 2)
    assert entropy.dtype == top2.dtype == top1.dtype == torch.float32 and top1_id.dtype == torch.int64
    logits = random_logits(3, 33)
    compiled = torch.compile(lambda x: token_stats(x, check_values=False), backend="aot_eager", fullgraph=True)
    with use_backend("reference"):
        assert_stats_match(compiled(logits), logits)


# ---- GPU lane --------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("vocab", [126464, 152064, 151936, 50257, 7])
def test_cuda_real_vocabularies(dtype, vocab):
    logits = random_logits(8, 33, vocab, scale=4.0).to(dtype)
    logits[0, 0, : vocab // 2] = NEG_INF
    mask = torch.rand(8, 33, generator=torch.Generator().manual_seed(4)) > 0.25
    got = token_stats(logits.cuda(), mask.cuda())
    assert_stats_match([t.cpu() for t in got], logits, mask, atol=5e-5, rtol=1e-4)
    got_all = token_stats(logits.cuda().transpose(0, 1))
    assert_stats_match([t.cpu() for t in got_all], logits.transpose(0, 1), atol=5e-5, rtol=1e-4)


@pytest.mark.gpu
def test_cuda_large_shape_matches_reference():
    logits = random_logits(2048, 126464, scale=4.0, seed=5).to(torch.bfloat16)
    on_gpu = token_stats(logits.cuda())
    with use_backend("reference"):
        on_cpu = token_stats(logits)
    for got, want in zip(on_gpu, on_cpu):
        torch.testing.assert_close(got.cpu(), want, atol=5e-5, rtol=1e-4)


@pytest.mark.gpu
def test_cuda_errors():
    logits = random_logits(4, 1000).cuda()
    logits[2, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        token_stats(logits)
    with pytest.raises(ValueError, match="mask is on cpu"):
        token_stats(logits, torch.ones(4, dtype=torch.bool))
