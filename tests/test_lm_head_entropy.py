"""lm_head_entropy against a float64 definition written here, on the torch path, the native CPU kernel
and the Triton kernels."""
import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from infogain_kernels import lm_head_entropy, lookahead_objective, step_stats, use_backend
from infogain_kernels._backend import _native_available as native_available

head_module = importlib.import_module("infogain_kernels.lm_head_entropy")
# The Triton half (tiles, launcher, kernels); imported lazily by the op, so it needs triton.
kernel_module = importlib.import_module("infogain_kernels._lm_head_triton")

NEG_INF = float("-inf")
# Small tiles and a forced vocabulary split so that the interpreted kernel crosses row tiles, K tiles,
# vocabulary tiles and split boundaries on small shapes.
SMALL_TILES = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 4, "num_stages": 1}


def expected_entropy(hidden, weight, bias=None):
    """Float64 definition: logits rounded to hidden's dtype (as the model's matmul returns them),
    plus the bias, then -sum p log p with p = softmax."""
    logits = (hidden.double() @ weight.double().T).to(hidden.dtype).double()
    if bias is not None:
        logits = logits + bias.double()
    p = torch.softmax(logits, dim=-1)
    log_p = torch.log_softmax(logits, dim=-1)
    return -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(-1)


def random_head(lead, dim, vocab, *, dtype=torch.float32, seed=0, keep_fraction=0.6, with_bias=True,
                exact_products=False, device="cpu"):
    """Random head inputs. ``exact_products``: hidden in {-3..3}/4 and weight in {-7..7}/64 (exact in
    every dtype), so every product is a multiple of 2**-8 of size at most 21/256 and every partial sum
    of a dot product over D < 2**14 terms a multiple of 2**-8 below 2**11 (19 significant bits): exact
    in float32 in any summation order. The kernel's and the reference's logits are then the exact logits
    rounded once to ``dtype`` (no accumulation can straddle a rounding point), and what is left to
    bound is the float32 arithmetic of the entropy (:func:`float32_entropy_bound`). ``device``: where
    the tensors are drawn (the GPU tests' real head shapes are too large to draw on the CPU quickly)."""
    generator = torch.Generator(device).manual_seed(seed)
    on = dict(generator=generator, device=device)
    if exact_products:
        hidden = (torch.randint(-3, 4, (*lead, dim), **on) / 4).to(dtype)
        weight = (torch.randint(-7, 8, (vocab, dim), **on) / 64).to(dtype)
    else:
        hidden = torch.randn(*lead, dim, **on).to(dtype)
        weight = (torch.randn(vocab, dim, **on) * (2.0 / dim ** 0.5)).to(dtype)
    bias = torch.randn(vocab, **on) if with_bias else None
    mask = torch.rand(*lead, **on) < keep_fraction
    return hidden, weight, bias, mask


def float32_entropy_bound(vocab, magnitude):
    """Error bound of an entropy (or a log-probability) of ``magnitude`` nats computed in float32 from
    exact logits: log Z = m + log(sum exp(x - m)) sums V positive terms, in tiles (a tree of at most
    log2(V) levels) whose partial results are added one after another (at most V / 1024 of them for
    the smallest tile used at these widths); each addition and each exp/log (at most 2 ulp on the GPU)
    costs a relative 2**-24. So |error| <= 4 (log2 V + V / 1024) 2**-24 (1 + |value|), the factor 4
    covering exp, log, the division by Z and the final subtraction."""
    return 4 * (math.log2(vocab) + vocab / 1024) * 2.0 ** -24 * (1 + magnitude)


def assert_entropy_matches(entropy, hidden, weight, bias, mask, *, atol=2e-5, rtol=1e-5):
    assert entropy.shape == hidden.shape[:-1] and entropy.dtype == torch.float32
    want = expected_entropy(hidden, weight, bias)
    if mask is not None:
        assert torch.all(entropy[~mask] == 0)
        want = torch.where(mask, want, torch.zeros_like(want))
    torch.testing.assert_close(entropy.double(), want, atol=atol, rtol=rtol)


