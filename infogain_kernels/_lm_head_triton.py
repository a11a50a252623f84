"""Triton half of :func:`~infogain_kernels.lm_head_entropy`: a kernel that tiles kept positions x
vocabulary with ``tl.dot`` and keeps the online maximum / sum statistics (and optionally the top-2)
per position across vocabulary tiles, with the vocabulary split across programs when there are few
positions, and a combine kernel that merges the splits and scatters the results back to the
positions' order. Imported only where Triton runs.
"""
from __future__ import annotations

import itertools
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._backend import cuda_sm_count, device_guard

# exp() of any float32 below this is exactly 0 (the reference clamps at the same bound).
_EXP_UNDERFLOW_TL = tl.constexpr(-200.0)

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


def launch_lm_head(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   keep: Optional[torch.Tensor], *, with_top: bool = False, config: Optional[dict] = None,
                   splits: Optional[int] = None):
    """Triton path: flat float32 entropy [rows], or with ``with_top`` the tuple ``(entropy,
    top1_prob, top1_id, top2_prob)`` (flat, as :func:`.lm_head_entropy.lm_head_entropy_reference`).
    ``config`` / ``splits`` override the tiles and the vocabulary split (tests use them to exercise
    many tiles on small shapes)."""
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
