"""Gumbel top-k: position sets for the lookahead candidates.

:func:`gumbel_topk` returns, per row, sample 0 = the plain top-k of the scores
over the valid positions and samples 1..S-1 = the top-k of
``scores / temperature + g`` (Gumbel noise ``g``), i.e. k positions drawn
without replacement with probability proportional to ``exp(score / temperature)``
(Gumbel-top-k trick). The ranking uses ``scores + temperature * g``, which orders
positions identically for ``temperature > 0`` and cannot overflow for tiny
temperatures.

Registered as ``torch.ops.infogain.gumbel_topk``; the Triton half is in
:mod:`._gumbel_triton`. Randomness: see :mod:`infogain_kernels._random`.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _random
from ._backend import call_op, device_guard, op_path, value_checks_enabled
from ._validation import (FLOAT_DTYPES, check_bool, check_generator, check_mask, check_positive_int,
                          check_same_device, check_temperature, check_tensor)

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
    temperature = check_temperature("temperature", temperature)
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
    return gumbel_topk_unchecked(scores, k, num_samples, temperature, valid, generator)


def gumbel_topk_unchecked(scores: torch.Tensor, k: int, num_samples: int, temperature: float, valid: torch.Tensor,
                          generator: Optional[torch.Generator]) -> torch.Tensor:
    """:func:`gumbel_topk` with ``check_values=False`` and no argument checks, for a caller that
    calls it at every decoding step with arguments of kinds it checked once (a sampler's
    candidates: there the checks cost about as much as the op on a small block). Anything
    :func:`gumbel_topk` would reject is undefined here."""
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
    path = op_path(scores)
    if path == "native":  # csrc/gumbel_topk_cpu.cpp: the reference's exact result in one call
        return torch.ops.infogain._gumbel_topk_cpu(scores, k, num_samples, temperature, valid, seed)
    if path == "triton":
        from ._gumbel_triton import gumbel_topk_triton

        with device_guard(scores):
            return gumbel_topk_triton(scores, k, num_samples, temperature, valid, seed)
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
