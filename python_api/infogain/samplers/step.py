"""The pure pieces of one denoising step, shared by the driver's eager step
(:meth:`infogain.samplers.run._Run._step`) and the CUDA-graph step
(:func:`infogain.samplers.graph_step.device_step`): the statistics of the block and the
strategy's decision with the driver's last-step fill (:func:`decide`), the statistics reused from
the previous step's fused lookahead (:func:`reused_statistics`), the EOS fill
(:func:`fill_after_eos`) and the step's one packed read-back (:func:`read_back`).

Nothing here reads a tensor back to the host except :func:`read_back`."""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch

from infogain_kernels import step_stats
from infogain_kernels.step_stats import SKIPPED_ENTROPY, SKIPPED_ID, SKIPPED_PROB, step_stats_unchecked

from .._device import host_ints_to_device
from ..stats import KIND_FILL, KIND_LOOKAHEAD
from .strategies import StepDecision, StepState, Strategy

_SKIPPED = (SKIPPED_ENTROPY, SKIPPED_PROB, SKIPPED_ID, SKIPPED_PROB)
_BAD_LOOKAHEAD = "the model produced NaN / all -inf logits in the lookahead forward of block {block} step {step}"
_BAD_BLOCK = "the model produced NaN / all -inf logits at block {block} step {step}"


class Reused(NamedTuple):
    """Block statistics kept from the previous step's fused lookahead: ``stats`` (entropy,
    top1_prob, top1_id, top2_prob, each [B, L]) and ``rows``, host flags of the rows they hold.
    ``exact``: known on the host that every row holds them and that no EOS fill ran since they
    were computed, so they already hold the fill values exactly where the block is not masked."""

    stats: Tuple[torch.Tensor, ...]
    rows: List[bool]
    exact: bool = False


class Decided(NamedTuple):
    """What :func:`decide` returns: the block's tokens before the step ``block_ids`` int64 [B, L],
    the statistics' ``entropy`` float32 [B, L], ``kind`` int64 [B]
    (the driver's last-step fill applied), ``commit`` bool [B, L] (the positions committed now:
    none for lookahead rows, whose winner is committed after the lookahead), the strategy's
    ``decision`` and the ``state`` it decided from."""

    block_ids: torch.Tensor
    entropy: torch.Tensor
    kind: torch.Tensor
    commit: torch.Tensor
    decision: StepDecision
    state: StepState


def masks_after_first_eos(ids: torch.Tensor, mask_id: int, eos_id: int) -> torch.Tensor:
    """bool [R, W]: the masks of ``ids`` [R, W] that follow the first EOS of their row (the EOS fill)."""
    return ((ids == eos_id).cumsum(dim=1) > 0) & (ids == mask_id)


def fill_after_eos(region: torch.Tensor, mask_id: int, eos_id: int) -> torch.Tensor:
    """Fill, in place, the masks of ``region`` [R, W] after each row's first EOS with EOS; returns
    int64 [R], the masks filled per row."""
    filled = masks_after_first_eos(region, mask_id, eos_id)
    region.masked_fill_(filled, eos_id)
    return filled.sum(dim=1)


def reused_statistics(reused: Reused, block_logits: Optional[torch.Tensor], masked: torch.Tensor,
                      num_samples: int) -> Tuple[torch.Tensor, ...]:
    """``step_stats``' outputs at temperature 0 where some rows' statistics came from the fused
    lookahead (``reused``); the other rows' from their block logits."""
    stats = reused.stats
    if not all(reused.rows):
        fresh = host_ints_to_device([int(f) for f in reused.rows], masked.device).bool()[:, None]
        # The other rows' statistics; the reused rows' logits are stale and not read. No argument
        # checks: the run's first step checked logits of this kind (see decide).
        computed = step_stats_unchecked(block_logits, masked & ~fresh, 0, 0.0, None)[:4]
        stats = tuple(torch.where(fresh, kept, other) for kept, other in zip(stats, computed))
    if reused.exact:
        entropy, top1_prob, top1_id, top2_prob = stats
    else:
        # Positions filled since (the EOS fill) hold step_stats' fill values.
        entropy, top1_prob, top1_id, top2_prob = (torch.where(masked, value, fill)
                                                  for value, fill in zip(stats, _SKIPPED))
    # At T = 0 every draw is the arg-max.
    shape = (*top1_id.shape, num_samples)
    tokens, token_probs = top1_id[..., None].expand(shape), top1_prob[..., None].expand(shape)
    return entropy, top1_prob, top1_id, top2_prob, tokens, token_probs


