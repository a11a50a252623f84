"""step_stats: the reference against float64 definitions written here, the Triton kernels (split and
unsplit) against the reference, the draws' distribution (chi-square), the random stream contract,
masks, views and errors."""
import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from infogain_kernels import StepStats, step_stats, use_backend

NEG_INF = float("-inf")
P_VALUE_FLOOR = 1e-3  # fixed seeds: a correct sampler passes deterministically; this is the power margin
# Two implementations may add the tempered weights in different orders; a draw may then differ only
# when u lies within this distance of a CDF boundary (float32 sums of up to ~2**17 terms).
CDF_TOLERANCE = 2e-5


def seeded(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def random_logits(*shape, scale=3.0, seed=0):
    return torch.randn(*shape, generator=seeded(seed)) * scale


def expected_stats(logits):
    """Float64 definitions: entropy, top-1 prob / lowest argmax, top-2 prob."""
    x = logits.double()
    p = torch.softmax(x, dim=-1)
    entropy = -torch.where(p > 0, p * torch.log_softmax(x, dim=-1), torch.zeros_like(p)).sum(-1)
    ordered = p.sort(dim=-1, descending=True).values
    top2 = ordered[..., 1] if p.shape[-1] > 1 else torch.zeros_like(ordered[..., 0])
    column = torch.arange(p.shape[-1]).expand_as(p)
    top1_id = torch.where(p == ordered[..., :1], column, p.shape[-1]).min(-1).values
    return entropy, ordered[..., 0], top1_id, top2


def tempered_cdf(logits, temperature):
    """Float64 CDF of softmax(x / T) along the last axis."""
    return torch.cumsum(torch.softmax(logits.double() / temperature, dim=-1), dim=-1)


def assert_draws_follow_contract(logits, temperature, uniforms, tokens, token_probs, mask=None):
    """Each draw s of a read row: u_s within CDF_TOLERANCE of the drawn token's CDF interval
    [cdf[t - 1], cdf[t]) (float64), a token of non-zero probability, and its untempered probability."""
    lead = logits.shape[:-1]
    mask = torch.ones(lead, dtype=torch.bool) if mask is None else mask.cpu()
    cdf = tempered_cdf(logits.cpu(), temperature).reshape(-1, logits.shape[-1])[mask.reshape(-1)]
    u = uniforms.reshape(-1, uniforms.shape[-1])[mask.reshape(-1)].double()
    t = tokens.cpu().reshape(-1, tokens.shape[-1])[mask.reshape(-1)]
    assert torch.all((t >= 0) & (t < logits.shape[-1]))
    upper = cdf.gather(-1, t)
    lower = torch.where(t > 0, cdf.gather(-1, (t - 1).clamp(min=0)), torch.zeros_like(upper))
    assert torch.all(upper > lower), "drew a token of probability zero"
    assert torch.all((u >= lower - CDF_TOLERANCE) & (u < upper + CDF_TOLERANCE))
    probs = torch.softmax(logits.cpu().double(), dim=-1).reshape(-1, logits.shape[-1])[mask.reshape(-1)]
    torch.testing.assert_close(token_probs.cpu().reshape(-1, t.shape[-1])[mask.reshape(-1)].double(),
                               probs.gather(-1, t), atol=2e-6, rtol=1e-4)
    skipped = ~mask
    assert torch.all(tokens.cpu()[skipped] == -1) and torch.all(token_probs.cpu()[skipped] == 0)


def assert_stats_match(got, logits, mask=None, atol=2e-5, rtol=1e-5):
    lead = logits.shape[:-1]
    mask = torch.ones(lead, dtype=torch.bool) if mask is None else mask.cpu()
    want = expected_stats(logits.cpu())
    entropy, top1, top1_id, top2 = (t.cpu() for t in got[:4])
    for t in (entropy, top1, top1_id, top2):
        assert t.shape == lead
    torch.testing.assert_close(entropy[mask].double(), want[0][mask], atol=atol, rtol=rtol)
    torch.testing.assert_close(top1[mask].double(), want[1][mask], atol=atol, rtol=rtol)
    torch.testing.assert_close(top2[mask].double(), want[3][mask], atol=atol, rtol=rtol)
    assert torch.equal(top1_id[mask], want[2][mask])
    assert torch.all(entropy[~mask] == 0) and torch.all(top1[~mask] == 0) and torch.all(top2[~mask] == 0)
    assert torch.all(top1_id[~mask] == -1)


def uniforms_of(seed, n_rows, n_samples, device="cpu"):
    """The uniforms the random stream contract draws for a generator seeded with ``seed``."""
    return torch.rand(n_rows, n_samples, generator=seeded(seed, device), device=device, dtype=torch.float32)


@pytest.fixture(params=["unsplit", "split"])
def kernel_config(request, monkeypatch):
    """The Triton row pass with one program per row, or rows split over the vocabulary (small chunks
    so that even tiny test vocabularies split into several parts of several chunks)."""
    from infogain_kernels import _entropy_triton

    config = {} if request.param == "unsplit" else {"block": 16, "splits": 3}
    monkeypatch.setattr(_entropy_triton, "_FORCE_CONFIG", config)
    return request.param


# ----------------------------------------------------------------------------- exact properties

@pytest.mark.parametrize("shape", [(4, 1), (3, 7), (2, 3, 203), (1000,), (2, 50257)])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_reference_matches_float64_definitions(shape, temperature):
    logits = random_logits(*shape)
    logits[..., ::5] = NEG_INF if shape[-1] > 1 else logits[..., ::5]
    with use_backend("reference"):
        got = step_stats(logits, num_samples=5, temperature=temperature, generator=seeded(1))
    assert isinstance(got, StepStats)
    assert_stats_match(got, logits)
    assert got.tokens.shape == got.token_probs.shape == (*shape[:-1], 5)
    if temperature == 0:
        assert torch.equal(got.tokens, got.top1_id[..., None].expand_as(got.tokens))
        assert torch.equal(got.token_probs, got.top1_prob[..., None].expand_as(got.token_probs))
    else:
        uniforms = uniforms_of(1, math.prod(shape[:-1]), 5).reshape(*shape[:-1], 5)
        assert_draws_follow_contract(logits, temperature, uniforms, got.tokens, got.token_probs)


@pytest.mark.parametrize("shape", [(3, 1), (4, 7), (2, 3, 203), (5, 1000)])
@pytest.mark.parametrize("temperature", [0.0, 0.5, 2.0])
def test_triton_matches_reference(triton_interpreted, kernel_config, shape, temperature):
    logits = random_logits(*shape, seed=2).to(triton_interpreted)
    if shape[-1] > 1:
        logits[0, ..., 1::3] = NEG_INF
    mask = (torch.rand(shape[:-1], generator=seeded(3)) > 0.3).to(triton_interpreted)
    results = {}
    for backend in ("reference", "triton"):
        with use_backend(backend):
            results[backend] = step_stats(logits, mask, num_samples=6, temperature=temperature,
                                          generator=seeded(4, triton_interpreted))
    ref, tri = results["reference"], results["triton"]
    for name in ("entropy", "top1_prob", "top2_prob"):
        torch.testing.assert_close(getattr(tri, name), getattr(ref, name), atol=1e-5, rtol=1e-5)
    assert torch.equal(tri.top1_id, ref.top1_id)
    # Same uniforms, different summation order: draws agree except on near-boundary uniforms.
    assert (tri.tokens != ref.tokens).float().mean() <= 0.02
    uniforms = uniforms_of(4, math.prod(shape[:-1]), 6, triton_interpreted).reshape(*shape[:-1], 6)
    if temperature > 0:
        assert_draws_follow_contract(logits, temperature, uniforms, tri.tokens, tri.token_probs, mask)
    else:
        assert torch.equal(tri.tokens, ref.tokens)
        torch.testing.assert_close(tri.token_probs, ref.token_probs, atol=1e-6, rtol=1e-5)


def test_triton_many_chunks_inf_regions_and_late_maximum(triton_interpreted, kernel_config):
    logits = random_logits(5, 203, seed=5).to(triton_interpreted)
    logits[0, :64] = NEG_INF
    logits[1, 190] = 40.0                       # the maximum in the last chunk
    logits[2, 100:] = NEG_INF
    logits[3, 17] = logits[3, 170] = 30.0       # tie across chunks / splits: lowest index wins
    logits[4, :] = NEG_INF
    logits[4, 202] = 0.0                        # one drawable token, in the last chunk
    with use_backend("triton"):
        got = step_stats(logits, num_samples=16, temperature=1.3, generator=seeded(6, triton_interpreted))
    assert_stats_match(got, logits)
    assert got.top1_id[3] == 17
    assert torch.all(got.tokens[4] == 202) and torch.all(got.token_probs[4] == 1)
    assert torch.all(got.tokens[0] >= 64) and torch.all(got.tokens[2] < 100)
    uniforms = uniforms_of(6, 5, 16, triton_interpreted)
    assert_draws_follow_contract(logits, 1.3, uniforms, got.tokens, got.token_probs)


def test_single_token_vocabulary(backend_device):
    logits = random_logits(6, 1).to(backend_device)
    got = step_stats(logits, num_samples=3, temperature=1.0)
    assert torch.all(got.entropy == 0) and torch.all(got.top1_prob == 1) and torch.all(got.top2_prob == 0)
    assert torch.all(got.tokens == 0) and torch.all(got.token_probs == 1)


def test_tiny_temperature_draws_the_argmax(backend_device):
    logits = random_logits(4, 300, seed=7).to(backend_device)
    got = step_stats(logits, num_samples=8, temperature=1e-30, generator=seeded(8, backend_device))
    assert torch.equal(got.tokens, got.top1_id[:, None].expand(-1, 8))


# ----------------------------------------------------------------------------- random stream contract

def test_temperature_zero_draws_no_random_numbers(backend_device):
    logits = random_logits(3, 4, 50).to(backend_device)
    generator = seeded(9, backend_device)
    before = generator.get_state()
    got = step_stats(logits, num_samples=4, temperature=0.0, generator=generator)
    assert torch.equal(generator.get_state(), before)
    assert torch.equal(got.tokens, got.top1_id[..., None].expand(3, 4, 4))
    torch.manual_seed(0)
    default_before = torch.get_rng_state()
    step_stats(logits, num_samples=4)
    assert torch.equal(torch.get_rng_state(), default_before)


def test_no_samples_returns_empty_draws_and_draws_nothing(backend_device):
    logits = random_logits(2, 3, 20).to(backend_device)
    generator = seeded(10, backend_device)
    before = generator.get_state()
    got = step_stats(logits, temperature=1.0, generator=generator)
    assert got.tokens.shape == got.token_probs.shape == (2, 3, 0)
    assert got.tokens.dtype == torch.int64 and got.token_probs.dtype == torch.float32
    assert torch.equal(generator.get_state(), before)


def test_generator_advances_by_exactly_the_contract_draw(backend_device):
    logits = random_logits(2, 3, 20).to(backend_device)
    mask = torch.tensor([[True, False, True], [False, False, True]], device=backend_device)
    generator = seeded(11, backend_device)
    first = step_stats(logits, mask, num_samples=5, temperature=1.0, generator=generator)
    follow = torch.rand(4, generator=generator, device=backend_device)
    replay = seeded(11, backend_device)
    uniforms = torch.rand(6, 5, generator=replay, device=backend_device, dtype=torch.float32)
    assert torch.equal(follow, torch.rand(4, generator=replay, device=backend_device))
    # The op is a deterministic function of the uniforms: the custom op with them gives the same draws.
    direct = torch.ops.infogain.step_stats(logits, mask, uniforms, 1.0)
    assert torch.equal(direct[4], first.tokens) and torch.equal(direct[5], first.token_probs)
    again = step_stats(logits, mask, num_samples=5, temperature=1.0, generator=seeded(11, backend_device))
    assert torch.equal(again.tokens, first.tokens)


# ----------------------------------------------------------------------------- distribution

def assert_frequencies_follow(temperature, rows, device):
    logits = torch.tensor([1.0, -0.5, 0.3, NEG_INF, 2.0, -1.5, 0.0, NEG_INF, 0.7], device=device)
    # rows x 16 draws; stride-0 rows reuse one distribution without a copy
    got = step_stats(logits.expand(rows, -1), num_samples=16, temperature=temperature,
                     generator=seeded(12, device))
    tempered = torch.softmax(logits.double().cpu() / temperature, dim=-1).numpy()
    assert chi_square_p_value(got.tokens, tempered) > P_VALUE_FLOOR
    # The same counts reject a 1.5x different temperature (the test has power: expected
    # statistic >= 50 on 6 degrees of freedom at 2048 draws).
    wrong = torch.softmax(logits.double().cpu() / (temperature * 1.5), dim=-1).numpy()
    assert chi_square_p_value(got.tokens, wrong) < P_VALUE_FLOOR


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_reference_draw_frequencies_follow_tempered_softmax(temperature):
    with use_backend("reference"):
        assert_frequencies_follow(temperature, 256, "cpu")


@pytest.mark.parametrize("kernel_config, temperature", [("unsplit", 2.0), ("split", 0.5)],
                         indirect=["kernel_config"])
def test_triton_draw_frequencies_follow_tempered_softmax(triton_interpreted, kernel_config, temperature):
    # The interpreter is slow: 2048 draws per configuration (the reference test covers T = 1).
    with use_backend("triton"):
        assert_frequencies_follow(temperature, 128, triton_interpreted)


def test_samples_of_one_row_are_independent():
    logits = torch.tensor([0.2, -0.4, 0.9])
    with use_backend("reference"):
        got = step_stats(logits.expand(96, -1), num_samples=16, temperature=1.0, generator=seeded(13))
    tokens = got.tokens.cpu()
    pairs = tokens[:, 0::2] * 3 + tokens[:, 1::2]  # (sample 2i, sample 2i+1) of one row: 768 pairs
    probs = torch.softmax(logits.double().cpu(), dim=-1)
    assert chi_square_p_value(pairs, (probs[:, None] * probs[None, :]).reshape(-1).numpy()) > P_VALUE_FLOOR


def chi_square_p_value(observed_tokens, expected_probs):
    """p-value of token counts against expected probabilities (zero-probability cells must be empty)."""
    counts = np.bincount(observed_tokens.reshape(-1).cpu().numpy(), minlength=len(expected_probs))
    expected_probs = np.asarray(expected_probs, dtype=np.float64)
    support = expected_probs > 0
    assert counts[~support].sum() == 0, "drew a token of probability zero"
    expected = expected_probs[support] / expected_probs[support].sum() * counts.sum()
    return scipy_stats.chisquare(counts[support], expected).pvalue


# ----------------------------------------------------------------------------- masks and views

def test_skipped_rows_are_not_read(backend_device):
    """A skipped row full of NaN or -inf would raise if it were read."""
    logits = random_logits(4, 50).to(backend_device)
    logits[1] = float("nan")
    logits[3] = NEG_INF
    mask = torch.tensor([True, False, True, False], device=backend_device)
    got = step_stats(logits, mask, num_samples=3, temperature=1.0, generator=seeded(14, backend_device))
    assert_stats_match(got, logits, mask)
    assert torch.all(got.tokens[~mask] == -1) and torch.all(got.token_probs[~mask] == 0)
    assert torch.all(got.tokens[mask] >= 0)


@pytest.mark.parametrize("view", ["block_slice", "leading_transpose", "vocab_stride", "expanded"])
def test_non_contiguous_views_match_a_contiguous_copy(backend_device, view):
    base = random_logits(4, 9, 130).to(backend_device)
    logits = {
        "block_slice": base[:, 2:7],             # next_logits[:, offset:h_end]
        "leading_transpose": base.transpose(0, 1),
        "vocab_stride": base[..., ::3],
        "expanded": base[0, :1].expand(5, -1),
    }[view]
    assert not logits.is_contiguous()
    mask = (torch.rand(logits.shape[:-1], generator=seeded(15)) > 0.3).to(backend_device)
    from_view = step_stats(logits, mask, num_samples=4, temperature=0.8, generator=seeded(16, backend_device))
    from_copy = step_stats(logits.contiguous(), mask, num_samples=4, temperature=0.8,
                           generator=seeded(16, backend_device))
    for a, b in zip(from_view, from_copy):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_accumulate_in_float32(dtype):
    logits = random_logits(3, 500).to(dtype)
    with use_backend("reference"):
        got = step_stats(logits, num_samples=4, temperature=1.0, generator=seeded(17))
    assert_stats_match(got, logits.float())
    assert_draws_follow_contract(logits.float(), 1.0, uniforms_of(17, 3, 4), got.tokens, got.token_probs)


def test_empty_leading_shape(backend_device):
    got = step_stats(torch.empty(0, 3, 10, device=backend_device), num_samples=2, temperature=1.0)
    assert got.entropy.shape == (0, 3) and got.tokens.shape == (0, 3, 2)


def test_zero_dim_mask(backend_device):
    logits = random_logits(7).to(backend_device)
    for keep in (False, True):
        got = step_stats(logits, torch.tensor(keep, device=backend_device), num_samples=3, temperature=1.0,
                         generator=seeded(22, backend_device))
        assert got.tokens.shape == (3,)
        assert torch.all(got.tokens >= 0) if keep else (got.tokens.tolist() == [-1] * 3 and got.entropy == 0)


def test_vector_input(backend_device):
    logits = random_logits(40).to(backend_device)
    got = step_stats(logits, num_samples=3, temperature=1.0, generator=seeded(18, backend_device))
    assert got.entropy.shape == () and got.tokens.shape == (3,)
    assert_stats_match(got, logits)


# ----------------------------------------------------------------------------- bad values and errors

@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's NaN warnings, in the interpreter
@pytest.mark.parametrize("bad", ["nan", "+inf", "all_inf"])
def test_bad_rows_raise_or_are_flagged(backend_device, bad):
    logits = random_logits(3, 40).to(backend_device)
    if bad == "all_inf":
        logits[1] = NEG_INF
    else:
        logits[1, 7] = float(bad)
    message = {"nan": r"row at position \(1,\) contains NaN", "+inf": r"\(1,\) contains \+inf",
               "all_inf": r"\(1,\) is entirely -inf"}[bad]
    with pytest.raises(ValueError, match=message):
        step_stats(logits, num_samples=2, temperature=1.0)
    got = step_stats(logits, num_samples=2, temperature=1.0, check_values=False)
    assert not torch.isfinite(got.entropy[1]) and torch.isfinite(got.entropy[[0, 2]]).all()


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(logits=[[0.0, 1.0]]), TypeError, "logits"),
    (dict(logits=torch.zeros(2, 3, dtype=torch.int64)), TypeError, "logits"),
    (dict(logits=torch.zeros(2, 0)), ValueError, "logits"),
    (dict(mask=torch.ones(3, dtype=torch.bool)), ValueError, "mask"),
    (dict(mask=torch.ones(2)), TypeError, "mask"),
    (dict(num_samples=-1), ValueError, "num_samples"),
    (dict(num_samples=2.0), TypeError, "num_samples"),
    (dict(num_samples=True), TypeError, "num_samples"),
    (dict(temperature=-0.1), ValueError, "temperature"),
    (dict(temperature=math.inf), ValueError, "temperature"),
    (dict(temperature=math.nan), ValueError, "temperature"),
    (dict(temperature="1"), TypeError, "temperature"),
    (dict(generator=3), TypeError, "generator"),
    (dict(check_values=1), TypeError, "check_values"),
])
def test_errors_name_the_argument(kwargs, error, message):
    args = dict(logits=torch.zeros(2, 5))
    args.update(kwargs)
    logits = args.pop("logits")
    with pytest.raises(error, match=message):
        step_stats(logits, **args)


