"""Cache-aware LLaDA, Dream and SDAR models that load the official checkpoints.

``load(path)`` reads an official checkpoint directory (safetensors only, no
remote code); ``build(config)`` makes a random model from an official-format
config; ``save(model, path)`` writes one; ``preset_config(name)`` gives the
full-size configs. Every model implements :class:`DiffusionLM`.
"""
from .base import DiffusionLM, KVCache, ModelConfig
from .hub import (DTYPES, build, find_mask_token_id, load, preset_config, resolve_dtype, save,
                  toy_model_path)
from .layers import ArchSpec
from .transformer import Transformer

__all__ = ["DTYPES", "ArchSpec", "DiffusionLM", "KVCache", "ModelConfig", "Transformer", "build", "find_mask_token_id",
           "load", "preset_config", "resolve_dtype", "save", "toy_model_path"]
