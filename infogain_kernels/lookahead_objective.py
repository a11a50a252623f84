"""``lookahead_objective``: score lookahead candidates by the mean entropy of their next logits.

For candidate r, ``h_next[r]`` is the mean entropy of ``softmax(next_logits[r, l])`` over the
positions l still masked after the candidate's action (``remaining[r, l]``), and the objective is
``J = -cost - h_next`` (Info-Gain) or ``J = -h_next`` (LookUM). Positions that are not remaining are
never read, which is most of the block late in decoding.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ._backend import call_op, device_guard, use_native, use_triton, value_checks_enabled
from ._validation import check_bool, check_logits, check_mask, check_same_device, check_tensor
from .step_stats import raise_on_bad_rows, step_stats_reference

VARIANTS = ("info_gain", "lookum")
_COST_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def check_variant(variant, *, optional: bool = False) -> None:
    """``variant`` names an objective of :data:`VARIANTS` (or is None, when ``optional``)."""
    if not isinstance(variant, str):
        raise TypeError(f"variant must be a str{' or None' if optional else ''}, got {type(variant).__name__}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be {'None or ' if optional else ''}one of {VARIANTS}, got {variant!r}")


def check_cost(cost, variant: Optional[str], n_candidates: int) -> None:
    """``cost``: the candidates' [n_candidates] floating cost, required by ``"info_gain"``."""
    if cost is None and variant == "info_gain":
        raise ValueError("cost is required for variant='info_gain' (J = -cost - h_next)")
    if cost is not None:
        check_tensor("cost", cost, dtypes=_COST_DTYPES, ndim=1)
        if cost.shape[0] != n_candidates:
            raise ValueError(f"cost must have shape ({n_candidates},), got {tuple(cost.shape)}")


def objective_reference(entropy: torch.Tensor, remaining: torch.Tensor, cost: Optional[torch.Tensor]):
    """From per-position entropies [R, L] float32 (0 where not remaining) and ``remaining`` [R, L]
    bool: ``h_next`` = mean over remaining positions (0 when a row has none) and
    ``J = -cost - h_next`` (``-h_next`` when ``cost`` is None). Returns ``(J, h_next)`` [R] float32."""
    # The count divides as float32 (exact: a count below 2**24), in place on the fresh sum.
    h_next = entropy.sum(dim=1).div_(remaining.sum(dim=1).clamp_(min=1))
    objective = -h_next if cost is None else -cost - h_next
    return objective, h_next


def _lookahead_objective_impl(next_logits: torch.Tensor, remaining: torch.Tensor, cost: Optional[torch.Tensor],
                            variant: str) -> Tuple[torch.Tensor, torch.Tensor]:
    n_candidates, n_positions = remaining.shape
    # LookUM ignores the cost; the kernels take None for "no cost term".
    cost = cost if variant == "info_gain" else None
    if n_positions == 0:
        h_next = next_logits.new_zeros(n_candidates, dtype=torch.float32)
        return (-h_next if cost is None else -cost - h_next), h_next
    if use_native(next_logits):
        entropy = torch.ops.infogain._row_entropy_cpu(next_logits, remaining)
        return objective_reference(entropy, remaining, cost)
    if use_triton(next_logits):
        from ._entropy_triton import launch_row_stats
        from ._objective_triton import launch_masked_mean

        with device_guard(next_logits):
            entropy = launch_row_stats(next_logits, remaining, with_top=False)[0]
            return launch_masked_mean(entropy.view(n_candidates, n_positions), remaining, cost)
    entropy = step_stats_reference(next_logits, remaining, None, 0.0, with_top=False)[0]
    return objective_reference(entropy.view(n_candidates, n_positions), remaining, cost)


_lookahead_objective_op = torch.library.custom_op("infogain::lookahead_objective", _lookahead_objective_impl, mutates_args=())


@_lookahead_objective_op.register_fake
def _lookahead_objective_fake(next_logits, remaining, cost, variant):
    objective = next_logits.new_empty(next_logits.shape[:1], dtype=torch.float32)
    return objective, torch.empty_like(objective)


