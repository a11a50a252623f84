"""Triton kernels of the entropy family: one split-vocabulary row pass for ``step_stats`` (and so
``token_stats`` / ``gumbel_sample``) and for ``lookahead_objective``'s entropy reduction, its combine
step, and the inverse-CDF draw kernel. The row pass keeps per lane, in float32, the running maximum
``m``, ``z = sum exp(x - m)`` and ``s = sum exp(x - m) (x - m)`` (``H = log z - s / z``), with
constexpr flags for the top-2 and the tempered chunk sums; rows split across programs when they are
few; draws re-read only the chunk that holds them. Design notes: docs/kernels.md, "Entropy family".

A row's status is encoded in its entropy (NaN or +inf for a bad row), so callers need a single check
on the outputs. Only the launchers (:func:`launch_step_stats`, :func:`launch_row_stats`) are called
from outside; this module is imported only where Triton runs. (Just over 500 lines, one job: the
row pass, its combine and the draw share the state record and split geometry defined here.)
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import triton
import triton.language as tl

from ._backend import cuda_sm_count, device_guard

# exp() of any float32 below this is exactly 0, so shifts can be clamped here without changing
# any sum, which keeps 0 * -inf = NaN out of the products.
_EXP_UNDERFLOW = tl.constexpr(-200.0)
_LOG2E = tl.constexpr(1.4426950408889634)
# Partial-state record of one (row, split) in the float32 workspace: m, z, s, top1, top2.
_PART_FIELDS = tl.constexpr(5)

# SM count used when no device is at hand (ahead-of-time compilation, the interpreter): an H100 SXM.
AOT_SM_COUNT = 132
# Aim for this many programs per SM so that a wave tail stays small and loads overlap.
_PROGRAMS_PER_SM = 4
# A split covers at least this many chunks (fewer makes the combine work and workspace dominate).
_MIN_CHUNKS_PER_SPLIT = 2
_MAX_SPLITS = 64
_ROW_BLOCK = 4096
# Chunks in flight per row-pass program: the loop's loads become 16-byte cp.async copies into shared
# memory (8 KB per bf16 chunk and stage), so the next chunks stream in while one is reduced.
_ROW_STAGES = 3

# Tests (and A/B runs) force a configuration here (keys "block", "splits", "stages"); never set in production.
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
def _finish_row(row, keep, m, z, s, best, best_col, runner_up,
                entropy_ptr, top1_prob_ptr, top1_id_ptr, top2_prob_ptr, WITH_TOP: tl.constexpr):
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


@triton.jit
def _row_pass_kernel(
    logits_ptr, keep_ptr,
    entropy_ptr, top1_prob_ptr, top1_id_ptr, top2_prob_ptr,
    part_ptr, part_col_ptr, chunk_ptr,
    n_cols, split_len, n_splits, n_chunks,
    size1, size2, stride0, stride1, stride2, stride_col,
    inv_temperature,
    HAS_KEEP: tl.constexpr, WITH_TOP: tl.constexpr, TEMPERED: tl.constexpr, SPLIT: tl.constexpr,
    UNIT_STRIDE: tl.constexpr, ALIGN: tl.constexpr, BLOCK: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    row, split, row_ptr, keep = _this_program(logits_ptr, keep_ptr, size1, size2, stride0, stride1, stride2,
                                              HAS_KEEP, ALIGN)
    first = split * split_len
    # A skipped row gets an empty loop instead of an early return: no logits are loaded for it.
    stop = tl.where(keep, tl.minimum(first + split_len, n_cols), first)

    lanes = tl.arange(0, BLOCK)
    tempered_log2 = inv_temperature * _LOG2E
    m = -float("inf")
    z = 0.0
    s = 0.0
    # Per-lane top-2 tracking needs only element-wise work inside the loop; lanes are merged once
    # at the end. A strict ">" keeps the lowest column among equal maxima, as columns only grow.
    lane_top1 = tl.full([BLOCK], -float("inf"), tl.float32)
    lane_top1_col = tl.zeros([BLOCK], tl.int32)
    lane_top2 = tl.full([BLOCK], -float("inf"), tl.float32)
    for start in tl.range(first, stop, BLOCK, num_stages=NUM_STAGES):
        cols = start + lanes
        x = _load_chunk(row_ptr, cols, n_cols, stride_col, UNIT_STRIDE)
        chunk_max = tl.max(x, axis=0)
        m_new = tl.maximum(m, chunk_max)
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
        m = m_new
        if TEMPERED:
            # The chunk's tempered weight relative to its own max (rescaled to the row max later).
            # exp((x - ref) / T) as exp2(x * c - ref * c), c = log2(e) / T: one FMA and one MUFU.EX2 per logit.
            chunk_ref = tl.where(chunk_max == -float("inf"), 0.0, chunk_max) * tempered_log2
            chunk_weight = tl.sum(tl.exp2(x * tempered_log2 - chunk_ref), axis=0)
            chunk = (row * n_chunks + start // BLOCK) * 2
            tl.store(chunk_ptr + chunk, chunk_max)
            tl.store(chunk_ptr + chunk + 1, chunk_weight)
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
        tl.store(part_ptr + part + 3, best)
        tl.store(part_ptr + part + 4, runner_up)
        tl.store(part_col_ptr + row * n_splits + split, best_col)
    else:
        _finish_row(row, keep, m, z, s, best, best_col, runner_up,
                    entropy_ptr, top1_prob_ptr, top1_id_ptr, top2_prob_ptr, WITH_TOP)


@triton.jit
def _combine_kernel(
    keep_ptr, part_ptr, part_col_ptr, chunk_ptr, uniforms_ptr,
    entropy_ptr, top1_prob_ptr, top1_id_ptr, top2_prob_ptr, state_ptr, target_chunk_ptr, target_rest_ptr,
    n_cols, n_splits, n_chunks, n_samples, inv_temperature,
    HAS_KEEP: tl.constexpr, WITH_TOP: tl.constexpr, TEMPERED: tl.constexpr,
    BLOCK_SPLIT: tl.constexpr, BLOCK_CHUNKS: tl.constexpr, BLOCK_S: tl.constexpr,
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
        best_k = tl.load(part_ptr + part + 3, mask=valid, other=-float("inf"))
        runner_up_k = tl.load(part_ptr + part + 4, mask=valid, other=-float("inf"))
        col_k = tl.load(part_col_ptr + row * n_splits + k, mask=valid, other=n_cols)
        best = tl.max(best_k, axis=0)
        best_col = tl.min(tl.where(best_k == best, col_k, n_cols), axis=0)
        is_best_split = (best_k == best) & (col_k == best_col)
        runner_up = tl.maximum(tl.max(runner_up_k, axis=0),
                               tl.max(tl.where(is_best_split, -float("inf"), best_k), axis=0))
    _finish_row(row, keep, m, z, s, best, best_col, runner_up,
                entropy_ptr, top1_prob_ptr, top1_id_ptr, top2_prob_ptr, WITH_TOP)
    if TEMPERED:
        tl.store(state_ptr + row * 2, m)
        tl.store(state_ptr + row * 2 + 1, z)
        # The tempered weight of each chunk relative to the row max, and its inclusive prefix.
        c = tl.arange(0, BLOCK_CHUNKS)
        chunk = chunk_ptr + (row * n_chunks + c) * 2
        read = c < tl.where(keep, n_chunks, 0)  # a skipped row wrote no chunk sums
        chunk_max = tl.load(chunk, mask=read, other=-float("inf"))
        weight = tl.load(chunk + 1, mask=read, other=0.0) * tl.exp((chunk_max - m_ref) * inv_temperature)
        upto = tl.cumsum(weight, axis=0)
        total = tl.max(upto, axis=0)  # the last prefix: weights are >= 0
        last_with_weight = tl.max(tl.where(weight > 0.0, c, -1), axis=0)
        # Target u * Z lies in the first chunk whose prefix exceeds it (rounding can leave it past
        # the last prefix: then the last chunk with weight), at u * Z - prefix[chunk - 1] inside it.
        # Requiring weight > 0 keeps a zero-weight chunk out even where the parallel prefix sum is
        # not exactly monotone.
        samples = tl.arange(0, BLOCK_S)
        target = tl.load(uniforms_ptr + row * n_samples + samples, mask=samples < n_samples, other=0.0) * total
        above = (upto[None, :] > target[:, None]) & (weight[None, :] > 0.0)
        target_chunk = tl.min(tl.where(above, c[None, :], BLOCK_CHUNKS), axis=1)
        target_chunk = tl.where(target_chunk == BLOCK_CHUNKS, last_with_weight, target_chunk)
        before = tl.sum(tl.where(c[None, :] == target_chunk[:, None] - 1, upto[None, :], 0.0), axis=1)
        # A skipped row (-1) or a read row with NaN / no drawable token (-2) gets no draw.
        good = keep & (z > 0.0) & (z < float("inf"))
        target_chunk = tl.where(good, target_chunk, tl.where(keep, -2, -1))
        out = row * n_samples + samples
        tl.store(target_chunk_ptr + out, target_chunk, mask=samples < n_samples)
        tl.store(target_rest_ptr + out, target - before, mask=samples < n_samples)


@triton.jit
def _draw_kernel(
    logits_ptr, state_ptr, target_chunk_ptr, target_rest_ptr, top1_id_ptr, tokens_ptr, probs_ptr,
    n_cols, n_samples, size1, size2, stride0, stride1, stride2, stride_col, inv_temperature,
    UNIT_STRIDE: tl.constexpr, ALIGN: tl.constexpr, BLOCK: tl.constexpr,
):
    # One program per (row, draw): it re-reads the one chunk that holds the draw.
    row, sample, row_ptr, _ = _this_program(logits_ptr, logits_ptr, size1, size2, stride0, stride1, stride2,
                                            False, ALIGN)
    out = row * n_samples + sample
    chunk = tl.load(target_chunk_ptr + out)
    token = -1
    prob = tl.where(chunk == -2, float("nan"), 0.0)
    if chunk >= 0:
        m = tl.load(state_ptr + row * 2)
        z = tl.load(state_ptr + row * 2 + 1)
        cols = chunk * BLOCK + tl.arange(0, BLOCK)
        x = _load_chunk(row_ptr, cols, n_cols, stride_col, UNIT_STRIDE)
        w = tl.exp((x - m) * inv_temperature)
        # The first column of non-zero weight whose cumulative weight exceeds the rest of the target
        # (a -inf logit is never drawn, even where the parallel scan is not exactly monotone); if
        # rounding leaves none, the chunk's last column with weight (the row's arg-max if even that
        # is missing, which only float32 underflow differences between the passes could cause).
        lanes = tl.arange(0, BLOCK)
        above = (tl.cumsum(w, axis=0) > tl.load(target_rest_ptr + out)) & (w > 0.0)
        index = tl.min(tl.where(above, lanes, BLOCK), axis=0)
        last_with_weight = tl.max(tl.where(w > 0.0, lanes, -1), axis=0)
        index = tl.where(index == BLOCK, last_with_weight, index)
        token = tl.where(index >= 0, chunk * BLOCK + index, tl.load(top1_id_ptr + row).to(tl.int32))
        # The drawn logit is re-read (one cached load) rather than gathered across the chunk's lanes.
        x_token = tl.load(row_ptr + token.to(tl.int64) * stride_col).to(tl.float32)
        prob = tl.math.div_rn(tl.exp(x_token - m), z)
    tl.store(tokens_ptr + out, token.to(tl.int64))
    tl.store(probs_ptr + out, prob)


# ---- configuration (shared by the launchers and aot_configs) ------------------------------------

def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; :data:`AOT_SM_COUNT` off CUDA."""
    return cuda_sm_count(device) if device.type == "cuda" else AOT_SM_COUNT


