"""The rules of LLaDA2.x's own decoders (:mod:`infogain.samplers.llada2`), each a small function: the
official canvas' tail, the per-step quota schedule, the options and their checks, and one step's
draw and unmask choice. The decoders' batched loops are in :mod:`infogain.samplers.llada2`."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import List, Optional, Sequence, Tuple

import torch

from infogain_kernels import token_stats
from infogain_kernels._validation import (check_bool, check_int, check_nonnegative, check_positive_int,
                                          check_temperature, check_top_p)


# ------------------------------------------------------------------------------------------- canvas

def extend_to_block_end(canvas: torch.Tensor, attention: torch.Tensor, gen_starts: Sequence[int], gen_length: int,
                        block_length: int, mask_id: int) -> List[int]:
    """Give each row of a :func:`~infogain.samplers.prompts.build_block_aligned_canvas` canvas the
    masks of the official LLaDA2 loops past its generation: up to the end of the block that holds its
    last generated position (:func:`row_end`). Those positions are decoded with the block and attended
    by it (the official canvas is whole blocks), though not part of the answer. In place on
    ``canvas`` (int64 [B, T]) and ``attention`` (bool [B, T]); returns each row's :func:`row_end`."""
    ends = [row_end(start, gen_length, block_length) for start in gen_starts]
    if max(ends) > canvas.shape[1]:
        raise ValueError(f"canvas has {canvas.shape[1]} columns, fewer than the rows' block ends {ends}")
    for row, (start, end) in enumerate(zip(gen_starts, ends)):
        canvas[row, start + gen_length:end] = mask_id
        attention[row, start + gen_length:end] = True
    return ends


def row_end(gen_start: int, gen_length: int, block_length: int) -> int:
    """The end (exclusive) of a row's decoded region on a block-aligned canvas (left padding by whole
    blocks): the end of the block holding its last generated position ``gen_start + gen_length - 1``."""
    return -(-(gen_start + gen_length) // block_length) * block_length


def transfer_schedule(block_length: int, steps: int) -> List[int]:
    """LLaDA2.0's per-step quotas within a block: ``block_length`` spread evenly over ``steps``
    steps, the remainder one each to the first steps (zeros when ``steps > block_length``)."""
    check_positive_int("block_length", block_length)
    check_positive_int("steps", steps)
    base, extra = divmod(block_length, steps)
    return [base + (1 if s < extra else 0) for s in range(steps)]


# ------------------------------------------------------------------------------------------- options

def _check_unit(name: str, value) -> float:
    value = check_nonnegative(name, value)
    if value > 1:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


@dataclass
class _DecodeOptions:
    """Options both decoders share (see the samplers' ``generate``)."""

    gen_length: int = 256
    block_length: int = 32
    threshold: float = 0.95
    temperature: float = 0.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    eos_early_stop: bool = False
    seed: Optional[int] = None
    chat: bool = False
    record: bool = False

    def validate(self):
        check_positive_int("gen_length", self.gen_length)
        check_positive_int("block_length", self.block_length)
        _check_unit("threshold", self.threshold)
        check_temperature("temperature", self.temperature)
        if self.top_k is not None:
            check_int("top_k", self.top_k, 0)   # 0: no top-k filter, as in the official code
        if self.top_p is not None:
            check_top_p("top_p", self.top_p)
        if self.seed is not None:
            check_int("seed", self.seed, -2 ** 63)
        for name in ("eos_early_stop", "chat", "record"):
            check_bool(name, getattr(self, name))
        return self


@dataclass
class LLaDA2ThresholdOptions(_DecodeOptions):
    """Options of :meth:`LLaDA2ThresholdSampler.generate` (official defaults)."""

    steps: int = 32
    minimal_topk: int = 1

    def validate(self):
        super().validate()
        check_positive_int("steps", self.steps)
        check_positive_int("minimal_topk", self.minimal_topk)
        if self.minimal_topk > self.gen_length:
            # The official loop caps the steps at gen_length // minimal_topk; 0 steps decode nothing.
            raise ValueError(f"minimal_topk ({self.minimal_topk}) must be <= gen_length ({self.gen_length}): "
                             f"the steps per block are capped at gen_length // minimal_topk")
        return self


@dataclass
class LLaDA21EditOptions(_DecodeOptions):
    """Options of :meth:`LLaDA21EditSampler.generate` (official defaults; SGLang's
    ``JointThreshold`` defaults to threshold 0.5, editing_threshold 0, max_post_steps 16)."""

    editing_threshold: float = 0.9
    max_post_steps: int = 16
    num_to_transfer: int = 1
    penalty_lambda: float = 0.0

    def validate(self):
        super().validate()
        _check_unit("editing_threshold", self.editing_threshold)
        check_int("max_post_steps", self.max_post_steps, 0)
        check_positive_int("num_to_transfer", self.num_to_transfer)
        value = check_nonnegative("penalty_lambda", self.penalty_lambda)
        if math.isinf(value):
            raise ValueError(f"penalty_lambda must be finite, got {value}")
        return self


def _options(cls, values: dict):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))}; options: {', '.join(sorted(known))}")
    return cls(**values).validate()


