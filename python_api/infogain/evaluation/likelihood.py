"""Log-likelihood estimators of the lm-evaluation-harness model (:mod:`infogain.evaluation.lm_eval_model`);
they need no harness.

Causal LMs (:func:`causal_score`): exact, ``log p(continuation | context)`` from one forward.

Diffusion LMs (:func:`mc_loglikelihood`): the Monte-Carlo masked estimator of LLaDA's evaluation
(a lower bound of the log-likelihood): for each of ``n`` samples a number ``l`` of continuation
tokens (uniform in 1..L for a continuation of L tokens, stratified over the samples) is masked at
random, and the sample's value is ``L / l`` times the summed log-probabilities of the masked tokens
given the context and the visible tokens; the estimate is the mean over samples. The harness model
seeds each request's draws from its seed and the request's text (:func:`request_seed`), so the
estimate does not depend on batching or sharding. :func:`greedy_matches`: starting from the fully
masked continuation, the most confident masked position is committed with its argmax, one per
forward, and the result is compared with the continuation.

Block-causal diffusion LMs whose blocks count from position 0 (LLaDA2.x, Fast-dLLM v2;
:func:`blockwise_loglikelihood`): a block sees itself and the blocks before it, so ``log
p(continuation | context)`` is the sum over the blocks the continuation covers of ``log p(its tokens
in block b | everything before them)``; each term is the masked estimate above on the canvas that
ends with block b, with only block b's continuation tokens masked (the earlier blocks clean, as the
model decodes). The samples are shared out among the blocks (at least one each, so a continuation of
one block gets all of them). Fast-dLLM v2's token shift is inside the model's logits (the logit of
position i is its output at i - 1), so the same estimate holds: a masked token is predicted from the
state before it, which sees its own block (masks included) and the clean earlier blocks; the first
token of a block is predicted from the previous block's last state, which cannot see the block, so
that term is autoregressive, as the model's own decoder picks that token. :func:`greedy_matches`
then commits the most confident masked position of the first block that still has masks, as a
block-wise decoder does.
"""
from __future__ import annotations

import zlib
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from infogain_kernels._validation import check_int, check_positive_int

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def _check_ids(context_ids: Sequence[int], continuation_ids: Sequence[int]) -> None:
    if not continuation_ids:
        raise ValueError("continuation_ids must hold at least one token")
    if not context_ids:
        raise ValueError("context_ids must hold at least one token (a BOS / prefix token for an empty context)")


def request_seed(seed: int, *texts: str) -> int:
    """A seed for one request from the run's ``seed`` and the request's ``texts``: independent of
    batching and of the data-parallel shard."""
    check_int("seed", seed, -2 ** 63)
    return (seed * 1_000_003 + zlib.crc32("\x00".join(texts).encode("utf-8"))) % (2 ** 63)


