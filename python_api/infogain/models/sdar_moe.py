"""SDAR-MoE (SDAR-30B-A3B-Chat / -Sci): SDAR's block-causal scheme on a Qwen3-MoE geometry.

``model_type`` ``sdar_moe``, architecture ``SDARMoeForCausalLM``. Facts read from public code (for
facts only; nothing copied): SGLang's ``python/sglang/srt/models/sdar_moe.py`` (the sparse block:
``TopK(top_k=num_experts_per_tok, renormalize=norm_topk_prob)`` over a bias-free ``gate`` linear
``[num_experts, hidden]``, experts ``mlp.experts.{e}.{gate,up,down}_proj``, no shared expert;
attention exactly SDAR's: q/k/v/o projections with ``attention_bias``, per-head RMS norm of q and k
before the rotary embedding), JetEngine's ``models/sdar_moe.py`` (a layer is sparse when
``num_experts > 0`` and ``(layer + 1) % decoder_sparse_step == 0``, else it keeps the dense
``intermediate_size`` MLP; router ``softmax(logits, float32)``, ``topk``, renormalised), and
Hugging Face's Qwen3-MoE whose layout SDAR-MoE keeps (``mlp_only_layers`` also force the dense MLP;
``norm_topk_prob`` defaults to false; no routed scaling). lmdeploy's SDAR builder names the two
model types ``sdar`` and ``sdar_moe``.

Block-causal attention is SDAR's own (see :mod:`infogain.models.sdar`): the prompt is one segment,
then every generation block of ``block_length`` positions from ``gen_start``.

The routing runs in :class:`~infogain.models.moe.SparseMoE` with ``score_function="softmax"``, one
group, no shared expert, no selection bias, scaling 1: softmax over all experts in float32, the
``num_experts_per_tok`` largest, renormalised to sum 1 iff ``norm_topk_prob``.
"""
from __future__ import annotations

from typing import Dict, Tuple, Union

from . import _config as C
from .layers import ArchSpec, MoESpec
from .qwen_keys import qwen_key_map
from .sdar import DEFAULT_MASK_ID, MASK_TOKENS, max_positions, qwen_sdar_spec  # noqa: F401 (re-exported)

NAME = "sdar_moe"


def matches(config: dict) -> bool:
    model_type = str(config.get("model_type", "")).lower()
    archs = " ".join(config.get("architectures") or [])
    return model_type == "sdar_moe" or "SDARMoe" in archs


def _dense_layers(config: dict, num_layers: int, num_experts: int) -> Tuple[int, ...]:
    """The layers that keep the dense MLP: ``mlp_only_layers`` and those ``decoder_sparse_step`` skips."""
    step = C.get_int(config, "decoder_sparse_step", 1)
    only = config.get("mlp_only_layers") or []
    if not isinstance(only, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_layers
                                             for i in only):
        raise ValueError(f"config field 'mlp_only_layers' must be a list of layer indices in [0, {num_layers}), "
                         f"got {only!r}")
    return tuple(i for i in range(num_layers) if i in only or num_experts == 0 or (i + 1) % step != 0)


def spec(config: dict) -> ArchSpec:
    num_layers = C.get_int(config, "num_hidden_layers")
    num_experts = C.get_int(config, "num_experts")
    top_k = C.get_int(config, "num_experts_per_tok")
    if top_k > num_experts:
        raise ValueError(f"config field 'num_experts_per_tok' ({top_k}) exceeds 'num_experts' ({num_experts})")
    dense = _dense_layers(config, num_layers, num_experts)
    moe = MoESpec(
        first_sparse_layer=0, num_experts=num_experts, top_k=top_k, n_group=1, topk_group=1,
        expert_intermediate_size=C.get_int(config, "moe_intermediate_size"), num_shared_experts=0,
        routed_scaling_factor=1.0, norm_topk_prob=C.get_bool(config, "norm_topk_prob", False),
        score_function="softmax", expert_bias=False, dense_layers=dense,
    )
    # A dense width is needed only where a layer keeps the dense MLP.
    if not dense and config.get("intermediate_size") is None:
        config = dict(config, intermediate_size=1)
    return qwen_sdar_spec(config, moe=moe)


def key_map(spec: ArchSpec) -> Dict[str, Union[str, Tuple[str, int]]]:
    """Official key -> internal parameter name, or (name, index) for one expert's slice of a stacked
    expert weight. Dense layers keep SDAR's ``mlp.{gate,up,down}_proj``; sparse layers have
    ``mlp.gate.weight`` and ``mlp.experts.{e}.{gate,up,down}_proj.weight``."""
    keys: Dict[str, Union[str, Tuple[str, int]]] = dict(qwen_key_map(spec))
    moe = spec.moe
    for i in range(spec.num_layers):
        if not moe.is_sparse(i):
            continue
        o, m = f"model.layers.{i}.mlp.", f"blocks.{i}.mlp."
        for proj in ("gate_proj", "up_proj", "down_proj"):
            del keys[f"{o}{proj}.weight"]
        keys[o + "gate.weight"] = m + "gate_weight"
        for e in range(moe.num_experts):
            for proj, stacked in (("gate_proj", "experts_gate"), ("up_proj", "experts_up"),
                                  ("down_proj", "experts_down")):
                keys[f"{o}experts.{e}.{proj}.weight"] = (m + stacked, e)
    return keys


PRESETS = {
    # SDAR-30B-A3B-Chat / -Sci: Qwen3-30B-A3B's geometry (48 layers, 128 experts, 8 per token).
    "sdar-moe-30b-a3b": {
        "architectures": ["SDARMoeForCausalLM"], "model_type": "sdar_moe",
        "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768, "num_hidden_layers": 48,
        "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128,
        "num_experts_per_tok": 8, "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
        "hidden_act": "silu", "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "rope_scaling": None,
        "attention_bias": False, "tie_word_embeddings": False, "vocab_size": 151936,
        "max_position_embeddings": 32768, "mask_token_id": 151669, "bos_token_id": 151643,
        "eos_token_id": 151643, "pad_token_id": 151643, "block_size": 4,
    },
}
