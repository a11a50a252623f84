"""Drop-in fused replacements for NVlabs Fast-dLLM's ``llada/generate.py`` helpers.

``get_transfer_index`` and ``add_gumbel_noise`` keep Fast-dLLM's signatures, arguments and return
values; ``patch(module)`` swaps them into the user's imported ``generate`` module, so its
``generate``, ``generate_with_prefix_cache`` and ``generate_with_dual_cache`` run on the fused ops::

    import generate                      # Fast-dLLM's llada/generate.py
    from infogain.compat import fast_dllm
    fast_dllm.patch(generate)

Temperature 0: the same ``x0`` and transfer mask as the original, bit for bit (see
:mod:`._common`: float32 confidences with a certified error, the original's float64 expression on
the few positions a decision depends on, the original's own ``torch.topk`` on exact values where
ties decide). ``remasking='random'`` at temperature 0 draws the same ``torch.rand((B, L))`` as the
original, so it matches too.

Temperature > 0: tokens are drawn from ``softmax(logits / T)`` by ``step_stats``' inverse-CDF
sampler (one ``torch.rand(B * L, 1)`` float32) instead of float64 Gumbel noise over ``[B, L, V]``:
the same distribution, a different random stream.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from infogain_kernels import step_stats

from ._common import (Certified, check_counts, check_remasking, check_temperature, check_tensor, patch_module,
                      select_transfer)

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def add_gumbel_noise(logits, temperature):
    """Noisy scores whose arg-max over the last dim is a draw from ``softmax(logits / temperature)``.

    ``logits`` [..., V] floating. ``temperature == 0`` returns ``logits`` itself (as the original).
    Otherwise returns float32 ``logits / T + g`` with ``g`` standard Gumbel noise (float32, one
    ``torch.rand_like`` of the logits' shape): the arg-max has the original's distribution, but the
    values are in the log domain and float32, not the original's float64 ``exp(logits) /
    (-log u)**T`` (only their arg-max is ever used), and the random stream differs.
    """
    if not isinstance(logits, torch.Tensor) or logits.dtype not in _FLOAT_DTYPES or logits.dim() == 0:
        raise TypeError(f"logits must be a floating tensor [..., V], got {getattr(logits, 'dtype', type(logits))}")
    temperature = check_temperature(temperature)
    if temperature == 0:
        return logits
    noise = torch.rand_like(logits, dtype=torch.float32)
    # -log(-log u): u = 0 would give -inf noise (never the arg-max unless the row is all -inf).
    return logits.float().div_(temperature).sub_(noise.log_().neg_().log_())


def _exact_confidence(logits: torch.Tensor, x0: torch.Tensor):
    """The original's float64 softmax probability of ``x0`` at the given positions."""
    def exact(rows_b: torch.Tensor, rows_l: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(logits[rows_b, rows_l].to(torch.float64), dim=-1)
        return probs.gather(-1, x0[rows_b, rows_l, None]).squeeze(-1)
    return exact


def get_transfer_index(logits, temperature, remasking, mask_index, x, num_transfer_tokens, threshold=None):
    """Tokens and transfer mask of one Fast-dLLM step, on the fused ops.

    Args:
        logits: [B, L, V] float32 / bfloat16 / float16 / float64 model logits (not modified).
        temperature: finite T >= 0.
        remasking: ``'low_confidence'`` (confidence = float64 ``softmax(logits)[x0]``) or ``'random'``
            (confidence = ``torch.rand((B, L))``).
        mask_index: [B, L] bool, the positions that may be transferred.
        x: [B, L] int64, the current tokens.
        num_transfer_tokens: B integer counts in [0, L] (tensor or sequence); ignored with
            ``threshold``.
        threshold: None, or a number: then every masked position of a row is ranked, the best one
            is always transferred and every other one unless its confidence is below ``threshold``.

    Returns:
        ``(x0, transfer_index)``: int64 [B, L] (proposed tokens at masked positions, ``x`` elsewhere)
        and bool [B, L]. Without ``threshold`` a row transfers the positions of ``torch.topk`` of its
        confidences (``-inf`` outside ``mask_index``), so ``k_b`` above the masked count picks
        unmasked positions the way ``torch.topk`` orders ties, exactly as the original.

    Raises:
        TypeError / ValueError naming the argument; NotImplementedError for an unknown ``remasking``.
    """
    check_tensor("logits", logits, ndim=3, dtypes=_FLOAT_DTYPES)
    batch, width, _ = logits.shape
    temperature = check_temperature(temperature)
    check_remasking(remasking)
    check_tensor("mask_index", mask_index, ndim=2, dtypes=(torch.bool,))
    check_tensor("x", x, ndim=2, dtypes=(torch.int64, torch.int32))
    for name, value in (("mask_index", mask_index), ("x", x)):
        if tuple(value.shape) != (batch, width) or value.device != logits.device:
            raise ValueError(f"{name} must be [{batch}, {width}] on {logits.device} like logits' leading dims, got "
                             f"{tuple(value.shape)} on {value.device}")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold):
            raise ValueError(f"threshold must be None or a number, got {threshold!r}")
        counts = None
    else:
        counts = check_counts("num_transfer_tokens", num_transfer_tokens, batch, width, logits.device)
    return _transfer(logits, temperature, remasking, mask_index, x, counts, threshold)


def _transfer(logits, temperature, remasking, mask_index, x, counts, threshold):
    stats_logits = logits if logits.dtype != torch.float64 else logits.float()
    # Positions outside mask_index are never read (their x0 is x and their confidence -inf).
    stats = step_stats(stats_logits, mask_index, num_samples=1 if temperature > 0 else 0,
                       temperature=temperature, check_values=False)
    x0 = stats.tokens[..., 0] if temperature > 0 else stats.top1_id
    neg_inf = torch.tensor(-math.inf, dtype=torch.float64, device=logits.device)
    # Rows with NaN / +inf / only -inf: the original's own arg-max and confidence (exact).
    bad = mask_index & ~torch.isfinite(stats.entropy)
    if temperature == 0 and bool(bad.any()):
        x0 = x0.clone()
        x0[bad] = logits[bad].argmax(-1)
    x0_out = torch.where(mask_index, x0, x.to(torch.int64))
    if remasking == "random":
        x0_p = torch.rand((x0.shape[0], x0.shape[1]), device=x0.device)
        approx = torch.where(mask_index, x0_p.to(torch.float64), neg_inf)
        conf = Certified(approx, torch.ones_like(mask_index), mask_index, None, torch.float64)
        return x0_out, select_transfer(conf, counts, threshold, certify=False)
    probs = stats.token_probs[..., 0] if temperature > 0 else stats.top1_prob
    approx = torch.where(mask_index, probs.to(torch.float64), neg_inf)
    known = ~mask_index
    exact_fn = _exact_confidence(logits, x0)
    if temperature == 0 and bool(bad.any()):
        approx[bad] = exact_fn(*bad.nonzero(as_tuple=True))
        known = known | bad
    conf = Certified(approx, known, mask_index, exact_fn, torch.float64)
    # At T > 0 only the distribution is promised: the float32 ranking stands as is.
    return x0_out, select_transfer(conf, counts, threshold, certify=temperature == 0)


def patch(module) -> Tuple[str, ...]:
    """Swap ``get_transfer_index`` and ``add_gumbel_noise`` of an imported Fast-dLLM ``generate``
    module for these. Returns the names now pointing at the fused versions; idempotent; TypeError
    (nothing replaced) when a function's signature is not the known one."""
    return patch_module(module, {"get_transfer_index": get_transfer_index, "add_gumbel_noise": add_gumbel_noise},
                        required=("get_transfer_index",))
