"""The per-step trace of ``generate(..., record=True)``: one dict per step with, per row, the kind of
its commit, the committed positions and tokens and, for lookahead rows, every evaluated candidate
(its cost C, H_next and J) and the winner. Recording reads tensors back (tests and debugging only)."""
from __future__ import annotations

from typing import List, Optional

import torch

from ..stats import COMMIT_KINDS, KIND_LOOKAHEAD, KIND_NONE
from .lookahead import Outcome
from .strategies import Candidates


def step_record(block: int, step: int, start: int, kinds: List[int], commit: torch.Tensor, block_ids: torch.Tensor,
                lookahead: Optional[Outcome], candidates: Optional[Candidates]) -> dict:
    """The trace entry of one step: ``kinds`` host [B], ``commit`` bool [B, L] the committed
    positions, ``block_ids`` int64 [B, L] the block after the step, ``start`` its first column;
    ``lookahead`` and ``candidates`` when some row looked ahead."""
    block_ids = block_ids.tolist()
    commit = commit.tolist()
    by_row = {}
    if lookahead is not None:
        objective, h_next = lookahead.objective.tolist(), lookahead.h_next.tolist()
        cand_commit, cand_block = lookahead.cand_commit.tolist(), lookahead.cand_block.tolist()
        costs = candidates.cost.tolist()
        for i, (n, b) in enumerate(lookahead.pairs):
            positions = [start + p for p, c in enumerate(cand_commit[i]) if c]
            by_row.setdefault(b, []).append({
                "candidate": n, "positions": positions,
                "tokens": [cand_block[i][p - start] for p in positions],
                "cost": costs[n][b], "h_next": h_next[i], "objective": objective[i]})
        best = {row: lookahead.pairs[w][0] for row, w in zip(lookahead.rows.tolist(), lookahead.winner.tolist())}
    rows = []
    for r, kind in enumerate(kinds):
        positions = [start + p for p, c in enumerate(commit[r]) if c]
        entry = {"kind": "none" if kind == KIND_NONE else COMMIT_KINDS[kind - 1],
                 "positions": positions, "tokens": [block_ids[r][p - start] for p in positions]}
        if kind == KIND_LOOKAHEAD:
            entry["candidates"] = by_row[r]
            entry["winner"] = [c["candidate"] for c in by_row[r]].index(best[r])
        rows.append(entry)
    return {"block": block, "step": step, "rows": rows}
