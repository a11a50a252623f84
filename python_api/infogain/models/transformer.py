"""The transformer shared by LLaDA, Dream and SDAR, with the three cache modes.

All three architectures are pre-norm LLaMA-style stacks: RMSNorm, rotary
attention (half-split ``rotate_half``) with grouped KV heads, SwiGLU MLP, final
RMSNorm and an untied LM head. What differs is captured by :class:`ArchSpec`:
qkv bias (Dream), qk-norm (SDAR), the one-position logit shift (Dream) and
block-causal attention (SDAR). The per-architecture modules only translate
config.json fields and state-dict key names.

Attention goes through :mod:`infogain.models.attention`. Full forwards and
plain window forwards use ``scaled_dot_product_attention`` with a boolean mask
(True = attend) built once per call and shared by all layers. A full forward
may return a slice of positions only (``keep``): the last layer then computes
its queries, attention output and MLP there only (a sampler without a KV cache
reads one block of the canvas).

Window forwards with ``cache_rows`` (:meth:`Transformer.forward_window`): the
window rows are grouped by the cache row they read. With one window row per
cache row (ordinary rows, e.g. a subset of the batch) it is the plain window
forward over the gathered cache rows. Candidate lookahead (several rows per
cache row) runs, in every layer, either
:func:`~infogain.models.attention.cascade_attention` (all candidates' queries of
one cache row attend to that row's cached keys as one query sequence, each
candidate to its own fresh window keys, and the two partial attentions are
merged by their log-sum-exp; work on the window part is ``N * W^2`` per cache
row, and the fused kernels run without a mask whenever there is no padding), or,
for short windows on a small cache (the measured thresholds of
:func:`~infogain.models.attention.use_cascade`),
:func:`~infogain.models.attention.stacked_attention` (one attention over [cache |
all candidates' windows] with a block-diagonal mask). Either way the cache is read
once per distinct cache row per layer, never copied per candidate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from infogain_kernels import kv_block_replace
from infogain_kernels._validation import check_bool

from .._device import host_ints_to_device
from .attention import attend, cascade_attention, stacked_attention, stacked_mask, use_cascade
from .base import DiffusionLM, KVCache, ModelConfig

MODES = ("prefix", "dual", "block_causal")


@dataclass
class TransformerKVCache(KVCache):
    """A :class:`KVCache` that also records, on the host, that its canvas had no padding.

    ``all_real`` lets window forwards drop the attention mask without reading it back;
    copies made as plain :class:`KVCache` (no flag) simply keep the mask.
    """

    all_real: bool = False


@dataclass(frozen=True)
class CandidateRows:
    """The layout of a candidate window forward, computed on the host from ``cache_rows``.

    Window rows are laid out as ``G`` groups (one per distinct cache row, ascending) of
    ``n`` slots (n = the largest group); the spare slots of smaller groups repeat a real
    row and are dropped at the end.
    """

    rows: torch.Tensor          # [R] long, the cache row of each window row
    groups: torch.Tensor        # [G] long, the distinct cache rows
    slot_of_row: torch.Tensor   # [R] long, the slot of each window row
    slots_per_group: int        # n
    every_cache_row: bool       # groups == arange(cache batch): no gather of the cache needed


def candidate_rows(cache_rows: Sequence[int], device: torch.device, batch_size: int) -> CandidateRows:
    """The :class:`CandidateRows` of the host list ``cache_rows`` (validated by the caller)."""
    groups = sorted(set(cache_rows))
    group_of = {row: g for g, row in enumerate(groups)}
    filled = [0] * len(groups)
    group_and_rank = []
    for row in cache_rows:
        g = group_of[row]
        group_and_rank.append((g, filled[g]))   # rank = order of appearance inside the group
        filled[g] += 1
    n = max(filled)
    slots = [g * n + rank for g, rank in group_and_rank]
    packed = host_ints_to_device(list(cache_rows) + groups + slots, device)   # one copy
    R, G = len(cache_rows), len(groups)
    return CandidateRows(rows=packed[:R], groups=packed[R:R + G], slot_of_row=packed[R + G:],
                         slots_per_group=n, every_cache_row=groups == list(range(batch_size)))


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
    :func:`~infogain.models.attention.stacked_attention` (layers' ``past`` as for
    :class:`CascadeMasks`)."""

    mask: torch.Tensor


