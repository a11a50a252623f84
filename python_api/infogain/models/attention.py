"""Attention for the cache-aware models: plain attention, the cascade used by candidate lookahead,
the masks the layers take, and which attention a layer runs.

Cascade attention (shared-prefix attention, as in FlashInfer's cascade
inference): softmax attention over a key set that is the union of two disjoint
parts can be computed as two partial attentions, each returning its output
``o`` and the natural-log log-sum-exp ``lse`` of its scaled scores, merged by

    m = max(lse1, lse2)
    o = (o1 * exp(lse1 - m) + o2 * exp(lse2 - m)) / (exp(lse1 - m) + exp(lse2 - m))
      = lerp(o2, o1, sigmoid(lse1 - lse2))

N lookahead candidates of one prompt see the same cached keys (the shared
part) and each its own freshly computed window keys (the own part). The shared
part is attended once per cache row with all candidates' queries stacked into
one long query sequence, so the cache is read once and never copied per
candidate; the own part is a small batched [W x W] attention per candidate.

Cascade attention pays two attention calls and a float32 merge per layer. For
short windows on a small shared cache (below :data:`CASCADE_MIN_SHARED_KEYS`
shared keys and :data:`STACKED_MAX_OWN_KEYS` window keys), :func:`stacked_attention`
runs ONE attention per cache row instead: all candidates' queries over [shared
keys | every candidate's own keys] with a block-diagonal mask (each candidate
sees only its own window). :func:`use_cascade` makes the choice (measured; see
the constants) and :func:`candidate_masks` builds the masks of the chosen route.

Both read the cache in place. For a small candidate batch on the CPU (below
:data:`ROWS_COPY_LIMIT` copied cache elements per layer), copying each candidate's
cached keys is cheaper than either: :func:`candidate_route` then picks "rows", the
plain window forward in which every candidate row attends to [its cache row's keys |
its own window keys] (the copy is the concatenation the plain attention makes anyway).

The masks the model's layers take live here too: a boolean attention mask (True =
attend) for full and plain window forwards (:func:`canvas_mask`,
:func:`window_mask`), or :class:`CascadeMasks` / :class:`StackedMasks` for a
candidate window forward; :func:`attend_layer` routes a layer by that type.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from infogain_kernels._validation import FLOAT_DTYPES, check_tensor

try:  # optional: the fastest CUDA kernels when installed
    from flash_attn import flash_attn_func as _flash_attn_func  # type: ignore
except Exception:  # pragma: no cover - not installed on the CI machine
    _flash_attn_func = None

# Query rows per chunk of the math fallback: bounds its float32 score tile to
# [B, H, _MATH_QUERY_CHUNK, S] whatever the number of stacked candidate queries.
_MATH_QUERY_CHUNK = 256


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Bidirectional attention ``q [G, H, Lq, D]`` over ``k, v [G, H_kv, Lk, D]`` (no LSE).

    ``mask`` is boolean ``[G, 1, Lq, Lk]`` (True = attend) or None (attend to all).
    """
    if mask is None and _flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        out = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=False)
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


# ----------------------------------------------------------------------------- attention states