def expected_top(hidden, weight, bias=None):
    """Float64 definition of step_stats' top fields on the same logits: the largest probability, the
    first index holding it, and the second value of the sorted probabilities (a tie counts twice)."""
    logits = (hidden.double() @ weight.double().T).to(hidden.dtype).double()
    if bias is not None:
        logits = logits + bias.double()
    p = torch.softmax(logits, dim=-1)
    top1 = p.max(dim=-1).values
    columns = torch.arange(p.shape[-1], device=p.device)
    first = torch.where(p == top1[..., None], columns, p.shape[-1]).min(dim=-1).values
    top2 = p.sort(dim=-1, descending=True).values[..., 1] if p.shape[-1] > 1 else torch.zeros_like(top1)
    return top1, first, top2


def assert_top_matches(got, hidden, weight, bias, mask, *, atol=2e-6, rtol=1e-5):
    top1, first, top2 = expected_top(hidden, weight, bias)
    keep = torch.ones(hidden.shape[:-1], dtype=torch.bool) if mask is None else mask
    assert got.top1_prob.dtype == torch.float32 and got.top1_id.dtype == torch.int64
    assert torch.all(got.top1_prob[~keep] == 0) and torch.all(got.top2_prob[~keep] == 0)
    assert torch.all(got.top1_id[~keep] == -1)
    torch.testing.assert_close(got.top1_prob[keep].double(), top1[keep], atol=atol, rtol=rtol)
    torch.testing.assert_close(got.top2_prob[keep].double(), top2[keep], atol=atol, rtol=rtol)
    assert torch.equal(got.top1_id[keep], first[keep])


@pytest.fixture(params=["reference", "native", "triton"])
def head_backend(request):
    """The torch path, the native CPU kernel, then the Triton kernels (interpreted without a GPU;
    float32 and small shapes there) with tiles small enough to cross every tile and split boundary."""
    if request.param in ("reference", "native"):
        if request.param == "native" and not native_available():
            pytest.skip("the extension has no native CPU kernels")
        with use_backend(request.param):
            yield "cpu"
        return
    device = request.getfixturevalue("triton_interpreted")
    original = kernel_module.tile_config
    kernel_module.tile_config = lambda dtype, n_rows, with_top=False: dict(SMALL_TILES)
    try:
        with use_backend("triton"):
            yield device
    finally:
        kernel_module.tile_config = original


@pytest.mark.parametrize("vocab", [1, 7, 1000])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_float64_definition(head_backend, vocab, with_bias):
    # D = 40 is not a multiple of any tile width.
    hidden, weight, bias, mask = random_head((3, 13), 40, vocab, with_bias=with_bias)
    hidden, weight, mask = hidden.to(head_backend), weight.to(head_backend), mask.to(head_backend)
    bias = bias.to(head_backend) if bias is not None else None
    got = lm_head_entropy(hidden, weight, bias, mask)
    assert got.objective is None and got.h_next is None
    assert_entropy_matches(got.entropy.cpu(), hidden.cpu(), weight.cpu(), bias.cpu() if bias is not None else None,
                           mask.cpu())


def test_gpt2_vocabulary_reference():
    hidden, weight, bias, mask = random_head((2, 5), 24, 50257)
    with use_backend("reference"):
        got = lm_head_entropy(hidden, weight, bias, mask).entropy
    assert_entropy_matches(got, hidden, weight, bias, mask)


