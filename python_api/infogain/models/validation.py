"""Argument checks of the transformer's forwards. They only check (and raise with the argument's
name); what the forward then builds from its arguments, it builds itself."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from infogain_kernels._validation import check_int, check_positive_int

from .base import KVCache

MODES = ("prefix", "dual", "block_causal")
# Window forwards also take "sub_block": a window inside the last block written to a block-causal
# cache, attending to the whole cache except its own columns (Fast-dLLM v2's sub-block cache).
WINDOW_MODES = MODES + ("sub_block",)


def check_mode(mode) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def check_ids(name: str, ids: torch.Tensor, vocab_size: int) -> None:
    """Token ids in ``[0, vocab_size)``: the one host synchronisation of a checked forward."""
    if ids.numel() and bool(((ids < 0) | (ids >= vocab_size)).any()):
        raise ValueError(f"{name} must lie in [0, {vocab_size})")


def check_canvas(input_ids, attention_mask, *, device: torch.device, vocab_size: int, check_values: bool) -> None:
    """The canvas ``input_ids [B, T]`` (long, on the model's ``device``) and its optional bool mask."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise ValueError(f"input_ids must be a 2-D long tensor [B, T], got {tuple(input_ids.shape)} {input_ids.dtype}")
    if input_ids.shape[1] < 1:
        raise ValueError("input_ids must have at least one position")
    if input_ids.device != device:
        raise ValueError(f"input_ids is on {input_ids.device} but the model is on {device}")
    if check_values:
        check_ids("input_ids", input_ids, vocab_size)
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.dtype != torch.bool:
            raise TypeError("attention_mask must be a bool tensor (True = real token)")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must have shape {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}")
        if attention_mask.device != input_ids.device:
            raise ValueError(f"attention_mask is on {attention_mask.device} but input_ids is on {input_ids.device}")


def check_keep(keep: Optional[slice], T: int) -> Tuple[int, int]:
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


def check_segments(T: int, gen_start, block_length) -> None:
    """A block-causal model's ``gen_start`` (in ``[0, T]``) and ``block_length`` (>= 1)."""
    if gen_start is None or block_length is None:
        raise ValueError("gen_start and block_length are required for a block-causal (SDAR) model")
    check_int("gen_start", gen_start, 0)
    check_positive_int("block_length", block_length)
    if gen_start > T:
        raise ValueError(f"gen_start must lie in [0, {T}], got {gen_start}")


def check_position_segments(block_length, default) -> int:
    """The block length of a model whose segments count from position 0 (LLaDA2): ``block_length``,
    else the model's own (``default``)."""
    if block_length is None:
        block_length = default
    return check_positive_int("block_length", block_length)


def check_block_aligned_rows(attention_mask: torch.Tensor, block_length: int) -> None:
    """For a block-causal cache of a model whose segments count from position 0: every row's first
    real token sits at a canvas column that is a multiple of ``block_length`` (left padding by whole
    blocks), so that segment boundaries are the same columns in every row and a cached block is
    final once it is decoded. Reads the mask back (one host synchronisation)."""
    first_real = attention_mask.long().argmax(dim=1)
    bad = (first_real % block_length != 0).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"the block-causal cache of a model whose blocks count from position 0 needs every "
                         f"row left-padded by a multiple of block_length={block_length}; rows {bad[:5]} are not "
                         "(build the canvas with infogain.samplers.prompts.build_block_aligned_canvas)")


def check_prefill_mode(mode, *, block_causal: bool, arch: str) -> None:
    """``mode`` is a cache mode, "block_causal" exactly for a block-causal model."""
    check_mode(mode)
    if mode == "block_causal" and not block_causal:
        raise ValueError(f"mode 'block_causal' needs a block-causal model; {arch} is bidirectional")
    if mode != "block_causal" and block_causal:
        raise ValueError(f"mode must be 'block_causal' for the block-causal model {arch}, got {mode!r}")


def check_prefill_start(start, T: int, mode: str, gen_start, block_length) -> None:
    """Where a prefill's cache ends: in ``[0, T]``; for "block_causal" a segment boundary (after
    checking ``gen_start`` and ``block_length``)."""
    check_int("start", start, 0)
    if start > T:
        raise ValueError(f"start must lie in [0, {T}], got {start}")
    if mode == "block_causal":
        check_segments(T, gen_start, block_length)
        # Segment boundaries (see attention.segment_ids), decided on the host.
        if start < gen_start or (start < T and (start - gen_start) % block_length != 0):
            raise ValueError(f"start={start} must be a block boundary at or after gen_start={gen_start}")


