"""LLaDA (LLaDA-8B-Base/Instruct, LLaDA-1.5; MMaDA's text backbone): config and key names.

The checkpoint's ``modeling_llada.py`` (OLMo-derived, "llama" block) is not used;
this module maps its config.json fields and state-dict keys onto
:class:`~infogain.models.transformer.Transformer`.
"""
from __future__ import annotations

from typing import Dict

from . import _config as C
from .layers import ArchSpec

NAME = "llada"
DEFAULT_MASK_ID = 126336
MASK_TOKENS = ("<|mdm_mask|>",)


def matches(config: dict) -> bool:
    model_type = str(config.get("model_type", "")).lower()
    archs = config.get("architectures") or []
    # LLaDA2.x (LLaDA2MoeModelLM) is another architecture: infogain.models.llada2.
    return (model_type in ("llada", "mmada")
            or any(("LLaDA" in a and not a.startswith("LLaDA2")) or "MMada" in a for a in archs))


def spec(config: dict) -> ArchSpec:
    C.require(config, "block_type", ("llama",))
    C.require(config, "activation_type", ("silu", "swiglu"))
    C.require(config, "layer_norm_type", ("rms",))
    for flag in ("alibi", "attention_layer_norm", "include_bias", "include_qkv_bias", "scale_logits",
                 "input_emb_norm", "bias_for_layer_norm"):
        C.require(config, flag, (False, None))
    C.require(config, "rope", (True,))
    C.require(config, "layer_norm_with_affine", (True,))
    hidden = C.get_int(config, "d_model")
    heads = C.get_int(config, "n_heads")
    kv_heads = C.get_int(config, "n_kv_heads", heads)
    if hidden % heads:
        raise ValueError(f"config field 'd_model' ({hidden}) must be a multiple of 'n_heads' ({heads})")
    head_dim = hidden // heads
    C.check_head_geometry(hidden, heads, kv_heads, head_dim)
    if config.get("mlp_hidden_size") is not None:
        intermediate = C.get_int(config, "mlp_hidden_size")
    else:
        intermediate = C.get_int(config, "mlp_ratio", 4) * hidden
    # embedding_size (the table/logit width) may be padded above vocab_size.
    vocab = C.get_int(config, "embedding_size") if config.get("embedding_size") else C.get_int(config, "vocab_size")
    return ArchSpec(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
        num_layers=C.get_int(config, "n_layers"), num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        rms_norm_eps=C.get_float(config, "rms_norm_eps", 1e-5), rope_theta=C.get_float(config, "rope_theta", 10000.0),
        tie_embeddings=C.get_bool(config, "weight_tying", False),
    )


def max_positions(config: dict) -> int:
    return C.get_int(config, "max_sequence_length", 4096)


def key_map(spec: ArchSpec) -> Dict[str, str]:
    """Official state-dict key -> internal parameter name."""
    p = "model.transformer."
    keys = {p + "wte.weight": "embed.weight", p + "ln_f.weight": "norm.weight"}
    if not spec.tie_embeddings:
        keys[p + "ff_out.weight"] = "lm_head.weight"
    for i in range(spec.num_layers):
        b, m = f"{p}blocks.{i}.", f"blocks.{i}."
        keys.update({
            b + "attn_norm.weight": m + "attn_norm.weight",
            b + "q_proj.weight": m + "attn.q_proj.weight",
            b + "k_proj.weight": m + "attn.k_proj.weight",
            b + "v_proj.weight": m + "attn.v_proj.weight",
            b + "attn_out.weight": m + "attn.o_proj.weight",
            b + "ff_norm.weight": m + "mlp_norm.weight",
            b + "ff_proj.weight": m + "mlp.gate_proj.weight",   # LLaDA's ff_proj is the gate
            b + "up_proj.weight": m + "mlp.up_proj.weight",
            b + "ff_out.weight": m + "mlp.down_proj.weight",
        })
    return keys


PRESETS = {
    "llada-8b": {
        "architectures": ["LLaDAModelLM"], "model_type": "llada",
        "d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32, "mlp_hidden_size": 12288,
        "mlp_ratio": 4, "activation_type": "silu", "block_type": "llama", "layer_norm_type": "rms",
        "rms_norm_eps": 1e-05, "layer_norm_with_affine": True, "bias_for_layer_norm": False,
        "rope": True, "rope_full_precision": True, "rope_theta": 500000.0, "alibi": False,
        "flash_attention": False, "attention_layer_norm": False, "include_bias": False,
        "include_qkv_bias": False, "weight_tying": False, "vocab_size": 126464, "embedding_size": 126464,
        "max_sequence_length": 4096, "mask_token_id": 126336, "eos_token_id": 126081, "pad_token_id": 126081,
        "input_emb_norm": False, "scale_logits": False, "block_group_size": 1,
        "residual_dropout": 0.0, "embedding_dropout": 0.0, "attention_dropout": 0.0,
    },
}
