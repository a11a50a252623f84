"""Tiny random checkpoints in each official format, for tests (and other helpers' tests).

Written with plain ``safetensors`` and the official key names, independently of
``infogain.models.save``, so loading them checks the real format.

    from tiny_checkpoints import write_tiny_checkpoint
    path = write_tiny_checkpoint("dream", tmp_path / "dream", seed=0)
    model, tokenizer = infogain.models.load(path)      # tokenizer is None
"""
from __future__ import annotations

import json
import os
from typing import Dict

import torch
from safetensors.torch import save_file

ARCHS = ("llada", "dream", "sdar", "llada2", "sdar_moe", "fast_dllm_v2")
VOCAB = 96
MASK_ID = VOCAB - 1


def tiny_config(arch: str, **overrides) -> dict:
    """config.json dict of a tiny model; an override of None removes that field."""
    if arch == "llada":
        config = {
            "architectures": ["LLaDAModelLM"], "model_type": "llada", "d_model": 32, "n_heads": 4,
            "n_kv_heads": 4, "n_layers": 2, "mlp_hidden_size": 48, "activation_type": "silu",
            "block_type": "llama", "layer_norm_type": "rms", "rms_norm_eps": 1e-5, "rope": True,
            "rope_theta": 500000.0, "weight_tying": False, "include_bias": False, "include_qkv_bias": False,
            "vocab_size": VOCAB, "embedding_size": VOCAB, "max_sequence_length": 256,
            "mask_token_id": MASK_ID, "eos_token_id": 1, "pad_token_id": 1,
        }
    elif arch == "dream":
        config = {
            "architectures": ["DreamModel"], "model_type": "Dream", "hidden_size": 48, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 2, "hidden_act": "silu",
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None, "max_position_embeddings": 256,
            "tie_word_embeddings": False, "vocab_size": VOCAB, "mask_token_id": MASK_ID, "pad_token_id": 1,
            "eos_token_id": 1, "bos_token_id": 1,
        }
    elif arch == "sdar":
        config = {
            "architectures": ["SDARForCausalLM"], "model_type": "sdar", "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None,
            "attention_bias": False, "tie_word_embeddings": False, "vocab_size": VOCAB,
            "max_position_embeddings": 256, "mask_token_id": MASK_ID, "eos_token_id": 1, "pad_token_id": 1,
            "block_size": 4,
        }
    elif arch == "llada2":
        config = {
            "architectures": ["LLaDA2MoeModelLM"], "model_type": "llada2_moe", "hidden_size": 32,
            "intermediate_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 8, "first_k_dense_replace": 1, "num_experts": 8, "num_experts_per_tok": 2, "n_group": 4,
            "topk_group": 2, "moe_intermediate_size": 16, "num_shared_experts": 1, "routed_scaling_factor": 2.5,
            "score_function": "sigmoid", "moe_router_enable_expert_bias": True, "partial_rotary_factor": 0.5,
            "rope_theta": 600000, "rms_norm_eps": 1e-6, "use_qkv_bias": False, "use_bias": False,
            "hidden_act": "silu", "tie_word_embeddings": False, "vocab_size": VOCAB, "max_position_embeddings": 256,
            "mask_token_id": MASK_ID, "eos_token_id": 1, "pad_token_id": 1,
        }
    elif arch == "sdar_moe":
        config = {
            "architectures": ["SDARMoeForCausalLM"], "model_type": "sdar_moe", "hidden_size": 32,
            "intermediate_size": 48, "moe_intermediate_size": 16, "num_hidden_layers": 3, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 8, "num_experts": 8, "num_experts_per_tok": 2,
            "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [0], "hidden_act": "silu",
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None, "attention_bias": False,
            "tie_word_embeddings": False, "vocab_size": VOCAB, "max_position_embeddings": 256,
            "mask_token_id": MASK_ID, "eos_token_id": 1, "pad_token_id": 1, "block_size": 4,
        }
    elif arch == "fast_dllm_v2":
        config = {
            "architectures": ["Fast_dLLM_QwenForCausalLM"], "model_type": "Fast_dLLM_Qwen", "hidden_size": 48,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 2,
            "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None,
            "use_sliding_window": False, "tie_word_embeddings": False, "vocab_size": VOCAB,
            "max_position_embeddings": 256, "bd_size": 8, "small_block_size": 4, "mask_token_id": MASK_ID,
            "eos_token_id": 1, "pad_token_id": 1, "bos_token_id": 1,
        }
    else:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    for key, value in overrides.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config


