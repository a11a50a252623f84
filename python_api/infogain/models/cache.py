"""The transformer's KV cache: its type, the layout of candidate rows over it, and building, reading
and writing it.

A window forward with ``cache_rows`` groups its rows by the cache row they read
(:class:`CandidateRows`); the cascade and stacked attentions then read each distinct cache row
once per layer, in place (:func:`cached_past`), never a per-candidate copy. Small candidate
batches on the CPU instead run the plain window forward with each row's cached keys taken per
row (:meth:`CandidateRows.reader`: a broadcast view when all rows read one cache row), which the
attention concatenates with the fresh keys: cheaper there than the cascade's extra operations
(see :func:`~infogain.models.attention.candidate_route`). Caches are written in one place,
:func:`write_blocks` (one fused ``kv_block_replace`` call for all layers).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from infogain_kernels import kv_block_replace

from .._device import host_ints_to_device
from .base import KVCache

# Per-layer fresh keys and values of a forward, as the stack collects them.
FreshKV = List[Tuple[torch.Tensor, torch.Tensor]]
# Takes, from a tensor with one entry per cache row along dim 0, the entries some window rows read.
RowReader = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class TransformerKVCache(KVCache):
    """A :class:`KVCache` that also records, on the host, that its canvas had no padding.

    ``all_real`` lets window forwards drop the attention mask without reading it back;
    copies made as plain :class:`KVCache` (no flag) simply keep the mask.

    ``boundary`` (block-causal caches of a model with the one-position logit shift, Fast-dLLM v2):
    position ``p`` -> the final (normed) hidden state ``[B, hidden]`` of position ``p``, kept for the
    last position before each cached block end (the prefill's ``start - 1``, each written window's
    last position). The logit of the first position of the next block comes from it: in a
    block-causal model that state sees only earlier blocks, so a window forward need not recompute it.
    """

    all_real: bool = False
    boundary: Dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class CandidateRows:
    """The layout of a candidate window forward, computed on the host from ``cache_rows``.

    Window rows are laid out as ``G`` groups (one per distinct cache row, ascending) of
    ``n`` slots (n = the largest group); the spare slots of smaller groups repeat a real
    row and are dropped at the end. The device tensors (:attr:`rows`, :attr:`groups`,
    :attr:`slot_of_row`) are made on first use, all with one copy: a forward that needs none
    of them (a one-prompt batch on the "rows" route) makes none.
    """

    cache_rows: Tuple[int, ...]     # host: the cache row of each window row
    group_rows: Tuple[int, ...]     # host: the distinct cache rows, ascending
    slots_per_group: int            # n
    every_cache_row: bool           # groups == arange(cache batch): no gather of the cache needed
    device: torch.device

    @cached_property
    def _packed(self) -> torch.Tensor:
        group_of = {row: g for g, row in enumerate(self.group_rows)}
        filled = [0] * len(self.group_rows)
        slots = []
        for row in self.cache_rows:
            g = group_of[row]
            slots.append(g * self.slots_per_group + filled[g])   # rank = order of appearance in the group
            filled[g] += 1
        return host_ints_to_device(list(self.cache_rows) + list(self.group_rows) + slots, self.device)  # one copy

    @property
    def rows(self) -> torch.Tensor:
        """``[R]`` long, the cache row of each window row."""
        return self._packed[:len(self.cache_rows)]

    @property
    def groups(self) -> torch.Tensor:
        """``[G]`` long, the distinct cache rows."""
        R = len(self.cache_rows)
        return self._packed[R:R + len(self.group_rows)]

    @property
    def slot_of_row(self) -> torch.Tensor:
        """``[R]`` long, the slot of each window row."""
        return self._packed[len(self.cache_rows) + len(self.group_rows):]

    def reader(self) -> RowReader:
        """``t [B, ...]`` (one entry per cache row) -> ``[R, ...]``, the entry of each window row's
        cache row: a broadcast view of one row when every window row reads the same cache row (a
        lookahead of one prompt; nothing copied until the attention concatenates), else a gather."""
        if len(self.group_rows) == 1:
            row, R = self.group_rows[0], len(self.cache_rows)
            return lambda t: t[row:row + 1].expand(R, *t.shape[1:])
        return gather_rows(self.rows)


def gather_rows(rows: torch.Tensor) -> RowReader:
    """The :data:`RowReader` of the long tensor ``rows`` (one gather along dim 0)."""
    return lambda t: t.index_select(0, rows)


def candidate_rows(cache_rows: Sequence[int], device: torch.device, batch_size: int) -> CandidateRows:
    """The :class:`CandidateRows` of the host list ``cache_rows`` (validated by the caller)."""
    groups = sorted(set(cache_rows))
    counts: Dict[int, int] = {}
    for row in cache_rows:
        counts[row] = counts.get(row, 0) + 1
    return CandidateRows(cache_rows=tuple(cache_rows), group_rows=tuple(groups), slots_per_group=max(counts.values()),
                         every_cache_row=groups == list(range(batch_size)), device=device)


def prefill_cache(fresh: FreshKV, *, mode: str, start: int, input_ids: torch.Tensor,
                  attention_mask: Optional[torch.Tensor], all_real: bool,
                  boundary: Optional[Dict[int, torch.Tensor]] = None) -> TransformerKVCache:
    """The cache of a prefill from its per-layer ``fresh`` keys and values of the whole canvas.

    Capacity T for "dual" and "block_causal" (so block writes are in place), exactly ``start``
    positions for "prefix". It records the canvas ids and mask (all True for ``attention_mask``
    None), which window forwards fall back to, the host flag ``all_real`` and ``boundary`` (see
    :class:`TransformerKVCache`).
    """
    T = input_ids.shape[1]
    if mode == "prefix":
        keys = [k[:, :, :start].contiguous() for k, _ in fresh]
        values = [v[:, :, :start].contiguous() for _, v in fresh]
        length = start
    else:
        keys, values = [k for k, _ in fresh], [v for _, v in fresh]
        length = T if mode == "dual" else start
    canvas_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    return TransformerKVCache(keys=keys, values=values, length=length, token_ids=input_ids.clone(),
                              attention_mask=canvas_mask.clone(), mode=mode, all_real=all_real,
                              boundary=dict(boundary or {}))


def cached_past(cache: KVCache, cached: int, rows: Union[None, torch.Tensor, RowReader] = None
                ) -> Callable[[int], Tuple[torch.Tensor, torch.Tensor]]:
    """Layer index -> that layer's cached keys and values ``[:, :, :cached]``, of the cache rows
    ``rows``: a long tensor (gathered), a :data:`RowReader`, or None (every row, no gather)."""
    if isinstance(rows, torch.Tensor):
        rows = gather_rows(rows)

    def past(i):
        k, v = cache.keys[i][:, :, :cached], cache.values[i][:, :, :cached]
        if rows is not None:
            k, v = rows(k), rows(v)
        return k, v

    return past


def write_blocks(caches: List[torch.Tensor], blocks: List[torch.Tensor], start: int) -> None:
    """For each pair, write ``block [B, H, W, D]`` into ``cache [B, H, T, D]`` at columns ``[start, start+W)``.

    The single place where caches are written: one fused ``kv_block_replace`` call for all layers.
    """
    kv_block_replace(caches, blocks, start)


def write_window(cache: KVCache, fresh: FreshKV, start: int, window_ids: torch.Tensor, mode: str,
                 last_hidden: Optional[torch.Tensor] = None) -> None:
    """Write a window forward's fresh keys and values and its ids into ``cache`` at ``start``;
    block-causal caches end with the window (``start + W``), and ``last_hidden [B, hidden]`` (the
    window's last final hidden state, shift models) becomes the boundary state of its last position;
    boundary states at or after ``start`` are dropped (those positions are rewritten)."""
    W = window_ids.shape[1]
    write_blocks(cache.keys + cache.values, [k for k, _ in fresh] + [v for _, v in fresh], start)
    cache.token_ids[:, start:start + W] = window_ids
    if mode == "block_causal":
        cache.length = start + W
        boundary = getattr(cache, "boundary", None)
        if boundary is not None:
            for position in [p for p in boundary if p >= start]:
                del boundary[position]
            if last_hidden is not None:
                boundary[start + W - 1] = last_hidden
