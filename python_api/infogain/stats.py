"""Run statistics of the diffusion samplers (per row and aggregated).

Every sampler run reports, for each batch row and for the whole batch:

* ``nfe``: model forward passes. In the aggregate a batched call counts once
  (a lookahead batch over the candidates of all rows is ONE forward); per row it
  is the number of calls the row took part in. ``candidate_evals`` counts the
  candidate sequences the lookahead batches evaluated (per row: its own
  candidates; aggregate: all of them).
* ``tokens``: generated tokens by how they were committed: ``bypass`` (top-1
  probability above the threshold), ``lookahead`` (winning Info-Gain / LookUM
  candidate), ``fill`` (last step of a block, or the block has no more masks
  than the step's quota), ``trivial`` (candidate 0 committed without lookahead),
  ``heuristic`` (the baseline samplers' selection rules) and ``eos_fill`` (masks
  after a row's first EOS, filled with EOS). Per row they add up to
  ``gen_length``.
* ``bypass_rate`` = bypass tokens / generated tokens.
* ``cumulative_entropy`` = sum over every committed (non EOS-fill) token of the
  entropy of its position's distribution at commit time: Σ_t C(a_t), the paper's
  trajectory uncertainty.
* ``wall_time_s`` and ``tokens_per_second`` (generated tokens of all rows / wall
  time).

:class:`StatsRecorder` accumulates these inside a run without host
synchronisation (device tensors for the data-dependent counts, host integers for
what the sampler already knows on the host); :meth:`StatsRecorder.finish`
reads them back once at the end.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

COMMIT_KINDS = ("bypass", "lookahead", "fill", "trivial", "heuristic")
"""Ways a sampler step commits tokens; index ``i`` is the kind code ``i + 1`` (0 = no commit)."""

KIND_NONE = 0
KIND_BYPASS, KIND_LOOKAHEAD, KIND_FILL, KIND_TRIVIAL, KIND_HEURISTIC = range(1, len(COMMIT_KINDS) + 1)


@dataclass
class RowStats:
    """Statistics of one batch row (one prompt)."""

    nfe: int
    candidate_evals: int
    tokens: Dict[str, int]
    cumulative_entropy: float
    generated_tokens: int

    @property
    def bypass_rate(self) -> float:
        return self.tokens["bypass"] / self.generated_tokens if self.generated_tokens else 0.0

    def to_dict(self) -> dict:
        return {
            "nfe": self.nfe,
            "candidate_evals": self.candidate_evals,
            "tokens": dict(self.tokens),
            "bypass_rate": self.bypass_rate,
            "cumulative_entropy": self.cumulative_entropy,
            "generated_tokens": self.generated_tokens,
        }


@dataclass
class RunStats:
    """Statistics of one ``generate`` call: aggregate fields plus ``rows`` (one :class:`RowStats` per prompt)."""

    sampler: str
    nfe: int
    candidate_evals: int
    lookahead_batches: int
    wall_time_s: float
    rows: List[RowStats] = field(default_factory=list)

    @property
    def generated_tokens(self) -> int:
        return sum(r.generated_tokens for r in self.rows)

    @property
    def tokens(self) -> Dict[str, int]:
        names = list(COMMIT_KINDS) + ["eos_fill"]
        return {name: sum(r.tokens[name] for r in self.rows) for name in names}

    @property
    def bypass_rate(self) -> float:
        total = self.generated_tokens
        return self.tokens["bypass"] / total if total else 0.0

    @property
    def cumulative_entropy(self) -> float:
        """Sum over rows (divide by ``len(rows)`` for the per-prompt mean)."""
        return sum(r.cumulative_entropy for r in self.rows)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.wall_time_s if self.wall_time_s > 0 else float("inf")

    def to_dict(self) -> dict:
        """JSON-ready dictionary (aggregate fields and ``rows``)."""
        return {
            "sampler": self.sampler,
            "nfe": self.nfe,
            "candidate_evals": self.candidate_evals,
            "lookahead_batches": self.lookahead_batches,
            "generated_tokens": self.generated_tokens,
            "tokens": self.tokens,
            "bypass_rate": self.bypass_rate,
            "cumulative_entropy": self.cumulative_entropy,
            "wall_time_s": self.wall_time_s,
            "tokens_per_second": self.tokens_per_second,
            "rows": [r.to_dict() for r in self.rows],
        }


class StatsRecorder:
    """Accumulates a run's statistics; used by the samplers (one instance per ``generate`` call).

    Args:
        batch_size: number of rows B.
        device: device of the sampler's tensors (each step's kinds, commits and entropies
            stay there until :meth:`finish` reduces them all at once).
    """

    def __init__(self, batch_size: int, device: torch.device):
        self.batch_size = batch_size
        self.nfe = 0
        self.lookahead_batches = 0
        self.row_nfe = [0] * batch_size
        self.row_candidate_evals = [0] * batch_size
        self._device = device
        # Each step's (kind, committed, entropy) and each EOS fill's counts, kept as they come and
        # reduced in :meth:`finish`: a step then adds no device op, only a list entry (the tensors are
        # the step's own, never written again).
        self._commits: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._eos_fills: List[torch.Tensor] = []

    def count_forward(self, rows: Sequence[int]) -> None:
        """One model call over the batch rows ``rows`` (host indices)."""
        self.nfe += 1
        for r in rows:
            self.row_nfe[r] += 1

    def count_lookahead(self, candidate_rows: Sequence[int]) -> None:
        """One lookahead batch; ``candidate_rows[i]`` is the batch row of candidate i."""
        self.nfe += 1
        self.lookahead_batches += 1
        for r in set(candidate_rows):
            self.row_nfe[r] += 1
        for r in candidate_rows:
            self.row_candidate_evals[r] += 1

    def add_commits(self, kind: torch.Tensor, committed: torch.Tensor, entropy: torch.Tensor) -> None:
        """Record one step's commits.

        Args:
            kind: int64 [B], the kind code of each row's commit (see ``KIND_*``).
            committed: bool [B, L], positions committed this step.
            entropy: float [B, L], entropies of the current logits (only the
                committed positions are read).
        """
        self._commits.append((kind, committed, entropy))

    def add_eos_fill(self, counts: torch.Tensor) -> None:
        """Record masks filled with EOS (int64 [B])."""
        self._eos_fills.append(counts)

    def finish(self, sampler: str, wall_time_s: float, gen_length: int) -> RunStats:
        """Read the device counters back (one synchronisation) and build the :class:`RunStats`."""
        batch = self.batch_size
        # Column 0 collects "no commit" rows (always 0 tokens); columns 1.. follow COMMIT_KINDS.
        kind_tokens = torch.zeros(batch, len(COMMIT_KINDS) + 1, dtype=torch.int64, device=self._device)
        step_entropy = [[] for _ in range(batch)]
        if self._commits:
            kinds, committed, entropy = (torch.stack(parts, dim=1) for parts in zip(*self._commits))  # [B, S(, L)]
            kind_tokens.scatter_add_(1, kinds, committed.sum(dim=2))
            # Each step's sum in float64 (as a step of [B, L] sums it), added up step by step below.
            step_entropy = torch.where(committed, entropy, 0.0).sum(dim=2, dtype=torch.float64).cpu().tolist()
        eos_fill = ([0] * batch if not self._eos_fills
                    else torch.stack(self._eos_fills).sum(dim=0).cpu().tolist())
        kind_tokens = kind_tokens.cpu().tolist()
        entropy = []
        for sums in step_entropy:
            total = 0.0
            for value in sums:   # in step order: the float64 accumulation of the run, step by step
                total += value
            entropy.append(total)
        rows = []
        for r in range(self.batch_size):
            tokens = {name: kind_tokens[r][i + 1] for i, name in enumerate(COMMIT_KINDS)}
            tokens["eos_fill"] = eos_fill[r]
            rows.append(RowStats(nfe=self.row_nfe[r], candidate_evals=self.row_candidate_evals[r], tokens=tokens,
                                 cumulative_entropy=entropy[r], generated_tokens=gen_length))
        return RunStats(sampler=sampler, nfe=self.nfe, candidate_evals=sum(self.row_candidate_evals),
                        lookahead_batches=self.lookahead_batches, wall_time_s=wall_time_s, rows=rows)


def summarize(runs: Sequence[RunStats]) -> Optional[dict]:
    """Aggregate several runs (e.g. the batches of an evaluation) into one JSON-ready dict."""
    if not runs:
        return None
    generated = sum(r.generated_tokens for r in runs)
    wall = sum(r.wall_time_s for r in runs)
    tokens: Dict[str, int] = {}
    for run in runs:
        for name, n in run.tokens.items():
            tokens[name] = tokens.get(name, 0) + n
    return {
        "runs": len(runs),
        "prompts": sum(len(r.rows) for r in runs),
        "nfe": sum(r.nfe for r in runs),
        "candidate_evals": sum(r.candidate_evals for r in runs),
        "generated_tokens": generated,
        "tokens": tokens,
        "bypass_rate": tokens.get("bypass", 0) / generated if generated else 0.0,
        "cumulative_entropy": sum(r.cumulative_entropy for r in runs),
        "wall_time_s": wall,
        "tokens_per_second": generated / wall if wall > 0 else float("inf"),
    }
