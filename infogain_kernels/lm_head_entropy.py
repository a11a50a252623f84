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
reference below is the specification and the fallback); CUDA tensors run a Triton kernel
that tiles kept positions x vocabulary with ``tl.dot`` and keeps the online maximum / sum statistics
per position across vocabulary tiles, with the vocabulary split across programs (and a combine
kernel) when there are few positions.
"""
from __future__ import annotations

import itertools
import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from ._backend import call_op, cuda_sm_count, device_guard, use_native, use_triton, value_checks_enabled
from ._random import triton
from ._validation import FLOAT_DTYPES, check_bool, check_mask, check_same_device, check_tensor
from .lookahead_objective import VARIANTS, objective_reference
from .step_stats import SKIPPED_ENTROPY, SKIPPED_ID, raise_on_bad_rows

try:
    from . import _C  # noqa: F401  (loading the extension registers its ops, if any)
except ImportError:  # pragma: no cover - only when the extension was not built
    pass

_COST_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

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


def _empty_top(like: torch.Tensor, n: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (like.new_zeros(n), like.new_full((n,), SKIPPED_ID, dtype=torch.int64), like.new_zeros(n))


def _skipped_outputs(n_rows: int, device: torch.device, with_top: bool) -> Tuple[torch.Tensor, ...]:
    """Flat outputs of ``n_rows`` positions holding the values of skipped (masked-out) positions."""
    entropy = torch.full((n_rows,), SKIPPED_ENTROPY, dtype=torch.float32, device=device)
    return (entropy, *_empty_top(entropy, n_rows)) if with_top else (entropy,)


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
    """The native CPU kernel (csrc/lm_head_cpu.cpp) on the kept rows, scattered to the flat layout
    of :func:`lm_head_entropy_reference` (always the 4-tuple; the top-2 fields empty without ``with_top``)."""
    lead_shape = hidden.shape[:-1]
    n_rows = lead_shape.numel()
    flat = hidden.reshape(n_rows, hidden.shape[-1])
    if keep is None:
        return torch.ops.infogain._lm_head_stats_cpu(flat, weight, bias, with_top)
    selected = keep.reshape(-1).nonzero().squeeze(-1)
    stats = torch.ops.infogain._lm_head_stats_cpu(flat[selected], weight, bias, with_top)
    outputs = _skipped_outputs(n_rows, hidden.device, with_top)
    for output, value in zip(outputs, stats):
        output[selected] = value
    return outputs + stats[len(outputs):]


# ----------------------------------------------------------------------------- the op

def _lm_head_entropy_impl(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                          mask: Optional[torch.Tensor], cost: Optional[torch.Tensor], variant: Optional[str],
                          with_top: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                   torch.Tensor, torch.Tensor]:
    lead_shape = hidden.shape[:-1]
    triton_path = use_triton(hidden)
    if triton_path:
        stats = _launch(hidden, weight, bias, mask, with_top=with_top)
    elif use_native(hidden):  # csrc/lm_head_cpu.cpp
        stats = _native_stats(hidden, weight, bias, mask, with_top)
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
        from ._entropy_triton import launch_masked_mean

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
        if not isinstance(variant, str):
            raise TypeError(f"variant must be a str or None, got {type(variant).__name__}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be None or one of {VARIANTS}, got {variant!r}")
        if hidden.dim() != 3:
            raise ValueError(f"hidden must have 3 dimensions [R, L, D] with a variant, got shape {tuple(hidden.shape)}")
        if cost is None and variant == "info_gain":
            raise ValueError("cost is required for variant='info_gain' (J = -cost - h_next)")
    elif cost is not None:
        raise ValueError("cost is only used with a variant; pass variant='info_gain'")
    if cost is not None:
        check_tensor("cost", cost, dtypes=_COST_DTYPES, ndim=1)
        if cost.shape[0] != hidden.shape[0]:
            raise ValueError(f"cost must have shape ({hidden.shape[0]},), got {tuple(cost.shape)}")
    check_same_device(hidden=hidden, weight=weight, bias=bias, mask=mask, cost=cost)
    check_values = check_bool("check_values", check_values)
    with_top = check_bool("with_top", with_top)
    if bias is not None:
        bias = bias.to(torch.float32)
    if cost is not None:
        cost = cost.to(torch.float32)
    entropy, objective, h_next, *top = call_op(torch.ops.infogain.lm_head_entropy, _lm_head_entropy_impl,
                                               hidden, weight, bias, mask, cost, variant, with_top)
    if check_values and value_checks_enabled(entropy):
        _raise_on_bad_values(hidden, weight, bias, entropy, cost)
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


# ----------------------------------------------------------------------------- Triton path

# From this many positions on, 128-row tiles (see tile_config).
_WIDE_TILE_ROWS = 1024


def tile_config(dtype: torch.dtype, n_rows: int, with_top: bool = False) -> dict:
    """Tile shape and launch parameters of the main kernel for ``n_rows`` positions of ``dtype``.

    Every 16-bit tile keeps 32 float32 accumulators per thread, which leaves room for the
    online-statistics epilogue and a 4-stage pipeline of 32-wide K tiles within 128 registers on
    sm_90 and sm_80 (64-wide K tiles, or 64 accumulators per thread, need 170 and more). Many
    positions get 128 x 128 tiles over 16 warps: twice the tensor-core work per operand byte
    of the 64 x 128 tiles over 8 warps that few positions (less padding in the last row tile) get.
    float32 uses exact (IEEE) products, which keep their operands in registers: 64 x 64 tiles.
    The top-2 epilogue (``with_top``) keeps a second copy of the tile live (its comparison with the
    tile maximum): twice the warps per 16-bit tile, and half as wide float32 tiles, i.e. half the
    accumulators per thread, keep it within the same budget (checked by the compile lane).
    """
    if dtype == torch.float32:
        config = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 8, "num_stages": 2}
    elif n_rows >= _WIDE_TILE_ROWS and not with_top:
        config = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "num_warps": 16, "num_stages": 4}
    else:
        config = {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32, "num_warps": 8, "num_stages": 4}
    if with_top and dtype == torch.float32:
        config["BLOCK_N"] //= 2
    elif with_top:
        config["num_warps"] *= 2
    return config


def split_count(n_rows: int, n_vocab: int, block_m: int, block_n: int, n_programs_target: int) -> Tuple[int, int]:
    """``(splits, columns per split)``: how many programs share one row tile's vocabulary.

    Enough splits that row tiles x splits reaches ``n_programs_target`` (about two programs per
    SM), each split covering a whole number of vocabulary tiles, and no split empty.
    """
    row_tiles = max(1, -(-n_rows // block_m))
    vocab_tiles = max(1, -(-n_vocab // block_n))
    splits = max(1, min(vocab_tiles, -(-n_programs_target // row_tiles)))
    cols_per_split = -(-vocab_tiles // splits) * block_n
    return -(-n_vocab // cols_per_split), cols_per_split


# The combine kernel merges this many positions per program (a few float32 loads per split each).
_COMBINE_BLOCK = 128
_COMBINE_WARPS = 4


def _vector_width(hidden: torch.Tensor, weight: torch.Tensor) -> int:
    """Elements per 16 bytes when every row of ``hidden`` and ``weight`` starts 16-byte aligned, else 1
    (decided from the strides and base addresses on the host, no read-back)."""
    vec = 16 // hidden.element_size()
    strides = [s for size, s in zip(hidden.shape[:-1], hidden.stride()[:-1]) if size > 1] + [weight.stride(0)]
    aligned = all(s % vec == 0 for s in strides) and hidden.data_ptr() % 16 == 0 and weight.data_ptr() % 16 == 0
    return vec if aligned else 1


def _programs_target(device: torch.device) -> int:
    if device.type == "cuda":
        return 2 * cuda_sm_count(device)
    return 264  # an H100's 132 SMs: the interpreter then exercises the same split logic


def _row_layout(hidden: torch.Tensor) -> Tuple[Optional[torch.Tensor], int]:
    """How the kernel finds row r of ``hidden`` viewed as [rows, D] without copying it:
    ``(None, row_stride)`` when the leading dimensions collapse into one stride, else
    ``(row_offsets, 0)`` with each row's start (in elements) computed from the strides."""
    lead_shape = hidden.shape[:-1]
    if len(lead_shape) == 0:
        return None, 0
    try:
        return None, hidden.view(-1, hidden.shape[-1]).stride(0)
    except RuntimeError:
        pass
    offsets = torch.zeros((), dtype=torch.int64, device=hidden.device)
    for size, stride in zip(lead_shape, hidden.stride()[:-1]):
        offsets = offsets.unsqueeze(-1) + torch.arange(size, device=hidden.device, dtype=torch.int64) * stride
    return offsets.reshape(-1), 0


