"""Cascade attention (shared keys + own keys, merged by log-sum-exp) against plain softmax attention."""
import pytest
import torch

from infogain.models import attention
from infogain.models.attention import attention_with_lse, cascade_attention, math_attention_with_lse


def plain_attention(q, shared_k, shared_v, own_k, own_v, shared_key_mask=None, own_key_mask=None):
    """softmax(q K^T / sqrt(D)) V row by row, in float64, with K = [shared row of the group | own]."""
    R, H, L, D = q.shape
    G, H_kv, S, _ = shared_k.shape
    n, group = R // G, H // H_kv
    out = torch.zeros(R, H, L, D, dtype=torch.float64)
    for r in range(R):
        g = r // n
        keys = torch.cat([shared_k[g], own_k[r]], dim=1).double()
        values = torch.cat([shared_v[g], own_v[r]], dim=1).double()
        allowed = torch.ones(S + own_k.shape[2], dtype=torch.bool)
        if shared_key_mask is not None:
            allowed[:S] = shared_key_mask[g]
        if own_key_mask is not None:
            allowed[S:] = own_key_mask[r]
        if not allowed.any():
            continue   # a query without keys: defined as 0
        for h in range(H):
            kv = h // group
            scores = q[r, h].double() @ keys[kv, allowed].T / D ** 0.5
            out[r, h] = torch.softmax(scores, dim=-1) @ values[kv, allowed]
    return out


def make(G=2, n=3, H=4, H_kv=2, L=5, S=7, W=4, D=8, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    R = G * n

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    return (rand(R, H, L, D), rand(G, H_kv, S, D), rand(G, H_kv, S, D), rand(R, H_kv, W, D),
            rand(R, H_kv, W, D))


@pytest.mark.parametrize("shape", [
    dict(),                                  # GQA, several candidates per shared row
    dict(H_kv=4),                            # plain multi-head
    dict(H=6, H_kv=1),                       # multi-query
    dict(W=1, L=1),                          # a single window position
    dict(W=3, L=4),                          # Dream-style: one more query than own keys
    dict(G=1, n=1),
    dict(S=0),                               # empty shared part (cache of length 0)
    dict(S=300, L=40, n=8, G=1),             # long enough for several math-fallback chunks
])
def test_matches_plain_attention(shape):
    q, sk, sv, ok, ov = make(**shape)
    got = cascade_attention(q, sk, sv, ok, ov)
    assert got.shape == q.shape and got.dtype == q.dtype
    torch.testing.assert_close(got.double(), plain_attention(q, sk, sv, ok, ov), atol=2e-6, rtol=1e-5)


def test_key_padding_masks_are_honoured():
    q, sk, sv, ok, ov = make(G=3, n=2, S=9, W=4)
    shared_mask = torch.ones(3, 9, dtype=torch.bool)
    shared_mask[1, :4] = False             # left padding of cache row 1
    shared_mask[2, 5:7] = False            # dual mode: the window's stale cached columns
    own_mask = torch.ones(6, 4, dtype=torch.bool)
    own_mask[4, :2] = False                # padding inside a candidate's window
    got = cascade_attention(q, sk, sv, ok, ov, shared_key_mask=shared_mask, own_key_mask=own_mask)
    want = plain_attention(q, sk, sv, ok, ov, shared_mask, own_mask)
    torch.testing.assert_close(got.double(), want, atol=2e-6, rtol=1e-5)
    # masked keys have no influence at all
    sk2, sv2 = sk.clone(), sv.clone()
    sk2[1, :, :4] = 1e4
    sv2[2, :, 5:7] = -1e4
    again = cascade_attention(q, sk2, sv2, ok, ov, shared_key_mask=shared_mask, own_key_mask=own_mask)
    torch.testing.assert_close(again, got)


def test_rows_without_any_key_give_zero_not_nan():
    q, sk, sv, ok, ov = make(G=2, n=2, S=5, W=3)
    shared_mask = torch.ones(2, 5, dtype=torch.bool)
    shared_mask[0] = False                 # group 0: every cached key is padding
    own_mask = torch.ones(4, 3, dtype=torch.bool)
    own_mask[1] = False                    # ... and row 1 of that group has no own key either
    got = cascade_attention(q, sk, sv, ok, ov, shared_key_mask=shared_mask, own_key_mask=own_mask)
    assert torch.isfinite(got).all()
    assert torch.equal(got[1], torch.zeros_like(got[1]))
    want = plain_attention(q, sk, sv, ok, ov, shared_mask, own_mask)
    torch.testing.assert_close(got.double(), want, atol=2e-6, rtol=1e-5)


def test_bfloat16_inputs_merge_in_float32():
    q, sk, sv, ok, ov = make(dtype=torch.bfloat16, S=16, W=8, D=16)
    got = cascade_attention(q, sk, sv, ok, ov)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), plain_attention(q, sk, sv, ok, ov), atol=2e-2, rtol=2e-2)


