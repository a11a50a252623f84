"""sample_logprob: greedy exactness, chi-square frequencies of sampling, determinism, errors."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from infogain_kernels import _backend, sample_logprob, use_backend


def filtered_logprobs(logits, temperature, top_p):
    """Independent spec (float64, full sort-free pairwise form): nucleus = tokens whose strictly
    more probable mass is < top_p; log softmax(logits/T) renormalised over it, -inf outside."""
    s = logits.double() / (temperature if temperature > 0 else 1.0)
    p = torch.softmax(s, dim=-1)
    mass_above = (p[..., None, :] * (s[..., None, :] > s[..., :, None])).sum(-1)
    keep = mass_above < top_p if top_p < 1 else torch.ones_like(p, dtype=torch.bool)
    nucleus = (p * keep).sum(-1, keepdim=True)
    return torch.where(keep, torch.log(p) - torch.log(nucleus), torch.full_like(p, -math.inf))


def make_logits(rows, vocab, seed=0, scale=2.0):
    x = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale
    if vocab > 4:
        x[:, 2] = -math.inf
    return x


BACKENDS = ["reference", "native", "triton"]


@pytest.fixture
def device_of(request):
    """Device the inputs must live on for a backend: the reference and the native kernel run on CPU
    tensors (the test skips where the native kernel or Triton cannot run)."""
    def device(backend):
        if backend == "triton":
            return request.getfixturevalue("triton_device")
        if backend == "native" and not _backend._native_available():
            pytest.skip("infogain_kernels._C was built without the native CPU kernels")
        return "cpu"
    return device


def seeded(seed, device):
    return torch.Generator(device=device).manual_seed(seed)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("vocab", [1, 7, 1000])
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.5, 0.9), (0.0, 0.6), (2.0, 0.3)])
def test_greedy_is_argmax_with_filtered_logprob(backend, device_of, vocab, temperature, top_p):
    logits = make_logits(4, vocab)
    with use_backend(backend):
        token, logprob = sample_logprob(logits.to(device_of(backend)), mode="greedy", temperature=temperature,
                                        top_p=top_p)
    token, logprob = token.cpu(), logprob.cpu()
    assert token.dtype == torch.int64 and logprob.dtype == torch.float32 and token.shape == (4,)
    assert token.tolist() == logits.argmax(dim=1).tolist()
    spec = filtered_logprobs(logits, temperature, top_p).gather(1, token[:, None]).squeeze(1).float()
    torch.testing.assert_close(logprob, spec, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_temperature_zero_sample_mode_is_greedy(backend, device_of):
    logits = make_logits(5, 50, seed=2).to(device_of(backend))
    with use_backend(backend):
        sampled = sample_logprob(logits, mode="sample", temperature=0.0, top_p=0.7)
        greedy = sample_logprob(logits, mode="greedy", temperature=0.0, top_p=0.7)
    assert torch.equal(sampled[0], greedy[0]) and torch.equal(sampled[1], greedy[1])


# 20000 draws reject a 1.3x temperature error with probability ~1 (checked on the counts below). The
# Triton lane's frequencies are tested in test_nucleus_split.py (test_split_draw_frequencies_chi_square,
# sized there for that power): the interpreter runs one program per row, about 0.1-0.2 s each, so this
# file does not draw the same thing twice.
@pytest.mark.parametrize("backend,draws,temperature,top_p", [
    ("reference", 20000, 1.0, 1.0), ("reference", 20000, 0.7, 0.8), ("reference", 20000, 1.5, 0.95),
    ("native", 20000, 1.0, 1.0), ("native", 20000, 0.7, 0.8), ("native", 20000, 1.5, 0.95)])
def test_sample_frequencies_chi_square(backend, draws, device_of, temperature, top_p):
    base = torch.tensor([[1.5, 0.2, -math.inf, 0.9, -0.4, 1.1, 0.0, -1.2]])
    device = device_of(backend)
    logits = base.to(device).expand(draws, -1)  # stride-0 rows: one distribution, many independent draws
    with use_backend(backend):
        token, logprob = sample_logprob(logits, mode="sample", temperature=temperature, top_p=top_p,
                                        generator=seeded(1234, device))
    token, logprob = token.cpu(), logprob.cpu()
    spec = filtered_logprobs(base, temperature, top_p)[0]
    torch.testing.assert_close(logprob, spec[token].float(), atol=2e-5, rtol=1e-5)
    counts = np.bincount(token.numpy(), minlength=base.shape[1])
    support = torch.isfinite(spec).numpy()
    assert counts[~support].sum() == 0, "a token outside the nucleus was drawn"
    expected = spec.exp().numpy()[support] * draws
    assert stats.chisquare(counts[support], expected).pvalue > 1e-3
    # The same counts reject a sampler 1.3x too hot or too cold (the test has the power to fail).
    for wrong in (temperature * 1.3, temperature / 1.3):
        q = filtered_logprobs(base, wrong, top_p)[0].exp().numpy()[support]
        assert stats.chisquare(counts[support], q / q.sum() * draws).pvalue < 1e-3, wrong


@pytest.mark.parametrize("backend", BACKENDS)
def test_nucleus_wider_than_probe(backend, device_of):
    # Flat distribution: the 0.9 nucleus holds far more than the 16 probed tokens (bisection + extra read).
    logits = torch.randn(6, 400, generator=torch.Generator().manual_seed(9)) * 0.2
    device = device_of(backend)
    with use_backend(backend):
        token, logprob = sample_logprob(logits.to(device), mode="sample", top_p=0.9, generator=seeded(0, device))
    token, logprob = token.cpu(), logprob.cpu()
    spec = filtered_logprobs(logits, 1.0, 0.9).gather(1, token[:, None]).squeeze(1)
    assert torch.isfinite(spec).all()
    torch.testing.assert_close(logprob, spec.float(), atol=2e-5, rtol=1e-5)
    assert len(set(token.tolist())) > 3  # draws spread over the wide nucleus


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_generator_state_same_draw(backend, device_of):
    device = device_of(backend)
    logits = make_logits(8, 100, seed=4, scale=0.5).to(device)
    with use_backend(backend):
        a = sample_logprob(logits, mode="sample", top_p=0.9, generator=seeded(7, device))
        b = sample_logprob(logits, mode="sample", top_p=0.9, generator=seeded(7, device))
        c = sample_logprob(logits, mode="sample", top_p=0.9, generator=seeded(8, device))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_registered_as_custom_op():
    logits = make_logits(2, 20)
    seed = torch.tensor([5], dtype=torch.int64)
    token, logprob = torch.ops.infogain.sample_logprob(logits, False, 1.0, 0.9, seed)
    assert token.shape == logprob.shape == (2,)
    torch.library.opcheck(torch.ops.infogain.sample_logprob.default, (logits, False, 1.0, 0.9, seed),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_invalid_rows_raise(backend, device_of):
    device = device_of(backend)
    logits = make_logits(3, 20)
    logits[2, 5] = math.nan
    with use_backend(backend), pytest.raises(ValueError, match="row 2 contains NaN"):
        sample_logprob(logits.to(device), mode="sample", generator=seeded(0, device))
    logits = make_logits(3, 20)
    logits[0] = -math.inf
    with use_backend(backend), pytest.raises(ValueError, match="row 0 is entirely -inf"):
        sample_logprob(logits.to(device), mode="greedy", top_p=0.5)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(mode="beam"), ValueError, "mode must be one of"),
    (dict(temperature=-0.1), ValueError, "temperature"),
    (dict(temperature=math.nan), ValueError, "temperature"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=2), ValueError, "top_p"),
    (dict(generator=123), TypeError, "generator"),
])
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        sample_logprob(make_logits(2, 10), **kwargs)


def test_invalid_logits():
    with pytest.raises(ValueError, match="logits must have shape"):
        sample_logprob(torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="logits must have dtype"):
        sample_logprob(torch.zeros(2, 3, dtype=torch.int32))


# ---- GPU lane --------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("vocab", [126464, 152064])
@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_cuda_real_vocabularies(dtype, vocab, top_p):
    logits = (torch.randn(4, vocab, generator=torch.Generator().manual_seed(3)) * 4.0).to(dtype)
    logits[:, :100] = -math.inf
    spec = filtered_logprobs_chunked(logits.float(), top_p)
    token, logprob = sample_logprob(logits.cuda(), mode="greedy", top_p=top_p)
    assert token.cpu().tolist() == logits.float().argmax(dim=1).tolist()
    torch.testing.assert_close(logprob.cpu(), spec.gather(1, token.cpu()[:, None]).squeeze(1), atol=1e-4, rtol=1e-4)
    token, logprob = sample_logprob(logits.cuda(), mode="sample", top_p=top_p, generator=seeded(5, "cuda"))
    want = spec.gather(1, token.cpu()[:, None]).squeeze(1)
    assert torch.isfinite(want).all(), "a token outside the nucleus was drawn"
    torch.testing.assert_close(logprob.cpu(), want, atol=1e-4, rtol=1e-4)


def filtered_logprobs_chunked(logits, top_p):
    """filtered_logprobs for wide rows at T = 1: the sort form (the pairwise form is [V, V])."""
    s = logits.double()
    p = torch.softmax(s, dim=-1)
    sorted_s, order = torch.sort(s, dim=-1, descending=True, stable=True)
    exclusive = torch.cumsum(p.gather(-1, order), dim=-1) - p.gather(-1, order)
    first_of_group = torch.searchsorted(-sorted_s.contiguous(), -sorted_s.contiguous(), side="left")
    keep_sorted = exclusive.gather(-1, first_of_group) < top_p if top_p < 1 else torch.ones_like(s, dtype=torch.bool)
    keep = torch.empty_like(keep_sorted).scatter_(-1, order, keep_sorted)
    nucleus = (p * keep).sum(-1, keepdim=True)
    return torch.where(keep, torch.log(p) - torch.log(nucleus), torch.full_like(p, -math.inf)).float()
