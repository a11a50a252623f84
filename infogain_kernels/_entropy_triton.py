"""Triton kernels of the entropy family: one split-vocabulary row pass for ``step_stats`` (and so
``token_stats`` / ``gumbel_sample``) and for ``lookahead_objective``'s entropy reduction.

Design (memory-bound by construction):

* **Row pass** (:func:`_row_pass_kernel`, grid ``[rows, splits]``). A program reads columns
  ``[split * split_len, (split + 1) * split_len)`` of one row in ``BLOCK``-wide chunks and keeps, in
  float32 whatever the logits dtype, the running maximum ``m``, ``z = sum exp(x - m)``,
  ``s = sum exp(x - m) (x - m)`` (rescaled whenever ``m`` rises), so ``H = log z - s / z``; with
  ``WITH_TOP`` per-lane top-1 value/column and top-2 value (element-wise work only, lanes merged
  once at the end); with ``TEMPERED`` also ``zt = sum exp((x - m) / T)``, sharing the running max.
  Constexpr flags drop what a caller does not need: the lookahead entropy is the pass without the
  top and tempered parts.
* **Split-K over the vocabulary.** When rows are fewer than a few times the SM count (8 x 32 block
  positions, EIS's 1-4 rows), one program per row leaves most SMs idle. Each row is then split over
  ``splits`` programs (chosen from the row count and the SM count, :func:`row_pass_config`) that
  write partial states ``(m, z, s, zt, top1, top1 column, top2)``; :func:`_combine_kernel`, one
  tiny program per row, rescales them to the row max and finishes. With ``splits == 1`` the row
  program finishes the row itself (no workspace, no second launch).
* **Draws** (:func:`_draw_kernel`, only when S > 0 and T > 0), by inverse CDF: draw s is the first
  column whose cumulative tempered weight exceeds ``u_s * Z``. The combine step stores each
  split's inclusive prefix of the tempered totals, so a split owns the targets in
  ``[prefix[k-1], prefix[k])`` and scans only its own range, starting from ``prefix[k-1]``. A split
  that owns no target reads nothing; one that owns targets stops after the chunk holding its last
  target. Per chunk: one exponential per logit and one ``tl.cumsum``; the S targets live in
  registers and are compared with the chunk's end in one S-lane vector compare, and only a chunk
  that holds a target locates it (a count of the cumulative weights <= target, S at most per row).
  So random work is O(rows * S * BLOCK) at most, independent of V, and the logits are read once at
  T = 0 or S = 0 (no draw pass) and at most twice otherwise. Sorting the uniforms is not needed:
  the chunk-ownership test is already a vector compare over all S targets.
* **Vector loads for every row layout.** The leading dimensions are collapsed on the host to at
  most three (size, stride) pairs and each program computes its row start from them (no loaded
  offsets), so slices such as ``next_logits[:, offset:h_end]`` keep 16-byte loads; when the host
  proved the base pointer and every row stride 16-byte aligned and the vocabulary stride is 1,
  ``tl.multiple_of`` tells the compiler so.
* Values that decide a ranking (top-1/top-2 probabilities, token probabilities, entropies) use IEEE
  division (``tl.math.div_rn``) so they do not depend on the GPU's approximate division.

A row's status is encoded in its entropy so that callers need a single check on the outputs: NaN
when the row contains a NaN, +inf when every entry of the row is -inf; other fields of such a row
are undefined (the draw kernel gives it tokens -1 and probabilities NaN). Rows that the mask skips
run zero-trip loops, so they issue no loads of the logits; they get the fill values (entropy 0,
probabilities 0, ids and tokens -1).

Only the launchers (:func:`launch_step_stats`, :func:`launch_row_stats`, :func:`launch_masked_mean`)
are used by the ops; they expect inputs already validated by the public functions.
:func:`aot_configs` lists the launcher configurations for the ahead-of-time compile lane.
"""
from __future__ import annotations

import functools
import math
from typing import Dict, Optional, Tuple

import torch
import triton
import triton.language as tl

from ._backend import device_guard

# exp() of any float32 below this is exactly 0, so shifts can be clamped here without changing
# any sum, which keeps 0 * -inf = NaN out of the products.
_EXP_UNDERFLOW = tl.constexpr(-200.0)
# Partial-state record of one (row, split) in the float32 workspace: m, z, s, zt, top1, top2.
_PART_FIELDS = tl.constexpr(8)