def diffusion_logits_fn(model, device: torch.device, block_length: Optional[int] = None) -> LogitsFn:
    """``ids [b, T] -> float32 logits [b, T, V]`` of an :mod:`infogain.models` diffusion LM on
    ``device``; ``block_length``: the attention's block of a model whose blocks count from position 0
    (None: a model without that argument)."""
    if block_length is not None:
        check_positive_int("block_length", block_length)

    def logits(ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(device)
        return (model(ids) if block_length is None else model(ids, block_length=block_length)).float()

    return logits


def mc_loglikelihood(logits_fn: LogitsFn, context_ids: List[int], continuation_ids: List[int], mask_id: int,
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


def blockwise_loglikelihood(logits_fn: LogitsFn, context_ids: List[int], continuation_ids: List[int],
                            mask_id: int, block_length: int, num_samples: int, batch_size: int,
                            generator: torch.Generator) -> float:
    """``log p(continuation | context)`` of a block-causal diffusion LM whose blocks of ``block_length``
    count from position 0: the sum over the blocks the continuation covers of :func:`mc_loglikelihood`
    of that block's tokens given everything before them (one canvas per block, ending with it), the
    ``num_samples`` shared out among the blocks (at least one each)."""
    _check_ids(context_ids, continuation_ids)
    for name, value in (("block_length", block_length), ("num_samples", num_samples), ("batch_size", batch_size)):
        check_positive_int(name, value)
    start, end = len(context_ids), len(context_ids) + len(continuation_ids)
    # Block b of the continuation: canvas columns [max(start, b * block), min(end, (b + 1) * block)).
    bounds = [(max(start, b * block_length), min(end, (b + 1) * block_length))
              for b in range(start // block_length, -(-end // block_length))]
    per_block = max(1, -(-num_samples // len(bounds)))
    whole = list(context_ids) + list(continuation_ids)
    return sum(mc_loglikelihood(logits_fn, whole[:lo], whole[lo:hi], mask_id, per_block, batch_size, generator)
               for lo, hi in bounds)


def greedy_matches(logits_fn: LogitsFn, context_ids: List[int], continuation_ids: List[int], mask_id: int,
                   block_length: Optional[int] = None) -> bool:
    """Whether confidence-first greedy unmasking (one token per forward, the mask token never chosen)
    gives the continuation. ``block_length`` (blocks counted from position 0): only the first block that
    still has masks is decoded."""
    _check_ids(context_ids, continuation_ids)
    if block_length is not None:
        check_positive_int("block_length", block_length)
    ids = torch.tensor([list(context_ids) + [mask_id] * len(continuation_ids)])
    start = len(context_ids)
    columns = torch.arange(start, start + len(continuation_ids))
    for _ in continuation_ids:
        logits = logits_fn(ids)[0, start:].cpu()
        logits[:, mask_id] = float("-inf")
        confidence, tokens = torch.softmax(logits, dim=-1).max(dim=-1)
        masked = ids[0, start:] == mask_id
        if block_length is not None:
            masked &= columns // block_length == int(columns[masked][0]) // block_length
        confidence[~masked] = -1.0
        position = int(confidence.argmax())
        ids[0, start + position] = tokens[position]
    return ids[0, start:].tolist() == list(continuation_ids)


def diffusion_score(model, device: torch.device, context_ids: List[int], continuation_ids: List[int], *,
                    block_length: Optional[int], num_samples: int, batch_size: int, generator: torch.Generator,
                    greedy_check: bool = True) -> Tuple[float, bool]:
    """``(estimate of log p(continuation | context), is_greedy)`` of an :mod:`infogain.models` diffusion
    LM on ``device``: :func:`blockwise_loglikelihood` with the attention's ``block_length`` for a model
    whose blocks count from position 0, else :func:`mc_loglikelihood`; ``is_greedy`` from
    :func:`greedy_matches` (False without ``greedy_check``). A block-causal model without
    ``block_length`` (SDAR, SDAR-MoE: blocks counted from the generation's start) is refused."""
    _check_ids(context_ids, continuation_ids)
    config = model.config
    if config.block_causal and block_length is None:
        raise ValueError(f"loglikelihood is not implemented for block-causal diffusion models whose blocks "
                         f"count from the generation's start (SDAR, SDAR-MoE; this model: {config.arch}): a "
                         "block's likelihood would depend on where the generation starts, which a scored "
                         "continuation does not fix; use generate_until tasks")
    logits_fn = diffusion_logits_fn(model, device, block_length)
    mask_id = config.mask_token_id
    if block_length is not None:
        estimate = blockwise_loglikelihood(logits_fn, context_ids, continuation_ids, mask_id, block_length,
                                           num_samples, batch_size, generator)
    else:
        estimate = mc_loglikelihood(logits_fn, context_ids, continuation_ids, mask_id, num_samples, batch_size,
                                    generator)
    greedy = bool(greedy_check) and greedy_matches(logits_fn, context_ids, continuation_ids, mask_id, block_length)
    return estimate, greedy


def causal_score(model, device: torch.device, context_ids: List[int], continuation_ids: List[int]
                 ) -> Tuple[float, bool]:
    """``(log p(continuation | context), whether every continuation token is the arg-max)`` of a
    transformers causal LM, from one forward."""
    _check_ids(context_ids, continuation_ids)
    ids = torch.tensor([list(context_ids) + list(continuation_ids[:-1])], device=device)
    logits = model(input_ids=ids).logits[0, len(context_ids) - 1:].float()
    target = torch.tensor(continuation_ids, device=device)
    score = torch.log_softmax(logits, dim=-1).gather(1, target[:, None]).sum().item()
    return score, bool((logits.argmax(dim=-1) == target).all())
