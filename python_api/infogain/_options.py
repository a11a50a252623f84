"""The user-settable options of the diffusion samplers' ``generate`` and their value types.

Shared by the front ends that take them as strings (``python -m infogain chat`` flags,
the lm-evaluation-harness ``--model_args``), so a new :class:`GenerateOptions` field
reaches both without being listed twice.
"""
from __future__ import annotations

import dataclasses
from typing import Dict

from .samplers import GenerateOptions

# Fields a front end sets itself (or that only make sense from Python).
_INTERNAL = ("progress", "record", "chat", "on_block")


def _field_kind(annotation) -> type:
    """bool / int / float / str from a dataclass field's annotation (a string under postponed evaluation)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return next((kind for kind in (bool, int, float) if kind.__name__ in text), str)


def generate_option_kinds() -> Dict[str, type]:
    """``{option name: bool | int | float | str}`` for every user-settable ``generate`` option."""
    return {f.name: _field_kind(f.type) for f in dataclasses.fields(GenerateOptions) if f.name not in _INTERNAL}
