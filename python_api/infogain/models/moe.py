"""The sparse mixture-of-experts layer (LLaDA2.x ``llada2_moe``; softmax routing for Qwen3-MoE-style models).

One layer: a router picks ``top_k`` experts per token, each expert is a SwiGLU MLP
``down(silu(gate(x)) * up(x))`` (no biases) of width ``moe_intermediate_size``, and the output is the
weighted sum of the chosen experts' outputs, plus an always-on shared SwiGLU MLP when
``num_shared_experts > 0``.

Routing (:meth:`SparseMoE.route`), as LLaDA2's official modelling code defines it:

* logits ``= x.float() @ gate_weight.float().T`` (float32 whatever the model dtype);
* ``score_function="sigmoid"``: scores ``= sigmoid(logits)``; ``"softmax"``: softmax over the experts;
* the choice uses the bias-corrected scores ``scores + expert_bias``. With ``n_group > 1`` the experts
  are split into ``n_group`` equal groups, a group's score is the sum of its two best corrected scores,
  only the ``topk_group`` best groups stay eligible, and the ``top_k`` best eligible experts are chosen
  (``torch.topk``, largest first);
* the weights are the *unbiased* scores at the chosen experts, divided by their sum (``+ 1e-20``) when
  ``norm_topk_prob`` (LLaDA2's sigmoid routing renormalises only when ``top_k > 1``; softmax routing,
  as Qwen3-MoE does, also at ``top_k == 1``), times ``routed_scaling_factor``; float32.

Combination (:meth:`SparseMoE.forward`): every expert runs in the model dtype; its outputs are cast to
float32, multiplied by the float32 weights, summed over the ``top_k`` slots in routing order and cast
back to the model dtype, then the shared expert's output (model dtype) is added.

The fast path routes all tokens at once, sorts the (token, slot) pairs by expert, runs each expert
once on its rows (the pairs' outputs in that sorted order), gathers the outputs back to (token, slot)
order and takes the weighted sum over the slots in one batched product (float32):

* CPU (and CUDA without a usable grouped GEMM): a loop over the *active* experts, each gathering its
  rows and running one matmul triple into its slice of one sorted output buffer. The per-expert row
  ends are read to the host once per call (one ``.tolist()``; on CUDA that is one synchronisation, so
  this path cannot be captured in a CUDA graph).
* The same loop on CPU without autograd, small experts (see ``relayout`` on :class:`SparseMoE`): on a
  cached copy of the expert weights laid out for ``rows @ W`` (gate and up concatenated, ``[E, H,
  2I]``; down ``[E, I, H]``; the shared expert likewise), so each expert runs two GEMMs with an
  untransposed right operand. On the 2-core test machine (MKL sgemm, one thread) the small layer's
  expert GEMMs ran about 10-20% faster so; LLaDA2.0-mini-sized experts (``I = 512``, ``H = 2048``)
  ran slower, hence the size limits. The copy is rebuilt when a weight is replaced or changed in place
  (its ``data_ptr`` or version counter moves); a write through ``.data`` bypasses the version counter:
  call :meth:`SparseMoE.drop_relayout` after one.
* CUDA, bfloat16, ``torch._grouped_mm`` present and the sizes 16-byte aligned: three grouped GEMMs over
  all experts with the row offsets on the device: no host synchronisation (CUDA-graph capturable).

No path scatter-adds (each output row is one gather and one batched sum), so all are deterministic.
"""
from __future__ import annotations

import math
import weakref
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

SCORE_FUNCTIONS = ("sigmoid", "softmax")

# Renormalisation guard of the official LLaDA2 router (keeps a sum of underflowed scores finite).
_NORM_EPS = 1e-20


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _has_grouped_mm() -> bool:
    return callable(getattr(torch, "_grouped_mm", None))


# Automatic relayout limits (bytes), from float32 GEMM loops on the CPU test machine: one expert's three
# matrices at 0.4-1.5 MiB (hidden 256-512, width 128-256) ran 5-20% faster relaid out, 3 MiB (hidden
# 1024, width 256) about even, 6 MiB and more (width 512) slower. The total bounds the copy's memory.
_RELAYOUT_MAX_EXPERT_BYTES = 2 << 20
_RELAYOUT_MAX_TOTAL_BYTES = 64 << 20