def test_reference_chunks_cross_the_vocabulary(monkeypatch):
    """Many vocabulary chunks (the merge of chunk statistics) give the one-chunk answer."""
    hidden, weight, bias, mask = random_head((4, 6), 33, 1000)
    bias[100:350] = NEG_INF                      # whole chunks of -inf
    monkeypatch.setattr(head_module, "_CHUNK_LOGITS", 64)
    with use_backend("reference"):
        got = lm_head_entropy(hidden, weight, bias, mask).entropy
    assert_entropy_matches(got, hidden, weight, bias, mask)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_reference(dtype):
    # Exact products: the 16-bit logits are the exact ones rounded once, on both sides; the entropies
    # (at most log 3001 = 8 nats) then differ only by float32 arithmetic.
    hidden, weight, bias, mask = random_head((3, 7), 72, 3001, dtype=dtype, exact_products=True)
    bias = (bias * 8).round().to(dtype) / 8          # multiples of 1/8: the bias adds exactly too
    with use_backend("reference"):
        got = lm_head_entropy(hidden, weight, bias, mask).entropy
    assert_entropy_matches(got, hidden, weight, bias, mask, atol=float32_entropy_bound(3001, math.log(3001)),
                           rtol=0)


def test_no_mask_and_leading_shapes(head_backend):
    hidden, weight, bias, _ = random_head((2, 3, 4), 20, 50)
    got = lm_head_entropy(hidden.to(head_backend), weight.to(head_backend), bias.to(head_backend)).entropy.cpu()
    assert_entropy_matches(got, hidden, weight, bias, None)
    one = lm_head_entropy(hidden[0, 0, 0].to(head_backend), weight.to(head_backend)).entropy.cpu()
    assert one.shape == ()
    assert_entropy_matches(one, hidden[0, 0, 0], weight, None, None)


@pytest.mark.parametrize("mask_kind", ["none_kept", "all_kept", "one_kept"])
def test_masks(head_backend, mask_kind):
    hidden, weight, bias, mask = random_head((5, 9), 24, 70)
    mask[:] = mask_kind == "all_kept"
    if mask_kind == "one_kept":
        mask[3, 8] = True
    got = lm_head_entropy(hidden.to(head_backend), weight.to(head_backend), bias.to(head_backend),
                          mask.to(head_backend)).entropy.cpu()
    assert_entropy_matches(got, hidden, weight, bias, mask)


def test_non_contiguous_inputs(head_backend):
    hidden, weight, bias, _ = random_head((6, 5), 32, 40)
    hidden = hidden.transpose(0, 1)                      # leading dims that do not collapse
    weight_t = weight.t().contiguous().t()               # column-major weight
    bias = torch.randn(80)[::2]
    mask = (torch.rand(6, 5) < 0.5).t()
    got = lm_head_entropy(hidden.to(head_backend), weight_t.to(head_backend), bias.to(head_backend),
                          mask.to(head_backend)).entropy.cpu()
    assert_entropy_matches(got, hidden, weight, bias, mask)


def test_neg_inf_bias_suppresses_tokens(head_backend):
    hidden, weight, bias, mask = random_head((3, 4), 16, 60)
    bias[::3] = NEG_INF
    bias[40:] = NEG_INF
    got = lm_head_entropy(hidden.to(head_backend), weight.to(head_backend), bias.to(head_backend),
                          mask.to(head_backend)).entropy.cpu()
    assert_entropy_matches(got, hidden, weight, bias, mask)
    only_one = torch.full((60,), NEG_INF)
    only_one[7] = 0.0
    got = lm_head_entropy(hidden.to(head_backend), weight.to(head_backend), only_one.to(head_backend)).entropy
    assert torch.all(got == 0)


