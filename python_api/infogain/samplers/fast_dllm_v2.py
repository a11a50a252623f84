"""Fast-dLLM v2's own decoder (``"fast_dllm_v2"``): its threshold loop over sub-blocks, with its
block-level and sub-block caches; the baseline for the Fast-dLLM v2 models.

The official loop (the checkpoint's ``generate`` and the ``batch_sample`` published with NVlabs/
Fast-dLLM ``v2/``; read for facts only), per block of ``bd_size`` positions counted from position 0:

* the block's first position, when it is to be generated, is the arg-max of the previous block's last
  output (the token shift; the loop appends it when the previous block completes, or after the
  prompt's prefill when the prompt ends on a block boundary);
* the block is decoded sub-block by sub-block (``small_block_size``): while the sub-block holds a
  mask, one forward; the greedy token of each masked position (``softmax`` then arg-max) is committed
  where its probability exceeds ``threshold``, and the most probable masked position always;
* a row stops once its stop token (``<|im_end|>``, the EOS here) is decoded with no mask before it in
  the block's new positions; a block without masks is forwarded once more to write the cache (and
  give the next block's first token).

Caches (``cache``): ``"none"`` recomputes the canvas up to the block's end every forward (the same
logits as the block-level cache: the attention is block causal); ``"block"`` (the official
``use_block_cache=False``) forwards the block against the cache of every earlier block; ``"sub_block"``
(``use_block_cache=True``) also keeps the block's own keys and values: a forward of the whole block
refreshes them when the sub-block's first position is still masked in some row (and at the first
forward of each block), otherwise only the sub-block is forwarded, reading the rest of the block from
that refresh (model mode ``"sub_block"``).

Deliberate differences from the official code (none changes a trajectory of a trained model): rows
of a batch are left padded by whole blocks (:func:`~infogain.samplers.prompts.build_block_aligned_canvas`)
so every row's blocks fall on the same columns and each row decodes as it would alone (the refresh
decision of the sub-block cache is the batch's, as in ``batch_sample``); the mask token's logit is
-inf (the package's rule; a committed mask would stay masked); a prompt exactly one block long is
prefilled like any other (the official ``generate`` skips the prefill when the prompt is not longer
than a block, which then loses such a prompt); the answer holds ``gen_length`` tokens with every
position after the stop token filled with the EOS (the official loop truncates there); at
temperature > 0 each row samples from its own top-p distribution (the official sampler draws for the
first row only).
"""
from __future__ import annotations

from typing import Optional

import torch

from infogain_kernels._validation import check_bool, check_int, check_positive_int, check_temperature, check_top_p

from ..stats import KIND_BYPASS, KIND_HEURISTIC, KIND_NONE, StatsRecorder
from .options import GenerationResult, generate_timed
from .prompts import (build_block_aligned_canvas, build_canvas, config_value, decode_texts, encode_prompts,
                      generated_tokens)
from .step import fill_after_eos

__all__ = ["FastDLLMv2Sampler", "CACHES"]

CACHES = ("none", "block", "sub_block")


def _sub_block_default(config) -> int:
    from ..models.fast_dllm_v2 import sub_block_length

    return sub_block_length(getattr(config, "extra", None) or {})