def _statistics(strategy: Strategy, options, block_logits: Optional[torch.Tensor], masked: torch.Tensor,
                generator: Optional[torch.Generator], reused: Optional[Reused], check_arguments: bool):
    """``(logits, stats)``: the logits the strategy may read (None where the statistics were
    ``reused``: stale for those rows) and ``step_stats``' six outputs for the block."""
    num_samples = strategy.num_token_samples(options)
    if reused is not None:
        return None, reused_statistics(reused, block_logits, masked, num_samples)
    # One read of the block logits for the statistics and the token draws (none at T = 0).
    if check_arguments:
        return block_logits, step_stats(block_logits, masked, num_samples=num_samples, temperature=options.temperature,
                                        generator=generator, check_values=False)
    return block_logits, step_stats_unchecked(block_logits, masked, num_samples, options.temperature, generator)


def decide(strategy: Strategy, options, block_logits: Optional[torch.Tensor], block_ids: torch.Tensor, mask_id: int,
           quota: torch.Tensor, *, last: bool, max_quota: int, generator: Optional[torch.Generator],
           reused: Optional[Reused] = None, defer_candidates: bool = False, check_arguments: bool = True) -> Decided:
    """The step's device work up to the strategy's decision (no host sync): the block's statistics
    and token draws (one read of ``block_logits`` [B, L, V], or ``reused``), the driver's
    last-step fill (``last``: the block's last step) and the strategy's decision.

    ``block_ids`` int64 [B, L]: the block's tokens; ``quota`` int64 [B] and its host bound
    ``max_quota``: the step's schedule; ``defer_candidates``: see :class:`StepState`;
    ``check_arguments=False`` skips ``step_stats``' argument checks (a run checks them at its first
    step; later steps pass tensors of the same kinds, and they cost as much as the op on a small block)."""
    masked = block_ids == mask_id
    masked_count = masked.sum(dim=1)
    logits, (entropy, top1_prob, top1_id, top2_prob, tokens, token_probs) = _statistics(
        strategy, options, block_logits, masked, generator, reused, check_arguments)
    has_masks = masked_count > 0
    if not strategy.scheduled:
        fill = None
    elif last:
        fill = has_masks
    else:
        fill = has_masks & (quota >= masked_count)
    state = StepState(logits=logits, masked=masked, quota=quota,
                      active=has_masks if fill is None else has_masks & ~fill, entropy=entropy,
                      top1_prob=top1_prob, top1_id=top1_id, top2_prob=top2_prob, tokens=tokens,
                      token_probs=token_probs, options=options, max_quota=max_quota, generator=generator,
                      may_lookahead=not (last and strategy.scheduled), defer_candidates=defer_candidates)
    decision = strategy.decide(state)
    if fill is None:
        return Decided(block_ids, entropy, decision.kind, decision.commit, decision, state)
    kind = torch.where(fill, KIND_FILL, decision.kind)
    commit = torch.where(fill[:, None], masked, decision.commit)
    return Decided(block_ids, entropy, kind, commit, decision, state)


class HostDecided(NamedTuple):
    """What :func:`decide_on_host` returns: ``decided`` (:class:`Decided`'s device tensors, its
    ``decision.tokens`` the block after the step's commits), and the host lists the driver needs:
    ``kinds`` and ``quota`` [B] and ``block_rows`` [B][L], the block after the commits; at temperature
    0 also ``top1_ids`` [B][L], the arg-max ids read back (every candidate's tokens then), else None."""

    decided: Decided
    kinds: List[int]
    quota: List[int]
    block_rows: List[List[int]]
    top1_ids: Optional[List[List[int]]] = None


