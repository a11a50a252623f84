"""The native CPU nucleus kernel (csrc/nucleus_cpu*.cpp) behind topk_logprobs / sample_logprob.

Against the float64 full-sort spec of test_topk_logprobs (ids exactly, log-probabilities within
float32 rounding) and against the torch reference (same ids, same nucleus, same draw from the same
generator state). The two backends compute the row's log-sum-exp in float32 in different orders,
so their fixed-point masses can differ in the last bits: a nucleus boundary whose mass above lies
within ``NEAR_TIE`` of top_p, or a draw within rounding of a CDF boundary, may fall on either side.
Random inputs are checked up to those cases; the constructed corners keep clear of them.
"""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from infogain_kernels import _backend, sample_logprob, topk_logprobs, use_backend
from test_native_cpu import run_in_baseline_build
from test_nucleus_split import mass_above
from test_topk_logprobs import expected_ids, filtered_logprobs

pytestmark = pytest.mark.skipif(not _backend._native_available(),
                                reason="infogain_kernels._C was built without the native CPU kernels")

NEAR_TIE = 1e-5
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def random_rows(rows, vocab, seed=0, scale=3.0, dtype=torch.float32):
    x = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale
    if vocab > 4:
        x[0, 1::3] = -math.inf  # suppressed tokens
    return x.to(dtype)


def both(fn):
    """``fn()`` on the native kernel, then on the torch reference."""
    with use_backend("native"):
        native = fn()
    with use_backend("reference"):
        reference = fn()
    return native, reference


def assert_matches_spec(logits, k, temperature, top_p, ids, lp):
    """Exact ids; log-probabilities of the spec, except nucleus membership within NEAR_TIE of top_p."""
    assert torch.equal(ids, expected_ids(logits.float(), temperature, k))
    want = filtered_logprobs(logits.float(), temperature, top_p).gather(1, ids).float()
    near = (mass_above(logits.float(), temperature, ids) - top_p).abs() < NEAR_TIE if top_p < 1 else \
        torch.zeros_like(ids, dtype=torch.bool)
    assert torch.equal(torch.isfinite(lp) | near, torch.isfinite(want) | near)
    both_finite = torch.isfinite(lp) & torch.isfinite(want)
    torch.testing.assert_close(lp[both_finite], want[both_finite], atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("vocab", [1, 7, 1000, 50257])
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 0.3), (1.3, 0.999), (0.7, 1e-6)])
def test_native_matches_spec_and_reference(dtype, vocab, temperature, top_p):
    logits = random_rows(3, vocab, seed=vocab, dtype=dtype)
    k = min(5, vocab)
    (ids, lp), (ref_ids, ref_lp) = both(lambda: topk_logprobs(logits, k, temperature=temperature, top_p=top_p))
    assert_matches_spec(logits, k, temperature, top_p, ids, lp)
    assert torch.equal(ids, ref_ids)
    same = torch.isfinite(lp) & torch.isfinite(ref_lp)
    torch.testing.assert_close(lp[same], ref_lp[same], atol=5e-5, rtol=1e-5)


