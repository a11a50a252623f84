"""``topk_logprobs``: the top-k log-probabilities of each row under temperature + top-p (nucleus)
filtering, sort-free.

For logits ``x`` and temperature ``T``, ``s = x / T`` and ``p = softmax(s)``; the nucleus is
``{i : P(s_j > s_i) < top_p}`` (ties with the last kept token all kept) and the filtered distribution
is ``p`` renormalised over it. ``temperature = 0`` ranks by the logits and reports the untempered
distribution ``softmax(x)`` with its own nucleus, so that the scores stay informative. Tokens rank by
``s`` descending, ties by lower id, identically on every backend. The shared engine (dispatch,
reference, kernels) is :mod:`._nucleus`; its design and read counts are in docs/kernels.md.

Registered as ``torch.ops.infogain.topk_logprobs``.
"""
from __future__ import annotations

from typing import Tuple

import torch

from ._backend import call_op
from ._nucleus import check_filter, check_row_logits, nucleus_outputs
from ._validation import check_positive_int


def topk_logprobs(logits: torch.Tensor, k: int, *, temperature: float = 1.0,
                  top_p: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The k most likely tokens of each row and their filtered log-probabilities.

    Args:
        logits: ``[B, V]`` float32, bfloat16 or float16, any strides. ``-inf``
            entries are legal (such tokens have log-probability ``-inf``).
        k: 1 <= k <= V (``k > V`` raises ``ValueError``; callers clamp).
        temperature: finite, >= 0. ``0``: untempered scores (module docstring).
        top_p: in (0, 1]; 1 disables nucleus filtering.

    Returns:
        ``(ids, logprobs)``: ``ids`` int64 ``[B, k]``, ranked by probability
        (ties: lower id first); ``logprobs`` float32 ``[B, k]``, the
        log-probability of each id under softmax(logits / T) renormalised over
        the top-p nucleus, ``-inf`` for ids outside it. Nucleus tokens always
        come before non-nucleus tokens (they are the most probable ones).

    Raises:
        TypeError / ValueError naming the argument for bad types, shapes or
        ranges, and ``ValueError`` for a row that contains NaN or +inf, is
        entirely ``-inf``, or overflows float32 after dividing by the
        temperature. (While a CUDA graph is captured that data check is
        skipped and such rows give NaN log-probabilities.)
    """
    check_row_logits(logits)
    k = check_positive_int("k", k)
    if k > logits.shape[1]:
        raise ValueError(f"k must be <= the vocabulary size {logits.shape[1]}, got {k}")
    temperature, top_p = check_filter(temperature, top_p)
    return call_op(torch.ops.infogain.topk_logprobs, _topk_logprobs_impl, logits, k, temperature, top_p)


def _topk_logprobs_impl(logits: torch.Tensor, k: int, temperature: float,
                        top_p: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Custom op behind :func:`topk_logprobs` (arguments already validated)."""
    ids, logprobs, _, _ = nucleus_outputs(logits, k, temperature, top_p, seed=None)
    return ids, logprobs


_topk_logprobs_op = torch.library.custom_op("infogain::topk_logprobs", _topk_logprobs_impl, mutates_args=())


@_topk_logprobs_op.register_fake
def _(logits, k, temperature, top_p):
    shape = (logits.shape[0], k)
    return logits.new_empty(shape, dtype=torch.int64), logits.new_empty(shape, dtype=torch.float32)
