"""The pieces of the Info-Gain / LookUM lookahead that the driver (:meth:`_Run._lookahead
<infogain.samplers.run._Run._lookahead>`) puts around its one batched forward: the batch of kept
candidates, their windows per cache mode, the objective J of each candidate (on logits, or fused
with the LM head on hidden states), each row's winner, and where the winner's block statistics or
logits come from.

Shapes: N candidates, B rows, L block length, R kept candidates (the batch), W window width,
V vocabulary, D hidden size."""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch

from infogain_kernels import lm_head_entropy, lookahead_objective
from infogain_kernels.lm_head_entropy import lm_head_entropy_unchecked

from .._device import host_ints_to_device
from .step import masks_after_first_eos
from .strategies import Candidates


class CandidateBatch(NamedTuple):
    """The kept candidates of the lookahead rows, one batch row each (candidate-major).

    ``pairs``: host ``(candidate, row)`` of each; ``cand_index``, ``row_index`` int64 [R] the same on
    the device; ``rows`` int64 [K] the lookahead rows; ``commit`` bool [R, L] and ``block`` int64
    [R, L]: each candidate's commit and the block it produces."""

    pairs: List[Tuple[int, int]]
    cand_index: torch.Tensor
    row_index: torch.Tensor
    rows: torch.Tensor
    commit: torch.Tensor
    block: torch.Tensor


class Outcome(NamedTuple):
    """One lookahead: the winners' ``rows``, ``commit`` and ``tokens`` [K, L], each row's ``winner``
    (its batch row, int64 [K]; its candidate is ``pairs[winner][0]``), and, for the trace, the
    batch's ``pairs``, ``objective`` and ``h_next`` [R] and its ``cand_commit`` / ``cand_block`` [R, L]."""

    rows: torch.Tensor
    commit: torch.Tensor
    tokens: torch.Tensor
    winner: torch.Tensor
    pairs: List[Tuple[int, int]]
    objective: torch.Tensor
    h_next: torch.Tensor
    cand_commit: torch.Tensor
    cand_block: torch.Tensor


class BuiltCandidates(NamedTuple):
    """The lookahead's candidates already built into their ``batch`` (on the host, where reads are
    free): their ``cost`` C float32 [R] (None for lookum) and ``num_candidates`` N."""

    batch: CandidateBatch
    cost: Optional[torch.Tensor]
    num_candidates: int


def candidate_batch(candidates: Candidates, pairs: List[Tuple[int, int]], lookahead_rows: Sequence[int],
                    block: torch.Tensor) -> CandidateBatch:
    """The batch of the kept candidates ``pairs`` of ``lookahead_rows`` (host ints); ``block`` int64
    [B, L] the block's tokens now. One host-to-device copy, no read-back."""
    count = len(pairs)
    indices = host_ints_to_device([n for n, _ in pairs] + [b for _, b in pairs] + list(lookahead_rows),
                                  block.device)
    cand_index, row_index, rows = indices[:count], indices[count:2 * count], indices[2 * count:]
    commit = candidates.commit[cand_index, row_index]
    block = torch.where(commit, candidates.tokens[cand_index, row_index], block[row_index])
    return CandidateBatch(pairs, cand_index, row_index, rows, commit, block)


def host_candidate_batch(pairs: List[Tuple[int, int]], lookahead_rows: Sequence[int],
                         commit: Sequence[Sequence[Sequence[bool]]], tokens: Sequence[Sequence[Sequence[int]]],
                         block: Sequence[Sequence[int]], device: torch.device) -> CandidateBatch:
    """:func:`candidate_batch` built from host lists, where reads are free (the CPU): the
    candidates' ``commit`` [N][B][L] and ``tokens`` [N][B][L] and the ``block`` [B][L] now. One
    host-to-device copy, no device indexing."""
    count = len(pairs)
    values = [n for n, _ in pairs] + [b for _, b in pairs] + list(lookahead_rows)
    rows_end = len(values)
    for n, b in pairs:
        values += commit[n][b]
    commit_end = len(values)
    for flags, (n, b) in zip((commit[n][b] for n, b in pairs), pairs):
        values += [token if flag else current for flag, token, current in zip(flags, tokens[n][b], block[b])]
    packed = host_ints_to_device(values, device)
    length = len(block[0])
    return CandidateBatch(pairs, packed[:count], packed[count:2 * count], packed[2 * count:rows_end],
                          packed[rows_end:commit_end].view(count, length).bool(),
                          packed[commit_end:].view(count, length))


