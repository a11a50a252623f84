"""LLaDA2.x's own decoders as samplers of this package: the baselines for the LLaDA2 models.

* :class:`LLaDA2ThresholdSampler` (``"llada2_threshold"``): LLaDA2.0's ``generate``. Per block, at
  most ``steps`` forwards; each commits the masked positions whose probability exceeds
  ``threshold``, or, when fewer than the step's quota pass, the quota's most probable masked
  positions (the quota: the block length spread evenly over the steps, the remainder to the first
  steps). A row stops after the block in which an EOS appears (with ``eos_early_stop``, already
  at the step that commits an EOS once every position before it is decoded).
* :class:`LLaDA21EditSampler` (``"llada21_edit"``): LLaDA2.1's joint-threshold decoder with token
  editing. Each forward commits masked positions as above (quota ``num_to_transfer``) and also
  re-writes already committed, non-prompt positions of the block whose predicted token differs
  from the one there with probability above ``editing_threshold``. Once the block has no masks
  it keeps editing for at most ``max_post_steps`` forwards, ending earlier at the first forward
  that changes nothing.

The rules they apply (quota schedule, options, one step's draw and unmask choice) are in
:mod:`infogain.samplers.llada2_rules`. Both run full forwards of the canvas up to the end of the current block (no KV cache), as the
official loops do. Rows are decoded as if each were alone: the canvas
(:func:`~infogain.samplers.prompts.build_block_aligned_canvas`, then :func:`extend_to_block_end`)
left pads every prompt by whole blocks, so every row's block boundaries (counted from its own
position 0, as the model's block-causal attention counts them) fall on the same canvas columns,
and holds masks up to the end of each row's last block, as the official canvas does. Each row
keeps its own step count, editing budget and stop, and only the rows still decoding the block
take part in a forward. Every token the model reads of a row is the row's own, so its logits
equal those of a batch-1 run.

Deliberate differences from the official code (none changes a trajectory of a trained model):
the mask token's logit is set to -inf in every forward (the package's rule for every sampler: a
committed mask would stay masked); at temperature 0 the arg-max and its probability come from
:func:`infogain_kernels.token_stats` in one pass over the logits (the same arg-max; the probability
equals ``softmax(logits).max()`` up to float32 summation order, a few ulps, which decides only ties
within that distance); the EOS early stop of LLaDA2.0 looks for the first EOS in the generation
region (the official code searches the whole row, so a prompt holding an EOS would end the answer
before it began), and its answer holds ``gen_length`` tokens (the official one runs on to that EOS
when it lies in the last block's positions past ``gen_length``); ties among equal confidences may
be broken at other positions than ``torch.topk`` with a smaller ``k`` would.
"""
from __future__ import annotations

from dataclasses import fields
from typing import List, Optional, Tuple

import torch

from infogain_kernels._validation import check_int

from .._device import host_ints_to_device
from ..stats import KIND_BYPASS, KIND_HEURISTIC, KIND_NONE, StatsRecorder
from .llada2_rules import (LLaDA21EditOptions, LLaDA2ThresholdOptions, _DecodeOptions, _options,
                           extend_to_block_end, row_end, sample_tokens, transfer_schedule, unmask_choice)
from .model_calls import ModelCalls
from .options import GenerationResult, generate_timed
from .prompts import (build_block_aligned_canvas, build_canvas, config_value, decode_texts, encode_prompts,
                      generated_tokens)
from .step import fill_after_eos

__all__ = ["LLaDA21EditOptions", "LLaDA21EditSampler", "LLaDA2ThresholdOptions", "LLaDA2ThresholdSampler"]


# ------------------------------------------------------------------------------------------ samplers

