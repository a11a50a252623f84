"""The native C++ CPU row pass (csrc/step_stats_cpu*.cpp) against independent float64 formulations.

``torch.ops.infogain._step_stats_cpu(logits, mask, uniforms, temperature)`` and
``torch.ops.infogain._row_entropy_cpu(logits, mask)``: statistics of softmax rows and S
inverse-CDF draws per row from given uniforms (the step_stats random stream contract).
"""
import math
import os
import subprocess
import sys

import pytest
import torch
from scipy import stats

import infogain_kernels
from infogain_kernels import _backend
from infogain_kernels.step_stats import step_stats_reference

pytestmark = pytest.mark.skipif(not _backend._native_available(),
                                reason="infogain_kernels._C was built without the native CPU kernels")

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
P_VALUE_FLOOR = 1e-4  # fixed seeds: a correct sampler falls below this once in 10,000 seeds


def step_stats_cpu(logits, mask=None, uniforms=None, temperature=0.0):
    return torch.ops.infogain._step_stats_cpu(logits, mask, uniforms, temperature)


def expected_stats(logits):
    """float64 entropy, top-1 prob / id, top-2 prob of softmax over the last axis (no masking)."""
    x = logits.double()
    p = torch.softmax(x, dim=-1)
    entropy = -torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum(-1)
    top = torch.sort(x, dim=-1, descending=True, stable=True)
    top1_id = top.indices[..., 0]
    top1 = p.gather(-1, top1_id.unsqueeze(-1)).squeeze(-1)
    if x.shape[-1] > 1:
        top2 = p.gather(-1, top.indices[..., 1:2]).squeeze(-1)
    else:
        top2 = torch.zeros_like(top1)
    return entropy, top1, top1_id, top2


def cdf_intervals(logits, tokens, temperature):
    """float64 [lower, upper) of the tempered CDF interval of each drawn token: [..., S] each."""
    x = logits.double()
    w = torch.exp((x - x.amax(-1, keepdim=True)) / temperature)
    cdf = torch.cumsum(w, -1) / w.sum(-1, keepdim=True)
    upper = cdf.gather(-1, tokens)
    lower = torch.where(tokens > 0, cdf.gather(-1, (tokens - 1).clamp(min=0)), torch.zeros_like(upper))
    return lower, upper