@pytest.mark.parametrize("variant", ["info_gain", "lookum"])
def test_objective_is_lookahead_objective_of_the_logits(head_backend, variant):
    hidden, weight, bias, remaining = random_head((5, 11), 40, 300)
    remaining[2] = False
    cost = torch.rand(5) * 4
    on = [t.to(head_backend) for t in (hidden, weight, bias, remaining, cost)]
    got = lm_head_entropy(*on[:4], cost=on[4], variant=variant)
    logits = F.linear(hidden, weight) + bias
    want_objective, want_h = lookahead_objective(logits, remaining, cost, variant=variant)
    torch.testing.assert_close(got.h_next.cpu(), want_h, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(got.objective.cpu(), want_objective, atol=2e-5, rtol=1e-5)
    assert got.h_next[2] == 0
    assert_entropy_matches(got.entropy.cpu(), hidden, weight, bias, remaining)


def test_bias_equals_the_samplers_logit_post_processing(head_backend):
    """A -inf bias at the mask id and -penalty at EOS score like logits post-processed in place."""
    hidden, weight, _, remaining = random_head((6, 9), 32, 96)
    bias = torch.zeros(96)
    bias[95] = NEG_INF
    bias[1] = -0.5
    cost = torch.rand(6)
    logits = F.linear(hidden, weight)
    logits[..., 95] = NEG_INF
    logits[..., 1] -= 0.5
    on = [t.to(head_backend) for t in (hidden, weight, bias, remaining, cost)]
    got = lm_head_entropy(*on[:4], cost=on[4], variant="info_gain")
    want = lookahead_objective(logits, remaining, cost)
    torch.testing.assert_close(got.objective.cpu(), want[0], atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(got.h_next.cpu(), want[1], atol=1e-5, rtol=1e-6)


def test_zero_positions(head_backend):
    cost = torch.tensor([1.0, 2.0])
    weight = torch.randn(5, 4)
    got = lm_head_entropy(torch.empty(2, 0, 4), weight, mask=torch.empty(2, 0, dtype=torch.bool), cost=cost,
                          variant="info_gain")
    assert got.entropy.shape == (2, 0)
    assert torch.equal(got.h_next, torch.zeros(2)) and torch.equal(got.objective, -cost)
    assert lm_head_entropy(torch.empty(0, 4), weight).entropy.shape == (0,)


# ---- top-1 / top-2 (with_top) ----------------------------------------------------------------------

@pytest.mark.parametrize("vocab", [1, 2, 7, 1000])
def test_with_top_matches_float64_definition(head_backend, vocab):
    hidden, weight, bias, mask = random_head((3, 13), 40, vocab)
    on = [t.to(head_backend) for t in (hidden, weight, bias, mask)]
    got = lm_head_entropy(*on, with_top=True)
    assert_entropy_matches(got.entropy.cpu(), hidden, weight, bias, mask)
    assert_top_matches(type(got)(*(t.cpu() if t is not None else None for t in got)), hidden, weight, bias, mask)
    plain = lm_head_entropy(*on)
    assert len(plain) == 3 and torch.equal(plain.entropy, got.entropy)


def test_with_top_ties_across_chunks_take_the_first_index(head_backend, monkeypatch):
    """Equal maxima far apart in the vocabulary (different chunks, pieces and vocabulary splits): the
    first index wins and the top-2 probability equals the top-1."""
    hidden, weight, _, mask = random_head((4, 5), 24, 600)
    bias = torch.zeros(600)
    bias[[9, 580]] = 30.0                         # one dominant logit value, held twice
    weight[580] = weight[9]
    monkeypatch.setattr(head_module, "_CHUNK_LOGITS", 64)
    on = [t.to(head_backend) for t in (hidden, weight, bias, mask)]
    got = lm_head_entropy(*on, with_top=True)
    got = type(got)(*(t.cpu() if t is not None else None for t in got))
    assert torch.all(got.top1_id[mask] == 9)
    assert torch.equal(got.top1_prob[mask], got.top2_prob[mask])
    assert_top_matches(got, hidden, weight, bias, mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_with_top_equals_step_stats_of_the_logits(dtype):
    """The CPU paths against step_stats on the materialised logits (what the sampler read before),
    across several native pieces (rows x vocabulary above one piece) and the kernel's chunks."""
    hidden, weight, bias, mask = random_head((8, 16), 64, 5003, dtype=dtype)
    logits = F.linear(hidden, weight).float() + bias
    want = step_stats(logits, mask)
    backends = ["reference"] + (["native"] if native_available() else [])
    for backend in backends:
        with use_backend(backend):
            got = lm_head_entropy(hidden, weight, bias, mask, with_top=True)
        assert torch.equal(got.top1_id, want.top1_id), backend
        torch.testing.assert_close(got.top1_prob, want.top1_prob, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got.top2_prob, want.top2_prob, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got.entropy, want.entropy, atol=1e-5, rtol=1e-5)


def test_with_top_bad_rows(head_backend):
    hidden, weight, bias, mask = random_head((3, 4), 16, 30)
    mask[:] = True
    hidden[2, 1, 0] = float("nan")
    on = [t.to(head_backend) for t in (hidden, weight, bias, mask)]
    got = lm_head_entropy(*on, with_top=True, check_values=False)
    assert torch.isnan(got.top1_prob[2, 1]) and torch.isnan(got.top2_prob[2, 1]) and got.top1_id[2, 1] == -1
    assert torch.isfinite(got.top1_prob[0]).all()
    with pytest.raises(TypeError, match="with_top"):
        lm_head_entropy(*on, with_top=1)


# ---- bad values ----------------------------------------------------------------------------------

def test_nan_hidden_at_kept_position_raises(head_backend):
    hidden, weight, bias, mask = random_head((3, 4), 16, 30)
    mask[2, 1] = True
    hidden[2, 1, 5] = float("nan")
    # The message names the logits and the position (its wording is token_stats').
    with pytest.raises(ValueError, match=r"logits hidden @ weight.T \+ bias.*(NaN.*\(2, 1\)|\(2, 1\).*NaN)"):
        lm_head_entropy(hidden.to(head_backend), weight.to(head_backend), bias.to(head_backend), mask.to(head_backend))


def test_all_neg_inf_row_raises(head_backend):
    hidden, weight, _, mask = random_head((3, 4), 16, 30)
    mask[0, 3] = True
    with pytest.raises(ValueError, match=r"logits hidden @ weight.T \+ bias.*(-inf.*\(0, 3\)|\(0, 3\).*-inf)"):
        lm_head_entropy(hidden.to(head_backend), weight.to(head_backend), torch.full((30,), NEG_INF).to(head_backend),
                        mask.to(head_backend))


def test_masked_out_bad_rows_are_not_read(head_backend):
    hidden, weight, bias, mask = random_head((3, 4), 16, 30)
    mask[:] = True
    mask[1, 2] = False
    hidden[1, 2] = float("nan")
    got = lm_head_entropy(hidden.to(head_backend), weight.to(head_backend), bias.to(head_backend),
                          mask.to(head_backend)).entropy.cpu()
    assert_entropy_matches(got, hidden, weight, bias, mask)


def test_check_values_false_flags_bad_candidates(head_backend):
    hidden, weight, bias, remaining = random_head((4, 4), 16, 30)
    remaining[:] = True
    hidden[2, 1, 0] = float("nan")
    cost = torch.rand(4)
    cost[3] = float("inf")
    on = [t.to(head_backend) for t in (hidden, weight, bias, remaining, cost)]
    got = lm_head_entropy(*on[:4], cost=on[4], variant="info_gain", check_values=False)
    assert torch.isfinite(got.objective).tolist() == [True, True, False, False]
    assert torch.isfinite(got.h_next).tolist() == [True, True, False, True]
    with pytest.raises(ValueError, match="NaN"):
        lm_head_entropy(*on[:4], cost=on[4], variant="info_gain")
    hidden[2, 1, 0] = 0.0
    with pytest.raises(ValueError, match="cost must be finite.*index 3"):
        lm_head_entropy(hidden, weight, bias, remaining, cost=cost, variant="info_gain")


# ---- bad arguments -------------------------------------------------------------------------------

def test_bad_arguments_are_named():
    hidden, weight, bias, mask = random_head((2, 3), 8, 10)
    with pytest.raises(TypeError, match="hidden must be a torch.Tensor"):
        lm_head_entropy([1.0], weight)
    with pytest.raises(TypeError, match="hidden must have dtype"):
        lm_head_entropy(hidden.double(), weight)
    with pytest.raises(ValueError, match="hidden must have a non-empty last dimension"):
        lm_head_entropy(torch.empty(2, 0), weight)
    with pytest.raises(TypeError, match="weight must have hidden's dtype"):
        lm_head_entropy(hidden, weight.half())
    with pytest.raises(ValueError, match="weight must have 2 dimensions"):
        lm_head_entropy(hidden, weight[0])
    with pytest.raises(ValueError, match=r"weight must have shape \(V >= 1, D=8\)"):
        lm_head_entropy(hidden, weight[:, :5])
    with pytest.raises(ValueError, match=r"bias must have shape \(10,\)"):
        lm_head_entropy(hidden, weight, bias[:4])
    with pytest.raises(TypeError, match="mask must have dtype"):
        lm_head_entropy(hidden, weight, bias, mask.float())
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 3\)"):
        lm_head_entropy(hidden, weight, bias, mask[:1])
    with pytest.raises(ValueError, match="variant must be None or one of"):
        lm_head_entropy(hidden, weight, variant="infogain")
    with pytest.raises(ValueError, match="cost is required"):
        lm_head_entropy(hidden, weight, variant="info_gain")
    with pytest.raises(ValueError, match="cost is only used with a variant"):
        lm_head_entropy(hidden, weight, cost=torch.zeros(2))
    with pytest.raises(ValueError, match="hidden must have 3 dimensions"):
        lm_head_entropy(hidden[0], weight, cost=torch.zeros(3), variant="info_gain")
    with pytest.raises(ValueError, match=r"cost must have shape \(2,\)"):
        lm_head_entropy(hidden[None].expand(2, 2, 3, 8)[0], weight, cost=torch.zeros(3), variant="lookum")
    with pytest.raises(ValueError, match="weight is on meta"):
        lm_head_entropy(hidden, weight.to("meta"))
    with pytest.raises(TypeError, match="check_values must be a bool"):
        lm_head_entropy(hidden, weight, check_values=1)


# ---- torch.library registration --------------------------------------------------------------------

def test_fake_implementation_and_schema():
    hidden, weight, bias, mask = random_head((3, 4), 8, 11)
    cost = torch.rand(3)
    with use_backend("reference"):
        for args in [(hidden, weight, bias, mask, cost, "info_gain"), (hidden, weight, None, None, None, None),
                     (hidden, weight, bias, mask, cost, "info_gain", True)]:
            torch.library.opcheck(torch.ops.infogain.lm_head_entropy.default, args,
                                  test_utils=("test_schema", "test_faketensor"))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake_hidden = mode.from_tensor(torch.empty(8, 32, 64, dtype=torch.bfloat16))
        fake_weight = mode.from_tensor(torch.empty(1000, 64, dtype=torch.bfloat16))
        entropy, objective, h_next, *top = torch.ops.infogain.lm_head_entropy(fake_hidden, fake_weight, None, None,
                                                                              None, "lookum")
        _, _, _, *with_top = torch.ops.infogain.lm_head_entropy(fake_hidden, fake_weight, None, None, None, None, True)
    assert entropy.shape == (8, 32) and objective.shape == h_next.shape == (8,)
    assert [t.shape for t in top] == [(0,)] * 3 and [t.shape for t in with_top] == [(8, 32)] * 3
    assert [t.dtype for t in with_top] == [torch.float32, torch.int64, torch.float32]


def test_compiles_with_fullgraph():
    hidden, weight, bias, mask = random_head((3, 4), 8, 21)
    compiled = torch.compile(lambda h, w, b, m: torch.ops.infogain.lm_head_entropy(h, w, b, m, None, None)[0],
                             backend="aot_eager", fullgraph=True)
    with use_backend("reference"):
        got = compiled(hidden, weight, bias, mask)
    assert_entropy_matches(got, hidden, weight, bias, mask)


def test_aot_configs_come_from_the_launcher():
    configs = kernel_module.aot_configs()
    partial = [c for c in configs if c["kernel"] is kernel_module._lm_head_partial_kernel]
    assert {c["constexprs"]["BLOCK_K"] for c in partial} == {kernel_module.tile_config(torch.bfloat16, 256)["BLOCK_K"],
                                                            kernel_module.tile_config(torch.float32, 256)["BLOCK_K"]}
    for c in configs:
        assert set(c["constexprs"]) == {k for k, v in c["signature"].items() if v == "constexpr"}


# ---- GPU lane ----------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,dim,vocab", [((8, 32), 4096, 126464), ((8, 256), 3584, 152064), ((64, 32), 4096, 126464)])
def test_real_head_shapes_match_float64(dtype, rows, dim, vocab):
    """The kernel at real head shapes against the float64 definition of the same rows, computed on the
    GPU. Exact-product inputs (see random_head) make both sides' logits the exact ones rounded once
    to ``dtype``, so the bound is float32_entropy_bound's: about 4e-4 nats on entropies near 11 (a
    kernel that dropped 1,000 of the 126,464 columns, 0.8% of the mass, would be off by about 8e-3),
    and a relative 4 (log2 V + V / 1024) 2**-24 (about 3e-5) on the top-1 / top-2 probabilities,
    exp(x - log Z), which the old absolute 1e-4 let be 20% off."""
    hidden, weight, _, mask = random_head(rows, dim, vocab, dtype=dtype, exact_products=True, with_bias=False,
                                          device="cuda")
    got = lm_head_entropy(hidden, weight, mask=mask, with_top=True)
    plain = lm_head_entropy(hidden, weight, mask=mask).entropy   # other tiles: more rows per program
    want_entropy = torch.where(mask, expected_entropy(hidden, weight), 0.0)
    top1, first, top2 = expected_top(hidden, weight)
    entropy_bound = float32_entropy_bound(vocab, math.log(vocab))
    for entropy in (got.entropy, plain):
        torch.testing.assert_close(entropy.double(), want_entropy, atol=entropy_bound, rtol=0)
    probability_rtol = float32_entropy_bound(vocab, 0.0)
    torch.testing.assert_close(got.top1_prob[mask].double(), top1[mask], atol=0, rtol=probability_rtol)
    torch.testing.assert_close(got.top2_prob[mask].double(), top2[mask], atol=0, rtol=probability_rtol)
    # The logits are identical on both sides, so the first index of the largest is too (ties included).
    assert torch.equal(got.top1_id[mask], first[mask])
    assert torch.all(got.top1_id[~mask] == -1) and torch.all(got.entropy[~mask] == 0)


@pytest.mark.parametrize("splits", [1, 3])
def test_kernel_vocabulary_splits(triton_interpreted, splits):
    """Several vocabulary tiles per program (1 split) and uneven splits merge to the same entropy."""
    hidden, weight, bias, mask = random_head((3, 7), 24, 200)
    on = [t.to(triton_interpreted) for t in (hidden, weight, bias, mask)]
    got = kernel_module.launch_lm_head(*on, config=SMALL_TILES, splits=splits).view(3, 7).cpu()
    assert_entropy_matches(got, hidden, weight, bias, mask)


@pytest.mark.parametrize("dtype,n_rows", [(torch.float32, 50), (torch.float16, 60), (torch.float16, 1100)])
def test_kernel_at_the_launcher_tile_configs(triton_interpreted, dtype, n_rows):
    """The launcher's own tiles (64 / 128-row, float32 and 16-bit), interpreted on small shapes."""
    hidden, weight, bias, mask = random_head((n_rows,), 40, 300, dtype=dtype, keep_fraction=0.7)
    on = [t.to(triton_interpreted) for t in (hidden, weight, bias, mask)]
    with use_backend("triton"):
        got = lm_head_entropy(*on).entropy.cpu()
    assert_entropy_matches(got, hidden, weight, bias, mask, atol=1e-4 if dtype != torch.float32 else 2e-5)
