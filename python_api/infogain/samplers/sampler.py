"""The sampler driver shared by Info-Gain / LookUM and the baseline samplers.

One code path (:class:`DiffusionSampler`); a :class:`~.strategies.Strategy`
decides what each step commits. See :meth:`DiffusionSampler.generate` for the
algorithm, the cache modes and the deliberate differences from the reference
implementations.
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from infogain_kernels import lm_head_entropy, lookahead_objective, step_stats
from infogain_kernels.step_stats import SKIPPED_ENTROPY, SKIPPED_ID, SKIPPED_PROB

from .._device import host_ints_to_device
from ..stats import COMMIT_KINDS, KIND_FILL, KIND_LOOKAHEAD, KIND_NONE, RunStats, StatsRecorder
from .strategies import InfoGainStrategy, StepDecision, StepState, Strategy, make_strategy

CACHE_MODES = ("none", "prefix", "dual")
VARIANTS = ("info_gain", "lookum")


@dataclass
class GenerateOptions:
    """Options of :meth:`DiffusionSampler.generate` (see there); validated by :meth:`validate`."""

    gen_length: int = 256
    steps: int = 256
    block_length: int = 32
    candidate_number: int = 8
    position_temperature: float = 0.2
    threshold: float = 0.8
    temperature: float = 0.0
    variant: str = "info_gain"
    cache: str = "none"
    parallel_bypass: bool = False
    eos_penalty: float = 0.0
    stop_at_eos: bool = True
    lookahead_eos_fill: bool = False
    chat: bool = False
    seed: Optional[int] = None
    progress: bool = False
    gamma: float = 0.01
    record: bool = False
    on_block: Optional[Callable[[int, torch.Tensor], None]] = None
    fused_head: bool = True

    def validate(self) -> "GenerateOptions":
        for name in ("gen_length", "steps", "block_length", "candidate_number"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.gen_length % self.block_length != 0:
            raise ValueError(f"gen_length ({self.gen_length}) must be a multiple of block_length ({self.block_length})")
        num_blocks = self.gen_length // self.block_length
        if self.steps < num_blocks:
            raise ValueError(f"steps ({self.steps}) must be >= the number of blocks gen_length/block_length "
                             f"({num_blocks}): every block needs at least one step")
        for name in ("position_temperature", "threshold", "temperature", "eos_penalty", "gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        for name in ("position_temperature", "temperature", "gamma"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {self.cache!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise TypeError(f"seed must be an int or None, got {type(self.seed).__name__}")
        for name in ("parallel_bypass", "stop_at_eos", "lookahead_eos_fill", "chat", "progress", "record",
                     "fused_head"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")
        if self.on_block is not None and not callable(self.on_block):
            raise TypeError(f"on_block must be callable or None, got {type(self.on_block).__name__}")
        return self


@dataclass
class GenerationResult:
    """Output of ``generate``.

    Attributes:
        sequences: int64 [B, gen_length], the generated tokens of each prompt
            (including the EOS fill; no prompt, no padding).
        texts: decoded generations (cut at the first EOS, special tokens skipped),
            or None without a tokenizer.
        stats: the run's :class:`~infogain.stats.RunStats`.
        canvas: int64 [B, P + gen_length], the final canvas (left-padded prompts then
            the generation); ``attention_mask`` bool [B, P + gen_length] marks the padding.
        trace: with ``record=True``, one dict per step (block, step, and per row the
            kind, committed positions/tokens and, for lookahead rows, the candidates
            with their cost C, H_next and J and the winner); else None.
    """

    sequences: torch.Tensor
    texts: Optional[List[str]]
    stats: RunStats
    canvas: Optional[torch.Tensor] = None
    attention_mask: Optional[torch.Tensor] = None
    trace: Optional[List[dict]] = None


def _config_value(obj, name):
    value = getattr(obj, name, None) if obj is not None else None
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return value


def _exposes_hidden_states(model, mode: str) -> bool:
    """Whether the lookahead of ``mode`` can run on ``model``'s hidden states: an
    ``infogain.models`` DiffusionLM that implements the hidden-state forward the mode uses and
    the LM head weight, and keeps the plain head ``logits = hidden @ lm_head_weight.T``."""
    from ..models.base import DiffusionLM

    if not isinstance(model, DiffusionLM):
        return False
    model_type = type(model)
    implemented = ("hidden_states" if mode == "none" else "window_hidden_states", "lm_head_weight")
    return (all(getattr(model_type, name) is not getattr(DiffusionLM, name) for name in implemented)
            and model_type.logits_from_hidden is DiffusionLM.logits_from_hidden)


def _host_reads_are_free(device: torch.device) -> bool:
    """Whether reading a small tensor back from ``device`` costs no synchronisation (the CPU).

    Then the driver reads the decision kinds back before it builds the lookahead candidates and
    builds them only on steps where some row looks ahead (a second read, of their kept mask, on
    those steps); on an accelerator it builds them before its one read-back per step."""
    return device.type == "cpu"


def _masks_after_first_eos(ids: torch.Tensor, mask_id: int, eos_id: int) -> torch.Tensor:
    """bool [R, W]: the masks of ``ids`` [R, W] that follow the first EOS of their row (the EOS fill)."""
    return ((ids == eos_id).cumsum(dim=1) > 0) & (ids == mask_id)


class DiffusionSampler:
    """Masked-diffusion sampler driven by a selection strategy.

    Args:
        model: a :class:`~infogain.models.DiffusionLM`, or any module mapping
            ``input_ids [B, T]`` (and ``attention_mask``) to logits ``[B, T, V]`` (a
            tensor or an object with ``.logits``); the latter works with ``cache="none"``.
        tokenizer: optional; needed for string prompts and for ``texts``.
        strategy: a sampler name (see :data:`SAMPLERS`) or a :class:`Strategy`.
        mask_id: the mask token id; defaults to ``model.config.mask_token_id``, then
            ``tokenizer.mask_token_id``.
        **defaults: default values for :meth:`generate`'s options.
    """

    def __init__(self, model, tokenizer=None, *, strategy="info_gain", mask_id: Optional[int] = None,
                 **defaults):
        if not callable(model):
            raise TypeError(f"model must be a callable model, got {type(model).__name__}")
        if isinstance(strategy, str):
            self.name = strategy
            strategy = make_strategy(strategy)
        elif isinstance(strategy, Strategy):
            self.name = strategy.name
        else:
            raise TypeError(f"strategy must be a sampler name or a Strategy, got {type(strategy).__name__}")
        self.model = model
        self.tokenizer = tokenizer
        self.strategy = strategy
        config = getattr(model, "config", None)
        if mask_id is None:
            mask_id = _config_value(config, "mask_token_id")
        if mask_id is None:
            mask_id = _config_value(tokenizer, "mask_token_id")
        if mask_id is None:
            raise ValueError("mask_id is required: neither model.config.mask_token_id nor "
                             "tokenizer.mask_token_id is set")
        if isinstance(mask_id, bool) or not isinstance(mask_id, int) or mask_id < 0:
            raise TypeError(f"mask_id must be a non-negative int, got {mask_id!r}")
        self.mask_id = mask_id
        self.eos_id = _config_value(config, "eos_token_id")
        if self.eos_id is None:
            self.eos_id = _config_value(tokenizer, "eos_token_id")
        self.pad_id = _config_value(config, "pad_token_id")
        if self.pad_id is None:
            self.pad_id = _config_value(tokenizer, "pad_token_id")
        self.block_causal = bool(getattr(config, "block_causal", False))
        self.max_positions = _config_value(config, "max_position_embeddings")
        # Validate the defaults now so that a bad default fails at construction.
        GenerateOptions(**defaults).validate()
        self.defaults = dict(defaults)

    # ------------------------------------------------------------------ prompts

    def _encode(self, prompts, chat: bool) -> List[List[int]]:
        """Token id lists of the prompts (strings, id lists or a tensor)."""
        if chat and not (isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and len(prompts) > 0
                                                      and all(isinstance(p, str) for p in prompts))):
            raise ValueError("chat=True applies the tokenizer's chat template to string prompts; these prompts "
                             "are token ids (apply the template before tokenizing, or pass chat=False)")
        if isinstance(prompts, torch.Tensor):
            if prompts.dtype in (torch.bool,) or prompts.dtype.is_floating_point or prompts.dtype.is_complex:
                raise TypeError(f"prompts tensor must have an integer dtype, got {prompts.dtype}")
            if prompts.dim() == 1:
                prompts = prompts[None]
            if prompts.dim() != 2:
                raise ValueError(f"prompts tensor must be [P] or [B, P], got shape {tuple(prompts.shape)}")
            rows = [list(map(int, row)) for row in prompts.tolist()]
        elif isinstance(prompts, str):
            rows = [self._encode_text(prompts, chat)]
        elif isinstance(prompts, (list, tuple)):
            if len(prompts) == 0:
                raise ValueError("prompts must not be empty")
            if all(isinstance(p, int) and not isinstance(p, bool) for p in prompts):
                rows = [list(prompts)]
            else:
                rows = []
                for i, p in enumerate(prompts):
                    if isinstance(p, str):
                        rows.append(self._encode_text(p, chat))
                    elif isinstance(p, torch.Tensor) and p.dim() == 1 and not p.dtype.is_floating_point:
                        rows.append([int(t) for t in p.tolist()])
                    elif isinstance(p, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool)
                                                              for t in p):
                        rows.append(list(p))
                    else:
                        raise TypeError(f"prompts[{i}] must be a string, a list of token ids or a 1-D integer "
                                        f"tensor, got {type(p).__name__}")
        else:
            raise TypeError(f"prompts must be a string, a list or a tensor, got {type(prompts).__name__}")
        vocab_size = _config_value(getattr(self.model, "config", None), "vocab_size")
        for i, row in enumerate(rows):
            if len(row) == 0:
                raise ValueError(f"prompts[{i}] is empty")
            if any(t < 0 for t in row):
                raise ValueError(f"prompts[{i}] contains a negative token id")
            if isinstance(vocab_size, int) and any(t >= vocab_size for t in row):
                raise ValueError(f"prompts[{i}] contains a token id >= the model's vocab_size ({vocab_size})")
            if self.mask_id in row:
                # A mask in the prompt would be neither decoded nor kept meaningfully.
                raise ValueError(f"prompts[{i}] contains the mask token id {self.mask_id} at position "
                                 f"{row.index(self.mask_id)}; only the generation region is decoded")
        return rows

    def _encode_text(self, text: str, chat: bool) -> List[int]:
        if self.tokenizer is None:
            raise ValueError("a tokenizer is required to encode string prompts")
        if chat:
            if not getattr(self.tokenizer, "chat_template", None):
                raise ValueError("chat=True but the tokenizer has no chat template; pass chat=False")
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
            # The template already holds the special tokens (BOS); do not add them twice.
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return list(self.tokenizer(text)["input_ids"])

    # ------------------------------------------------------------------ model calls

    def _supports_cache(self) -> bool:
        from ..models.base import DiffusionLM

        model = self.model
        for method in ("prefill", "forward_window"):
            if not callable(getattr(model, method, None)):
                return False
            if isinstance(model, DiffusionLM) and getattr(type(model), method) is getattr(DiffusionLM, method):
                return False
        return True

    # ------------------------------------------------------------------ generate

    def generate(self, prompts, **options) -> GenerationResult:
        """Generate ``gen_length`` tokens after each prompt.

        Args:
            prompts: a string (needs the tokenizer), a list of strings, a list of
                token ids, a list of such lists, or an integer tensor ``[P]`` / ``[B, P]``.
                A prompt must not contain the mask token (ValueError).
                Prompts of different lengths are left padded into one canvas with an
                attention mask; every row is decided independently.
            gen_length: tokens to generate per prompt (a multiple of ``block_length``).
            steps: total denoising steps, split evenly over the ``gen_length /
                block_length`` blocks (the first ``steps % blocks`` blocks get one more);
                must be >= the number of blocks. Unscheduled samplers (``fast_dllm``,
                ``eb``) decode each block until it has no masks and ignore ``steps``
                beyond this check.
            block_length: block size; blocks are decoded left to right.
            candidate_number: N lookahead candidates (Info-Gain / LookUM).
            position_temperature: temperature of the Gumbel-top-k position sampling
                of candidates 1..N-1; <= 0 disables the lookahead (trivial path).
            threshold: in (0, 1]; Info-Gain bypass threshold on the top-1 probability,
                Fast-dLLM confidence threshold.
            temperature: token sampling temperature (>= 0; 0 = arg-max). Tokens are
                really drawn from softmax(logits / temperature) for every model.
            variant: "info_gain" (J = -C - H_next) or "lookum" (J = -H_next).
            cache: "none" (full forwards), "prefix" or "dual" (see below).
            parallel_bypass: commit every position above the threshold, not at most k.
            eos_penalty: subtracted from the EOS (and PAD, when different) logits of
                every forward, lookahead included (default 0 = no penalty). The mask
                token's logit is always set to -inf (it is never a prediction).
            stop_at_eos: after a row's first EOS in the generation region, fill its
                remaining masks with EOS (counted as "eos_fill").
            lookahead_eos_fill: score each lookahead candidate on the state its
                commit produces *including* the EOS fill (a candidate committing EOS
                then sees the masks after it filled, H_next over fewer masks, down to
                0: a bias toward early EOS). Default False, the reference pipeline:
                candidates are scored without the fill, and the winner's lookahead
                logits (of that unfilled state) are reused as the next step's logits,
                as the reference does, while the canvas itself is still EOS filled
                (``stop_at_eos``). Measured with ``benches/bench_lookahead_eos.py``
                (toy model, demo settings, 100 held-out problems x 3 seeds, 1 thread):
                on the demo tasks both settings give identical outputs (multiplication
                accuracy 0.963, sudoku 0.660; also with 4 extra positions), since the
                toy model never emits EOS unprompted; with EOS logits raised by 11-14
                the fill changes decisions -- lower cumulative entropy (3.15 vs 5.66
                at +14 on multiplication) and a different early-stop rate (+11: 0.33 vs
                0.15 with / without fill; +12: 0.57 vs 0.74) -- with no accuracy gain
                on sudoku (0.223 vs 0.230 at +14). No measured benefit, so the
                default reproduces the reference.
            chat: apply the tokenizer's chat template to string prompts (ValueError when the
                tokenizer has none or the prompts are token ids).
            seed: seeds the run's generator (same seed, device and backend -> same
                result); None draws from torch's default generator.
            progress: show a tqdm progress bar over blocks.
            gamma: entropy bound of the "eb" sampler.
            fused_head: score lookahead candidates from the model's hidden states with
                ``infogain_kernels.lm_head_entropy`` (no lookahead logits [R, W, V] are ever
                allocated; the winner's block logits are recomputed from its hidden states)
                when the model exposes them (an ``infogain.models`` DiffusionLM); False, or
                any other model, forwards the candidates to logits. The entropies are those
                of the same post-processed logits, so trajectories are identical (up to
                float rounding of near ties in half precision).
            record: return a per-step ``trace`` (costs extra host synchronisation;
                for tests and debugging).
            on_block: called as ``on_block(block, tokens)`` after each block is
                decoded, with ``tokens`` an int64 ``[B, gen_length]`` copy of the
                generation region (later blocks still hold the mask id, the EOS fill
                included); e.g. to show an answer block by block. Reading it syncs.

        Returns:
            :class:`GenerationResult`.

        Algorithm (per block, per step; every row independently): the block's
        logits come from a forward or, after a lookahead commit, from the winning
        candidate's lookahead logits (no extra forward). The step quota k follows
        the LLaDA schedule (masked count at block entry divided evenly over the
        block's steps, remainder to the first steps). The last step of a block, or
        a step with k >= masks left, fills every mask with tokens drawn at
        ``temperature``; otherwise the strategy decides (see the strategies). For
        Info-Gain, H_next is the mean entropy of the lookahead logits over the
        positions still masked inside the window the lookahead computed: the block
        and everything after it for "none"/"prefix", the block for "dual" and for
        block-causal models (the reference's zero-padded rows counted as uniform
        are not reproduced). Each candidate is evaluated on the state its commit
        produces (with ``lookahead_eos_fill``, its EOS fill included, so the reused
        logits are exact; without it, they are those of the unfilled state, as in
        the reference).

        Cache modes. "prefix": at block entry one full forward (``prefill``) caches
        the K/V before the block; later forwards cover the block and everything
        after it. "dual": at block entry ``prefill`` caches the whole canvas; later
        forwards (and the lookahead) cover only the block. The block's own cached
        K/V are never read (a window's queries attend to the window's fresh keys),
        so no block replacement is written back: the next block's prefill
        recomputes everything. Block-causal models (``model.config.block_causal``,
        SDAR) use their exact cache for "prefix" and "dual" ("block_causal": prompt
        prefill, block forwards, finished blocks appended with ``write=True``) and
        full forwards receive ``gen_start``/``block_length``. Lookahead candidates
        of all rows are ONE forward batch that reads the shared cache through
        ``cache_rows``; no cache is ever copied per candidate.

        Synchronisation: at most ONE host read-back per step on an accelerator. The driver
        reads one packed tensor back per step (the rows' decision kinds, their mask counts,
        the kept-candidate mask and a NaN / all -inf flag), which sizes the lookahead
        batch and picks the rows that need a fresh forward. On the CPU, where a read-back
        is a copy, the candidates are built after that read-back and only on steps where
        some row looks ahead (their kept mask is a second read there); the random stream
        and the decisions are the same either way. The fused ops run with
        ``check_values=False``; their bad-row flags (non-finite entropy of the block
        logits, non-finite J of the lookahead) are folded into that read-back, the
        lookahead's into the next step's (a lookahead step is never a block's last).
        A lookahead batch is sized on the host from that read-back, so it comes
        after it; winner selection and the commit stay on the device. Index tensors
        go to the device by non-blocking copies, the model is called with
        ``check_values=False`` after the run's first call (when it accepts that
        keyword) and without an attention mask when no prompt is padded. The run's
        setup and end (first checked model call, statistics, sequences) add a few.
        With ``record=True`` the trace adds read-backs.

        Deliberate differences from the reference: the bypass commits at most k
        tokens (all with ``parallel_bypass``) and the last-step fill takes
        precedence over it; bypass rows get a fresh forward next step; candidate
        n >= 1 ranks positions by the confidence of its own tokens; the EOS fill
        also runs before the lookahead; no Dream-style block-entry commit.
        """
        opts = GenerateOptions(**{**self.defaults, **options}).validate()
        started = time.perf_counter()
        with torch.inference_mode():
            result = self._generate(prompts, opts)
        # Inference-mode tensors cannot enter autograd (e.g. scoring the generations with the
        # model outside no_grad); hand back ordinary copies (a few KB).
        for name in ("sequences", "canvas", "attention_mask"):
            value = getattr(result, name)
            if isinstance(value, torch.Tensor):
                setattr(result, name, value.clone())
        result.stats.wall_time_s = time.perf_counter() - started
        return result

    def _device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except (AttributeError, StopIteration, TypeError):
            return torch.device("cpu")

    def _generate(self, prompts, opts: GenerateOptions) -> GenerationResult:
        rows = self._encode(prompts, opts.chat)
        batch = len(rows)
        prompt_length = max(len(r) for r in rows)
        total = prompt_length + opts.gen_length
        if self.max_positions is not None and total > self.max_positions:
            raise ValueError(f"prompt ({prompt_length} tokens) + gen_length ({opts.gen_length}) = {total} exceeds "
                             f"the model's max_position_embeddings ({self.max_positions})")
        mode = opts.cache
        if mode != "none":
            if not self._supports_cache():
                raise ValueError(f"cache={mode!r} needs a model with prefill and forward_window "
                                 f"(an infogain.models DiffusionLM); use cache='none'")
            if self.block_causal:
                mode = "block_causal"
        device = self._device()
        pad_id = self.pad_id if self.pad_id is not None else (self.eos_id if self.eos_id is not None else 0)

        canvas = torch.full((batch, total), pad_id, dtype=torch.long, device=device)
        attention = torch.zeros(batch, total, dtype=torch.bool, device=device)
        for b, row in enumerate(rows):
            canvas[b, prompt_length - len(row):prompt_length] = torch.tensor(row, dtype=torch.long)
            attention[b, prompt_length - len(row):] = True
        canvas[:, prompt_length:] = self.mask_id

        generator = None
        if opts.seed is not None:
            generator = torch.Generator(device=device)
            generator.manual_seed(opts.seed)

        padded = any(len(row) < prompt_length for row in rows)
        run = _Run(self, opts, mode, canvas, attention, prompt_length, generator, padded)
        run.decode()
        name = opts.variant if isinstance(self.strategy, InfoGainStrategy) else self.name
        stats = run.recorder.finish(name, 0.0, opts.gen_length)
        sequences = canvas[:, prompt_length:].clone()
        texts = None
        if self.tokenizer is not None:
            texts = []
            for row in sequences.tolist():
                if self.eos_id is not None and self.eos_id in row:
                    row = row[:row.index(self.eos_id)]
                texts.append(self.tokenizer.decode(row, skip_special_tokens=True))
        return GenerationResult(sequences=sequences, texts=texts, stats=stats, canvas=canvas,
                                attention_mask=attention, trace=run.trace if opts.record else None)


class _Run:
    """State of one ``generate`` call (canvas, cache, block logits, statistics)."""

    def __init__(self, sampler: DiffusionSampler, opts: GenerateOptions, mode: str, canvas, attention,
                 gen_start: int, generator, padded: bool):
        self.sampler = sampler
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
        self.penalized_ids = sorted({t for t in (sampler.eos_id, sampler.pad_id) if t is not None})
        self.recorder = StatsRecorder(self.batch, self.device)
        self.trace: List[dict] = []
        self.cache = None
        self.block_logits: Optional[torch.Tensor] = None  # [B, L, V], model dtype
        # The mask the model receives: None when no prompt is padded (known on the host), so the
        # model neither applies nor reads it.
        self.model_attention = attention if padded else None
        # Value checks of the model (token-id range, mask inspection) cost host syncs: the run's
        # first call keeps them (the canvas holds the prompts then); later canvases only hold
        # tokens drawn from the model's own logits, so later calls skip them.
        self.first_call = True
        self.model_accepts: Dict[Tuple[str, str], bool] = {}
        # Device flag of the last lookahead's non-finite objective, read with the next step.
        self.lookahead_bad: Optional[torch.Tensor] = None
        # Lookahead on hidden states (lm_head_entropy) instead of logits, when the model allows it.
        self.hidden_head = _exposes_hidden_states(self.model, mode)
        self.fused_head = opts.fused_head and self.hidden_head
        self.head_bias: Optional[torch.Tensor] = None   # [V] float32, built at the first fused lookahead
        # On the CPU the candidates are built after the read-back (deferred) and the lookahead's last
        # layer skips the positions nobody reads, both because a read-back costs nothing there.
        self.reads_free = _host_reads_are_free(self.device)
        # At temperature 0 a step needs only the statistics of its block, which the fused lookahead
        # computes for every candidate anyway (with_top): the winner's are kept, and its block logits
        # are never computed. head_stats_rows: host flags of the rows whose statistics are those.
        self.reuse_head_stats = self.fused_head and opts.temperature == 0
        self.head_stats: Optional[Tuple[torch.Tensor, ...]] = None  # entropy, top1_prob, top1_id, top2_prob [B, L]
        self.head_stats_rows = [False] * self.batch

    def _accepts(self, method_name: str, parameter: str) -> bool:
        """Whether the model's method takes ``parameter`` (inspected once per run, not per call)."""
        key = (method_name, parameter)
        if key not in self.model_accepts:
            method = getattr(self.model, method_name, self.model)
            try:
                accepts = parameter in inspect.signature(method).parameters
            except (TypeError, ValueError):
                accepts = False
            self.model_accepts[key] = accepts
        return self.model_accepts[key]

    def _model_kwargs(self, method_name: str) -> dict:
        """``check_values=False`` for every call after the first, when the model's method accepts it."""
        if self.first_call:
            self.first_call = False
            return {}
        return {"check_values": False} if self._accepts(method_name, "check_values") else {}

    # -------------------------------------------------------------- forwards

    def _logits(self, output) -> torch.Tensor:
        """The logits of a model call, post-processed identically for every forward."""
        logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
            raise TypeError("the model must return logits [B, T, V] (a tensor or an object with .logits)")
        if self.mask_id < logits.shape[-1]:
            # A committed mask token would stay "masked" forever: the mask id is never a prediction.
            logits[..., self.mask_id] = float("-inf")
        if self.opts.eos_penalty:
            # In place on the model's fresh output: the penalty is part of every forward (incl. lookahead).
            for token in self.penalized_ids:
                logits[..., token] -= self.opts.eos_penalty
        return logits


    def _head_bias(self, vocab_size: int) -> torch.Tensor:
        """[V] float32 bias for ``lm_head_entropy`` that equals :meth:`_logits`' post-processing:
        -inf at the mask id, ``-eos_penalty`` at the penalised ids."""
        if self.head_bias is None:
            bias = torch.zeros(vocab_size, dtype=torch.float32, device=self.device)
            if self.mask_id < vocab_size:
                bias[self.mask_id] = float("-inf")
            if self.opts.eos_penalty:
                for token in self.penalized_ids:
                    bias[token] -= self.opts.eos_penalty
            self.head_bias = bias
        return self.head_bias

    def _full_forward(self, ids, rows: Optional[torch.Tensor], keep: slice, hidden: bool = False):
        """Full forward of ``ids``, the canvas rows ``rows`` (device index; None = all rows): the
        post-processed logits, or with ``hidden`` the model's aligned final hidden states, of the
        positions ``keep`` only (a model whose method takes ``keep`` computes only those)."""
        attention = self.model_attention
        if attention is not None and rows is not None:
            attention = attention[rows]
        kwargs = {"attention_mask": attention}
        if self.sampler.block_causal:
            kwargs.update(gen_start=self.gen_start, block_length=self.length)
        method_name = "hidden_states" if hidden else "forward"
        kwargs.update(self._model_kwargs(method_name))
        sliced = self._accepts(method_name, "keep")
        if sliced:
            kwargs["keep"] = keep
        output = (self.model.hidden_states if hidden else self.model)(ids, **kwargs)
        if not hidden:
            output = self._logits(output)
        return output if sliced else output[:, keep]

    def _window_forward(self, window_ids, start, cache_rows, hidden: bool = False, read=None):
        """Window forward (logits, or with ``hidden`` the aligned hidden states); ``cache_rows`` is a
        host list of ints (the model lays out the groups on the host, no read-back), or None for one
        window row per cache row, in order. ``read``: see ``window_hidden_states`` (passed when the
        model takes it)."""
        method = "window_hidden_states" if hidden else "forward_window"
        extra = {"read": read} if read is not None and self._accepts(method, "read") else {}
        output = getattr(self.model, method)(
            window_ids, start=start, cache=self.cache, mode=self.mode, attention_mask=self.model_attention,
            cache_rows=None if cache_rows is None else tuple(cache_rows), **extra, **self._model_kwargs(method))
        return output if hidden else self._logits(output)

    def _store_block_logits(self, rows: Optional[torch.Tensor], logits: torch.Tensor,
                            host_rows: Optional[List[int]] = None) -> None:
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
        if self.mode in ("prefix", "dual") or (self.mode == "block_causal" and self.cache is None):
            prefill_start = self.gen_start if self.mode == "block_causal" else start
            # Only the block's logits are read: a model that can returns only those.
            sliced = self._accepts("prefill", "keep")
            logits, self.cache = self.model.prefill(
                self.canvas, self.model_attention, mode=self.mode, start=prefill_start, gen_start=self.gen_start,
                block_length=self.length, **({"keep": slice(start, end)} if sliced else {}),
                **self._model_kwargs("prefill"))
            logits = self._logits(logits if sliced else logits[:, start:end])
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
        if self.mode == "none":
            logits = self._full_forward(canvas, index, slice(start, end))
        else:
            # All rows: one plain window forward, row r against cache row r (a subset: the
            # plain forward over those cache rows, see forward_window).
            cache_rows = None if every else rows
            if self.mode == "prefix" and self.hidden_head:
                # The window runs from the block to the end, but only the block's logits are read.
                hidden = self._window_forward(canvas[:, start:], start, cache_rows, hidden=True)
                logits = self._logits(self.model.logits_from_hidden(hidden[:, :self.length]))
            elif self.mode == "prefix":
                logits = self._window_forward(canvas[:, start:], start, cache_rows)[:, :self.length]
            else:  # dual and block_causal forward the block only
                logits = self._window_forward(canvas[:, start:end], start, cache_rows)
        self.recorder.count_forward(rows)
        self._store_block_logits(index, logits, rows)

    # -------------------------------------------------------------- decoding

    def decode(self) -> None:
        opts = self.opts
        num_blocks = opts.gen_length // self.length
        base_steps, extra_steps = divmod(opts.steps, num_blocks)
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
                self._logits(self.model.forward_window(
                    self.canvas[:, start:start + self.length], start=start, cache=self.cache, mode=self.mode,
                    attention_mask=self.model_attention, write=True,
                    **self._model_kwargs("forward_window")))
                self.recorder.count_forward(range(self.batch))
            if opts.on_block is not None:
                opts.on_block(block, self.canvas[:, self.gen_start:].clone())
            if progress is not None:
                progress.update(1)
        if progress is not None:
            progress.close()
        if self.lookahead_bad is not None:  # unreachable by the schedule; kept as a guard
            if bool(self.lookahead_bad):
                raise ValueError("the model produced NaN / all -inf logits in the last lookahead forward")

    def _decode_block(self, block: int, start: int, steps: int) -> None:
        end = start + self.length
        scheduled = self.strategy.scheduled
        stale = self._enter_block(start)
        masks_left = [1] * self.batch  # unknown until the first read-back; assume some
        initial = (self.canvas[:, start:end] == self.mask_id).sum(dim=1)
        base_quota, extra_quota = initial // steps, initial % steps
        max_steps = steps if scheduled else self.length
        # Row b's quota at step s: the base, plus one in the first (initial % steps) steps.
        quotas = base_quota + (torch.arange(max_steps, device=self.device)[:, None] < extra_quota)
        for step in range(max_steps):
            need = [r for r in range(self.batch) if stale[r] and masks_left[r] > 0]
            if need:
                self._forward_rows(need, start)
                for r in need:
                    stale[r] = False
            quota = quotas[step]
            kinds, masks_left = self._step(block, step, start, quota, last=scheduled and step == steps - 1,
                                           max_quota=-(-self.length // steps))
            for r, kind in enumerate(kinds):
                # A row that committed anything but the lookahead winner has no logits for its new state.
                if kind != KIND_NONE and kind != KIND_LOOKAHEAD:
                    stale[r] = True
            if not any(masks_left):
                return
        if not scheduled:
            raise RuntimeError(f"{self.strategy.name}: block {block} still has masks after {max_steps} steps")

    def _decide(self, start: int, quota: torch.Tensor, last: bool, max_quota: int, for_graph: bool = False):
        """The step's device work up to the strategy's decision (no host sync; also the first half
        of :func:`infogain.samplers.graph_step.device_step`, ``for_graph``: candidates never deferred).

        Returns ``(block_ids, masked_count, entropy, kind, commit, decision, state)``: ``kind`` [B] with
        the driver's last-step fill applied, ``commit`` [B, L] the positions committed now (none for
        lookahead rows, whose winner is committed after the lookahead)."""
        opts = self.opts
        logits = self.block_logits
        block_ids = self.canvas[:, start:start + self.length]
        masked = block_ids == self.mask_id
        masked_count = masked.sum(dim=1)
        num_samples = self.strategy.num_token_samples(opts)
        if any(self.head_stats_rows):
            entropy, top1_prob, top1_id, top2_prob, tokens, token_probs = self._reused_stats(masked, num_samples)
            logits = None  # stale for those rows: the strategy decides from the statistics
        else:
            # One read of the block logits for the statistics and the token draws (none at T = 0).
            entropy, top1_prob, top1_id, top2_prob, tokens, token_probs = step_stats(
                logits, masked, num_samples=num_samples, temperature=opts.temperature, generator=self.generator,
                check_values=False)
        has_masks = masked_count > 0
        if not self.strategy.scheduled:
            fill = None
        elif last:
            fill = has_masks
        else:
            fill = has_masks & (quota >= masked_count)
        state = StepState(logits=logits, masked=masked, quota=quota,
                          active=has_masks if fill is None else has_masks & ~fill, entropy=entropy,
                          top1_prob=top1_prob, top1_id=top1_id, top2_prob=top2_prob, tokens=tokens,
                          token_probs=token_probs, options=opts, max_quota=max_quota, generator=self.generator,
                          may_lookahead=not (last and self.strategy.scheduled),
                          defer_candidates=self.reads_free and not for_graph)
        decision: StepDecision = self.strategy.decide(state)
        if fill is None:
            return block_ids, masked_count, entropy, decision.kind, decision.commit, decision, state
        kind = torch.where(fill, KIND_FILL, decision.kind)
        commit = torch.where(fill[:, None], masked, decision.commit)
        return block_ids, masked_count, entropy, kind, commit, decision, state

    def _reused_stats(self, masked: torch.Tensor, num_samples: int) -> Tuple[torch.Tensor, ...]:
        """``step_stats``' outputs at temperature 0 where some rows' statistics came from the fused
        lookahead (:attr:`head_stats`); the other rows' from their block logits."""
        stats = self.head_stats
        if not all(self.head_stats_rows):
            fresh = host_ints_to_device([int(f) for f in self.head_stats_rows], self.device).bool()[:, None]
            # The other rows' statistics; the reused rows' logits are stale and not read.
            computed = step_stats(self.block_logits, masked & ~fresh, check_values=False)[:4]
            stats = tuple(torch.where(fresh, reused, other) for reused, other in zip(stats, computed))
        # Positions filled since (the EOS fill) hold step_stats' fill values.
        entropy, top1_prob, top1_id, top2_prob = (torch.where(masked, value, fill) for value, fill in zip(
            stats, (SKIPPED_ENTROPY, SKIPPED_PROB, SKIPPED_ID, SKIPPED_PROB)))
        # At T = 0 every draw is the arg-max.
        shape = (*top1_id.shape, num_samples)
        tokens, token_probs = top1_id[..., None].expand(shape), top1_prob[..., None].expand(shape)
        return entropy, top1_prob, top1_id, top2_prob, tokens, token_probs

    def _step(self, block: int, step: int, start: int, quota: torch.Tensor, last: bool, max_quota: int):
        """One denoising step of every row; returns (kinds, masks left) as host lists.

        One host read-back; on the CPU a second one on steps that look ahead (see
        :meth:`DiffusionSampler.generate`)."""
        opts = self.opts
        end = start + self.length
        block_ids, masked_count, entropy, kind, commit, decision, state = self._decide(start, quota, last, max_quota)
        self.canvas[:, start:end] = torch.where(commit, decision.tokens, block_ids)
        self._eos_fill()

        candidates = decision.candidates
        # Masks left after the commits and the EOS fill; a lookahead row's winner will commit its quota.
        left = (self.canvas[:, start:end] == self.mask_id).sum(dim=1)
        left = torch.where(kind == KIND_LOOKAHEAD, masked_count - quota, left)
        # A NaN / all -inf row of the block's logits at a masked position: non-finite entropy.
        packed = [kind, left, torch.isfinite(entropy).all()[None]]
        if self.lookahead_bad is not None:
            packed.append(self.lookahead_bad[None])
        if candidates is not None:
            packed.append(candidates.keep.reshape(-1))
        host = torch.cat(packed).tolist()  # the step's one read-back
        kinds, masks_left = host[:self.batch], host[self.batch:2 * self.batch]
        if self.lookahead_bad is not None and host[2 * self.batch + 1]:
            raise ValueError(f"the model produced NaN / all -inf logits in the lookahead forward of block {block} "
                             f"step {step - 1}")
        if not host[2 * self.batch]:
            raise ValueError(f"the model produced NaN / all -inf logits at block {block} step {step}")
        host = host[2 * self.batch + 1 + (self.lookahead_bad is not None):]
        self.lookahead_bad = None

        record = {"block": block, "step": step, "rows": []} if opts.record else None
        lookahead_rows = [r for r in range(self.batch) if kinds[r] == KIND_LOOKAHEAD]
        la_info = None
        if decision.candidates_deferred and not lookahead_rows:
            self.strategy.skip_candidates(state)
        if lookahead_rows:
            if decision.candidates_deferred:
                # Reads are free here (see _host_reads_are_free): the candidates of the rows that
                # look ahead only, and their kept mask read back.
                candidates = self.strategy.candidates(state, kind == KIND_LOOKAHEAD)
                keep = candidates.keep.reshape(-1).tolist()
            else:
                keep = host
            pairs = [(n, b) for n in range(len(keep) // self.batch) for b in range(self.batch)
                     if keep[n * self.batch + b]]
            la_info = self._lookahead(start, candidates, pairs, lookahead_rows, masks_left)
            winner_commit, winner_tokens = la_info["commit"], la_info["tokens"]
            rows_index = la_info["rows"]
            self.canvas[rows_index, start:end] = torch.where(winner_commit, winner_tokens,
                                                             self.canvas[rows_index, start:end])
            commit[rows_index] = winner_commit
            self._eos_fill()
        self.recorder.add_commits(kind, commit, entropy)
        if record is not None:
            self._record(record, kinds, commit, start, la_info, candidates)
        return kinds, masks_left

    def _eos_fill(self):
        """EOS fill of the generation region; returns the per-row filled-mask mask [B, G] or None."""
        if self.eos_id is None:
            return None
        region = self.canvas[:, self.gen_start:]
        filled = _masks_after_first_eos(region, self.mask_id, self.eos_id)
        region.masked_fill_(filled, self.eos_id)
        self.recorder.add_eos_fill(filled.sum(dim=1))
        return filled

    def _lookahead(self, start: int, candidates, pairs, lookahead_rows, masks_left) -> dict:
        """Forward the kept candidates of all rows as one batch and pick each row's best.
        ``masks_left``: host ints [B], the masks a lookahead row's winner leaves in the block."""
        end = start + self.length
        num_candidates = candidates.keep.shape[0]
        cache_rows = [b for _, b in pairs]
        indices = host_ints_to_device([n for n, _ in pairs] + cache_rows + list(lookahead_rows), self.device)
        cand_index, row_index = indices[:len(pairs)], indices[len(pairs):2 * len(pairs)]
        rows = indices[2 * len(pairs):]
        cand_commit = candidates.commit[cand_index, row_index]                       # [R, L]
        cand_block = torch.where(cand_commit, candidates.tokens[cand_index, row_index],
                                 self.canvas[row_index, start:end])
        if self.mode == "none":
            window = self.canvas[row_index].clone()
            window[:, start:end] = cand_block
            offset = start
        elif self.mode == "prefix":
            window = self.canvas[row_index, start:].clone()
            window[:, :self.length] = cand_block
            offset = 0
        else:
            window = cand_block.clone()
            offset = 0
        if self.eos_id is not None and self.opts.lookahead_eos_fill:
            # Evaluate exactly the state the commit produces: its EOS fill included.
            fill_from = self.gen_start if self.mode == "none" else 0
            region = window[:, fill_from:]
            region.masked_fill_(_masks_after_first_eos(region, self.mask_id, self.eos_id), self.eos_id)
        # H_next window: everything from the block on, except for block-causal models (the block only).
        h_end = offset + self.length if (self.sampler.block_causal or self.mode == "dual") else window.shape[1]
        # With the fused head, the forward stops at the hidden states (no [R, W, V] logits). A full
        # forward returns the read positions [offset, h_end) only: out_offset is the block's column in it.
        remaining = window[:, offset:h_end] == self.mask_id
        if self.mode == "none":
            next_out = self._full_forward(window, row_index, slice(offset, h_end), hidden=self.fused_head)
            out_offset = 0
        else:
            read_positions = None
            if self.fused_head and self.reads_free:
                # Only the still-masked positions are read (the objective, the winner's logits): where
                # selecting them costs no sync, the last layer's MLP skips the others.
                read_positions = torch.zeros_like(window, dtype=torch.bool)
                read_positions[:, offset:h_end] = remaining
            next_out = self._window_forward(window, start, cache_rows, hidden=self.fused_head, read=read_positions)
            out_offset = offset
        read = next_out[:, out_offset:out_offset + h_end - offset]
        self.recorder.count_lookahead(cache_rows)
        cost = candidates.cost[cand_index, row_index] if self.opts.variant == "info_gain" else None
        if self.fused_head:
            weight = self.model.lm_head_weight
            head = lm_head_entropy(read, weight, self._head_bias(weight.shape[0]), remaining, cost=cost,
                                   variant=self.opts.variant, with_top=self.reuse_head_stats, check_values=False)
            objective, h_next = head.objective, head.h_next
        else:
            objective, h_next = lookahead_objective(read, remaining, cost,
                                                    variant=self.opts.variant, check_values=False)
        # Checked with the next step's read-back (before anything reads the winner's logits there).
        self.lookahead_bad = ~torch.isfinite(objective).all()
        scores = torch.full((num_candidates, self.batch), float("-inf"), device=self.device)
        scores[cand_index, row_index] = objective
        slot = torch.full((num_candidates, self.batch), -1, dtype=torch.long, device=self.device)
        slot[cand_index, row_index] = torch.arange(len(pairs), device=self.device)
        best = scores.argmax(dim=0)[rows]
        winner = slot[best, rows]
        if self.reuse_head_stats:
            # The winners' block statistics, already computed at every still-masked position.
            winner_stats = (head.entropy, head.top1_prob, head.top1_id, head.top2_prob)
            if self.head_stats is None:
                self.head_stats = tuple(t.new_zeros(self.batch, self.length) for t in winner_stats)
            for stored, value in zip(self.head_stats, winner_stats):
                stored[rows] = value[winner, :self.length]
            for r in lookahead_rows:
                self.head_stats_rows[r] = True
        elif self.fused_head:
            winner_out = next_out[winner, out_offset:out_offset + self.length]
            # The next step reads the winners' block logits only where the block is still masked: the
            # head runs on those positions (masked ones first; rows with fewer masks repeat others).
            width = max(masks_left[r] for r in lookahead_rows)
            positions = torch.argsort((~remaining[winner, :self.length]).byte(), dim=1, stable=True)[:, :width]
            hidden = winner_out.gather(1, positions[..., None].expand(-1, -1, winner_out.shape[-1]))
            self.block_logits[rows[:, None], positions] = self._logits(self.model.logits_from_hidden(hidden))
        else:
            self._store_block_logits(rows, next_out[winner, out_offset:out_offset + self.length], lookahead_rows)
        return {"rows": rows, "commit": cand_commit[winner], "tokens": cand_block[winner], "best": best,
                "pairs": pairs, "objective": objective, "h_next": h_next, "cand_commit": cand_commit,
                "cand_block": cand_block}

    def _record(self, record, kinds, commit, start, la_info, candidates) -> None:
        block_ids = self.canvas[:, start:start + self.length].tolist()
        commit = commit.tolist()
        by_row = {}
        if la_info is not None:
            objective, h_next = la_info["objective"].tolist(), la_info["h_next"].tolist()
            cand_commit, cand_block = la_info["cand_commit"].tolist(), la_info["cand_block"].tolist()
            costs = candidates.cost.tolist()
            for i, (n, b) in enumerate(la_info["pairs"]):
                positions = [start + p for p, c in enumerate(cand_commit[i]) if c]
                by_row.setdefault(b, []).append({
                    "candidate": n, "positions": positions,
                    "tokens": [cand_block[i][p - start] for p in positions],
                    "cost": costs[n][b], "h_next": h_next[i], "objective": objective[i]})
            best = dict(zip(la_info["rows"].tolist(), la_info["best"].tolist()))
        for r in range(self.batch):
            positions = [start + p for p, c in enumerate(commit[r]) if c]
            entry = {"kind": "none" if kinds[r] == KIND_NONE else COMMIT_KINDS[kinds[r] - 1],
                     "positions": positions, "tokens": [block_ids[r][p - start] for p in positions]}
            if kinds[r] == KIND_LOOKAHEAD:
                entry["candidates"] = by_row[r]
                entry["winner"] = [c["candidate"] for c in by_row[r]].index(best[r])
            record["rows"].append(entry)
        self.trace.append(record)

