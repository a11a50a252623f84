"""LLaDA2.x (LLaDA2.0/2.1 mini and flash, their -preview and -CAP versions): config and key names.

``model_type`` ``llada2_moe``, architecture ``LLaDA2MoeModelLM``. Facts read from the official
modeling file (``modeling_llada2_moe.py``) and the LLaDA2.0-mini config.json:

* the first ``first_k_dense_replace`` layers have a dense SwiGLU MLP, the others a sparse MoE:
  ``num_experts`` routed experts, ``num_experts_per_tok`` chosen per token by grouped routing over
  sigmoid scores plus a per-expert bias (the bias steers the choice only; the weights are the
  unbiased scores, normalised when more than one expert is chosen, times
  ``routed_scaling_factor``), plus ``num_shared_experts`` experts every token goes through;
* attention: one fused q|k|v projection, grouped KV heads, per-head RMS norm of q and k
  (``use_qk_norm``, on unless the config says otherwise), rotary embedding on the first
  ``head_dim * partial_rotary_factor`` dimensions of each head, an output projection with a bias
  when ``use_bias`` (the official default; LLaDA2.0-mini sets it false);
* block-causal attention counted from position 0: segment = position // 32, a block sees itself
  and every earlier block, so the prompt is block causal too and its last, partial block is decoded
  together with the first generated tokens;
* mask id 156895, end of text (EOS and pad) 156892, vocabulary 157184 (mini).
"""
from __future__ import annotations

from typing import Dict, Tuple, Union

from . import _config as C
from .layers import ArchSpec, MoESpec

NAME = "llada2"
DEFAULT_MASK_ID = 156895
DEFAULT_EOS_ID = 156892
DEFAULT_BLOCK_LENGTH = 32
MASK_TOKENS = ("<|mask|>",)


def matches(config: dict) -> bool:
    model_type = str(config.get("model_type", "")).lower()
    archs = " ".join(config.get("architectures") or [])
    return model_type in ("llada2_moe", "llada21_moe") or "LLaDA2Moe" in archs