def test_custom_op_checks_the_uniforms():
    logits = random_logits(3, 10)
    for uniforms in (torch.rand(2, 4), torch.rand(3, 4, dtype=torch.float64), torch.rand(12)):
        with pytest.raises(ValueError, match="uniforms"):
            torch.ops.infogain.step_stats(logits, None, uniforms, 1.0)


def test_custom_op_opcheck_fake_and_compile():
    logits = random_logits(3, 10)
    mask = torch.tensor([True, False, True])
    uniforms = uniforms_of(19, 3, 4)
    torch.library.opcheck(torch.ops.infogain.step_stats.default, (logits, mask, uniforms, 0.9))
    torch.library.opcheck(torch.ops.infogain.step_stats.default, (logits, None, None, 0.0))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = mode.from_tensor(logits)
        out = torch.ops.infogain.step_stats(fake, None, mode.from_tensor(uniforms), 1.0)
    assert [tuple(t.shape) for t in out] == [(3,), (3,), (3,), (3,), (3, 4), (3, 4)]
    compiled = torch.compile(lambda x, u: torch.ops.infogain.step_stats(x, None, u, 1.0), backend="aot_eager",
                             fullgraph=True)
    assert torch.equal(compiled(logits, uniforms)[4], torch.ops.infogain.step_stats(logits, None, uniforms, 1.0)[4])


