"""The sampler's driver: the state of one ``generate`` call and its block loop.

:class:`_Run` holds the canvas, the cache (through :class:`~.model_calls.ModelCalls`), the block
logits and the statistics, and runs blocks (:meth:`_Run.decode`) and steps (:meth:`_Run._step`).
A step is the pure pieces of :mod:`.step` and :mod:`.lookahead` around the model calls; only this
driver changes the run's state. See :meth:`infogain.samplers.DiffusionSampler.generate` for the
algorithm, the cache modes and the synchronisation budget.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch

from .._device import host_ints_to_device
from ..stats import KIND_LOOKAHEAD, KIND_NONE, StatsRecorder
from . import lookahead as la
from .model_calls import ModelCalls, exposes_hidden_states
from .options import GenerateOptions
from .prompts import generated_tokens
from .step import Decided, Reused, decide, decide_on_host, fill_after_eos, host_masks_left, kept_pairs, read_back
from .strategies import commits_on_host, kept_on_host
from .trace import step_record


# The hidden size from which the lookahead passes the positions it reads to the model (see _Run).
_MIN_READ_SELECT_WIDTH = 256


def host_reads_are_free(device: torch.device) -> bool:
    """Whether reading a small tensor back from ``device`` costs no synchronisation (the CPU).

    Then the driver reads the decision kinds back before it builds the lookahead candidates and
    builds them only on steps where some row looks ahead (a second read, of their kept mask, on
    those steps); on an accelerator it builds them before its one read-back per step. The CPU's
    read-back also carries the block, so that the masks left are counted on the host and the EOS
    fill runs only where a block holds an EOS (the accelerator fills at every commit)."""
    return device.type == "cpu"


class _Run:
    """State of one ``generate`` call (canvas, cache, block logits, statistics) and its block loop.

    ``reads_free``: see :func:`host_reads_are_free` (its value for the canvas' device by default)."""

    def __init__(self, sampler, opts: GenerateOptions, mode: str, canvas, attention, gen_start: int, generator,
                 padded: bool, reads_free: Optional[bool] = None, gen_starts: Optional[List[int]] = None):
        self.sampler = sampler
        # Each row's generation start: gen_start (the first decoded column) unless the canvas is
        # block-aligned (LLaDA2), where a row's first decoded block also holds its prompt's tail.
        self.gen_starts = gen_starts if gen_starts is not None else [gen_start] * canvas.shape[0]
        self.model = sampler.model
        self.strategy = sampler.strategy
        self.opts = opts
        self.mode = mode
        self.canvas = canvas
        self.attention = attention
        self.gen_start = gen_start
        self.generator = generator
        self.batch = canvas.shape[0]
        self.length = opts.block_length
        self.device = canvas.device
        self.mask_id = sampler.mask_id
        self.eos_id = sampler.eos_id if opts.stop_at_eos else None
        # The lookahead's windows hold their commit's EOS fill only with lookahead_eos_fill.
        self.window_eos_id = self.eos_id if opts.lookahead_eos_fill else None
        self.recorder = StatsRecorder(self.batch, self.device)
        self.trace: List[dict] = []
        # The mask the model receives: None when no prompt is padded (known on the host).
        self.model_attention = attention if padded else None
        self.calls = ModelCalls(self.model, mode, self.model_attention, gen_start, self.length, sampler.block_causal,
                                self.mask_id, sorted({t for t in (sampler.eos_id, sampler.pad_id) if t is not None}),
                                opts.eos_penalty)
        self.block_logits: Optional[torch.Tensor] = None  # [B, L, V], model dtype
        # The sum of the last lookahead's objectives (float32 scalar on the device), read with the next
        # step: finite exactly when every objective is (each is bounded by the block's entropies).
        self.lookahead_total: Optional[torch.Tensor] = None
        # Lookahead on hidden states (lm_head_entropy) instead of logits, when the model allows it.
        self.hidden_head = exposes_hidden_states(self.model, mode)
        self.fused_head = opts.fused_head and self.hidden_head
        # The fused head's and step_stats' arguments are checked at the run's first lookahead / step
        # only (same kinds later).
        self.head_checked = False
        self.stats_checked = False
        # On the CPU the candidates are built after the read-back (deferred) and the lookahead's last
        # layer skips the positions nobody reads, both because a read-back costs nothing there.
        self.reads_free = host_reads_are_free(self.device) if reads_free is None else reads_free
        # The lookahead's last layer skips the MLP rows nobody reads (see _lookahead) where selecting
        # them costs no sync and the rows are worth their selection's few small ops: below a hidden
        # size of _MIN_READ_SELECT_WIDTH (the shipped toy model, 128) the ops cost more than the rows.
        self.select_read_positions = (self.fused_head and self.reads_free
                                      and self.model.lm_head_weight.shape[-1] >= _MIN_READ_SELECT_WIDTH)
        # At temperature 0 a step needs only the statistics of its block, which the fused lookahead
        # computes for every candidate anyway (with_top): the winner's are kept, and its block logits
        # are never computed. head_stats_rows: host flags of the rows whose statistics are those.
        self.reuse_head_stats = self.fused_head and opts.temperature == 0
        # Where reads are free, a strategy that can decides on the host (see decide_on_host): a
        # step then costs a few device ops and one read instead of dozens of small ops.
        self.host_decisions = (self.reads_free and self.strategy.decides_on_host and self.strategy.scheduled)
        # Such a step also builds its lookahead candidates on the host from their positions read back
        # (see _host_candidates), unless the trace needs the candidates' tensors.
        self.host_candidates = (self.host_decisions and not opts.record
                                and getattr(self.strategy, "candidate_samples", None) is not None)
        self.head_stats = None  # entropy, top1_prob, top1_id, top2_prob [B, L]
        self.head_stats_rows = [False] * self.batch
        # Whether every row's head_stats came from one lookahead with no EOS fill since (Reused.exact).
        self.head_stats_exact = False

    @property
    def cache(self):
        """The model's cache (None before the first prefill)."""
        return self.calls.cache

    @property
    def reused(self) -> Optional[Reused]:
        """The block statistics kept from the last fused lookahead, when some row holds them."""
        if not any(self.head_stats_rows):
            return None
        return Reused(self.head_stats, self.head_stats_rows, self.head_stats_exact and all(self.head_stats_rows))

    # -------------------------------------------------------------- block logits

    def _store_block_logits(self, rows: Optional[torch.Tensor], logits: torch.Tensor,
                            host_rows: Optional[Sequence[int]] = None) -> None:
        """Store the block logits of ``rows`` (device index, None = all; ``host_rows`` the same rows
        as host ints when known): their statistics come from these logits again."""
        for r in (range(self.batch) if rows is None else host_rows or ()):
            self.head_stats_rows[r] = False
        if self.block_logits is None:
            self.block_logits = logits.new_empty(self.batch, self.length, logits.shape[-1])
        if rows is None:
            self.block_logits.copy_(logits)
        else:
            self.block_logits[rows] = logits

    def _enter_block(self, start: int) -> List[bool]:
        """Block-entry work of the cache modes; returns which rows still need a forward."""
        end = start + self.length
        if self.mode in ("prefix", "dual") or (self.mode == "block_causal" and self.calls.cache is None):
            prefill_start = self.gen_start if self.mode == "block_causal" else start
            # Only the block's logits are read: a model that can returns only those.
            logits = self.calls.prefill(self.canvas, prefill_start, slice(start, end))
            self.recorder.count_forward(range(self.batch))
            self._store_block_logits(None, logits)
            return [False] * self.batch
        return [True] * self.batch

    def _forward_rows(self, rows: List[int], start: int) -> None:
        end = start + self.length
        # All rows (the common case): views of the canvas, no index tensor, no gather.
        every = len(rows) == self.batch
        index = None if every else host_ints_to_device(rows, self.device)
        canvas = self.canvas if every else self.canvas[index]
        calls = self.calls
        if self.mode == "none":
            logits = calls.full(canvas, index, slice(start, end))
        else:
            # All rows: one plain window forward, row r against cache row r (a subset: the
            # plain forward over those cache rows, see forward_window).
            cache_rows = None if every else rows
            if self.mode == "prefix" and self.hidden_head:
                # The window runs from the block to the end, but only the block's logits are read.
                hidden = calls.window(canvas[:, start:], start, cache_rows, hidden=True)
                logits = calls.logits(self.model.logits_from_hidden(hidden[:, :self.length]))
            elif self.mode == "prefix":
                logits = calls.window(canvas[:, start:], start, cache_rows)[:, :self.length]
            else:  # dual and block_causal forward the block only
                logits = calls.window(canvas[:, start:end], start, cache_rows)
        self.recorder.count_forward(rows)
        self._store_block_logits(index, logits, rows)

    # -------------------------------------------------------------- decoding

    def decode(self) -> None:
        opts = self.opts
        # The blocks from gen_start to the canvas' end: gen_length / block_length of them, or one more
        # on a block-aligned canvas whose rows' prompts end inside a block (LLaDA2). The steps are
        # those of gen_length / block_length blocks; an extra block gets the base number.
        num_blocks = (self.canvas.shape[1] - self.gen_start) // self.length
        base_steps, extra_steps = divmod(opts.steps, opts.gen_length // self.length)
        progress = None
        if opts.progress:
            from tqdm.auto import tqdm
            progress = tqdm(total=num_blocks, desc=f"{self.sampler.name} blocks")
        for block in range(num_blocks):
            start = self.gen_start + block * self.length
            steps = base_steps + (1 if block < extra_steps else 0)
            self._decode_block(block, start, steps)
            if self.mode == "block_causal" and block + 1 < num_blocks:
                # Append the finished block's K/V (exact block-causal cache).
                self.calls.window(self.canvas[:, start:start + self.length], start, None, write=True)
                self.recorder.count_forward(range(self.batch))
            if opts.on_block is not None:
                opts.on_block(block, generated_tokens(self.canvas, self.gen_starts, opts.gen_length))
            if progress is not None:
                progress.update(1)
        if progress is not None:
            progress.close()
        if self.lookahead_total is not None:  # unreachable by the schedule; kept as a guard
            if not math.isfinite(float(self.lookahead_total)):
                raise ValueError("the model produced NaN / all -inf logits in the last lookahead forward")

    def _decode_block(self, block: int, start: int, steps: int) -> None:
        end = start + self.length
        scheduled = self.strategy.scheduled
        stale = self._enter_block(start)
        left = [1] * self.batch  # unknown until the first read-back; assume some
        initial = (self.canvas[:, start:end] == self.mask_id).sum(dim=1)
        base_quota, extra_quota = initial // steps, initial % steps
        max_steps = steps if scheduled else self.length
        max_quota = -(-self.length // steps)
        # Row b's quota at step s: the base, plus one in the first (initial % steps) steps.
        quotas = base_quota + (torch.arange(max_steps, device=self.device)[:, None] < extra_quota)
        # Where the step decides on the host, its quotas come along (one read per block).
        quotas_host = quotas.tolist() if self.host_decisions else None
        for step in range(max_steps):
            need = [r for r in range(self.batch) if stale[r] and left[r] > 0]
            if need:
                self._forward_rows(need, start)
                for r in need:
                    stale[r] = False
            kinds, left = self._step(block, step, start, quotas[step], last=scheduled and step == steps - 1,
                                     max_quota=max_quota, quota_host=None if quotas_host is None else quotas_host[step])
            for r, kind in enumerate(kinds):
                # A row that committed anything but the lookahead winner has no logits for its new state.
                if kind != KIND_NONE and kind != KIND_LOOKAHEAD:
                    stale[r] = True
            if not any(left):
                return
        if not scheduled:
            raise RuntimeError(f"{self.strategy.name}: block {block} still has masks after {max_steps} steps")

    def _decide(self, start: int, quota: torch.Tensor, last: bool, max_quota: int) -> Decided:
        """The step's device work up to the strategy's decision (:func:`.step.decide` on the run's state)."""
        decided = decide(self.strategy, self.opts, self.block_logits, self.canvas[:, start:start + self.length],
                         self.mask_id, quota, last=last, max_quota=max_quota, generator=self.generator,
                         reused=self.reused, defer_candidates=self.reads_free, check_arguments=not self.stats_checked)
        self.stats_checked = True
        return decided

    def _eos_fill(self) -> None:
        """EOS fill of the generation region (``stop_at_eos``)."""
        if self.eos_id is not None:
            self.head_stats_exact = False   # the fill may have unmasked positions the statistics hold
            self.recorder.add_eos_fill(fill_after_eos(self.canvas[:, self.gen_start:], self.mask_id, self.eos_id))

    def _step(self, block: int, step: int, start: int, quota: torch.Tensor, last: bool, max_quota: int,
              quota_host: Optional[List[int]] = None):
        """One denoising step of every row; returns (kinds, masks left) as host lists.

        One host read-back; on the CPU a second one on steps that look ahead (see
        :meth:`DiffusionSampler.generate`). ``quota_host``: ``quota`` as host ints where the step
        decides on the host (:attr:`host_decisions`; read from ``quota`` when not given)."""
        end = start + self.length
        block_after = self.canvas[:, start:end]
        keep = []
        top1_ids = None
        if self.host_decisions:
            if quota_host is None:   # a caller outside the block loop; a read is free here
                quota_host = quota.tolist()
            # The decision, the read-back and the commits' block on the host (see decide_on_host).
            host = decide_on_host(self.strategy, self.opts, self.block_logits, block_after, self.mask_id, quota,
                                  quota_host, self.lookahead_total, last=last, max_quota=max_quota,
                                  generator=self.generator, reused=self.reused,
                                  check_arguments=not self.stats_checked, block=block, step=step)
            self.stats_checked = True
            decided, kinds, quota_host, block_rows, top1_ids = host
            decision, kind, commit = decided.decision, decided.kind, decided.commit
            candidates = None
            if any(k != KIND_NONE and k != KIND_LOOKAHEAD for k in kinds):   # else nothing was committed
                block_after.copy_(decision.tokens)
        else:
            decided = self._decide(start, quota, last, max_quota)
            decision, kind, commit = decided.decision, decided.kind, decided.commit
            block_after.copy_(torch.where(commit, decision.tokens, decided.block_ids))
            candidates = decision.candidates
            keep_mask = None if candidates is None else candidates.keep
            if not self.reads_free:
                self._eos_fill()   # an accelerator fills at every commit: its one read-back comes after
            # The block comes back with the step's flags; its masks left are counted on the host.
            kinds, quota_host, keep, block_rows = read_back(kind, quota, decided.entropy, self.lookahead_total,
                                                            keep_mask, block_after, block=block, step=step)
        left_host = host_masks_left(kinds, quota_host, block_rows, self.mask_id, self.eos_id)
        filled = self.reads_free and self.eos_id is not None and any(self.eos_id in row for row in block_rows)
        if filled:
            # Where reads are free the fill runs only when some row's block holds an EOS (otherwise it
            # fills nothing: the masks after an EOS of an earlier step were filled right after it).
            self._eos_fill()
        self.lookahead_total = None

        lookahead_rows = [r for r in range(self.batch) if kinds[r] == KIND_LOOKAHEAD]
        outcome = None
        if decision.candidates_deferred and not lookahead_rows:
            self.strategy.skip_candidates(decided.state)
        if lookahead_rows:
            winners_may_commit_eos = True
            if self.host_candidates:
                # The candidates' blocks start from the block now (after the fill, if it ran).
                now = self.canvas[:, start:end].tolist() if filled else block_rows
                built, winners_may_commit_eos = self._host_candidates(decided.state, lookahead_rows, quota_host,
                                                                      block_rows, now, top1_ids)
                outcome = self._lookahead(start, built, built.batch.pairs, lookahead_rows, left_host)
            else:
                if decision.candidates_deferred:
                    # Reads are free here (see host_reads_are_free): the candidates of the rows that
                    # look ahead only, and their kept mask read back.
                    candidates = self.strategy.candidates(decided.state, kind == KIND_LOOKAHEAD, keep=False)
                    keep, winners_may_commit_eos = self._read_kept(candidates, lookahead_rows)
                outcome = self._lookahead(start, candidates, kept_pairs(keep, self.batch), lookahead_rows, left_host)
            # The winner's block is the row's block with the winner's commit applied (see candidate_batch:
            # a lookahead row's block is unchanged since), so it is written as it is.
            if len(lookahead_rows) == self.batch:   # every row: plain slices, no index
                block_after.copy_(outcome.tokens)
                commit = outcome.commit
            else:
                self.canvas[outcome.rows, start:end] = outcome.tokens
                commit[outcome.rows] = outcome.commit
            if winners_may_commit_eos:
                self._eos_fill()
        self.recorder.add_commits(kind, commit, decided.entropy)
        if self.opts.record:
            self.trace.append(step_record(block, step, start, kinds, commit, self.canvas[:, start:end], outcome,
                                          candidates))
        return kinds, left_host

    def _read_kept(self, candidates, lookahead_rows: List[int]) -> Tuple[List[int], bool]:
        """The kept mask (flattened [N * B]) of deferred ``candidates`` built without it, found on the
        host from their commit masks (:func:`~.strategies.kept_on_host`), and whether a kept
        candidate commits an EOS (else the winners' commit needs no EOS fill); one read."""
        commit = candidates.commit
        num_candidates, batch, length = commit.shape
        packed = [commit.reshape(-1)]
        if self.eos_id is not None:
            packed.append((commit & (candidates.tokens == self.eos_id)).any(dim=-1).reshape(-1))
        host = (packed[0] if len(packed) == 1 else torch.cat(packed)).tolist()
        rows = [[host[(n * batch + b) * length:(n * batch + b + 1) * length] for b in range(batch)]
                for n in range(num_candidates)]
        keep = [int(kept) for row in kept_on_host(rows, lookahead_rows) for kept in row]
        if self.eos_id is None:
            return keep, False
        eos = host[num_candidates * batch * length:]
        return keep, any(kept and commits_eos for kept, commits_eos in zip(keep, eos))

    def _host_candidates(self, state, lookahead_rows: List[int], quota: List[int], before: List[List[int]],
                         now: List[List[int]], top1_ids: Optional[List[List[int]]] = None
                         ) -> Tuple[la.BuiltCandidates, bool]:
        """The lookahead's candidate batch built on the host where reads are free (:attr:`host_candidates`):
        the candidates' positions (the strategy's ``candidate_samples``, the same random draws as
        its ``candidates``) and tokens read back in one read, then their commit masks, kept set and
        batch made from host lists. ``quota``: host [B]; ``before`` / ``now``: the block's tokens
        (host [B][L]) before the step's EOS fill (the positions the candidates may take) and now
        (the blocks they start from); ``top1_ids``: at temperature 0, the arg-max ids already read
        back (host [B][L]; every candidate's tokens), else None. Returns the built candidates and
        whether a kept one commits an EOS."""
        num_candidates, batch_size, length = self.opts.candidate_number, self.batch, self.length
        if len(lookahead_rows) == batch_size:   # every row: the masked positions, once per candidate
            valid = state.masked.expand(num_candidates, batch_size, length).reshape(-1, length)
        else:
            looks = [r in lookahead_rows for r in range(batch_size)]
            valid = torch.tensor([[looks[b] and token == self.mask_id for token in before[b]]
                                  for b in range(batch_size)] * num_candidates, dtype=torch.bool, device=self.device)
        samples = self.strategy.candidate_samples(state, valid)   # [2, N * B, k]
        sampled = state.tokens.shape[-1] > 0
        k = samples.shape[-1]
        per_sample = num_candidates * batch_size * k
        if sampled or top1_ids is None:
            # The candidates' tokens (state.draws): their own draws, or at temperature 0 the arg-max for all.
            source = state.tokens[..., :num_candidates].permute(2, 0, 1) if sampled else state.top1_id
            host = torch.cat([samples.reshape(-1), source.reshape(-1)]).tolist()
            first = 2 * per_sample
            cells = batch_size * length
            tokens = [[host[first + n * cells + b * length:first + n * cells + (b + 1) * length]
                       for b in range(batch_size)] for n in range(num_candidates if sampled else 1)]
        else:   # temperature 0: the arg-max ids came with the step's read-back
            host = samples.reshape(-1).tolist()
            tokens = [top1_ids]
        if not sampled:
            tokens = tokens * num_candidates
        # Candidate 0 takes sample 0 (the unperturbed top-k), the others sample 1.
        sample_start = [0] + [per_sample] * (num_candidates - 1)
        flat = [[host[sample_start[n] + (n * batch_size + b) * k:sample_start[n] + (n * batch_size + b + 1) * k]
                 for b in range(batch_size)] for n in range(num_candidates)]
        commit = commits_on_host(flat, quota, length)
        keep = kept_on_host(commit, lookahead_rows)
        pairs = [(n, b) for n in range(num_candidates) for b in range(batch_size) if keep[n][b]]
        batch = la.host_candidate_batch(pairs, lookahead_rows, commit, tokens, now, self.device)
        cost = None
        if self.opts.variant == "info_gain":
            # C = the current entropies summed over the committed positions (as candidates() sums them).
            # One row: its [1, L] entropies broadcast over the candidates (no gather).
            entropy = state.entropy if batch_size == 1 else state.entropy.index_select(0, batch.row_index)
            cost = torch.where(batch.commit, entropy, 0.0).sum(dim=-1)
        eos = self.eos_id
        commits_eos = eos is not None and any(
            flag and token == eos for n, b in pairs for flag, token in zip(commit[n][b], tokens[n][b]))
        return la.BuiltCandidates(batch, cost, num_candidates), commits_eos

    def _lookahead(self, start: int, candidates, pairs, lookahead_rows, masks_left) -> la.Outcome:
        """Forward the kept candidates ``pairs`` of all rows as one batch and pick each row's best.
        ``candidates``: :class:`~.strategies.Candidates`, or :class:`~.lookahead.BuiltCandidates` (their
        batch already built on the host, see :meth:`_host_candidates`); ``masks_left``: host ints [B],
        the masks a lookahead row's winner leaves in the block."""
        length = self.length
        if isinstance(candidates, la.BuiltCandidates):
            batch, cost, num_candidates = candidates
        else:
            batch = la.candidate_batch(candidates, pairs, lookahead_rows, self.canvas[:, start:start + length])
            cost = candidates.cost[batch.cand_index, batch.row_index] if self.opts.variant == "info_gain" else None
            num_candidates = candidates.commit.shape[0]
        fill_from = self.gen_start if self.mode == "none" else 0
        window, offset = la.candidate_windows(self.mode, self.canvas, batch, start, fill_from, self.mask_id,
                                              self.window_eos_id)
        # H_next window: everything from the block on, except for block-causal models (the block only).
        h_end = offset + length if (self.sampler.block_causal or self.mode == "dual") else window.shape[1]
        # With the fused head, the forward stops at the hidden states (no [R, W, V] logits). A full
        # forward returns the read positions [offset, h_end) only: out_offset is the block's column in it.
        remaining = window[:, offset:h_end] == self.mask_id
        cache_rows = [b for _, b in pairs]
        if self.mode == "none":
            next_out = self.calls.full(window, batch.row_index, slice(offset, h_end), hidden=self.fused_head)
            out_offset = 0
        else:
            read_positions = None
            if self.select_read_positions:
                # Only the still-masked positions are read (the objective, the winner's logits): where
                # selecting them costs no sync, the last layer's MLP skips the others.
                if offset == 0 and h_end == window.shape[1]:
                    read_positions = remaining   # the window is the read range (dual, block causal)
                else:
                    read_positions = torch.zeros_like(window, dtype=torch.bool)
                    read_positions[:, offset:h_end] = remaining
            next_out = self.calls.window(window, start, cache_rows, hidden=self.fused_head, read=read_positions)
            out_offset = offset
        read = next_out[:, out_offset:out_offset + h_end - offset]
        self.recorder.count_lookahead(cache_rows)
        head = None
        if self.fused_head:
            weight = self.model.lm_head_weight
            head = (weight, self.calls.head_bias(weight.shape[0], self.device))
        objective, h_next, fused = la.objective(read, remaining, cost, self.opts.variant, head,
                                                with_top=self.reuse_head_stats, check_arguments=not self.head_checked)
        self.head_checked = True
        # Checked with the next step's read-back (before anything reads the winner's logits there).
        self.lookahead_total = objective.sum()
        winner = la.winners(objective, batch, num_candidates, self.batch)
        rows = batch.rows
        if self.reuse_head_stats:
            # The winners' block statistics, already computed at every still-masked position.
            winner_stats = (fused.entropy, fused.top1_prob, fused.top1_id, fused.top2_prob)
            if len(lookahead_rows) == self.batch:   # every row: the winners' rows are the statistics
                self.head_stats = tuple(value.index_select(0, winner) for value in winner_stats)
                if winner_stats[0].shape[1] != length:   # a read range beyond the block (no cache, prefix)
                    self.head_stats = tuple(value[:, :length] for value in self.head_stats)
                self.head_stats_exact = True
            else:
                if self.head_stats is None:
                    self.head_stats = tuple(t.new_zeros(self.batch, length) for t in winner_stats)
                # Out of place: the recorder keeps the step's statistics (a reused step's are these).
                self.head_stats = tuple(stored.index_put((rows,), value[winner, :length])
                                        for stored, value in zip(self.head_stats, winner_stats))
            for r in lookahead_rows:
                self.head_stats_rows[r] = True
        elif self.fused_head:
            winner_out = next_out[winner, out_offset:out_offset + length]
            # The next step reads the winners' block logits only where the block is still masked: the
            # head runs on those positions (masked ones first; rows with fewer masks repeat others).
            positions = la.still_masked_positions(remaining[winner, :length], max(masks_left[r] for r in lookahead_rows))
            hidden = winner_out.gather(1, positions[..., None].expand(-1, -1, winner_out.shape[-1]))
            self.block_logits[rows[:, None], positions] = self.calls.logits(self.model.logits_from_hidden(hidden))
        else:
            self._store_block_logits(rows, next_out[winner, out_offset:out_offset + length], lookahead_rows)
        return la.Outcome(rows, batch.commit.index_select(0, winner), batch.block.index_select(0, winner), winner,
                          pairs, objective, h_next, batch.commit, batch.block)