# SM count used when no device is at hand (ahead-of-time compilation, the interpreter): an H100 SXM.
AOT_SM_COUNT = 132
# Aim for this many programs per SM so that a wave tail stays small and loads overlap.
_PROGRAMS_PER_SM = 4
# A split covers at least this many chunks (fewer makes the combine work and workspace dominate).
_MIN_CHUNKS_PER_SPLIT = 2
_MAX_SPLITS = 64
_ROW_BLOCK = 4096
# Draw pass: narrower chunks keep the cumulative sums and the last-drawable lanes in registers.
_DRAW_BLOCK = 2048

# Tests force a configuration here (keys "block", "splits", "draw_block"); never set in production.
_FORCE_CONFIG: Dict[str, int] = {}


@triton.jit
def _row_start(row, size1, size2, stride0, stride1, stride2, ALIGN: tl.constexpr):
    """Element offset of row ``row`` of a tensor whose leading dims are (size0, size1, size2)."""
    i2 = row % size2
    rest = row // size2
    base = (rest // size1) * stride0 + (rest % size1) * stride1 + i2 * stride2
    if ALIGN > 1:
        base = tl.multiple_of(base, ALIGN)
    return base


@triton.jit
def _keep_row(keep_ptr, row, HAS_KEEP: tl.constexpr):
    if HAS_KEEP:
        return tl.load(keep_ptr + row) != 0
    return True


@triton.jit
def _this_program(logits_ptr, keep_ptr, size1, size2, stride0, stride1, stride2,
                  HAS_KEEP: tl.constexpr, ALIGN: tl.constexpr):
    """``(row, split, row_ptr, keep)`` of a program of a ``[rows, splits]`` grid."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + _row_start(row, size1, size2, stride0, stride1, stride2, ALIGN)
    return row, tl.program_id(1), row_ptr, _keep_row(keep_ptr, row, HAS_KEEP)


@triton.jit
def _load_chunk(row_ptr, cols, n_cols, stride_col, UNIT_STRIDE: tl.constexpr):
    if UNIT_STRIDE:
        ptrs = row_ptr + cols
    else:
        ptrs = row_ptr + cols.to(tl.int64) * stride_col
    return tl.load(ptrs, mask=cols < n_cols, other=-float("inf")).to(tl.float32)


@triton.jit
def _finish_row(row, keep, m, z, s, zt, best, best_col, runner_up,
                entropy_ptr, top1_prob_ptr, top1_id_ptr, top2_prob_ptr, state_ptr,
                WITH_TOP: tl.constexpr, TEMPERED: tl.constexpr):
    # z == 0 means every entry was -inf (or the row was skipped); z is NaN when the row held a NaN,
    # and NaN == 0 is False, so the NaN flows into the entropy.
    z_safe = tl.where(z == 0.0, 1.0, z)
    entropy = tl.where(z == 0.0, float("inf"), tl.log(z_safe) - tl.math.div_rn(s, z_safe))
    tl.store(entropy_ptr + row, tl.where(keep, entropy, 0.0))
    if WITH_TOP:
        m_ref = tl.where(m == -float("inf"), 0.0, m)
        top1_prob = tl.math.div_rn(tl.exp(best - m_ref), z_safe)
        top2_prob = tl.math.div_rn(tl.exp(runner_up - m_ref), z_safe)
        tl.store(top1_prob_ptr + row, tl.where(keep, top1_prob, 0.0))
        tl.store(top2_prob_ptr + row, tl.where(keep, top2_prob, 0.0))
        tl.store(top1_id_ptr + row, tl.where(keep, best_col.to(tl.int64), -1))
    if TEMPERED:
        # What the draw pass needs: the row max, both normalisers.
        tl.store(state_ptr + row * 3, m)
        tl.store(state_ptr + row * 3 + 1, z)
        tl.store(state_ptr + row * 3 + 2, zt)


@triton.jit
def _row_pass_kernel(
    logits_ptr, keep_ptr,
    entropy_ptr, top1_prob_ptr, top1_id_ptr, top2_prob_ptr,
    state_ptr, bounds_ptr, part_ptr, part_col_ptr,
    n_cols, split_len, n_splits,
    size1, size2, stride0, stride1, stride2, stride_col,
    inv_temperature,
    HAS_KEEP: tl.constexpr, WITH_TOP: tl.constexpr, TEMPERED: tl.constexpr, SPLIT: tl.constexpr,
    UNIT_STRIDE: tl.constexpr, ALIGN: tl.constexpr, BLOCK: tl.constexpr,
):
    row, split, row_ptr, keep = _this_program(logits_ptr, keep_ptr, size1, size2, stride0, stride1, stride2,
                                              HAS_KEEP, ALIGN)
    first = split * split_len
    # A skipped row gets an empty loop instead of an early return: no logits are loaded for it.
    stop = tl.where(keep, tl.minimum(first + split_len, n_cols), first)

    lanes = tl.arange(0, BLOCK)
    m = -float("inf")
    z = 0.0
    s = 0.0
    zt = 0.0
    # Per-lane top-2 tracking needs only element-wise work inside the loop; lanes are merged once
    # at the end. A strict ">" keeps the lowest column among equal maxima, as columns only grow.
    lane_top1 = tl.full([BLOCK], -float("inf"), tl.float32)
    lane_top1_col = tl.zeros([BLOCK], tl.int32)
    lane_top2 = tl.full([BLOCK], -float("inf"), tl.float32)
    for start in range(first, stop, BLOCK):
        cols = start + lanes
        x = _load_chunk(row_ptr, cols, n_cols, stride_col, UNIT_STRIDE)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        # While every value seen is -inf, shift by 0 so that no -inf - -inf = NaN appears.
        m_ref = tl.where(m_new == -float("inf"), 0.0, m_new)
        shifted = x - m_ref
        e = tl.exp(shifted)
        # exp(-inf) = 0 but 0 * -inf = NaN. Any shift below _EXP_UNDERFLOW already has exp() == 0 in
        # float32, so clamping it there leaves every product unchanged and keeps -inf out of them.
        # (A NaN logit still reaches z through e, which is what flags the row.)
        e_shifted = e * tl.maximum(shifted, _EXP_UNDERFLOW)
        alpha = tl.exp(m - m_ref)
        # Moving the shift from m to m_ref turns sum e*(x - m) into alpha * (s + (m - m_ref) * z).
        s = alpha * (s + tl.maximum(m - m_ref, _EXP_UNDERFLOW) * z) + tl.sum(e_shifted, axis=0)
        z = z * alpha + tl.sum(e, axis=0)
        if TEMPERED:
            zt = zt * tl.exp((m - m_ref) * inv_temperature) + tl.sum(tl.exp(shifted * inv_temperature), axis=0)
        m = m_new
        if WITH_TOP:
            above_top1 = x > lane_top1
            lane_top2 = tl.where(above_top1, lane_top1, tl.maximum(lane_top2, x))
            lane_top1_col = tl.where(above_top1, cols, lane_top1_col)
            lane_top1 = tl.where(above_top1, x, lane_top1)

    best = -float("inf")
    best_col = 0
    runner_up = -float("inf")
    if WITH_TOP:
        best = tl.max(lane_top1, axis=0)
        best_col = tl.min(tl.where(lane_top1 == best, lane_top1_col, n_cols), axis=0)
        is_best_lane = (lane_top1 == best) & (lane_top1_col == best_col)
        runner_up = tl.maximum(tl.max(lane_top2, axis=0),
                               tl.max(tl.where(is_best_lane, -float("inf"), lane_top1), axis=0))
    if SPLIT:
        part = (row * n_splits + split) * _PART_FIELDS
        tl.store(part_ptr + part, m)
        tl.store(part_ptr + part + 1, z)
        tl.store(part_ptr + part + 2, s)
        tl.store(part_ptr + part + 3, zt)
        tl.store(part_ptr + part + 4, best)
        tl.store(part_ptr + part + 5, runner_up)
        tl.store(part_col_ptr + row * n_splits + split, best_col)
    else:
        _finish_row(row, keep, m, z, s, zt, best, best_col, runner_up,
                    entropy_ptr, top1_prob_ptr, top1_id_ptr, top2_prob_ptr, state_ptr, WITH_TOP, TEMPERED)
        if TEMPERED:
            tl.store(bounds_ptr + row, float("inf"))  # the one split owns every target


@triton.jit
def _combine_kernel(
    keep_ptr, part_ptr, part_col_ptr,
    entropy_ptr, top1_prob_ptr, top1_id_ptr, top2_prob_ptr, state_ptr, bounds_ptr,
    n_cols, n_splits, inv_temperature,
    HAS_KEEP: tl.constexpr, WITH_TOP: tl.constexpr, TEMPERED: tl.constexpr, BLOCK_SPLIT: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    keep = _keep_row(keep_ptr, row, HAS_KEEP)
    k = tl.arange(0, BLOCK_SPLIT)
    valid = k < n_splits
    part = (row * n_splits + k) * _PART_FIELDS
    m_k = tl.load(part_ptr + part, mask=valid, other=-float("inf"))
    z_k = tl.load(part_ptr + part + 1, mask=valid, other=0.0)
    s_k = tl.load(part_ptr + part + 2, mask=valid, other=0.0)
    m = tl.max(m_k, axis=0)
    m_ref = tl.where(m == -float("inf"), 0.0, m)
    # Each split's sums are relative to its own max m_k: rescale them to the row max (as the row
    # pass does between chunks; a split that saw only -inf has z_k = s_k = 0 and scale 0).
    scale = tl.exp(m_k - m_ref)
    z = tl.sum(z_k * scale, axis=0)
    s = tl.sum(scale * (s_k + tl.maximum(m_k - m_ref, _EXP_UNDERFLOW) * z_k), axis=0)

    best = -float("inf")
    best_col = 0
    runner_up = -float("inf")
    if WITH_TOP:
        best_k = tl.load(part_ptr + part + 4, mask=valid, other=-float("inf"))
        runner_up_k = tl.load(part_ptr + part + 5, mask=valid, other=-float("inf"))
        col_k = tl.load(part_col_ptr + row * n_splits + k, mask=valid, other=n_cols)
        best = tl.max(best_k, axis=0)
        best_col = tl.min(tl.where(best_k == best, col_k, n_cols), axis=0)
        is_best_split = (best_k == best) & (col_k == best_col)
        runner_up = tl.maximum(tl.max(runner_up_k, axis=0),
                               tl.max(tl.where(is_best_split, -float("inf"), best_k), axis=0))
    zt = 0.0
    if TEMPERED:
        weight_k = tl.load(part_ptr + part + 3, mask=valid, other=0.0) * tl.exp((m_k - m_ref) * inv_temperature)
        upto = tl.cumsum(weight_k, axis=0)
        zt = tl.max(upto, axis=0)  # the last prefix: weights are >= 0
        # Split k owns the targets in [upto[k-1], upto[k]); the last split with weight also owns
        # whatever rounding leaves above its prefix, so the splits partition [0, inf).
        last_with_weight = tl.max(tl.where(weight_k > 0, k, -1), axis=0)
        tl.store(bounds_ptr + row * n_splits + k, tl.where(k == last_with_weight, float("inf"), upto), mask=valid)
    _finish_row(row, keep, m, z, s, zt, best, best_col, runner_up,
                entropy_ptr, top1_prob_ptr, top1_id_ptr, top2_prob_ptr, state_ptr, WITH_TOP, TEMPERED)


@triton.jit
def _store_draw(row_ptr, stride_col, out, token, m, z, tokens_ptr, probs_ptr):
    # The drawn logit is re-read (one cached load) rather than gathered from the chunk's registers.
    x = tl.load(row_ptr + token.to(tl.int64) * stride_col).to(tl.float32)
    tl.store(tokens_ptr + out, token.to(tl.int64))
    tl.store(probs_ptr + out, tl.math.div_rn(tl.exp(x - m), z))


@triton.jit
def _draw_kernel(
    logits_ptr, keep_ptr, state_ptr, bounds_ptr, uniforms_ptr, top1_id_ptr, tokens_ptr, probs_ptr,
    n_cols, split_len, n_splits, n_samples,
    size1, size2, stride0, stride1, stride2, stride_col,
    inv_temperature,
    HAS_KEEP: tl.constexpr, UNIT_STRIDE: tl.constexpr, ALIGN: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_S: tl.constexpr,
):
    row, split, row_ptr, keep = _this_program(logits_ptr, keep_ptr, size1, size2, stride0, stride1, stride2,
                                              HAS_KEEP, ALIGN)
    m = tl.load(state_ptr + row * 3)
    z = tl.load(state_ptr + row * 3 + 1)
    total = tl.load(state_ptr + row * 3 + 2)
    # z is NaN for a row with NaN and 0 for an all -inf row; neither gets draws.
    good = keep & (z > 0.0) & (z < float("inf"))

    # The targets this split owns: [lo, hi) of the cumulative tempered weight.
    bounds = bounds_ptr + row * n_splits + split
    lo = tl.load(bounds - 1, mask=split > 0, other=0.0)
    hi = tl.load(bounds)
    samples = tl.arange(0, BLOCK_S)
    in_range = samples < n_samples
    u_row = uniforms_ptr + row * n_samples
    target = tl.load(u_row + samples, mask=in_range, other=0.0) * total
    owned = in_range & (target >= lo) & (target < hi) & good
    last_target = tl.max(tl.where(owned, target, -1.0), axis=0)
    out_row = row * n_samples

    first = split * split_len
    stop = tl.minimum(first + split_len, n_cols)
    lanes = tl.arange(0, BLOCK)
    lane_last = tl.full([BLOCK], -1, tl.int32)
    start = first
    running = lo
    # Stop after the chunk that holds the last owned target (a split owning none reads nothing).
    while (start < stop) & (running <= last_target):
        cols = start + lanes
        x = _load_chunk(row_ptr, cols, n_cols, stride_col, UNIT_STRIDE)
        w = tl.exp((x - m) * inv_temperature)
        upto = running + tl.cumsum(w, axis=0)
        end = tl.max(upto, axis=0)  # the last cumulative weight (they never decrease)
        hit = owned & (target >= running) & (target < end)
        if tl.max(hit.to(tl.int32), axis=0) > 0:
            for sample in range(n_samples):
                t = tl.load(u_row + sample) * total
                if (t >= lo) & (t < hi) & (t >= running) & (t < end):
                    # The first column whose cumulative weight exceeds t.
                    token = start + tl.sum((upto <= t).to(tl.int32), axis=0)
                    _store_draw(row_ptr, stride_col, out_row + sample, token, m, z, tokens_ptr, probs_ptr)
        lane_last = tl.where(w > 0.0, cols, lane_last)
        running = end
        start += BLOCK

    # Targets that rounding left above the split's final sum: the last column with weight.
    leftover = owned & (target >= running)
    if tl.max(leftover.to(tl.int32), axis=0) > 0:
        fallback = tl.max(lane_last, axis=0)
        if fallback < 0:
            fallback = tl.load(top1_id_ptr + row).to(tl.int32)
        for sample in range(n_samples):
            t = tl.load(u_row + sample) * total
            if (t >= lo) & (t < hi) & (t >= running):
                _store_draw(row_ptr, stride_col, out_row + sample, fallback, m, z, tokens_ptr, probs_ptr)
    # Rows without draws: split 0 writes their fill values (-1, and NaN for a read bad row).
    fill = in_range & ((split == 0) & (good == 0))
    fill = fill != 0
    tl.store(tokens_ptr + out_row + samples, tl.full([BLOCK_S], -1, tl.int64), mask=fill)
    tl.store(probs_ptr + out_row + samples, tl.full([BLOCK_S], 0.0, tl.float32) + tl.where(keep, float("nan"), 0.0),
             mask=fill)


@triton.jit
def _masked_mean_objective_kernel(
    entropy_ptr,
    keep_ptr,
    cost_ptr,
    objective_ptr,
    mean_ptr,
    n_positions,
    HAS_COST: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    positions = tl.arange(0, BLOCK_L)
    in_row = positions < n_positions
    entropy = tl.load(entropy_ptr + row * n_positions + positions, mask=in_row, other=0.0)
    keep = tl.load(keep_ptr + row * n_positions + positions, mask=in_row, other=0) != 0
    count = tl.sum(keep.to(tl.float32), axis=0)
    # Skipped positions hold entropy 0, so the plain sum is the sum over kept positions.
    mean = tl.sum(tl.where(keep, entropy, 0.0), axis=0) / tl.maximum(count, 1.0)
    objective = -mean
    if HAS_COST:
        objective = objective - tl.load(cost_ptr + row)
    tl.store(mean_ptr + row, mean)
    tl.store(objective_ptr + row, objective)


# ---- configuration (shared by the launchers and aot_configs) ------------------------------------

@functools.lru_cache(maxsize=None)
def _sm_count_of(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (cached); :data:`AOT_SM_COUNT` off CUDA."""
    if device.type != "cuda":
        return AOT_SM_COUNT
    return _sm_count_of(device.index if device.index is not None else torch.cuda.current_device())


def _num_warps(block: int) -> int:
    return 4 if block <= 1024 else 8


def row_pass_config(n_rows: int, n_cols: int, sms: int) -> Dict[str, int]:
    """Chunk width, warps and vocabulary split of the row pass for ``n_rows`` rows of ``n_cols``.

    4096 columns over 8 warps is 16 values per thread per chunk: two 16-byte loads of bf16, and with
    the three per-lane top-2 arrays still inside 128 registers. Rows are split when they are fewer
    than ``_PROGRAMS_PER_SM`` programs per SM, into as many splits as bring the grid there, each
    covering at least ``_MIN_CHUNKS_PER_SPLIT`` chunks.
    """
    block = _FORCE_CONFIG.get("block") or min(triton.next_power_of_2(max(n_cols, 1)), _ROW_BLOCK)
    n_chunks = triton.cdiv(n_cols, block)
    wanted = triton.cdiv(_PROGRAMS_PER_SM * sms, max(n_rows, 1))
    splits = _FORCE_CONFIG.get("splits") or max(1, min(wanted, n_chunks // _MIN_CHUNKS_PER_SPLIT, _MAX_SPLITS))
    split_len = triton.cdiv(n_chunks, min(splits, n_chunks)) * block
    return {"block": block, "num_warps": _num_warps(block), "splits": triton.cdiv(n_cols, split_len),
            "split_len": split_len}


def draw_config(n_samples: int, row_block: int) -> Dict[str, int]:
    """Chunk width, warps and sample lanes of the draw pass. The width divides the row pass's
    ``row_block`` (both powers of two), so chunks never cross a split's end."""
    block = min(_FORCE_CONFIG.get("draw_block") or _DRAW_BLOCK, row_block)
    return {"block": block, "num_warps": _num_warps(block), "block_s": triton.next_power_of_2(max(n_samples, 1))}


def _row_geometry(logits: torch.Tensor):
    """``(size1, size2, stride0, stride1, stride2)`` of ``logits``' leading dims collapsed to three, or
    None when more than three non-collapsible dims remain."""
    dims = []  # (size, stride), outermost first, size-1 dims dropped, mergeable neighbours merged
    for size, stride in zip(logits.shape[:-1], logits.stride()[:-1]):
        if size == 1:
            continue
        if dims and dims[-1][1] == size * stride:
            dims[-1] = (dims[-1][0] * size, stride)
        else:
            dims.append((size, stride))
    if len(dims) > 3:
        return None
    dims = [(1, 0)] * (3 - len(dims)) + dims
    return dims[1][0], dims[2][0], dims[0][1], dims[1][1], dims[2][1]


def _alignment(logits: torch.Tensor, geometry) -> int:
    """Elements per 16 bytes when every row start is provably 16-byte aligned (unit vocab stride), else 1."""
    vector = 16 // logits.element_size()
    if logits.stride(-1) != 1 or logits.data_ptr() % 16:
        return 1
    if any(stride % vector for stride in geometry[2:]):
        return 1
    return vector


def _launch_row_pass(logits, keep, *, with_top: bool, inv_temperature: Optional[float]):
    """Run the row pass (and the combine when split). Returns the flat outputs and the draw pass's
    inputs: ``(entropy, top1_prob, top1_id, top2_prob, state, bounds, geometry, cfg)``."""
    n_cols = logits.shape[-1]
    n_rows = logits.numel() // n_cols
    device = logits.device
    tempered = inv_temperature is not None
    entropy = torch.empty(n_rows, dtype=torch.float32, device=device)
    top1_prob = top1_id = top2_prob = None
    if with_top:
        top1_prob = torch.empty(n_rows, dtype=torch.float32, device=device)
        top1_id = torch.empty(n_rows, dtype=torch.int64, device=device)
        top2_prob = torch.empty(n_rows, dtype=torch.float32, device=device)
    geometry = _row_geometry(logits)
    if geometry is None:  # more than three non-collapsible leading dims: rare, so one copy is fine
        logits = logits.reshape(n_rows, n_cols)
        geometry = _row_geometry(logits)
    cfg = row_pass_config(n_rows, n_cols, sm_count(device))
    splits = cfg["splits"]
    state = torch.empty((n_rows, 3), dtype=torch.float32, device=device) if tempered else entropy
    bounds = torch.empty((n_rows, splits), dtype=torch.float32, device=device) if tempered else entropy
    result = (entropy, top1_prob, top1_id, top2_prob, state, bounds, logits, geometry, cfg)
    if n_rows == 0:
        return result
    keep_flat = keep.reshape(-1).contiguous().view(torch.uint8) if keep is not None else entropy
    split = splits > 1
    part = torch.empty(n_rows * splits * 8, dtype=torch.float32, device=device) if split else entropy
    part_col = torch.empty(n_rows * splits, dtype=torch.int32, device=device) if split else entropy
    outputs = (entropy, top1_prob if with_top else entropy, top1_id if with_top else entropy,
               top2_prob if with_top else entropy)
    flags = dict(HAS_KEEP=keep is not None, WITH_TOP=with_top, TEMPERED=tempered)
    with device_guard(logits):
        _row_pass_kernel[(n_rows, splits)](
            logits, keep_flat, *outputs, state, bounds, part, part_col,
            n_cols, cfg["split_len"], splits, *geometry, logits.stride(-1), inv_temperature or 0.0,
            SPLIT=split, UNIT_STRIDE=logits.stride(-1) == 1, ALIGN=_alignment(logits, geometry), BLOCK=cfg["block"],
            num_warps=cfg["num_warps"], **flags)
        if split:
            _combine_kernel[(n_rows,)](
                keep_flat, part, part_col, *outputs, state, bounds, n_cols, splits, inv_temperature or 0.0,
                BLOCK_SPLIT=triton.next_power_of_2(splits), num_warps=1, **flags)
    return result


def launch_row_stats(logits: torch.Tensor, keep: Optional[torch.Tensor], *, with_top: bool):
    """Row pass over ``logits`` [..., V] (any strides, fp32/bf16/fp16); ``keep``: bool with shape
    ``logits.shape[:-1]`` or None. Returns flat float32 ``entropy`` [rows] and, when ``with_top``,
    float32 ``top1_prob``, int64 ``top1_id``, float32 ``top2_prob`` [rows] (else None)."""
    return _launch_row_pass(logits, keep, with_top=with_top, inv_temperature=None)[:4]


def _inverse_temperature(temperature: float) -> float:
    # Clamped to the float32 range: 1/T overflowing to inf would turn 0 * inf into NaN.
    return min(1.0 / temperature, 3.0e38)


def launch_step_stats(logits: torch.Tensor, keep: Optional[torch.Tensor], uniforms: Optional[torch.Tensor],
                      temperature: float):
    """The op of :func:`infogain_kernels.step_stats` on Triton; returns the six flat outputs
    (``[rows]`` statistics, ``[rows, S]`` draws)."""
    n_samples = uniforms.shape[-1] if uniforms is not None else 0
    sampling = n_samples > 0 and temperature > 0
    inv_temperature = _inverse_temperature(temperature) if sampling else None
    (entropy, top1_prob, top1_id, top2_prob, state, bounds, logits, geometry,
     cfg) = _launch_row_pass(logits, keep, with_top=True, inv_temperature=inv_temperature)
    n_rows = entropy.shape[0]
    if not sampling:
        # T = 0: every draw is the arg-max (no random numbers were drawn).
        return (entropy, top1_prob, top1_id, top2_prob, top1_id[:, None].repeat(1, n_samples),
                top1_prob[:, None].repeat(1, n_samples))
    tokens = torch.empty((n_rows, n_samples), dtype=torch.int64, device=logits.device)
    token_probs = torch.empty((n_rows, n_samples), dtype=torch.float32, device=logits.device)
    if n_rows == 0:
        return entropy, top1_prob, top1_id, top2_prob, tokens, token_probs
    draw = draw_config(n_samples, cfg["block"])
    keep_flat = keep.reshape(-1).contiguous().view(torch.uint8) if keep is not None else entropy
    with device_guard(logits):
        _draw_kernel[(n_rows, cfg["splits"])](
            logits, keep_flat, state, bounds, uniforms.contiguous(), top1_id, tokens, token_probs,
            logits.shape[-1], cfg["split_len"], cfg["splits"], n_samples, *geometry, logits.stride(-1),
            inv_temperature, HAS_KEEP=keep is not None, UNIT_STRIDE=logits.stride(-1) == 1,
            ALIGN=_alignment(logits, geometry), BLOCK=draw["block"], BLOCK_S=draw["block_s"],
            num_warps=draw["num_warps"])
    return entropy, top1_prob, top1_id, top2_prob, tokens, token_probs


def launch_masked_mean(entropy: torch.Tensor, keep: torch.Tensor, cost: Optional[torch.Tensor]):
    """Per row r of ``entropy`` [R, L] float32: mean over ``keep[r]`` (0 when none) and
    ``objective = -cost[r] - mean`` (``-mean`` when ``cost`` is None). Returns (objective, mean) [R]."""
    n_rows, n_positions = entropy.shape
    objective = torch.empty(n_rows, dtype=torch.float32, device=entropy.device)
    mean = torch.empty(n_rows, dtype=torch.float32, device=entropy.device)
    if n_rows == 0:
        return objective, mean
    with device_guard(entropy):
        _masked_mean_objective_kernel[(n_rows,)](
            entropy.contiguous(),
            keep.contiguous().view(torch.uint8),
            cost.contiguous() if cost is not None else entropy,
            objective,
            mean,
            n_positions,
            HAS_COST=cost is not None,
            BLOCK_L=triton.next_power_of_2(max(n_positions, 1)),
        )
    return objective, mean


# ---- ahead-of-time compile lane --------------------------------------------------------------

_TRITON_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# (name, rows, V): LLaDA and Dream/SDAR vocabularies at the sampler's row counts (8 x 32 and 8 x 256
# block positions, 64 x 32 lookahead rows) and EIS's single row.
_AOT_SHAPES = [(f"{model} rows={rows}", rows, vocab)
               for model, vocab in (("llada", 126464), ("dream", 151936), ("sdar", 152064))
               for rows in (1, 256, 2048)]


def _specialised(kernel, args: Dict[str, object]) -> Tuple[Dict[str, str], Dict[str, object]]:
    """``(signature, constexprs)`` of a launch of ``kernel`` with ``args`` (every parameter by name), as
    Triton's JIT specialises it: pointers (type strings) 16-byte aligned, ints equal to 1 constant and
    ints divisible by 16 marked so, ``tl.constexpr`` parameters as given."""
    constexpr_params = {p.name for p in kernel.params if p.is_constexpr}
    signature, constexprs = {}, {}
    for param in (p.name for p in kernel.params):
        value = args[param]
        if param in constexpr_params or (isinstance(value, int) and value == 1):
            signature[param], constexprs[param] = "constexpr", value
        elif isinstance(value, str):
            signature[param] = value + ":16"
        elif isinstance(value, float):
            signature[param] = "fp32"
        else:
            signature[param] = ("i32" if -2 ** 31 <= value < 2 ** 31 else "i64") + (":16" if value % 16 == 0 else "")
    return signature, constexprs


def aot_configs():
    """Every launcher configuration of this module's kernels at LLaDA / Dream / SDAR shapes, for the
    ahead-of-time compile lane (format: see the lane). Produced by :func:`row_pass_config` and
    :func:`draw_config`, the functions the launchers use, with an SM count of :data:`AOT_SM_COUNT`,
    for contiguous ``[rows, V]`` logits (row stride V) with a mask."""
    configs, seen = [], set()

    def add(name, kernel, args, num_warps, elements=None):
        signature, constexprs = _specialised(kernel, args)
        key = (kernel.fn.__name__, tuple(sorted(signature.items())), tuple(sorted(constexprs.items())), num_warps)
        if key not in seen:
            seen.add(key)
            config = dict(name=name, kernel=kernel, signature=signature, constexprs=constexprs,
                          num_warps=num_warps, num_stages=3)
            if elements:
                config["elements_per_iteration"] = elements
            configs.append(config)

    for torch_dtype, dtype in _TRITON_DTYPES.items():
        vector = 16 // torch.tensor([], dtype=torch_dtype).element_size()
        for shape, rows, vocab in _AOT_SHAPES:
            cfg = row_pass_config(rows, vocab, AOT_SM_COUNT)
            splits = cfg["splits"]
            geometry = dict(n_cols=vocab, split_len=cfg["split_len"], n_splits=splits, size1=1, size2=rows,
                            stride0=0, stride1=0, stride2=vocab, stride_col=1, inv_temperature=1.0)
            for what, with_top, tempered in (("step_stats", True, True), ("token_stats", True, False),
                                             ("lookahead entropy", False, False)):
                flags = dict(HAS_KEEP=True, WITH_TOP=with_top, TEMPERED=tempered)
                add(f"row_pass {what} {dtype} V={vocab} {shape} splits={splits}", _row_pass_kernel,
                    dict(logits_ptr=f"*{dtype}", keep_ptr="*u8", entropy_ptr="*fp32", top1_prob_ptr="*fp32",
                         top1_id_ptr="*i64", top2_prob_ptr="*fp32", state_ptr="*fp32", bounds_ptr="*fp32",
                         part_ptr="*fp32", part_col_ptr="*i32", **geometry, **flags, SPLIT=splits > 1,
                         UNIT_STRIDE=True, ALIGN=vector, BLOCK=cfg["block"]),
                    cfg["num_warps"], cfg["block"])
                if splits > 1:
                    add(f"combine {what} splits={splits}", _combine_kernel,
                        dict(keep_ptr="*u8", part_ptr="*fp32", part_col_ptr="*i32", entropy_ptr="*fp32",
                             top1_prob_ptr="*fp32", top1_id_ptr="*i64", top2_prob_ptr="*fp32", state_ptr="*fp32",
                             bounds_ptr="*fp32", n_cols=vocab, n_splits=splits, inv_temperature=1.0, **flags,
                             BLOCK_SPLIT=triton.next_power_of_2(splits)), 1)
            for samples in (8, 16):
                draw = draw_config(samples, cfg["block"])
                add(f"draw {dtype} V={vocab} {shape} S={samples} splits={splits}", _draw_kernel,
                    dict(logits_ptr=f"*{dtype}", keep_ptr="*u8", state_ptr="*fp32", bounds_ptr="*fp32",
                         uniforms_ptr="*fp32", top1_id_ptr="*i64", tokens_ptr="*i64", probs_ptr="*fp32",
                         n_samples=samples, **geometry, HAS_KEEP=True, UNIT_STRIDE=True, ALIGN=vector,
                         BLOCK=draw["block"], BLOCK_S=draw["block_s"]),
                    draw["num_warps"], draw["block"])
    for n_positions in (32, 256):
        add(f"masked_mean L={n_positions}", _masked_mean_objective_kernel,
            dict(entropy_ptr="*fp32", keep_ptr="*u8", cost_ptr="*fp32", objective_ptr="*fp32", mean_ptr="*fp32",
                 n_positions=n_positions, HAS_COST=True, BLOCK_L=n_positions), 4)
    return configs
