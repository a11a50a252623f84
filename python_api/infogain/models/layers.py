"""The layers of the transformer shared by LLaDA, Dream, SDAR and LLaDA2, and :class:`ArchSpec`, their switches.

Pre-norm LLaMA-style blocks: RMSNorm, rotary attention (half-split ``rotate_half``, on the whole head
or, LLaDA2, on its first ``rotary_dim`` dimensions) with grouped KV heads, SwiGLU MLP, or a sparse
mixture of experts (:class:`~infogain.models.moe.SparseMoE`) in the layers :class:`MoESpec` names.
A layer's attention goes through
:func:`~infogain.models.attention.attend_layer`, which routes it by the type of mask it is given.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attend_layer
from .moe import SparseMoE


@dataclass(frozen=True)
class MoESpec:
    """The sparse layers of a mixture-of-experts model (LLaDA2, SDAR-MoE): every layer from
    ``first_sparse_layer`` on, except ``dense_layers``, replaces its MLP by ``num_experts`` routed
    SwiGLU experts (``top_k`` per token, chosen by grouped or plain top-k routing) plus
    ``num_shared_experts`` always-on ones; see :class:`~infogain.models.moe.SparseMoE`."""

    first_sparse_layer: int
    num_experts: int
    top_k: int
    n_group: int
    topk_group: int
    expert_intermediate_size: int
    num_shared_experts: int
    routed_scaling_factor: float
    norm_topk_prob: bool
    score_function: str
    expert_bias: bool              # the checkpoint holds a per-expert selection bias
    # Layers from first_sparse_layer on that still have the dense MLP (Qwen3-MoE / SDAR-MoE:
    # mlp_only_layers, and the layers decoder_sparse_step skips).
    dense_layers: Tuple[int, ...] = ()

    def is_sparse(self, layer: int) -> bool:
        """Whether layer ``layer`` has the sparse experts (else the dense SwiGLU MLP)."""
        return layer >= self.first_sparse_layer and layer not in self.dense_layers


@dataclass(frozen=True)
class ArchSpec:
    """Geometry and the architecture switches of one model."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    qkv_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = False
    shift_logits: bool = False     # Dream: hidden state i-1 predicts token i
    block_causal: bool = False     # SDAR, LLaDA2, Fast-dLLM v2
    # Where block-causal segments are counted from: "prompt" (SDAR: the prompt is one segment, then
    # a segment per generation block from gen_start) or "position" (LLaDA2, Fast-dLLM v2: segment =
    # position // block_length in each row, so the prompt is block causal too).
    block_anchor: str = "prompt"
    rotary_dim: Optional[int] = None   # rotate only the first rotary_dim dims of a head (None: all)
    fused_qkv: bool = False        # one q|k|v projection (LLaDA2's query_key_value)
    out_bias: bool = False         # bias on the attention output projection
    moe: Optional[MoESpec] = None


# ----------------------------------------------------------------------------- layers

