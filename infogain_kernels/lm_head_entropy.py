"""``lm_head_entropy``: entropy of ``softmax(hidden @ weight.T + bias)`` without materialising the logits.

A lookahead needs one number per position (the entropy of its next-token distribution) but the LM
head produces ``V`` logits per position, so the logits of a lookahead batch ``[R, W, V]`` are by far
its largest tensor. This op computes the entropy from the hidden states chunk by chunk over the
vocabulary, keeping per position only running statistics, and can finish with the Info-Gain
objective of :func:`~infogain_kernels.lookahead_objective` (masked mean, ``J = -cost - h_next``).

Logits. For position ``p`` and token ``j``: ``x[p, j] = round(hidden[p] . weight[j]) + bias[j]``,
where the dot product is accumulated in float32 and rounded to ``hidden``'s dtype (what a matmul in
that dtype returns, i.e. the model's own logits), and the bias is added in float32. A ``-inf`` bias
suppresses a token (the samplers use it for the mask token and the EOS penalty).

Only the positions the mask keeps are gathered and multiplied: masked-out positions cost no matmul
work. CPU tensors run chunked matmuls (a chunk of logits is at most :data:`_CHUNK_LOGITS` float32
values, so it stays in cache), each chunk folded into per-position running statistics in one pass
by the native kernel ``torch.ops.infogain._lm_head_stats_cpu`` (csrc/lm_head_cpu.cpp; the torch
reference below is the specification and the fallback); CUDA tensors run the Triton kernels of
:mod:`._lm_head_triton`, which tile kept positions x vocabulary with ``tl.dot`` and keep the same
online statistics per position, with the vocabulary split across programs when there are few
positions.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from ._backend import call_op, device_guard, op_path, value_checks_enabled
from ._validation import FLOAT_DTYPES, check_bool, check_mask, check_same_device, check_tensor
from .lookahead_objective import check_cost, check_variant, objective_reference
from .step_stats import SKIPPED_ENTROPY, SKIPPED_ID, raise_on_bad_rows

try:
    from . import _C  # noqa: F401  (loading the extension registers its ops, if any)
except ImportError:  # pragma: no cover - only when the extension was not built
    pass

# The CPU path holds at most this many float32 logits at a time (1 MiB): a chunk of rows x a chunk
# of the vocabulary, with as many rows as vocabulary columns at most, which balances re-reading
# the weight (once per row chunk) against re-reading the hidden rows (once per vocabulary chunk).
_CHUNK_LOGITS = 1 << 18
_MAX_CHUNK_ROWS = 512
# exp() of any float32 below this is exactly 0.
_EXP_UNDERFLOW = -200.0


class HeadEntropy(NamedTuple):
    """Result of :func:`lm_head_entropy`.

    ``entropy``: float32 [...], the entropy (nats) at every position, 0 where the mask is False.
    ``objective`` / ``h_next``: float32 [R] when a ``variant`` was given (see
    :func:`~infogain_kernels.lookahead_objective`), else None.
    """

    entropy: torch.Tensor
    objective: Optional[torch.Tensor]
    h_next: Optional[torch.Tensor]


class HeadStats(NamedTuple):
    """Result of :func:`lm_head_entropy` with ``with_top=True``: :class:`HeadEntropy`'s fields, then
    ``top1_prob`` / ``top1_id`` / ``top2_prob``, float32 / int64 / float32 [...] as
    :func:`~infogain_kernels.step_stats` defines them (0 / -1 / 0 where the mask is False)."""

    entropy: torch.Tensor
    objective: Optional[torch.Tensor]
    h_next: Optional[torch.Tensor]
    top1_prob: torch.Tensor
    top1_id: torch.Tensor
    top2_prob: torch.Tensor


# ----------------------------------------------------------------------------- torch path

def _merge_chunks(log_mass: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    """Entropy of distributions cut into disjoint vocabulary chunks.

    ``log_mass [n, C]``: logsumexp of each chunk's logits; ``entropy [n, C]``: the entropy of the
    softmax inside each chunk. With chunk weights ``w_c = exp(log_mass_c - logsumexp_c log_mass_c)``
    the entropy of the whole row is ``sum_c w_c (H_c - log w_c)`` (chunks of weight 0, e.g. all
    -inf, contribute nothing). Rows whose total mass is not finite (NaN, all -inf) come back NaN.
    """
    total = torch.logsumexp(log_mass, dim=-1, keepdim=True)
    log_weight = log_mass - total
    weight = log_weight.exp()
    # An all -inf chunk has weight 0 and NaN entropy (softmax 0/0): keep 0 * NaN out of the sum.
    entropy = torch.where(weight > 0, weight * (entropy - log_weight), 0.0).sum(-1)
    return torch.where(torch.isfinite(total.squeeze(-1)), entropy, math.nan)


def _rows_stats(hidden_rows: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], cols_per_chunk: int,
                with_top: bool) -> Tuple[torch.Tensor, ...]:
    """Float32 entropy of the logits of ``hidden_rows [n, D]``, one vocabulary chunk at a time, and
    with ``with_top`` the top-1 probability, first index of the maximum and top-2 probability."""
    log_mass, entropy, best, best_id, second = [], [], [], [], []
    for start in range(0, weight.shape[0], cols_per_chunk):
        # In hidden's dtype, exactly as the model's own LM head rounds its logits (a fresh tensor).
        logits = F.linear(hidden_rows, weight[start:start + cols_per_chunk]).float()
        if bias is not None:
            logits.add_(bias[start:start + cols_per_chunk])
        if with_top:
            # Chunk maximum (first index) and the chunk's second value (a tied maximum counts twice).
            pair = logits.topk(min(2, logits.shape[-1]), dim=-1).values
            best.append(pair[:, 0])
            best_id.append(logits.argmax(dim=-1) + start)
            second.append(pair[:, 1] if pair.shape[-1] > 1 else torch.full_like(pair[:, 0], float("-inf")))
        # The online form of the kernels, in place on the fresh chunk: with m the row maximum,
        # z = sum exp(x - m), s = sum exp(x - m) (x - m), the chunk's entropy is log z - s / z and
        # its log-mass m + log z. A row of only -inf is shifted by 0 (no -inf - -inf = NaN) and
        # gets z = 0: mass 0, weighted out by _merge_chunks; a NaN logit makes z NaN.
        top = logits.amax(dim=-1, keepdim=True)
        shift = torch.where(top == float("-inf"), 0.0, top)
        shifted = logits.sub_(shift)
        weights = shifted.exp()
        z = weights.sum(-1)
        # Shifts below -200 already have exp() == 0 in float32: clamping them changes no product and
        # keeps 0 * -inf = NaN out of the sum.
        s = torch.linalg.vecdot(weights, shifted.clamp_(min=_EXP_UNDERFLOW))
        log_z = z.log()
        log_mass.append(shift.squeeze(-1) + log_z)
        entropy.append(log_z - s / z)
    log_mass = torch.stack(log_mass, -1)
    entropy = _merge_chunks(log_mass, torch.stack(entropy, -1))
    if not with_top:
        return (entropy,)
    best, best_id = torch.stack(best, -1), torch.stack(best_id, -1)
    # The first chunk holding the maximum gives the id; the second value is the second largest of
    # every chunk's top two.
    top1 = best.amax(-1)
    top1_id = best_id.gather(-1, best.argmax(-1, keepdim=True)).squeeze(-1)
    top2 = torch.cat([best, torch.stack(second, -1)], -1).topk(2, dim=-1).values[:, 1]
    total = torch.logsumexp(log_mass, -1)
    bad = ~torch.isfinite(entropy)
    top1_prob = torch.where(bad, math.nan, (top1 - total).exp())
    top2_prob = torch.where(bad, math.nan, (top2 - total).exp())
    return entropy, top1_prob, torch.where(bad, SKIPPED_ID, top1_id), top2_prob


def _empty_top(like: torch.Tensor, n) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (like.new_zeros(n), like.new_full(n if isinstance(n, tuple) else (n,), SKIPPED_ID, dtype=torch.int64),
            like.new_zeros(n))


def _skipped_outputs(shape, device: torch.device, with_top: bool) -> Tuple[torch.Tensor, ...]:
    """Outputs of ``shape`` (an int: flat) holding the values of skipped (masked-out) positions."""
    entropy = torch.full(shape if isinstance(shape, tuple) else (shape,), SKIPPED_ENTROPY, dtype=torch.float32,
                         device=device)
    return (entropy, *_empty_top(entropy, shape)) if with_top else (entropy,)


def lm_head_entropy_reference(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                              keep: Optional[torch.Tensor], with_top: bool = False):
    """Torch reference (the specification): flat float32 entropy [prod(hidden.shape[:-1])], or with
    ``with_top`` the tuple ``(entropy, top1_prob, top1_id, top2_prob)``, all flat.

    Kept positions are gathered a chunk of rows at a time and multiplied by the weight a chunk of
    the vocabulary at a time (at most :data:`_CHUNK_LOGITS` logits live at once); positions with
    ``keep`` False get entropy 0 (top-1 / top-2 probabilities 0, id -1) and are never multiplied.
    ``bias`` is float32 [V] or None. A NaN / all -inf row of logits gets a non-finite entropy (and
    NaN probabilities, id -1).
    """
    lead_shape = hidden.shape[:-1]
    n_rows = lead_shape.numel()
    n_vocab = weight.shape[0]
    outputs = _skipped_outputs(n_rows, hidden.device, with_top)
    selected = torch.arange(n_rows, device=hidden.device) if keep is None else keep.reshape(-1).nonzero().squeeze(-1)
    if selected.numel() > 0:
        rows_per_chunk = min(selected.numel(), _MAX_CHUNK_ROWS)
        cols_per_chunk = min(n_vocab, max(1, _CHUNK_LOGITS // rows_per_chunk))
        for chunk in selected.split(rows_per_chunk):
            # One index tensor per leading dimension: gathers just these rows, whatever the strides.
            rows = hidden[torch.unravel_index(chunk, lead_shape)] if lead_shape else hidden.unsqueeze(0)
            for output, value in zip(outputs, _rows_stats(rows, weight, bias, cols_per_chunk, with_top)):
                output[chunk] = value
    return outputs if with_top else outputs[0]


def _native_stats(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  keep: Optional[torch.Tensor], with_top: bool) -> Tuple[torch.Tensor, ...]:
    """The native CPU kernel (csrc/lm_head_cpu.cpp) on the kept rows, as outputs of shape
    ``hidden.shape[:-1]`` holding the skipped positions' values elsewhere (always the 4-tuple;
    the top-2 fields are the kernel's empty ones without ``with_top``)."""
    lead_shape = hidden.shape[:-1]
    n_rows = lead_shape.numel()
    flat = hidden.reshape(n_rows, hidden.shape[-1])
    if keep is None:
        stats = torch.ops.infogain._lm_head_stats_cpu(flat, weight, bias, with_top)
        return tuple(value.view(lead_shape) if with_top or i == 0 else value for i, value in enumerate(stats))
    selected = keep.reshape(-1).nonzero().squeeze(-1)
    stats = torch.ops.infogain._lm_head_stats_cpu(flat.index_select(0, selected), weight, bias, with_top)
    # Every output starts as the skipped positions' value and takes the kept rows' in the mask's
    # order (that of ``selected``) by one masked_scatter_, already in the outputs' shape (a sampler
    # calls this at every lookahead step, where the dispatch of each op costs as much as the small
    # kernel's work). Separate tensors: the outputs of a custom op must not alias each other.
    outputs = _skipped_outputs(lead_shape, hidden.device, with_top)
    for output, value in zip(outputs, stats):
        output.masked_scatter_(keep, value)
    return outputs + stats[len(outputs):]


