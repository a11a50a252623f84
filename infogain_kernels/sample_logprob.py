"""Draw one token per row from the temperature + top-p filtered distribution, with its log-probability.

The filtered distribution (temperature, sort-free top-p nucleus, ``T = 0``) is
the one of :mod:`infogain_kernels.topk_logprobs`; both ops run the nucleus
engine of :mod:`._nucleus` (design: docs/kernels.md). ``mode="sample"`` draws
by inverse CDF over the nucleus in token-id order: with the fixed-point masses ``q_i`` of the nucleus tokens (total ``Q``)
and one uniform 53-bit fraction ``u`` per row, the draw is the token whose CDF
interval ``[sum_{j<i} q_j, sum_{j<=i} q_j)`` holds ``floor(u * Q)``. That is an
exact sample of the distribution ``q_i / Q`` up to the 2**-53 resolution of
``u``; it differs from the float distribution only by the 2**-40 quantisation
of each mass (tokens with ``p < 2**-40`` are never drawn). ``mode="greedy"``
or ``temperature = 0`` returns the arg-max token (lowest id among equal
maxima). No random work per vocabulary entry: one random number per row.

Reads of the vocabulary per row: the nucleus reads (one when ``top_p = 1`` or
the nucleus lies within the 8 most probable tokens, at most five otherwise), then for a
draw one read for each split's nucleus mass and one read of the split that
holds the draw.

Randomness: one seed is drawn from ``generator`` per call (see
:mod:`infogain_kernels._random`) and passed into the custom op as an int64
tensor; the Triton path takes ``r`` from counter-based Philox at ``(row)``,
the reference path and the native CPU kernel from a CPU generator seeded with it
(``randint(0, 2**53, [B])``, the same numbers on both). Same generator state =>
same draw on the same device and backend (and, on CPU, the same token from the
native kernel as from the reference, except within float rounding of a CDF
boundary).

Registered as ``torch.ops.infogain.sample_logprob``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import _random
from ._backend import call_op
from ._nucleus import check_filter, check_row_logits, nucleus_outputs
from ._nucleus_format import NUCLEUS_PROBE_K
from ._validation import check_generator

MODES = ("greedy", "sample")


def sample_logprob(logits: torch.Tensor, *, mode: str = "greedy", temperature: float = 1.0,
                   top_p: float = 1.0,
                   generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """One token per row and its log-probability under the filtered distribution.

    Args:
        logits: ``[B, V]`` float32, bfloat16 or float16, any strides; ``-inf``
            entries are legal and never drawn.
        mode: ``"greedy"`` (arg-max) or ``"sample"``.
        temperature: finite, >= 0; ``0`` forces the arg-max in either mode and
            the log-probability is that of the untempered filtered distribution.
        top_p: in (0, 1]; 1 disables nucleus filtering.
        generator: ``torch.Generator`` on the logits' device type, or None for
            the default generator. Used only when a draw is random (``"sample"``
            with ``temperature > 0``); then exactly one seed is drawn from it.

    Returns:
        ``(token, logprob)``: ``token`` int64 ``[B]``; ``logprob`` float32 ``[B]``,
        ``log softmax(logits / T)[token]`` renormalised over the top-p nucleus
        (always finite: the token is in the nucleus).

    Raises:
        TypeError / ValueError naming the argument for bad types, shapes, modes
        or ranges, and ``ValueError`` for a row with NaN / +inf, an all ``-inf``
        row, or one that overflows after dividing by the temperature.
    """
    check_row_logits(logits)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    temperature, top_p = check_filter(temperature, top_p)
    check_generator("generator", generator, logits.device)
    greedy = mode == "greedy" or temperature == 0
    seed = (torch.zeros(1, dtype=torch.int64, device=logits.device) if greedy
            else _random.draw_seed(generator, logits.device))
    return call_op(torch.ops.infogain.sample_logprob, _sample_logprob_impl, logits, greedy, temperature, top_p, seed)


def _sample_logprob_impl(logits: torch.Tensor, greedy: bool, temperature: float, top_p: float,
                       seed: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Custom op behind :func:`sample_logprob`; ``seed`` (int64 [1]) is ignored when ``greedy``."""
    if greedy:
        _, _, token, logprob = nucleus_outputs(logits, 1, temperature, top_p, seed=None)
    else:
        probe_k = 1 if top_p >= 1.0 else min(NUCLEUS_PROBE_K, logits.shape[1])
        _, _, token, logprob = nucleus_outputs(logits, probe_k, temperature, top_p, seed=seed)
    return token, logprob


_sample_logprob_op = torch.library.custom_op("infogain::sample_logprob", _sample_logprob_impl, mutates_args=())


@_sample_logprob_op.register_fake
def _(logits, greedy, temperature, top_p, seed):
    rows = logits.shape[0]
    return logits.new_empty((rows,), dtype=torch.int64), logits.new_empty((rows,), dtype=torch.float32)
