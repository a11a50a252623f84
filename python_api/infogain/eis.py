"""EIS: the Extended Inference Sampler, a lookahead-rollout decoder for autoregressive LMs.

For every generated token, each row takes its top-K next-token candidates ``c``
(:func:`infogain_kernels.topk_logprobs`, after temperature and top-p), rolls
each out ``L = lookahead_steps`` tokens (greedy or sampled with
:func:`infogain_kernels.sample_logprob`) and scores

    S(c) = log p(c | x) + sum_{t=1..L} gamma^t log p(c_t | x, c, c_<t)

where every ``log p`` is taken under the same temperature / top-p filtered
distribution (see :mod:`infogain_kernels.topk_logprobs`; ``temperature = 0``
uses the untempered model distribution and greedy choices). The row appends
``argmax_c S(c)``; equal scores go to the more probable candidate.

How the rollout shares the KV cache (``use_cache=True``). The K candidates of
all rows are *not* copied into K caches. The rollout is run as a small tree:
rollout step t feeds the K current tokens of each row as K extra query
positions of that row (batch stays B), against the row's one ``DynamicCache``,
with a custom 4-D additive attention mask that lets candidate j see the prompt
(minus left padding) and only its own earlier rollout tokens; position ids are
``prompt length + t`` for all K. After L steps the ``K * L`` rollout positions
are dropped with ``DynamicCache.crop``, so the main cache grows by exactly one
token per generated token. Per generated token this is L rollout forwards of
K query tokens per row plus one forward of the chosen token, instead of K*L
single-row forwards with K cache copies. (transformers' ``DynamicCache``
concatenates on every update, as in ``model.generate``; that per-forward copy
is one cache, not K.) This needs a model whose attention takes a custom 4-D
mask and a cache whose layers are full-attention ``DynamicLayer`` s (GPT-2,
Llama, Qwen2 and most transformers decoders); otherwise use ``use_cache=False``.

``use_cache=False`` recomputes every forward over the full sequence (the K
candidates as K*B rows), giving the same tokens up to floating-point noise.

Debugging: with ``debug=True`` every step appends a dict to
``sampler.last_debug`` (reset by each :meth:`generate` call) holding CPU
tensors ``candidates`` [B, K], ``candidate_logprobs`` [B, K], ``scores`` [B, K]
(extended scores), ``mean_score`` [B] (mean over finite scores) and ``chosen``
[B] (the token appended, ``pad_token_id`` for finished rows).
"""
from __future__ import annotations

import inspect
import math
from typing import Dict, List, Optional, Sequence

import torch

from infogain_kernels import sample_logprob, topk_logprobs
from infogain_kernels._validation import check_int

ROLLOUT_MODES = ("greedy", "sample")
_GENERATION_KEYS = ("max_new_tokens", "eos_token_id", "pad_token_id")


def _check_number(name: str, value, low: float, high: float, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value}")
    return float(value)


