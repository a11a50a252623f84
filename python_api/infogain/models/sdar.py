"""SDAR (SDAR-*-Chat) and TraDo (Qwen3 geometry, block-causal): config and key names.

Attention is block-causal (see ``"block_causal"`` in :mod:`infogain.models.base`);
q and k are RMS-normalised per head (qk-norm) before the rotary embedding.
"""
from __future__ import annotations

from typing import Dict

from . import _config as C
from .layers import ArchSpec
from .qwen_keys import qwen_key_map, qwen_spec

NAME = "sdar"
DEFAULT_MASK_ID = 151669
MASK_TOKENS = ("<|MASK|>", "<MASK>", "[MASK]", "<mask>")


def matches(config: dict) -> bool:
    model_type = str(config.get("model_type", "")).lower()
    archs = " ".join(config.get("architectures") or [])
    if model_type == "sdar_moe" or "SDARMoe" in archs:   # the MoE sibling: models/sdar_moe.py
        return False
    return model_type in ("sdar", "trado") or "SDAR" in archs


def qwen_sdar_spec(config: dict, **switches) -> ArchSpec:
    """SDAR's attention on a Qwen3 config (dense SDAR, and SDAR-MoE with ``moe=``): qk-norm, no
    biases, block-causal segments counted from the prompt."""
    C.require(config, "hidden_act", ("silu",))
    C.require(config, "rope_scaling", (None,))
    C.require(config, "attention_bias", (False,))
    head_dim = C.get_int(config, "head_dim") if config.get("head_dim") is not None else \
        C.get_int(config, "hidden_size") // C.get_int(config, "num_attention_heads")
    return qwen_spec(config, head_dim, qk_norm=True, block_causal=True, **switches)


def spec(config: dict) -> ArchSpec:
    return qwen_sdar_spec(config)


def max_positions(config: dict) -> int:
    return C.get_int(config, "max_position_embeddings", 32768)


def key_map(spec: ArchSpec) -> Dict[str, str]:
    return qwen_key_map(spec)


PRESETS = {
    "sdar-8b": {
        "architectures": ["SDARForCausalLM"], "model_type": "sdar",
        "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu", "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "rope_scaling": None, "attention_bias": False, "tie_word_embeddings": False,
        "vocab_size": 151936, "max_position_embeddings": 32768, "mask_token_id": 151669,
        "bos_token_id": 151643, "eos_token_id": 151643, "pad_token_id": 151643, "block_size": 4,
    },
}