class RMSNorm(nn.Module):
    """``weight * (x / rms(x))``; normalised in float32, cast back before the weight."""

    def __init__(self, dim: int, eps: float, *, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        # In place on the fresh product: one pass and one allocation fewer, same values.
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype).mul_(self.weight)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """``cumsum(mask) - 1`` clamped at 0: left padding does not shift real positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin tables ``[G, L, head_dim]`` (float32) for integer ``positions [G, L]``
    (G may be 1 for positions shared by every row: the tables broadcast).

    The sin table's first half is negated: the half-split ``rotate_half(x) = [-x2, x1]`` times
    sin is then ``[x2, x1]`` (a roll of x) times the signed table, exactly (only signs move).
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions.float()[..., None] * inv_freq
    sin = freqs.sin()
    return torch.cat([freqs, freqs], dim=-1).cos(), torch.cat([-sin, sin], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [G, H, L, D]`` (half-split convention) in float32 by the tables of
    :func:`rope_cos_sin`; returns x's dtype. ``x * cos + rotate_half(x) * sin`` in three passes.
    Tables narrower than the head (partial rotary, width ``rotary_dim``) rotate the first
    ``rotary_dim`` dimensions; the rest pass through."""
    x32 = x.float()
    rotary = cos.shape[-1]
    part = x32 if rotary == x32.shape[-1] else x32[..., :rotary]
    out = part * cos[:, None]
    out.add_(torch.roll(part, rotary // 2, dims=-1).mul_(signed_sin[:, None]))
    if part is not x32:
        out = torch.cat([out, x32[..., rotary:]], dim=-1)
    return out.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, spec: ArchSpec, *, device=None, dtype=None):
        super().__init__()
        self.spec = spec
        q_width, kv_width = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        kw = dict(device=device, dtype=dtype)
        if spec.fused_qkv:
            self.qkv_proj = nn.Linear(spec.hidden_size, q_width + 2 * kv_width, bias=spec.qkv_bias, **kw)
        else:
            self.q_proj = nn.Linear(spec.hidden_size, q_width, bias=spec.qkv_bias, **kw)
            self.k_proj = nn.Linear(spec.hidden_size, kv_width, bias=spec.qkv_bias, **kw)
            self.v_proj = nn.Linear(spec.hidden_size, kv_width, bias=spec.qkv_bias, **kw)
        self.o_proj = nn.Linear(q_width, spec.hidden_size, bias=spec.out_bias, **kw)
        if spec.qk_norm:
            self.q_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps, **kw)
            self.k_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps, **kw)

    def forward(self, x, cos, sin, mask, past: Optional[Tuple[torch.Tensor, torch.Tensor]],
                fresh_key_index: Optional[torch.Tensor], keep: Optional[slice] = None):
        """``x [G, L, hidden]`` -> (output ``[G, L, hidden]``, fresh k, fresh v ``[G, H_kv, L', D]``).

        Keys are ``[past | fresh]``; ``fresh_key_index`` (long) selects which of the
        L fresh positions are keys (Dream's extra shift query is not one). ``mask`` is
        a bool attention mask ``[G, 1, L, keys]`` or None, or a candidate form
        (:class:`~infogain.models.attention.CascadeMasks` or ``StackedMasks``; then ``past`` is the
        shared cache of the row groups): see :func:`~infogain.models.attention.attend_layer`.
        ``keep`` (a slice of the L positions, plain masks only): queries, and so the
        output ``[G, len(keep), hidden]``, only there; keys and values still cover all L.
        """
        G, L, _ = x.shape
        s = self.spec
        x_q, cos_q, sin_q = x, cos, sin
        if keep is not None:
            x_q, cos_q, sin_q = x[:, keep], cos[:, keep], sin[:, keep]
            if mask is not None:
                mask = mask[:, :, keep]
        Lq = x_q.shape[1]
        if s.fused_qkv:
            # Heads laid out [q heads | k heads | v heads] along the projection's output.
            q, k, v = self.qkv_proj(x).view(G, L, s.num_heads + 2 * s.num_kv_heads, s.head_dim).split(
                [s.num_heads, s.num_kv_heads, s.num_kv_heads], dim=2)
            if keep is not None:
                q = q[:, keep]
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        else:
            q = self.q_proj(x_q).view(G, Lq, s.num_heads, s.head_dim).transpose(1, 2)
            k = self.k_proj(x).view(G, L, s.num_kv_heads, s.head_dim).transpose(1, 2)
            v = self.v_proj(x).view(G, L, s.num_kv_heads, s.head_dim).transpose(1, 2)
        if s.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos_q, sin_q), apply_rope(k, cos, sin)
        if fresh_key_index is not None:
            k, v = k.index_select(2, fresh_key_index), v.index_select(2, fresh_key_index)
        out = attend_layer(q, k, v, mask, past)
        return self.o_proj(out.transpose(1, 2).reshape(G, Lq, -1)), k, v


class MLP(nn.Module):
    def __init__(self, spec: ArchSpec, *, device=None, dtype=None):
        super().__init__()
        kw = dict(bias=False, device=device, dtype=dtype)
        self.gate_proj = nn.Linear(spec.hidden_size, spec.intermediate_size, **kw)
        self.up_proj = nn.Linear(spec.hidden_size, spec.intermediate_size, **kw)
        self.down_proj = nn.Linear(spec.intermediate_size, spec.hidden_size, **kw)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)).mul_(self.up_proj(x)))


def feed_forward(spec: ArchSpec, layer: int, *, device=None, dtype=None) -> nn.Module:
    """Layer ``layer``'s feed-forward part: the SwiGLU MLP, or the sparse experts of a MoE layer."""
    moe = spec.moe
    if moe is None or not moe.is_sparse(layer):
        return MLP(spec, device=device, dtype=dtype)
    return SparseMoE(hidden_size=spec.hidden_size, moe_intermediate_size=moe.expert_intermediate_size,
                     num_experts=moe.num_experts, top_k=moe.top_k, n_group=moe.n_group, topk_group=moe.topk_group,
                     routed_scaling_factor=moe.routed_scaling_factor, norm_topk_prob=moe.norm_topk_prob,
                     num_shared_experts=moe.num_shared_experts, score_function=moe.score_function,
                     device=device, dtype=dtype)


class Block(nn.Module):
    def __init__(self, spec: ArchSpec, layer: int = 0, *, device=None, dtype=None):
        super().__init__()
        self.attn_norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, device=device, dtype=dtype)
        self.attn = Attention(spec, device=device, dtype=dtype)
        self.mlp_norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, device=device, dtype=dtype)
        self.mlp = feed_forward(spec, layer, device=device, dtype=dtype)

    def forward(self, x, cos, sin, mask, past, fresh_key_index, keep: Optional[slice] = None,
                mlp_at: Optional[torch.Tensor] = None):
        """``keep``: see :meth:`Attention.forward`; the block's output is then ``[G, len(keep), hidden]``.
        ``mlp_at`` (bool ``[G, L]``): run the MLP at those positions only; the others' outputs lack
        it (their values are unspecified)."""
        h, k, v = self.attn(self.attn_norm(x), cos, sin, mask, past, fresh_key_index, keep)
        # Residual sums in place on the fresh branch outputs (x + h == h + x exactly).
        x = h.add_(x if keep is None else x[:, keep])
        if mlp_at is not None:
            selected = x[mlp_at]
            x[mlp_at] = self.mlp(self.mlp_norm(selected)).add_(selected)
            return x, k, v
        return self.mlp(self.mlp_norm(x)).add_(x), k, v
