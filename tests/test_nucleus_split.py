"""The split-vocabulary nucleus kernels behind topk_logprobs / sample_logprob.

Interpreter lane (CPU, small V): the Triton path with rows split across several programs and
unsplit (the private knob ``_FORCE_SPLITS``) against the torch reference; the radix select at its
corners (thresholds that differ only in the last bits, ties, -inf, top_p at both ends); draws that
do not depend on how a row is split; chi-square frequencies of split draws.

GPU lane (``@pytest.mark.gpu``): real vocabulary widths in bf16 / fp16 / fp32 at T = 0.7, where the
kernels divide with ``div_rn`` as torch does, so the ranking must equal the reference's exactly.
Nucleus membership may differ from the float64 spec only for tokens whose mass above lies within
``NEAR_TIE`` of top_p (float32 log-sum-exp and 2**-40 fixed point on either side); such tokens are
excluded from the comparison.
"""
import importlib
import math

import numpy as np
import pytest
import torch
from scipy import stats

from infogain_kernels import sample_logprob, topk_logprobs, use_backend
from test_topk_logprobs import filtered_logprobs  # the float64 full-sort spec

# The Triton half of the nucleus op: launch configuration, the private split knob, the kernels.
nucleus_module = importlib.import_module("infogain_kernels._nucleus_triton")

NEAR_TIE = 1e-5


def mass_above(logits, temperature, ids):
    """float64 mass of the tokens strictly more probable than each of ``ids`` [B, k]."""
    s = logits.double() / (temperature if temperature > 0 else 1.0)
    p = torch.softmax(s, dim=-1)
    return (p[:, None, :] * (s[:, None, :] > s.gather(1, ids)[:, :, None])).sum(-1)


def expected_ids(logits, temperature, k):
    s = logits.float() / temperature if temperature > 0 else logits.float()
    return torch.sort(s, dim=-1, descending=True, stable=True).indices[:, :k]


@pytest.fixture(params=[1, 3], ids=["unsplit", "3-splits"])
def splits(request, monkeypatch):
    monkeypatch.setattr(nucleus_module, "_FORCE_SPLITS", request.param)
    return request.param