def _launch(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], keep: Optional[torch.Tensor],
            *, with_top: bool = False, config: Optional[dict] = None, splits: Optional[int] = None):
    """Triton path: flat float32 entropy [rows], or with ``with_top`` the tuple ``(entropy,
    top1_prob, top1_id, top2_prob)`` (flat, as :func:`lm_head_entropy_reference`). ``config`` /
    ``splits`` override the tiles and the vocabulary split (tests use them to exercise many tiles on
    small shapes)."""
    n_vocab, dim = weight.shape
    n_rows = hidden.shape[:-1].numel()
    device = hidden.device
    entropy = torch.empty(n_rows, dtype=torch.float32, device=device)
    top = (torch.empty_like(entropy), torch.empty(n_rows, dtype=torch.int64, device=device),
           torch.empty_like(entropy)) if with_top else (entropy, entropy, entropy)  # unused without with_top
    if n_rows == 0:
        return (entropy, *top) if with_top else entropy
    config = dict(config or tile_config(hidden.dtype, n_rows, with_top))
    block_m, block_n = config["BLOCK_M"], config["BLOCK_N"]
    if splits is None:
        n_splits, cols_per_split = split_count(n_rows, n_vocab, block_m, block_n, _programs_target(device))
    else:
        cols_per_split = -(-max(1, -(-n_vocab // splits)) // block_n) * block_n
        n_splits = -(-n_vocab // cols_per_split)
    # Unit strides along D (vector loads); a model's hidden states and LM head already have them.
    hidden = hidden if hidden.stride(-1) == 1 or dim == 1 else hidden.contiguous()
    weight = weight if weight.stride(1) == 1 or dim == 1 else weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    row_offsets, stride_row = _row_layout(hidden)
    if row_offsets is None:
        row_offsets = torch.arange(n_rows, device=device, dtype=torch.int64) * stride_row
    # Kept positions first (in order), then the others: the tiles past the kept count do no work, and
    # no host read-back is needed to size anything.
    if keep is None:
        order = torch.arange(n_rows, device=device)
        n_kept = torch.full((1,), n_rows, dtype=torch.int32, device=device)
    else:
        keep_flat = keep.reshape(-1)
        kept_rank = keep_flat.cumsum(0) - 1
        n_kept = kept_rank[-1:].to(torch.int32) + 1
        slot = torch.where(keep_flat, kept_rank, n_kept.to(torch.int64) + (~keep_flat).cumsum(0) - 1)
        order = torch.empty_like(slot).scatter_(0, slot, torch.arange(n_rows, device=device))
    sorted_offsets = row_offsets[order]
    # Per split and slot: m, z, s, and with the top-2 the maximum, its index (exact in float32 below
    # 2**24 entries) and the second value.
    partials = torch.empty(6 if with_top else 3, n_splits, n_rows, dtype=torch.float32, device=device)
    row_tiles = -(-n_rows // block_m)
    with device_guard(hidden):
        _lm_head_partial_kernel[(row_tiles, n_splits)](
            hidden, weight, bias if bias is not None else entropy, sorted_offsets, n_kept, partials,
            n_rows, n_vocab, dim, cols_per_split, weight.stride(0),
            HAS_BIAS=bias is not None, IEEE=hidden.dtype == torch.float32, EVEN_K=dim % config["BLOCK_K"] == 0,
            VEC=_vector_width(hidden, weight), WITH_TOP=with_top,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=config["BLOCK_K"],
            num_warps=config["num_warps"], num_stages=config["num_stages"],
        )
        _lm_head_combine_kernel[(-(-n_rows // _COMBINE_BLOCK),)](
            partials, order, n_kept, entropy, *top, n_rows, n_splits, WITH_TOP=with_top, BLOCK=_COMBINE_BLOCK,
            num_warps=_COMBINE_WARPS,
        )
    return (entropy, *top) if with_top else entropy


if triton is not None:
    import triton.language as tl

    _EXP_UNDERFLOW_TL = tl.constexpr(_EXP_UNDERFLOW)

    @triton.jit
    def _lm_head_partial_kernel(
        hidden_ptr, weight_ptr, bias_ptr, row_offsets_ptr, n_kept_ptr, partials_ptr,
        n_rows, n_vocab, dim, cols_per_split, stride_wv,
        HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, EVEN_K: tl.constexpr, VEC: tl.constexpr,
        WITH_TOP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        # Program (row tile, vocabulary split): the online statistics (max m, z = sum e^(x-m),
        # s = sum e^(x-m) (x-m)) of BLOCK_M kept positions over one slice of the vocabulary.
        pid_m = tl.program_id(0)
        pid_s = tl.program_id(1)
        n_kept = tl.load(n_kept_ptr)
        slots = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        live = slots < n_kept
        # Rows are contiguous along D (the launcher makes sure); VEC elements = 16 bytes when every row
        # start is 16-byte aligned, so the tiles load with vector (and asynchronous) copies.
        row_base = tl.multiple_of(tl.load(row_offsets_ptr + slots, mask=live, other=0), VEC)
        stride_wv = tl.multiple_of(stride_wv, VEC)
        col_begin = pid_s * cols_per_split
        col_end = tl.minimum(col_begin + cols_per_split, n_vocab)
        # A tile past the kept positions runs an empty loop: it loads no weight at all.
        col_stop = tl.where(pid_m * BLOCK_M < n_kept, col_end, col_begin)
        k_lanes = tl.arange(0, BLOCK_K)
        m = tl.full([BLOCK_M], -float("inf"), tl.float32)
        z = tl.zeros([BLOCK_M], tl.float32)
        s = tl.zeros([BLOCK_M], tl.float32)
        best = tl.full([BLOCK_M], -float("inf"), tl.float32)
        best_id = tl.full([BLOCK_M], -1, tl.int32)
        second = tl.full([BLOCK_M], -float("inf"), tl.float32)
        for col_start in range(col_begin, col_stop, BLOCK_N):
            cols = col_start + tl.arange(0, BLOCK_N)
            in_vocab = cols < col_end
            acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            for k_start in range(0, dim, BLOCK_K):
                ks = k_start + k_lanes
                a_ptrs = hidden_ptr + row_base[:, None] + ks[None, :]
                b_ptrs = weight_ptr + cols[None, :].to(tl.int64) * stride_wv + ks[:, None]
                if EVEN_K:
                    a = tl.load(a_ptrs, mask=live[:, None], other=0.0)
                    b = tl.load(b_ptrs, mask=in_vocab[None, :], other=0.0)
                else:
                    in_dim = ks < dim
                    a = tl.load(a_ptrs, mask=live[:, None] & in_dim[None, :], other=0.0)
                    b = tl.load(b_ptrs, mask=in_vocab[None, :] & in_dim[:, None], other=0.0)
                if IEEE:
                    acc = tl.dot(a, b, acc, input_precision="ieee")
                else:
                    acc = tl.dot(a, b, acc)
            # The logits as the model's own matmul returns them: rounded to the hidden dtype.
            x = acc.to(hidden_ptr.dtype.element_ty).to(tl.float32)
            if HAS_BIAS:
                x += tl.load(bias_ptr + cols, mask=in_vocab, other=0.0)[None, :]
            x = tl.where(in_vocab[None, :], x, -float("inf"))
            tile_max = tl.max(x, axis=1)
            if WITH_TOP:
                # The tile's first maximum and its second value (a tied maximum counts twice); a later
                # tile takes over only with a strictly greater maximum.
                tile_id = tl.min(tl.where(x == tile_max[:, None], cols[None, :], n_vocab), axis=1)
                tile_second = tl.max(tl.where(cols[None, :] == tile_id[:, None], -float("inf"), x), axis=1)
                better = tile_max > best
                second = tl.where(better, tl.maximum(best, tile_second), tl.maximum(second, tile_max))
                best_id = tl.where(better, tile_id, best_id)
                best = tl.where(better, tile_max, best)
            m_new = tl.maximum(m, tile_max)
            # While every value seen is -inf, shift by 0 so that no -inf - -inf = NaN appears.
            m_ref = tl.where(m_new == -float("inf"), 0.0, m_new)
            shifted = x - m_ref[:, None]
            e = tl.exp(shifted)
            alpha = tl.exp(m - m_ref)
            # Clamping the shifts at the underflow bound changes no product (exp() is already 0
            # there) and keeps 0 * -inf = NaN out; a NaN logit still reaches z through e.
            s = alpha * (s + tl.maximum(m - m_ref, _EXP_UNDERFLOW_TL) * z) \
                + tl.sum(e * tl.maximum(shifted, _EXP_UNDERFLOW_TL), axis=1)
            z = z * alpha + tl.sum(e, axis=1)
            m = m_new
        out = partials_ptr + pid_s * n_rows + slots
        split_stride = tl.num_programs(1) * n_rows
        tl.store(out, m, mask=live)
        tl.store(out + split_stride, z, mask=live)
        tl.store(out + 2 * split_stride, s, mask=live)
        if WITH_TOP:
            tl.store(out + 3 * split_stride, best, mask=live)
            tl.store(out + 4 * split_stride, best_id.to(tl.float32), mask=live)
            tl.store(out + 5 * split_stride, second, mask=live)

    @triton.jit
    def _lm_head_combine_kernel(partials_ptr, order_ptr, n_kept_ptr, entropy_ptr, top1_prob_ptr, top1_id_ptr,
                                top2_prob_ptr, n_rows, n_splits, WITH_TOP: tl.constexpr, BLOCK: tl.constexpr):
        # Merge the splits' statistics of BLOCK slots and scatter the entropies back to the
        # positions' own order (slots past the kept count are the masked-out positions: 0).
        slots = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        in_range = slots < n_rows
        kept = slots < tl.load(n_kept_ptr)
        split_stride = n_splits * n_rows
        m = tl.full([BLOCK], -float("inf"), tl.float32)
        for split in range(0, n_splits):
            m = tl.maximum(m, tl.load(partials_ptr + split * n_rows + slots, mask=kept, other=-float("inf")))
        m_ref = tl.where(m == -float("inf"), 0.0, m)
        z = tl.zeros([BLOCK], tl.float32)
        s = tl.zeros([BLOCK], tl.float32)
        for split in range(0, n_splits):
            at = partials_ptr + split * n_rows + slots
            m_split = tl.load(at, mask=kept, other=-float("inf"))
            z_split = tl.load(at + split_stride, mask=kept, other=0.0)
            s_split = tl.load(at + 2 * split_stride, mask=kept, other=0.0)
            scale = tl.exp(m_split - m_ref)
            s += scale * (s_split + tl.maximum(m_split - m_ref, _EXP_UNDERFLOW_TL) * z_split)
            z += scale * z_split
        # z == 0: every logit was -inf (flagged +inf); a NaN z (NaN logit) flows into the entropy.
        z_safe = tl.where(z == 0.0, 1.0, z)
        entropy = tl.where(z == 0.0, float("inf"), tl.log(z_safe) - s / z_safe)
        entropy = tl.where(kept, entropy, 0.0)
        rows = tl.load(order_ptr + slots, mask=in_range, other=0)
        tl.store(entropy_ptr + rows, entropy, mask=in_range)
        if WITH_TOP:
            # The splits in vocabulary order: a later one takes over only with a strictly greater maximum.
            best = tl.full([BLOCK], -float("inf"), tl.float32)
            best_id = tl.full([BLOCK], -1.0, tl.float32)
            second = tl.full([BLOCK], -float("inf"), tl.float32)
            for split in range(0, n_splits):
                at = partials_ptr + split * n_rows + slots
                split_best = tl.load(at + 3 * split_stride, mask=kept, other=-float("inf"))
                split_id = tl.load(at + 4 * split_stride, mask=kept, other=-1.0)
                split_second = tl.load(at + 5 * split_stride, mask=kept, other=-float("inf"))
                better = split_best > best
                second = tl.where(better, tl.maximum(best, split_second), tl.maximum(second, split_best))
                best_id = tl.where(better, split_id, best_id)
                best = tl.where(better, split_best, best)
            finite = (entropy == entropy) & (tl.abs(entropy) < float("inf"))
            top1_prob = tl.where(finite, tl.exp(best - m_ref) / z_safe, float("nan"))
            top2_prob = tl.where(finite, tl.exp(second - m_ref) / z_safe, float("nan"))
            top1_id = tl.where(finite, best_id, -1.0).to(tl.int64)
            tl.store(top1_prob_ptr + rows, tl.where(kept, top1_prob, 0.0), mask=in_range)
            tl.store(top1_id_ptr + rows, tl.where(kept, top1_id, -1), mask=in_range)
            tl.store(top2_prob_ptr + rows, tl.where(kept, top2_prob, 0.0), mask=in_range)


# ----------------------------------------------------------------------------- ahead-of-time configs

# LM heads of the supported models: (name, V, D).
_AOT_HEADS = (("LLaDA", 126464, 4096), ("Dream", 152064, 3584), ("SDAR", 151936, 4096))
_AOT_ROWS = (256, 2048)


def aot_configs() -> list:
    """The kernels' compile configurations at the supported models' head shapes (see ``_aot``).

    Produced by the launcher's own :func:`tile_config` for each dtype and for few / many positions,
    with and without the top-2 statistics (``with_top``).
    """
    if triton is None:
        return []
    configs = []
    seen = set()
    for dtype, type_name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (torch.float32, "fp32")):
        for model, n_vocab, dim in _AOT_HEADS:
            for n_rows, with_top in itertools.product(_AOT_ROWS, (False, True)):
                config = tile_config(dtype, n_rows, with_top)
                key = (type_name, tuple(sorted(config.items())), dim % config["BLOCK_K"] == 0, with_top)
                if key in seen:
                    continue
                seen.add(key)
                # ":16": 16-byte aligned / multiple of 16, as Triton's launcher specialises these arguments.
                pointer = "*" + type_name + ":16"
                top = " with_top" if with_top else ""
                configs.append({
                    "name": f"lm_head_entropy partial {type_name} {model} V={n_vocab} D={dim} rows={n_rows}{top}",
                    "kernel": _lm_head_partial_kernel,
                    "signature": {
                        "hidden_ptr": pointer, "weight_ptr": pointer, "bias_ptr": "*fp32:16",
                        "row_offsets_ptr": "*i64:16", "n_kept_ptr": "*i32:16", "partials_ptr": "*fp32:16",
                        "n_rows": "i32", "n_vocab": "i32:16", "dim": "i32:16", "cols_per_split": "i32:16",
                        "stride_wv": "i64:16", "HAS_BIAS": "constexpr",
                        "IEEE": "constexpr", "EVEN_K": "constexpr", "VEC": "constexpr", "WITH_TOP": "constexpr",
                        "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr"},
                    "constexprs": {"HAS_BIAS": True, "IEEE": dtype == torch.float32,
                                   "EVEN_K": dim % config["BLOCK_K"] == 0, "VEC": 16 // dtype.itemsize,
                                   "WITH_TOP": with_top,
                                   "BLOCK_M": config["BLOCK_M"], "BLOCK_N": config["BLOCK_N"],
                                   "BLOCK_K": config["BLOCK_K"]},
                    "num_warps": config["num_warps"],
                    "num_stages": config["num_stages"],
                    # The main (innermost) loop is the K loop: each iteration reads a hidden tile
                    # and a weight tile.
                    "elements_per_iteration": (config["BLOCK_M"] + config["BLOCK_N"]) * config["BLOCK_K"],
                })
    for with_top in (False, True):
        configs.append({
            "name": "lm_head_entropy combine" + (" with_top" if with_top else ""),
            "kernel": _lm_head_combine_kernel,
            "signature": {"partials_ptr": "*fp32:16", "order_ptr": "*i64:16", "n_kept_ptr": "*i32:16",
                          "entropy_ptr": "*fp32:16", "top1_prob_ptr": "*fp32:16",
                          "top1_id_ptr": "*i64:16" if with_top else "*fp32:16", "top2_prob_ptr": "*fp32:16",
                          "n_rows": "i32", "n_splits": "i32", "WITH_TOP": "constexpr", "BLOCK": "constexpr"},
            "constexprs": {"WITH_TOP": with_top, "BLOCK": _COMBINE_BLOCK},
            "num_warps": _COMBINE_WARPS,
            "num_stages": 1,
        })
    return configs
