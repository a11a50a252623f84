"""Dream (Dream-v0-Base/Instruct-7B, Qwen2.5 geometry): config and key names.

Dream is trained autoregressively-shifted: the hidden state at position i-1
predicts token i. The shift is applied inside the model (``shift_logits``).
"""
from __future__ import annotations

from typing import Dict

from . import _config as C
from .layers import ArchSpec
from .qwen_keys import qwen_key_map, qwen_spec

NAME = "dream"
DEFAULT_MASK_ID = 151666
MASK_TOKENS = ("<|mask|>",)


def matches(config: dict) -> bool:
    return str(config.get("model_type", "")).lower() == "dream" or "DreamModel" in (config.get("architectures") or [])


def spec(config: dict) -> ArchSpec:
    C.require(config, "hidden_act", ("silu",))
    C.require(config, "rope_scaling", (None,))
    hidden = C.get_int(config, "hidden_size")
    heads = C.get_int(config, "num_attention_heads")
    if hidden % heads:
        raise ValueError(f"config field 'hidden_size' ({hidden}) must be a multiple of 'num_attention_heads' ({heads})")
    return qwen_spec(config, hidden // heads, qkv_bias=True, shift_logits=True)


def max_positions(config: dict) -> int:
    return C.get_int(config, "max_position_embeddings", 131072)


def key_map(spec: ArchSpec) -> Dict[str, str]:
    return qwen_key_map(spec)


PRESETS = {
    "dream-7b": {
        "architectures": ["DreamModel"], "model_type": "Dream",
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
        "num_key_value_heads": 4, "hidden_act": "silu", "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "rope_scaling": None, "max_position_embeddings": 131072, "tie_word_embeddings": False,
        "vocab_size": 152064, "mask_token_id": 151666, "pad_token_id": 151643, "bos_token_id": 151643,
        "eos_token_id": 151643, "attention_dropout": 0.0,
    },
}
