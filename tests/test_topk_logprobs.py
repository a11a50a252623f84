"""topk_logprobs against a sort-based reference written here, on both backends."""
import math

import pytest
import torch

from infogain_kernels import topk_logprobs, use_backend


def filtered_logprobs(logits, temperature, top_p):
    """Independent spec: log softmax(logits/T) renormalised over the top-p nucleus (full sort, float64).

    A token is kept when the mass of strictly more probable tokens is < top_p (so ties are all kept).
    """
    s = logits.double() / (temperature if temperature > 0 else 1.0)
    p = torch.softmax(s, dim=-1)
    sorted_s, order = torch.sort(s, dim=-1, descending=True, stable=True)
    sorted_p = p.gather(-1, order)
    exclusive = torch.cumsum(sorted_p, dim=-1) - sorted_p
    # Mass strictly above = exclusive cumulative mass at the first member of the token's tie group.
    first_of_group = torch.searchsorted(-sorted_s.contiguous(), -sorted_s.contiguous(), side="left")
    mass_above = exclusive.gather(-1, first_of_group)
    keep_sorted = mass_above < top_p if top_p < 1 else torch.ones_like(sorted_p, dtype=torch.bool)
    keep = torch.empty_like(keep_sorted).scatter_(-1, order, keep_sorted)
    nucleus = (p * keep).sum(-1, keepdim=True)
    return torch.where(keep, torch.log(p) - torch.log(nucleus), torch.full_like(p, -math.inf))


def expected_ids(logits, temperature, k):
    """Rank by scaled logits descending, ties by lower id (stable sort)."""
    s = logits.float() / (temperature if temperature > 0 else 1.0)
    return torch.sort(s, dim=-1, descending=True, stable=True).indices[:, :k]


def check_against_spec(logits, k, temperature, top_p, atol=2e-5):
    ids, logprobs = topk_logprobs(logits, k, temperature=temperature, top_p=top_p)
    ids, logprobs, logits = ids.cpu(), logprobs.cpu(), logits.cpu()
    assert ids.dtype == torch.int64 and logprobs.dtype == torch.float32
    assert ids.shape == logprobs.shape == (logits.shape[0], k)
    torch.testing.assert_close(ids, expected_ids(logits, temperature, k), rtol=0, atol=0)
    spec = filtered_logprobs(logits.float(), temperature, top_p).gather(1, ids).float()
    torch.testing.assert_close(logprobs, spec, atol=atol, rtol=1e-5)
    return ids, logprobs


def make_logits(rows, vocab, seed=0, scale=3.0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab, generator=g) * scale
    if vocab > 4:
        x[0, 1::3] = -math.inf  # suppressed tokens
    return x.to(device)


CASES = [(t, p) for t in (1.0, 0.7, 0.0) for p in (1.0, 0.9, 0.3)]


@pytest.mark.parametrize("vocab", [1, 7, 1000, 50257])
@pytest.mark.parametrize("temperature,top_p", CASES)
def test_reference_matches_spec(vocab, temperature, top_p):
    logits = make_logits(3, vocab)
    with use_backend("reference"):
        check_against_spec(logits, min(5, vocab), temperature, top_p)


@pytest.mark.parametrize("vocab", [1, 7, 1000])
@pytest.mark.parametrize("temperature,top_p", CASES)
def test_triton_matches_spec(triton_device, vocab, temperature, top_p):
    logits = make_logits(3, vocab, device=triton_device)
    with use_backend("triton"):
        check_against_spec(logits, min(5, vocab), temperature, top_p)


def test_nucleus_wider_than_k_and_k_past_nucleus(backend_device):
    # Flat row: the 0.95 nucleus holds hundreds of tokens (bisection path); peaked row: nucleus of 1-2 tokens, k=6
    # reaches past it and those ids get -inf.
    flat = torch.randn(1, 700, generator=torch.Generator().manual_seed(3)) * 0.3
    peaked = torch.randn(1, 700, generator=torch.Generator().manual_seed(4))
    peaked[0, 10], peaked[0, 20] = 12.0, 11.0
    check_against_spec(flat.to(backend_device), 6, 1.0, 0.95)
    _, lp = check_against_spec(peaked.to(backend_device), 6, 1.0, 0.5)
    assert math.isfinite(lp[0, 0]) and torch.isinf(lp[0, 2:]).all()


