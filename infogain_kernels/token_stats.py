"""``token_stats``: entropy, top-1 and top-2 probabilities and the argmax of softmax rows, in one pass.

A thin public function over :func:`infogain_kernels.step_stats` with no draws (the op behind it is
``torch.ops.infogain.step_stats``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .step_stats import step_stats


def token_stats(logits: torch.Tensor, mask: Optional[torch.Tensor] = None, *, check_values: bool = True
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entropy and top-1/top-2 statistics of ``softmax(logits, -1)`` for every position, in one read.

    Args:
        logits: [..., V] float32, bfloat16 or float16, any leading shape and strides (views are read
            in place). ``-inf`` entries are legal (suppressed tokens).
        mask: optional bool tensor of shape ``logits.shape[:-1]``. Positions where it is False are not
            read at all and get the fill values below.
        check_values: when True (default), raise for a read row that contains NaN or +inf or has
            every entry -inf. That check costs one host synchronisation; pass False to fold it into your
            own read-back (a bad row is then flagged by a non-finite ``entropy``, e.g. test
            ``~torch.isfinite(entropy).any()`` on the device).

    Returns:
        ``(entropy, top1_prob, top1_id, top2_prob)``, each of shape ``logits.shape[:-1]``:
        float32 entropy (nats), float32 largest probability, int64 index of the largest probability
        (the lowest index among equal maxima), float32 second-largest probability (0 when V == 1,
        equal to ``top1_prob`` when the maximum is tied). Skipped positions: entropy 0, probabilities
        0, id -1. All arithmetic is float32 whatever the input dtype.

    Raises:
        TypeError / ValueError naming the argument for a bad dtype, rank, device or mask shape;
        ValueError when a read row contains NaN or +inf or has every entry -inf (only with
        ``check_values=True``; skipped under ``torch.compile`` and other tracers and while a CUDA
        graph is being captured).

    Same as ``step_stats(logits, mask, check_values=check_values)[:4]``.
    """
    stats = step_stats(logits, mask, check_values=check_values)
    return stats.entropy, stats.top1_prob, stats.top1_id, stats.top2_prob