def math_attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            key_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Attention state of ``q [B, H, L, D]`` over ``k, v [B, H, S, D]`` (same head count), in float32.

    The fallback of :func:`attention_with_lse` and the path for masked keys where
    the fast kernel takes no mask. Scores are formed in float32, ``L`` in chunks of
    ``_MATH_QUERY_CHUNK`` queries. ``key_mask [B, S]`` bool (True = attend).
    Returns ``out [B, H, L, D]`` float32 and ``lse [B, H, L]`` float32; a query with
    no allowed key gets ``out = 0`` and ``lse = -inf``.
    """
    scale = q.shape[-1] ** -0.5
    k32, v32 = k.float(), v.float()
    blocked = None if key_mask is None else ~key_mask[:, None, None, :]
    outs, lses = [], []
    for q_chunk in q.split(_MATH_QUERY_CHUNK, dim=2):
        scores = torch.matmul(q_chunk.float(), k32.transpose(-1, -2)) * scale
        if blocked is not None:
            scores = scores.masked_fill(blocked, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)
        # exp(-inf - 0) = 0 keeps key-less queries at out = 0 instead of NaN
        probs = torch.exp(scores - torch.where(torch.isfinite(lse), lse, 0.0)[..., None])
        outs.append(torch.matmul(probs, v32))
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def _fused_attention_with_lse(q, k, v, key_mask):
    """The fastest primitive of this device that returns the LSE; None where none applies.

    Same contract as :func:`math_attention_with_lse` except that ``out`` is in q's
    dtype and rows without any allowed key are not yet fixed up.
    """
    S = k.shape[2]
    if q.device.type == "cpu":
        bias = None
        if key_mask is not None:
            # this kernel takes only an additive float mask of the query dtype
            bias = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device)
            bias = bias.masked_fill(~key_mask, float("-inf"))[:, None, None, :]
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=bias)
        return out, lse
    if q.device.type != "cuda":
        return None
    half = q.dtype in (torch.float16, torch.bfloat16)
    head_dim_ok = q.shape[-1] % 8 == 0 and q.shape[-1] <= 256
    if key_mask is None and half and head_dim_ok:
        if _flash_attn_func is not None:
            out, lse, _ = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           causal=False, return_attn_probs=True)
            return out.transpose(1, 2), lse[..., :q.shape[2]]
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[:2]
        return out, lse[..., :q.shape[2]]
    if head_dim_ok:
        bias = None
        if key_mask is not None:
            # memory-efficient attention needs the bias rows 16-element aligned: pad, then slice
            padded = -(-S // 16) * 16
            bias = torch.zeros(key_mask.shape[0], 1, 1, padded, dtype=q.dtype, device=q.device)
            bias[..., :S].masked_fill_(~key_mask[:, None, None, :], float("-inf"))
            bias = bias[..., :S].expand(q.shape[0], q.shape[1], q.shape[2], S)
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, True)[:2]
        return out, lse[..., :q.shape[2]]   # the LSE may be padded to a multiple of 32 queries
    return None


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       key_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bidirectional attention of ``q [B, H, L, D]`` over ``k, v [B, H_kv, S, D]`` with its LSE.

    ``H`` must be a multiple of ``H_kv`` (grouped-query attention: query head ``h``
    reads KV head ``h // (H // H_kv)``). ``key_mask [B, S]`` bool, True = attend.
    Scale ``1/sqrt(D)``. Returns ``(out [B, H, L, D]`` in q's dtype, ``lse [B, H, L]``
    float32, the natural-log log-sum-exp of the scaled, masked scores). A query
    with no allowed key (``S == 0`` or its row fully masked) gets ``out = 0``,
    ``lse = -inf``, so merging it with another state leaves that state unchanged.

    Uses a fused kernel that returns the LSE (CPU flash attention, CUDA flash or
    memory-efficient attention, flash-attn when installed) and otherwise
    :func:`math_attention_with_lse`. Inputs are trusted (see :func:`cascade_attention`).
    """
    B, H, L, D = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    if S == 0:   # no kernel accepts zero keys (the CPU one crashes)
        return q.new_zeros(q.shape), q.new_full((B, H, L), float("-inf"), dtype=torch.float32)
    # Grouped-query attention without repeating K/V: the query heads that share a KV
    # head become one longer query sequence against that head.
    group = H // H_kv
    q_folded = q.reshape(B, H_kv, group * L, D)
    state = _fused_attention_with_lse(q_folded, k, v, key_mask)
    if state is None:
        state = math_attention_with_lse(q_folded, k, v, key_mask)
    out, lse = state[0].to(q.dtype).reshape(B, H, L, D), state[1].float().reshape(B, H, L)
    if key_mask is not None:
        # kernels disagree on key-less rows (0, NaN, lse 0): make them the empty state
        # unconditional: testing keyless.any() first would cost a host sync per layer
        keyless = ~key_mask.any(dim=1)
        out = out.masked_fill(keyless[:, None, None, None], 0.0)
        lse = lse.masked_fill(keyless[:, None, None], float("-inf"))
    return out, lse


def merge_attention_states(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor,
                           lse_b: torch.Tensor) -> torch.Tensor:
    """Attention over the union of two disjoint key sets from their states, in float32.

    ``out_* [..., L, D]`` with ``lse_* [..., L]`` (natural log). Returns the merged
    output ``[..., L, D]`` float32; queries empty in both states give 0.

    The weight of state a, ``exp(lse_a - m) / (exp(lse_a - m) + exp(lse_b - m))``,
    equals ``sigmoid(lse_a - lse_b)``: one stable expression, and the merge is a
    single ``lerp`` over the outputs instead of two scalings and a division.
    """
    both_empty = torch.isneginf(lse_a) & torch.isneginf(lse_b)
    # both empty: -inf - -inf is NaN; weight 1/2 of two zero outputs gives the 0 we want
    weight_a = torch.sigmoid(torch.where(both_empty, 0.0, lse_a - lse_b))
    return torch.lerp(out_b.float(), out_a.float(), weight_a[..., None])


