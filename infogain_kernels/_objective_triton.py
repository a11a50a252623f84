"""Triton half of the lookahead objective's last step, shared by
:func:`~infogain_kernels.lookahead_objective` and :func:`~infogain_kernels.lm_head_entropy`: per
candidate, the mean entropy over its kept positions and ``J = -cost - mean``, one program per
candidate. Imported only where Triton runs.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._backend import device_guard


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


def aot_configs():
    """The launch at the samplers' block lengths (32 and 256 positions), for the compile lane."""
    from ._aot import launch_config

    return [launch_config(f"masked_mean L={n_positions}", _masked_mean_objective_kernel,
                          dict(entropy_ptr="*fp32", keep_ptr="*u8", cost_ptr="*fp32", objective_ptr="*fp32",
                               mean_ptr="*fp32", n_positions=n_positions, HAS_COST=True, BLOCK_L=n_positions),
                          num_warps=4, num_stages=3)
            for n_positions in (32, 256)]