@dataclass(frozen=True)
class ArchSpec:
    """Geometry and the architecture switches of one model."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    qkv_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = False
    shift_logits: bool = False     # Dream: hidden state i-1 predicts token i
    block_causal: bool = False     # SDAR


# ----------------------------------------------------------------------------- layers

class RMSNorm(nn.Module):
    """``weight * (x / rms(x))``; normalised in float32, cast back before the weight."""

    def __init__(self, dim: int, eps: float, *, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        # In place on the fresh product: one pass and one allocation fewer, same values.
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype).mul_(self.weight)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin tables ``[G, L, head_dim]`` (float32) for integer ``positions [G, L]``
    (G may be 1 for positions shared by every row: the tables broadcast).

    The sin table's first half is negated: the half-split ``rotate_half(x) = [-x2, x1]`` times
    sin is then ``[x2, x1]`` (a roll of x) times the signed table, exactly (only signs move).
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions.float()[..., None] * inv_freq
    sin = freqs.sin()
    return torch.cat([freqs, freqs], dim=-1).cos(), torch.cat([-sin, sin], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [G, H, L, D]`` (half-split convention) in float32 by the tables of
    :func:`rope_cos_sin`; returns x's dtype. ``x * cos + rotate_half(x) * sin`` in three passes."""
    x32 = x.float()
    out = x32 * cos[:, None]
    return out.add_(torch.roll(x32, x32.shape[-1] // 2, dims=-1).mul_(signed_sin[:, None])).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, spec: ArchSpec, *, device=None, dtype=None):
        super().__init__()
        self.spec = spec
        q_width, kv_width = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        kw = dict(device=device, dtype=dtype)
        self.q_proj = nn.Linear(spec.hidden_size, q_width, bias=spec.qkv_bias, **kw)
        self.k_proj = nn.Linear(spec.hidden_size, kv_width, bias=spec.qkv_bias, **kw)
        self.v_proj = nn.Linear(spec.hidden_size, kv_width, bias=spec.qkv_bias, **kw)
        self.o_proj = nn.Linear(q_width, spec.hidden_size, bias=False, **kw)
        if spec.qk_norm:
            self.q_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps, **kw)
            self.k_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps, **kw)

    def forward(self, x, cos, sin, mask, past: Optional[Tuple[torch.Tensor, torch.Tensor]],
                fresh_key_index: Optional[torch.Tensor], keep: Optional[slice] = None):
        """``x [G, L, hidden]`` -> (output ``[G, L, hidden]``, fresh k, fresh v ``[G, H_kv, L', D]``).

        Keys are ``[past | fresh]``; ``fresh_key_index`` (long) selects which of the
        L fresh positions are keys (Dream's extra shift query is not one). ``mask`` is
        a bool attention mask ``[G, 1, L, keys]`` or None, or :class:`CascadeMasks`
        for a candidate forward (then ``past`` is the shared cache of the row groups).
        ``keep`` (a slice of the L positions, plain masks only): queries, and so the
        output ``[G, len(keep), hidden]``, only there; keys and values still cover all L.
        """
        G, L, _ = x.shape
        s = self.spec
        x_q, cos_q, sin_q = x, cos, sin
        if keep is not None:
            x_q, cos_q, sin_q = x[:, keep], cos[:, keep], sin[:, keep]
            if mask is not None:
                mask = mask[:, :, keep]
        Lq = x_q.shape[1]
        q = self.q_proj(x_q).view(G, Lq, s.num_heads, s.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(G, L, s.num_kv_heads, s.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(G, L, s.num_kv_heads, s.head_dim).transpose(1, 2)
        if s.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos_q, sin_q), apply_rope(k, cos, sin)
        if fresh_key_index is not None:
            k, v = k.index_select(2, fresh_key_index), v.index_select(2, fresh_key_index)
        if isinstance(mask, CascadeMasks):
            out = cascade_attention(q, past[0], past[1], k, v, shared_key_mask=mask.shared, own_key_mask=mask.own)
        elif isinstance(mask, StackedMasks):
            out = stacked_attention(q, past[0], past[1], k, v, mask.mask)
        else:
            keys, values = k, v
            if past is not None:
                keys, values = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            out = attend(q, keys, values, mask)
        return self.o_proj(out.transpose(1, 2).reshape(G, Lq, -1)), k, v


class MLP(nn.Module):
    def __init__(self, spec: ArchSpec, *, device=None, dtype=None):
        super().__init__()
        kw = dict(bias=False, device=device, dtype=dtype)
        self.gate_proj = nn.Linear(spec.hidden_size, spec.intermediate_size, **kw)
        self.up_proj = nn.Linear(spec.hidden_size, spec.intermediate_size, **kw)
        self.down_proj = nn.Linear(spec.intermediate_size, spec.hidden_size, **kw)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)).mul_(self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, spec: ArchSpec, *, device=None, dtype=None):
        super().__init__()
        self.attn_norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, device=device, dtype=dtype)
        self.attn = Attention(spec, device=device, dtype=dtype)
        self.mlp_norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, device=device, dtype=dtype)
        self.mlp = MLP(spec, device=device, dtype=dtype)

    def forward(self, x, cos, sin, mask, past, fresh_key_index, keep: Optional[slice] = None,
                mlp_at: Optional[torch.Tensor] = None):
        """``keep``: see :meth:`Attention.forward`; the block's output is then ``[G, len(keep), hidden]``.
        ``mlp_at`` (bool ``[G, L]``): run the MLP at those positions only; the others' outputs lack
        it (their values are unspecified)."""
        h, k, v = self.attn(self.attn_norm(x), cos, sin, mask, past, fresh_key_index, keep)
        # Residual sums in place on the fresh branch outputs (x + h == h + x exactly).
        x = h.add_(x if keep is None else x[:, keep])
        if mlp_at is not None:
            selected = x[mlp_at]
            x[mlp_at] = self.mlp(self.mlp_norm(selected)).add_(selected)
            return x, k, v
        return self.mlp(self.mlp_norm(x)).add_(x), k, v