# ----------------------------------------------------------------------------- cascade and stacked attention

def stacked_mask(shared_key_mask: Optional[torch.Tensor], own_key_mask: Optional[torch.Tensor], *, groups: int,
                 per_group: int, queries: int, shared_keys: int, own_keys: int, device) -> torch.Tensor:
    """The bool mask ``[G, 1, n*L, S + n*W]`` (True = attend) of :func:`stacked_attention`.

    Query ``i`` of a group belongs to candidate ``i // L``; it sees the allowed shared keys
    (``shared_key_mask [G, S]``, None = all) and the allowed own keys of its candidate only
    (``own_key_mask [G*n, W]``, None = all): the own part is block-diagonal. A query left without
    any key (a padding query) attends to everything instead, so no softmax row is empty; its
    output is never read.
    """
    G, n, L, S, W = groups, per_group, queries, shared_keys, own_keys
    own = (torch.arange(n * L, device=device)[:, None] // L) == (torch.arange(n * W, device=device)[None, :] // W)
    own = own.expand(G, 1, n * L, n * W)
    if own_key_mask is not None:
        own = own & own_key_mask.reshape(G, 1, 1, n * W)
    if shared_key_mask is None:
        shared = torch.ones(G, 1, n * L, S, dtype=torch.bool, device=device)
    else:
        shared = shared_key_mask[:, None, None, :].expand(G, 1, n * L, S)
    return no_empty_rows(torch.cat([shared, own], dim=3))


def stacked_attention(q: torch.Tensor, shared_k: torch.Tensor, shared_v: torch.Tensor, own_k: torch.Tensor,
                      own_v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:func:`cascade_attention`'s result by one attention per group (no LSE merge).

    ``q [R = G*n, H, L, D]``, ``shared_k/v [G, H_kv, S, D]``, ``own_k/v [R, H_kv, W, D]`` as in
    :func:`cascade_attention`; ``mask`` from :func:`stacked_mask`. A group's n candidates become one
    query sequence ``[n*L]`` over the keys ``[shared | own of candidate 0 | ... | own of n-1]``.
    Inputs are trusted (internal to the models). Returns ``[R, H, L, D]`` in q's dtype.
    """
    R, H, L, D = q.shape
    G, H_kv, S, _ = shared_k.shape
    n, W = R // G, own_k.shape[2]

    def stack(t, length, heads):   # [G*n, heads, length, D] -> [G, heads, n*length, D]
        return t.reshape(G, n, heads, length, D).transpose(1, 2).reshape(G, heads, n * length, D)

    keys = torch.cat([shared_k, stack(own_k, W, H_kv)], dim=2)
    values = torch.cat([shared_v, stack(own_v, W, H_kv)], dim=2)
    out = attend(stack(q, L, H), keys, values, mask)
    return out.reshape(G, H, n, L, D).transpose(1, 2).reshape(R, H, L, D)


def _check_key_mask(name: str, mask, shape, device) -> None:
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor {tuple(shape)} (True = attend) or None")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"{name} is on {mask.device} but q is on {device}")


def cascade_attention(q: torch.Tensor, shared_k: torch.Tensor, shared_v: torch.Tensor,
                      own_k: torch.Tensor, own_v: torch.Tensor, *,
                      shared_key_mask: Optional[torch.Tensor] = None,
                      own_key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Attention of R query rows over [the shared keys of their group | their own keys].

    Args:
        q: ``[R, H, L, D]`` queries; rows are grouped consecutively, ``R = G * n``:
            rows ``g*n .. g*n + n - 1`` read shared row ``g``.
        shared_k, shared_v: ``[G, H_kv, S, D]`` keys/values every row of a group sees
            (e.g. one cache row); S may be 0. Read once per group, never copied per row.
        own_k, own_v: ``[R, H_kv, W, D]`` each row's own keys/values (W >= 1).
        shared_key_mask: optional bool ``[G, S]``, True = attend (left padding,
            columns the own keys replace).
        own_key_mask: optional bool ``[R, W]``, True = attend.

    All tensors share one floating dtype and device; ``H`` is a multiple of ``H_kv``;
    the scale is ``1/sqrt(D)``. Returns ``[R, H, L, D]`` in q's dtype, equal to
    ``softmax(q K^T / sqrt(D)) V`` with ``K = [shared_k[row's group] | own_k[row]]``
    restricted to the allowed keys; merged in float32. A query with no allowed key
    gets 0 (never NaN).
    """
    check_tensor("q", q, dtypes=FLOAT_DTYPES, ndim=4)
    for name, t in (("shared_k", shared_k), ("shared_v", shared_v), ("own_k", own_k), ("own_v", own_v)):
        check_tensor(name, t, dtypes=(q.dtype,), ndim=4)
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
    R, H, L, D = q.shape
    G, H_kv, S, _ = shared_k.shape
    W = own_k.shape[2]
    if R < 1 or L < 1 or D < 1:
        raise ValueError(f"q must be non-empty [R, H, L, D], got {tuple(q.shape)}")
    if G < 1 or R % G != 0:
        raise ValueError(f"shared_k has {G} rows; q's {R} rows must be a whole multiple of it")
    if H_kv < 1 or H % H_kv != 0:
        raise ValueError(f"q's {H} heads must be a multiple of shared_k's {H_kv} KV heads")
    if tuple(shared_v.shape) != tuple(shared_k.shape) or shared_k.shape[3] != D:
        raise ValueError(f"shared_k and shared_v must both be [G, H_kv, S, {D}], "
                         f"got {tuple(shared_k.shape)} and {tuple(shared_v.shape)}")
    if W < 1 or tuple(own_k.shape) != (R, H_kv, W, D) or tuple(own_v.shape) != tuple(own_k.shape):
        raise ValueError(f"own_k and own_v must both be [{R}, {H_kv}, W >= 1, {D}], "
                         f"got {tuple(own_k.shape)} and {tuple(own_v.shape)}")
    _check_key_mask("shared_key_mask", shared_key_mask, (G, S), q.device)
    _check_key_mask("own_key_mask", own_key_mask, (R, W), q.device)

    n = R // G
    # Shared part: a group's n rows become one query sequence [G, H, n*L, D].
    q_stacked = q.reshape(G, n, H, L, D).transpose(1, 2).reshape(G, H, n * L, D)
    shared_out, shared_lse = attention_with_lse(q_stacked, shared_k, shared_v, shared_key_mask)
    shared_out = shared_out.reshape(G, H, n, L, D).transpose(1, 2).reshape(R, H, L, D)
    shared_lse = shared_lse.reshape(G, H, n, L).transpose(1, 2).reshape(R, H, L)
    own_out, own_lse = attention_with_lse(q, own_k, own_v, own_key_mask)
    return merge_attention_states(shared_out, shared_lse, own_out, own_lse).to(q.dtype)


# ----------------------------------------------------------------------------- the layers' masks

@dataclass(frozen=True)
class CascadeMasks:
    """Key masks of a candidate window forward, passed to the layers in place of an attention mask.

    The layers' ``past`` is then the shared cache ``[G, H_kv, S, D]`` and their
    queries are ``G * n`` rows, each n consecutive rows reading one shared row.
    """

    shared: Optional[torch.Tensor]   # [G, S] bool, True = attend; None = all
    own: Optional[torch.Tensor]      # [G * n, W] bool over the fresh window keys; None = all


@dataclass(frozen=True)
class StackedMasks:
    """The block-diagonal mask ``[G, 1, n*L, S + n*W]`` of a candidate window forward that runs
    :func:`stacked_attention` (layers' ``past`` as for :class:`CascadeMasks`)."""

    mask: torch.Tensor


# What a layer takes as its mask: none, a bool attention mask [G, 1, L, keys], or a candidate form.
LayerMask = Union[None, torch.Tensor, CascadeMasks, StackedMasks]


def no_empty_rows(mask: torch.Tensor) -> torch.Tensor:
    """Let query rows with no allowed key (padding queries) attend to everything.

    Their outputs are never read, and padded keys stay masked for every real
    query, so this only keeps softmax from producing NaN that would spread.
    """
    return mask | ~mask.any(-1, keepdim=True)


def segment_ids(T: int, gen_start: int, block_length: int, device) -> torch.Tensor:
    """SDAR segments: 0 for the prompt ``[0, gen_start)``, ``1 + j`` for generation block j."""
    idx = torch.arange(T, device=device)
    return torch.where(idx < gen_start, 0, 1 + torch.div(idx - gen_start, block_length, rounding_mode="floor"))


def canvas_mask(attention_mask: Optional[torch.Tensor], segments: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The mask ``[B, 1, T, T]`` of a full forward, shared by all layers: padded keys (``attention_mask
    [B, T]``, None = no padding) and, for a block-causal model, keys of later ``segments`` (``[T]``
    from :func:`segment_ids`, or per row ``[B or 1, T]``) are masked. None when nothing is."""
    mask = None
    if attention_mask is not None:
        B, T = attention_mask.shape
        mask = attention_mask[:, None, None, :].expand(B, 1, T, T)
    if segments is not None:
        if segments.dim() == 1:
            causal = (segments[None, :] <= segments[:, None])[None, None]
        else:   # per row [B or 1, T]
            causal = (segments[:, None, :] <= segments[:, :, None])[:, None]
        mask = causal if mask is None else mask & causal
    return None if mask is None else no_empty_rows(mask)


def cached_key_mask(attention_mask: torch.Tensor, cached: int, start: int, W: int, dual: bool) -> torch.Tensor:
    """Which of the ``cached`` keys of each row a window ``[start, start + W)`` attends to: the real
    ones, except (``dual``) those of the window itself, which its fresh keys replace. ``[rows, cached]``."""
    mask = attention_mask[:, :cached].clone()
    if dual:
        mask[:, start:start + W] = False
    return mask


def window_mask(attention_mask: torch.Tensor, *, cached: int, start: int, W: int, queries: int, dual: bool,
                all_real: bool) -> Optional[torch.Tensor]:
    """The mask ``[R, 1, queries, cached + W]`` of a plain window forward (keys ``[cache | fresh
    window]``, ``attention_mask [R, T]`` of the rows read), or None when the host knows that nothing
    is masked (``all_real``: no padding, and outside dual mode no cached key is replaced)."""
    if all_real and not dual:
        return None
    R = attention_mask.shape[0]
    cache_ok = cached_key_mask(attention_mask, cached, start, W, dual)
    window_ok = attention_mask[:, start:start + W]
    mask = torch.cat([cache_ok[:, None, :].expand(R, queries, cached),
                      window_ok[:, None, :].expand(R, queries, W)], dim=2)[:, None]
    return no_empty_rows(mask)


# ----------------------------------------------------------------------------- the route of a candidate batch

# When one stacked attention beats the cascade, per device type: fewer than CASCADE_MIN_SHARED_KEYS
# shared keys AND at most STACKED_MAX_OWN_KEYS window keys in the stacked block-diagonal part (the
# n candidates' windows together: the mask wastes (n - 1) / n of those scores). Measured with
# benches/bench_attention.py at 1 CPU thread, fp32, 8 candidates of one cache row (median of 20,
# on a shared 2-core machine, so +-20%); cascade time / stacked time:
#   H=4 D=32 (toy),  W=8  (64 own keys):  S=32 0.78, 128 0.89, 256 0.99, 512 1.09, 1024 1.13, 2048 1.32
#   H=8 D=64 (52M),  W=8  (64 own keys):  S=32 1.11, 128 1.07, 256 1.09, 512 1.01, 1024 3.5
#   W=32 (256 own keys), both shapes:     cascade 1.2-14x faster at every S from 32 to 2048
# so the stacked form pays only for short windows on small caches; the cascade's two kernel calls
# and merge are cheap on CPU once the own part is larger. CUDA keeps the cascade everywhere (its
# kernels take no block-diagonal mask at full speed; not measured in this project yet).
CASCADE_MIN_SHARED_KEYS = {"cpu": 512, "cuda": 0}
STACKED_MAX_OWN_KEYS = {"cpu": 64, "cuda": 0}


# Below how many copied cache elements per layer (R candidate rows x S cached keys x H_kv x D, for
# the keys; as many for the values) the plain per-row window forward ("rows") beats both in-place
# routes, per device type. Measured per layer call as in benches/bench_attention.py (1 CPU thread,
# fp32, 8 candidates of one cache row, per-thread CPU time, median of 30, shared 2-core machine so
# +-20%), the rows route timed as: concatenate the broadcast cache row with each candidate's own
# keys and values, one plain attention. cascade time / rows time (stacked time / rows time):
#   H=4 D=32 (toy), W=8:  S=16 2.3 (1.3), 48 1.9 (1.2), 128 1.6 (1.0), 256 0.7 (0.6), 512 0.2 (0.2)
#   H=4 D=32 (toy), W=32: S=16 1.8 (3.5), 48 1.5 (2.9), 128 1.4 (2.3), 256 1.2 (1.9), 512 0.5 (0.9)
#   H=8 D=64 (52M), W=8:  S=16 1.6 (1.2), 48 1.3 (1.0), 128 0.8 (0.7), 256 0.3 (0.3)
#   H=8 D=64 (52M), W=32: S=16 1.6 (6.9), 48 1.3 (3.2), 128 1.0 (1.9), 256 0.7 (0.9)
# (masked keys, as in dual mode: the same picture). The copy pays up to about 2e5 copied key
# elements (toy S=128: 1.3e5, 52M S=48: 2.0e5) and no longer from 2.6e5 (toy S=256, 52M S=128:
# 5.2e5), plausibly where the copies stop fitting the per-core caches. The route also skips the
# candidate slot layout, a few dozen operations per forward. CUDA keeps the in-place routes (a per-candidate copy of a real cache costs memory
# bandwidth the kernels save; not measured here).
ROWS_COPY_LIMIT = {"cpu": 1 << 18, "cuda": 0}


def candidate_route(rows: int, shared_keys: int, own_keys: int, kv_width: int, device: torch.device) -> str:
    """The attention route of a candidate window forward: "rows" (plain per-row forward, each row's
    cached keys copied), "stacked" (:func:`stacked_attention`) or "cascade" (:func:`cascade_attention`).

    ``rows``: window rows R; ``shared_keys``: cached keys S per cache row; ``own_keys``: the window
    keys of all candidates of one cache row together (n*W); ``kv_width``: ``H_kv * D`` of a layer.
    """
    kind = device.type if device.type in ROWS_COPY_LIMIT else "cuda"
    if rows * shared_keys * kv_width < ROWS_COPY_LIMIT[kind]:
        return "rows"
    return "cascade" if use_cascade(shared_keys, own_keys, device) else "stacked"


def use_cascade(shared_keys: int, own_keys: int, device: torch.device) -> bool:
    """Whether a candidate batch reading ``shared_keys`` cached keys per cache row, with ``own_keys``
    window keys of all candidates of a cache row together, should use :func:`cascade_attention`
    (True) or :func:`stacked_attention` (False)."""
    kind = device.type if device.type in CASCADE_MIN_SHARED_KEYS else "cuda"
    return shared_keys >= CASCADE_MIN_SHARED_KEYS[kind] or own_keys > STACKED_MAX_OWN_KEYS[kind]


def candidate_masks(group_mask: torch.Tensor, *, cached: int, start: int, W: int, per_group: int, queries: int,
                    dual: bool, all_real: bool, check_values: bool) -> "CascadeMasks | StackedMasks":
    """The masks of a candidate window forward, in the form of the route :func:`use_cascade` picks.

    ``group_mask [G, T]``: the canvas mask of each group's cache row; each group has ``per_group``
    candidate rows of ``queries`` queries over ``cached`` shared keys and ``W`` own window keys.
    All-True masks are dropped so the fused kernels run without a mask: known on the host without
    padding (``all_real``; dual's shared mask still excludes the window), else read back when
    ``check_values`` allows it; otherwise they are applied as they are (same result).
    """
    def reduced(mask, known_all_true):
        return None if known_all_true or (check_values and bool(mask.all())) else mask

    n = per_group
    masks = CascadeMasks(shared=reduced(cached_key_mask(group_mask, cached, start, W, dual), all_real and not dual),
                         own=reduced(group_mask[:, start:start + W].repeat_interleave(n, 0), all_real))
    if use_cascade(cached, n * W, group_mask.device):
        return masks
    return StackedMasks(stacked_mask(masks.shared, masks.own, groups=group_mask.shape[0], per_group=n,
                                     queries=queries, shared_keys=cached, own_keys=W, device=group_mask.device))


def attend_layer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: LayerMask,
                 past: Optional[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """One layer's attention of ``q [G, H, L, D]`` over the keys ``[past | fresh k]``, routed by the
    type of ``mask``: the candidate forms run :func:`cascade_attention` or :func:`stacked_attention`
    (``past`` is then the shared cache of the row groups, read in place); a bool mask or None runs
    :func:`attend` over the concatenated keys."""
    if isinstance(mask, CascadeMasks):
        return cascade_attention(q, past[0], past[1], k, v, shared_key_mask=mask.shared, own_key_mask=mask.own)
    if isinstance(mask, StackedMasks):
        return stacked_attention(q, past[0], past[1], k, v, mask.mask)
    keys, values = k, v
    if past is not None:
        keys, values = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    return attend(q, keys, values, mask)