def test_ties_and_noncontiguous(backend_device):
    logits = torch.zeros(2, 10, device=backend_device)
    ids, lp = topk_logprobs(logits, 3)
    assert ids.tolist() == [[0, 1, 2]] * 2
    torch.testing.assert_close(lp.cpu(), torch.full((2, 3), -math.log(10)))
    # Ties at the nucleus boundary are all kept: 0.25 of 10 equal tokens -> the boundary tie keeps all 10.
    _, lp = topk_logprobs(logits, 3, top_p=0.25)
    torch.testing.assert_close(lp.cpu(), torch.full((2, 3), -math.log(10)))
    wide = make_logits(40, 9, seed=5, device=backend_device)
    view = wide.t()[:, ::2]  # [9, 20] with strides (1, 18)
    check_against_spec(view, 4, 0.8, 0.9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_accumulate_in_float32(dtype):
    logits = make_logits(4, 3000, seed=7).to(dtype)
    with use_backend("reference"):
        check_against_spec(logits, 5, 0.9, 0.9, atol=1e-4)


def test_registered_as_custom_op():
    logits = make_logits(2, 50)
    ids, lp = torch.ops.infogain.topk_logprobs(logits, 3, 1.0, 0.9)
    assert ids.shape == (2, 3)
    torch.library.opcheck(torch.ops.infogain.topk_logprobs.default, (logits, 3, 1.0, 0.9),
                          test_utils=("test_schema", "test_faketensor"))


def test_invalid_rows_raise(backend_device):
    nan_row = make_logits(2, 30, device=backend_device)
    nan_row[1, 4] = math.nan
    all_inf = make_logits(2, 30, device=backend_device)
    all_inf[1] = -math.inf
    pos_inf = make_logits(2, 30, device=backend_device)
    pos_inf[0, 3] = math.inf
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        topk_logprobs(nan_row, 2)
    with pytest.raises(ValueError, match="row 1 is entirely -inf"):
        topk_logprobs(all_inf, 2, top_p=0.5)
    with pytest.raises(ValueError, match=r"row 0 contains \+inf"):
        topk_logprobs(pos_inf, 2)


@pytest.mark.parametrize("call,error,match", [
    (lambda x: topk_logprobs(x, 11), ValueError, "k must be <="),
    (lambda x: topk_logprobs(x, 0), ValueError, "k must be >= 1"),
    (lambda x: topk_logprobs(x, 2.0), TypeError, "k must be an int"),
    (lambda x: topk_logprobs(x, 2, temperature=-1.0), ValueError, "temperature"),
    (lambda x: topk_logprobs(x, 2, temperature=math.inf), ValueError, "temperature"),
    (lambda x: topk_logprobs(x, 2, top_p=0.0), ValueError, "top_p"),
    (lambda x: topk_logprobs(x, 2, top_p=1.5), ValueError, "top_p"),
    (lambda x: topk_logprobs(x, 2, top_p="a"), TypeError, "top_p"),
    (lambda x: topk_logprobs(x[0], 2), ValueError, "logits must have shape"),
    (lambda x: topk_logprobs(x.long(), 2), TypeError, "logits must have dtype"),
    (lambda x: topk_logprobs(x.tolist(), 2), TypeError, "logits must be a torch.Tensor"),
])
def test_invalid_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call(make_logits(2, 10))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_negative_and_positive_zero_are_a_tie(backend, triton_interpreted):
    """-0.0 and +0.0 are equal scores: the lower id comes first, in either order of the signs."""
    from infogain_kernels import sample_logprob

    logits = torch.tensor([[-0.0, 0.0, -1.0], [0.0, -0.0, -1.0], [-1.0, -0.0, 0.0]]).to(triton_interpreted)
    with use_backend(backend):
        ids, _ = topk_logprobs(logits, 2)
        token, _ = sample_logprob(logits)
    assert ids.tolist() == [[0, 1], [0, 1], [1, 2]]
    assert token.tolist() == [0, 0, 1]


# ---- GPU lane --------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("vocab", [126464, 152064])
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (1.0, 0.9), (0.0, 0.95)])
def test_cuda_real_vocabularies(dtype, vocab, temperature, top_p):
    # T in {0, 1}: s = x exactly on every device, so the ranking (ties included) must match exactly.
    logits = make_logits(4, vocab, seed=11, scale=4.0).to(dtype)
    check_against_spec(logits.cuda(), 8, temperature, top_p, atol=1e-4)