# ----------------------------------------------------------------------------- helpers

def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """``cumsum(mask) - 1`` clamped at 0: left padding does not shift real positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def _no_empty_rows(mask: torch.Tensor) -> torch.Tensor:
    """Let query rows with no allowed key (padding queries) attend to everything.

    Their outputs are never read, and padded keys stay masked for every real
    query, so this only keeps softmax from producing NaN that would spread.
    """
    return mask | ~mask.any(-1, keepdim=True)


def _check_keep(keep: Optional[slice], T: int) -> Tuple[int, int]:
    """``[start, stop)`` of the ``keep`` argument of the full forwards (None = every position)."""
    if keep is None:
        return 0, T
    if not isinstance(keep, slice):
        raise TypeError(f"keep must be a slice of positions or None, got {type(keep).__name__}")
    try:
        start, stop, step = keep.indices(T)
    except TypeError:
        raise TypeError(f"keep must be a slice of int positions, got {keep}") from None
    if step != 1 or start >= stop:
        raise ValueError(f"keep must be a non-empty slice of [0, {T}) with step 1, got {keep}")
    return start, stop


def segment_ids(T: int, gen_start: int, block_length: int, device) -> torch.Tensor:
    """SDAR segments: 0 for the prompt ``[0, gen_start)``, ``1 + j`` for generation block j."""
    idx = torch.arange(T, device=device)
    return torch.where(idx < gen_start, 0, 1 + torch.div(idx - gen_start, block_length, rounding_mode="floor"))


def write_blocks(caches: List[torch.Tensor], blocks: List[torch.Tensor], start: int) -> None:
    """For each pair, write ``block [B, H, W, D]`` into ``cache [B, H, T, D]`` at columns ``[start, start+W)``.

    The single place where caches are written: one fused ``kv_block_replace`` call for all layers.
    """
    kv_block_replace(caches, blocks, start)


# ----------------------------------------------------------------------------- the model

class Transformer(DiffusionLM):
    """Cache-aware pre-norm transformer; see :mod:`infogain.models.base` for the contract."""

    def __init__(self, spec: ArchSpec, config: ModelConfig, *, device=None, dtype=None):
        super().__init__()
        self.spec = spec
        self.config = config
        kw = dict(device=device, dtype=dtype)
        self.embed = nn.Embedding(spec.vocab_size, spec.hidden_size, **kw)
        self.blocks = nn.ModuleList(Block(spec, **kw) for _ in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, **kw)
        if not spec.tie_embeddings:
            self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False, **kw)

    # -- small accessors --------------------------------------------------------
    @property
    def lm_head_weight(self) -> torch.Tensor:
        """``[V, hidden]``: ``logits = hidden_states @ lm_head_weight.T``."""
        return self.embed.weight if self.spec.tie_embeddings else self.lm_head.weight

    # -- the stack ----------------------------------------------------------------
    def _run(self, ids, positions, mask, past_fn=None, fresh_key_index=None, collect=False, keep=None,
             mlp_at=None):
        """Run the stack; returns (final-normed hidden ``[G, L, hidden]``, per-layer fresh (k, v) or None).

        ``keep`` (a slice of the L positions, plain masks only): the hidden states of those positions
        only, ``[G, len(keep), hidden]``. Every layer but the last needs all positions (they are the
        next layer's keys and values); the last one computes its queries, attention output, MLP and
        the final norm at the kept positions only. ``mlp_at`` (bool ``[G, L]``): the last layer's MLP
        runs at those positions only (see :meth:`Block.forward`).
        """
        x = self.embed(ids)
        cos, sin = rope_cos_sin(positions, self.spec.head_dim, self.spec.rope_theta)
        fresh = [] if collect else None
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            past = past_fn(i) if past_fn is not None else None
            x, k, v = block(x, cos, sin, mask, past, fresh_key_index, *((keep, mlp_at) if i == last else ()))
            if collect:
                fresh.append((k, v))
        return self.norm(x), fresh

    def _align(self, hidden: torch.Tensor, prev_is_real: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Dream: the logit of position i comes from hidden state i-1 (``hidden[:, :-1]``).

        A position whose predecessor is not a real token (position 0, or the first
        token after left padding; ``prev_is_real [B, T]`` False) keeps its own row.
        """
        if not self.spec.shift_logits:
            return hidden
        prev = torch.cat([hidden[:, :1], hidden[:, :-1]], dim=1)
        if prev_is_real is None:
            return prev
        return torch.where(prev_is_real[..., None], prev, hidden)

    @staticmethod
    def _prev_is_real(attention_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """``attention_mask`` shifted right by one (None for no padding); no host read-back."""
        if attention_mask is None:
            return None
        return torch.cat([torch.zeros_like(attention_mask[:, :1]), attention_mask[:, :-1]], dim=1)

    @staticmethod
    def _padding_mask(attention_mask: Optional[torch.Tensor], check_values: bool) -> Optional[torch.Tensor]:
        """The mask to apply: None when the canvas is known to have no padding.

        Known on the host from ``None``; with ``check_values`` also by reading the mask back
        (one host synchronisation), so that the fused attention kernels run without a mask.
        """
        if attention_mask is None or (check_values and bool(attention_mask.all())):
            return None
        return attention_mask

    # -- validation -------------------------------------------------------------
    def _check_canvas(self, input_ids, attention_mask, check_values=True):
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
        if input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise ValueError(f"input_ids must be a 2-D long tensor [B, T], got {tuple(input_ids.shape)} {input_ids.dtype}")
        if input_ids.shape[1] < 1:
            raise ValueError("input_ids must have at least one position")
        if input_ids.device != self.embed.weight.device:
            raise ValueError(f"input_ids is on {input_ids.device} but the model is on {self.embed.weight.device}")
        if check_values:
            self._check_ids("input_ids", input_ids)
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.dtype != torch.bool:
                raise TypeError("attention_mask must be a bool tensor (True = real token)")
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask must have shape {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}")
            if attention_mask.device != input_ids.device:
                raise ValueError(f"attention_mask is on {attention_mask.device} but input_ids is on {input_ids.device}")

    def _check_ids(self, name: str, ids: torch.Tensor) -> None:
        """Token ids in ``[0, V)``: the one host synchronisation of a checked forward."""
        if ids.numel() and bool(((ids < 0) | (ids >= self.spec.vocab_size)).any()):
            raise ValueError(f"{name} must lie in [0, {self.spec.vocab_size})")

    def _segments(self, T, gen_start, block_length, device):
        """Segment ids for block-causal models (None for bidirectional ones)."""
        if not self.spec.block_causal:
            return None
        if gen_start is None or block_length is None:
            raise ValueError("gen_start and block_length are required for a block-causal (SDAR) model")
        for name, value in (("gen_start", gen_start), ("block_length", block_length)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if not 0 <= gen_start <= T:
            raise ValueError(f"gen_start must lie in [0, {T}], got {gen_start}")
        if block_length < 1:
            raise ValueError(f"block_length must be >= 1, got {block_length}")
        return segment_ids(T, gen_start, block_length, device)

    # -- full forwards ------------------------------------------------------------
    def _full(self, input_ids, attention_mask, gen_start, block_length, collect, keep=None):
        """Run the full canvas; ``attention_mask`` is the already reduced :meth:`_padding_mask`;
        ``keep``: as in :meth:`_run`."""
        B, T = input_ids.shape
        seg = self._segments(T, gen_start, block_length, input_ids.device)
        mask = None
        if attention_mask is not None:
            mask = attention_mask[:, None, None, :].expand(B, 1, T, T)
        if seg is not None:
            causal = (seg[None, :] <= seg[:, None])[None, None]
            mask = causal if mask is None else mask & causal
        if mask is not None:
            mask = _no_empty_rows(mask)
        # Without padding every row has positions 0..T-1: one row of rotary tables, broadcast.
        positions = (position_ids(attention_mask) if attention_mask is not None
                     else torch.arange(T, device=input_ids.device)[None])
        return self._run(input_ids, positions, mask, collect=collect, keep=keep)

    def hidden_states(self, input_ids, attention_mask=None, *, gen_start=None, block_length=None,
                      check_values=True, keep=None):
        """Final (normed) hidden states ``[B, T, hidden]`` aligned so that
        ``logits = hidden_states @ lm_head_weight.T`` follows the forward convention.

        ``keep``: as in :meth:`forward`; returns ``[B, len(keep), hidden]``.
        """
        check_values = check_bool("check_values", check_values)
        self._check_canvas(input_ids, attention_mask, check_values)
        mask = self._padding_mask(attention_mask, check_values)
        return self._kept_hidden(input_ids, mask, gen_start, block_length, keep, collect=False)[0]

    def _kept_hidden(self, input_ids, mask, gen_start, block_length, keep, collect):
        """Full forward of the canvas: (aligned final hidden states of the ``keep`` positions
        ``[B, len(keep), hidden]``, per-layer fresh (k, v) of every position or None)."""
        start, stop = _check_keep(keep, input_ids.shape[1])
        # Dream's logit of position i comes from hidden state i-1: one more position in front.
        lo = start - 1 if (self.spec.shift_logits and start > 0) else start
        hidden, fresh = self._full(input_ids, mask, gen_start, block_length, collect=collect,
                                   keep=None if (lo, stop) == (0, input_ids.shape[1]) else slice(lo, stop))
        prev_is_real = self._prev_is_real(mask)
        if prev_is_real is not None:
            prev_is_real = prev_is_real[:, lo:stop]
        return self._align(hidden, prev_is_real)[:, start - lo:], fresh

    def forward(self, input_ids, attention_mask=None, *, gen_start=None, block_length=None, check_values=True,
                keep=None):
        """Full forward ``input_ids [B, T]`` (long) -> logits ``[B, T, V]`` (model dtype).

        ``check_values`` (default True) checks that the ids lie in ``[0, V)`` and tests a
        given ``attention_mask`` for being all True (so the attention runs unmasked); that
        costs host synchronisations. With False the ids are trusted and a given mask is
        applied as is: pass ``attention_mask=None`` when there is no padding.

        ``keep`` (a ``slice`` of positions with step 1, default all): return only the logits of
        those positions, ``[B, len(keep), V]``: ``forward(...)[:, keep]`` up to float rounding
        (the attention kernel may group the fewer queries into other tiles). The last
        layer then computes its queries, attention output and MLP (and the head) only there (its
        keys and values still cover the whole canvas), which saves most of one layer when a
        caller reads a block of the canvas.
        """
        return self.logits_from_hidden(self.hidden_states(input_ids, attention_mask, gen_start=gen_start,
                                                          block_length=block_length, check_values=check_values,
                                                          keep=keep))

    def prefill(self, input_ids, attention_mask, *, mode, start, gen_start=None, block_length=None,
                check_values=True, keep=None):
        """Full forward plus the cache for ``mode`` (see :mod:`infogain.models.base`).

        The cache has capacity T for "dual" and "block_causal" (so block writes are
        in place) and exactly ``start`` positions for "prefix". It also records the
        canvas ids and mask, which window forwards fall back to, and (host flag
        ``all_real`` of :class:`TransformerKVCache`) whether the canvas is known to
        have no padding. ``check_values`` and ``keep`` (the logits of those positions
        only; the cache still covers every position): as in :meth:`forward`.
        """
        check_values = check_bool("check_values", check_values)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "block_causal" and not self.spec.block_causal:
            raise ValueError(f"mode 'block_causal' needs a block-causal model; {self.config.arch} is bidirectional")
        if mode != "block_causal" and self.spec.block_causal:
            raise ValueError(f"mode must be 'block_causal' for the block-causal model {self.config.arch}, got {mode!r}")
        self._check_canvas(input_ids, attention_mask, check_values)
        T = input_ids.shape[1]
        if isinstance(start, bool) or not isinstance(start, int):
            raise TypeError(f"start must be an int, got {type(start).__name__}")
        if not 0 <= start <= T:
            raise ValueError(f"start must lie in [0, {T}], got {start}")
        if mode == "block_causal":
            self._segments(T, gen_start, block_length, input_ids.device)   # validates gen_start, block_length
            # Segment boundaries (see segment_ids), decided on the host.
            if start < gen_start or (start < T and (start - gen_start) % block_length != 0):
                raise ValueError(f"start={start} must be a block boundary at or after gen_start={gen_start}")
        mask = self._padding_mask(attention_mask, check_values)
        hidden, fresh = self._kept_hidden(input_ids, mask, gen_start, block_length, keep, collect=True)
        if mode == "prefix":
            keys = [k[:, :, :start].contiguous() for k, _ in fresh]
            values = [v[:, :, :start].contiguous() for _, v in fresh]
            length = start
        else:
            keys, values = [k for k, _ in fresh], [v for _, v in fresh]
            length = T if mode == "dual" else start
        canvas_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        cache = TransformerKVCache(keys=keys, values=values, length=length, token_ids=input_ids.clone(),
                                   attention_mask=canvas_mask.clone(), mode=mode, all_real=mask is None)
        return self.logits_from_hidden(hidden), cache

    # -- window forwards ----------------------------------------------------------
    def window_hidden_states(self, window_ids, *, start, cache, mode, attention_mask=None,
                             cache_rows=None, write=False, check_values=True, read=None):
        """Aligned final hidden states ``[R, W, hidden]`` of :meth:`forward_window`.

        ``read`` (bool ``[R, W]`` or None): for a candidate batch (several window rows per cache
        row), the positions whose hidden states the caller reads; the last layer's MLP then runs
        only where one of them needs it, and the other positions' hidden states are unspecified.
        Selecting them reads a count back: meant for the CPU, where that costs nothing.
        """
        check_values = check_bool("check_values", check_values)
        R, W, layout, attention_mask, all_real = self._check_window(window_ids, start, cache, mode, attention_mask,
                                                                    cache_rows, write, check_values)
        # Dream needs the hidden state of position start-1 for the logit at start: it
        # is forwarded as one extra query whose key/value stay the cached ones.
        extra = 1 if (self.spec.shift_logits and start > 0) else 0
        cached = cache.length if mode != "dual" else cache.keys[0].shape[2]
        if layout is None:
            hidden = self._window_rows(window_ids, start, extra, cached, cache, mode, attention_mask, write,
                                       all_real)
        elif layout.slots_per_group == 1:
            # Ordinary rows, one per cache row: the plain forward over those cache rows (in the
            # layout's ascending order), no candidate machinery.
            ordered = torch.empty_like(window_ids)
            ordered[layout.slot_of_row] = window_ids
            rows = None if layout.every_cache_row else layout.groups
            hidden = self._window_rows(ordered, start, extra, cached, cache, mode, attention_mask, False,
                                       all_real, canvas_rows=rows)[layout.slot_of_row]
        else:
            hidden = self._window_candidates(window_ids, layout, start, extra, cached, cache, mode, attention_mask,
                                             all_real, check_values, read)
        if self.spec.shift_logits:
            # query j is position start - extra + j; prev_real[r, i]: is position start+i-1 real
            position_is_real = attention_mask[layout.rows] if layout is not None else attention_mask
            prev_real = torch.cat([torch.zeros_like(position_is_real[:, :1]), position_is_real[:, :-1]], dim=1)
            prev_real = prev_real[:, start:start + W]
            if extra:
                hidden = torch.where(prev_real[..., None], hidden[:, :W], hidden[:, 1:])
            else:
                hidden = self._align(hidden, prev_real)
        return hidden

    def _window_queries(self, window_ids, start, extra, cache, canvas_rows):
        """Ids ``[R, extra + W]`` (Dream's extra query first) and the fresh-key selector."""
        if not extra:
            return window_ids, None
        prev = cache.token_ids[canvas_rows, start - 1]
        ids = torch.cat([prev[:, None], window_ids], dim=1)
        return ids, torch.arange(extra, ids.shape[1], device=window_ids.device)

    def _window_rows(self, window_ids, start, extra, cached, cache, mode, attention_mask, write, all_real,
                     canvas_rows=None):
        """Window row r against cache row r (``canvas_rows[r]`` when given: a long tensor of cache
        rows): keys ``[cache[0, cached) | fresh window]``, one mask (none when nothing is masked)."""
        R, W = window_ids.shape
        if canvas_rows is not None:
            attention_mask = attention_mask[canvas_rows]
        ids, fresh_key_index = self._window_queries(window_ids, start, extra, cache,
                                                    slice(None) if canvas_rows is None else canvas_rows)
        Lq = ids.shape[1]
        positions = position_ids(attention_mask)[:, start - extra:start + W]
        if all_real and mode != "dual":
            mask = None   # known on the host: no padding, and no cached key is replaced
        else:
            cache_ok = attention_mask[:, :cached].clone()
            if mode == "dual":
                cache_ok[:, start:start + W] = False   # the window's fresh keys replace them
            window_ok = attention_mask[:, start:start + W]
            mask = torch.cat([cache_ok[:, None, :].expand(R, Lq, cached),
                              window_ok[:, None, :].expand(R, Lq, W)], dim=2)[:, None]
            mask = _no_empty_rows(mask)

        def past(i):
            k, v = cache.keys[i][:, :, :cached], cache.values[i][:, :, :cached]
            if canvas_rows is not None:
                k, v = k.index_select(0, canvas_rows), v.index_select(0, canvas_rows)
            return k, v

        hidden, fresh = self._run(ids, positions, mask, past, fresh_key_index, collect=write)
        if write:
            self._write(cache, fresh, start, W, mode, window_ids)
        return hidden

    def _window_candidates(self, window_ids, layout: CandidateRows, start, extra, cached, cache, mode,
                           attention_mask, all_real: bool, check_values: bool, read=None):
        """Window row r against cache row ``layout.rows[r]`` by cascade attention (no cache copy).

        Rows are grouped by the cache row they read and laid out as ``G`` groups of
        ``n`` slots (see :class:`CandidateRows`), so that :func:`cascade_attention` can
        attend each group's queries to its cache row in one call.
        """
        W = window_ids.shape[1]
        groups, slot_of_row, n = layout.groups, layout.slot_of_row, layout.slots_per_group
        G = groups.shape[0]
        ids, fresh_key_index = self._window_queries(window_ids, start, extra, cache, layout.rows)
        slotted = ids[:1].repeat(G * n, 1)
        slotted[slot_of_row] = ids
        group_mask = attention_mask[groups]                                          # [G, T]
        positions = position_ids(group_mask)[:, start - extra:start + W].repeat_interleave(n, 0)

        shared_key_mask = group_mask[:, :cached].clone()
        if mode == "dual":
            shared_key_mask[:, start:start + W] = False   # the window's fresh keys replace them
        own_key_mask = group_mask[:, start:start + W].repeat_interleave(n, 0)

        # All-True masks are dropped so the fused kernels run without a mask: known on the host
        # without padding (dual's shared mask still excludes the window), else read back when
        # values may be checked; otherwise they are applied as they are (same result).
        def reduced(mask, known_all_true):
            return None if known_all_true or (check_values and bool(mask.all())) else mask

        masks = CascadeMasks(shared=reduced(shared_key_mask, all_real and mode != "dual"),
                             own=reduced(own_key_mask, all_real))
        if not use_cascade(cached, n * W, window_ids.device):
            masks = StackedMasks(stacked_mask(masks.shared, masks.own, groups=G, per_group=n, queries=ids.shape[1],
                                              shared_keys=cached, own_keys=W, device=window_ids.device))

        def past(i):
            k, v = cache.keys[i][:, :, :cached], cache.values[i][:, :, :cached]
            if not layout.every_cache_row:
                k, v = k.index_select(0, groups), v.index_select(0, groups)
            return k, v

        mlp_at = None
        if read is not None:
            queries_read = read
            if self.spec.shift_logits:
                # Position i's hidden state comes from query i - 1 + extra, or its own query
                # i + extra after left padding: both may be read.
                queries_read = read.new_zeros(read.shape[0], read.shape[1] + 1)
                queries_read[:, 1:] |= read
                queries_read[:, :-1] |= read
                if not extra:  # no shift query: query j is position j
                    queries_read = queries_read[:, 1:]
            mlp_at = torch.zeros(G * n, ids.shape[1], dtype=torch.bool, device=read.device)
            mlp_at[slot_of_row] = queries_read
        hidden, _ = self._run(slotted, positions, masks, past, fresh_key_index, mlp_at=mlp_at)
        return hidden[slot_of_row]

    def forward_window(self, window_ids, *, start, cache, mode, attention_mask=None, cache_rows=None,
                       write=False, check_values=True):
        """Forward the window ``window_ids [R, W]`` against ``cache``; logits ``[R, W, V]``.

        See :mod:`infogain.models.base`. ``attention_mask`` defaults to the canvas
        mask recorded at prefill (known to be padding-free, without reading it, when
        :meth:`prefill` got ``attention_mask=None``). For Dream with ``start > 0`` the
        logit of ``start`` comes from the hidden state of ``start - 1``, recomputed here
        as an extra query (with the window in its context), so no logit is a placeholder.

        ``cache_rows`` is a long tensor ``[R]`` (read back once to lay out the
        candidate groups: one host synchronisation) or a host tuple of R ints (no
        read-back; the layout is computed on the host and sent with one non-blocking
        copy). ``check_values`` (default True) checks that the ids lie in ``[0, V)``
        and may read masks back to drop all-True ones; with False nothing is read
        back (the ids are trusted). A forward with ``check_values=False``, a host
        ``cache_rows`` (or none) and a cache prefilled without a mask makes no host
        synchronisation in this module.
        """
        return self.logits_from_hidden(self.window_hidden_states(
            window_ids, start=start, cache=cache, mode=mode, attention_mask=attention_mask,
            cache_rows=cache_rows, write=write, check_values=check_values))

    def _write(self, cache: KVCache, fresh, start: int, W: int, mode: str, window_ids) -> None:
        write_blocks(cache.keys + cache.values, [k for k, _ in fresh] + [v for _, v in fresh], start)
        cache.token_ids[:, start:start + W] = window_ids
        if mode == "block_causal":
            cache.length = start + W

    def _check_window(self, window_ids, start, cache, mode, attention_mask, cache_rows, write, check_values):
        """Validate a window forward; returns ``(R, W, layout or None, canvas mask [B, T], all_real)``."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache, got {type(cache).__name__}")
        if cache.mode is not None and cache.mode != mode:
            raise ValueError(f"mode={mode!r} but the cache was built for mode {cache.mode!r}")
        if len(cache.keys) != self.spec.num_layers or len(cache.values) != self.spec.num_layers:
            raise ValueError(f"cache must hold {self.spec.num_layers} layers, got {len(cache.keys)}")
        if cache.token_ids is None:
            raise ValueError("cache has no token_ids; build it with prefill()")
        if not isinstance(window_ids, torch.Tensor):
            raise TypeError(f"window_ids must be a torch.Tensor, got {type(window_ids).__name__}")
        if window_ids.dim() != 2 or window_ids.dtype != torch.long or window_ids.shape[0] < 1 or window_ids.shape[1] < 1:
            raise ValueError(f"window_ids must be a non-empty 2-D long tensor [R, W], got {tuple(window_ids.shape)} {window_ids.dtype}")
        if window_ids.device != cache.keys[0].device:
            raise ValueError(f"window_ids is on {window_ids.device} but the cache is on {cache.keys[0].device}")
        if check_values:
            self._check_ids("window_ids", window_ids)
        R, W = window_ids.shape
        B, T = cache.token_ids.shape
        if isinstance(start, bool) or not isinstance(start, int):
            raise TypeError(f"start must be an int, got {type(start).__name__}")
        if mode == "prefix":
            if start != cache.length or start + W != T:
                raise ValueError(f"prefix mode: the window must be [cache.length={cache.length}, T={T}); "
                                 f"got start={start}, W={W}")
        elif mode == "dual":
            if not 0 <= start or start + W > T:
                raise ValueError(f"dual mode: the window [start, start+W) = [{start}, {start + W}) must lie in [0, {T})")
        else:
            if start != cache.length or start + W > T:
                raise ValueError(f"block_causal mode: start must equal cache.length={cache.length} and "
                                 f"start+W <= T={T}; got start={start}, W={W}")
        all_real = False
        if attention_mask is None:
            attention_mask = cache.attention_mask
            all_real = bool(getattr(cache, "all_real", False))   # a host flag, not a tensor
        elif not isinstance(attention_mask, torch.Tensor) or attention_mask.dtype != torch.bool:
            raise TypeError("attention_mask must be a bool tensor [B, T]")
        elif tuple(attention_mask.shape) != (B, T):
            raise ValueError(f"attention_mask must have the cache's canvas shape {(B, T)}, got {tuple(attention_mask.shape)}")
        layout = None
        if cache_rows is not None:
            if isinstance(cache_rows, torch.Tensor):
                if cache_rows.dtype != torch.long:
                    raise TypeError("cache_rows must be a long tensor [R] or a tuple of ints")
                if tuple(cache_rows.shape) != (R,):
                    raise ValueError(f"cache_rows must have shape ({R},), got {tuple(cache_rows.shape)}")
                cache_rows = tuple(cache_rows.tolist())   # the layout is built on the host: one read-back
            elif isinstance(cache_rows, tuple):
                if not all(isinstance(r, int) and not isinstance(r, bool) for r in cache_rows):
                    raise TypeError("cache_rows must be a long tensor [R] or a tuple of ints")
                if len(cache_rows) != R:
                    raise ValueError(f"cache_rows must hold {R} rows (one per window row), got {len(cache_rows)}")
            else:
                raise TypeError("cache_rows must be a long tensor [R] or a tuple of ints, "
                                f"got {type(cache_rows).__name__}")
            if any(r < 0 or r >= B for r in cache_rows):
                raise ValueError(f"cache_rows must lie in [0, {B})")
            if write:
                raise ValueError("write=True is not allowed with cache_rows (candidates never write the cache)")
            layout = candidate_rows(cache_rows, window_ids.device, B)
        elif R != B:
            raise ValueError(f"window_ids has {R} rows but the cache has {B}; pass cache_rows to map them")
        return R, W, layout, attention_mask.to(window_ids.device), all_real
