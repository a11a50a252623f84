"""The transformer shared by LLaDA, Dream and SDAR: its forwards, with the three cache modes.

All three architectures are pre-norm LLaMA-style stacks: RMSNorm, rotary
attention (half-split ``rotate_half``) with grouped KV heads, SwiGLU MLP, final
RMSNorm and an untied LM head. What differs is captured by :class:`ArchSpec`:
qkv bias (Dream), qk-norm (SDAR), the one-position logit shift (Dream) and
block-causal attention (SDAR). The per-architecture modules only translate
config.json fields and state-dict key names.

This module holds the forwards only: the full forwards (:meth:`Transformer.forward`,
:meth:`~Transformer.hidden_states`), :meth:`~Transformer.prefill` and the window entry
(:meth:`~Transformer.forward_window`, :meth:`~Transformer.window_hidden_states`). The layers and
:class:`ArchSpec` are in :mod:`infogain.models.layers`, the cache type, candidate-row layout and
cache building in :mod:`infogain.models.cache`, the masks and the attention route in
:mod:`infogain.models.attention`, the argument checks in :mod:`infogain.models.validation`.

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
once per distinct cache row per layer, never copied per candidate. A small candidate
batch on the CPU (the measured limit of :func:`~infogain.models.attention.candidate_route`)
runs the plain window forward instead, each candidate row against its cache row's keys (a
broadcast view of that row for a one-prompt batch, copied only by the attention's
concatenation): on a tiny model that costs less than the cascade's or the stacked form's
extra operations (slot layout, masks, merge).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from infogain_kernels._validation import check_bool

from .attention import canvas_mask, candidate_masks, candidate_route, segment_ids, window_mask
from .base import DiffusionLM, ModelConfig
from .cache import (CandidateRows, RowReader, cached_past, candidate_rows, gather_rows, prefill_cache,
                    write_window)
from .layers import ArchSpec, Block, RMSNorm, position_ids, rope_cos_sin
from .validation import (check_block_aligned_rows, check_cache_rows, check_canvas, check_keep,
                         check_position_segments, check_prefill_mode, check_prefill_start, check_segments,
                         check_window)


class Transformer(DiffusionLM):
    """Cache-aware pre-norm transformer; see :mod:`infogain.models.base` for the contract."""

    def __init__(self, spec: ArchSpec, config: ModelConfig, *, device=None, dtype=None):
        super().__init__()
        self.spec = spec
        self.config = config
        kw = dict(device=device, dtype=dtype)
        self.embed = nn.Embedding(spec.vocab_size, spec.hidden_size, **kw)
        self.blocks = nn.ModuleList(Block(spec, i, **kw) for i in range(spec.num_layers))
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
        cos, sin = rope_cos_sin(positions, self.spec.rotary_dim or self.spec.head_dim, self.spec.rope_theta)
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

    # -- argument checks (models/validation.py) and segments ------------------------
    def _check_canvas(self, input_ids, attention_mask, check_values):
        check_canvas(input_ids, attention_mask, device=self.embed.weight.device, vocab_size=self.spec.vocab_size,
                     check_values=check_values)

    def _segments(self, T, gen_start, block_length, positions):
        """Segment ids for block-causal models (None for bidirectional ones): ``[T]`` counted from
        ``gen_start`` (SDAR), or ``[B or 1, T]`` from each row's ``positions`` (LLaDA2)."""
        if not self.spec.block_causal:
            return None
        if self.spec.block_anchor == "position":
            block_length = check_position_segments(block_length, self.config.block_length)
            return torch.div(positions, block_length, rounding_mode="floor")
        check_segments(T, gen_start, block_length)
        return segment_ids(T, gen_start, block_length, positions.device)

    # -- full forwards ------------------------------------------------------------
    def _full(self, input_ids, attention_mask, gen_start, block_length, collect, keep=None):
        """Run the full canvas; ``attention_mask`` is the already reduced :meth:`_padding_mask`;
        ``keep``: as in :meth:`_run`."""
        T = input_ids.shape[1]
        # Without padding every row has positions 0..T-1: one row of rotary tables, broadcast.
        positions = (position_ids(attention_mask) if attention_mask is not None
                     else torch.arange(T, device=input_ids.device)[None])
        mask = canvas_mask(attention_mask, self._segments(T, gen_start, block_length, positions))
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

    def _kept_hidden(self, input_ids, mask, gen_start, block_length, keep, collect, boundary_at=None):
        """Full forward of the canvas: (aligned final hidden states of the ``keep`` positions
        ``[B, len(keep), hidden]``, per-layer fresh (k, v) of every position or None, the unaligned
        final hidden state ``[B, hidden]`` of position ``boundary_at`` or None)."""
        T = input_ids.shape[1]
        start, stop = check_keep(keep, T)
        # Dream's logit of position i comes from hidden state i-1: one more position in front.
        lo = start - 1 if (self.spec.shift_logits and start > 0) else start
        hi = stop
        if boundary_at is not None:
            lo, hi = min(lo, boundary_at), max(hi, boundary_at + 1)
        hidden, fresh = self._full(input_ids, mask, gen_start, block_length, collect=collect,
                                   keep=None if (lo, hi) == (0, T) else slice(lo, hi))
        boundary = None if boundary_at is None else hidden[:, boundary_at - lo].clone()
        prev_is_real = self._prev_is_real(mask)
        if prev_is_real is not None:
            prev_is_real = prev_is_real[:, lo:hi]
        return self._align(hidden, prev_is_real)[:, start - lo:stop - lo], fresh, boundary

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

        The cache is built by :func:`~infogain.models.cache.prefill_cache`: capacity T for
        "dual" and "block_causal" (so block writes are in place), exactly ``start`` positions
        for "prefix"; it also records the canvas ids and mask, which window forwards fall back
        to, and (host flag ``all_real`` of :class:`~infogain.models.cache.TransformerKVCache`)
        whether the canvas is known to have no padding. ``check_values`` and ``keep`` (the logits of those positions
        only; the cache still covers every position): as in :meth:`forward`.
        """
        check_values = check_bool("check_values", check_values)
        check_prefill_mode(mode, block_causal=self.spec.block_causal, arch=self.config.arch)
        self._check_canvas(input_ids, attention_mask, check_values)
        if mode == "block_causal" and self.spec.block_anchor == "position":
            block_length = check_position_segments(block_length, self.config.block_length)
            check_prefill_start(start, input_ids.shape[1], mode, 0, block_length)
            if check_values and attention_mask is not None:
                check_block_aligned_rows(attention_mask, block_length)
        else:
            check_prefill_start(start, input_ids.shape[1], mode, gen_start, block_length)
        mask = self._padding_mask(attention_mask, check_values)
        # A shift model's block-causal cache keeps the final state before its end (see TransformerKVCache).
        boundary_at = start - 1 if (self._boundary_states(mode) and start > 0) else None
        hidden, fresh, boundary = self._kept_hidden(input_ids, mask, gen_start, block_length, keep, collect=True,
                                                    boundary_at=boundary_at)
        cache = prefill_cache(fresh, mode=mode, start=start, input_ids=input_ids, attention_mask=attention_mask,
                              all_real=mask is None, boundary=None if boundary is None else {boundary_at: boundary})
        return self.logits_from_hidden(hidden), cache

    def _boundary_states(self, mode: str) -> bool:
        """Whether caches of ``mode`` keep boundary states: block-causal caches of a shift model
        (Fast-dLLM v2). Its first window position's logit comes from the state before the window,
        which in a block-causal model sees only the cache, never the window."""
        return self.spec.shift_logits and self.spec.block_causal and mode in ("block_causal", "sub_block")

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
        check_window(window_ids, start, cache, mode, attention_mask, num_layers=self.spec.num_layers,
                     vocab_size=self.spec.vocab_size, check_values=check_values)
        if mode == "sub_block" and (write or not self.spec.block_causal):
            raise ValueError("mode 'sub_block' is a read-only window inside the last written block of a "
                             "block-causal model's cache (write=False)")
        (R, W), B = window_ids.shape, cache.token_ids.shape[0]
        cache_rows = check_cache_rows(cache_rows, R, B, write)
        layout = None if cache_rows is None else candidate_rows(cache_rows, window_ids.device, B)
        all_real = False
        if attention_mask is None:
            attention_mask = cache.attention_mask
            all_real = bool(getattr(cache, "all_real", False))   # a host flag, not a tensor
        attention_mask = attention_mask.to(window_ids.device)
        # Dream needs the hidden state of position start-1 for the logit at start: it
        # is forwarded as one extra query whose key/value stay the cached ones. A block-causal shift
        # model (Fast-dLLM v2) reads it from the cache's boundary states instead (none in "sub_block"
        # mode inside a block: that position keeps its own state, as in the official loop).
        extra = 1 if (self.spec.shift_logits and start > 0) else 0
        boundary = None
        if self._boundary_states(mode):
            extra = 0
            boundary = getattr(cache, "boundary", {}).get(start - 1) if start > 0 else None
            if mode == "block_causal" and start > 0 and boundary is None:
                raise ValueError(f"the cache holds no boundary state at position {start - 1}: build it with "
                                 "prefill() and write each block (write=True) before the next")
        # Keys read from the cache: its whole capacity (dual), everything cached (sub_block, the
        # window's own columns excluded by the mask), else the positions before the window.
        cached = {"dual": cache.keys[0].shape[2], "sub_block": cache.length}.get(
            mode, start if mode == "block_causal" else cache.length)
        if layout is None:
            hidden = self._window_rows(window_ids, start, extra, cached, cache, mode, attention_mask, write,
                                       all_real)
        elif layout.slots_per_group == 1:
            # Ordinary rows, one per cache row: the plain forward over those cache rows (in the
            # layout's ascending order), no candidate machinery.
            ordered = torch.empty_like(window_ids)
            ordered[layout.slot_of_row] = window_ids
            rows = None if layout.every_cache_row else gather_rows(layout.groups)
            hidden = self._window_rows(ordered, start, extra, cached, cache, mode, attention_mask, False,
                                       all_real, canvas_rows=rows)[layout.slot_of_row]
        elif candidate_route(R, cached, layout.slots_per_group * W, self.spec.num_kv_heads * self.spec.head_dim,
                             window_ids.device) == "rows":
            # A small candidate batch (CPU): the plain forward, each row against its cache row's keys.
            hidden = self._window_rows(window_ids, start, extra, cached, cache, mode, attention_mask, False,
                                       all_real, canvas_rows=layout.reader(),
                                       mlp_at=None if read is None else self._queries_read(read, extra))
        else:
            hidden = self._window_candidates(window_ids, layout, start, extra, cached, cache, mode, attention_mask,
                                             all_real, check_values, read)
        if self.spec.shift_logits:
            # query j is position start - extra + j; prev_real[r, i]: is position start+i-1 real
            position_is_real = layout.reader()(attention_mask) if layout is not None else attention_mask
            prev_real = torch.cat([torch.zeros_like(position_is_real[:, :1]), position_is_real[:, :-1]], dim=1)
            prev_real = prev_real[:, start:start + W]
            if extra:
                hidden = torch.where(prev_real[..., None], hidden[:, :W], hidden[:, 1:])
            else:
                hidden = self._align(hidden, prev_real)
            if boundary is not None:
                before = boundary if layout is None else layout.reader()(boundary)
                first = torch.where(prev_real[:, :1, None], before[:, None].to(hidden.dtype), hidden[:, :1])
                hidden = torch.cat([first, hidden[:, 1:]], dim=1)
        return hidden

    def _window_queries(self, window_ids, start, extra, cache, canvas_rows: Optional[RowReader]):
        """Ids ``[R, extra + W]`` (Dream's extra query first) and the fresh-key selector."""
        if not extra:
            return window_ids, None
        prev = cache.token_ids[:, start - 1]
        if canvas_rows is not None:
            prev = canvas_rows(prev)
        ids = torch.cat([prev[:, None], window_ids], dim=1)
        return ids, torch.arange(extra, ids.shape[1], device=window_ids.device)

    def _window_rows(self, window_ids, start, extra, cached, cache, mode, attention_mask, write, all_real,
                     canvas_rows: Optional[RowReader] = None, mlp_at=None):
        """Window row r against cache row r (the rows ``canvas_rows`` reads, when given): keys
        ``[cache[0, cached) | fresh window]``, one mask (none when nothing is masked). ``mlp_at``:
        as in :meth:`_run`."""
        W = window_ids.shape[1]
        if canvas_rows is not None:
            attention_mask = canvas_rows(attention_mask)
        ids, fresh_key_index = self._window_queries(window_ids, start, extra, cache, canvas_rows)
        Lq = ids.shape[1]
        if all_real:
            # No padding: every row has positions start - extra ... (one row of rotary tables, broadcast).
            positions = torch.arange(start - extra, start + W, device=ids.device)[None]
        else:
            positions = position_ids(attention_mask)[:, start - extra:start + W]
        mask = window_mask(attention_mask, cached=cached, start=start, W=W, queries=Lq,
                           dual=mode in ("dual", "sub_block"), all_real=all_real)
        hidden, fresh = self._run(ids, positions, mask, cached_past(cache, cached, canvas_rows), fresh_key_index,
                                  collect=write, mlp_at=mlp_at)
        if write:
            write_window(cache, fresh, start, window_ids, mode,
                         last_hidden=hidden[:, -1].clone() if self._boundary_states(mode) else None)
        return hidden

    def _window_candidates(self, window_ids, layout: CandidateRows, start, extra, cached, cache, mode,
                           attention_mask, all_real: bool, check_values: bool, read=None):
        """Window row r against cache row ``layout.rows[r]`` by cascade attention (no cache copy).

        Rows are grouped by the cache row they read and laid out as ``G`` groups of
        ``n`` slots (see :class:`CandidateRows`), so that
        :func:`~infogain.models.attention.cascade_attention` can attend each group's queries to its
        cache row in one call (or one stacked attention runs per group, as
        :func:`~infogain.models.attention.candidate_masks` picks).
        """
        W = window_ids.shape[1]
        groups, slot_of_row, n = layout.groups, layout.slot_of_row, layout.slots_per_group
        G = groups.shape[0]
        ids, fresh_key_index = self._window_queries(window_ids, start, extra, cache, gather_rows(layout.rows))
        slotted = ids[:1].repeat(G * n, 1)
        slotted[slot_of_row] = ids
        group_mask = attention_mask[groups]                                          # [G, T]
        positions = position_ids(group_mask)[:, start - extra:start + W].repeat_interleave(n, 0)
        masks = candidate_masks(group_mask, cached=cached, start=start, W=W, per_group=n, queries=ids.shape[1],
                                dual=mode in ("dual", "sub_block"), all_real=all_real, check_values=check_values)
        past = cached_past(cache, cached, None if layout.every_cache_row else groups)

        mlp_at = None
        if read is not None:
            mlp_at = torch.zeros(G * n, ids.shape[1], dtype=torch.bool, device=read.device)
            mlp_at[slot_of_row] = self._queries_read(read, extra)
        hidden, _ = self._run(slotted, positions, masks, past, fresh_key_index, mlp_at=mlp_at)
        return hidden[slot_of_row]

    def _queries_read(self, read: torch.Tensor, extra: int) -> torch.Tensor:
        """The queries ``[R, extra + W]`` whose final hidden states the read positions ``read [R, W]``
        need (see :meth:`window_hidden_states`)."""
        if not self.spec.shift_logits:
            return read
        # Position i's hidden state comes from query i - 1 + extra, or its own query
        # i + extra after left padding: both may be read.
        queries_read = read.new_zeros(read.shape[0], read.shape[1] + 1)
        queries_read[:, 1:] |= read
        queries_read[:, :-1] |= read
        return queries_read if extra else queries_read[:, 1:]   # no shift query: query j is position j

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