class FastDLLMv2Sampler:
    """Fast-dLLM v2's threshold decoder over sub-blocks (see the module docstring).

    Args:
        model: a Fast-dLLM v2 model of :mod:`infogain.models` (block-causal by position, token shift).
        tokenizer: optional; needed for string prompts and decoded ``texts``.
        mask_id: the mask token (default: the model's).
        **defaults: defaults of :meth:`generate`'s options.
    """

    name = "fast_dllm_v2"

    def __init__(self, model, tokenizer=None, *, mask_id: Optional[int] = None, **defaults):
        config = getattr(model, "config", None)
        if getattr(config, "arch", "fast_dllm_v2") != "fast_dllm_v2":
            raise ValueError(f"the fast_dllm_v2 decoder runs Fast-dLLM v2 models; this model's architecture is "
                             f"{config.arch!r}")
        if config is None or getattr(config, "block_anchor", None) != "position" or not config.block_length:
            raise ValueError("model must be a Fast-dLLM v2 model (block-causal attention counted from position 0, "
                             f"with a block length); got {type(model).__name__} "
                             f"(arch {getattr(config, 'arch', None)!r})")
        self.model, self.tokenizer = model, tokenizer
        self.mask_id = config.mask_token_id if mask_id is None else check_int("mask_id", mask_id, 0)
        self.eos_id = config.eos_token_id
        self.pad_id = config.pad_token_id if config.pad_token_id is not None else (self.eos_id or 0)
        self.block_length = config.block_length
        self.max_positions = config_value(config, "max_position_embeddings")
        self.defaults = dict(gen_length=128, threshold=0.9, sub_block_length=_sub_block_default(config),
                             cache="sub_block", temperature=0.0, top_p=0.95, seed=None, stop_at_eos=True, chat=False)
        unknown = set(defaults) - set(self.defaults)
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; options: {sorted(self.defaults)}")
        self.defaults.update(defaults)
        self._check(dict(self.defaults))

    @property
    def option_names(self) -> frozenset:
        """The options :meth:`generate` takes (what a front end may pass on)."""
        return frozenset(self.defaults)

    def _check(self, o: dict) -> dict:
        check_positive_int("gen_length", o["gen_length"])
        threshold = o["threshold"]
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
        check_positive_int("sub_block_length", o["sub_block_length"])
        if self.block_length % o["sub_block_length"]:
            raise ValueError(f"sub_block_length ({o['sub_block_length']}) must divide the model's block "
                             f"({self.block_length})")
        if o["cache"] not in CACHES:
            raise ValueError(f"cache must be one of {CACHES}, got {o['cache']!r}")
        check_temperature("temperature", o["temperature"])
        check_top_p("top_p", o["top_p"])
        if o["seed"] is not None:
            check_int("seed", o["seed"], 0)
        check_bool("stop_at_eos", o["stop_at_eos"])
        check_bool("chat", o["chat"])
        return o

    def generate(self, prompts, **options) -> GenerationResult:
        """Decode ``prompts`` (strings, id lists or a long tensor; batch > 1 with any lengths).

        Options (defaults from the constructor): ``gen_length`` tokens per prompt; ``threshold``;
        ``sub_block_length`` (the config's ``small_block_size``, else 8); ``cache`` in :data:`CACHES`;
        ``temperature`` (0: greedy, as the official default) and ``top_p``; ``seed``; ``stop_at_eos``
        (stop a row at its first EOS); ``chat`` (apply the tokenizer's chat template).
        Returns a :class:`GenerationResult` whose ``sequences`` are ``[B, gen_length]``.
        """
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; options: {sorted(self.defaults)}")
        return generate_timed(self._generate, prompts, self._check({**self.defaults, **options}))

    # ------------------------------------------------------------------ the loop

    def _generate(self, prompts, o) -> GenerationResult:
        rows = encode_prompts(prompts, o["chat"], self.tokenizer, self.mask_id,
                              config_value(self.model.config, "vocab_size"))
        bs, length = self.block_length, o["gen_length"]
        device = next(self.model.parameters()).device
        canvas, attention, first_block, starts, padded = build_block_aligned_canvas(
            rows, length, bs, self.pad_id, self.mask_id, device)
        T = canvas.shape[1]
        if self.max_positions is not None and T > self.max_positions:
            raise ValueError(f"the canvas (prompts + gen_length {length}, in whole blocks of {bs}) holds {T} "
                             f"positions, more than the model's max_position_embeddings ({self.max_positions})")
        generator = None
        if o["seed"] is not None:
            generator = torch.Generator(device=device)
            generator.manual_seed(o["seed"])
        B = canvas.shape[0]
        recorder = StatsRecorder(B, device)
        generated = torch.zeros_like(attention)
        for b, s in enumerate(starts):
            generated[b, s:s + length] = True
        stop = self.eos_id if o["stop_at_eos"] else None
        mask_arg = attention if padded else None
        cache = None
        if o["cache"] != "none":
            _, cache = self.model.prefill(canvas, mask_arg, mode="block_causal", start=first_block,
                                          keep=slice(first_block, first_block + 1))
            recorder.count_forward(range(B))
        done = torch.zeros(B, dtype=torch.bool, device=device)
        for s0 in range(first_block, T, bs):
            if bool(done.all()):
                break
            _Block(self, o, canvas, mask_arg, generated, s0, cache, generator, recorder, done, stop).decode()

        sequences = generated_tokens(canvas, starts, length)
        if self.eos_id is not None:
            recorder.add_eos_fill(fill_after_eos(sequences, self.mask_id, self.eos_id))
        stats = recorder.finish(self.name, 0.0, length)
        plain, plain_attention, prompt_length, _ = build_canvas(rows, length, self.pad_id, self.mask_id, device)
        plain[:, prompt_length:] = sequences
        texts = decode_texts(sequences, self.tokenizer, self.eos_id) if self.tokenizer is not None else None
        return GenerationResult(sequences=sequences, texts=texts, stats=stats, canvas=plain,
                                attention_mask=plain_attention)


