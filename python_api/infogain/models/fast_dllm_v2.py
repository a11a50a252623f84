"""Fast-dLLM v2 (``Efficient-Large-Model/Fast_dLLM_v2_7B`` and its 1.5B sibling): block diffusion on
a Qwen2.5 geometry. Config fields and key names.

Architecture ``Fast_dLLM_QwenForCausalLM``, ``model_type`` ``Fast_dLLM_Qwen``. Facts read from public
code (for facts only; nothing copied): the checkpoint's ``modeling.py`` (a copy is in the repository
Satgoy152/DualDiffusion under ``FastDLLM_inferencing/Fast_dLLM_v2_7B/``), the generation functions
published with NVlabs/Fast-dLLM's ``v2/`` (``batch_sample``), SGLang's dLLM config
(``Fast_dLLM_QwenForCausalLM``: block size ``config.bd_size``, default 32, mask id 151665) and the
model card:

* Qwen2.5 layers under Qwen2 key names: q/k/v projections with a bias, the output projection
  without, no qk-norm, SwiGLU MLP, RMSNorm, full rotary embedding (``rotate_half``), ``rope_theta``;
  the 7B has 28 layers, 28 query / 4 KV heads, an untied LM head;
* at inference, attention is block-causal counted from position 0: query ``i`` sees key ``j`` iff
  ``j // bd_size <= i // bd_size`` (``eval_block_diff_mask``), positions are the absolute cache
  positions;
* the token shift: the logit that decodes position ``i`` is the model's output at ``i - 1`` (the
  generation loop rolls the block's logits by one, ``[logits[:, :1], logits[:, :-1]]``), so the
  first token of every block is the argmax of the previous block's last output, as in an
  autoregressive model (the loop appends it when a block completes);
* mask token ``|<MASK>|`` = 151665, end of turn ``<|im_end|>`` = 151645 (the loop's stop token);
  the decoding sub-block (``small_block_size``, 8 in the examples) is a generation argument, not a
  config field; this package reads it from the config when present (``small_block_size``).

Here the shift is the model's own (``shift_logits``: ``logits[:, i]`` predicts position ``i``), as for
Dream; a row's first real token keeps its own output. The official generation loop and its two caches
are :mod:`infogain.samplers.fast_dllm_v2`.
"""
from __future__ import annotations

from typing import Dict

from . import _config as C
from .layers import ArchSpec
from .qwen_keys import qwen_key_map, qwen_spec

NAME = "fast_dllm_v2"
DEFAULT_MASK_ID = 151665
DEFAULT_EOS_ID = 151645
DEFAULT_BLOCK_LENGTH = 32
DEFAULT_SUB_BLOCK_LENGTH = 8
MASK_TOKENS = ("|<MASK>|",)


def matches(config: dict) -> bool:
    model_type = str(config.get("model_type", "")).lower()
    archs = " ".join(config.get("architectures") or [])
    return model_type == "fast_dllm_qwen" or "Fast_dLLM" in archs


def block_length(config: dict) -> int:
    """The model's block (``bd_size``, else ``block_size``, else 32): the unit of its block-causal attention."""
    for name in ("bd_size", "block_size"):
        if config.get(name) is not None:
            return C.get_int(config, name)
    return DEFAULT_BLOCK_LENGTH


def sub_block_length(config: dict) -> int:
    """The decoding sub-block of the official loop: ``small_block_size`` when the config names one, else 8
    (capped at the block); it must divide the block."""
    block = block_length(config)
    sub = C.get_int(config, "small_block_size") if config.get("small_block_size") is not None else \
        min(DEFAULT_SUB_BLOCK_LENGTH, block)
    if block % sub:
        raise ValueError(f"config field 'small_block_size' ({sub}) must divide the block size ({block})")
    return sub


def spec(config: dict) -> ArchSpec:
    C.require(config, "hidden_act", ("silu",))
    C.require(config, "rope_scaling", (None,))
    C.require(config, "use_sliding_window", (False, None))
    sub_block_length(config)   # checked here so that a bad config fails at load
    hidden, heads = C.get_int(config, "hidden_size"), C.get_int(config, "num_attention_heads")
    head_dim = C.get_int(config, "head_dim") if config.get("head_dim") is not None else hidden // heads
    return qwen_spec(config, head_dim, qkv_bias=True, shift_logits=True, block_causal=True,
                     block_anchor="position")


def max_positions(config: dict) -> int:
    return C.get_int(config, "max_position_embeddings", 32768)


def key_map(spec: ArchSpec) -> Dict[str, str]:
    return qwen_key_map(spec)


PRESETS = {
    # Fast_dLLM_v2_7B: Qwen2.5-7B-Instruct's geometry, block 32.
    "fast-dllm-v2-7b": {
        "architectures": ["Fast_dLLM_QwenForCausalLM"], "model_type": "Fast_dLLM_Qwen",
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
        "num_key_value_heads": 4, "hidden_act": "silu", "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "rope_scaling": None, "use_sliding_window": False, "tie_word_embeddings": False, "vocab_size": 152064,
        "max_position_embeddings": 32768, "bd_size": 32, "mask_token_id": 151665, "bos_token_id": 151643,
        "eos_token_id": 151645, "pad_token_id": 151643,
    },
}
