"""A straightforward, cache-free forward of the three architectures from the raw
official state dict, written independently of ``infogain.models`` (explicit
softmax, explicit rotation formula, KV heads repeated). Used only by the tests.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch


def _rms(x, weight, eps):
    return weight * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def _rotate(x, pos, theta):
    """x [B, H, L, D]; pair j is (x[j], x[j + D/2]) rotated by pos * theta^(-2j/D)."""
    D = x.shape[-1]
    half = D // 2
    freq = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / D)
    angle = (pos.double()[:, None, :, None] * freq).float()     # [B, 1, L, half]
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * angle.cos() - b * angle.sin(), b * angle.cos() + a * angle.sin()], dim=-1)


def _names(arch: str, i: int) -> Dict[str, str]:
    if arch == "llada":
        b = f"model.transformer.blocks.{i}."
        return dict(n1=b + "attn_norm.weight", q=b + "q_proj", k=b + "k_proj", v=b + "v_proj", o=b + "attn_out",
                    n2=b + "ff_norm.weight", gate=b + "ff_proj", up=b + "up_proj", down=b + "ff_out")
    b = f"model.layers.{i}."
    return dict(n1=b + "input_layernorm.weight", q=b + "self_attn.q_proj", k=b + "self_attn.k_proj",
                v=b + "self_attn.v_proj", o=b + "self_attn.o_proj", n2=b + "post_attention_layernorm.weight",
                gate=b + "mlp.gate_proj", up=b + "mlp.up_proj", down=b + "mlp.down_proj",
                qn=b + "self_attn.q_norm.weight", kn=b + "self_attn.k_norm.weight")


def _linear(state, name, x):
    y = x @ state[name + ".weight"].T
    if name + ".bias" in state:
        y = y + state[name + ".bias"]
    return y


def reference_logits(arch: str, config: dict, state: Dict[str, torch.Tensor], ids: torch.Tensor,
                     attention_mask: Optional[torch.Tensor] = None, *, gen_start: Optional[int] = None,
                     block_length: Optional[int] = None) -> torch.Tensor:
    """logits [B, T, V] (float32) with logits[:, i] predicting token i (Dream shifted)."""
    state = {k: v.float() for k, v in state.items()}
    B, T = ids.shape
    if arch == "llada":
        layers, heads, kv_heads = config["n_layers"], config["n_heads"], config["n_kv_heads"]
        eps, theta = config["rms_norm_eps"], config["rope_theta"]
        emb, final_norm, head = "model.transformer.wte.weight", "model.transformer.ln_f.weight", "model.transformer.ff_out.weight"
    else:
        layers, heads, kv_heads = config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"]
        eps, theta = config["rms_norm_eps"], config["rope_theta"]
        emb, final_norm, head = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"
    if attention_mask is None:
        attention_mask = torch.ones(B, T, dtype=torch.bool)
    pos = torch.clamp(torch.cumsum(attention_mask.long(), 1) - 1, min=0)
    allowed = attention_mask[:, None, :].expand(B, T, T).clone()       # [B, q, k]
    if arch == "sdar":
        seg = [0 if t < gen_start else 1 + (t - gen_start) // block_length for t in range(T)]
        seg = torch.tensor(seg)
        allowed &= (seg[None, :] <= seg[:, None])[None]
    x = state[emb][ids]
    for i in range(layers):
        n = _names(arch, i)
        h = _rms(x, state[n["n1"]], eps)
        q = _linear(state, n["q"], h).view(B, T, heads, -1).transpose(1, 2)
        k = _linear(state, n["k"], h).view(B, T, kv_heads, -1).transpose(1, 2)
        v = _linear(state, n["v"], h).view(B, T, kv_heads, -1).transpose(1, 2)
        if arch == "sdar":
            q, k = _rms(q, state[n["qn"]], eps), _rms(k, state[n["kn"]], eps)
        q, k = _rotate(q, pos, theta), _rotate(k, pos, theta)
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        # padding queries see nothing; give them zeros instead of NaN (never compared)
        probs = torch.nan_to_num(torch.softmax(scores, dim=-1))
        attn = (probs @ v).transpose(1, 2).reshape(B, T, -1)
        x = x + _linear(state, n["o"], attn)
        h = _rms(x, state[n["n2"]], eps)
        x = x + _linear(state, n["down"], torch.nn.functional.silu(_linear(state, n["gate"], h)) * _linear(state, n["up"], h))
    logits = _rms(x, state[final_norm], eps) @ state[head].T
    if arch == "dream":
        # position i takes the output of i-1 when i-1 is a real token, else its own
        shifted = logits.clone()
        for b in range(B):
            for i in range(1, T):
                if attention_mask[b, i - 1]:
                    shifted[b, i] = logits[b, i - 1]
        logits = shifted
    return logits
