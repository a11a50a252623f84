"""``gumbel_sample``: token draws from ``softmax(logits / temperature)`` (kept for compatibility).

A thin public function over :func:`infogain_kernels.step_stats`. Despite its name it now draws by
inverse CDF with step_stats' random stream (``torch.rand(n_rows, S)`` from the generator, none at
temperature 0), not by Gumbel-max; the draws follow the same distribution. New code should call
``step_stats(logits, mask, num_samples=S, temperature=T)`` and read ``tokens`` / ``token_probs``,
whose sample axis is last (``[..., S]``) where this function returns ``[S, ...]``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ._validation import check_positive_int
from .step_stats import step_stats


def gumbel_sample(logits: torch.Tensor, num_samples: int, temperature: float, *,
                  mask: Optional[torch.Tensor] = None,
                  generator: Optional[torch.Generator] = None,
                  check_values: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draw ``num_samples`` tokens per row from ``softmax(logits / temperature)``.

    Args:
        logits: ``[..., V]`` float32, bfloat16 or float16; any strides. ``-inf`` entries are legal and
            are never drawn.
        num_samples: S >= 1 independent draws per row.
        temperature: finite, >= 0. ``0`` means arg-max: every sample is the arg-max token of the row,
            the lowest index among equal maxima (no random numbers are drawn).
        mask: optional bool tensor of shape ``logits.shape[:-1]``. Rows where it is False are not
            read; their outputs are ``token = -1`` and ``prob = 0.0``.
        generator: ``torch.Generator`` on the logits' device type, or None for the default
            generator; at T > 0 the call draws ``torch.rand(n_rows, S)`` from it (see
            :func:`infogain_kernels.step_stats`).
        check_values: when True (default), raise for a read row that contains NaN or +inf or is
            entirely ``-inf`` (one host synchronisation). With False such a row's outputs are undefined.

    Returns:
        ``(tokens, probs)``, both of shape ``[S, *logits.shape[:-1]]`` (a transposed view of
        step_stats' ``[..., S]`` outputs): ``tokens`` int64 in ``[0, V)``, ``probs`` float32 with
        ``probs[s] = softmax(logits.float())[tokens[s]]`` (untempered).

    Raises:
        TypeError / ValueError naming the argument as :func:`infogain_kernels.step_stats`, and for
        ``num_samples < 1``.
    """
    num_samples = check_positive_int("num_samples", num_samples)
    stats = step_stats(logits, mask, num_samples=num_samples, temperature=temperature, generator=generator,
                       check_values=check_values)
    return stats.tokens.movedim(-1, 0), stats.token_probs.movedim(-1, 0)