def test_radix_select_resolves_the_last_bits():
    # Distinct float32 values one ulp apart (every radix digit matters) in tie groups of 3, and a
    # nucleus far wider than k, so the threshold comes from the radix select, not the top-k.
    vocab = 300
    values = 1.0 + (torch.arange(vocab) // 3).float() * 2.0 ** -23
    logits = values[torch.randperm(vocab, generator=torch.Generator().manual_seed(1))][None, :].repeat(2, 1)
    logits[1] = logits[1] * 50.0
    for top_p in (0.5, 0.301, 0.9):
        (ids, lp), (ref_ids, ref_lp) = both(lambda: topk_logprobs(logits, 4, top_p=top_p))
        assert torch.equal(ids, ref_ids)
        torch.testing.assert_close(lp, filtered_logprobs(logits, 1.0, top_p).gather(1, ids).float(),
                                   atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nucleus_boundaries_ties_and_neg_inf(dtype):
    # Row 0: one finite token. Row 1: all tied. Row 2: a tie group straddling the k-th place and
    # the nucleus boundary (4 tokens of 0.2 each after a 0.1 token at a higher rank: top_p 0.35 keeps
    # the whole group). Row 3: k past the nucleus, -inf tokens inside the top-k.
    logits = torch.full((4, 40), -math.inf)
    logits[0, 17] = 3.0
    logits[1] = 0.0
    group = math.log(0.2)
    logits[2, [3, 9, 21, 30]] = group
    logits[2, 5] = math.log(0.1)
    logits[2, [1, 2]] = math.log(0.05)
    logits[3, :3] = torch.tensor([2.0, 1.0, 0.5])
    logits = logits.to(dtype)
    for top_p in (1e-6, 0.35, 0.5, 1.0):
        with use_backend("native"):
            ids, lp = topk_logprobs(logits, 6, top_p=top_p)
            token, token_lp = sample_logprob(logits, mode="sample", top_p=top_p,
                                             generator=torch.Generator().manual_seed(3))
        assert_matches_spec(logits, 6, 1.0, top_p, ids, lp)
        spec = filtered_logprobs(logits.float(), 1.0, top_p)
        assert torch.isfinite(spec.gather(1, token[:, None])).all(), "a draw outside the nucleus"
        torch.testing.assert_close(token_lp, spec.gather(1, token[:, None]).squeeze(1).float(),
                                   atol=2e-5, rtol=1e-5)
    assert ids[0, 0] == 17 and torch.isinf(lp[0, 1:]).all()
    assert ids[2, :4].tolist() == [3, 9, 21, 30]  # the tie group, by id


def test_strides_and_large_k():
    base = random_rows(6, 2 * 1003, seed=5)
    views = {"column stride 2": base[:, ::2], "transposed": base[:, :1003].t().contiguous().t(),
             "row stride 0": base[:1, :1003].expand(3, -1), "offset": base[1:4, 7:1010]}
    for name, logits in views.items():
        for k, top_p in ((3, 0.9), (700, 0.5), (1003, 1.0)):  # k past the native top-k buffer (k + 256)
            (ids, lp), (ref_ids, ref_lp) = both(lambda: topk_logprobs(logits, k, temperature=0.8, top_p=top_p))
            assert torch.equal(ids, ref_ids), name
            torch.testing.assert_close(lp, ref_lp, atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (1.4, 0.5)])
def test_same_generator_state_same_draw_as_the_reference(dtype, temperature, top_p):
    # One uniform per row from the wrapper's seed; the native kernel and the reference turn it into
    # the same token, except within float rounding of a CDF boundary (their masses differ in the last
    # bits): then the two tokens are neighbours in the nucleus, and such cases are rare.
    logits = random_rows(400, 300, seed=2, scale=1.0, dtype=dtype)

    def draw():
        return sample_logprob(logits, mode="sample", temperature=temperature, top_p=top_p,
                              generator=torch.Generator().manual_seed(17))

    (token, lp), (ref_token, ref_lp) = both(draw)
    differ = (token != ref_token).nonzero().flatten().tolist()
    assert len(differ) <= 2, differ
    spec = filtered_logprobs(logits.float(), temperature, top_p)
    for row in differ:
        members = torch.isfinite(spec[row]).nonzero().flatten().tolist()
        a, b = sorted((members.index(int(token[row])), members.index(int(ref_token[row]))))
        assert b == a + 1, (row, token[row], ref_token[row])
    same = token == ref_token
    torch.testing.assert_close(lp[same], ref_lp[same], atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.8), (1.5, 0.95)])
def test_native_draw_frequencies_chi_square(temperature, top_p):
    base = torch.tensor([[1.5, 0.2, -math.inf, 0.9, -0.4, 1.1, 0.0, -1.2, 0.7, -0.1]])
    draws = 20000
    with use_backend("native"):
        token, logprob = sample_logprob(base.expand(draws, -1), mode="sample", temperature=temperature, top_p=top_p,
                                        generator=torch.Generator().manual_seed(1234))
    spec = filtered_logprobs(base, temperature, top_p)[0]
    torch.testing.assert_close(logprob, spec[token].float(), atol=2e-5, rtol=1e-5)
    counts = np.bincount(token.numpy(), minlength=base.shape[1])
    support = torch.isfinite(spec).numpy()
    assert counts[~support].sum() == 0, "a token outside the nucleus was drawn"
    assert stats.chisquare(counts[support], spec.exp().numpy()[support] * draws).pvalue > 1e-3