def lookahead_objective(next_logits: torch.Tensor, remaining: torch.Tensor, cost: Optional[torch.Tensor] = None,
                        *, variant: str = "info_gain", check_values: bool = True
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Objective of R lookahead candidates from their next-step logits, in one read of the logits.

    Args:
        next_logits: [R, L, V] float32, bfloat16 or float16 (any strides): the model's logits over the
            block after applying candidate r. ``-inf`` entries are legal.
        remaining: [R, L] bool: positions still masked after candidate r. Rows of ``next_logits``
            where it is False are not read.
        cost: [R] floating (converted to float32), the candidate's cost C (sum of current entropies at
            its positions). Required for ``variant="info_gain"``; ignored by ``"lookum"`` (still
            validated when given).
        variant: ``"info_gain"`` (J = -cost - h_next) or ``"lookum"`` (J = -h_next).
        check_values: when True (default), raise for bad values (below). That check costs one host
            synchronisation; pass False to fold it into your own read-back (e.g. of
            ``~torch.isfinite(J).any()`` on the device): a candidate with a NaN / all -inf row in its
            read positions then has a non-finite ``h_next`` (and ``J``), one with a non-finite cost a
            non-finite ``J``.

    Returns:
        ``(J, h_next)``, float32 [R]. ``h_next[r]`` is the mean float32 entropy (nats) over the
        positions where ``remaining[r]`` is True, 0 when there are none.

    Raises:
        TypeError / ValueError naming the argument for bad dtypes, ranks, shapes, devices, an unknown
        variant or a missing cost; with ``check_values=True``, ValueError when a read row contains
        NaN or +inf or is all -inf, or when ``cost`` is not finite. That check costs one host
        synchronisation on the [R] result. It is skipped under ``torch.compile`` and other tracers and
        while a CUDA graph is being captured, and
        ``torch.ops.infogain.lookahead_objective`` never does it; non-finite J / h_next then flag
        the candidates.

    CUDA tensors run the Triton kernels; CPU tensors the native entropy pass of the extension
    (``torch.ops.infogain._row_entropy_cpu``) and the masked mean in torch, or the torch reference
    when the extension is not built. ``INFOGAIN_BACKEND`` / ``use_backend`` force one.
    """
    check_logits("next_logits", next_logits)
    check_tensor("next_logits", next_logits, ndim=3)
    check_tensor("remaining", remaining, dtypes=(torch.bool,), ndim=2)
    check_mask("remaining", remaining, next_logits.shape[:2])
    check_variant(variant)
    check_cost(cost, variant, next_logits.shape[0])
    check_same_device(next_logits=next_logits, remaining=remaining, cost=cost)
    check_values = check_bool("check_values", check_values)
    if cost is not None:
        cost = cost.to(torch.float32)
    objective, h_next = call_op(torch.ops.infogain.lookahead_objective, _lookahead_objective_impl,
                                next_logits, remaining, cost, variant)
    if check_values and value_checks_enabled(objective) and not bool(torch.isfinite(objective).all()):
        _raise_on_non_finite(next_logits, remaining, cost, h_next)
    return objective, h_next


def _raise_on_non_finite(next_logits, remaining, cost, h_next) -> None:
    """Name the first NaN / all -inf row behind a non-finite objective, or the non-finite cost."""
    bad_candidates = (~torch.isfinite(h_next)).nonzero()
    if len(bad_candidates):
        r = int(bad_candidates[0, 0])
        # Error path only: recompute the candidate's per-position entropies to find the culprit.
        entropy = step_stats_reference(next_logits[r], remaining[r], None, 0.0, with_top=False)[0]
        raise_on_bad_rows("next_logits", next_logits[r], entropy, prefix=(r,))
    r = int((~torch.isfinite(cost)).nonzero()[0, 0])
    raise ValueError(f"cost must be finite, got {float(cost[r])} at index {r}")