def check_window(window_ids, start, cache, mode, attention_mask, *, num_layers: int, vocab_size: int,
                 check_values: bool) -> None:
    """A window forward's ids ``[R, W]``, ``start``, ``cache`` (built for ``mode``) and optional
    canvas mask ``[B, T]``; ``cache_rows`` are checked by :func:`check_cache_rows`."""
    if mode not in WINDOW_MODES:
        raise ValueError(f"mode must be one of {WINDOW_MODES}, got {mode!r}")
    if not isinstance(cache, KVCache):
        raise TypeError(f"cache must be a KVCache, got {type(cache).__name__}")
    built_for = "block_causal" if mode == "sub_block" else mode
    if cache.mode is not None and cache.mode != built_for:
        raise ValueError(f"mode={mode!r} needs a cache built for mode {built_for!r}, got {cache.mode!r}")
    if len(cache.keys) != num_layers or len(cache.values) != num_layers:
        raise ValueError(f"cache must hold {num_layers} layers, got {len(cache.keys)}")
    if cache.token_ids is None:
        raise ValueError("cache has no token_ids; build it with prefill()")
    if not isinstance(window_ids, torch.Tensor):
        raise TypeError(f"window_ids must be a torch.Tensor, got {type(window_ids).__name__}")
    if window_ids.dim() != 2 or window_ids.dtype != torch.long or window_ids.shape[0] < 1 or window_ids.shape[1] < 1:
        raise ValueError(f"window_ids must be a non-empty 2-D long tensor [R, W], got {tuple(window_ids.shape)} {window_ids.dtype}")
    if window_ids.device != cache.keys[0].device:
        raise ValueError(f"window_ids is on {window_ids.device} but the cache is on {cache.keys[0].device}")
    if check_values:
        check_ids("window_ids", window_ids, vocab_size)
    W = window_ids.shape[1]
    B, T = cache.token_ids.shape
    check_int("start", start, 0)
    if mode == "prefix":
        if start != cache.length or start + W != T:
            raise ValueError(f"prefix mode: the window must be [cache.length={cache.length}, T={T}); "
                             f"got start={start}, W={W}")
    elif mode == "dual":
        if start + W > T:
            raise ValueError(f"dual mode: the window [start, start+W) = [{start}, {start + W}) must lie in [0, {T})")
    elif mode == "sub_block":
        if start + W > cache.length:
            raise ValueError(f"sub_block mode: the window [start, start+W) = [{start}, {start + W}) must lie in "
                             f"the cached [0, cache.length={cache.length})")
    else:
        # Usually start == cache.length; an earlier block start re-reads only the cache before it
        # (Fast-dLLM v2's sub-block cache rewrites the current block, which may be cached already).
        if start > cache.length or start + W > T:
            raise ValueError(f"block_causal mode: start must be at most cache.length={cache.length} and "
                             f"start+W <= T={T}; got start={start}, W={W}")
    if attention_mask is None:
        return
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dtype != torch.bool:
        raise TypeError("attention_mask must be a bool tensor [B, T]")
    if tuple(attention_mask.shape) != (B, T):
        raise ValueError(f"attention_mask must have the cache's canvas shape {(B, T)}, got {tuple(attention_mask.shape)}")


def check_cache_rows(cache_rows, R: int, B: int, write: bool) -> Optional[Tuple[int, ...]]:
    """The cache row of each of the R window rows, as host ints (None: row r reads cache row r,
    so R must be the cache's batch size B). A long tensor is read back here, once: its values are
    checked on the host, and the caller lays the rows out from the returned tuple."""
    if cache_rows is None:
        if R != B:
            raise ValueError(f"window_ids has {R} rows but the cache has {B}; pass cache_rows to map them")
        return None
    if isinstance(cache_rows, torch.Tensor):
        if cache_rows.dtype != torch.long:
            raise TypeError("cache_rows must be a long tensor [R] or a tuple of ints")
        if tuple(cache_rows.shape) != (R,):
            raise ValueError(f"cache_rows must have shape ({R},), got {tuple(cache_rows.shape)}")
        cache_rows = tuple(cache_rows.tolist())
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
    return cache_rows
