"""The model arguments of the lm-evaluation-harness model (:mod:`infogain.evaluation.lm_eval_model`):
which options each sampler takes, with their types, read by the package's one option parser
(:func:`infogain.samplers.options.parse_value`); needs no harness.

A diffusion sampler takes generate's options (:func:`~infogain.samplers.options.option_types`), a
model's own decoder its own (:func:`decoder_option_types`), EIS :data:`EIS_OPTIONS`.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional, Tuple

from .. import models
from ..samplers.options import INTERNAL_OPTIONS, field_types, option_types, parse_value

# {argument: (type, nullable)} of the EIS sampler's options; the diffusion options are generate's own
# (infogain.samplers.options.option_types). Both are read with the package's one option parser.
EIS_OPTIONS = {"lookahead_steps": (int, False), "discount_factor": (float, False), "top_k": (int, False),
               "top_p": (float, False), "rollout_mode": (str, False), "use_cache": (bool, False),
               "temperature": (float, False), "seed": (int, True)}


def argument_value(name: str, value, kind: type):
    """A model argument that is not a sampler option, read with the package's one option parser as a
    ``kind``; None stays None (the argument's default). ValueError naming ``name`` for a bad value."""
    return None if value is None else parse_value(name, value, kind)


def is_diffusion_checkpoint(path: str) -> bool:
    """Whether the checkpoint folder ``path`` holds a diffusion LM of :mod:`infogain.models` (its
    config.json names a known architecture), else a causal LM for EIS."""
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    try:
        models.hub.architecture_of(config)
    except ValueError:
        return False
    return True


def decoder_option_types(decoder) -> Dict[str, Tuple[type, bool]]:
    """``{option: (type, nullable)}`` of a model's own decoder (an instance of a
    :data:`~infogain.samplers.MODEL_DECODERS` class): the fields of its option dataclass
    (``options_class``), else the types of its ``defaults``, a None default taking the type of
    generate's option of that name (``seed``). Options a front end sets itself (``chat``,
    ``record``; :data:`~infogain.samplers.options.INTERNAL_OPTIONS`) are left out."""
    names = getattr(decoder, "option_names", None)
    if names is None:
        raise TypeError(f"decoder must be a model's own decoder (with option_names), got {type(decoder).__name__}")
    options_class = getattr(decoder, "options_class", None)
    if options_class is not None:
        types = field_types(options_class)
    else:
        generate_types = option_types()
        types = {name: (type(value), False) if value is not None else generate_types.get(name)
                 for name, value in decoder.defaults.items()}
    return {name: kind for name, kind in types.items()
            if kind is not None and name in names and name not in INTERNAL_OPTIONS}


def sampler_options(arguments: dict, *, diffusion: bool, sampler: str,
                    types: Optional[Dict[str, Tuple[type, bool]]] = None) -> dict:
    """The sampler's options among the model ``arguments`` (text or typed, as the harness passes them),
    read with the package's one option parser; ``types`` (``{option: (type, nullable)}``, e.g. a
    decoder's :func:`decoder_option_types`) default to generate's options (EIS's for a causal LM).
    ValueError for an unknown argument (naming it) or a bad value."""
    allowed = types if types is not None else option_types() if diffusion else EIS_OPTIONS
    unknown = sorted(set(arguments) - set(allowed))
    if unknown:
        raise ValueError(f"unknown model argument(s) {unknown} for sampler={sampler}; accepted: {sorted(allowed)}")
    return {name: parse_value(name, value, *allowed[name]) for name, value in arguments.items()}