class _Block:
    """One block ``[s0, s0 + bs)`` of a run: the arg-max first token, the sub-blocks, the cache write."""

    def __init__(self, sampler: FastDLLMv2Sampler, o, canvas, mask_arg, generated, s0, cache, generator, recorder,
                 done, stop):
        self.sampler, self.model, self.o = sampler, sampler.model, o
        self.canvas, self.mask_arg, self.generated = canvas, mask_arg, generated
        self.s0, self.s1 = s0, s0 + sampler.block_length
        self.cache, self.generator, self.recorder, self.done, self.stop = cache, generator, recorder, done, stop
        self.block_cached = False   # the sub-block cache's refresh of this block
        # A row's new positions of this block start after its first position (the arg-max token)
        # or at its generation start; the stop check looks there only, as the official loop does.
        self.new = generated[:, s0:self.s1].clone()
        self.new[:, 0] = False

    def masked(self) -> torch.Tensor:
        return (self.canvas[:, self.s0:self.s1] == self.sampler.mask_id) & self.generated[:, self.s0:self.s1] \
            & ~self.done[:, None]

    def decode(self) -> None:
        mask_id = self.sampler.mask_id
        first = self.masked()[:, 0]
        if bool(first.any()):
            # The first position: the arg-max of the previous block's last output (no threshold).
            logits = self._first_logits()
            logits[..., mask_id] = float("-inf")
            token = logits.argmax(dim=-1)
            self.canvas[:, self.s0] = torch.where(first, token, self.canvas[:, self.s0])
            self._record(first[:, None] & torch.ones_like(self.new[:, :1]), KIND_HEURISTIC, logits[:, None], 1)
            self._check_stop(include_first=True)
        sub = self.o["sub_block_length"]
        for a in range(0, self.s1 - self.s0, sub):
            while True:
                masked = self.masked()
                if not bool(masked[:, a:a + sub].any()):
                    break
                logits = self._sub_block_logits(a, sub, masked)
                self._commit(logits, masked[:, a:a + sub], a)
                self._check_stop()
        if self.cache is not None and not bool(self.done.all()):
            # The block is final (or its rows stopped): write it, as the official loop does on completion.
            self.model.forward_window(self.canvas[:, self.s0:self.s1], start=self.s0, cache=self.cache,
                                      mode="block_causal", write=True, check_values=False)
            self.recorder.count_forward(range(self.canvas.shape[0]))

    # ------------------------------------------------------------------ model calls

    def _first_logits(self) -> torch.Tensor:
        """``[B, V]``: the logit of the block's first position (the state before it, shifted)."""
        if self.cache is not None:
            return self.model.logits_from_hidden(self.cache.boundary[self.s0 - 1]).float()
        self.recorder.count_forward(range(self.canvas.shape[0]))
        return self._full(slice(self.s0, self.s0 + 1))[:, 0]

    def _full(self, keep: slice) -> torch.Tensor:
        mask = None if self.mask_arg is None else self.mask_arg[:, :self.s1]
        return self.model(self.canvas[:, :self.s1], mask, keep=keep, check_values=False).float()

    def _sub_block_logits(self, a: int, sub: int, masked: torch.Tensor) -> torch.Tensor:
        """``[B, sub, V]`` float32: the logits of the sub-block ``[s0 + a, s0 + a + sub)``."""
        self.recorder.count_forward(range(self.canvas.shape[0]))
        mode = self.o["cache"]
        if mode == "none":
            return self._full(slice(self.s0 + a, self.s0 + a + sub))
        block = self.canvas[:, self.s0:self.s1]
        if mode == "block":
            return self.model.forward_window(block, start=self.s0, cache=self.cache, mode="block_causal",
                                             check_values=False)[:, a:a + sub].float()
        if not self.block_cached or bool(masked[:, a].any()):
            # Refresh: the whole block against the earlier blocks; its keys and values stay cached.
            self.block_cached = True
            return self.model.forward_window(block, start=self.s0, cache=self.cache, mode="block_causal",
                                             write=True, check_values=False)[:, a:a + sub].float()
        return self.model.forward_window(block[:, a:a + sub], start=self.s0 + a, cache=self.cache,
                                         mode="sub_block", check_values=False).float()

    # ------------------------------------------------------------------ decisions

    def _commit(self, logits: torch.Tensor, masked: torch.Tensor, a: int) -> None:
        logits[..., self.sampler.mask_id] = float("-inf")
        token, prob = self._choose(logits)
        confidence = torch.where(masked, prob, float("-inf"))
        above = confidence > self.o["threshold"]
        take = above.clone()
        take[torch.arange(take.shape[0], device=take.device), confidence.argmax(dim=1)] = True
        take &= masked
        sub = masked.shape[1]
        region = self.canvas[:, self.s0 + a:self.s0 + a + sub]
        region.copy_(torch.where(take, token, region))
        full = torch.zeros_like(self.new)
        full[:, a:a + sub] = take
        wide = logits.new_zeros(logits.shape[0], self.new.shape[1], logits.shape[-1])
        wide[:, a:a + sub] = logits
        # Rows whose commits all passed the threshold, else the forced arg-max was one of them.
        kind = torch.where((take & ~above).any(dim=1), KIND_HEURISTIC, KIND_BYPASS)
        self._record(full, kind, wide, None)

    def _choose(self, logits: torch.Tensor):
        """(token, its probability) per position: greedy at temperature 0, else a top-p draw per row."""
        temperature = self.o["temperature"]
        if temperature == 0:
            probs = torch.softmax(logits, dim=-1)
            prob, token = probs.max(dim=-1)
            return token, prob
        probs = torch.softmax(logits / temperature, dim=-1)
        ordered, order = probs.sort(dim=-1, descending=True)
        drop = ordered.cumsum(dim=-1) > self.o["top_p"]
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = False
        probs = probs.masked_fill(torch.zeros_like(drop).scatter_(-1, order, drop), 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
        flat = probs.reshape(-1, probs.shape[-1])
        token = torch.multinomial(flat, 1, generator=self.generator).view(probs.shape[:-1])
        return token, probs.gather(-1, token[..., None])[..., 0]

    def _record(self, committed: torch.Tensor, kind, logits: torch.Tensor, width: Optional[int]) -> None:
        """Statistics of one commit: ``committed`` bool ``[B, bs or width]``, ``logits`` alike ``[..., V]``."""
        B, L = committed.shape[0], self.new.shape[1]
        if width is not None:   # the first position only
            committed = torch.nn.functional.pad(committed, (0, L - width))
            logits = torch.nn.functional.pad(logits, (0, 0, 0, L - width))
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        entropy = -(log_probs.exp() * log_probs.nan_to_num(neginf=0.0)).sum(dim=-1)
        kind = torch.as_tensor(kind, device=committed.device).expand(B)
        self.recorder.add_commits(torch.where(committed.any(dim=1), kind, KIND_NONE), committed, entropy)

    def _check_stop(self, include_first: bool = False) -> None:
        """Rows whose stop token is decoded with no mask before it (in the block's new positions)
        are done; their later masks get the EOS."""
        if self.stop is None:
            return
        region = self.canvas[:, self.s0:self.s1]
        where = self.new.clone()
        if include_first:
            where[:, 0] = self.generated[:, self.s0]
        is_stop = (region == self.stop) & where
        if not bool(is_stop.any()):
            return
        is_mask = (region == self.sampler.mask_id) & where
        first_stop = torch.where(is_stop.any(dim=1), is_stop.float().argmax(dim=1), region.shape[1])
        cols = torch.arange(region.shape[1], device=region.device)
        mask_before = (is_mask & (cols[None] < first_stop[:, None])).any(dim=1)
        newly = is_stop.any(dim=1) & ~mask_before & ~self.done
        if not bool(newly.any()):
            return
        self.done |= newly
        rest = (self.canvas == self.sampler.mask_id) & newly[:, None] & self.generated
        self.canvas.masked_fill_(rest, self.stop)
