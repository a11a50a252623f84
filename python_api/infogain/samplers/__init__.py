"""Info-Gain / LookUM and the baseline samplers for masked diffusion LMs, on one code path.

>>> sampler = InfoGainSampler(model, tokenizer)                      # doctest: +SKIP
>>> result = sampler.generate(["2 + 2 = ?"], gen_length=64, steps=64, block_length=32, cache="dual")
>>> result.texts, result.stats.to_dict()                             # doctest: +SKIP
>>> make_sampler("fast_dllm", model, tokenizer, threshold=0.9).generate("Hi")   # doctest: +SKIP

Sampler names (:data:`SAMPLERS`): ``info_gain``, ``lookum`` (Info-Gain with
``variant="lookum"``), ``confidence`` (LLaDA low-confidence remasking),
``entropy``, ``margin``, ``random``, ``fast_dllm`` (threshold parallel decoding)
and ``eb`` (entropy-bounded). All return a :class:`GenerationResult` with the
same :class:`~infogain.stats.RunStats`.

LLaDA2.x's own decoders (:data:`LLADA2_DECODERS`, also through :func:`make_sampler`):
``llada2_threshold`` (LLaDA2.0's official threshold decoder) and ``llada21_edit`` (LLaDA2.1's
joint-threshold decoder with token editing); their options are their own (no cache, no lookahead).
Fast-dLLM v2's own decoder (``fast_dllm_v2``: threshold decoding over sub-blocks with its block and
sub-block caches) is :class:`FastDLLMv2Sampler`.
"""
from .options import CACHE_MODES, VARIANTS, GenerateOptions, GenerationResult
from .fast_dllm_v2 import FastDLLMv2Sampler
from .llada2 import LLaDA2ThresholdSampler, LLaDA21EditSampler
from .sampler import DiffusionSampler
from .strategies import (Candidates, EntropyBoundedStrategy, FastDLLMStrategy, InfoGainStrategy, ScoreStrategy,
                         StepDecision, StepState, Strategy)

SAMPLERS = ("info_gain", "lookum", "confidence", "entropy", "margin", "random", "fast_dllm", "eb")
LLADA2_DECODERS = {"llada2_threshold": LLaDA2ThresholdSampler, "llada21_edit": LLaDA21EditSampler}
# The models' own decoders: their own options (no lookahead), the name picks the class.
MODEL_DECODERS = {**LLADA2_DECODERS, "fast_dllm_v2": FastDLLMv2Sampler}


class InfoGainSampler(DiffusionSampler):
    """The Info-Gain / LookUM sampler (choose with ``generate(..., variant=...)``).

    Args:
        model: an :mod:`infogain.models` diffusion LM (all cache modes), or any module
            mapping ``input_ids [B, T]`` to logits ``[B, T, V]`` (``cache="none"``).
        tokenizer: optional; needed for string prompts and decoded ``texts``.
        mask_id: mask token id; defaults to ``model.config.mask_token_id``, then the
            tokenizer's.
        **defaults: default options of :meth:`generate`.
    """

    def __init__(self, model, tokenizer=None, *, mask_id=None, **defaults):
        super().__init__(model, tokenizer, strategy="info_gain", mask_id=mask_id, **defaults)


def make_sampler(name: str, model, tokenizer=None, *, mask_id=None, **defaults):
    """A sampler by name (one of :data:`SAMPLERS` or :data:`MODEL_DECODERS`); ``defaults`` become
    ``generate``'s defaults.

    ``"lookum"`` is the Info-Gain sampler with ``variant="lookum"`` by default.
    Raises ``ValueError`` for an unknown name.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name in MODEL_DECODERS:
        return MODEL_DECODERS[name](model, tokenizer, mask_id=mask_id, **defaults)
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler name {name!r}; expected one of {SAMPLERS + tuple(MODEL_DECODERS)}")
    if name in ("info_gain", "lookum"):
        defaults.setdefault("variant", name)
        return InfoGainSampler(model, tokenizer, mask_id=mask_id, **defaults)
    return DiffusionSampler(model, tokenizer, strategy=name, mask_id=mask_id, **defaults)


__all__ = [
    "CACHE_MODES", "FastDLLMv2Sampler", "LLADA2_DECODERS", "MODEL_DECODERS", "SAMPLERS", "VARIANTS", "Candidates",
    "DiffusionSampler",
    "EntropyBoundedStrategy", "FastDLLMStrategy", "GenerateOptions", "GenerationResult", "InfoGainSampler",
    "InfoGainStrategy", "LLaDA2ThresholdSampler", "LLaDA21EditSampler",
    "ScoreStrategy", "StepDecision", "StepState", "Strategy", "make_sampler",
]