def decide_on_host(strategy: Strategy, options, block_logits: Optional[torch.Tensor], block_ids: torch.Tensor,
                   mask_id: int, quota: torch.Tensor, quota_host: Sequence[int],
                   lookahead_total: Optional[torch.Tensor],
                   *, last: bool, max_quota: int, generator: Optional[torch.Generator], reused: Optional[Reused] = None,
                   check_arguments: bool = True, block: int, step: int) -> HostDecided:
    """:func:`decide` and :func:`read_back` of a strategy that decides on the host
    (``strategy.decides_on_host``), for a driver whose reads cost nothing (the CPU): the block's
    statistics on the device, then ONE read of the block's tokens, arg-max ids and probabilities
    (x0's too at T > 0), the NaN checks of the step and of the previous lookahead
    (``lookahead_total``, the sum of its objectives: finite exactly when they all are), after which the decision (and the driver's last-step fill) is made on host
    lists, with the very comparisons :func:`decide` makes on the device. Candidates are always
    deferred (``decision.candidates_deferred``). ``quota_host``: ``quota`` as host ints.

    Raises ValueError as :func:`read_back` does on a flagged forward."""
    batch, width = block_ids.shape
    masked = block_ids == mask_id
    logits, (entropy, top1_prob, top1_id, top2_prob, tokens, token_probs) = _statistics(
        strategy, options, block_logits, masked, generator, reused, check_arguments)
    sampled = tokens.shape[-1] > 0
    # One packed read, in float64 (exact for the ids and the float32 values). The entropies' sum is
    # finite exactly when they all are (each is at most log V).
    packed = [block_ids.reshape(-1), top1_id.reshape(-1), top1_prob.reshape(-1).double(), entropy.sum().reshape(1)]
    if sampled:
        packed += [tokens[..., 0].reshape(-1), token_probs[..., 0].reshape(-1).double()]
    if lookahead_total is not None:
        packed.append(lookahead_total.reshape(1))   # promoted to float64 by the cat
    host = torch.cat(packed).tolist()
    cells = batch * width
    if lookahead_total is not None and not math.isfinite(host[-1]):
        raise ValueError(_BAD_LOOKAHEAD.format(block=block, step=step - 1))
    if not math.isfinite(host[3 * cells]):
        raise ValueError(_BAD_BLOCK.format(block=block, step=step))
    rows = [[int(v) for v in host[r * width:(r + 1) * width]] for r in range(batch)]
    top1 = [[int(v) for v in host[cells + r * width:cells + (r + 1) * width]] for r in range(batch)]
    prob = [host[2 * cells + r * width:2 * cells + (r + 1) * width] for r in range(batch)]
    if sampled:
        first = 3 * cells + 1
        x0 = [host[first + r * width:first + (r + 1) * width] for r in range(batch)]
        x0_prob = [host[first + cells + r * width:first + cells + (r + 1) * width] for r in range(batch)]
    else:
        x0, x0_prob = top1, prob
    masked_rows = [[p for p, token in enumerate(row) if token == mask_id] for row in rows]
    # The driver's last-step fill (every masked position, tokens x0): the block's last step, or a
    # quota that covers the row's masks. The strategy decides for the other rows with masks.
    fill = [bool(m) and (last or q >= len(m)) for m, q in zip(masked_rows, quota_host)]
    kinds, positions, bypass, deferred = strategy.decide_rows(
        [[] if f else m for m, f in zip(masked_rows, fill)], quota_host, prob, x0_prob, options,
        may_lookahead=not last)
    after, commit = [], []
    for r in range(batch):
        row = list(rows[r])
        if fill[r]:
            kinds[r], positions[r] = KIND_FILL, masked_rows[r]
        source = top1[r] if bypass[r] else x0[r]
        flags = [0] * width
        for p in positions[r]:
            row[p] = int(source[p])
            flags[p] = 1
        after.append(row)
        commit.append(flags)
    # Every tensor the driver needs, in one host-to-device copy: [kind | active | commit | block
    # after], each a view (or one cast) of it.
    active = [int(bool(m) and not f) for m, f in zip(masked_rows, fill)]
    flat = kinds + active
    for flags in commit:
        flat += flags
    for row in after:
        flat += row
    values = host_ints_to_device(flat, block_ids.device)
    cells_start = 2 * batch
    kind = values[:batch]
    commit_tensor = values[cells_start:cells_start + cells].view(batch, width).bool()
    decision = StepDecision(kind=kind, commit=commit_tensor, tokens=values[cells_start + cells:].view(batch, width),
                            candidates_deferred=deferred)
    state = StepState(logits=logits, masked=masked, quota=quota, active=values[batch:2 * batch].bool(),
                      entropy=entropy, top1_prob=top1_prob, top1_id=top1_id, top2_prob=top2_prob, tokens=tokens,
                      token_probs=token_probs, options=options, max_quota=max_quota, generator=generator,
                      may_lookahead=not last, defer_candidates=True)
    decided = Decided(block_ids, entropy, kind, commit_tensor, decision, state)
    return HostDecided(decided, kinds, list(quota_host), after, top1 if not sampled else None)