class _BlockDecoder:
    """What both decoders share: model and token ids, the canvas, the model calls, the result."""

    name = ""
    options_class = _DecodeOptions

    def __init__(self, model, tokenizer=None, *, mask_id: Optional[int] = None, **defaults):
        if not callable(model):
            raise TypeError(f"model must be a callable model, got {type(model).__name__}")
        self.model = model
        self.tokenizer = tokenizer
        config = getattr(model, "config", None)
        arch = getattr(config, "arch", "llada2")
        if arch != "llada2":
            raise ValueError(f"the {self.name} decoder runs LLaDA2.x models; this model's architecture is {arch!r}")
        ids = {}
        for name, given in (("mask_token_id", mask_id), ("eos_token_id", None), ("pad_token_id", None)):
            value = given if given is not None else config_value(config, name)
            ids[name] = value if value is not None else config_value(tokenizer, name)
        if ids["mask_token_id"] is None:
            raise ValueError("mask_id is required: neither model.config.mask_token_id nor tokenizer.mask_token_id "
                             "is set")
        if ids["eos_token_id"] is None:
            raise ValueError("the EOS token id is required (model.config.eos_token_id or tokenizer.eos_token_id): "
                             "the LLaDA2 decoders stop at EOS")
        self.mask_id = check_int("mask_id", ids["mask_token_id"], 0)
        self.eos_id = check_int("eos_token_id", ids["eos_token_id"], 0)
        self.pad_id = check_int("pad_token_id", ids["pad_token_id"] if ids["pad_token_id"] is not None
                                else self.eos_id, 0)
        if self.mask_id == self.eos_id:
            raise ValueError(f"mask_id and eos_token_id must differ, both are {self.mask_id}")
        self.block_causal = bool(getattr(config, "block_causal", False))
        anchor = getattr(config, "block_anchor", "position")
        if self.block_causal and anchor != "position":
            raise ValueError(f"the LLaDA2 decoders need a model whose blocks count from position 0 "
                             f"(config.block_anchor == 'position'), got block_anchor={anchor!r}")
        self.max_positions = config_value(config, "max_position_embeddings")
        model_block = config_value(config, "block_length")
        if isinstance(model_block, int) and not isinstance(model_block, bool):
            defaults.setdefault("block_length", model_block)   # the block size the model was trained with
        _options(self.options_class, defaults)   # a bad default fails at construction
        self.defaults = dict(defaults)

    @property
    def option_names(self) -> frozenset:
        """The options :meth:`generate` takes (what a front end may pass on)."""
        return frozenset(f.name for f in fields(self.options_class))

    def _device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except (AttributeError, StopIteration, TypeError):
            return torch.device("cpu")

    def generate(self, prompts, **options) -> GenerationResult:
        return generate_timed(self._generate, prompts, _options(self.options_class, {**self.defaults, **options}))

    def _generate(self, prompts, opts) -> GenerationResult:
        rows = encode_prompts(prompts, opts.chat, self.tokenizer, self.mask_id,
                              config_value(getattr(self.model, "config", None), "vocab_size"))
        bl, length = opts.block_length, opts.gen_length
        longest = max(row_end(len(r), length, bl) for r in rows)
        if self.max_positions is not None and longest > self.max_positions:
            raise ValueError(f"a prompt's canvas (prompt + gen_length {length}, rounded up to whole blocks of "
                             f"{bl}) holds {longest} positions, more than the model's max_position_embeddings "
                             f"({self.max_positions})")
        device = self._device()
        canvas, attention, _, starts, _ = build_block_aligned_canvas(rows, length, bl, self.pad_id, self.mask_id,
                                                                     device)
        extend_to_block_end(canvas, attention, starts, length, bl, self.mask_id)
        generator = None
        if opts.seed is not None:
            generator = torch.Generator(device=device)
            generator.manual_seed(opts.seed)
        run = _Run(self, opts, canvas, attention, starts, [s - len(r) for s, r in zip(starts, rows)], generator)
        self._decode(run)

        sequences = generated_tokens(canvas, starts, length)
        run.recorder.add_eos_fill(fill_after_eos(sequences, self.mask_id, self.eos_id))
        stats = run.recorder.finish(self.name, 0.0, length)
        # The package's result layout: prompts left padded to one length, then the generations.
        plain, plain_attention, prompt_length, _ = build_canvas(rows, length, self.pad_id, self.mask_id, device)
        plain[:, prompt_length:] = sequences
        texts = decode_texts(sequences, self.tokenizer, self.eos_id) if self.tokenizer is not None else None
        return GenerationResult(sequences=sequences, texts=texts, stats=stats, canvas=plain,
                                attention_mask=plain_attention, trace=run.trace if opts.record else None)

    def _decode(self, run: "_Run") -> None:
        raise NotImplementedError