# ----------------------------------------------------------------------------- the op

def _lm_head_entropy_impl(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                          mask: Optional[torch.Tensor], cost: Optional[torch.Tensor], variant: Optional[str],
                          with_top: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                   torch.Tensor, torch.Tensor]:
    lead_shape = hidden.shape[:-1]
    path = op_path(hidden)
    triton_path = path == "triton"
    if path == "native":  # csrc/lm_head_cpu.cpp; its outputs come in lead_shape already
        entropy, *top = _native_stats(hidden, weight, bias, mask, with_top)
    else:
        if triton_path:
            from ._lm_head_triton import launch_lm_head

            stats = launch_lm_head(hidden, weight, bias, mask, with_top=with_top)
        else:
            stats = lm_head_entropy_reference(hidden, weight, bias, mask, with_top)
        if not with_top and isinstance(stats, torch.Tensor):
            stats = (stats, *_empty_top(stats, 0))
        entropy = stats[0].view(lead_shape)
        top = tuple(t.view(lead_shape) if with_top else t for t in stats[1:])  # [0]-shaped without with_top
    empty = entropy.new_empty(0)
    if variant is None:
        return (entropy, empty, empty.clone(), *top)
    # LookUM ignores the cost; the objective kernels take None for "no cost term".
    cost = cost if variant == "info_gain" else None
    n_candidates, n_positions = lead_shape
    if mask is None:
        mask = torch.ones(lead_shape, dtype=torch.bool, device=hidden.device)
    if n_positions == 0:
        h_next = entropy.new_zeros(n_candidates)
        objective = -h_next if cost is None else -cost - h_next
    elif triton_path:
        from ._objective_triton import launch_masked_mean

        with device_guard(hidden):
            objective, h_next = launch_masked_mean(entropy, mask, cost)
    else:
        objective, h_next = objective_reference(entropy, mask, cost)
    return (entropy, objective, h_next, *top)