def _shapes(arch: str, config: dict) -> Dict[str, tuple]:
    """Official key -> shape, written out per architecture."""
    shapes = {}
    if arch == "llada":
        d, heads, kv = config["d_model"], config["n_heads"], config["n_kv_heads"]
        hd, ff, V = d // heads, config["mlp_hidden_size"], config["embedding_size"]
        p = "model.transformer."
        shapes[p + "wte.weight"] = (V, d)
        for i in range(config["n_layers"]):
            b = f"{p}blocks.{i}."
            shapes.update({b + "attn_norm.weight": (d,), b + "q_proj.weight": (heads * hd, d),
                           b + "k_proj.weight": (kv * hd, d), b + "v_proj.weight": (kv * hd, d),
                           b + "attn_out.weight": (d, heads * hd), b + "ff_norm.weight": (d,),
                           b + "ff_proj.weight": (ff, d), b + "up_proj.weight": (ff, d),
                           b + "ff_out.weight": (d, ff)})
        shapes[p + "ln_f.weight"] = (d,)
        shapes[p + "ff_out.weight"] = (V, d)
        return shapes
    d, heads, kv = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    hd = config.get("head_dim") or d // heads
    ff, V = config["intermediate_size"], config["vocab_size"]
    if arch == "llada2":
        return _llada2_shapes(config, d, heads, kv, hd, ff, V)
    shapes["model.embed_tokens.weight"] = (V, d)
    for i in range(config["num_hidden_layers"]):
        b = f"model.layers.{i}."
        shapes.update({b + "input_layernorm.weight": (d,), b + "post_attention_layernorm.weight": (d,),
                       b + "self_attn.q_proj.weight": (heads * hd, d), b + "self_attn.k_proj.weight": (kv * hd, d),
                       b + "self_attn.v_proj.weight": (kv * hd, d), b + "self_attn.o_proj.weight": (d, heads * hd),
                       b + "mlp.gate_proj.weight": (ff, d), b + "mlp.up_proj.weight": (ff, d),
                       b + "mlp.down_proj.weight": (d, ff)})
        if arch in ("dream", "fast_dllm_v2"):
            shapes.update({b + "self_attn.q_proj.bias": (heads * hd,), b + "self_attn.k_proj.bias": (kv * hd,),
                           b + "self_attn.v_proj.bias": (kv * hd,)})
        if arch in ("sdar", "sdar_moe"):
            shapes.update({b + "self_attn.q_norm.weight": (hd,), b + "self_attn.k_norm.weight": (hd,)})
        if arch == "sdar_moe" and i not in config.get("mlp_only_layers", []) \
                and (i + 1) % config.get("decoder_sparse_step", 1) == 0:
            E, fe = config["num_experts"], config["moe_intermediate_size"]
            for proj in ("gate_proj", "up_proj", "down_proj"):
                del shapes[f"{b}mlp.{proj}.weight"]
            shapes[b + "mlp.gate.weight"] = (E, d)
            for e in range(E):
                shapes.update({f"{b}mlp.experts.{e}.gate_proj.weight": (fe, d),
                               f"{b}mlp.experts.{e}.up_proj.weight": (fe, d),
                               f"{b}mlp.experts.{e}.down_proj.weight": (d, fe)})
    shapes["model.norm.weight"] = (d,)
    shapes["lm_head.weight"] = (V, d)
    return shapes