class _Relayout:
    """The expert weights laid out for ``rows @ W``, and what they were built from."""

    def __init__(self, sources: List[torch.Tensor]):
        self.refs = [weakref.ref(t) for t in sources]
        self.keys = [(t.data_ptr(), t._version) for t in sources]
        gate, up, down = sources[:3]
        with torch.no_grad():
            self.gate_up = torch.cat((gate, up), dim=1).transpose(1, 2).contiguous()  # [E, H, 2I]
            self.down = down.transpose(1, 2).contiguous()                              # [E, I, H]
            self.shared_gate_up = self.shared_down = None
            if len(sources) > 3:
                s_gate, s_up, s_down = sources[3:]
                self.shared_gate_up = torch.cat((s_gate, s_up), dim=0).t().contiguous()  # [H, 2I']
                self.shared_down = s_down.t().contiguous()                               # [I', H]

    def current(self, sources: List[torch.Tensor]) -> bool:
        return (len(sources) == len(self.refs)
                and all(ref() is t and (t.data_ptr(), t._version) == key
                        for ref, t, key in zip(self.refs, sources, self.keys)))


class SparseMoE(nn.Module):
    """A routed SwiGLU mixture-of-experts layer with optional shared experts.

    Args (plain Python numbers, as read from a model config):
        hidden_size: model width H.
        moe_intermediate_size: width I of one routed expert.
        num_experts: E routed experts.
        top_k: experts per token (``num_experts_per_tok``).
        n_group: expert groups for group-limited routing (None or 1: no grouping); must divide E.
        topk_group: groups kept per token (None: all), ``1 <= topk_group <= n_group``.
        routed_scaling_factor: multiplies the routing weights.
        norm_topk_prob: renormalise the chosen experts' weights to sum to 1 (see the module docstring).
        num_shared_experts: 0 (or None) for none, else the shared MLP has width ``I * num_shared_experts``.
        score_function: ``"sigmoid"`` (LLaDA2) or ``"softmax"`` (Qwen3-MoE / SDAR-MoE).
        device, dtype: of the parameters (``expert_bias`` is always float32, as the router computes in it).

    Parameters: ``gate_weight [E, H]``, buffer ``expert_bias [E]`` (float32, persistent; zeros for
    models without one), ``experts_gate [E, I, H]``, ``experts_up [E, I, H]``, ``experts_down [E, H, I]``
    (expert ``e``'s ``nn.Linear`` weights stacked along dim 0), and ``shared.{gate,up,down}_proj``
    (``nn.Linear``, no bias) when shared experts exist.

    ``grouped_mm`` (attribute): None (default) uses ``torch._grouped_mm`` where it is fast (CUDA,
    bfloat16, aligned sizes); True forces it wherever torch runs it (also CPU float32, for testing that
    path); False never uses it.

    ``relayout`` (attribute): None (default) runs the per-expert loop on a cached relaid-out copy of the
    expert weights (module docstring) on CPU when one expert's three matrices take at most 2 MiB and all
    of them (shared included) at most 64 MiB; True whenever the loop runs; False never. Either way only
    without autograd (grad mode off, or no weight requiring grad) and with weights that track versions
    (not inference tensors, i.e. not created under ``torch.inference_mode``); the result equals the
    plain loop's up to float rounding.
    """

    def __init__(self, hidden_size: int, moe_intermediate_size: int, num_experts: int, top_k: int, *,
                 n_group: Optional[int] = None, topk_group: Optional[int] = None,
                 routed_scaling_factor: float = 1.0, norm_topk_prob: bool = True,
                 num_shared_experts: Optional[int] = 0, score_function: str = "sigmoid",
                 device=None, dtype=None):
        super().__init__()
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.moe_intermediate_size = _positive_int("moe_intermediate_size", moe_intermediate_size)
        self.num_experts = _positive_int("num_experts", num_experts)
        self.top_k = _positive_int("top_k", top_k)
        self.n_group = 1 if n_group is None else _positive_int("n_group", n_group)
        if num_experts % self.n_group:
            raise ValueError(f"num_experts ({num_experts}) must be divisible by n_group ({self.n_group})")
        self.topk_group = self.n_group if topk_group is None else _positive_int("topk_group", topk_group)
        if self.topk_group > self.n_group:
            raise ValueError(f"topk_group ({self.topk_group}) must be <= n_group ({self.n_group})")
        eligible = self.topk_group * (num_experts // self.n_group)
        if top_k > eligible:
            raise ValueError(f"top_k ({top_k}) exceeds the experts in the kept groups "
                             f"(topk_group * num_experts / n_group = {eligible})")
        if isinstance(routed_scaling_factor, bool) or not isinstance(routed_scaling_factor, (int, float)) \
                or not math.isfinite(routed_scaling_factor) or routed_scaling_factor <= 0:
            raise ValueError(f"routed_scaling_factor must be a finite positive number, got {routed_scaling_factor!r}")
        self.routed_scaling_factor = float(routed_scaling_factor)
        if not isinstance(norm_topk_prob, bool):
            raise ValueError(f"norm_topk_prob must be a bool, got {norm_topk_prob!r}")
        self.norm_topk_prob = norm_topk_prob
        if num_shared_experts is None:
            num_shared_experts = 0
        if isinstance(num_shared_experts, bool) or not isinstance(num_shared_experts, int) or num_shared_experts < 0:
            raise ValueError(f"num_shared_experts must be an int >= 0, got {num_shared_experts!r}")
        self.num_shared_experts = num_shared_experts
        if score_function not in SCORE_FUNCTIONS:
            raise ValueError(f"score_function must be one of {SCORE_FUNCTIONS}, got {score_function!r}")
        self.score_function = score_function
        self.grouped_mm: Optional[bool] = None
        self.relayout: Optional[bool] = None
        self._relayout: Optional[_Relayout] = None

        E, H, I = num_experts, hidden_size, moe_intermediate_size
        kw = dict(device=device, dtype=dtype)
        self.gate_weight = nn.Parameter(torch.empty(E, H, **kw))
        self.register_buffer("expert_bias", torch.zeros(E, device=device, dtype=torch.float32))
        self.experts_gate = nn.Parameter(torch.empty(E, I, H, **kw))
        self.experts_up = nn.Parameter(torch.empty(E, I, H, **kw))
        self.experts_down = nn.Parameter(torch.empty(E, H, I, **kw))
        self.shared: Optional[nn.Module] = None
        if num_shared_experts:
            width = I * num_shared_experts
            self.shared = nn.Module()
            self.shared.gate_proj = nn.Linear(H, width, bias=False, **kw)
            self.shared.up_proj = nn.Linear(H, width, bias=False, **kw)
            self.shared.down_proj = nn.Linear(width, H, bias=False, **kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in ``±1/sqrt(fan_in)`` (``nn.Linear``'s default) per matrix; ``expert_bias`` zero.
        Checkpoint loading overwrites all of them."""
        with torch.no_grad():
            for weight in (self.gate_weight, self.experts_gate, self.experts_up, self.experts_down):
                bound = 1.0 / math.sqrt(weight.shape[-1])
                weight.uniform_(-bound, bound)
            self.expert_bias.zero_()
        if self.shared is not None:
            for linear in (self.shared.gate_proj, self.shared.up_proj, self.shared.down_proj):
                linear.reset_parameters()

    def extra_repr(self) -> str:
        return (f"hidden={self.hidden_size}, experts={self.num_experts}, top_k={self.top_k}, "
                f"width={self.moe_intermediate_size}, groups={self.topk_group}/{self.n_group}, "
                f"score={self.score_function}, shared={self.num_shared_experts}")

    # ------------------------------------------------------------------ routing

    def _check_input(self, x: torch.Tensor, name: str) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got "
                            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"{name} must have last dimension hidden_size={self.hidden_size}, got shape "
                             f"{tuple(x.shape)}")

    def route(self, x2d: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The router: ``x2d [N, hidden]`` (any float dtype) -> ``(topk_idx [N, top_k] int64,
        topk_weight [N, top_k] float32)``, slots in decreasing bias-corrected score. See the module
        docstring for the rule."""
        self._check_input(x2d, "x2d")
        if x2d.dim() != 2:
            raise ValueError(f"x2d must be 2-D [tokens, hidden], got shape {tuple(x2d.shape)}")
        logits = F.linear(x2d.float(), self.gate_weight.float())
        if self.score_function == "sigmoid":
            scores = torch.sigmoid(logits)
        else:
            scores = torch.softmax(logits, dim=-1)
        choice = scores + self.expert_bias.float()
        if self.topk_group < self.n_group:
            # Group-limited routing; keeping every group would be a no-op, hence the condition.
            n = choice.shape[0]
            grouped = choice.view(n, self.n_group, -1)
            best = min(2, grouped.shape[-1])
            group_score = grouped.topk(best, dim=-1).values.sum(dim=-1)
            kept = group_score.topk(self.topk_group, dim=-1).indices
            dropped = torch.ones_like(group_score, dtype=torch.bool).scatter_(1, kept, False)
            choice = grouped.masked_fill(dropped.unsqueeze(-1), float("-inf")).view(n, -1)
        topk_idx = choice.topk(self.top_k, dim=-1).indices
        weight = scores.gather(1, topk_idx)
        if self.norm_topk_prob and (self.top_k > 1 or self.score_function == "softmax"):
            weight = weight / (weight.sum(dim=-1, keepdim=True) + _NORM_EPS)
        return topk_idx, weight * self.routed_scaling_factor

    # ------------------------------------------------------------------ experts

    def _grouped_mm_ok(self, x: torch.Tensor) -> bool:
        if self.grouped_mm is False or not _has_grouped_mm():
            return False
        if self.grouped_mm:
            return True
        # The fast grouped kernels are CUDA bfloat16 with 16-byte aligned rows (8 bf16 elements).
        return (x.is_cuda and x.dtype == torch.bfloat16 and self.hidden_size % 8 == 0
                and self.moe_intermediate_size % 8 == 0)

    def _experts_grouped(self, rows: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        offs = ends.to(torch.int32)
        gate = torch._grouped_mm(rows, self.experts_gate.transpose(1, 2), offs=offs)
        up = torch._grouped_mm(rows, self.experts_up.transpose(1, 2), offs=offs)
        return torch._grouped_mm(F.silu(gate) * up, self.experts_down.transpose(1, 2), offs=offs)

    def __getstate__(self):
        # The cache holds weak references (not picklable) and is rebuilt on demand: copies start without.
        state = self.__dict__.copy()
        state["_relayout"] = None
        return state

    def drop_relayout(self) -> None:
        """Forget the cached relaid-out expert weights (rebuilt on the next call that uses them); needed
        only after writing the weights through ``.data``, which bypasses the version counter."""
        self._relayout = None

    def _weight_sources(self) -> List[torch.Tensor]:
        sources = [self.experts_gate, self.experts_up, self.experts_down]
        if self.shared is not None:
            s = self.shared
            sources += [s.gate_proj.weight, s.up_proj.weight, s.down_proj.weight]
        return sources

    def _relaid_out(self, x: torch.Tensor) -> Optional[_Relayout]:
        """The cached relayout when this call may use it (see ``relayout``), rebuilt if stale; else None."""
        if self.relayout is False or (self.relayout is None and x.is_cuda):
            return None
        sources = self._weight_sources()
        if torch.is_grad_enabled() and any(t.requires_grad for t in sources):
            return None  # the copy is detached: gradients must flow through the parameters
        if any(t.is_inference() for t in sources):
            return None  # no version counter, so an in-place change would go unseen
        if self.relayout is None:
            per_expert = 3 * self.hidden_size * self.moe_intermediate_size * self.experts_gate.element_size()
            total = sum(t.numel() * t.element_size() for t in sources)
            if per_expert > _RELAYOUT_MAX_EXPERT_BYTES or total > _RELAYOUT_MAX_TOTAL_BYTES:
                return None
        cached = self._relayout
        if cached is None or not cached.current(sources):
            self._relayout = None  # free the stale copy before building the new one
            cached = self._relayout = _Relayout(sources)
        return cached

    def _expert(self, e: int, rows: torch.Tensor, packed: Optional[_Relayout],
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
        if packed is None:
            hidden = F.silu(torch.mm(rows, self.experts_gate[e].t())).mul_(torch.mm(rows, self.experts_up[e].t()))
            down = self.experts_down[e].t()
        else:
            gate_up = torch.mm(rows, packed.gate_up[e])
            width = packed.down.shape[1]
            hidden = F.silu(gate_up[:, :width]).mul_(gate_up[:, width:])
            down = packed.down[e]
        return torch.mm(hidden, down) if out is None else torch.mm(hidden, down, out=out)

    def _shared(self, x2d: torch.Tensor, packed: Optional[_Relayout]) -> torch.Tensor:
        if packed is None:
            s = self.shared
            return s.down_proj(F.silu(s.gate_proj(x2d)).mul_(s.up_proj(x2d)))
        gate_up = torch.mm(x2d, packed.shared_gate_up)
        width = packed.shared_down.shape[0]
        return torch.mm(F.silu(gate_up[:, :width]).mul_(gate_up[:, width:]), packed.shared_down)

    def _experts_looped(self, x2d: torch.Tensor, token: torch.Tensor, ends: List[int],
                        packed: Optional[_Relayout]) -> torch.Tensor:
        """Each active expert on its rows ``x2d[token[start:end]]`` (``token`` sorted by expert, ``ends``
        the experts' row ends) -> ``[pairs, hidden]`` in the model dtype, in ``token``'s order. Each
        expert gathers its own rows: expert-sized temporaries instead of a second [pairs, hidden]
        buffer, whose fresh pages cost a fault each at large sizes."""
        counts = [end - start for start, end in zip([0] + ends[:-1], ends)]
        pieces = token.split(counts)
        if torch.is_grad_enabled():  # ``out=`` records no autograd history
            return torch.cat([self._expert(e, x2d.index_select(0, piece), packed)
                              for e, piece in enumerate(pieces) if counts[e]])
        out = x2d.new_empty(token.shape[0], self.hidden_size)
        for e, (piece, target) in enumerate(zip(pieces, out.split(counts))):
            if counts[e]:
                self._expert(e, x2d.index_select(0, piece), packed, out=target)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., hidden]`` (the parameters' dtype and device) -> ``[..., hidden]``, same dtype."""
        self._check_input(x, "x")
        shape = x.shape
        x2d = x.reshape(-1, self.hidden_size)
        n, k = x2d.shape[0], self.top_k
        if n == 0:
            return torch.zeros_like(x)
        topk_idx, topk_weight = self.route(x2d)
        # Stable sort: each expert's rows keep token order, so results do not depend on the sort's ties.
        sorted_expert, order = torch.sort(topk_idx.view(-1), stable=True)
        ends = torch.searchsorted(sorted_expert, torch.arange(self.num_experts, device=x.device), right=True)
        token = order // k
        packed = None
        if self._grouped_mm_ok(x2d):
            out_sorted = self._experts_grouped(x2d.index_select(0, token), ends)
        else:
            packed = self._relaid_out(x2d)
            out_sorted = self._experts_looped(x2d, token, ends.tolist(), packed)  # the one host read of the call
        # Back to (token, slot) order by a gather, then [N, 1, k] @ [N, k, H]: the weighted sum over the
        # slots in float32 in one op.
        out = out_sorted.index_select(0, torch.argsort(order)).view(n, k, self.hidden_size)
        y = torch.bmm(topk_weight.unsqueeze(1), out.float()).squeeze(1).to(x.dtype)
        if self.shared is not None:
            y = y.add_(self._shared(x2d, packed))  # y is this call's own tensor
        return y.view(shape)