_lm_head_entropy_op = torch.library.custom_op("infogain::lm_head_entropy", _lm_head_entropy_impl, mutates_args=())


@_lm_head_entropy_op.register_fake
def _lm_head_entropy_fake(hidden, weight, bias, mask, cost, variant, with_top=False):
    entropy = hidden.new_empty(hidden.shape[:-1], dtype=torch.float32)
    n_objective = hidden.shape[0] if variant is not None else 0
    objective = hidden.new_empty((n_objective,), dtype=torch.float32)
    top_shape = hidden.shape[:-1] if with_top else (0,)
    return (entropy, objective, torch.empty_like(objective), hidden.new_empty(top_shape, dtype=torch.float32),
            hidden.new_empty(top_shape, dtype=torch.int64), hidden.new_empty(top_shape, dtype=torch.float32))


def lm_head_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                    mask: Optional[torch.Tensor] = None, *, cost: Optional[torch.Tensor] = None,
                    variant: Optional[str] = None, with_top: bool = False, check_values: bool = True):
    """Entropy of ``softmax(hidden @ weight.T + bias)`` per position, never materialising the logits.

    Args:
        hidden: [..., D] float32, bfloat16 or float16, any strides (e.g. a model's final hidden
            states, aligned so that ``hidden[p] @ weight.T`` are the logits of position p).
        weight: [V, D], the LM head, same dtype and device as ``hidden`` (the CUDA kernel reads rows
            with unit stride along D: a weight without it, e.g. a transposed view, is copied first).
        bias: optional [V] float32, bfloat16 or float16, added in float32 after the logits are
            rounded to ``hidden``'s dtype (see the module docstring). ``-inf`` suppresses a token.
        mask: optional bool, shape ``hidden.shape[:-1]``. Positions where it is False are not
            multiplied at all and get entropy 0.
        variant: None (entropy only), or ``"info_gain"`` / ``"lookum"``: then ``hidden`` is
            [R, L, D], ``mask`` [R, L] marks the positions still masked after candidate r (all when
            None), and the result also holds ``h_next[r]`` (mean entropy over those positions, 0
            when none) and ``objective[r] = -cost[r] - h_next[r]`` (Info-Gain) or ``-h_next[r]``
            (LookUM), exactly as :func:`~infogain_kernels.lookahead_objective` computes them from
            the logits.
        cost: [R] floating (converted to float32), the candidates' cost C. Required for
            ``variant="info_gain"``, ignored by ``"lookum"`` (still validated when given).
        with_top: also return the top-1 probability, top-1 id and top-2 probability of every kept
            position, as :func:`~infogain_kernels.step_stats` defines them on the same logits (a
            sampler at T = 0 then needs no second pass over the winner's logits). Costs a few
            comparisons per logit, no extra read.
        check_values: when True (default), raise for a kept position whose logits contain NaN or
            are all -inf (e.g. NaN hidden states), and for a non-finite cost. That check costs one
            host synchronisation; pass False to fold it into your own read-back: such positions
            then have a non-finite entropy (and their candidate a non-finite ``h_next`` /
            ``objective``).

    Returns:
        :class:`HeadEntropy` ``(entropy, objective, h_next)``, or with ``with_top`` :class:`HeadStats`
        (the same, then the top fields): float32 ``entropy`` of shape
        ``hidden.shape[:-1]`` (0 where ``mask`` is False); ``objective`` and ``h_next`` float32 [R]
        with a ``variant``, else None; with ``with_top``, ``top1_prob`` / ``top1_id`` / ``top2_prob``
        of shape ``hidden.shape[:-1]`` (0 / -1 / 0 where ``mask`` is False), else None. All
        arithmetic is float32 whatever the input dtype. No tensor with a vocabulary-sized axis per
        position is allocated.

    Raises:
        TypeError / ValueError naming the argument for bad dtypes, ranks, shapes, devices, an
        unknown variant or a missing cost; with ``check_values=True``, ValueError for NaN / all
        -inf logits at a kept position or a non-finite cost (skipped under ``torch.compile`` and
        other tracers and while a CUDA graph is being captured; ``torch.ops.infogain.lm_head_entropy``
        never checks).

    CUDA tensors run the Triton kernel, CPU tensors the native kernel (chunked matmuls, each chunk's
    statistics in one pass) or, without the extension, the torch reference; ``INFOGAIN_BACKEND`` /
    ``use_backend`` force one.
    """
    check_tensor("hidden", hidden, dtypes=FLOAT_DTYPES, min_dim=1)
    if hidden.shape[-1] < 1:
        raise ValueError(f"hidden must have a non-empty last dimension (D), got shape {tuple(hidden.shape)}")
    check_tensor("weight", weight, dtypes=FLOAT_DTYPES, ndim=2)
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight must have hidden's dtype {str(hidden.dtype).replace('torch.', '')}, "
                        f"got {str(weight.dtype).replace('torch.', '')}")
    if weight.shape[0] < 1 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must have shape (V >= 1, D={hidden.shape[-1]}), got {tuple(weight.shape)}")
    if bias is not None:
        check_tensor("bias", bias, dtypes=FLOAT_DTYPES, ndim=1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    check_mask("mask", mask, hidden.shape[:-1])
    if variant is not None:
        check_variant(variant, optional=True)
        if hidden.dim() != 3:
            raise ValueError(f"hidden must have 3 dimensions [R, L, D] with a variant, got shape {tuple(hidden.shape)}")
    elif cost is not None:
        raise ValueError("cost is only used with a variant; pass variant='info_gain'")
    check_cost(cost, variant, hidden.shape[0])
    check_same_device(hidden=hidden, weight=weight, bias=bias, mask=mask, cost=cost)
    check_values = check_bool("check_values", check_values)
    with_top = check_bool("with_top", with_top)
    if bias is not None:
        bias = bias.to(torch.float32)
    if cost is not None:
        cost = cost.to(torch.float32)
    result = lm_head_entropy_unchecked(hidden, weight, bias, mask, cost=cost, variant=variant, with_top=with_top)
    if check_values and value_checks_enabled(result.entropy):
        _raise_on_bad_values(hidden, weight, bias, result.entropy, cost)
    return result


def lm_head_entropy_unchecked(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                              mask: Optional[torch.Tensor], *, cost: Optional[torch.Tensor], variant: Optional[str],
                              with_top: bool):
    """:func:`lm_head_entropy` with ``check_values=False`` and no argument checks, for a caller
    that calls it many times with arguments it checked once (the sampler's lookahead, once per
    step: there the checks cost several times the work of a small head). ``bias`` and ``cost``
    must already be float32 (or None); anything :func:`lm_head_entropy` would reject is undefined."""
    entropy, objective, h_next, *top = call_op(torch.ops.infogain.lm_head_entropy, _lm_head_entropy_impl,
                                               hidden, weight, bias, mask, cost, variant, with_top)
    if variant is None:
        objective = h_next = None
    if with_top:
        return HeadStats(entropy, objective, h_next, *top)
    return HeadEntropy(entropy, objective, h_next)


def _raise_on_bad_values(hidden, weight, bias, entropy, cost) -> None:
    """The check of ``check_values``: one host synchronisation on the [...] entropy (and [R] cost)."""
    flat = entropy.reshape(-1)
    bad = ~torch.isfinite(flat)
    if cost is not None:
        if not bool(bad.any() | ~torch.isfinite(cost).all()):
            return
    elif not bool(bad.any()):
        return
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        lead_shape = hidden.shape[:-1]
        position = tuple(int(i) for i in torch.unravel_index(torch.tensor(first), lead_shape)) if lead_shape else ()
        # Error path only: materialise the one bad row to say what is wrong with it.
        row = F.linear(hidden[position], weight).float()
        if bias is not None:
            row = row + bias
        raise_on_bad_rows("the logits hidden @ weight.T + bias", row, flat[first:first + 1], prefix=position)
    r = int((~torch.isfinite(cost)).nonzero()[0, 0])
    raise ValueError(f"cost must be finite, got {float(cost[r])} at index {r}")
