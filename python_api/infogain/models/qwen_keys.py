"""Config fields and state-dict key names shared by the Qwen2/Qwen3-style checkpoints (Dream, SDAR)."""
from __future__ import annotations

from typing import Dict

from . import _config as C
from .layers import ArchSpec


def qwen_key_map(spec: ArchSpec) -> Dict[str, str]:
    """Official key -> internal parameter name (biases and qk-norm as the spec has them)."""
    keys = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight"}
    if not spec.tie_embeddings:
        keys["lm_head.weight"] = "lm_head.weight"
    for i in range(spec.num_layers):
        o, m = f"model.layers.{i}.", f"blocks.{i}."
        keys[o + "input_layernorm.weight"] = m + "attn_norm.weight"
        keys[o + "post_attention_layernorm.weight"] = m + "mlp_norm.weight"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            keys[f"{o}self_attn.{proj}.weight"] = f"{m}attn.{proj}.weight"
        if spec.qkv_bias:
            for proj in ("q_proj", "k_proj", "v_proj"):
                keys[f"{o}self_attn.{proj}.bias"] = f"{m}attn.{proj}.bias"
        if spec.qk_norm:
            keys[o + "self_attn.q_norm.weight"] = m + "attn.q_norm.weight"
            keys[o + "self_attn.k_norm.weight"] = m + "attn.k_norm.weight"
        for proj in ("gate_proj", "up_proj", "down_proj"):
            keys[f"{o}mlp.{proj}.weight"] = f"{m}mlp.{proj}.weight"
    return keys


def qwen_spec(config: dict, head_dim: int, **switches) -> ArchSpec:
    """The :class:`ArchSpec` of a Qwen-style config.json; ``switches`` set the architecture's flags."""
    hidden = C.get_int(config, "hidden_size")
    heads = C.get_int(config, "num_attention_heads")
    kv_heads = C.get_int(config, "num_key_value_heads", heads)
    C.check_head_geometry(hidden, heads, kv_heads, head_dim)
    return ArchSpec(
        vocab_size=C.get_int(config, "vocab_size"), hidden_size=hidden,
        intermediate_size=C.get_int(config, "intermediate_size"), num_layers=C.get_int(config, "num_hidden_layers"),
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        rms_norm_eps=C.get_float(config, "rms_norm_eps", 1e-6), rope_theta=C.get_float(config, "rope_theta", 1e6),
        tie_embeddings=C.get_bool(config, "tie_word_embeddings", False), **switches,
    )