# ---------------------------------------------------------------------------------------- one step

def filter_top_k_top_p(logits: torch.Tensor, top_k: Optional[int], top_p: Optional[float]) -> torch.Tensor:
    """``logits [..., V]`` with the tokens outside the top-k / nucleus set to -inf (the official
    filters: top-k keeps every logit >= the k-th largest; the nucleus keeps, in descending order,
    each token whose preceding cumulative probability is <= ``top_p``, so at least one).
    ``top_k`` None or 0 and ``top_p`` None or 1 filter nothing."""
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = torch.zeros_like(cumulative, dtype=torch.bool)
        drop[..., 1:] = cumulative[..., :-1] > top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return logits


def sample_tokens(logits: torch.Tensor, read: torch.Tensor, temperature: float, top_k: Optional[int],
                  top_p: Optional[float], generator: Optional[torch.Generator]
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One token per position of ``logits [A, L, V]`` and its probability, as the official decoders
    draw them, plus the entropy of ``softmax(logits)`` (for the run statistics).

    ``read`` (bool [A, L]) marks the positions the caller uses; at temperature 0 the others are not
    read (token -1, probability 0). Temperature 0: the arg-max and its softmax probability (one
    :func:`~infogain_kernels.token_stats` pass). Otherwise: a draw from ``softmax(filter(logits /
    temperature))`` (:func:`filter_top_k_top_p`) and the probability of the drawn token under that
    distribution. Returns int64, float32, float32 ``[A, L]``.
    """
    entropy, top1_prob, top1_id, _ = token_stats(logits, read, check_values=False)
    if temperature == 0:
        return top1_id, top1_prob, entropy
    scaled = logits.float()
    if temperature != 1.0:
        scaled = scaled / temperature
    probs = filter_top_k_top_p(scaled, top_k, top_p).softmax(dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    tokens = torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
    return tokens, probs.gather(-1, tokens[..., None])[..., 0], entropy


def unmask_choice(confidence: torch.Tensor, masked: torch.Tensor, threshold: float, quota: int
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The masked positions a step commits, per row: those with ``confidence`` above ``threshold``
    when there are at least ``quota`` of them, else the ``min(quota, masks)`` most confident masks.

    Args:
        confidence: float [A, L], the chosen tokens' probabilities.
        masked: bool [A, L], the positions still masked.
    Returns:
        ``(commit, by_threshold)``: bool [A, L] and bool [A] (the row took the threshold branch).
    """
    confidence = confidence.masked_fill(~masked, float("-inf"))
    above = (confidence > threshold) & masked
    by_threshold = above.sum(dim=1) >= quota
    k = min(quota, confidence.shape[1])
    top = torch.zeros_like(masked)
    if k > 0:
        # Masks outrank every unmasked position (-inf), so the first min(k, masks) are masks.
        top.scatter_(1, torch.topk(confidence, k, dim=1).indices, True)
        top &= masked
    return torch.where(by_threshold[:, None], above, top), by_threshold
