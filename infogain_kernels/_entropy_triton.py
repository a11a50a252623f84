"""Triton kernels shared by the entropy-family ops (``token_stats``, ``lookahead_objective``).

The per-row pass keeps, in float32 whatever the logits dtype:

* the running maximum ``m`` of the row,
* ``z = sum(exp(x - m))`` and
* ``s = sum(exp(x - m) * (x - m))``,

rescaling ``z`` and ``s`` whenever a new chunk raises ``m``. Then
``H = log(z) - s / z``, which is the online ``log sum e^(x-m) + m - sum(e^(x-m) x) / z`` form with
the shift by ``m`` folded into the second sum (it avoids cancelling two numbers of the size of ``m``).

A row's status is encoded in its entropy so that the caller needs a single check on the outputs:
NaN when the row contains a NaN, +inf when every entry of the row is -inf (the caller tells the
two apart by reading the row, on the error path only). Rows that the mask skips run a zero-trip
loop, so they issue no loads of the logits at all; they get the fill values
that ``token_stats`` documents (entropy 0, probabilities 0, id -1).

Only the launchers (:func:`launch_row_stats`, :func:`launch_masked_mean`) are used by the ops;
they expect inputs already validated by the public functions.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

# exp() of any float32 below this is exactly 0, so shifts can be clamped here without changing
# any sum, which keeps 0 * -inf = NaN out of the products.
_EXP_UNDERFLOW = tl.constexpr(-200.0)


@triton.jit
def _row_stats_kernel(
    logits_ptr,
    row_offsets_ptr,
    keep_ptr,
    entropy_ptr,
    top1_prob_ptr,
    top1_id_ptr,
    top2_prob_ptr,
    n_cols,
    stride_row,
    stride_col,
    HAS_KEEP: tl.constexpr,
    HAS_ROW_OFFSETS: tl.constexpr,
    WITH_TOP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    if HAS_ROW_OFFSETS:
        # Leading dimensions that cannot be collapsed into one stride: the host gives each row's start.
        base = tl.load(row_offsets_ptr + row)
    else:
        base = row * stride_row
    if HAS_KEEP:
        keep = tl.load(keep_ptr + row) != 0
    else:
        keep = True
    # A skipped row gets an empty loop instead of an early return: no logits are loaded for it.
    cols_to_read = tl.where(keep, n_cols, 0)

    lanes = tl.arange(0, BLOCK)
    m = -float("inf")
    z = 0.0
    s = 0.0
    # Per-lane top-2 tracking needs only element-wise work inside the loop; lanes are merged once
    # at the end. A strict ">" keeps the lowest column among equal maxima, as columns only grow.
    lane_top1 = tl.full([BLOCK], -float("inf"), tl.float32)
    lane_top1_col = tl.zeros([BLOCK], tl.int32)
    lane_top2 = tl.full([BLOCK], -float("inf"), tl.float32)
    for start in range(0, cols_to_read, BLOCK):
        cols = start + lanes
        x = tl.load(logits_ptr + base + cols.to(tl.int64) * stride_col, mask=cols < n_cols,
                    other=-float("inf")).to(tl.float32)
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
        m = m_new
        if WITH_TOP:
            above_top1 = x > lane_top1
            lane_top2 = tl.where(above_top1, lane_top1, tl.maximum(lane_top2, x))
            lane_top1_col = tl.where(above_top1, cols, lane_top1_col)
            lane_top1 = tl.where(above_top1, x, lane_top1)

    # z == 0 means every entry was -inf (or the row was skipped); z is NaN when the row held a NaN,
    # and NaN == 0 is False, so the NaN flows into the entropy.
    z_safe = tl.where(z == 0.0, 1.0, z)
    entropy = tl.where(z == 0.0, float("inf"), tl.log(z_safe) - s / z_safe)
    entropy = tl.where(keep, entropy, 0.0)
    tl.store(entropy_ptr + row, entropy)
    if WITH_TOP:
        m_ref = tl.where(m == -float("inf"), 0.0, m)
        best = tl.max(lane_top1, axis=0)
        best_col = tl.min(tl.where(lane_top1 == best, lane_top1_col, n_cols), axis=0)
        is_best_lane = (lane_top1 == best) & (lane_top1_col == best_col)
        runner_up = tl.maximum(tl.max(lane_top2, axis=0),
                               tl.max(tl.where(is_best_lane, -float("inf"), lane_top1), axis=0))
        top1_prob = tl.exp(best - m_ref) / z_safe
        top2_prob = tl.exp(runner_up - m_ref) / z_safe
        tl.store(top1_prob_ptr + row, tl.where(keep, top1_prob, 0.0))
        tl.store(top2_prob_ptr + row, tl.where(keep, top2_prob, 0.0))
        tl.store(top1_id_ptr + row, tl.where(keep, best_col.to(tl.int64), -1))


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


def _block_size(n_cols: int) -> int:
    # 4096 columns over 8 warps is 16 values per thread per chunk: two 16-byte loads of bf16, and
    # with the three per-lane top-2 arrays still well inside the register budget (no spills).
    return min(triton.next_power_of_2(n_cols), 4096)


def _num_warps(block: int) -> int:
    return 4 if block <= 1024 else 8


def _row_layout(logits: torch.Tensor) -> Tuple[Optional[torch.Tensor], int]:
    """How the kernel finds row r of ``logits`` viewed as [rows, V] without copying it.

    Returns ``(None, row_stride)`` when the leading dimensions collapse into one stride, otherwise
    ``(row_offsets, 0)`` with each row's start (in elements) computed from the strides.
    """
    lead_shape = logits.shape[:-1]
    lead_strides = logits.stride()[:-1]
    if len(lead_shape) == 0:
        return None, 0
    try:
        return None, logits.view(-1, logits.shape[-1]).stride(0)
    except RuntimeError:
        pass
    offsets = torch.zeros((), dtype=torch.int64, device=logits.device)
    for size, stride in zip(lead_shape, lead_strides):
        offsets = offsets.unsqueeze(-1) + torch.arange(size, device=logits.device, dtype=torch.int64) * stride
    return offsets.reshape(-1), 0


def launch_row_stats(logits: torch.Tensor, keep: Optional[torch.Tensor], *, with_top: bool,
                     block: Optional[int] = None):
    """Run the row pass over ``logits`` [..., V] (any strides, fp32/bf16/fp16).

    ``keep``: bool with shape ``logits.shape[:-1]`` or None (all rows). Returns flat float32
    ``entropy`` [rows] and, when ``with_top``, float32 ``top1_prob``, int64 ``top1_id`` and float32
    ``top2_prob`` [rows] (else None for those). ``block`` overrides the chunk width (tests use it to
    exercise many chunks on a small vocabulary).
    """
    n_cols = logits.shape[-1]
    n_rows = logits.numel() // n_cols if n_cols else 0
    device = logits.device
    entropy = torch.empty(n_rows, dtype=torch.float32, device=device)
    top1_prob = top1_id = top2_prob = None
    if with_top:
        top1_prob = torch.empty(n_rows, dtype=torch.float32, device=device)
        top1_id = torch.empty(n_rows, dtype=torch.int64, device=device)
        top2_prob = torch.empty(n_rows, dtype=torch.float32, device=device)
    if n_rows == 0:
        return entropy, top1_prob, top1_id, top2_prob
    row_offsets, stride_row = _row_layout(logits)
    keep_flat = keep.reshape(-1).contiguous().view(torch.uint8) if keep is not None else None
    block = block or _block_size(n_cols)
    _row_stats_kernel[(n_rows,)](
        logits,
        row_offsets if row_offsets is not None else entropy,
        keep_flat if keep_flat is not None else entropy,
        entropy,
        top1_prob if with_top else entropy,
        top1_id if with_top else entropy,
        top2_prob if with_top else entropy,
        n_cols,
        stride_row,
        logits.stride(-1),
        HAS_KEEP=keep_flat is not None,
        HAS_ROW_OFFSETS=row_offsets is not None,
        WITH_TOP=with_top,
        BLOCK=block,
        num_warps=_num_warps(block),
    )
    return entropy, top1_prob, top1_id, top2_prob


def launch_masked_mean(entropy: torch.Tensor, keep: torch.Tensor, cost: Optional[torch.Tensor]):
    """Per row r of ``entropy`` [R, L] float32: mean over ``keep[r]`` (0 when none) and
    ``objective = -cost[r] - mean`` (``-mean`` when ``cost`` is None). Returns (objective, mean) [R]."""
    n_rows, n_positions = entropy.shape
    objective = torch.empty(n_rows, dtype=torch.float32, device=entropy.device)
    mean = torch.empty(n_rows, dtype=torch.float32, device=entropy.device)
    if n_rows == 0:
        return objective, mean
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


def aot_configs():
    """The launch configurations :func:`launch_row_stats` and :func:`launch_masked_mean` pick at
    the models' vocabulary widths, for the compile lane (:mod:`infogain_kernels._aot`)."""
    from . import _aot

    configs = []
    # (WITH_TOP, HAS_KEEP) as the ops call the row pass: token_stats with and without a mask,
    # lookahead_objective always with its `remaining` mask.
    calls = ((True, False), (True, True), (False, True))
    for dtype in _aot.DTYPES:
        for vocab in _aot.MODEL_VOCABS.values():
            block = _block_size(vocab)
            for (with_top, has_keep), has_offsets in ((c, o) for c in calls for o in (False, True)):
                placeholder = "*fp32"   # the launcher passes `entropy` for an unused pointer
                args = dict(logits_ptr="*" + dtype, row_offsets_ptr="*i64" if has_offsets else placeholder,
                            keep_ptr="*u8" if has_keep else placeholder, entropy_ptr="*fp32",
                            top1_prob_ptr="*fp32", top1_id_ptr="*i64" if with_top else placeholder,
                            top2_prob_ptr="*fp32", n_cols=vocab, stride_row=0 if has_offsets else vocab,
                            stride_col=1, HAS_KEEP=has_keep, HAS_ROW_OFFSETS=has_offsets, WITH_TOP=with_top,
                            BLOCK=block)
                configs.append(_aot.launch_config(
                    f"row_stats {dtype} V={vocab} top={int(with_top)} keep={int(has_keep)} offsets={int(has_offsets)}",
                    _row_stats_kernel, args, num_warps=_num_warps(block), elements_per_iteration=block))
    for n_positions in (32, 256):   # block lengths
        for has_cost in (True, False):
            args = dict(entropy_ptr="*fp32", keep_ptr="*u8", cost_ptr="*fp32", objective_ptr="*fp32",
                        mean_ptr="*fp32", n_positions=n_positions, HAS_COST=has_cost,
                        BLOCK_L=triton.next_power_of_2(n_positions))
            configs.append(_aot.launch_config(f"masked_mean L={n_positions} cost={int(has_cost)}",
                                              _masked_mean_objective_kernel, args, num_warps=4))
    return configs