def _llada2_shapes(config, d, heads, kv, hd, ff, V) -> Dict[str, tuple]:
    E, fe = config["num_experts"], config["moe_intermediate_size"]
    shapes = {"model.word_embeddings.weight": (V, d), "model.norm.weight": (d,), "lm_head.weight": (V, d)}
    for i in range(config["num_hidden_layers"]):
        b = f"model.layers.{i}."
        shapes.update({b + "input_layernorm.weight": (d,), b + "post_attention_layernorm.weight": (d,),
                       b + "attention.query_key_value.weight": ((heads + 2 * kv) * hd, d),
                       b + "attention.dense.weight": (d, heads * hd), b + "attention.query_layernorm.weight": (hd,),
                       b + "attention.key_layernorm.weight": (hd,)})
        if i < config["first_k_dense_replace"]:
            shapes.update({b + "mlp.gate_proj.weight": (ff, d), b + "mlp.up_proj.weight": (ff, d),
                           b + "mlp.down_proj.weight": (d, ff)})
            continue
        shapes.update({b + "mlp.gate.weight": (E, d), b + "mlp.gate.expert_bias": (E,)})
        experts = [f"mlp.experts.{e}." for e in range(E)] + (["mlp.shared_experts."] if config["num_shared_experts"] else [])
        width = {"mlp.shared_experts.": fe * (config["num_shared_experts"] or 1)}
        for prefix in experts:
            f = width.get(prefix, fe)
            shapes.update({b + prefix + "gate_proj.weight": (f, d), b + prefix + "up_proj.weight": (f, d),
                           b + prefix + "down_proj.weight": (d, f)})
    return shapes


def tiny_state_dict(arch: str, config: dict, *, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random float32 tensors under the official key names (norm weights near 1)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in _shapes(arch, config).items():
        if "norm" in key or key.endswith("ln_f.weight"):
            state[key] = 1.0 + 0.2 * torch.randn(shape, generator=gen)
        elif key.endswith("bias"):   # qkv biases and LLaDA2's expert selection biases
            state[key] = 0.2 * torch.randn(shape, generator=gen)
        else:
            state[key] = torch.randn(shape, generator=gen) / (shape[-1] ** 0.5)
    return state


def write_tiny_checkpoint(arch: str, path, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                          shards: int = 1, **overrides) -> str:
    """Write config.json + safetensors (``shards`` > 1: a sharded index) to ``path``; returns it.

    ``overrides`` replace config.json fields (None removes one). No tokenizer files
    are written, so ``infogain.models.load`` returns ``tokenizer=None``.
    """
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    config = tiny_config(arch, **overrides)
    state = {k: v.to(dtype) for k, v in tiny_state_dict(arch, config, seed=seed).items()}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if shards <= 1:
        save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        return path
    keys = sorted(state)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[s::shards]}
        save_file(part, os.path.join(path, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)
    return path


# BOS, then each message's text: chat-templated prompts equal the plain ones with BOS.
TOY_CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"


def toy_with_chat_template(path) -> str:
    """A copy of the shipped toy checkpoint whose tokenizer has :data:`TOY_CHAT_TEMPLATE`."""
    import shutil

    from infogain.models import toy_model_path

    shutil.copytree(toy_model_path(), path)
    config_path = os.path.join(path, "tokenizer_config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["chat_template"] = TOY_CHAT_TEMPLATE
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)
    return str(path)


def tiny_with_toy_tokenizer(arch: str, path) -> str:
    """A tiny checkpoint of ``arch`` over the toy model's 24-entry vocabulary (mask 3, EOS 1, pad 0, BOS 2)
    with its tokenizer and a chat template (BOS, then the messages' text): the toy checkpoint with that
    template (:func:`toy_with_chat_template`), its config.json and weights then replaced by ``arch``'s."""
    toy_with_chat_template(path)
    ids = dict(vocab_size=24, mask_token_id=3, eos_token_id=1, pad_token_id=0, max_position_embeddings=64)
    if arch == "fast_dllm_v2":
        ids["bos_token_id"] = 2
    return write_tiny_checkpoint(arch, path, seed=1, **ids)
