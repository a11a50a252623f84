"""Drop-in fused ``compute_entropy`` and ``score_candidates`` for the dllm framework's Info-Gain
pipeline (``dllm/pipelines/info_gain/core.py``).

The pipeline's samplers import both names from ``core``, so patch ``core`` and each sampler module
you use::

    from dllm.pipelines.info_gain import core
    from dllm.pipelines.info_gain.llada import sampler as llada_sampler
    from infogain.compat import dllm_info_gain
    for module in (core, llada_sampler):
        dllm_info_gain.patch(module)

``compute_entropy`` reads the logits once in float32 (no ``[N, T, V]`` softmax is materialised);
``score_candidates`` computes the current entropy only at the positions the candidates commit and
the candidates' next-step mean entropy with ``lookahead_objective``.

What patching cannot fix: the pipeline copies the whole KV cache once per candidate
(``expand_kv``) before the lookahead forward. That copy belongs to the model call, not to these
functions; :class:`infogain.samplers.sampler.DiffusionSampler` runs every candidate against one
shared cache instead.

Numerics: float32 entropies from a different summation order than torch's softmax (agreement to
float32 rounding), and the original's clamp ``p >= eps`` (which adds ``eps log(1 / eps)`` for every
probability below ``eps``, at most ``V eps log(1 / eps)`` per row: 3.5e-6 nats at V = 126464,
eps = 1e-12) is not applied. Rows with NaN, or only ``-inf``, give NaN as in the original.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from infogain_kernels import lookahead_objective, step_stats

from ._common import patch_module

_READABLE = (torch.float32, torch.bfloat16, torch.float16)


def _readable(name: str, logits) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or not logits.dtype.is_floating_point or logits.dim() < 1:
        raise TypeError(f"{name} must be a floating tensor [..., V], got "
                        f"{getattr(logits, 'dtype', type(logits).__name__)}")
    # The original converts to float32 first, so float64 logits lose nothing more here.
    return logits if logits.dtype in _READABLE else logits.float()


def _nan_where_bad(entropy: torch.Tensor) -> torch.Tensor:
    # The fused pass flags an all -inf row with +inf; the original's softmax gives NaN there.
    return torch.where(torch.isfinite(entropy), entropy, torch.full_like(entropy, math.nan))


def compute_entropy(logits: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Shannon entropy (nats, float32) of ``softmax(logits)`` per position: [..., V] -> [...].

    ``eps`` (> 0) is accepted for compatibility; see the module docstring for its effect."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a number > 0, got {eps!r}")
    logits = _readable("logits", logits)
    return _nan_where_bad(step_stats(logits, check_values=False).entropy)


def score_candidates(
    logits, next_logits, x_batch, actions, mask_id, device,
    variant: str = "info_gain",
):
    """Objective of each lookahead candidate (higher is better).

    Args:
        logits: [1, T, V] current logits (row 0 is read, only at the candidates' positions).
        next_logits: [N, T, V] logits after each candidate.
        x_batch: [N, T] candidate canvases; positions equal to ``mask_id`` are still masked.
        actions: N index tensors (or lists) of the positions each candidate commits.
        mask_id: the mask token id. device: accepted for compatibility (unused, as in the original).
        variant: ``"lookum"`` (J = -H_next), anything else Info-Gain (J = -C - H_next).

    Returns:
        ``(C, H_next, J)`` float32 [N]: C the sum of current entropies at the candidate's positions
        (zeros for ``"lookum"``), H_next the mean next-step entropy over its masked positions (0
        when none), J the objective.
    """
    next_logits = _readable("next_logits", next_logits)
    if next_logits.dim() != 3:
        raise ValueError(f"next_logits must be [N, T, V], got shape {tuple(next_logits.shape)}")
    if not isinstance(x_batch, torch.Tensor) or tuple(x_batch.shape) != tuple(next_logits.shape[:2]):
        raise ValueError(f"x_batch must be a tensor of shape {tuple(next_logits.shape[:2])}, got "
                         f"{tuple(x_batch.shape) if isinstance(x_batch, torch.Tensor) else type(x_batch).__name__}")
    remaining = (x_batch == mask_id).to(next_logits.device)
    _, h_next = lookahead_objective(next_logits, remaining, variant="lookum", check_values=False)
    h_next = _nan_where_bad(h_next)
    if variant == "lookum":
        return h_next.new_zeros(h_next.shape), h_next, -h_next
    logits = _readable("logits", logits)
    if logits.dim() != 3 or logits.shape[1] != next_logits.shape[1]:
        raise ValueError(f"logits must be [1, {next_logits.shape[1]}, V], got shape {tuple(logits.shape)}")
    if len(actions) != next_logits.shape[0]:
        raise ValueError(f"actions must hold one index set per candidate ({next_logits.shape[0]}), "
                         f"got {len(actions)}")
    positions = [torch.as_tensor(a, device=logits.device).reshape(-1).to(torch.int64) for a in actions]
    flat = torch.cat(positions) if positions else torch.zeros(0, dtype=torch.int64, device=logits.device)
    width = logits.shape[1]
    if flat.numel() and bool(((flat < -width) | (flat >= width)).any()):
        raise ValueError(f"actions hold positions outside [0, {width})")
    flat = flat % width  # negative indices count from the end, as in the original's indexing
    needed = torch.zeros(width, dtype=torch.bool, device=logits.device)
    needed[flat] = True
    entropy = _nan_where_bad(step_stats(logits[0], needed, check_values=False).entropy)
    owner = torch.repeat_interleave(torch.arange(len(positions), device=logits.device),
                                    torch.tensor([p.numel() for p in positions], device=logits.device))
    cost = torch.zeros(len(positions), dtype=torch.float32, device=logits.device).index_add_(0, owner, entropy[flat])
    cost = cost.to(h_next.device)
    return cost, h_next, -cost - h_next


def patch(module) -> Tuple[str, ...]:
    """Swap ``compute_entropy`` and ``score_candidates`` in ``module`` (the pipeline's ``core`` or a
    sampler module that imported them) for the fused ones, where the module has them. Returns the
    names now pointing at the fused versions; idempotent; TypeError (nothing replaced) when a
    signature is not the known one."""
    return patch_module(module, {"compute_entropy": compute_entropy, "score_candidates": score_candidates})