def _cache_keyword(model) -> str:
    """The forward keyword that takes a ``Cache``: ``cache`` in current transformers, where
    ``past_key_values`` is deprecated (a FutureWarning on every call), else ``past_key_values``."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (AttributeError, TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


class ExtendedInferenceSampler:
    """Lookahead-rollout decoding for any transformers causal LM.

    Args:
        model: a transformers causal LM (``model(input_ids, attention_mask=...,
            position_ids=..., past_key_values=..., use_cache=...)`` returning
            ``.logits``), e.g. ``AutoModelForCausalLM`` of the GPT-2, Llama or
            Qwen2 families. Run in ``eval`` mode under ``torch.no_grad``.
        tokenizer: kept for the caller's convenience (pad / eos fallback); may be None.
        lookahead_steps: L >= 0 rollout tokens per candidate (0: plain top-1).
        discount_factor: gamma in [0, 1].
        top_k: K >= 1 candidates per row (clamped to the vocabulary size).
        temperature: >= 0 (0: untempered scores, greedy rollouts).
        top_p: nucleus mass in (0, 1].
        rollout_mode: ``"greedy"`` or ``"sample"``.
        use_cache: share one KV cache per row across its K rollouts (module docstring).
        debug: record per-step candidates and scores in ``last_debug``.
        generator: optional ``torch.Generator`` (on the model's device type) for
            sampled rollouts; the same state gives the same tokens.
    """

    def __init__(self, model, tokenizer=None, *, lookahead_steps: int = 3, discount_factor: float = 0.9,
                 top_k: int = 5, temperature: float = 1.0, top_p: float = 1.0, rollout_mode: str = "greedy",
                 use_cache: bool = True, debug: bool = False, generator: Optional[torch.Generator] = None):
        if not callable(model):
            raise TypeError(f"model must be a callable transformers model, got {type(model).__name__}")
        self.model = model
        self.tokenizer = tokenizer
        self.lookahead_steps = check_int("lookahead_steps", lookahead_steps, 0)
        self.discount_factor = _check_number("discount_factor", discount_factor, 0.0, 1.0)
        self.top_k = check_int("top_k", top_k, 1)
        self.temperature = _check_number("temperature", temperature, 0.0, math.inf)
        if math.isinf(self.temperature):
            raise ValueError(f"temperature must be finite, got {temperature}")
        self.top_p = _check_number("top_p", top_p, 0.0, 1.0, low_open=True)
        if rollout_mode not in ROLLOUT_MODES:
            raise ValueError(f"rollout_mode must be one of {ROLLOUT_MODES}, got {rollout_mode!r}")
        self.rollout_mode = rollout_mode
        if not isinstance(use_cache, bool):
            raise TypeError(f"use_cache must be a bool, got {type(use_cache).__name__}")
        if not isinstance(debug, bool):
            raise TypeError(f"debug must be a bool, got {type(debug).__name__}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.use_cache = use_cache
        self.debug = debug
        self.generator = generator
        self.last_debug: List[Dict[str, torch.Tensor]] = []

    # ------------------------------------------------------------------ settings

    def _settings(self, generation_config, model_kwargs):
        """max_new_tokens, eos ids, pad id: kwargs > generation_config > model.generation_config > tokenizer."""
        sources = [{k: model_kwargs.pop(k) for k in _GENERATION_KEYS if k in model_kwargs}]
        for config in (generation_config, getattr(self.model, "generation_config", None)):
            if config is not None:
                sources.append({k: getattr(config, k, None) for k in _GENERATION_KEYS})

        def first(key):
            for source in sources:
                if source.get(key) is not None:
                    return source[key]
            return None

        max_new_tokens = first("max_new_tokens")
        if max_new_tokens is None:
            raise ValueError("max_new_tokens must be given (kwarg, generation_config or model.generation_config)")
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, 0)
        eos = first("eos_token_id")
        if eos is None and self.tokenizer is not None:
            eos = getattr(self.tokenizer, "eos_token_id", None)
        eos_ids: Sequence[int] = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        pad = first("pad_token_id")
        if pad is None and self.tokenizer is not None:
            pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = eos_ids[0] if eos_ids else 0
        return max_new_tokens, [int(e) for e in eos_ids], int(pad)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, generation_config=None, **model_kwargs) -> torch.LongTensor:
        """Generate with lookahead rollouts.

        Args:
            input_ids: int64 ``[B, P]`` prompts, left-padded when their lengths differ.
            generation_config: a ``transformers.GenerationConfig`` (or any object
                with ``max_new_tokens`` / ``eos_token_id`` / ``pad_token_id``);
                missing fields fall back to ``model.generation_config``.
            model_kwargs: ``attention_mask`` (``[B, P]``, 1 = real token, 0 =
                left padding) and overrides ``max_new_tokens``, ``eos_token_id``
                (int or list), ``pad_token_id``. Anything else raises TypeError.

        Returns:
            int64 ``[B, P + n]``: the prompts followed by the n <= max_new_tokens
            generated tokens; a row that emitted EOS is padded with
            ``pad_token_id`` afterwards, and generation stops as soon as every
            row has emitted EOS.
        """
        max_new_tokens, eos_ids, pad_id = self._settings(generation_config, model_kwargs)
        attention_mask = model_kwargs.pop("attention_mask", None)
        if model_kwargs:
            raise TypeError(f"unsupported keyword arguments for generate: {sorted(model_kwargs)}")
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
        if input_ids.dtype != torch.int64 or input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be an int64 tensor [B, P] with P >= 1, "
                             f"got {input_ids.dtype} {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must be a tensor of shape {tuple(input_ids.shape)}")
        attention_mask = attention_mask.to(device=input_ids.device, dtype=torch.int64)
        if bool((attention_mask[:, -1] == 0).any()) or bool((attention_mask.sum(dim=1) == 0).any()):
            raise ValueError("attention_mask must use left padding: every row's last position must be a real token")
        self._check_fits_model(input_ids, max_new_tokens)

        self.last_debug = []
        runner = (_CachedRunner if self.use_cache else _UncachedRunner)(self.model, input_ids, attention_mask)
        batch = input_ids.shape[0]
        finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        eos = torch.tensor(eos_ids, dtype=torch.int64, device=input_ids.device)
        generated: List[torch.Tensor] = []
        logits = runner.logits
        for step in range(max_new_tokens):
            chosen = self._choose(runner, logits)
            token = torch.where(finished, torch.full_like(chosen, pad_id), chosen)
            if self.debug:
                self.last_debug[-1]["chosen"] = token.cpu()
            generated.append(token)
            finished |= torch.isin(token, eos)
            if step + 1 == max_new_tokens or bool(finished.all()):
                break
            logits = runner.append(token)
        if not generated:
            return input_ids.clone()
        return torch.cat([input_ids, torch.stack(generated, dim=1)], dim=1)

    def _check_fits_model(self, input_ids: torch.Tensor, max_new_tokens: int) -> None:
        """Token ids inside the embedding table and positions inside ``max_position_embeddings``
        (the model would fail with a bare IndexError otherwise)."""
        config = getattr(self.model, "config", None)
        embeddings = getattr(self.model, "get_input_embeddings", lambda: None)()
        vocab = getattr(embeddings, "num_embeddings", None) or getattr(config, "vocab_size", None)
        if isinstance(vocab, int):
            low, high = int(input_ids.min()), int(input_ids.max())
            if low < 0 or high >= vocab:
                raise ValueError(f"input_ids must hold token ids in [0, {vocab}) (the model's vocabulary), "
                                 f"got {low if low < 0 else high}")
        max_positions = getattr(config, "max_position_embeddings", None)
        if isinstance(max_positions, int) and max_new_tokens > 0:
            # Highest position fed: the last chosen token's rollout (or the token itself when L = 0).
            needed = input_ids.shape[1] + max_new_tokens - 1 + max(self.lookahead_steps, 1) - 1
            if needed >= max_positions:
                raise ValueError(f"input_ids length ({input_ids.shape[1]}) + max_new_tokens ({max_new_tokens}) "
                                 f"with lookahead_steps={self.lookahead_steps} needs position {needed}, beyond "
                                 f"the model's max_position_embeddings ({max_positions})")

    def _choose(self, runner, logits: torch.Tensor) -> torch.Tensor:
        """The appended token of each row: argmax of the extended score over its top-K candidates."""
        batch, vocab = logits.shape
        k = min(self.top_k, vocab)
        candidates, scores = topk_logprobs(logits, k, temperature=self.temperature, top_p=self.top_p)
        candidate_logprobs = scores
        if self.lookahead_steps > 0:
            tokens = candidates
            for t in range(self.lookahead_steps):
                rollout_logits = runner.rollout_step(tokens, t)  # [B, K, V]
                next_tokens, logprobs = sample_logprob(
                    rollout_logits.reshape(batch * k, vocab), mode=self.rollout_mode,
                    temperature=self.temperature, top_p=self.top_p, generator=self.generator)
                scores = scores + self.discount_factor ** (t + 1) * logprobs.view(batch, k)
                tokens = next_tokens.view(batch, k)
            runner.end_rollout()
        # argmax returns the first maximum: ties go to the more probable candidate.
        best = scores.argmax(dim=1)
        if self.debug:
            finite = torch.isfinite(scores)
            mean = torch.where(finite, scores, 0.0).sum(dim=1) / finite.sum(dim=1).clamp(min=1)
            self.last_debug.append({"candidates": candidates.cpu(), "candidate_logprobs": candidate_logprobs.cpu(),
                                    "scores": scores.cpu(), "mean_score": mean.cpu()})
        return candidates.gather(1, best[:, None]).squeeze(1)


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting only real tokens; left-padding slots get 0 (they are masked out anyway)."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


class _CachedRunner:
    """Main sequence in one DynamicCache; rollouts as masked extra query positions, cropped afterwards."""

    def __init__(self, model, input_ids, attention_mask):
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        self.model = model
        self.cache = DynamicCache(config=getattr(model, "config", None))
        self.cache_keyword = _cache_keyword(model)
        self.mask = attention_mask
        self.next_position = attention_mask.sum(dim=1)
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask),
                    use_cache=True, logits_to_keep=1, **{self.cache_keyword: self.cache})
        # The model updates self.cache in place (and returns it, under either name).
        if any(type(layer) is not DynamicLayer for layer in getattr(self.cache, "layers", [None])):
            raise ValueError("use_cache=True needs a DynamicCache of full-attention DynamicLayer layers "
                             "(sliding-window or linear-attention caches cannot be cropped); use use_cache=False")
        self.logits = out.logits[:, -1]
        self.rollout_tokens = 0

    def rollout_step(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        batch, k = tokens.shape
        context = self.mask.shape[1]
        kv_length = context + k * (step + 1)
        dtype = self.model.dtype if self.model.dtype.is_floating_point else torch.float32
        allowed = torch.zeros(batch, k, kv_length, dtype=torch.bool, device=tokens.device)
        allowed[:, :, :context] = self.mask[:, None, :].bool()
        own = torch.eye(k, dtype=torch.bool, device=tokens.device)
        for earlier in range(step + 1):
            start = context + k * earlier
            allowed[:, :, start:start + k] = own
        additive = torch.zeros(allowed.shape, dtype=dtype, device=tokens.device)
        additive.masked_fill_(~allowed, torch.finfo(dtype).min)
        positions = (self.next_position + step)[:, None].expand(batch, k)
        out = self.model(input_ids=tokens, attention_mask=additive[:, None], position_ids=positions,
                         use_cache=True, **{self.cache_keyword: self.cache})
        self.rollout_tokens += k
        return out.logits

    def end_rollout(self) -> None:
        self.cache.crop(-self.rollout_tokens)
        self.rollout_tokens = 0

    def append(self, token: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        out = self.model(input_ids=token[:, None], attention_mask=self.mask, position_ids=self.next_position[:, None],
                         use_cache=True, **{self.cache_keyword: self.cache})
        self.next_position = self.next_position + 1
        return out.logits[:, -1]


class _UncachedRunner:
    """Recomputes every forward over the whole sequence; the K candidates become K*B rows."""

    def __init__(self, model, input_ids, attention_mask):
        self.model = model
        self.ids = input_ids
        self.mask = attention_mask
        self.logits = self._last_logits(input_ids, attention_mask)
        self.rollout: List[torch.Tensor] = []

    def _last_logits(self, ids, mask):
        return self.model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask),
                          use_cache=False).logits[:, -1]

    def rollout_step(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        batch, k = tokens.shape
        self.rollout.append(tokens.reshape(batch * k, 1))
        ids = torch.cat([self.ids.repeat_interleave(k, dim=0), *self.rollout], dim=1)
        mask = torch.cat([self.mask.repeat_interleave(k, dim=0),
                          torch.ones(batch * k, step + 1, dtype=self.mask.dtype, device=self.mask.device)], dim=1)
        return self._last_logits(ids, mask).view(batch, k, -1)

    def end_rollout(self) -> None:
        self.rollout = []

    def append(self, token: torch.Tensor) -> torch.Tensor:
        self.ids = torch.cat([self.ids, token[:, None]], dim=1)
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        return self._last_logits(self.ids, self.mask)
