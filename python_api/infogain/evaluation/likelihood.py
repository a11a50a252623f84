"""The Monte-Carlo masked log-likelihood of a masked diffusion LM (LLaDA's evaluation estimator), used by
the lm-evaluation-harness model's ``loglikelihood`` (:mod:`infogain.evaluation.lm_eval_model`); needs no harness."""
from __future__ import annotations

from typing import List

import torch


def mc_loglikelihood(logits_fn, context_ids: List[int], continuation_ids: List[int], mask_id: int,
                     num_samples: int, batch_size: int, generator: torch.Generator) -> float:
    """Monte-Carlo masked estimate of ``log p(continuation | context)`` for a masked diffusion LM.

    ``logits_fn(ids [b, T]) -> float logits [b, T, V]``. Sample i masks ``l_i``
    continuation positions chosen uniformly at random, with ``l_i = 1 + floor(L * ((r +
    i / n) mod 1))`` (``r`` uniform, one draw: each ``l_i`` is uniform in 1..L and the
    samples are stratified over that range), and contributes ``L / l_i`` times the summed
    log-probabilities of the masked tokens. Returns the mean over the ``n`` samples.
    Draws come from ``generator`` (CPU).
    """
    length = len(continuation_ids)
    sequence = torch.tensor(context_ids + continuation_ids, dtype=torch.long)
    target = sequence[len(context_ids):]
    offset = torch.rand((), generator=generator)
    fractions = (offset + torch.arange(num_samples) / num_samples) % 1.0
    masked_counts = (1 + (fractions * length).floor().long()).clamp(max=length)
    total = 0.0
    for start in range(0, num_samples, batch_size):
        counts = masked_counts[start:start + batch_size]
        rows = counts.numel()
        # Rank of a random key per position: the ``l`` smallest ranks form a uniform random subset.
        ranks = torch.rand(rows, length, generator=generator).argsort(dim=1).argsort(dim=1)
        masked = ranks < counts[:, None]
        ids = sequence.repeat(rows, 1)
        ids[:, len(context_ids):] = torch.where(masked, torch.full_like(target, mask_id), target)
        logprobs = torch.log_softmax(logits_fn(ids)[:, len(context_ids):], dim=-1).cpu()
        token_logprobs = logprobs.gather(2, target.expand(rows, length)[:, :, None]).squeeze(2)
        total += ((token_logprobs * masked).sum(dim=1) * length / counts).sum().item()
    return total / num_samples