def _num_warps(block: int) -> int:
    return 4 if block <= 1024 else 8


def row_pass_config(n_rows: int, n_cols: int, sms: int) -> Dict[str, int]:
    """Chunk width, warps and vocabulary split of the row pass for ``n_rows`` rows of ``n_cols``.

    4096 columns over 8 warps is 16 values per thread per chunk: two 16-byte loads of bf16, and with
    the three per-lane top-2 arrays still inside 128 registers. Rows are split when they are fewer
    than ``_PROGRAMS_PER_SM`` programs per SM, into as many splits as bring the grid there, each
    covering at least ``_MIN_CHUNKS_PER_SPLIT`` chunks. ``num_stages`` software-pipelines the chunk
    loop (``tl.range``), which Triton does not do for plain loads by itself.
    """
    block = _FORCE_CONFIG.get("block") or min(triton.next_power_of_2(max(n_cols, 1)), _ROW_BLOCK)
    n_chunks = triton.cdiv(n_cols, block)
    wanted = triton.cdiv(_PROGRAMS_PER_SM * sms, max(n_rows, 1))
    splits = _FORCE_CONFIG.get("splits") or max(1, min(wanted, n_chunks // _MIN_CHUNKS_PER_SPLIT, _MAX_SPLITS))
    split_len = triton.cdiv(n_chunks, min(splits, n_chunks)) * block
    return {"block": block, "num_warps": _num_warps(block), "splits": triton.cdiv(n_cols, split_len),
            "split_len": split_len, "num_stages": _FORCE_CONFIG.get("stages") or _ROW_STAGES}


def combine_config(splits: int, n_chunks: int, n_samples: int) -> Dict[str, int]:
    """Lanes of the combine (and target-placing) kernel: splits, chunks and draws of one row."""
    return {"block_split": triton.next_power_of_2(splits), "block_chunks": triton.next_power_of_2(n_chunks),
            "block_s": triton.next_power_of_2(max(n_samples, 1)), "num_warps": 1 if n_samples == 0 else 2}


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


def _launch_row_pass(logits, keep, *, with_top: bool, uniforms: Optional[torch.Tensor] = None,
                     inv_temperature: float = 0.0):
    """Run the row pass and, when split or drawing, the combine. With ``uniforms`` [rows, S] the
    combine also places the draws' targets. Returns ``(entropy, top1_prob, top1_id, top2_prob)``
    (flat; the top fields None unless ``with_top``) and, for the draw kernel, ``(state,
    target_chunk, target_rest, logits, geometry, cfg)``."""
    n_cols = logits.shape[-1]
    n_rows = logits.numel() // n_cols
    device = logits.device
    tempered = uniforms is not None
    n_samples = uniforms.shape[-1] if tempered else 0
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
    n_chunks = triton.cdiv(n_cols, cfg["block"])
    state = target_chunk = target_rest = None
    if tempered:
        state = torch.empty((n_rows, 2), dtype=torch.float32, device=device)
        target_chunk = torch.empty((n_rows, n_samples), dtype=torch.int32, device=device)
        target_rest = torch.empty((n_rows, n_samples), dtype=torch.float32, device=device)
    stats = (entropy, top1_prob, top1_id, top2_prob)
    draw_inputs = (state, target_chunk, target_rest, logits, geometry, cfg)
    if n_rows == 0:
        return stats, draw_inputs
    keep_flat = keep.reshape(-1).contiguous().view(torch.uint8) if keep is not None else entropy
    # Drawing needs the combine step (it places the targets), so it always writes partial states.
    split = splits > 1 or tempered
    part = torch.empty(n_rows * splits * 5, dtype=torch.float32, device=device) if split else entropy
    part_col = torch.empty(n_rows * splits, dtype=torch.int32, device=device) if split else entropy
    chunks = torch.empty(n_rows * n_chunks * 2, dtype=torch.float32, device=device) if tempered else entropy
    outputs = (entropy, top1_prob if with_top else entropy, top1_id if with_top else entropy,
               top2_prob if with_top else entropy)
    flags = dict(HAS_KEEP=keep is not None, WITH_TOP=with_top, TEMPERED=tempered)
    with device_guard(logits):
        _row_pass_kernel[(n_rows, splits)](
            logits, keep_flat, *outputs, part, part_col, chunks,
            n_cols, cfg["split_len"], splits, n_chunks, *geometry, logits.stride(-1), inv_temperature,
            SPLIT=split, UNIT_STRIDE=logits.stride(-1) == 1, ALIGN=_alignment(logits, geometry), BLOCK=cfg["block"],
            NUM_STAGES=cfg["num_stages"], num_warps=cfg["num_warps"], **flags)
        if split:
            combine = combine_config(splits, n_chunks, n_samples)
            _combine_kernel[(n_rows,)](
                keep_flat, part, part_col, chunks, uniforms if tempered else entropy, *outputs,
                state if tempered else entropy, target_chunk if tempered else entropy,
                target_rest if tempered else entropy, n_cols, splits, n_chunks, n_samples, inv_temperature,
                BLOCK_SPLIT=combine["block_split"], BLOCK_CHUNKS=combine["block_chunks"],
                BLOCK_S=combine["block_s"], num_warps=combine["num_warps"], **flags)
    return stats, draw_inputs


def launch_row_stats(logits: torch.Tensor, keep: Optional[torch.Tensor], *, with_top: bool):
    """Row pass over ``logits`` [..., V] (any strides, fp32/bf16/fp16); ``keep``: bool with shape
    ``logits.shape[:-1]`` or None. Returns flat float32 ``entropy`` [rows] and, when ``with_top``,
    float32 ``top1_prob``, int64 ``top1_id``, float32 ``top2_prob`` [rows] (else None)."""
    return _launch_row_pass(logits, keep, with_top=with_top)[0]


def _inverse_temperature(temperature: float) -> float:
    # Clamped to the float32 range: 1/T overflowing to inf would turn 0 * inf into NaN.
    return min(1.0 / temperature, 3.0e38)


def launch_step_stats(logits: torch.Tensor, keep: Optional[torch.Tensor], uniforms: Optional[torch.Tensor],
                      temperature: float):
    """The op of :func:`infogain_kernels.step_stats` on Triton; returns the six flat outputs
    (``[rows]`` statistics, ``[rows, S]`` draws)."""
    n_samples = uniforms.shape[-1] if uniforms is not None else 0
    if n_samples == 0 or temperature == 0:
        entropy, top1_prob, top1_id, top2_prob = _launch_row_pass(logits, keep, with_top=True)[0]
        # T = 0: every draw is the arg-max (no random numbers were drawn).
        return (entropy, top1_prob, top1_id, top2_prob, top1_id[:, None].repeat(1, n_samples),
                top1_prob[:, None].repeat(1, n_samples))
    inv_temperature = _inverse_temperature(temperature)
    uniforms = uniforms.contiguous()
    stats, (state, target_chunk, target_rest, logits, geometry, cfg) = _launch_row_pass(
        logits, keep, with_top=True, uniforms=uniforms, inv_temperature=inv_temperature)
    n_rows = stats[0].shape[0]
    tokens = torch.empty((n_rows, n_samples), dtype=torch.int64, device=logits.device)
    token_probs = torch.empty((n_rows, n_samples), dtype=torch.float32, device=logits.device)
    if n_rows:
        with device_guard(logits):
            _draw_kernel[(n_rows, n_samples)](
                logits, state, target_chunk, target_rest, stats[2], tokens, token_probs,
                logits.shape[-1], n_samples, *geometry, logits.stride(-1), inv_temperature,
                UNIT_STRIDE=logits.stride(-1) == 1, ALIGN=_alignment(logits, geometry), BLOCK=cfg["block"],
                num_warps=cfg["num_warps"])
    return (*stats, tokens, token_probs)




# ---- ahead-of-time compile lane --------------------------------------------------------------

_TRITON_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# (name, rows, V): LLaDA and Dream/SDAR vocabularies at the sampler's row counts (8 x 32 and 8 x 256
# block positions, 64 x 32 lookahead rows) and EIS's single row.
_AOT_SHAPES = [(f"{model} rows={rows}", rows, vocab)
               for model, vocab in (("llada", 126464), ("dream", 151936), ("sdar", 152064))
               for rows in (1, 256, 2048)]


def aot_configs():
    """Every launcher configuration of this module's kernels at LLaDA / Dream / SDAR shapes, for the
    ahead-of-time compile lane (format: see the lane). Produced by :func:`row_pass_config` and
    :func:`combine_config`, the functions the launchers use, with an SM count of :data:`AOT_SM_COUNT`,
    for contiguous ``[rows, V]`` logits (row stride V) with a mask."""
    from ._aot import launch_config

    configs, seen = [], set()

    def add(name, kernel, args, num_warps, elements=None):
        config = launch_config(name, kernel, args, num_warps=num_warps, num_stages=3, elements_per_iteration=elements)
        key = (kernel.fn.__name__, tuple(sorted(config["signature"].items())),
               tuple(sorted(config["constexprs"].items())), num_warps)
        if key not in seen:
            seen.add(key)
            configs.append(config)

    for torch_dtype, dtype in _TRITON_DTYPES.items():
        vector = 16 // torch.tensor([], dtype=torch_dtype).element_size()
        for shape, rows, vocab in _AOT_SHAPES:
            cfg = row_pass_config(rows, vocab, AOT_SM_COUNT)
            splits, n_chunks = cfg["splits"], triton.cdiv(vocab, cfg["block"])
            geometry = dict(n_cols=vocab, size1=1, size2=rows, stride0=0, stride1=0, stride2=vocab, stride_col=1,
                            inv_temperature=1.0)
            for what, with_top, samples in (("step_stats S=8", True, 8), ("token_stats", True, 0),
                                            ("lookahead entropy", False, 0)):
                tempered = samples > 0
                flags = dict(HAS_KEEP=True, WITH_TOP=with_top, TEMPERED=tempered)
                split = splits > 1 or tempered
                add(f"row_pass {what} {dtype} V={vocab} {shape} splits={splits}", _row_pass_kernel,
                    dict(logits_ptr=f"*{dtype}", keep_ptr="*u8", entropy_ptr="*fp32", top1_prob_ptr="*fp32",
                         top1_id_ptr="*i64", top2_prob_ptr="*fp32", part_ptr="*fp32", part_col_ptr="*i32",
                         chunk_ptr="*fp32", split_len=cfg["split_len"], n_splits=splits, n_chunks=n_chunks,
                         **geometry, **flags, SPLIT=split, UNIT_STRIDE=True, ALIGN=vector, BLOCK=cfg["block"],
                         NUM_STAGES=cfg["num_stages"]),
                    cfg["num_warps"], cfg["block"])
                if split:
                    combine = combine_config(splits, n_chunks, samples)
                    add(f"combine {what} V={vocab} splits={splits}", _combine_kernel,
                        dict(keep_ptr="*u8", part_ptr="*fp32", part_col_ptr="*i32", chunk_ptr="*fp32",
                             uniforms_ptr="*fp32", entropy_ptr="*fp32", top1_prob_ptr="*fp32", top1_id_ptr="*i64",
                             top2_prob_ptr="*fp32", state_ptr="*fp32", target_chunk_ptr="*i32",
                             target_rest_ptr="*fp32", n_cols=vocab, n_splits=splits, n_chunks=n_chunks,
                             n_samples=max(samples, 8), inv_temperature=1.0, **flags,
                             BLOCK_SPLIT=combine["block_split"], BLOCK_CHUNKS=combine["block_chunks"],
                             BLOCK_S=combine["block_s"]), combine["num_warps"])
            add(f"draw {dtype} V={vocab} {shape}", _draw_kernel,
                dict(logits_ptr=f"*{dtype}", state_ptr="*fp32", target_chunk_ptr="*i32", target_rest_ptr="*fp32",
                     top1_id_ptr="*i64", tokens_ptr="*i64", probs_ptr="*fp32", n_samples=8, **geometry,
                     UNIT_STRIDE=True, ALIGN=vector, BLOCK=cfg["block"]),
                cfg["num_warps"])
    return configs