def random_logits(shape, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab", [1, 7, 8, 17, 1000, 2500])
def test_statistics_match_float64(dtype, vocab):
    logits = random_logits((3, 4, vocab), dtype, seed=vocab)
    if vocab > 8:
        logits[0, 1, : vocab // 2] = -math.inf  # suppressed tokens, across chunk boundaries
        logits[1, 2, 3] = logits[1, 2].max()    # a tied maximum: top2 == top1, first index wins
    entropy, top1, top1_id, top2, tokens, probs = step_stats_cpu(logits)
    e_entropy, e_top1, e_top1_id, e_top2 = expected_stats(logits)
    assert entropy.dtype == top1.dtype == top2.dtype == torch.float32 and top1_id.dtype == torch.int64
    assert tokens.shape == (3, 4, 0) and probs.shape == (3, 4, 0)
    torch.testing.assert_close(entropy.double(), e_entropy, atol=2e-5 * max(1.0, math.log(vocab)), rtol=1e-5)
    torch.testing.assert_close(top1.double(), e_top1, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(top2.double(), e_top2, atol=1e-6, rtol=1e-5)
    assert torch.equal(top1_id, e_top1_id)
    torch.testing.assert_close(torch.ops.infogain._row_entropy_cpu(logits, None), entropy, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_the_torch_reference(dtype):
    logits = random_logits((5, 3001), dtype, seed=1)
    logits[2, ::3] = -math.inf
    native = step_stats_cpu(logits)[:4]
    reference = step_stats_reference(logits, None, None, 0.0)[:4]
    for got, want in zip(native, reference):
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


def test_mask_skips_rows_without_reading_them():
    logits = random_logits((4, 6, 50), torch.float32, seed=2)
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(3)) < 0.5
    logits[~mask] = math.nan  # would poison any result that read them
    uniforms = torch.rand(24, 3, generator=torch.Generator().manual_seed(4))
    entropy, top1, top1_id, top2, tokens, probs = step_stats_cpu(logits, mask, uniforms, 1.0)
    skipped = ~mask
    assert (entropy[skipped] == 0).all() and (top1[skipped] == 0).all() and (top2[skipped] == 0).all()
    assert (top1_id[skipped] == -1).all() and (tokens[skipped] == -1).all() and (probs[skipped] == 0).all()
    e_entropy, e_top1, e_top1_id, _ = expected_stats(logits[mask])
    torch.testing.assert_close(entropy[mask].double(), e_entropy, atol=1e-5, rtol=1e-5)
    assert torch.equal(top1_id[mask], e_top1_id)
    entropy_only = torch.ops.infogain._row_entropy_cpu(logits, mask)
    torch.testing.assert_close(entropy_only, entropy, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_views_read_in_place(dtype):
    base = random_logits((6, 40, 130), dtype, seed=5)
    views = {
        "transposed": base.transpose(0, 1),            # leading dims permuted
        "sliced": base[1:5, 3:30, 7:120],              # offsets in every dim
        "strided_vocab": base[:, :10].transpose(1, 2),  # vocabulary stride != 1
        "expanded": base[0, 0].expand(3, 2, 130),       # stride-0 rows
    }
    for name, view in views.items():
        n_rows = view.shape[:-1].numel()
        uniforms = torch.rand(n_rows, 5, generator=torch.Generator().manual_seed(6))
        got = step_stats_cpu(view, None, uniforms, 0.8)
        want = step_stats_cpu(view.contiguous(), None, uniforms, 0.8)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=0, rtol=0, msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_draws_fall_in_their_cdf_interval(dtype, temperature):
    logits = random_logits((7, 3, 2100), dtype, seed=7)
    logits[0, 0, 100:2000] = -math.inf
    uniforms = torch.rand(21, 16, generator=torch.Generator().manual_seed(8))
    entropy, top1, top1_id, top2, tokens, probs = step_stats_cpu(logits, None, uniforms, temperature)
    assert tokens.shape == (7, 3, 16) and probs.shape == (7, 3, 16)
    lower, upper = cdf_intervals(logits, tokens, temperature)
    u = uniforms.view(7, 3, 16).double()
    # Sums in another order move a CDF boundary by a few float32 ulps of the total.
    assert ((lower - 1e-5 <= u) & (u <= upper + 1e-5)).all()
    assert not torch.isinf(logits.gather(-1, tokens)).any()
    expected_probs = torch.softmax(logits.double(), -1).gather(-1, tokens)
    torch.testing.assert_close(probs.double(), expected_probs, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_draws_follow_the_tempered_softmax(temperature):
    """Chi-square of 16 draws from each of 4000 identical rows (a stride-0 view)."""
    row = torch.tensor([0.0, 1.0, -1.0, 2.0, -math.inf, 0.5, 1.5, -0.5, 3.0, -math.inf, 0.2])
    logits = row.expand(4000, row.numel())
    uniforms = torch.rand(4000, 16, generator=torch.Generator().manual_seed(int(temperature * 10)))
    tokens = step_stats_cpu(logits, None, uniforms, temperature)[4]
    expected = torch.softmax(row.double() / temperature, -1)
    counts = torch.bincount(tokens.reshape(-1), minlength=row.numel()).double()
    support = expected > 0
    assert counts[~support].sum() == 0  # -inf entries are never drawn
    result = stats.chisquare(counts[support].numpy(), (expected[support] * counts.sum()).numpy())
    assert result.pvalue > P_VALUE_FLOOR
    # The same test has the power to reject the untempered distribution.
    if temperature != 1.0:
        wrong = torch.softmax(row.double(), -1)
        assert stats.chisquare(counts[support].numpy(), (wrong[support] * counts.sum()).numpy()).pvalue < P_VALUE_FLOOR


def test_draws_are_the_uniforms_inverse_cdf_in_row_major_order():
    logits = random_logits((2, 3, 10), torch.float32, seed=9)
    uniforms = torch.rand(6, 4, generator=torch.Generator().manual_seed(10))
    tokens = step_stats_cpu(logits, None, uniforms, 1.0)[4]
    cdf = torch.cumsum(torch.softmax(logits.double(), -1), -1).view(6, 10)
    expected = torch.searchsorted(cdf, uniforms.double(), right=True).clamp(max=9)
    assert torch.equal(tokens.view(6, 4), expected)


def test_temperature_zero_draws_top1_without_reading_uniforms():
    logits = random_logits((3, 5, 64), torch.bfloat16, seed=11)
    entropy, top1, top1_id, top2, _, _ = step_stats_cpu(logits)
    for uniforms in (torch.full((15, 4), math.nan), torch.empty(0, 4)):
        got = step_stats_cpu(logits, None, uniforms, 0.0)
        assert torch.equal(got[4], top1_id.unsqueeze(-1).expand(3, 5, 4))
        assert torch.equal(got[5], top1.unsqueeze(-1).expand(3, 5, 4))
    none = step_stats_cpu(logits, None, None, 0.0)
    assert none[4].shape == (3, 5, 0)
    empty = step_stats_cpu(logits, None, torch.empty(15, 0), 0.7)
    assert empty[4].shape == (3, 5, 0)


def test_bad_rows_are_flagged():
    logits = random_logits((3, 20), torch.float32, seed=12)
    logits[0, 5] = math.nan
    logits[1] = -math.inf
    entropy, top1, top1_id, top2, tokens, probs = step_stats_cpu(logits, None, torch.rand(3, 2), 1.0)
    assert torch.isnan(entropy[:2]).all() and torch.isfinite(entropy[2])
    assert (tokens[:2] == -1).all() and torch.isnan(probs[:2]).all() and (tokens[2] >= 0).all()
    with pytest.raises(ValueError, match="NaN"):
        infogain_kernels.token_stats(logits[:1])
    with pytest.raises(ValueError, match="-inf"):
        infogain_kernels.token_stats(logits[1:2])


def test_threads_do_not_change_results():
    logits = random_logits((64, 3000), torch.bfloat16, seed=13)
    uniforms = torch.rand(64, 8, generator=torch.Generator().manual_seed(14))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = step_stats_cpu(logits, None, uniforms, 0.9)
        torch.set_num_threads(2)
        two = step_stats_cpu(logits, None, uniforms, 0.9)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def test_invalid_arguments_name_the_argument():
    logits = torch.zeros(2, 3, 5)
    with pytest.raises(TypeError, match="logits"):
        step_stats_cpu(logits.long())
    with pytest.raises(ValueError, match="logits"):
        step_stats_cpu(torch.zeros(2, 0))
    with pytest.raises(ValueError, match="mask"):
        step_stats_cpu(logits, torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask"):
        step_stats_cpu(logits, torch.ones(2, 3))
    with pytest.raises(ValueError, match="uniforms"):
        step_stats_cpu(logits, None, torch.rand(5, 2), 1.0)
    with pytest.raises(TypeError, match="uniforms"):
        step_stats_cpu(logits, None, torch.rand(6, 2, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="temperature"):
        step_stats_cpu(logits, None, torch.rand(6, 2), -1.0)
    with pytest.raises(ValueError, match="temperature"):
        step_stats_cpu(logits, None, torch.rand(6, 2), math.inf)


def test_ops_dispatch_to_native_and_reference_can_be_forced():
    logits = random_logits((4, 3, 33), torch.float16, seed=15)
    with infogain_kernels.use_backend("native"):
        native = infogain_kernels.token_stats(logits)
        native_j = infogain_kernels.lookahead_objective(logits, torch.ones(4, 3, dtype=torch.bool), torch.zeros(4))
    with infogain_kernels.use_backend("reference"):
        reference = infogain_kernels.token_stats(logits)
        reference_j = infogain_kernels.lookahead_objective(logits, torch.ones(4, 3, dtype=torch.bool), torch.zeros(4))
    for a, b in zip(native + native_j, reference + reference_j):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
    assert _backend.use_native(logits)
    with infogain_kernels.use_backend("reference"):
        assert not _backend.use_native(logits)


def run_in_baseline_build(script):
    """Run ``script`` (which saves its results with ``torch.save`` to ``sys.argv[1]``) in a process
    where ATEN_CPU_CAPABILITY=default selects the native kernels built without AVX2; return them."""
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"native_cpu_default_{os.getpid()}.pt")
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    subprocess.run([sys.executable, "-c", script, path], check=True, env=env, timeout=120)
    try:
        return torch.load(path)
    finally:
        os.remove(path)


def test_baseline_isa_build_matches():
    """ATEN_CPU_CAPABILITY=default selects the kernel built without AVX2; it must agree too."""
    script = (
        "import torch, infogain_kernels._C\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x = (torch.randn(6, 1500, generator=g) * 3).to(torch.bfloat16)\n"
        "x[1, :700] = -float('inf')\n"
        "u = torch.rand(6, 4, generator=g)\n"
        "out = torch.ops.infogain._step_stats_cpu(x, None, u, 0.7)\n"
        "torch.save([x, u] + list(out), __import__('sys').argv[1])\n"
    )
    x, u, *baseline = run_in_baseline_build(script)
    here = step_stats_cpu(x, None, u, 0.7)  # this process: the vectorised build where the CPU has it
    for a, b in zip(baseline[:4], here[:4]):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
    lower, upper = cdf_intervals(x, baseline[4], 0.7)
    assert ((lower - 1e-5 <= u.double()) & (u.double() <= upper + 1e-5)).all()


def test_lm_head_baseline_isa_build_matches():
    """The LM-head statistics (several pieces, a bias with -inf) from the kernel built without AVX2."""
    script = (
        "import torch, infogain_kernels._C\n"
        "g = torch.Generator().manual_seed(0)\n"
        "h = torch.randn(70, 48, generator=g)\n"
        "w = torch.randn(4001, 48, generator=g) * 0.3\n"
        "b = torch.randn(4001, generator=g)\n"
        "b[::5] = -float('inf')\n"
        "out = torch.ops.infogain._lm_head_stats_cpu(h, w, b, True)\n"
        "torch.save([h, w, b] + list(out), __import__('sys').argv[1])\n"
    )
    h, w, b, *baseline = run_in_baseline_build(script)
    here = torch.ops.infogain._lm_head_stats_cpu(h, w, b, True)
    assert torch.equal(baseline[2], here[2])
    for a, c in zip(baseline, here):
        torch.testing.assert_close(a, c, atol=2e-6, rtol=1e-5)


def test_lm_head_native_rejects_bad_arguments():
    h, w = torch.randn(3, 8), torch.randn(10, 8)
    with pytest.raises(ValueError, match="weight must have shape"):
        torch.ops.infogain._lm_head_stats_cpu(h, torch.randn(10, 7), None, False)
    with pytest.raises(TypeError, match="weight must have hidden's dtype"):
        torch.ops.infogain._lm_head_stats_cpu(h, w.double(), None, False)
    with pytest.raises(TypeError, match="hidden must have dtype"):
        torch.ops.infogain._lm_head_stats_cpu(h.double(), w.double(), None, False)
    with pytest.raises(ValueError, match="bias must have shape"):
        torch.ops.infogain._lm_head_stats_cpu(h, w, torch.zeros(9), False)
    with pytest.raises(ValueError, match=r"hidden must have shape \[n, D\]"):
        torch.ops.infogain._lm_head_stats_cpu(h[None], w, None, False)


def test_gumbel_topk_native_equals_the_reference_exactly():
    """Same seed, same noise, same ranking: the native call reproduces the torch reference bit for bit
    (ties, -inf scores, invalid positions, k above the valid count, temperature 0)."""
    from infogain_kernels.gumbel_topk import _gumbel_topk_reference

    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        rows, positions = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 40, (1,), generator=g))
        k, samples = int(torch.randint(1, 45, (1,), generator=g)), int(torch.randint(1, 5, (1,), generator=g))
        scores = torch.round(4 * torch.rand(rows, positions, generator=g)) / 4
        scores[torch.rand(rows, positions, generator=g) < 0.1] = -math.inf
        valid = torch.rand(rows, positions, generator=g) < 0.6
        temperature = (0.0, 0.3, 1.7)[trial % 3]
        seed = torch.randint(0, 2 ** 62, (1,), generator=g)
        dtype = DTYPES[trial % 3]
        native = torch.ops.infogain._gumbel_topk_cpu(scores.to(dtype), k, samples, temperature, valid, seed)
        reference = _gumbel_topk_reference(scores.to(dtype), k, samples, temperature, valid, seed)
        assert torch.equal(native, reference), trial


def test_gumbel_topk_native_equals_the_reference_on_noise_longer_than_its_chunk():
    """The native call draws its noise a stack chunk at a time: rows of the stream that straddle
    chunks, and strided (transposed) scores and mask, still give the reference's positions."""
    from infogain_kernels.gumbel_topk import _gumbel_topk_reference

    g = torch.Generator().manual_seed(1)
    for rows, positions, k, samples in ((24, 256, 8, 8), (3, 1000, 5, 4), (5, 37, 40, 9)):
        scores = torch.randn(positions, rows, generator=g).t()  # column-major [rows, positions]
        valid = (torch.rand(positions, rows, generator=g) < 0.7).t()
        seed = torch.randint(0, 2 ** 62, (1,), generator=g)
        for dtype in DTYPES:
            x = scores.to(dtype)
            native = torch.ops.infogain._gumbel_topk_cpu(x, k, samples, 0.7, valid, seed)
            assert torch.equal(native, _gumbel_topk_reference(x, k, samples, 0.7, valid, seed)), (rows, dtype)
