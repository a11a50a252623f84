"""The public sampler: :class:`DiffusionSampler`, one code path for Info-Gain / LookUM and the
baseline samplers; a :class:`~.strategies.Strategy` decides what each step commits. See
:meth:`DiffusionSampler.generate` for the algorithm, the cache modes and the deliberate differences
from the reference implementations.

Layout of the package: :mod:`.options` (the options and the result), :mod:`.prompts` (prompt
encoding, canvas, texts), :mod:`.run` (the driver: run state and block loop), :mod:`.model_calls`
(the model's capabilities and calls), :mod:`.step` (the pure pieces of one step),
:mod:`.lookahead` (candidate windows, objective, winners), :mod:`.strategies` (decisions only),
:mod:`.trace` (``record=True``) and :mod:`.graph_step` (one step as pure device work).
"""
from __future__ import annotations

from typing import Optional

import torch

from .model_calls import supports_cache
from .options import GenerateOptions, GenerationResult, generate_timed
from .prompts import (build_block_aligned_canvas, build_canvas, config_value, decode_texts, encode_prompts,
                      generated_tokens)
from .run import _Run
from .run import host_reads_are_free as _host_reads_are_free  # the device path; tests replace it here
from .strategies import InfoGainStrategy, Strategy, make_strategy


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
            mask_id = config_value(config, "mask_token_id")
        if mask_id is None:
            mask_id = config_value(tokenizer, "mask_token_id")
        if mask_id is None:
            raise ValueError("mask_id is required: neither model.config.mask_token_id nor "
                             "tokenizer.mask_token_id is set")
        if isinstance(mask_id, bool) or not isinstance(mask_id, int) or mask_id < 0:
            raise TypeError(f"mask_id must be a non-negative int, got {mask_id!r}")
        self.mask_id = mask_id
        self.eos_id = config_value(config, "eos_token_id")
        if self.eos_id is None:
            self.eos_id = config_value(tokenizer, "eos_token_id")
        self.pad_id = config_value(config, "pad_token_id")
        if self.pad_id is None:
            self.pad_id = config_value(tokenizer, "pad_token_id")
        self.block_causal = bool(getattr(config, "block_causal", False))
        # LLaDA2: blocks count from each row's position 0 (see build_block_aligned_canvas).
        self.blocks_from_position = self.block_causal and getattr(config, "block_anchor", None) == "position"
        self.max_positions = config_value(config, "max_position_embeddings")
        # Validate the defaults now so that a bad default fails at construction.
        GenerateOptions(**defaults).validate()
        self.defaults = dict(defaults)

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
        is a copy, the read comes right after the block statistics and each row's decision
        is made on the host from it (the same comparisons, the threshold rounded to float32
        as on the device); the candidates are built only on steps where some row looks ahead,
        their commit masks are a second read there and the kept ones are found on the host.
        The random stream and the decisions are the same either way. The fused ops run with
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
        return generate_timed(self._generate, prompts, GenerateOptions(**{**self.defaults, **options}).validate())

    def _device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except (AttributeError, StopIteration, TypeError):
            return torch.device("cpu")

    def _generate(self, prompts, opts: GenerateOptions) -> GenerationResult:
        rows = encode_prompts(prompts, opts.chat, self.tokenizer, self.mask_id,
                              config_value(getattr(self.model, "config", None), "vocab_size"))
        prompt_length = max(len(r) for r in rows)
        total = prompt_length + opts.gen_length
        if self.max_positions is not None and total > self.max_positions:
            raise ValueError(f"prompt ({prompt_length} tokens) + gen_length ({opts.gen_length}) = {total} exceeds "
                             f"the model's max_position_embeddings ({self.max_positions})")
        mode = opts.cache
        if mode != "none":
            if not supports_cache(self.model):
                raise ValueError(f"cache={mode!r} needs a model with prefill and forward_window "
                                 f"(an infogain.models DiffusionLM); use cache='none'")
            if self.block_causal:
                mode = "block_causal"
        device = self._device()
        pad_id = self.pad_id if self.pad_id is not None else (self.eos_id if self.eos_id is not None else 0)
        if self.blocks_from_position:
            canvas, attention, first_block, gen_starts, padded = build_block_aligned_canvas(
                rows, opts.gen_length, opts.block_length, pad_id, self.mask_id, device)
            if opts.stop_at_eos and self.eos_id is not None:
                for r, (row, gen_start) in enumerate(zip(rows, gen_starts)):
                    if self.eos_id in row[len(row) - (gen_start - first_block):]:
                        # The EOS fill reads the decoded blocks, which hold this prompt's last tokens.
                        raise ValueError(f"prompts[{r}] has the EOS id {self.eos_id} in its last block, which is "
                                         "decoded with the generation: stop_at_eos would end the generation "
                                         "there; pass stop_at_eos=False or remove the token")
        else:
            canvas, attention, first_block, padded = build_canvas(rows, opts.gen_length, pad_id, self.mask_id, device)
            gen_starts = [first_block] * len(rows)

        generator = None
        if opts.seed is not None:
            generator = torch.Generator(device=device)
            generator.manual_seed(opts.seed)

        run = _Run(self, opts, mode, canvas, attention, first_block, generator, padded,
                   reads_free=_host_reads_are_free(device), gen_starts=gen_starts)
        run.decode()
        name = opts.variant if isinstance(self.strategy, InfoGainStrategy) else self.name
        stats = run.recorder.finish(name, 0.0, opts.gen_length)
        sequences = generated_tokens(canvas, gen_starts, opts.gen_length)
        texts = decode_texts(sequences, self.tokenizer, self.eos_id) if self.tokenizer is not None else None
        return GenerationResult(sequences=sequences, texts=texts, stats=stats, canvas=canvas,
                                attention_mask=attention, trace=run.trace if opts.record else None)
