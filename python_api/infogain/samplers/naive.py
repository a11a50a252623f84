"""Naive Info-Gain / LookUM sampler: the speed baseline of ``python -m infogain bench``.

(Slightly over 500 lines on purpose: the baseline is one self-contained file, so that what the
benchmark compares against can be read, and checked against the reference, in one place.)

This is the algorithm of :class:`infogain.samplers.InfoGainSampler` written the
way the reference code bases write it (../shared/REFERENCE.md §3), so that the
benchmark measures what the project's sampler gains over them:

* every row of the batch is decided in a Python loop, one row at a time, with
  ``nonzero()`` / ``.item()`` host synchronisations for every decision;
* the lookahead of each row is its own forward whose candidates get a *copied*
  KV cache (every layer's keys and values repeated N times, the reference's
  ``expand_kv``) instead of candidate rows that share one cache;
* window logits are zero-padded to the full canvas ``[N, T, V]`` and the
  entropies are computed on the whole padded tensor in float32 with separate
  softmax / clamp / log / multiply / sum ops (the reference's
  ``compute_entropy``); the dual-cache block forward writes its K/V back although
  nothing reads them (the reference's block replacement).

It commits the SAME tokens as the fast sampler (the benchmark asserts it at
``temperature=0``; the tests also at ``temperature > 0``), so every decision rule follows
:meth:`infogain.samplers.DiffusionSampler.generate`, not the reference's quirks:
the step schedule (steps split over blocks, remainder to the first blocks; per
row quota = masks at block entry split over the block's steps), last-step fill
before the bypass, at most k bypass tokens (all with ``parallel_bypass``), a
fresh forward after every commit that is not a lookahead win, candidates
evaluated on the state their commit produces (its EOS fill included only with
``lookahead_eos_fill``), H_next = the
mean entropy over the still-masked positions inside the window the lookahead
computed (the block and everything after it; only the block for ``dual`` and for
block-causal models), the mask token suppressed (-inf) and the EOS/PAD
``eos_penalty`` on every forward, and SDAR's exact block-causal cache for
``prefix``/``dual``.

Randomness: at ``temperature=0`` the tokens are the arg-max; at ``temperature > 0``
candidate n's tokens are draw n of :func:`inverse_cdf_draws`, an independent
implementation of ``step_stats``' random stream contract on the same uniforms
(``torch.rand(B * L, N)`` from the run's generator each step). The positions of
candidates 1..N-1 are Gumbel-top-k draws from the same public op as in the fast
sampler (:func:`infogain_kernels.gumbel_topk`, with each row's scores at the same
index of the same ``[N * B, L]`` layout). The generator is advanced exactly as the
fast sampler advances it (the uniforms at T > 0, then one seed per step for the
position draw), so the same ``seed`` gives the same tokens and candidates.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from infogain_kernels import _random, gumbel_topk

from ..models.base import KVCache
from .prompts import build_block_aligned_canvas, generated_tokens

VARIANTS = ("info_gain", "lookum")
CACHE_MODES = ("none", "prefix", "dual")

# Decision of one row at one step (mirrors the fast sampler's commit kinds).
_NONE, _FILL, _BYPASS, _TRIVIAL, _LOOKAHEAD = "none", "fill", "bypass", "trivial", "lookahead"


@dataclass
class NaiveResult:
    """Output of :meth:`NaiveInfoGainSampler.generate`.

    ``sequences``: int64 ``[B, gen_length]``, the generated tokens (no prompt, as
    the fast sampler's ``GenerationResult.sequences``); ``canvas``: int64
    ``[B, P_max + gen_length]`` (left-padded prompts, then the generation);
    ``stats``: counters of the run (see ``generate``).
    """

    sequences: torch.Tensor
    canvas: torch.Tensor
    stats: Dict[str, float] = field(default_factory=dict)


def schedule(masked: int, steps: int) -> List[int]:
    """Tokens to commit per step: ``masked`` split evenly over ``steps``, remainder to the first steps."""
    base, remainder = divmod(masked, steps)
    return [base + (1 if i < remainder else 0) for i in range(steps)]


def compute_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``[..., V]`` -> float32 ``[...]``: ``-sum p log p`` with p clamped at 1e-12 (the reference's form)."""
    probs = torch.softmax(logits.float(), dim=-1)
    probs = probs.clamp(min=1e-12)
    return -(probs * torch.log(probs)).sum(dim=-1)


def copy_cache_rows(cache: KVCache, rows: torch.Tensor) -> KVCache:
    """A new cache holding real copies of batch rows ``rows`` (long ``[R]``, repeats allowed) of ``cache``."""
    def copy(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if t is None else t.index_select(0, rows.to(t.device)).contiguous()

    extra = {}
    if getattr(cache, "boundary", None):   # shift models' block-boundary states (Fast-dLLM v2): per row too
        extra["boundary"] = {position: copy(hidden) for position, hidden in cache.boundary.items()}
    return dataclasses.replace(cache, keys=[copy(k) for k in cache.keys], values=[copy(v) for v in cache.values],
                               token_ids=copy(cache.token_ids), attention_mask=copy(cache.attention_mask), **extra)


def pad_logits(window_logits: torch.Tensor, total_length: int, start: int) -> torch.Tensor:
    """Zero ``[R, total_length, V]`` with ``window_logits [R, W, V]`` written at ``start``."""
    rows, width, vocab = window_logits.shape
    full = window_logits.new_zeros(rows, total_length, vocab)
    full[:, start:start + width] = window_logits
    return full


def inverse_cdf_draws(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float) -> torch.Tensor:
    """Tokens ``[L, S]`` drawn from ``softmax(logits [L, V] / temperature)`` at ``uniforms [L, S]``.

    Draw s is the first token whose cumulative float32 weight ``exp((x - max) / T)`` exceeds
    ``u_s`` times the total (counted, not searched), or the last token of non-zero weight when
    rounding leaves none: ``step_stats``' contract, so the same uniforms give the same tokens.
    """
    x = logits.float()
    weights = torch.exp((x - x.max(dim=-1, keepdim=True).values) / temperature)
    cumulative = torch.cumsum(weights, dim=-1)
    targets = uniforms * cumulative[:, -1:]
    tokens = (cumulative[:, None, :] <= targets[:, :, None]).sum(dim=-1)
    positions = torch.arange(x.shape[-1], device=x.device)
    last_drawable = torch.where(weights > 0, positions, -1).max(dim=-1, keepdim=True).values
    return torch.where(tokens < x.shape[-1], tokens, last_drawable)


def _top_k_positions(scores: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` entries of ``candidates`` (positions) with the highest ``scores``; ties to the lower position."""
    order = torch.argsort(scores[candidates], descending=True, stable=True)
    return candidates[order[:k]]


@dataclass
class _Run:
    """State of one ``generate`` call shared by the step helpers."""

    canvas: torch.Tensor
    attention: torch.Tensor
    gen_start: int
    block_length: int
    total: int
    mode: str
    candidate_number: int
    position_temperature: float
    threshold: float
    temperature: float
    variant: str
    parallel_bypass: bool
    eos_penalty: float
    fill_eos: bool
    lookahead_eos_fill: bool
    generator: torch.Generator
    stats: Dict[str, float]
    block_causal: bool
    start: int = 0
    end: int = 0
    kv: Optional[KVCache] = None


class NaiveInfoGainSampler:
    """Baseline Info-Gain sampler; ``model`` implements :class:`infogain.models.DiffusionLM`
    (any module mapping ``input_ids`` to logits for ``cache="none"``).

    ``mask_id`` defaults to ``model.config.mask_token_id``, then the tokenizer's.
    """

    def __init__(self, model, tokenizer=None, mask_id: Optional[int] = None):
        if model is None:
            raise TypeError("model must be a DiffusionLM, got None")
        self.model = model
        config = getattr(model, "config", None)
        if mask_id is None:
            mask_id = getattr(config, "mask_token_id", None)
        if mask_id is None and tokenizer is not None:
            mask_id = getattr(tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise ValueError("mask_id is None and neither the model config nor the tokenizer declares one")
        if isinstance(mask_id, bool) or not isinstance(mask_id, int):
            raise TypeError(f"mask_id must be an int, got {type(mask_id).__name__}")
        self.mask_id = mask_id
        self.eos_id = getattr(config, "eos_token_id", None)
        if self.eos_id is None and tokenizer is not None:
            self.eos_id = getattr(tokenizer, "eos_token_id", None)
        self.pad_id = getattr(config, "pad_token_id", None)
        if self.pad_id is None and tokenizer is not None:
            self.pad_id = getattr(tokenizer, "pad_token_id", None)
        self.block_causal = bool(getattr(config, "block_causal", False))
        self.blocks_from_position = self.block_causal and getattr(config, "block_anchor", None) == "position"

    # ------------------------------------------------------------------ inputs
    def _canvas(self, prompts, gen_length: int, block_length: int, device: torch.device):
        """(canvas, attention, first decoded column, each row's generation start)."""
        if isinstance(prompts, torch.Tensor):
            if prompts.dim() != 2 or prompts.dtype != torch.long:
                raise ValueError(f"prompts must be a long tensor [B, P], got {prompts.dtype} {tuple(prompts.shape)}")
            rows = prompts.tolist()
        elif isinstance(prompts, (list, tuple)) and prompts and all(isinstance(p, (list, tuple)) for p in prompts):
            rows = [list(p) for p in prompts]
        else:
            raise TypeError("prompts must be a long tensor [B, P] or a non-empty list of token-id lists")
        if any(len(r) == 0 for r in rows):
            raise ValueError("prompts must not contain an empty prompt")
        width = max(len(r) for r in rows)
        fill = self.pad_id if self.pad_id is not None else (self.eos_id if self.eos_id is not None else 0)
        if self.blocks_from_position:   # LLaDA2: the same block-aligned layout as the fast sampler
            canvas, attention, first_block, gen_starts, _ = build_block_aligned_canvas(
                rows, gen_length, block_length, fill, self.mask_id, device)
            return canvas, attention, first_block, gen_starts
        canvas = torch.full((len(rows), width + gen_length), fill, dtype=torch.long)
        attention = torch.zeros(len(rows), width + gen_length, dtype=torch.bool)
        for b, r in enumerate(rows):
            canvas[b, width - len(r):width] = torch.tensor(r, dtype=torch.long)
            attention[b, width - len(r):] = True
        canvas[:, width:] = self.mask_id
        return canvas.to(device), attention.to(device), width, [width] * len(rows)

    @staticmethod
    def _check(gen_length, steps, block_length, candidate_number, position_temperature, threshold, temperature,
               variant, cache, eos_penalty, seed):
        for name, value in (("gen_length", gen_length), ("steps", steps), ("block_length", block_length),
                            ("candidate_number", candidate_number)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if gen_length % block_length:
            raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})")
        if steps < gen_length // block_length:
            raise ValueError(f"steps ({steps}) must be >= the number of blocks ({gen_length // block_length})")
        if not (0.0 < threshold <= 1.0):
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if not position_temperature >= 0 or math.isinf(position_temperature):
            raise ValueError(f"position_temperature must be finite and >= 0, got {position_temperature}")
        if not temperature >= 0 or math.isinf(temperature):
            raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
        if not eos_penalty >= 0:
            raise ValueError(f"eos_penalty must be >= 0, got {eos_penalty}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")

    # ----------------------------------------------------------------- helpers
    def _penalise(self, logits: torch.Tensor, eos_penalty: float) -> torch.Tensor:
        """A copy of ``logits`` with the mask token suppressed (-inf: it is never a prediction, as in the
        fast sampler) and ``eos_penalty`` subtracted from the EOS and PAD logits."""
        logits = logits.clone()
        if self.mask_id < logits.shape[-1]:
            logits[..., self.mask_id] = float("-inf")
        if eos_penalty:
            for token in sorted({t for t in (self.eos_id, self.pad_id) if t is not None}):
                logits[..., token] -= eos_penalty
        return logits

    def _fill_after_eos(self, ids: torch.Tensor, start: int) -> int:
        """In place: masks after the first EOS of ``ids[start:]`` (1-D) become EOS; returns how many."""
        region = ids[start:]
        eos_positions = (region == self.eos_id).nonzero()
        if eos_positions.numel() == 0:
            return 0
        tail = region[int(eos_positions[0].item()) + 1:]
        masked = tail == self.mask_id
        count = int(masked.sum().item())
        tail[masked] = self.eos_id
        return count

    def _full_forward(self, run: _Run, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        kwargs = {"gen_start": run.gen_start, "block_length": run.block_length} if run.block_causal else {}
        output = self.model(ids, attention, **kwargs)
        logits = output if isinstance(output, torch.Tensor) else output.logits
        return self._penalise(logits, run.eos_penalty)

    def _window_forward(self, run: _Run, window: torch.Tensor, cache: KVCache, attention: torch.Tensor,
                        write: bool = False) -> torch.Tensor:
        logits = self.model.forward_window(window, start=run.start, cache=cache, mode=run.mode,
                                           attention_mask=attention, write=write)
        return self._penalise(logits, run.eos_penalty)

    # ---------------------------------------------------------------- generate
    @torch.no_grad()
    def generate(self, prompts: Union[torch.Tensor, Sequence[Sequence[int]]], *, gen_length: int = 256,
                 steps: int = 256, block_length: int = 32, candidate_number: int = 8,
                 position_temperature: float = 0.2, threshold: float = 0.8, temperature: float = 0.0,
                 variant: str = "info_gain", cache: str = "none", parallel_bypass: bool = False,
                 eos_penalty: float = 0.0, stop_at_eos: bool = True, lookahead_eos_fill: bool = False,
                 seed: Optional[int] = None, progress: bool = False) -> NaiveResult:
        """Decode ``gen_length`` tokens after each prompt (the fast sampler's arguments and defaults).

        ``prompts``: long ``[B, P]`` or a list of token-id lists (left padded).
        ``seed`` seeds the run's generator (None: a random seed; the candidates
        then differ from any other run). ``progress`` is accepted and ignored.
        Returns :class:`NaiveResult`; ``stats`` holds ``nfe`` (counted as the fast
        sampler counts: one per batched forward and one per step's lookahead batch),
        ``model_calls`` (forwards this implementation really ran: one lookahead
        per row), ``candidate_evals``, ``tokens`` (per commit kind and
        ``eos_fill``), ``bypass_rate`` (bypass tokens / generated tokens),
        ``cumulative_entropy``, ``wall_time_s`` and ``tokens_per_second``.
        """
        del progress
        self._check(gen_length, steps, block_length, candidate_number, position_temperature, threshold,
                    temperature, variant, cache, eos_penalty, seed)
        device = next(self.model.parameters()).device
        started = time.perf_counter()
        canvas, attention, gen_start, gen_starts = self._canvas(prompts, gen_length, block_length, device)
        batch, total = canvas.shape
        mode = "block_causal" if (cache != "none" and self.block_causal) else cache
        generator = torch.Generator(device=device)
        generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2 ** 62, (1,)).item()))
        stats: Dict[str, float] = {"nfe": 0, "model_calls": 0, "candidate_evals": 0, "cumulative_entropy": 0.0,
                                   "tokens": {k: 0 for k in (_BYPASS, _LOOKAHEAD, _FILL, _TRIVIAL, "eos_fill")}}
        run = _Run(canvas=canvas, attention=attention, gen_start=gen_start, block_length=block_length,
                   total=total, mode=mode, candidate_number=candidate_number,
                   position_temperature=position_temperature, threshold=threshold, temperature=temperature,
                   variant=variant,
                   parallel_bypass=parallel_bypass, eos_penalty=eos_penalty,
                   fill_eos=stop_at_eos and self.eos_id is not None, lookahead_eos_fill=lookahead_eos_fill,
                   generator=generator, stats=stats,
                   block_causal=self.block_causal)
        num_blocks = (total - gen_start) // block_length   # one more on a block-aligned canvas, at most
        base_steps, extra_steps = divmod(steps, gen_length // block_length)
        for block in range(num_blocks):
            run.start = gen_start + block * block_length
            run.end = run.start + block_length
            self._decode_block(run, base_steps + (1 if block < extra_steps else 0))
            if mode == "block_causal" and block + 1 < num_blocks:
                # Append the finished block's K/V to the exact block-causal cache.
                self._window_forward(run, canvas[:, run.start:run.end], run.kv, attention, write=True)
                stats["nfe"] += 1
                stats["model_calls"] += 1
        wall = time.perf_counter() - started
        stats["bypass_rate"] = stats["tokens"][_BYPASS] / (batch * gen_length)
        stats["wall_time_s"] = wall
        stats["tokens_per_second"] = batch * gen_length / wall if wall > 0 else float("inf")
        return NaiveResult(sequences=generated_tokens(canvas, gen_starts, gen_length), canvas=canvas, stats=stats)

    def _decode_block(self, run: _Run, steps: int) -> None:
        canvas, batch, start, end = run.canvas, run.canvas.shape[0], run.start, run.end
        block_logits: List[Optional[torch.Tensor]] = [None] * batch  # per row [L, V]; None = needs a forward
        if run.mode in ("prefix", "dual") or (run.mode == "block_causal" and run.kv is None):
            prefill_start = run.gen_start if run.mode == "block_causal" else start
            full, run.kv = self.model.prefill(canvas, run.attention, mode=run.mode, start=prefill_start,
                                              gen_start=run.gen_start, block_length=run.block_length)
            full = self._penalise(full, run.eos_penalty)
            run.stats["nfe"] += 1
            run.stats["model_calls"] += 1
            block_logits = [full[b, start:end] for b in range(batch)]
        initial = [int((canvas[b, start:end] == self.mask_id).sum().item()) for b in range(batch)]
        quotas = [schedule(n, steps) for n in initial]
        masks_left = [1] * batch  # as the fast sampler: unknown before the first step, assume some
        for step in range(steps):
            need = [b for b in range(batch) if block_logits[b] is None and masks_left[b] > 0]
            if need:
                fresh = self._forward_rows(run, need)
                for i, b in enumerate(need):
                    block_logits[b] = fresh[i]
            masks_left = self._step(run, block_logits, [quotas[b][step] for b in range(batch)],
                                    step == steps - 1)
            if not any(masks_left):
                return

    def _forward_rows(self, run: _Run, rows: List[int]) -> torch.Tensor:
        """Fresh block logits ``[len(rows), L, V]`` of batch rows ``rows``."""
        start, end = run.start, run.end
        index = torch.tensor(rows, dtype=torch.long, device=run.canvas.device)
        ids, attention = run.canvas[index], run.attention[index]
        run.stats["nfe"] += 1
        run.stats["model_calls"] += 1
        if run.mode == "none":
            return self._full_forward(run, ids, attention)[:, start:end]
        cache = run.kv if len(rows) == run.canvas.shape[0] else copy_cache_rows(run.kv, index)
        if run.mode == "prefix":
            window = self._window_forward(run, ids[:, start:], cache, attention)
            return pad_logits(window, run.total, start)[:, start:end]
        # dual writes the block K/V back (the reference's block replacement; nothing reads them)
        return self._window_forward(run, ids[:, start:end], cache, attention,
                                    write=run.mode == "dual" and cache is run.kv)

    def _step(self, run: _Run, block_logits: List[Optional[torch.Tensor]], quotas: List[int],
              last: bool) -> List[int]:
        """One step of every row; commits into the canvas, updates ``block_logits`` (None = stale);
        returns the rows' masks-left counts as the fast sampler computes them."""
        canvas, batch, start, end = run.canvas, run.canvas.shape[0], run.start, run.end
        device = canvas.device
        trivial = run.position_temperature <= 0 or run.candidate_number <= 1
        # The fast sampler's step_stats draws the uniforms of all B * L positions (none at temperature
        # 0, where the tokens are the arg-max); unless trivial, it then ranks positions with one gumbel_topk.
        uniforms = None
        if run.temperature > 0:
            uniforms = torch.rand(batch * (end - start), max(1, run.candidate_number), generator=run.generator,
                                  device=device, dtype=torch.float32).view(batch, end - start, -1)
        topk_state = run.generator.get_state()
        kinds, masks_left, lookahead = [_NONE] * batch, [0] * batch, {}
        for b in range(batch):
            masked = (canvas[b, start:end] == self.mask_id).nonzero().flatten()
            masks_left[b] = masked.numel()
            if masked.numel() == 0:
                continue
            logits = block_logits[b]
            probs = torch.softmax(logits.float(), dim=-1)
            top_prob, top_token = probs.max(dim=-1)
            entropy_now = compute_entropy(logits)
            # draws[n]: candidate n's tokens [L] (draw 0 = x0), confidences[n] their probabilities.
            if uniforms is None:
                draws = top_token[None].expand(max(1, run.candidate_number), -1)
            else:
                draws = inverse_cdf_draws(logits, uniforms[b], run.temperature).T
            confidences = probs.gather(-1, draws.T).T
            k = quotas[b]
            if k >= masked.numel() or last:
                kinds[b], chosen = _FILL, masked
            elif k == 0:
                continue
            else:
                confident = masked[top_prob[masked] >= run.threshold]
                if confident.numel() > 0:
                    kinds[b] = _BYPASS
                    chosen = confident if run.parallel_bypass else _top_k_positions(top_prob, confident, k)
                elif trivial:
                    kinds[b], chosen = _TRIVIAL, _top_k_positions(confidences[0], masked, k)
                else:
                    run.generator.set_state(topk_state)
                    actions = self._candidates(run, confidences, masked, k, b)
                    kinds[b] = _LOOKAHEAD
                    lookahead[b] = (actions, draws, entropy_now)
                    masks_left[b] = masked.numel() - k
                    continue
            # The bypass commits the arg-max whatever the temperature; the other kinds x0.
            self._commit(run, b, chosen, top_token if kinds[b] == _BYPASS else draws[0], entropy_now, kinds[b])
            block_logits[b] = None
        if not trivial and not last:  # the fast sampler builds no candidates on a block's last step
            run.generator.set_state(topk_state)
            _random.draw_seed(run.generator, device)
        for b in range(batch):
            self._eos_fill(run, b)
            if kinds[b] != _LOOKAHEAD:
                masks_left[b] = int((canvas[b, start:end] == self.mask_id).sum().item())
        if lookahead:
            run.stats["nfe"] += 1
            for b, (actions, draws, entropy_now) in lookahead.items():
                block_logits[b] = self._lookahead_and_commit(run, b, actions, draws, entropy_now)
                self._eos_fill(run, b)
        return masks_left

    def _eos_fill(self, run: _Run, row: int) -> int:
        if not run.fill_eos:
            return 0
        count = self._fill_after_eos(run.canvas[row], run.gen_start)
        run.stats["tokens"]["eos_fill"] += count
        return count

    def _commit(self, run: _Run, row: int, positions: torch.Tensor, tokens: torch.Tensor,
                entropy_now: torch.Tensor, kind: str) -> None:
        run.canvas[row, run.start + positions] = tokens[positions]
        run.stats["tokens"][kind] += int(positions.numel())
        run.stats["cumulative_entropy"] += float(entropy_now[positions].sum().item())

    def _candidates(self, run: _Run, confidences: torch.Tensor, masked: torch.Tensor, k: int,
                    row: int) -> List[Tuple[int, torch.Tensor]]:
        """``(candidate index, positions long [k])`` of row ``row``'s candidates with unique position
        sets (first occurrence wins); candidate n ranks positions by ``confidences[n]`` ``[L]``.

        The fast sampler ranks the candidates of all rows in ONE ``gumbel_topk``
        call over ``[N * B, L]`` scores (candidate-major) and a row's noise depends
        on its index in that call, so this row's candidates sit at the same
        indices (the other rows' slots are left invalid).
        """
        batch, length, count = run.canvas.shape[0], confidences.shape[1], run.candidate_number
        scores = torch.zeros(count * batch, length, dtype=torch.float32, device=confidences.device)
        valid = torch.zeros(count * batch, length, dtype=torch.bool, device=confidences.device)
        scores[row::batch, masked] = confidences[:count, masked]
        valid[row::batch, masked] = True
        samples = gumbel_topk(scores, k, 2, run.position_temperature, valid=valid, generator=run.generator)
        per_candidate = torch.cat([samples[0, row:row + 1], samples[1, batch + row::batch]], dim=0)
        actions, seen = [], set()
        for index, positions in enumerate(per_candidate):
            positions = positions[positions >= 0]
            key = tuple(sorted(positions.tolist()))
            if key not in seen:
                seen.add(key)
                actions.append((index, positions))
        return actions

    def _lookahead_and_commit(self, run: _Run, row: int, actions: List[Tuple[int, torch.Tensor]],
                              draws: torch.Tensor, entropy_now: torch.Tensor) -> torch.Tensor:
        """Forward row ``row``'s candidates with a copied cache, commit the best; returns its block logits."""
        start, end, total = run.start, run.end, run.total
        count = len(actions)
        candidates = run.canvas[row:row + 1].repeat(count, 1)
        for c, (index, positions) in enumerate(actions):
            candidates[c, start + positions] = draws[index, positions]
            if run.fill_eos and run.lookahead_eos_fill:
                self._fill_after_eos(candidates[c], run.gen_start)
        attention = run.attention[row:row + 1].repeat(count, 1)
        if run.mode == "none":
            next_logits = self._full_forward(run, candidates, attention)
        else:
            copies = copy_cache_rows(run.kv, torch.full((count,), row, dtype=torch.long))
            window = candidates[:, start:] if run.mode == "prefix" else candidates[:, start:end]
            next_logits = pad_logits(self._window_forward(run, window, copies, attention), total, start)
        run.stats["model_calls"] += 1
        run.stats["candidate_evals"] += count
        next_entropy = compute_entropy(next_logits)  # [N, T]: the whole padded canvas, as the reference does
        h_end = end if (run.block_causal or run.mode == "dual") else total
        objective = []
        for c, (_, positions) in enumerate(actions):
            still_masked = (candidates[c, start:h_end] == self.mask_id).nonzero().flatten() + start
            h_next = next_entropy[c, still_masked].mean() if still_masked.numel() else torch.zeros(())
            cost = entropy_now[positions].sum() if run.variant == "info_gain" else torch.zeros(())
            objective.append(float((-cost - h_next).item()))
        best = max(range(count), key=lambda c: (objective[c], -c))  # ties: the earlier candidate
        index, positions = actions[best]
        self._commit(run, row, positions, draws[index], entropy_now, _LOOKAHEAD)
        return next_logits[best, start:end]