def test_wide_vocabulary_draws_chi_square():
    # A flat row over 3000 tokens (nucleus of ~2700 at top_p 0.9, found by the radix select), drawn
    # 3000 times: frequencies of 10 equal-mass buckets of the nucleus in probability order.
    logits = torch.randn(1, 3000, generator=torch.Generator().manual_seed(8)) * 0.3
    draws = 3000
    with use_backend("native"):
        token, _ = sample_logprob(logits.expand(draws, -1).to(torch.bfloat16), mode="sample", top_p=0.9,
                                  generator=torch.Generator().manual_seed(99))
    spec = filtered_logprobs(logits.to(torch.bfloat16).float(), 1.0, 0.9)[0].exp()
    assert (spec[token] > 0).all()
    cdf = torch.cumsum(spec, 0)
    bucket = torch.clamp((cdf[token] - spec[token] / 2) * 10 / cdf[-1], max=9).long()
    counts = np.bincount(bucket.numpy(), minlength=10)
    expected = np.histogram((cdf - spec / 2).numpy() * 10 / float(cdf[-1]), bins=10, range=(0, 10),
                            weights=spec.numpy())[0] / float(cdf[-1]) * draws
    assert stats.chisquare(counts, expected).pvalue > 1e-3


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_invalid_rows_raise(dtype):
    logits = random_rows(3, 50, seed=1).to(dtype)
    nan = logits.clone()
    nan[2, 10] = math.nan
    dead = logits.clone()
    dead[1] = -math.inf
    with use_backend("native"):
        with pytest.raises(ValueError, match="row 2 contains NaN"):
            topk_logprobs(nan, 3, top_p=0.9)
        with pytest.raises(ValueError, match="row 1 is entirely -inf"):
            sample_logprob(dead, mode="sample", top_p=0.5)
        if dtype == torch.float32:
            with pytest.raises(ValueError, match="row 0 overflows"):
                big = logits.clone()
                big[0, 3] = 3e38
                topk_logprobs(big, 3, temperature=0.5)
        # Unchecked (as under torch.compile), a bad row reports a NaN log-sum-exp and log-probabilities.
        ids, lp, token, token_lp, lse = torch.ops.infogain._nucleus_cpu(nan, 3, 1.0, 0.9, None)
        assert torch.isnan(lse[2]) and torch.isnan(lp[2]).all() and torch.isfinite(lse[:2]).all()


def test_op_validates_its_arguments():
    logits = random_rows(2, 20)
    op = torch.ops.infogain._nucleus_cpu
    with pytest.raises(ValueError, match="k must be in"):
        op(logits, 21, 1.0, 1.0, None)
    with pytest.raises(ValueError, match="top_p"):
        op(logits, 2, 1.0, 1.5, None)
    with pytest.raises(ValueError, match="temperature"):
        op(logits, 2, -1.0, 1.0, None)
    with pytest.raises(ValueError, match="shape"):
        op(logits[0], 2, 1.0, 1.0, None)
    with pytest.raises(ValueError, match="seed"):
        op(logits, 2, 1.0, 1.0, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="dtype"):
        op(logits.double(), 2, 1.0, 1.0, None)
    ids, lp, token, token_lp, lse = op(logits[:0], 2, 1.0, 1.0, None)
    assert ids.shape == (0, 2) and token.shape == (0,)


def test_threads_give_the_same_result():
    logits = random_rows(8, 40000, seed=6, dtype=torch.bfloat16)  # 2 row tasks at 2 threads
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with use_backend("native"):
                results.append(sample_logprob(logits, mode="sample", temperature=0.7, top_p=0.9,
                                              generator=torch.Generator().manual_seed(4)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_baseline_build_agrees():
    """ATEN_CPU_CAPABILITY=default selects the kernel built without AVX2: same ids, nucleus and draws."""
    script = (
        "import sys, torch, infogain_kernels._C\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x = (torch.randn(5, 1203, generator=g) * 2).to(torch.bfloat16)\n"
        "x[1, :600] = -float('inf')\n"
        "seed = torch.tensor([9])\n"
        "out = [torch.ops.infogain._nucleus_cpu(x, 4, t, p, seed) for t, p in ((0.7, 0.9), (1.0, 1.0), (0.0, 0.5))]\n"
        "torch.save([x, out], sys.argv[1])\n"
    )
    x, baseline = run_in_baseline_build(script)
    for (temperature, top_p), theirs in zip(((0.7, 0.9), (1.0, 1.0), (0.0, 0.5)), baseline):
        ours = torch.ops.infogain._nucleus_cpu(x, 4, temperature, top_p, torch.tensor([9]))
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[2], theirs[2])  # ids, drawn tokens
        for a, b in zip(ours[1::2], theirs[1::2]):  # log-probabilities, log-sum-exp
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
