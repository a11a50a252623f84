"""The options of :meth:`~infogain.samplers.DiffusionSampler.generate`: their one set of defaults,
their checks, the one parser that reads them from text, and the result type ``generate`` returns.

Every front end (``infogain chat`` and ``infogain bench`` flags, ``infogain eval`` YAML keys and
``--key value`` overrides, the lm-evaluation-harness ``--model_args``) reads option values through
:func:`parse_value` / :func:`parse_options`, whose types come from the :class:`GenerateOptions`
fields, so an option spelled the same way means the same thing everywhere, and a new field reaches
every front end without being listed again.
"""
from __future__ import annotations

import functools
import math
import time
import typing
from dataclasses import dataclass, fields
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch

from infogain_kernels._validation import check_positive_int

from ..stats import RunStats

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
            check_positive_int(name, getattr(self, name))
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


# ---------------------------------------------------------------------------------------------- text
# Options a front end sets itself (chat: the chat front end; progress, record, on_block: Python
# callers), so no front end takes them by name.
INTERNAL_OPTIONS = ("progress", "record", "chat", "on_block")
# The one set of spellings of a boolean, case-insensitive, in every front end.
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
# Spellings of "no value" for a nullable field (a text field takes only "null": "none" is a word).
NULL_WORDS = ("null", "none")


def generate_timed(decode: Callable, prompts, options) -> GenerationResult:
    """``decode(prompts, options)`` under ``torch.inference_mode``, timed: every sampler's ``generate``.

    Inference-mode tensors cannot enter autograd later (e.g. scoring the generations with the model
    outside no_grad), so the result's tensors are handed back as ordinary copies (a few KB), and
    ``stats.wall_time_s`` is the whole call."""
    started = time.perf_counter()
    with torch.inference_mode():
        result = decode(prompts, options)
    for name in ("sequences", "canvas", "attention_mask"):
        value = getattr(result, name)
        if isinstance(value, torch.Tensor):
            setattr(result, name, value.clone())
    result.stats.wall_time_s = time.perf_counter() - started
    return result


def field_types(cls) -> Dict[str, Tuple[type, bool]]:
    """``{field: (bool | int | float | str, nullable)}`` for every field of dataclass ``cls`` that has a
    text form (an ``Optional[X]`` is X, nullable; callables and other types are left out)."""
    return dict(_field_types(cls))


@functools.lru_cache(maxsize=None)
def _field_types(cls) -> Tuple[Tuple[str, Tuple[type, bool]], ...]:
    hints = typing.get_type_hints(cls)
    found = []
    for f in fields(cls):
        annotation = hints[f.name]
        args = typing.get_args(annotation)
        nullable = type(None) in args
        base = next((a for a in args if a is not type(None)), None) if nullable else annotation
        if base in (bool, int, float, str):
            found.append((f.name, (base, nullable)))
    return tuple(found)


def option_types() -> Dict[str, Tuple[type, bool]]:
    """``{option: (type, nullable)}`` of every :class:`GenerateOptions` field a front end takes by name."""
    return {name: kind for name, kind in field_types(GenerateOptions).items() if name not in INTERNAL_OPTIONS}


def _is_null(value, kind: type, nullable: bool) -> bool:
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    if kind is str:
        return nullable and value.strip().lower() == "null"
    return value.strip().lower() in NULL_WORDS


def parse_value(name: str, value, kind: type, nullable: bool = False):
    """``value`` (text from a command line or ``--model_args``, or already typed, as from YAML) as a
    ``kind`` (bool / int / float / str), or None for a null of a ``nullable`` field. Booleans take
    :data:`TRUE_WORDS` / :data:`FALSE_WORDS` (any case) and 0 / 1; integers take integral numbers
    (``"4"``, ``4.0``). Raises ValueError naming ``name``."""
    if _is_null(value, kind, nullable):
        if nullable:
            return None
        raise ValueError(f"{name} must not be null")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        word = value.strip().lower() if isinstance(value, str) else None
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        raise ValueError(f"{name} must be true or false (or yes/no, on/off, 1/0), got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip(), 10)
            except ValueError:
                pass
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an integer, got {value!r}") from None
        if not number.is_integer():
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(number)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(f"{name} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    return str(value)


def parse_option(name: str, value):
    """One ``generate`` option from text (or a typed value); ValueError for an unknown name or a bad value."""
    types = option_types()
    if name not in types:
        raise ValueError(f"unknown sampler option {name!r}; options: {', '.join(types)}")
    return parse_value(name, value, *types[name])


def parse_options(values: Mapping[str, object]) -> Dict[str, object]:
    """``{option: value}`` (names with ``-`` or ``_``) parsed by :func:`parse_option`; the result is ready
    for ``GenerateOptions(**...)``."""
    return {name.replace("-", "_"): parse_option(name.replace("-", "_"), value) for name, value in values.items()}