def candidate_windows(mode: str, canvas: torch.Tensor, batch: CandidateBatch, start: int,
                      fill_from: Optional[int], mask_id: int, eos_id: Optional[int]) -> Tuple[torch.Tensor, int]:
    """The window each candidate is forwarded as, and the block's column in it: the whole canvas row
    for ``none``, the block and everything after it for ``prefix``, the block alone for ``dual``
    and block-causal caches. With ``eos_id`` the window holds the state the commit produces, its
    EOS fill (from the window column ``fill_from``) included."""
    length = batch.block.shape[1]
    # Every window below is a fresh tensor (advanced indexing copies): it can be written in place.
    if mode == "none":
        window = canvas[batch.row_index]
        window[:, start:start + length] = batch.block
        offset = start
    elif mode == "prefix":
        window = canvas[batch.row_index, start:]
        window[:, :length] = batch.block
        offset = 0
    else:
        window = batch.block.clone() if eos_id is not None else batch.block
        offset = 0
    if eos_id is not None:
        region = window[:, fill_from:]
        region.masked_fill_(masks_after_first_eos(region, mask_id, eos_id), eos_id)
    return window, offset


def objective(read: torch.Tensor, remaining: torch.Tensor, cost: Optional[torch.Tensor], variant: str,
              head: Optional[Tuple[torch.Tensor, torch.Tensor]], with_top: bool, check_arguments: bool = True):
    """J and H_next [R] of each candidate from ``read``: its logits [R, W, V], or with ``head``
    (the LM head's weight [V, D] and float32 bias [V]) its hidden states [R, W, D] (the head is
    fused: no [R, W, V] logits). Returns ``(objective, h_next, fused)``, ``fused`` the op's full
    result (its block statistics with ``with_top``) or None.

    ``check_arguments=False``: the fused head skips its argument checks (a run checks them at its
    first lookahead; later ones pass tensors of the same kinds)."""
    if head is not None:
        fused = fused_head(read, head, remaining, cost, variant, with_top, check_arguments)
        return fused.objective, fused.h_next, fused
    value, h_next = lookahead_objective(read, remaining, cost, variant=variant, check_values=False)
    return value, h_next, None


def fused_head(hidden: torch.Tensor, head: Tuple[torch.Tensor, torch.Tensor], remaining: torch.Tensor,
               cost: Optional[torch.Tensor], variant: str, with_top: bool, check_arguments: bool):
    """The model's LM head on the candidates' hidden states [R, W, D], fused with what the
    lookahead reads of its logits (``lm_head_entropy``: the entropy, and with ``with_top`` the top
    probabilities, at the ``remaining`` positions, and each candidate's J and H_next), no logits
    materialised. The benchmark counts this call as model time (``infogain.apps.bench_timing``):
    it stands where the model's own head would run."""
    weight, bias = head
    if check_arguments:
        return lm_head_entropy(hidden, weight, bias, remaining, cost=cost, variant=variant, with_top=with_top,
                               check_values=False)
    return lm_head_entropy_unchecked(hidden, weight, bias, remaining, cost=cost, variant=variant, with_top=with_top)


def winners(objective: torch.Tensor, batch: CandidateBatch, num_candidates: int, batch_size: int) -> torch.Tensor:
    """Each lookahead row's best candidate by J (ties: the lower candidate index), as its row in the
    batch: int64 [K]."""
    if batch.rows.shape[0] == 1:
        # One row looks ahead: the batch holds its candidates in increasing order, and argmax takes
        # the first of equal maxima (the lower index), so the batch's argmax is the winner.
        return objective.argmax(dim=0, keepdim=True)
    device = objective.device
    scores = torch.full((num_candidates, batch_size), float("-inf"), device=device)
    scores[batch.cand_index, batch.row_index] = objective
    slot = torch.full((num_candidates, batch_size), -1, dtype=torch.long, device=device)
    slot[batch.cand_index, batch.row_index] = torch.arange(len(batch.pairs), device=device)
    return slot[scores.argmax(dim=0)[batch.rows], batch.rows]


def still_masked_positions(remaining_block: torch.Tensor, width: int) -> torch.Tensor:
    """int64 [K, width]: per row, its still-masked block positions first (in order), then others
    (rows with fewer masks repeat unmasked ones); ``remaining_block`` bool [K, L]."""
    return torch.argsort((~remaining_block).byte(), dim=1, stable=True)[:, :width]
