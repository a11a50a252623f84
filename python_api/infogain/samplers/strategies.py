"""Selection strategies: what a sampler step commits, given the current block's logits and statistics.

All samplers share one driver (:class:`infogain.samplers.sampler.DiffusionSampler`):
it forwards the model, computes the per-position statistics of the block with
the fused ops, handles the last-step fill, applies the commits, the EOS fill and
the statistics. A strategy only decides, per row, which masked block positions
to commit this step and with which tokens (:meth:`Strategy.decide`). The
Info-Gain strategy may instead ask for a lookahead: it returns candidate actions
and the driver forwards the candidates of all rows as one batch and commits the
best one per row.

Shapes: B rows, L = block length, V = vocabulary, N = candidates.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from infogain_kernels import _random
from infogain_kernels.gumbel_topk import gumbel_topk_unchecked

from ..stats import KIND_BYPASS, KIND_HEURISTIC, KIND_LOOKAHEAD, KIND_NONE, KIND_TRIVIAL


@dataclass
class StepState:
    """What a strategy sees at one step (all tensors on the model's device).

    Attributes:
        logits: [B, L, V] current logits of the block (model dtype), or None at temperature 0 on a
            step whose statistics came from the previous step's fused lookahead (the winner's
            logits are never computed then): strategies decide from the statistics below.
        masked: bool [B, L], masked block positions.
        quota: int64 [B], tokens to commit this step (the LLaDA schedule; 0 = skip).
        active: bool [B], rows the strategy must decide for (masked positions left
            and not filled by the driver's last-step fill this step).
        entropy, top1_prob, top2_prob: float32 [B, L]; top1_id: int64 [B, L]
            (``step_stats`` of the masked positions; other positions hold fill values).
        tokens: int64 [B, L, S], S token draws at the sampling temperature
            (``step_stats``; S = ``Strategy.num_token_samples``, 0 at temperature 0).
        token_probs: float32 [B, L, S], the untempered probability of each drawn token.

    :meth:`draws` gives N draws per position whatever S: at temperature 0 every draw is
    the arg-max ``top1_id`` (probability ``top1_prob``). Draw 0 is x0, the tokens every
    non-lookahead commit uses, and its probability the confidence (:attr:`x0`,
    :attr:`x0_prob`).
        options: the run's :class:`GenerateOptions`.
        max_quota: an upper bound of ``quota`` (host int).
        generator: the run's ``torch.Generator`` (or None).
        may_lookahead: False when the driver knows on the host that no row can reach the
            lookahead this step (the block's last step fills every row): no candidates then.
        defer_candidates: True when the driver reads the decision kinds back before the lookahead
            candidates are built (where a read-back costs no synchronisation): the strategy then
            leaves them to :meth:`Strategy.candidates`, called only when some row looks ahead.
    """

    logits: Optional[torch.Tensor]
    masked: torch.Tensor
    quota: torch.Tensor
    active: torch.Tensor
    entropy: torch.Tensor
    top1_prob: torch.Tensor
    top1_id: torch.Tensor
    top2_prob: torch.Tensor
    tokens: torch.Tensor
    token_probs: torch.Tensor
    options: "object"
    max_quota: int
    generator: Optional[torch.Generator]
    may_lookahead: bool = True
    defer_candidates: bool = False

    def draws(self, count: int):
        """``(tokens, probs)`` of ``count`` draws per position, [count, B, L] (candidate-major)."""
        if self.tokens.shape[-1] == 0:  # temperature 0: nothing was drawn, every draw is the arg-max
            shape = (count, *self.top1_id.shape)
            return self.top1_id.expand(shape), self.top1_prob.expand(shape)
        return self.tokens[..., :count].permute(2, 0, 1), self.token_probs[..., :count].permute(2, 0, 1)

    @property
    def x0(self) -> torch.Tensor:
        """int64 [B, L]: draw 0 (the arg-max at temperature 0)."""
        return self.tokens[..., 0] if self.tokens.shape[-1] else self.top1_id

    @property
    def x0_prob(self) -> torch.Tensor:
        """float32 [B, L]: the untempered probability of x0 (its confidence)."""
        return self.token_probs[..., 0] if self.token_probs.shape[-1] else self.top1_prob


@dataclass
class Candidates:
    """Lookahead candidates of the rows whose decision kind is ``KIND_LOOKAHEAD``.

    Attributes:
        commit: bool [N, B, L], positions candidate n of row b commits.
        tokens: int64 [N, B, L], the tokens it writes there.
        keep: bool [N, B], candidates to evaluate (unique position sets of lookahead rows), or None
            when the caller asked to find them on the host (:func:`kept_on_host`).
        cost: float32 [N, B], C = sum of current entropies at the candidate's positions.
    """

    commit: torch.Tensor
    tokens: torch.Tensor
    keep: Optional[torch.Tensor]
    cost: torch.Tensor


def kept_on_host(commit: Sequence[Sequence[Sequence[bool]]], lookahead_rows: Sequence[int]) -> List[List[bool]]:
    """:attr:`Candidates.keep` [N][B] from the candidates' commit masks read back (host [N][B][L]):
    a lookahead row's candidate is kept unless an earlier candidate of the row commits the same
    positions (the device computes the same in :meth:`InfoGainStrategy.candidates`)."""
    keep = [[False] * len(commit[0]) for _ in commit]
    for b in lookahead_rows:
        seen = set()
        for n, candidate in enumerate(commit):
            positions = tuple(candidate[b])
            if positions not in seen:
                seen.add(positions)
                keep[n][b] = True
    return keep


@dataclass
class StepDecision:
    """A strategy's decision: ``kind`` int64 [B] (``KIND_*`` codes), ``commit`` bool [B, L],
    ``tokens`` int64 [B, L] (read where ``commit`` and where the driver fills), optional
    ``candidates`` for lookahead rows (their ``commit`` row must be empty: the driver commits the
    winning candidate).
    ``candidates_deferred``: rows may look ahead but, as the state asked
    (``defer_candidates``), the candidates are not built yet: the driver calls
    :meth:`Strategy.candidates` if some row's kind is ``KIND_LOOKAHEAD``, else
    :meth:`Strategy.skip_candidates`."""

    kind: torch.Tensor
    commit: torch.Tensor
    tokens: torch.Tensor
    candidates: Optional[Candidates] = None
    candidates_deferred: bool = False


def position_rank(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """int64 [B, L]: each allowed position's rank in its row by decreasing score (0 = best, ties:
    lower index first); disallowed positions rank after every allowed one.

    ``scores`` float [B, L]; ``allowed`` bool [B, L].
    """
    ranked = scores.float().masked_fill(~allowed, float("-inf"))
    # The rank of each position is the inverse of the sort permutation (few ops: this runs every step).
    return torch.sort(ranked, dim=1, descending=True, stable=True).indices.argsort(dim=1)


def top_k_mask(scores: torch.Tensor, allowed: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """bool [B, L]: the ``k[b]`` allowed positions of row b with the highest score (ties: lower index).

    ``scores`` float [B, L]; ``allowed`` bool [B, L]; ``k`` int64 [B]. Rows with fewer
    allowed positions than ``k[b]`` get all of them.
    """
    return allowed & (position_rank(scores, allowed) < k[:, None])


class Strategy:
    """Base class. ``scheduled`` strategies follow the LLaDA step schedule (a quota per
    step, last-step fill); unscheduled ones loop over a block until it has no masks,
    committing at least one token per row per step."""

    name = "strategy"
    scheduled = True

    def num_token_samples(self, options) -> int:
        """How many token draws per position the step needs (sample 0 = x0); none at temperature 0,
        where x0 is the arg-max that the statistics already hold."""
        return 1 if options.temperature > 0 else 0

    def decide(self, state: StepState) -> StepDecision:
        raise NotImplementedError

    def candidates(self, state: StepState, lookahead_rows: torch.Tensor, keep: bool = True) -> Candidates:
        """The lookahead candidates of the rows ``lookahead_rows`` (bool [B]) of a deferred decision;
        with ``keep=False`` their kept mask is left to the caller (:func:`kept_on_host`)."""
        raise NotImplementedError(f"{self.name} does not look ahead")

    def skip_candidates(self, state: StepState) -> None:
        """A deferred decision in which no row looks ahead: consume the random numbers that
        :meth:`candidates` would have, so that the run's random stream does not depend on
        whether the candidates were built."""

    # Strategies that can decide from host copies of the statistics (:meth:`decide_rows`) set this:
    # where reads are free (the CPU) the driver then decides on the host, without the dozens of
    # small device ops of :meth:`decide`.
    decides_on_host = False

    def decide_rows(self, masked: Sequence[Sequence[int]], quota: Sequence[int], top1_prob: Sequence[Sequence[float]],
                    x0_prob: Sequence[Sequence[float]], options, may_lookahead: bool) -> Tuple[List[int], List[List[int]],
                                                                                           List[bool], bool]:
        """:meth:`decide` on host lists, for the rows it must decide for: ``masked[b]`` the masked
        block positions of row b (empty for rows it must not decide for), ``quota[b]``, and the
        rows' ``top1_prob`` / ``x0_prob`` [B][L]. Returns ``(kinds, positions, bypass,
        candidates_deferred)``: each row's kind code and committed positions, whether they take the
        arg-max (else x0), and whether a :meth:`candidates` call (or :meth:`skip_candidates`) follows."""
        raise NotImplementedError(f"{self.name} decides on the device only")


class ScoreStrategy(Strategy):
    """Commit the ``quota`` masked positions with the highest score, tokens x0 (LLaDA remasking family).

    Scores: ``confidence`` = untempered probability of the drawn token x0 (LLaDA
    "low-confidence remasking"), ``entropy`` = minus the entropy, ``margin`` =
    top-1 minus top-2 probability, ``random`` = uniform noise (LLaDA "random
    remasking"). Only positions of the current block are ever scored (the legacy
    reference's entropy/margin scored the whole generation region; not reproduced).
    """

    SCORES = ("confidence", "entropy", "margin", "random")

    def __init__(self, score: str):
        if score not in self.SCORES:
            raise ValueError(f"score must be one of {self.SCORES}, got {score!r}")
        self.name = score
        self.score = score

    def _scores(self, state: StepState) -> torch.Tensor:
        if self.score == "confidence":
            return state.x0_prob
        if self.score == "entropy":
            return -state.entropy
        if self.score == "margin":
            return state.top1_prob - state.top2_prob
        return torch.rand(state.masked.shape, generator=state.generator, device=state.masked.device)

    def decide(self, state: StepState) -> StepDecision:
        allowed = state.masked & state.active[:, None]
        commit = top_k_mask(self._scores(state), allowed, state.quota)
        kind = torch.where(commit.any(dim=1), KIND_HEURISTIC, KIND_NONE)
        return StepDecision(kind=kind, commit=commit, tokens=state.x0)


class FastDLLMStrategy(Strategy):
    """Fast-dLLM threshold parallel decoding: commit every masked block position whose
    drawn token x0 has probability >= ``threshold``, and at least the most confident one.
    Unscheduled: a block is decoded until it has no masks (``steps`` is not used)."""

    name = "fast_dllm"
    scheduled = False

    def decide(self, state: StepState) -> StepDecision:
        allowed = state.masked & state.active[:, None]
        confidence = state.x0_prob
        best = top_k_mask(confidence, allowed, torch.ones_like(state.quota))
        commit = best | (allowed & (confidence >= state.options.threshold))
        kind = torch.where(commit.any(dim=1), KIND_HEURISTIC, KIND_NONE)
        return StepDecision(kind=kind, commit=commit, tokens=state.x0)


class EntropyBoundedStrategy(Strategy):
    """EB sampler: sort a row's masked positions by entropy (ascending) and commit the
    longest prefix whose entropy sum minus its largest entropy is <= ``gamma`` (at
    least one position), tokens x0. Applied per block (the reference decoded the whole
    generation region as one block; use ``block_length=gen_length`` for that).
    Unscheduled: a block is decoded until it has no masks."""

    name = "eb"
    scheduled = False

    def decide(self, state: StepState) -> StepDecision:
        allowed = state.masked & state.active[:, None]
        entropy = torch.where(allowed, state.entropy, torch.full_like(state.entropy, float("inf")))
        sorted_entropy = torch.sort(entropy, dim=1).values
        finite = torch.isfinite(sorted_entropy)
        # Non-allowed positions sort last as +inf; zero them so the running sums stay finite.
        sorted_entropy = torch.where(finite, sorted_entropy, torch.zeros_like(sorted_entropy))
        within_bound = (sorted_entropy.cumsum(1) - sorted_entropy.cummax(1).values) <= state.options.gamma
        count = (within_bound & finite).sum(dim=1).clamp(min=1)
        commit = top_k_mask(-state.entropy, allowed, count)
        kind = torch.where(commit.any(dim=1), KIND_HEURISTIC, KIND_NONE)
        return StepDecision(kind=kind, commit=commit, tokens=state.x0)


class InfoGainStrategy(Strategy):
    """Info-Gain / LookUM (``options.variant``) with the high-confidence bypass.

    Per active row with quota k:

    1. Bypass: masked positions with top-1 probability >= ``threshold``; commit the
       (at most k, highest first; all with ``parallel_bypass``) of them with their
       arg-max tokens (the bypass ignores the temperature, as in the reference).
    2. Trivial path when ``position_temperature <= 0`` or ``candidate_number <= 1``:
       commit candidate 0 (the k most confident positions, tokens x0).
    3. Otherwise N candidates: candidate n has its own token draw x_n (sample n of
       ``step_stats``; all equal to the arg-max at temperature 0) with
       confidences c_n = softmax(logits)[x_n]; candidate 0 takes the top-k of c_0,
       candidate n >= 1 the Gumbel-top-k of c_n / position_temperature
       (``gumbel_topk``). Candidates with the position set of an earlier candidate of
       the same row are dropped (never forwarded). The driver forwards the kept
       candidates of all rows as one batch and commits the arg-max of
       J = -C - H_next (info_gain) or J = -H_next (lookum), ties to the lower index.
    """

    name = "info_gain"

    def __init__(self):
        self._constant_cache = {}

    def num_token_samples(self, options) -> int:
        return max(1, options.candidate_number) if options.temperature > 0 else 0

    def decide(self, state: StepState) -> StepDecision:
        opts = state.options
        masked = state.masked & state.active[:, None]
        quota = state.quota[:, None]
        has_quota = state.quota > 0
        high = masked & (state.top1_prob >= opts.threshold)
        bypass_rows = has_quota & high.any(dim=1)
        # Every masked position above the threshold outranks every one below it, so the top-k of
        # the high positions are the high positions among the top-k of all masked ones (one ranking).
        top1_rank = position_rank(state.top1_prob, masked)
        bypass_commit = high & (bypass_rows[:, None] if opts.parallel_bypass else top1_rank < quota)
        rest = state.active & has_quota & ~bypass_rows
        kind = torch.where(bypass_rows, KIND_BYPASS, KIND_NONE)
        # The bypass commits the arg-max; every other commit (the driver's fill too) x0.
        tokens = state.top1_id if state.x0 is state.top1_id else torch.where(bypass_commit, state.top1_id, state.x0)
        trivial = opts.position_temperature <= 0 or opts.candidate_number <= 1 or not state.may_lookahead
        if not trivial:
            # Lookahead rows commit nothing now: the driver commits their winning candidate.
            kind = torch.where(rest, KIND_LOOKAHEAD, kind)
            decision = StepDecision(kind=kind, commit=bypass_commit, tokens=tokens,
                                    candidates_deferred=state.defer_candidates)
            if not state.defer_candidates:
                decision.candidates = self.candidates(state, rest)
            return decision
        # Trivial rows: candidate 0, the quota most confident positions, tokens x0 (at temperature 0
        # the confidence is the top-1 probability, already ranked).
        x0_rank = top1_rank if state.x0_prob is state.top1_prob else position_rank(state.x0_prob, masked)
        trivial_commit = masked & (x0_rank < quota) & rest[:, None]
        kind = torch.where(rest, KIND_TRIVIAL, kind)
        return StepDecision(kind=kind, commit=bypass_commit | trivial_commit, tokens=tokens)

    decides_on_host = True

    def decide_rows(self, masked, quota, top1_prob, x0_prob, options, may_lookahead):
        # The same decision as decide(), row by row: the threshold compares as the device does
        # (float32 against the threshold rounded to float32), and positions rank by decreasing score,
        # ties to the lower index (a stable sort on the exact float32 values).
        threshold = _float32(options.threshold)
        trivial = options.position_temperature <= 0 or options.candidate_number <= 1 or not may_lookahead
        kinds, positions, bypass = [], [], []
        for row_masked, row_quota, row_top1, row_x0 in zip(masked, quota, top1_prob, x0_prob):
            if not row_masked or row_quota <= 0:
                kinds.append(KIND_NONE)
                positions.append([])
                bypass.append(False)
                continue
            high = [p for p in row_masked if row_top1[p] >= threshold]
            if high:
                kinds.append(KIND_BYPASS)
                positions.append(high if options.parallel_bypass else _top(high, row_top1, row_quota))
                bypass.append(True)
            elif trivial:
                kinds.append(KIND_TRIVIAL)
                positions.append(_top(row_masked, row_x0, row_quota))
                bypass.append(False)
            else:
                kinds.append(KIND_LOOKAHEAD)   # its winner is committed after the lookahead
                positions.append([])
                bypass.append(False)
        return kinds, positions, bypass, not trivial

    def _constants(self, num_candidates: int, width: int, device: torch.device):
        """``(slot, earlier)``: int64 [width] the slot indices, bool [N, N] ``earlier[n, m]``: m < n.
        Built once per shape and device, not every step."""
        key = (num_candidates, width, device)
        constants = self._constant_cache.get(key)
        if constants is None:
            constants = self._constant_cache[key] = (
                torch.arange(width, device=device),
                torch.ones(num_candidates, num_candidates, dtype=torch.bool, device=device).tril(diagonal=-1))
        return constants

    def skip_candidates(self, state: StepState) -> None:
        # candidates() draws exactly one seed (its one gumbel_topk call with 2 samples).
        _random.draw_seed(state.generator, state.masked.device)

    def candidate_samples(self, state: StepState, valid: torch.Tensor,
                          draw_probs: Optional[torch.Tensor] = None) -> torch.Tensor:
        """int64 [2, N * B, k] (k = min(max_quota, L)): per candidate row (candidate-major), the
        positions ranked first, best first, -1 past the row's valid positions; sample 0 by the
        unperturbed scores (candidate 0 takes these), sample 1 by the Gumbel-perturbed ones
        (candidates >= 1). ``valid`` bool [N * B, L]: the masked positions of the lookahead rows
        (rows that bypass or fill have none), repeated per candidate. ``draw_probs``:
        ``state.draws(N)[1]`` when the caller has it. Draws the candidates' one seed (see
        :meth:`skip_candidates`)."""
        num_candidates = state.options.candidate_number
        batch, length = state.masked.shape
        if draw_probs is None:
            draw_probs = state.draws(num_candidates)[1]
        # One call for all rows whatever their quota: gumbel_topk lists positions in decreasing
        # (perturbed) score, so the first quota[b] entries of row b are its top-quota[b]. Rows that
        # bypass or fill have no valid position: the op selects nothing for them, and their
        # candidates are all empty (and never kept).
        scores = draw_probs.reshape(num_candidates * batch, length)
        # No value check here (a host sync): NaN confidences come from NaN / all -inf logits,
        # which the driver detects in its one read-back per step. No argument checks either: the
        # arguments are built here from the validated options (they cost as much as the op).
        return gumbel_topk_unchecked(scores, min(state.max_quota, length), 2, state.options.position_temperature,
                                     valid, state.generator)

    def candidate_positions(self, state: StepState, valid: torch.Tensor,
                            draw_probs: Optional[torch.Tensor] = None) -> torch.Tensor:
        """int64 [N, B, k]: the positions each candidate of each row ranks first (see
        :meth:`candidate_samples`: candidate 0 its sample 0, the others their sample 1)."""
        batch = state.masked.shape[0]
        positions = self.candidate_samples(state, valid, draw_probs)
        positions[1, :batch].copy_(positions[0, :batch])   # in place on the op's fresh output: no cat
        return positions[1].reshape(state.options.candidate_number, batch, -1)

    def candidates(self, state: StepState, lookahead_rows: torch.Tensor, keep: bool = True) -> Candidates:
        quota = state.quota
        num_candidates = state.options.candidate_number
        batch, length = state.masked.shape
        draws, draw_probs = state.draws(num_candidates)
        # Lookahead rows are active rows that neither bypass nor fill.
        valid = (state.masked & lookahead_rows[:, None]).repeat(num_candidates, 1)
        positions = self.candidate_positions(state, valid, draw_probs)
        slot, earlier = self._constants(num_candidates, positions.shape[-1], positions.device)
        in_quota = (slot < quota[None, :, None]) & (positions >= 0)
        # A row with fewer masked positions than max_quota gets -1 slots: they write into one extra
        # column, dropped after, so they never touch a real position (clamping them to 0 let them
        # erase a commit of position 0 on the CPU, and wrote it in undefined order on CUDA).
        commit = torch.zeros(num_candidates, batch, length + 1, dtype=torch.bool, device=positions.device)
        commit.scatter_(2, positions.masked_fill(positions < 0, length), in_quota)
        commit = commit[..., :length]
        cost = torch.where(commit, state.entropy, 0.0).sum(dim=-1)
        if not keep:
            return Candidates(commit=commit, tokens=draws, keep=None, cost=cost)
        # A later candidate repeating an earlier candidate's position set adds nothing: drop it.
        same_set = (commit[:, None] == commit[None, :]).all(dim=-1)          # [N, N, B]
        duplicate = (same_set & earlier[:, :, None]).any(dim=1)               # [N, B]
        kept = lookahead_rows[None, :] > duplicate   # lookahead row and not a duplicate (bools: one op)
        return Candidates(commit=commit, tokens=draws, keep=kept, cost=cost)


def commits_on_host(positions: Sequence[Sequence[Sequence[int]]], quota: Sequence[int],
                    width: int) -> List[List[List[bool]]]:
    """:attr:`Candidates.commit` [N][B][L] (``width`` = L) from :meth:`InfoGainStrategy.candidate_positions`
    read back (host [N][B][k]) and the rows' ``quota`` (host [B]): slot s of row b commits its position
    when s < quota[b] and the position is valid (>= 0); invalid (-1) slots touch nothing, as in
    :meth:`InfoGainStrategy.candidates`."""
    commit = []
    for candidate in positions:
        rows = []
        for row_positions, row_quota in zip(candidate, quota):
            flags = [False] * width
            for slot, position in enumerate(row_positions):
                if position >= 0:
                    flags[position] = slot < row_quota
            rows.append(flags)
        commit.append(rows)
    return commit


def _float32(value: float) -> float:
    """``value`` rounded to float32 (a float32 tensor compared with a Python number compares with this)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _top(positions: List[int], scores: Sequence[float], count: int) -> List[int]:
    """The ``count`` of ``positions`` with the highest score (ties: the lower position first, as
    :func:`position_rank` ranks them; ``positions`` are increasing)."""
    return sorted(positions, key=lambda p: -scores[p])[:count]


def make_strategy(name: str) -> Strategy:
    """The strategy of sampler ``name`` (one of :data:`infogain.samplers.SAMPLERS`)."""
    if name in ("info_gain", "lookum"):
        return InfoGainStrategy()
    if name in ScoreStrategy.SCORES:
        return ScoreStrategy(name)
    if name == "fast_dllm":
        return FastDLLMStrategy()
    if name == "eb":
        return EntropyBoundedStrategy()
    raise ValueError(f"unknown sampler name {name!r}")