# ----------------------------------------------------------------------------- GPU, real widths

@pytest.mark.gpu
@pytest.mark.parametrize("vocab", [126464, 152064])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows", [1, 256, 2048])
def test_gpu_real_widths_match_reference(vocab, dtype, rows):
    """The Triton kernels (split when rows are few) against the reference on the same device.

    Near-tie tolerance: the GPU's exp and the summation order differ from the reference in the last
    bits, so top-1 ids may differ only where the two largest probabilities are within 1e-6 of each
    other, and draws only where u lies within CDF_TOLERANCE of a boundary (checked by
    assert_draws_follow_contract on the float64 CDF)."""
    device = "cuda"
    generator = seeded(20, device)
    logits = (torch.randn(rows, vocab, generator=generator, device=device) * 4).to(dtype)
    logits[:, vocab // 2:vocab // 2 + 1000] = NEG_INF
    mask = torch.rand(rows, generator=generator, device=device) > 0.2
    results = {}
    for backend in ("reference", "triton"):
        with use_backend(backend):
            results[backend] = step_stats(logits, mask, num_samples=8, temperature=0.9,
                                          generator=seeded(21, device))
    ref, tri = results["reference"], results["triton"]
    for name in ("entropy", "top1_prob", "top2_prob"):
        torch.testing.assert_close(getattr(tri, name), getattr(ref, name), atol=1e-5, rtol=1e-4)
    differ = tri.top1_id != ref.top1_id
    assert torch.all((ref.top1_prob - ref.top2_prob)[differ] <= 1e-6)
    uniforms = uniforms_of(21, rows, 8, device)
    check = slice(0, 64)  # the float64 CDF of every row would take gigabytes on the host
    assert_draws_follow_contract(logits[check].float(), 0.9, uniforms[check], tri.tokens[check],
                                 tri.token_probs[check], mask[check])
    assert (tri.tokens != ref.tokens).float().mean() <= 1e-3
