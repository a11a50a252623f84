"""Triton half of :func:`~infogain_kernels.gumbel_topk`: one program per (row, block of samples)
ranks the row's positions by ``score + temperature * g`` and writes the k best, with Gumbel noise
``g`` from counter-based Philox keyed by the op's seed (the random stream of :mod:`._random`).
Imported only where Triton runs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._backend import next_power_of_2
from ._random import U_MAX, U_MIN

# Largest [BLOCK_S, BLOCK_P] tile one Triton program holds.
_TRITON_TILE_ELEMENTS = 4096
_TRITON_MAX_BLOCK_S = 64

_U_MIN: tl.constexpr = tl.constexpr(U_MIN)
_U_MAX: tl.constexpr = tl.constexpr(U_MAX)


@triton.jit
def gumbel_noise_philox(seed, column, row, sample):
    """Gumbel noise from Philox keyed by ``seed`` (int64 scalar) at the counters
    ``(column, row, sample)`` (int32 tensors of one broadcast shape)."""
    bits, _, _, _ = tl.random.philox(seed, column, row, sample, column * 0)
    u = tl.random.uint_to_uniform_float(bits)
    u = tl.minimum(tl.maximum(u, _U_MIN), _U_MAX)
    return -tl.log(-tl.log(u))


def _triton_tile(num_positions: int, num_samples: int):
    """(BLOCK_S, BLOCK_P) of the Triton launch: all positions of a row, as many samples as fit."""
    block_p = next_power_of_2(num_positions)
    block_s = min(next_power_of_2(num_samples), _TRITON_MAX_BLOCK_S, max(1, _TRITON_TILE_ELEMENTS // block_p))
    return block_s, block_p


def gumbel_topk_triton(scores, k, num_samples, temperature, valid, seed):
    """The op of :func:`~infogain_kernels.gumbel_topk` on Triton: int64 [S, B, k] position indices."""
    num_rows, num_positions = scores.shape
    indices = torch.empty((num_samples, num_rows, k), dtype=torch.int64, device=scores.device)
    if num_rows > 0:
        block_s, block_p = _triton_tile(num_positions, num_samples)
        _gumbel_topk_kernel[(num_rows, triton.cdiv(num_samples, block_s))](
            scores, scores.stride(0), scores.stride(1), valid, valid.stride(0), valid.stride(1), seed, indices,
            num_rows, num_positions, num_samples, k, temperature,
            BLOCK_S=block_s, BLOCK_P=block_p,
        )
    return indices


@triton.jit
def _gumbel_topk_kernel(scores_ptr, stride_sb, stride_sp, valid_ptr, stride_vb, stride_vp, seed_ptr,
                        indices_ptr, num_rows, num_positions, num_samples, k, temperature,
                        BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr):
    # One program per (row, block of samples); the whole row fits one block (P is small:
    # positions, not vocabulary), so it is loaded once for all the samples of the block.
    row = tl.program_id(0)
    samples = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    positions = tl.arange(0, BLOCK_P)
    valid_row = tl.load(valid_ptr + row.to(tl.int64) * stride_vb + positions * stride_vp,
                        mask=positions < num_positions, other=0) != 0
    x = tl.load(scores_ptr + row.to(tl.int64) * stride_sb + positions * stride_sp,
                mask=valid_row, other=0.0).to(tl.float32)
    noise = gumbel_noise_philox(
        tl.load(seed_ptr),
        tl.broadcast_to(positions[None, :], (BLOCK_S, BLOCK_P)),
        tl.full((BLOCK_S, BLOCK_P), 0, tl.int32) + row,
        tl.broadcast_to(samples[:, None], (BLOCK_S, BLOCK_P)))
    # Sample 0 (and temperature 0) is the plain top-k: zero noise weight.
    noise_weight = tl.where(samples == 0, 0.0, temperature)
    key = x[None, :] + noise_weight[:, None] * noise
    remaining = tl.broadcast_to(valid_row[None, :], (BLOCK_S, BLOCK_P))
    out_ptrs = indices_ptr + (samples.to(tl.int64) * num_rows + row) * k
    sample_in_range = samples < num_samples
    # k rounds of "take the best remaining position". The choice is tracked by
    # `remaining`, not by overwriting keys with -inf, so valid -inf scores still rank.
    for slot in range(0, k):
        best = tl.max(tl.where(remaining, key, -float("inf")), axis=1)
        is_best = remaining & (key == best[:, None])
        chosen = tl.min(tl.where(is_best, positions[None, :], BLOCK_P), axis=1)
        tl.store(out_ptrs + slot, tl.where(chosen < BLOCK_P, chosen.to(tl.int64), -1), mask=sample_in_range)
        remaining = remaining & (positions[None, :] != chosen[:, None])


def aot_configs():
    """Launch configurations of :func:`gumbel_topk_triton` as the samplers call it (positions of a
    block of 32 or 256, 2 samples, float32 confidences or half scores), for the compile lane."""
    from . import _aot

    configs = []
    for dtype in _aot.DTYPES:
        for num_positions, k in ((32, 4), (256, 8)):
            block_s, block_p = _triton_tile(num_positions, 2)
            args = dict(scores_ptr="*" + dtype, stride_sb=num_positions, stride_sp=1, valid_ptr="*i1",
                        stride_vb=num_positions, stride_vp=1, seed_ptr="*i64", indices_ptr="*i64", num_rows=24,
                        num_positions=num_positions, num_samples=2, k=k, temperature=0.5,
                        BLOCK_S=block_s, BLOCK_P=block_p)
            configs.append(_aot.launch_config(f"gumbel_topk {dtype} P={num_positions} S=2", _gumbel_topk_kernel,
                                              args, num_warps=4))
    return configs