def host_masks_left(kinds: Sequence[int], quota: Sequence[int], block_rows: Sequence[List[int]], mask_id: int,
                    eos_id: Optional[int]) -> List[int]:
    """The masks each row's block holds after the step, from its tokens after the commits read back
    before or after their EOS fill (``block_rows``, host [B][L]; ``kinds`` and ``quota`` host [B]): a
    row keeps the masks before the first EOS of its block (the fill takes the others; an EOS of an
    earlier block left no mask in this one); a lookahead row, whose block is unchanged yet, its masks
    minus the quota its winner will commit."""
    left = []
    for kind, row_quota, row in zip(kinds, quota, block_rows):
        if kind == KIND_LOOKAHEAD:
            left.append(row.count(mask_id) - row_quota)
            continue
        if eos_id is not None and eos_id in row:
            row = row[:row.index(eos_id)]
        left.append(row.count(mask_id))
    return left


def read_back(kind: torch.Tensor, quota: torch.Tensor, entropy: torch.Tensor, lookahead_total: Optional[torch.Tensor],
              keep: Optional[torch.Tensor], block_ids: torch.Tensor, *, block: int, step: int
              ) -> Tuple[List[int], List[int], List[int], List[List[int]]]:
    """The step's one host read-back, of one packed tensor: the rows' kinds and quotas (``kind``,
    ``quota`` [B]), a NaN / all -inf flag of the block logits (non-finite ``entropy``), the previous
    lookahead's objectives summed, ``lookahead_total`` (when it ran; finite exactly when they all are), the kept mask of the candidates ``keep`` [N, B]
    (when they were built) and the block's tokens ``block_ids`` [B, L].

    Returns host lists ``(kinds, quota, keep, block_rows)`` (``keep`` flattened, empty without
    candidates; ``block_rows`` [B][L]); raises ValueError on a flagged forward."""
    batch, width = block_ids.shape
    # A NaN / all -inf row of the block's logits at a masked position: non-finite entropy.
    packed = [kind, quota, torch.isfinite(entropy).all()[None]]
    if lookahead_total is not None:
        packed.append(~torch.isfinite(lookahead_total)[None])
    if keep is not None:
        packed.append(keep.reshape(-1))
    packed.append(block_ids.reshape(-1))
    host = torch.cat(packed).tolist()
    if lookahead_total is not None and host[2 * batch + 1]:
        raise ValueError(_BAD_LOOKAHEAD.format(block=block, step=step - 1))
    if not host[2 * batch]:
        raise ValueError(_BAD_BLOCK.format(block=block, step=step))
    tokens_start = len(host) - batch * width
    keep_host = host[2 * batch + 1 + (lookahead_total is not None):tokens_start]
    block_rows = [host[tokens_start + r * width:tokens_start + (r + 1) * width] for r in range(batch)]
    return host[:batch], host[batch:2 * batch], keep_host, block_rows


def kept_pairs(keep: Sequence[int], batch: int) -> List[Tuple[int, int]]:
    """``(candidate, row)`` of each kept candidate, candidate-major, from the flattened kept mask."""
    return [(n, b) for n in range(len(keep) // batch) for b in range(batch) if keep[n * batch + b]]
