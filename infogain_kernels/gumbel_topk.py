"""Gumbel top-k: position sets for the lookahead candidates.

:func:`gumbel_topk` returns, per row, sample 0 = the plain top-k of the scores
over the valid positions and samples 1..S-1 = the top-k of
``scores / temperature + g`` (Gumbel noise ``g``), i.e. k positions drawn
without replacement with probability proportional to ``exp(score / temperature)``
(Gumbel-top-k trick). The ranking uses ``scores + temperature * g``, which orders
positions identically for ``temperature > 0`` and cannot overflow for tiny
temperatures.

Registered as ``torch.ops.infogain.gumbel_topk``. Randomness: see
:mod:`infogain_kernels._random`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from . import _random
from ._backend import call_op, device_guard, use_native, use_triton, value_checks_enabled
from ._random import triton
from ._validation import (FLOAT_DTYPES, check_bool, check_generator, check_mask, check_positive_int,
                          check_same_device, check_tensor)

# Largest [BLOCK_S, BLOCK_P] tile one Triton program holds.
_TRITON_TILE_ELEMENTS = 4096
_TRITON_MAX_BLOCK_S = 64

PADDING = -1
"""Index written to the trailing slots of a sample when a row has fewer than k valid positions."""


def gumbel_topk(scores: torch.Tensor, k: int, num_samples: int, temperature: float, *,
                valid: torch.Tensor, generator: Optional[torch.Generator] = None,
                check_values: bool = True) -> torch.Tensor:
    """Top-k positions per row: sample 0 deterministic, samples 1.. Gumbel-perturbed.

    Args:
        scores: ``[B, P]`` float32, bfloat16 or float16 (e.g. the confidences of
            a block's positions); any strides. Compared in float32. ``-inf`` is a
            legal score (ranked after every finite score of the row, still before
            the padding); NaN at a valid position is an error.
        k: number of positions per sample, >= 1 (may exceed P).
        num_samples: S >= 1.
        temperature: finite, >= 0. Samples 1..S-1 rank ``scores / temperature +
            g``; ``temperature == 0`` makes every sample equal to sample 0.
        valid: bool ``[B, P]``; only positions where it is True are ever chosen.
            Scores at invalid positions are ignored (whatever their value).
        generator: ``torch.Generator`` on the scores' device type, or None for the
            default generator. One seed is drawn per call when noise is needed
            (``num_samples > 1`` and ``temperature > 0``; otherwise the generator
            is not touched), so the same generator state gives the same result on
            the same device and backend; the CUDA (Triton) and CPU paths give
            different, equally distributed draws (the CPU's native kernel and torch
            reference give the same ones).
        check_values: when True (default), raise for NaN scores at valid
            positions. That check costs one host synchronisation; pass False to
            fold it into your own read-back (e.g. of ``torch.isnan(scores) &
            valid`` on the device). The positions of a row with such a NaN are
            then unspecified (each is a valid position or :data:`PADDING`), never
            an error or out of range.

    Returns:
        int64 ``[S, B, k]`` of position indices in ``[0, P)``. Each sample lists
        distinct valid positions in decreasing order of their (perturbed) score,
        equal scores in increasing index order. When a row has ``n < k`` valid
        positions, all n come first and the last ``k - n`` slots hold
        :data:`PADDING` (-1).

    Raises:
        TypeError / ValueError naming the argument for a wrong type, dtype, rank,
        shape or device, ``k < 1``, ``num_samples < 1``, a negative / NaN /
        infinite temperature, and (with ``check_values=True``) NaN scores at
        valid positions. That data check is skipped under ``torch.compile`` and
        other tracers and while a CUDA graph is being captured, and ``torch.ops.infogain.gumbel_topk`` never does it.
    """
    # Cheap checks first-hand (this op runs every lookahead step on tiny tensors; the shared
    # helpers are used only to word the error once something is wrong).
    if not (type(scores) is torch.Tensor and scores.dtype in FLOAT_DTYPES and scores.dim() == 2):
        check_tensor("scores", scores, dtypes=FLOAT_DTYPES, ndim=2)
    k = check_positive_int("k", k)
    num_samples = check_positive_int("num_samples", num_samples)
    temperature = _random.check_temperature("temperature", temperature)
    if valid is None:
        raise TypeError("valid must be a bool tensor of the scores' shape, got None")
    if not (type(valid) is torch.Tensor and valid.dtype == torch.bool and valid.shape == scores.shape):
        check_mask("valid", valid, scores.shape)
    if valid.device != scores.device:
        check_same_device(scores=scores, valid=valid)
    if generator is not None:
        check_generator("generator", generator, scores.device)
    check_values = check_bool("check_values", check_values)
    if check_values:
        _raise_on_nan_scores(scores, valid)
    # A seed is drawn only when some sample is perturbed; otherwise the result is deterministic and
    # the generator is left as it is.
    if num_samples > 1 and temperature > 0:
        seed = _random.draw_seed(generator, scores.device)
    else:
        seed = _random.unused_seed(scores.device)
    return call_op(torch.ops.infogain.gumbel_topk, _gumbel_topk_impl, scores, k, num_samples, temperature, valid, seed)


def _raise_on_nan_scores(scores: torch.Tensor, valid: torch.Tensor) -> None:
    """Raise naming the first NaN score at a valid position: the op's one host synchronisation
    (see ``_backend.value_checks_enabled``)."""
    if not value_checks_enabled(scores):
        return
    nan_at_valid = torch.isnan(scores).logical_and_(valid)  # one [B, P] bool temporary, not two
    if bool(nan_at_valid.any()):
        row, position = (int(i) for i in nan_at_valid.nonzero()[0])
        raise ValueError(f"scores contain NaN at valid position {position} of row {row}")


def _gumbel_topk_impl(scores: torch.Tensor, k: int, num_samples: int, temperature: float,
                    valid: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """Custom op behind :func:`gumbel_topk`; ``seed`` is an int64 tensor [1] on the scores' device."""
    if use_native(scores):  # csrc/gumbel_topk_cpu.cpp: the reference's exact result in one call
        return torch.ops.infogain._gumbel_topk_cpu(scores, k, num_samples, temperature, valid, seed)
    if use_triton(scores):
        with device_guard(scores):
            return _gumbel_topk_triton(scores, k, num_samples, temperature, valid, seed)
    return _gumbel_topk_reference(scores, k, num_samples, temperature, valid, seed)


_gumbel_topk_op = torch.library.custom_op("infogain::gumbel_topk", _gumbel_topk_impl, mutates_args=())


@_gumbel_topk_op.register_fake
def _(scores, k, num_samples, temperature, valid, seed):
    return scores.new_empty((num_samples, scores.shape[0], k), dtype=torch.int64)


def _gumbel_topk_reference(scores, k, num_samples, temperature, valid, seed):
    """The specification, in torch: sort (perturbed) scores, valid positions first, stable on ties."""
    num_rows, num_positions = scores.shape
    keys = scores.float()
    if num_samples > 1 and temperature > 0:
        negated_noise = _random.negated_gumbel_noise((num_samples - 1, num_rows, num_positions),
                                                     _random.seeded_generator(seed))
        keys = torch.cat([keys[None], keys - temperature * negated_noise])
    else:
        keys = keys.expand(num_samples, num_rows, num_positions)
    # One stable descending sort on a float64 key that ranks every valid position (a valid -inf
    # becomes -1e300, below any float32 value) above every invalid one (-inf); equal keys keep
    # index order.
    ranking_key = keys.double().clamp_(min=-1e300).masked_fill_(~valid, float("-inf"))
    kept = min(k, num_positions)
    order = torch.sort(ranking_key, dim=2, descending=True, stable=True).indices[:, :, :kept].contiguous()
    # Slots past a row's valid count hold invalid positions: pad them.
    order.masked_fill_(torch.arange(kept, device=scores.device) >= valid.sum(dim=1, keepdim=True), PADDING)
    if kept == k:
        return order
    return torch.cat([order, order.new_full((num_samples, num_rows, k - kept), PADDING)], dim=2)


def _triton_tile(num_positions: int, num_samples: int):
    """(BLOCK_S, BLOCK_P) of the Triton launch: all positions of a row, as many samples as fit."""
    block_p = _random.next_power_of_2(num_positions)
    block_s = min(_random.next_power_of_2(num_samples), _TRITON_MAX_BLOCK_S, max(1, _TRITON_TILE_ELEMENTS // block_p))
    return block_s, block_p


def _gumbel_topk_triton(scores, k, num_samples, temperature, valid, seed):
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


if triton is not None:
    import triton.language as tl

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
        noise = _random.gumbel_noise_philox(
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
    """Launch configurations of :func:`_gumbel_topk_triton` as the samplers call it (positions of a
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
