"""Cache-aware LLaDA, Dream and SDAR models (being written)."""
from .base import DiffusionLM, KVCache, ModelConfig

__all__ = ["DiffusionLM", "KVCache", "ModelConfig"]