def rows_with_corners(vocab, seed=0):
    """Row 0 random with -inf entries, row 1 flat (wide nucleus), row 2 peaked (nucleus of ~2)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, vocab, generator=g) * 2.0
    x[0, 1::5] = -math.inf
    x[1] *= 0.05
    x[2, vocab // 3] = 30.0
    x[2, vocab // 2] = 29.5
    return x


@pytest.mark.parametrize("vocab", [37, 1000])
@pytest.mark.parametrize("temperature,top_p", [(1.0, 0.9), (0.7, 0.5), (0.0, 0.999), (1.3, 1.0), (1.0, 1e-6)])
def test_split_and_unsplit_match_reference(triton_interpreted, splits, vocab, temperature, top_p):
    logits = rows_with_corners(vocab)
    k = 6
    with use_backend("reference"):
        ref_ids, ref_lp = topk_logprobs(logits, k, temperature=temperature, top_p=top_p)
    with use_backend("triton"):
        ids, lp = topk_logprobs(logits, k, temperature=temperature, top_p=top_p)
        token, token_lp = sample_logprob(logits, mode="greedy", temperature=temperature, top_p=top_p)
    assert torch.equal(ids, ref_ids) and torch.equal(ids, expected_ids(logits, temperature, k))
    torch.testing.assert_close(lp, ref_lp, atol=2e-5, rtol=1e-5)
    spec = filtered_logprobs(logits, temperature, top_p)
    torch.testing.assert_close(lp, spec.gather(1, ids).float(), atol=2e-5, rtol=1e-5)
    assert torch.equal(token, ids[:, 0])
    torch.testing.assert_close(token_lp, lp[:, 0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_logits_rank_without_division(triton_interpreted, monkeypatch, dtype):
    # 16-bit logits rank by x (same order and ties as x / T) and search 2 (bf16) / 3 (fp16) radix digits.
    monkeypatch.setattr(nucleus_module, "_FORCE_SPLITS", 3)
    logits = (torch.randn(2, 999, generator=torch.Generator().manual_seed(4)) * 2.0).to(dtype)
    logits[0, ::7] = -math.inf
    logits[1, 100:140] = logits[1, 7]  # a tie group
    for temperature, top_p in ((0.7, 0.9), (1.3, 0.5)):
        with use_backend("triton"):
            ids, lp = topk_logprobs(logits, 6, temperature=temperature, top_p=top_p)
            token, token_lp = sample_logprob(logits, mode="sample", temperature=temperature, top_p=top_p,
                                             generator=torch.Generator().manual_seed(1))
        spec = filtered_logprobs(logits.float(), temperature, top_p)
        assert torch.equal(ids, expected_ids(logits, temperature, 6))
        torch.testing.assert_close(lp, spec.gather(1, ids).float(), atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(token_lp, spec.gather(1, token[:, None]).squeeze(1).float(), atol=2e-5, rtol=1e-5)


def test_radix_select_resolves_the_last_bits(triton_interpreted, splits):
    # Distinct values 1 + j * 2**-23 share their top 24 bits: every radix digit is needed, and the
    # boundary lands between neighbours one ulp apart. Tie groups of 3 test the "keep all ties" rule.
    vocab = 300
    values = 1.0 + (torch.arange(vocab) // 3).float() * 2.0 ** -23
    logits = values[torch.randperm(vocab, generator=torch.Generator().manual_seed(1))][None, :].repeat(2, 1)
    logits[1] = logits[1] * 50.0  # same order, masses now differ visibly
    for top_p in (0.5, 0.301, 0.9):
        for backend in ("reference", "triton"):
            with use_backend(backend):
                ids, lp = topk_logprobs(logits, 4, top_p=top_p)
            spec = filtered_logprobs(logits, 1.0, top_p)
            torch.testing.assert_close(lp, spec.gather(1, ids).float(), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_top_p_corners(backend, triton_interpreted):
    one_finite = torch.full((1, 50), -math.inf)
    one_finite[0, 17] = 3.0
    equal = torch.zeros(1, 33)
    with use_backend(backend):
        ids, lp = topk_logprobs(one_finite, 3, top_p=0.5)
        assert ids[0, 0] == 17 and lp[0, 0] == 0.0 and torch.isinf(lp[0, 1:]).all()
        token, token_lp = sample_logprob(one_finite, mode="sample", top_p=0.3, generator=torch.Generator().manual_seed(0))
        assert token.item() == 17 and token_lp.item() == 0.0
        # Every token tied: any top_p keeps the whole tie group.
        for top_p in (1e-6, 0.5, 1.0):
            _, lp = topk_logprobs(equal, 2, top_p=top_p)
            torch.testing.assert_close(lp, torch.full((1, 2), -math.log(33)))


@pytest.mark.parametrize("top_p", [1.0, 0.6])
def test_draws_do_not_depend_on_the_split(triton_interpreted, monkeypatch, top_p):
    # A draw is a function of (seed, row, integer masses) only: the same for any split of the row.
    logits = torch.randn(3, 700, generator=torch.Generator().manual_seed(2)) * 0.5
    logits[:, ::7] = -math.inf
    draws = []
    for forced in (1, 2, 5):
        monkeypatch.setattr(nucleus_module, "_FORCE_SPLITS", forced)
        with use_backend("triton"):
            draws.append(sample_logprob(logits, mode="sample", temperature=0.9, top_p=top_p,
                                        generator=torch.Generator().manual_seed(11)))
    for token, logprob in draws[1:]:
        assert torch.equal(token, draws[0][0])
        torch.testing.assert_close(logprob, draws[0][1])
    spec = filtered_logprobs(logits, 0.9, top_p)
    torch.testing.assert_close(draws[0][1], spec.gather(1, draws[0][0][:, None]).squeeze(1).float(),
                               atol=2e-5, rtol=1e-5)


def power_against_temperature_error(base, temperature, top_p, draws, factor=1.3):
    """Probability that the chi-square test at P_VALUE_FLOOR rejects a sampler that draws at
    ``temperature * factor`` or ``temperature / factor`` instead (the smaller of the two): the
    statistic is then noncentral chi-square with noncentrality draws * sum (q - p)^2 / p over the
    nucleus (draws outside it, which the test also rejects, are conservatively ignored)."""
    p = filtered_logprobs(base[None], temperature, top_p)[0].exp().double()
    support = p > 0
    dof = int(support.sum()) - 1
    critical = stats.chi2.ppf(1 - P_VALUE_FLOOR, dof)
    powers = []
    for wrong in (temperature * factor, temperature / factor):
        q = filtered_logprobs(base[None], wrong, top_p)[0].exp().double()
        noncentrality = draws * float(((q - p)[support] ** 2 / p[support]).sum())
        powers.append(stats.ncx2.sf(critical, dof, noncentrality))
    return min(powers)


P_VALUE_FLOOR = 1e-3
# A ladder of logits 0.56 apart (0.7 at T = 0.8) over 8 live tokens: the distribution whose frequencies
# move most under a 1.3x temperature error per draw, so that 800 draws reject it with probability
# >= 0.99 (test_split_draws_have_the_power_to_reject_a_temperature_error). -inf entries sit between.
SPLIT_BASE = torch.tensor([0.0, -0.56, -math.inf, -1.12, -1.68, -2.24, -math.inf, -2.8, -3.36, -3.92])
SPLIT_DRAWS, SPLIT_TEMPERATURE, SPLIT_TOP_P = 800, 0.8, 0.99


def test_split_draws_have_the_power_to_reject_a_temperature_error():
    assert power_against_temperature_error(SPLIT_BASE, SPLIT_TEMPERATURE, SPLIT_TOP_P, SPLIT_DRAWS) >= 0.99
    assert power_against_temperature_error(SPLIT_BASE, SPLIT_TEMPERATURE, SPLIT_TOP_P, 120) < 0.1  # the old size


@pytest.mark.slow
def test_split_draw_frequencies_chi_square(triton_interpreted, monkeypatch):
    """The Triton lane's test of sample_logprob's draw frequencies (draws do not depend on the split,
    test_draws_do_not_depend_on_the_split, so this covers unsplit rows too); the torch and native
    lanes test 20000 draws in test_sample_logprob."""
    monkeypatch.setattr(nucleus_module, "_FORCE_SPLITS", 2)
    base = SPLIT_BASE
    logits = torch.full((1, 48), -math.inf)
    logits[0, ::5] = base  # the support spreads over the 2 splits of 32 columns
    draws = SPLIT_DRAWS
    with use_backend("triton"):
        token, logprob = sample_logprob(logits.expand(draws, -1), mode="sample", temperature=SPLIT_TEMPERATURE,
                                        top_p=SPLIT_TOP_P, generator=torch.Generator().manual_seed(5))
    assert (token % 5 == 0).all()
    token = token // 5
    spec = filtered_logprobs(base[None], SPLIT_TEMPERATURE, SPLIT_TOP_P)
    support = torch.isfinite(spec[0]).numpy()
    counts = np.bincount(token.numpy(), minlength=base.shape[0])
    assert counts[~support].sum() == 0, "a token outside the nucleus was drawn"
    torch.testing.assert_close(logprob, spec[0, token].float(), atol=2e-5, rtol=1e-5)
    assert stats.chisquare(counts[support], spec[0].exp().numpy()[support] * draws).pvalue > P_VALUE_FLOOR
    # The same counts reject a 1.3x temperature error either way (the power shown above).
    for wrong in (SPLIT_TEMPERATURE * 1.3, SPLIT_TEMPERATURE / 1.3):
        q = filtered_logprobs(base[None], wrong, SPLIT_TOP_P)[0].exp().numpy()
        assert stats.chisquare(counts[support], q[support] / q[support].sum() * draws).pvalue < P_VALUE_FLOOR


def test_launch_config_uses_the_sms():
    # Few rows: split so that about one program per SM runs, in chunks of whole 1024-wide blocks.
    splits, chunk, block_v = nucleus_module._launch_config(1, 152064, 132)
    assert block_v == 1024 and chunk % block_v == 0 and splits * chunk >= 152064 > (splits - 1) * chunk
    assert 16 <= splits <= 132
    splits4, _, _ = nucleus_module._launch_config(4, 152064, 132)
    assert splits4 * 4 <= 132 + 4
    assert nucleus_module._launch_config(256, 152064, 132)[0] == 1
    assert nucleus_module._launch_config(1, 7, 132) == (1, 16, 16)


def test_aot_configs_cover_every_kernel():
    pytest.importorskip("triton")
    configs = nucleus_module.aot_configs()
    kernels = {c["kernel"] for c in configs}
    assert kernels == {nucleus_module._partials_kernel, nucleus_module._radix_pass_kernel,
                       nucleus_module._draw_kernel}
    for c in configs:
        assert set(c["signature"]) == set(c["kernel"].arg_names)
        assert all(c["signature"][name] == "constexpr" for name in c["constexprs"])
        # 16-byte loads everywhere but in the radix pass (one element per thread for its scatter).
        dtype = c["signature"]["x_ptr"][1:].split(":")[0]   # "*bf16", or "*bf16:16" with an alignment hint
        width = 16 // {"bf16": 2, "fp16": 2, "fp32": 4}[dtype]
        assert c["constexprs"]["VEC"] == (1 if c["kernel"] is nucleus_module._radix_pass_kernel else width)


# ---- GPU lane --------------------------------------------------------------------------------


def assert_matches_spec_up_to_near_ties(logits, ids, lp, temperature, top_p):
    spec = filtered_logprobs(logits.float(), temperature, top_p)
    assert torch.equal(ids, expected_ids(logits, temperature, ids.shape[1]))
    want = spec.gather(1, ids).float()
    near = (mass_above(logits.float(), temperature, ids) - top_p).abs() < NEAR_TIE
    assert torch.equal(torch.isfinite(lp) | near, torch.isfinite(want) | near)
    both = torch.isfinite(lp) & torch.isfinite(want)
    torch.testing.assert_close(lp[both], want[both], atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("vocab", [126464, 152064])
@pytest.mark.parametrize("rows", [1, 4])
@pytest.mark.parametrize("top_p", [1.0, 0.9, 0.5])
def test_cuda_tempered_ranking_and_nucleus(dtype, vocab, rows, top_p):
    g = torch.Generator().manual_seed(vocab + rows)
    logits = (torch.randn(rows, vocab, generator=g) * 3.0).to(dtype)
    logits[:, ::97] = -math.inf
    logits[0, 1000:1040] = logits[0, 5000]  # an exact tie group
    ids, lp = topk_logprobs(logits.cuda(), 8, temperature=0.7, top_p=top_p)
    assert_matches_spec_up_to_near_ties(logits, ids.cpu(), lp.cpu(), 0.7, top_p)
    token, token_lp = sample_logprob(logits.cuda(), mode="sample", temperature=0.7, top_p=top_p,
                                     generator=torch.Generator("cuda").manual_seed(3))
    spec = filtered_logprobs(logits.float(), 0.7, top_p)
    want = spec.gather(1, token.cpu()[:, None]).squeeze(1).float()
    assert torch.isfinite(want).all(), "a token outside the nucleus was drawn"
    torch.testing.assert_close(token_lp.cpu(), want, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_cuda_draw_frequencies_chi_square():
    base = torch.tensor([1.5, 0.2, -math.inf, 0.9, -0.4, 1.1, 0.0, -1.2])
    logits = torch.full((1, 152064), -math.inf)
    logits[0, 150000:150008] = base  # the support sits in the last split
    draws = 20000
    token, _ = sample_logprob(logits.cuda().expand(draws, -1), mode="sample", temperature=0.7, top_p=0.9,
                              generator=torch.Generator("cuda").manual_seed(1))
    spec = filtered_logprobs(base[None], 0.7, 0.9)
    counts = np.bincount(token.cpu().numpy() - 150000, minlength=8)
    support = torch.isfinite(spec[0]).numpy()
    assert counts[~support].sum() == 0 and counts.sum() == draws
    assert stats.chisquare(counts[support], spec[0].exp().numpy()[support] * draws).pvalue > 1e-3