def test_equals_sdpa_over_the_concatenated_keys():
    """The cascade of one row equals torch's own attention over [shared | own]."""
    q, sk, sv, ok, ov = make(G=1, n=1, H=4, H_kv=4)
    want = torch.nn.functional.scaled_dot_product_attention(q, torch.cat([sk, ok], 2), torch.cat([sv, ov], 2))
    torch.testing.assert_close(cascade_attention(q, sk, sv, ok, ov), want, atol=1e-6, rtol=1e-5)


def test_noncontiguous_inputs():
    q, sk, sv, ok, ov = make(G=2, n=2, H=4, H_kv=2, L=3, S=6, W=3)
    q_t = q.transpose(1, 2).contiguous().transpose(1, 2)            # [R, H, L, D] with BLHD strides
    sk_t = torch.cat([sk, sk], dim=2)[:, :, ::2]                    # strided along the sequence
    got = cascade_attention(q_t, sk_t, sv, ok, ov)
    torch.testing.assert_close(got.double(), plain_attention(q, sk_t, sv, ok, ov), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_fused_and_math_paths_return_the_same_state(masked):
    """The state (out, lse) of the device's fused kernel equals the math fallback's."""
    q, k, v, _, _ = make(G=2, n=1, H=4, H_kv=2, S=9)
    mask = None
    if masked:
        mask = torch.ones(2, 9, dtype=torch.bool)
        mask[0, :3] = False
        mask[1] = False
    out, lse = attention_with_lse(q, k, v, mask)
    ref_out, ref_lse = math_attention_with_lse(q.reshape(2, 2, 10, 8), k, v, mask)
    torch.testing.assert_close(out, ref_out.reshape(q.shape), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse.reshape(2, 4, 5), atol=1e-6, rtol=1e-5)
    scores = (q.double().reshape(2, 2, 10, 8) @ k.double().transpose(-1, -2)) / 8 ** 0.5
    if masked:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    torch.testing.assert_close(lse.double(), torch.logsumexp(scores, -1).reshape(2, 4, 5), atol=1e-5, rtol=1e-5)


def test_math_fallback_is_used_where_no_fused_kernel_applies(monkeypatch):
    monkeypatch.setattr(attention, "_fused_attention_with_lse", lambda *args: None)
    q, sk, sv, ok, ov = make(S=6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, :2] = False
    got = cascade_attention(q, sk, sv, ok, ov, shared_key_mask=mask)
    torch.testing.assert_close(got.double(), plain_attention(q, sk, sv, ok, ov, mask), atol=2e-6, rtol=1e-5)


def test_is_deterministic():
    args = make(S=12)
    assert torch.equal(cascade_attention(*args), cascade_attention(*args))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("masked", [False, True])
def test_cuda_kernels_match_plain_attention(dtype, masked):
    q, sk, sv, ok, ov = (t.cuda() for t in make(G=2, n=4, H=8, H_kv=2, L=33, S=70, W=32, D=64, dtype=dtype))
    shared_mask = own_mask = None
    if masked:
        shared_mask = torch.ones(2, 70, dtype=torch.bool, device="cuda")
        shared_mask[1, :13] = False
        shared_mask[0] = False
        own_mask = torch.ones(8, 32, dtype=torch.bool, device="cuda")
        own_mask[3, :5] = False
    got = cascade_attention(q, sk, sv, ok, ov, shared_key_mask=shared_mask, own_key_mask=own_mask)
    want = plain_attention(*(t.cpu() for t in (q, sk, sv, ok, ov)),
                           None if shared_mask is None else shared_mask.cpu(),
                           None if own_mask is None else own_mask.cpu())
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.cpu().double(), want, atol=tol, rtol=tol)