def _moe_spec(config: dict, num_layers: int):
    if config.get("num_experts") is None:
        return None
    num_experts = C.get_int(config, "num_experts")
    top_k = C.get_int(config, "num_experts_per_tok", 2)
    n_group = C.get_int(config, "n_group", 8)
    topk_group = C.get_int(config, "topk_group", 4)
    if num_experts % n_group:
        raise ValueError(f"config field 'num_experts' ({num_experts}) must be a multiple of 'n_group' ({n_group})")
    if topk_group > n_group:
        raise ValueError(f"config field 'topk_group' ({topk_group}) must be at most 'n_group' ({n_group})")
    if top_k > topk_group * (num_experts // n_group):
        raise ValueError(f"config field 'num_experts_per_tok' ({top_k}) exceeds the experts of the "
                         f"'topk_group' ({topk_group}) kept groups")
    first_sparse = config.get("first_k_dense_replace", 0)
    first_sparse = 0 if first_sparse is None else C._config_int("first_k_dense_replace", first_sparse, 0)
    if first_sparse > num_layers:
        raise ValueError(f"config field 'first_k_dense_replace' ({first_sparse}) exceeds 'num_hidden_layers' "
                         f"({num_layers})")
    shared = config.get("num_shared_experts") or 0
    shared = C._config_int("num_shared_experts", shared, 0)
    return MoESpec(
        first_sparse_layer=first_sparse, num_experts=num_experts, top_k=top_k, n_group=n_group,
        topk_group=topk_group, expert_intermediate_size=C.get_int(config, "moe_intermediate_size"),
        num_shared_experts=shared, routed_scaling_factor=C.get_float(config, "routed_scaling_factor", 2.5),
        # The official gate normalises the chosen weights whenever it picks more than one expert,
        # whatever norm_topk_prob says.
        norm_topk_prob=True, score_function="sigmoid",
        expert_bias=C.get_bool(config, "moe_router_enable_expert_bias", True),
    )


def spec(config: dict) -> ArchSpec:
    C.require(config, "hidden_act", ("silu",))
    C.require(config, "rope_scaling", (None,))
    C.require(config, "use_sliding_window", (False, None))
    C.require(config, "norm_head", (False, None))
    C.require(config, "norm_softmax", (False, None))
    C.require(config, "use_rmsnorm", (True, None))
    # The official gate scores with a sigmoid whatever the config says; a config naming anything
    # else describes a model this code (and the official code) would run wrongly.
    C.require(config, "score_function", ("sigmoid", None))
    hidden = C.get_int(config, "hidden_size")
    heads = C.get_int(config, "num_attention_heads")
    kv_heads = C.get_int(config, "num_key_value_heads", heads)
    head_dim = C.get_int(config, "head_dim") if config.get("head_dim") is not None else hidden // heads
    C.check_head_geometry(hidden, heads, kv_heads, head_dim)
    factor = config.get("partial_rotary_factor", 0.5)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
        raise ValueError(f"config field 'partial_rotary_factor' must be in (0, 1], got {factor!r}")
    rotary_dim = int(head_dim * factor)
    if config.get("rotary_dim") is not None and config["rotary_dim"] != rotary_dim:
        raise ValueError(f"config field 'rotary_dim' ({config['rotary_dim']!r}) disagrees with head_dim * "
                         f"partial_rotary_factor = {rotary_dim}")
    if rotary_dim < 2 or rotary_dim % 2:
        raise ValueError(f"the rotary dimension head_dim * partial_rotary_factor must be even and >= 2, got {rotary_dim}")
    num_layers = C.get_int(config, "num_hidden_layers")
    moe = _moe_spec(config, num_layers)
    needs_dense = moe is None or moe.first_sparse_layer > 0
    intermediate = C.get_int(config, "intermediate_size") if needs_dense else \
        C.get_int(config, "intermediate_size", 1)
    return ArchSpec(
        vocab_size=C.get_int(config, "vocab_size"), hidden_size=hidden, intermediate_size=intermediate,
        num_layers=num_layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        rms_norm_eps=C.get_float(config, "rms_norm_eps", 1e-5), rope_theta=C.get_float(config, "rope_theta", 1e4),
        qkv_bias=C.get_bool(config, "use_qkv_bias", False), qk_norm=C.get_bool(config, "use_qk_norm", True),
        tie_embeddings=C.get_bool(config, "tie_word_embeddings", False), block_causal=True,
        block_anchor="position", rotary_dim=rotary_dim, fused_qkv=True,
        out_bias=C.get_bool(config, "use_bias", True), moe=moe,
    )


def max_positions(config: dict) -> int:
    return C.get_int(config, "max_position_embeddings", 16384)


def block_length(config: dict) -> int:
    """The model's block length: the config's ``block_length``/``block_size`` if it has one, else 32."""
    for name in ("block_length", "block_size"):
        if config.get(name) is not None:
            return C.get_int(config, name)
    return DEFAULT_BLOCK_LENGTH


def key_map(spec: ArchSpec) -> Dict[str, Union[str, Tuple[str, int]]]:
    """Official key -> internal parameter name, or (name, index) for one expert's slice of a stacked
    expert weight."""
    keys: Dict[str, Union[str, Tuple[str, int]]] = {
        "model.word_embeddings.weight": "embed.weight", "model.norm.weight": "norm.weight"}
    if not spec.tie_embeddings:
        keys["lm_head.weight"] = "lm_head.weight"
    moe = spec.moe
    for i in range(spec.num_layers):
        o, m = f"model.layers.{i}.", f"blocks.{i}."
        keys[o + "input_layernorm.weight"] = m + "attn_norm.weight"
        keys[o + "post_attention_layernorm.weight"] = m + "mlp_norm.weight"
        keys[o + "attention.query_key_value.weight"] = m + "attn.qkv_proj.weight"
        if spec.qkv_bias:
            keys[o + "attention.query_key_value.bias"] = m + "attn.qkv_proj.bias"
        keys[o + "attention.dense.weight"] = m + "attn.o_proj.weight"
        if spec.out_bias:
            keys[o + "attention.dense.bias"] = m + "attn.o_proj.bias"
        if spec.qk_norm:
            keys[o + "attention.query_layernorm.weight"] = m + "attn.q_norm.weight"
            keys[o + "attention.key_layernorm.weight"] = m + "attn.k_norm.weight"
        if moe is None or i < moe.first_sparse_layer:
            for proj in ("gate_proj", "up_proj", "down_proj"):
                keys[f"{o}mlp.{proj}.weight"] = f"{m}mlp.{proj}.weight"
            continue
        keys[o + "mlp.gate.weight"] = m + "mlp.gate_weight"
        if moe.expert_bias:
            keys[o + "mlp.gate.expert_bias"] = m + "mlp.expert_bias"
        for e in range(moe.num_experts):
            for proj, stacked in (("gate_proj", "experts_gate"), ("up_proj", "experts_up"),
                                  ("down_proj", "experts_down")):
                keys[f"{o}mlp.experts.{e}.{proj}.weight"] = (f"{m}mlp.{stacked}", e)
        if moe.num_shared_experts:
            for proj in ("gate_proj", "up_proj", "down_proj"):
                keys[f"{o}mlp.shared_experts.{proj}.weight"] = f"{m}mlp.shared.{proj}.weight"
    return keys


PRESETS = {
    # LLaDA2.0-mini (16B total, about 1.4B active); the -preview, -CAP and LLaDA2.1-mini share it.
    "llada2-mini": {
        "architectures": ["LLaDA2MoeModelLM"], "model_type": "llada2_moe",
        "hidden_size": 2048, "intermediate_size": 5120, "num_hidden_layers": 20, "num_attention_heads": 16,
        "num_key_value_heads": 4, "head_dim": 128, "hidden_act": "silu", "rms_norm_eps": 1e-06,
        "first_k_dense_replace": 1, "num_experts": 256, "num_experts_per_tok": 8, "num_shared_experts": 1,
        "moe_intermediate_size": 512, "n_group": 8, "topk_group": 4, "score_function": "sigmoid",
        "moe_router_enable_expert_bias": True, "norm_topk_prob": True, "routed_scaling_factor": 2.5,
        "router_dtype": "fp32", "partial_rotary_factor": 0.5, "rotary_dim": 64, "rope_theta": 600000,
        "rope_scaling": None, "use_qkv_bias": False, "use_bias": False, "use_rmsnorm": True,
        "tie_word_embeddings": False, "vocab_size": 157184, "max_position_embeddings": 32768,
        "pad_token_id": 156892, "eos_token_id": 156892, "mask_token_id": 156895,
    },
}