class _Run:
    """The state of one ``generate`` call: canvas, rows still decoding, model calls, statistics."""

    def __init__(self, sampler: _BlockDecoder, opts, canvas, attention, starts, lefts, generator):
        self.sampler, self.opts, self.canvas, self.generator = sampler, opts, canvas, generator
        self.batch, self.length = canvas.shape[0], opts.block_length
        self.starts = starts
        self.ends = [row_end(s, opts.gen_length, opts.block_length) for s in starts]
        self.first_block = min(starts) // opts.block_length
        self.num_blocks = max(self.ends) // opts.block_length
        self.alive = [True] * self.batch
        self.device = canvas.device
        columns = torch.arange(canvas.shape[1], device=self.device)[None]
        start_col = torch.tensor(starts, device=self.device)[:, None]
        self.generated = columns >= start_col                                     # [B, T]
        self.counted = self.generated & (columns < start_col + opts.gen_length)   # [B, T]
        self.attention = attention
        self.left = lefts   # per row, its left padding: a window where no row has any needs no mask
        self.calls = ModelCalls(sampler.model, "none", None, 0, opts.block_length, sampler.block_causal,
                                sampler.mask_id, [], 0.0)
        self.recorder = StatsRecorder(self.batch, self.device)
        self.trace: List[dict] = []

    def rows_in_block(self, block: int) -> List[int]:
        end = (block + 1) * self.length
        return [r for r in range(self.batch)
                if self.alive[r] and self.starts[r] // self.length <= block and self.ends[r] >= end]

    def masks_at_entry(self, row: int, block: int) -> int:
        """The masks of ``row`` in ``block`` when the block starts (all its generated columns)."""
        start, end = block * self.length, (block + 1) * self.length
        return end - max(start, self.starts[row])

    def index(self, rows: List[int]) -> torch.Tensor:
        """The device index of the batch rows ``rows`` (host ints)."""
        return host_ints_to_device(rows, self.device)

    def block_logits(self, rows: List[int], index: torch.Tensor, block: int) -> torch.Tensor:
        """Logits ``[A, L, V]`` of the block for ``rows`` (``index``: the same on the device) from one
        forward of the canvas up to the block's end."""
        end = (block + 1) * self.length
        padded = any(self.left[r] > 0 or self.ends[r] < end for r in rows)
        every_row = len(rows) == self.batch
        ids = self.canvas[:, :end] if every_row else self.canvas[index, :end]
        # The model receives a mask only when a row of this window holds padding.
        self.calls.attention = self.attention[:, :end] if padded else None
        self.recorder.count_forward(rows)
        return self.calls.full(ids, None if every_row else index, slice(end - self.length, end))

    def read_block(self, index: torch.Tensor, block: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(tokens, masked, editable)`` of the block's rows ``index``: int64 and bool [A, L]
        (``editable``: committed generated positions, the prompt's tail excluded)."""
        start, end = block * self.length, (block + 1) * self.length
        old = self.canvas[index, start:end]
        masked = old == self.sampler.mask_id
        return old, masked, ~masked & self.generated[index, start:end]

    def commit(self, index: torch.Tensor, block: int, tokens: torch.Tensor, write: torch.Tensor,
               first: torch.Tensor, by_threshold: torch.Tensor, entropy: torch.Tensor) -> None:
        """Write ``tokens`` at ``write`` (bool [A, L]) of the block's rows ``index``; record the
        positions committed for the first time (``first``, a subset) in the statistics."""
        start, end = block * self.length, (block + 1) * self.length
        current = self.canvas[index, start:end]
        self.canvas[index, start:end] = torch.where(write, tokens, current)
        kind = torch.zeros(self.batch, dtype=torch.long, device=self.device)
        kind[index] = torch.where(by_threshold, KIND_BYPASS, KIND_HEURISTIC)
        committed = torch.zeros(self.batch, self.length, dtype=torch.bool, device=self.device)
        committed[index] = first & self.counted[index, start:end]
        full_entropy = torch.zeros(self.batch, self.length, dtype=entropy.dtype, device=self.device)
        full_entropy[index] = entropy
        self.recorder.add_commits(torch.where(committed.any(dim=1), kind, KIND_NONE), committed, full_entropy)

    def record(self, block: int, step: int, rows: List[int], **positions: torch.Tensor) -> None:
        """With ``record=True``: one trace entry; ``positions`` are bool [A, L] block masks, stored as
        each row's generation indices (column - its first generated column)."""
        if not self.opts.record:
            return
        start = block * self.length
        entry = {"block": block - self.first_block, "step": step, "rows": list(rows)}
        for name, where in positions.items():
            entry[name] = [[start + c - self.starts[r] for c in torch.nonzero(w).flatten().tolist()]
                           for r, w in zip(rows, where.cpu())]
        self.trace.append(entry)

    def stop_rows_with_eos(self, rows: List[int], block: int) -> None:
        """End the rows of ``rows`` whose generated columns up to the block's end hold an EOS."""
        if not rows:
            return
        end = (block + 1) * self.length
        index = self.index(rows)
        found = ((self.canvas[index, :end] == self.sampler.eos_id) & self.generated[index, :end]).any(dim=1)
        for r, hit in zip(rows, found.tolist()):
            if hit:
                self.alive[r] = False


class LLaDA2ThresholdSampler(_BlockDecoder):
    """LLaDA2.0's threshold decoder (the official ``LLaDA2MoeModelLM.generate``), batched.

    Args:
        model: an LLaDA2 model (``model(input_ids [B, T], attention_mask, block_length=...)`` ->
            logits ``[B, T, V]``, blocks counted from each row's position 0), or any module with
            that call.
        tokenizer: optional; needed for string prompts and for ``texts``.
        mask_id: defaults to ``model.config.mask_token_id``, then the tokenizer's. The EOS id
            (``model.config.eos_token_id``, then the tokenizer's) is required.
        **defaults: default options of :meth:`generate`; ``block_length`` defaults to
            ``model.config.block_length`` when the config has one.
    """

    name = "llada2_threshold"
    options_class = LLaDA2ThresholdOptions

    def generate(self, prompts, **options) -> GenerationResult:
        """Decode ``gen_length`` tokens after each prompt with LLaDA2.0's threshold rule.

        Args:
            prompts: a string (needs the tokenizer), a list of strings, a list of token ids, a list
                of such lists (ragged is fine) or an integer tensor ``[P]`` / ``[B, P]``.
            gen_length: tokens to generate per prompt (>= 1; any value, the last block may reach
                past it and is decoded whole, as in the official loop).
            block_length: block size (>= 1; default the model's, else 32).
            steps: forwards per block at most (>= 1, default 32), capped at ``gen_length //
                minimal_topk``; the block's quotas follow :func:`transfer_schedule`.
            threshold: in [0, 1] (default 0.95): masked positions whose probability exceeds it are
                committed together when there are at least the step's quota of them.
            minimal_topk: >= 1 and <= ``gen_length`` (default 1); only caps ``steps``.
            temperature: >= 0 (default 0: arg-max); above 0, tokens are drawn from
                ``softmax(logits / temperature)`` after the ``top_k`` (None or 0: off) and
                ``top_p`` (in (0, 1], None: off) filters.
            eos_early_stop: also stop a row at the step that commits an EOS once every
                generated position before its first EOS is decoded (default False; a row always
                stops after the block in which an EOS appears).
            seed: seeds the draws at temperature > 0 (None: torch's default generator).
            chat: apply the tokenizer's chat template to string prompts.
            record: return a ``trace``: per forward, the block, the step, the rows and each row's
                committed generation indices.

        Returns:
            :class:`~infogain.samplers.GenerationResult`: ``sequences [B, gen_length]`` (the
            positions after a row's first EOS that were never decoded hold EOS), ``texts`` (cut at
            the first EOS), ``stats`` (NFE: batched forwards; per row, the forwards it took part in;
            tokens "bypass" = committed by the threshold branch, "heuristic" = by the top-k branch,
            "eos_fill" = never decoded, after the row's EOS), ``canvas`` / ``attention_mask`` in the
            package's layout (prompts left padded to one length, then the generations).
        """
        return super().generate(prompts, **options)

    def _decode(self, run: _Run) -> None:
        opts = run.opts
        schedule = transfer_schedule(opts.block_length, min(opts.steps, opts.gen_length // opts.minimal_topk))
        for block in range(run.first_block, run.num_blocks):
            rows = run.rows_in_block(block)
            masks = {r: run.masks_at_entry(r, block) for r in rows}
            for step, quota in enumerate(schedule):
                active = [r for r in rows if masks[r] > 0 and run.alive[r]]
                if not active:
                    break   # no forward for a block every row has finished
                index = run.index(active)
                logits = run.block_logits(active, index, block)
                _, masked, _ = run.read_block(index, block)
                tokens, probs, entropy = sample_tokens(logits, masked, opts.temperature, opts.top_k, opts.top_p,
                                                       run.generator)
                commit, by_threshold = unmask_choice(probs, masked, opts.threshold, quota)
                run.commit(index, block, tokens, commit, commit, by_threshold, entropy)
                left = (masked & ~commit).sum(dim=1)
                stop = self._early_stop(run, index, block, tokens, commit) if opts.eos_early_stop else None
                packed = torch.stack([left, stop if stop is not None else torch.zeros_like(left)], dim=1)
                run.record(block, step, active, committed=commit)
                for r, (n, stopped) in zip(active, packed.tolist()):   # the step's one read-back
                    masks[r] = n
                    if stopped:
                        run.alive[r] = False
            run.stop_rows_with_eos([r for r in rows if run.alive[r]], block)

    def _early_stop(self, run: _Run, index: torch.Tensor, block: int, tokens, commit) -> torch.Tensor:
        """int64 [A]: the row committed an EOS this step and every generated position before its
        first EOS is decoded (the official mid-block return)."""
        end = (block + 1) * run.length
        ids, generated = run.canvas[index, :end], run.generated[index, :end]
        eos = (ids == self.eos_id) & generated
        before_first = generated & (eos.long().cumsum(dim=1) == 0)
        undecoded = ((ids == self.mask_id) & before_first).any(dim=1)
        committed_eos = (commit & (tokens == self.eos_id)).any(dim=1)
        return (committed_eos & eos.any(dim=1) & ~undecoded).long()


class LLaDA21EditSampler(_BlockDecoder):
    """LLaDA2.1's joint-threshold decoder with token editing (the official LLaDA2.1 ``generate``;
    SGLang's ``JointThreshold``), batched. Arguments as :class:`LLaDA2ThresholdSampler`."""

    name = "llada21_edit"
    options_class = LLaDA21EditOptions

    def generate(self, prompts, **options) -> GenerationResult:
        """Decode ``gen_length`` tokens after each prompt with LLaDA2.1's unmask-and-edit rule.

        Each forward of a block (per row): the masked positions are committed as in
        LLaDA2.0 with the constant quota ``num_to_transfer``; at the same time every
        committed, non-prompt position of the block whose token (drawn as for the masks) differs
        from the one there and has probability above ``editing_threshold`` is re-written. A block
        ends for a row at the first forward, after its masks are gone, that edits nothing, or once
        ``max_post_steps`` forwards ran without masks. No step limit: every forward commits at
        least one mask.

        Args:
            prompts, gen_length, block_length, temperature, top_k, top_p, seed, chat: as in
                :meth:`LLaDA2ThresholdSampler.generate`.
            threshold: in [0, 1] (default 0.95), the unmasking threshold.
            editing_threshold: in [0, 1] (default 0.9).
            max_post_steps: >= 0 (default 16), forwards of a block after its masks are gone.
            num_to_transfer: >= 1 (default 1), the unmasking quota of every forward.
            penalty_lambda: >= 0 (default 0: off; SGLang's option): before drawing, subtract it
                from each block position's logit of the token at the previous position of the
                block (the block's first position is not penalised).
            eos_early_stop: stop a row after a block once its generated positions hold an EOS
                (default False: every block is decoded, as in the official code; the answer is
                still cut at the first EOS).
            record: return a ``trace``: per forward, the block, the step, the rows and each row's
                committed and edited generation indices.

        Returns:
            :class:`~infogain.samplers.GenerationResult` as for
            :meth:`LLaDA2ThresholdSampler.generate`; an edit re-writes a token but is not a new
            generated token (each position counts once, at its first commit).
        """
        return super().generate(prompts, **options)

    def _decode(self, run: _Run) -> None:
        opts = run.opts
        for block in range(run.first_block, run.num_blocks):
            rows = run.rows_in_block(block)
            masks = {r: run.masks_at_entry(r, block) for r in rows}
            post = {r: 0 for r in rows}
            decoding = list(rows)
            step = 0
            while True:
                active = []
                for r in decoding:
                    if masks[r] == 0:
                        post[r] += 1
                    if post[r] <= opts.max_post_steps:
                        active.append(r)
                if not active:
                    break
                index = run.index(active)
                logits = run.block_logits(active, index, block)
                old, masked, editable = run.read_block(index, block)
                if opts.penalty_lambda > 0:
                    # Discourage repeating the previous position's token (SGLang's penalty_lambda).
                    logits = logits.float()
                    logits[:, 1:].scatter_add_(2, old[:, :-1, None], torch.full_like(
                        logits[:, 1:, :1], -opts.penalty_lambda))
                tokens, probs, entropy = sample_tokens(logits, masked | editable, opts.temperature, opts.top_k,
                                                       opts.top_p, run.generator)
                unmask, by_threshold = unmask_choice(probs, masked, opts.threshold, opts.num_to_transfer)
                edit = editable & (probs > opts.editing_threshold) & (tokens != old)
                run.commit(index, block, tokens, unmask | edit, unmask, by_threshold, entropy)
                run.record(block, step, active, committed=unmask, edited=edit)
                packed = torch.stack([(masked & ~unmask).sum(dim=1), edit.sum(dim=1)], dim=1)
                finished = []
                for r, (n, edits) in zip(active, packed.tolist()):   # the step's one read-back
                    if masks[r] == 0 and edits == 0:
                        finished.append(r)
                    masks[r] = n
                decoding = [r for r in active if r not in finished]
                step += 1
            if opts.eos_early_stop:
                # Every block ends fully decoded, so an EOS in the generated part ends the row.
                run.stop_rows_with_eos(rows, block)