# ----------------------------------------------------------------------------- errors

def test_rejects_bad_arguments():
    q, sk, sv, ok, ov = make()
    with pytest.raises(TypeError, match="q"):
        cascade_attention(q.numpy(), sk, sv, ok, ov)
    with pytest.raises(TypeError, match="q"):
        cascade_attention(q.long(), sk, sv, ok, ov)
    with pytest.raises(ValueError, match="q"):
        cascade_attention(q[0], sk, sv, ok, ov)
    with pytest.raises(TypeError, match="shared_k"):
        cascade_attention(q, sk.double(), sv, ok, ov)
    with pytest.raises(ValueError, match="shared_k"):
        cascade_attention(q, sk[:, :, :, :4], sv, ok, ov)
    with pytest.raises(ValueError, match="shared_k"):
        cascade_attention(q[:5], sk, sv, ok[:5], ov[:5])            # 5 rows over 2 shared rows
    with pytest.raises(ValueError, match="heads"):
        cascade_attention(q[:, :3], sk, sv, ok, ov)
    with pytest.raises(ValueError, match="shared_v"):
        cascade_attention(q, sk, sv[:, :, :3], ok, ov)
    with pytest.raises(ValueError, match="own_k"):
        cascade_attention(q, sk, sv, ok[:4], ov)
    with pytest.raises(ValueError, match="own_k"):
        cascade_attention(q, sk, sv, ok[:, :, :0], ov[:, :, :0])
    with pytest.raises(ValueError, match="own_v"):
        cascade_attention(q, sk, sv, ok, ov[:, :, :2])
    with pytest.raises(TypeError, match="shared_key_mask"):
        cascade_attention(q, sk, sv, ok, ov, shared_key_mask=torch.ones(2, 7))
    with pytest.raises(ValueError, match="shared_key_mask"):
        cascade_attention(q, sk, sv, ok, ov, shared_key_mask=torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="own_key_mask"):
        cascade_attention(q, sk, sv, ok, ov, own_key_mask=torch.ones(6, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="on meta"):
        cascade_attention(q, sk.to("meta"), sv, ok, ov)


# ----------------------------------------------------------------------------- stacked (block-diagonal)

@pytest.mark.parametrize("shape", [dict(), dict(H_kv=4), dict(W=3, L=4), dict(G=1, n=1), dict(S=0),
                                   dict(G=3, n=2, S=20, W=6, L=6)])
@pytest.mark.parametrize("masked", [False, True])
def test_stacked_attention_matches_plain_attention(shape, masked):
    q, sk, sv, ok, ov = make(**shape)
    G, S = sk.shape[0], sk.shape[2]
    R, W = ok.shape[0], ok.shape[2]
    gen = torch.Generator().manual_seed(1)
    shared_mask = torch.rand(G, S, generator=gen) < 0.7 if masked else None
    own_mask = torch.rand(R, W, generator=gen) < 0.7 if masked else None
    if masked:
        own_mask[:, 0] = True   # every query keeps a key (key-less queries are unspecified here)
    mask = attention.stacked_mask(shared_mask, own_mask, groups=G, per_group=R // G, queries=q.shape[2],
                                  shared_keys=S, own_keys=W, device=q.device)
    got = attention.stacked_attention(q, sk, sv, ok, ov, mask)
    assert got.shape == q.shape and got.dtype == q.dtype
    want = plain_attention(q, sk, sv, ok, ov, shared_mask, own_mask)
    torch.testing.assert_close(got.double(), want, atol=2e-6, rtol=1e-5)


def test_cascade_only_from_the_measured_sizes():
    cpu = torch.device("cpu")
    shared, own = attention.CASCADE_MIN_SHARED_KEYS["cpu"], attention.STACKED_MAX_OWN_KEYS["cpu"]
    assert not attention.use_cascade(shared - 1, own, cpu)
    assert attention.use_cascade(shared, own, cpu)
    assert attention.use_cascade(shared - 1, own + 1, cpu)
