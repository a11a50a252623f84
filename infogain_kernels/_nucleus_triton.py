"""Triton half of the nucleus engine (:mod:`._nucleus`): the launch of :func:`nucleus_triton` and its
split-vocabulary kernels, one pass for the log-sum-exp and top-k, one per radix digit of the
threshold search, one for a draw. Design and read counts: docs/kernels.md, "Nucleus engine".
Imported only where Triton runs.

(About 530 lines, one job: the three kernels are passes of one algorithm that share the per-row
state layout, the device helpers and the launch geometry defined here, and the compile lane needs
their configurations in the module that defines them.)
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ._backend import cuda_sm_count, next_power_of_2
from ._nucleus_format import (CANDIDATE_FILTER_MIN_TAIL, COUNT_SHIFT, KEY_NONE, MASS_ONE, NUCLEUS_PROBE_K,
                              ORDERED_NEG_INF, RADIX_BINS, RADIX_DIGITS, mass_threshold)

# ----------------------------------------------------------------------------- launch

# Programs per row pass: about one per SM in total (each holds its partial state in registers).
_BLOCK_V = 1024
_MIN_BLOCKS_PER_SPLIT = 4
_NUM_WARPS = 4
# Splits the interpreter uses for the SM count (CPU tensors).
_INTERPRETER_SM_COUNT = 4
# Test knob: force this many splits per row (None: chosen from the shape and the SM count).
_FORCE_SPLITS: Optional[int] = None
_LOG2E = 1.4426950408889634


def _launch_config(num_rows: int, vocab: int, sm_count: int, splits: Optional[int] = None):
    """``(splits, chunk, block_v)``: each row is cut into ``splits`` chunks of ``chunk`` columns
    (a multiple of ``block_v``, the columns one loop iteration covers), one program each."""
    if splits is None:
        splits = max(1, min(-(-sm_count // num_rows), -(-vocab // (_BLOCK_V * _MIN_BLOCKS_PER_SPLIT))))
    per_split = -(-vocab // max(1, splits))
    block_v = min(_BLOCK_V, max(16, next_power_of_2(per_split)))
    chunk = -(-per_split // block_v) * block_v
    return -(-vocab // chunk), chunk, block_v


def _vector_width(logits: torch.Tensor, chunk: int) -> int:
    """Elements per 16-byte load when the host can prove every chunk start is 16-byte aligned, else 1."""
    width = 16 // logits.element_size()
    rows, vocab = logits.shape
    aligned = (logits.stride(1) == 1 and logits.data_ptr() % 16 == 0 and vocab % width == 0
               and chunk % width == 0 and (rows == 1 or (logits.stride(0) * logits.element_size()) % 16 == 0))
    return width if aligned else 1


def _key_constants(dtype: torch.dtype, scale: float) -> dict:
    """How the kernels rank tokens, by logits dtype.

    The rank of a token is its ``s = x / T``. For 16-bit logits ``x -> x / T`` is strictly increasing
    (their 8 / 11-bit significands are far coarser than float32's), so ranking by ``x`` gives the same
    order and the same ties, without a division per element; and the float32 image of a 16-bit value
    has its low 16 (bf16) / 13 (fp16) bits zero, so the radix search needs only 2 / 3 digits.
    Float32 logits rank by ``s`` itself, correctly rounded (4 digits).
    """
    digits = {torch.bfloat16: 2, torch.float16: 3}.get(dtype, RADIX_DIGITS)
    return dict(KEY_SCALED=dtype == torch.float32 and scale != 1.0, DIGITS=digits)


def _scatter_layout(constants: dict) -> dict:
    """Constants of the radix pass: scalar loads. Its histogram scatter needs one element per thread;
    with 16-byte loads Triton would redo the element math in a second layout (twice the work)."""
    return dict(constants, VEC=1)


def nucleus_triton(logits, k, temperature, top_p, seed):
    num_rows, vocab = logits.shape
    device = logits.device
    sm_count = cuda_sm_count(device) if device.type == "cuda" else _INTERPRETER_SM_COUNT
    splits, chunk, block_v = _launch_config(num_rows, vocab, sm_count, _FORCE_SPLITS)
    kp = max(2, next_power_of_2(k))
    scale = temperature if temperature > 0 else 1.0
    keys = _key_constants(logits.dtype, scale)
    digits = keys["DIGITS"] if top_p < 1.0 else 0
    sample = seed is not None

    ids = torch.empty((num_rows, k), dtype=torch.int64, device=device)
    logprobs = torch.empty((num_rows, k), dtype=torch.float32, device=device)
    token = torch.empty(num_rows, dtype=torch.int64, device=device)
    token_logprob = torch.empty(num_rows, dtype=torch.float32, device=device)
    lse = torch.empty(num_rows, dtype=torch.float32, device=device)
    # Per-split partial states (the draw reuses part_keys for its split masses), then per-row state.
    part_max = torch.empty((num_rows, splits), dtype=torch.float32, device=device)
    part_sum = torch.empty((num_rows, splits), dtype=torch.float32, device=device)
    part_keys = torch.empty((num_rows, splits, kp), dtype=torch.int64, device=device)
    row_state = torch.empty((5, num_rows), dtype=torch.int64, device=device)
    # One memset: an arrival counter per (pass, row) and the radix histograms.
    passes = 1 + digits + (1 if sample else 0)
    hist_size = digits * num_rows * splits * RADIX_BINS
    zeroed = torch.zeros(passes * num_rows + hist_size, dtype=torch.int64, device=device)
    counters, hist = zeroed[:passes * num_rows], zeroed[passes * num_rows:]

    limit = mass_threshold(top_p)
    tail = 1.0 - top_p
    log_tail = math.log(tail / vocab) - 1.0 if tail >= CANDIDATE_FILTER_MIN_TAIL else -math.inf
    common = dict(BLOCK_V=block_v, VEC=_vector_width(logits, chunk), CONTIG=logits.stride(1) == 1,
                  KEY_SCALED=keys["KEY_SCALED"], num_warps=_NUM_WARPS)
    row_args = (logits, logits.stride(0), logits.stride(1), vocab, chunk, splits, scale, _LOG2E / scale)
    grid = (num_rows, splits)
    _partials_kernel[grid](
        *row_args, limit, part_max, part_sum, part_keys, counters, ids, logprobs, token, token_logprob,
        lse, row_state, K=k, KP=kp, USE_TOP_P=top_p < 1.0, GREEDY=not sample, **common)
    for digit in range(digits):
        _radix_pass_kernel[grid](
            *row_args, limit, log_tail, hist[digit * num_rows * splits * RADIX_BINS:],
            counters[(1 + digit) * num_rows:], ids, logprobs, token, token_logprob, lse, row_state,
            K=k, KP=kp, DIGIT=digit, DIGITS=digits, GREEDY=not sample, **_scatter_layout(common))
    if sample:
        _draw_kernel[grid](*row_args, seed, part_keys, counters[(passes - 1) * num_rows:], token, token_logprob,
                           lse, row_state, **common)
    return ids, logprobs, token, token_logprob, lse


# Rows of row_state.
_THRESHOLD, _NUCLEUS_Q, _PREFIX, _ABOVE, _SEARCH = range(5)



# ----------------------------------------------------------------------------- Triton kernels
#
# Shared arguments: the row (x_ptr, stride_b, stride_v), its split (vocab, chunk, num_splits), the
# temperature ``scale`` (1 for T = 0) and ``rate = log2(e) / scale``. Masses are computed in the
# base-2 domain, ``p = exp2(x * rate - lse * log2(e))``, one FMA and one exp2 per element, the same
# expression in every kernel so that the integer masses agree between passes.



_NONE_KEY: tl.constexpr = tl.constexpr(KEY_NONE)
_NEG_INF_ORDER: tl.constexpr = tl.constexpr(ORDERED_NEG_INF)
_ONE: tl.constexpr = tl.constexpr(float(MASS_ONE))
_COUNT_ONE: tl.constexpr = tl.constexpr(1 << COUNT_SHIFT)
_MASS_MASK: tl.constexpr = tl.constexpr((1 << COUNT_SHIFT) - 1)
_BINS: tl.constexpr = tl.constexpr(RADIX_BINS)
_LOG2E_C: tl.constexpr = tl.constexpr(_LOG2E)
_ST_THRESHOLD: tl.constexpr = tl.constexpr(_THRESHOLD)
_ST_NUCLEUS_Q: tl.constexpr = tl.constexpr(_NUCLEUS_Q)
_ST_PREFIX: tl.constexpr = tl.constexpr(_PREFIX)
_ST_ABOVE: tl.constexpr = tl.constexpr(_ABOVE)
_ST_SEARCH: tl.constexpr = tl.constexpr(_SEARCH)
_SPLIT_TILE: tl.constexpr = tl.constexpr(128)

@triton.jit
def _ordered(s):
    bits = (s + 0.0).to(tl.int32, bitcast=True)  # -0 -> +0, as in ordered_int
    return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64)

@triton.jit
def _rank_value(x, scale, KEY_SCALED: tl.constexpr):
    """The float whose order ranks the tokens (see _key_constants)."""
    if KEY_SCALED:
        # Correctly rounded, as torch divides: the ranking must not depend on div.full's last bits.
        x = tl.math.div_rn(x, scale)
    return x

@triton.jit
def _scaled_mass(x, rate, lse):
    """p * 2**40 (float), p = exp(x / T - lse)."""
    return tl.exp2(x * rate - lse * _LOG2E_C) * _ONE

@triton.jit
def _split_span(x_ptr, stride_b, stride_v, vocab, chunk, VEC: tl.constexpr, CONTIG: tl.constexpr):
    """Pointers to this program's row and to the first column of its split, the split's first
    column and its length."""
    row_ptr = x_ptr + tl.program_id(0).to(tl.int64) * stride_b
    start = tl.program_id(1) * chunk
    split_ptr, length = _span(row_ptr, stride_v, start, tl.minimum(start + chunk, vocab), VEC, CONTIG)
    return row_ptr, split_ptr, start, length

@triton.jit
def _span(row_ptr, stride_v, start, end, VEC: tl.constexpr, CONTIG: tl.constexpr):
    if CONTIG:
        split_ptr = row_ptr + start
    else:
        split_ptr = row_ptr + start.to(tl.int64) * stride_v
    if VEC > 1:
        # Host-proved: 16-byte aligned. (The hint must sit on an op result, not a loop variable.)
        split_ptr = tl.multiple_of(split_ptr, 16)
    return split_ptr, end - start

@triton.jit
def _load_block(split_ptr, offset, length, stride_v, BLOCK_V: tl.constexpr, VEC: tl.constexpr,
                CONTIG: tl.constexpr):
    """float32 logits of the span's columns [offset, offset + BLOCK_V) (-inf from ``length`` on),
    their offsets in the span and their validity."""
    cols = offset + tl.arange(0, BLOCK_V)
    valid = cols < length
    if VEC > 1:
        valid = tl.max_constancy(valid, VEC)  # length is a multiple of VEC: masks come in whole vectors
    if CONTIG:
        ptrs = split_ptr + cols
    else:
        ptrs = split_ptr + cols.to(tl.int64) * stride_v
    return tl.load(ptrs, mask=valid, other=-float("inf")).to(tl.float32), cols, valid

@triton.jit
def _last_to_arrive(counter_ptr, num_splits):
    """True in the last program of this row to reach this point in this launch. The barrier and
    the acquire-release counter make every program's earlier stores visible to that program."""
    tl.debug_barrier()
    arrived = tl.atomic_add(counter_ptr + tl.program_id(0), 1, sem="acq_rel", scope="gpu")
    return arrived == num_splits - 1

@triton.jit
def _merge_topk(best, kth, keys, K: tl.constexpr, KP: tl.constexpr):
    """Running top-K of int64 keys: ``best`` [KP] (descending, _NONE_KEY padded), ``kth`` its K-th.

    Only keys above the running K-th are inserted, largest first, one block reduction each: the
    first block costs K reductions, later blocks usually one (the check)."""
    slots = tl.arange(0, KP)
    top = tl.max(keys, 0)
    while top > kth:
        # best is sorted: top goes after the keys larger than it, the smaller ones move down a slot.
        position = tl.sum((best > top).to(tl.int32), 0)
        shifted = tl.sum(tl.where(slots[None, :] == slots[:, None] - 1, best[None, :], 0), 1)
        best = tl.where(slots < position, best, tl.where(slots == position, top, shifted))
        best = tl.where(slots < K, best, _NONE_KEY)
        kth = tl.sum(tl.where(slots == K - 1, best, 0), 0)
        keys = tl.where(keys == top, _NONE_KEY, keys)
        top = tl.max(keys, 0)
    return best, kth

@triton.jit
def _top_logits(row_ptr, stride_v, top_ids, K: tl.constexpr, KP: tl.constexpr):
    """float32 logits of the row's top-K ids [KP] (-inf in the padding slots)."""
    in_k = tl.arange(0, KP) < K
    return tl.load(row_ptr + top_ids * stride_v, mask=in_k, other=-float("inf")).to(tl.float32)

@triton.jit
def _write_outputs(top_ids, top_x, scale, threshold, nucleus_q, lse, logprobs_ptr, token_ptr,
                   token_logprob_ptr, K: tl.constexpr, KP: tl.constexpr, KEY_SCALED: tl.constexpr,
                   GREEDY: tl.constexpr):
    """Store (and return) the filtered log-probabilities of the row's top-K ids, and the greedy token,
    once the nucleus is known."""
    row = tl.program_id(0)
    slots = tl.arange(0, KP)
    lse_nucleus = lse + tl.log(nucleus_q.to(tl.float32) / _ONE)
    top_logprobs = tl.where(_ordered(_rank_value(top_x, scale, KEY_SCALED)) >= threshold,
                            top_x / scale - lse_nucleus, -float("inf"))  # a value, not a ranking
    tl.store(logprobs_ptr + row * K + slots, top_logprobs, mask=slots < K)
    if GREEDY:
        tl.store(token_ptr + row, tl.sum(tl.where(slots == 0, top_ids, 0), 0))
        tl.store(token_logprob_ptr + row, tl.sum(tl.where(slots == 0, top_logprobs, 0.0), 0))
    return top_logprobs

@triton.jit
def _partials_kernel(x_ptr, stride_b, stride_v, vocab, chunk, num_splits, scale, rate, limit,
                     part_max_ptr, part_sum_ptr, part_keys_ptr, counter_ptr,
                     ids_ptr, logprobs_ptr, token_ptr, token_logprob_ptr, lse_ptr, state_ptr,
                     K: tl.constexpr, KP: tl.constexpr, BLOCK_V: tl.constexpr, VEC: tl.constexpr,
                     CONTIG: tl.constexpr, KEY_SCALED: tl.constexpr, USE_TOP_P: tl.constexpr,
                     GREEDY: tl.constexpr):
    # Read 1 of one split: per-lane online log-sum-exp (base 2) and the split's top-K keys. The last
    # program of the row merges the splits (lse, top-K) and settles the nucleus when it lies in the top-K.
    row = tl.program_id(0)
    split = tl.program_id(1)
    num_rows = tl.num_programs(0)
    row_ptr, split_ptr, start, length = _split_span(x_ptr, stride_b, stride_v, vocab, chunk, VEC, CONTIG)
    lane_max = tl.full([BLOCK_V], -float("inf"), tl.float32)
    lane_sum = tl.zeros([BLOCK_V], tl.float32)
    best = tl.full([KP], _NONE_KEY, tl.int64)
    kth = tl.min(best, 0)
    for offset in range(0, length, BLOCK_V):
        x, cols, valid = _load_block(split_ptr, offset, length, stride_v, BLOCK_V, VEC, CONTIG)
        t = x * rate
        new_max = tl.maximum(lane_max, t)
        shift = tl.where(new_max == -float("inf"), 0.0, new_max)
        lane_sum = lane_sum * tl.exp2(lane_max - shift) + tl.exp2(t - shift)
        lane_max = new_max
        keys = tl.where(valid, _ordered(_rank_value(x, scale, KEY_SCALED)) * 4294967296
                        + (4294967295 - (start + cols).to(tl.int64)), _NONE_KEY)
        best, kth = _merge_topk(best, kth, keys, K, KP)
    split_max = tl.max(lane_max, 0)
    shift = tl.where(split_max == -float("inf"), 0.0, split_max)
    part = row * num_splits + split
    tl.store(part_max_ptr + part, split_max)
    tl.store(part_sum_ptr + part, tl.sum(lane_sum * tl.exp2(lane_max - shift), 0))
    slots = tl.arange(0, KP)
    tl.store(part_keys_ptr + part * KP + slots, best)
    if _last_to_arrive(counter_ptr, num_splits):
        # Combine: log-sum-exp of the split partials (base 2), then in natural units of s.
        tiles = tl.arange(0, _SPLIT_TILE)
        row_max = -float("inf")
        total = 0.0
        for t in range(0, num_splits, _SPLIT_TILE):
            inside = t + tiles < num_splits
            m = tl.load(part_max_ptr + row * num_splits + t + tiles, mask=inside, other=-float("inf"))
            z = tl.load(part_sum_ptr + row * num_splits + t + tiles, mask=inside, other=0.0)
            new_max = tl.maximum(row_max, tl.max(m, 0))
            shift = tl.where(new_max == -float("inf"), 0.0, new_max)
            total = total * tl.exp2(row_max - shift) + tl.sum(z * tl.exp2(m - shift), 0)
            row_max = new_max
        lse = (shift + tl.log2(total)) / _LOG2E_C
        # NaN logits make the lane sums NaN (max.f32 drops NaN, the sum does not), +inf ones make
        # inf - inf, an all -inf row gives log2(0): each leaves lse non-finite.
        usable = tl.abs(lse) < float("inf")  # False for NaN too
        lse = tl.where(usable, lse, float("nan"))
        tl.store(lse_ptr + row, lse)
        # Combine: top-K of the splits' top-K keys.
        lanes = tl.arange(0, BLOCK_V)
        best = tl.full([KP], _NONE_KEY, tl.int64)
        kth = tl.min(best, 0)
        for t in range(0, num_splits * KP, BLOCK_V):
            keys = tl.load(part_keys_ptr + row * num_splits * KP + t + lanes,
                           mask=t + lanes < num_splits * KP, other=_NONE_KEY)
            best, kth = _merge_topk(best, kth, keys, K, KP)
        in_k = slots < K
        # (Later steps use these registers: a reload of ids_ptr could race with other threads' stores.)
        top_ids = tl.where(in_k, 4294967295 - (best & 4294967295), 0)
        top_x = _top_logits(row_ptr, stride_v, top_ids, K, KP)
        tl.store(ids_ptr + row * K + slots, top_ids, mask=in_k)
        threshold = tl.cast(_NEG_INF_ORDER, tl.int64)
        nucleus_q = tl.cast(1 << 40, tl.int64)
        search = 0
        if USE_TOP_P:
            # The nucleus within the top-K: mass strictly above each kept token (all of it is kept).
            top_order = best >> 32
            top_q = tl.where(in_k, _scaled_mass(top_x, rate, tl.where(usable, lse, 0.0)), 0.0)
            top_q = top_q.to(tl.int64)
            above = tl.sum(tl.where(top_order[None, :] > top_order[:, None], top_q[None, :], 0), 1)
            in_nucleus = (above < limit) & (top_q > 0) & in_k
            threshold = tl.min(tl.where(in_nucleus, top_order, 9223372036854775807), 0)
            nucleus_q = tl.sum(tl.where(in_nucleus, top_q, 0), 0)
            last_in = tl.sum((in_nucleus & (slots == K - 1)).to(tl.int32), 0) > 0
            search = last_in.to(tl.int32) * usable.to(tl.int32)  # an unusable row has no search
        tl.store(state_ptr + _ST_THRESHOLD * num_rows + row, threshold)
        tl.store(state_ptr + _ST_NUCLEUS_Q * num_rows + row, nucleus_q)
        tl.store(state_ptr + _ST_PREFIX * num_rows + row, 0)
        tl.store(state_ptr + _ST_ABOVE * num_rows + row, 0)
        tl.store(state_ptr + _ST_SEARCH * num_rows + row, search.to(tl.int64))
        if search == 0:
            _write_outputs(top_ids, top_x, scale, threshold, nucleus_q, lse, logprobs_ptr, token_ptr,
                           token_logprob_ptr, K, KP, KEY_SCALED, GREEDY)

@triton.jit
def _radix_pass_kernel(x_ptr, stride_b, stride_v, vocab, chunk, num_splits, scale, rate, limit, log_tail,
                       hist_ptr, counter_ptr, ids_ptr, logprobs_ptr, token_ptr, token_logprob_ptr, lse_ptr,
                       state_ptr, K: tl.constexpr, KP: tl.constexpr, DIGIT: tl.constexpr,
                       DIGITS: tl.constexpr, BLOCK_V: tl.constexpr, VEC: tl.constexpr, CONTIG: tl.constexpr,
                       KEY_SCALED: tl.constexpr, GREEDY: tl.constexpr):
    # One digit of the radix select: this split's histogram of fixed-point mass and count over the
    # 256 values of digit DIGIT, among the tokens whose higher digits equal the prefix found so far.
    # The last program of the row sums the splits' histograms and picks the digit; after DIGITS
    # digits (the rest are zero for every token, see _key_constants) the threshold is known.
    row = tl.program_id(0)
    split = tl.program_id(1)
    num_rows = tl.num_programs(0)
    if tl.load(state_ptr + _ST_SEARCH * num_rows + row) != 0:
        row_ptr, split_ptr, split_start, length = _split_span(x_ptr, stride_b, stride_v, vocab, chunk, VEC, CONTIG)
        lse = tl.load(lse_ptr + row)
        prefix = tl.load(state_ptr + _ST_PREFIX * num_rows + row)
        low = lse + log_tail  # tokens below cannot be in the nucleus (docs/kernels.md)
        shift: tl.constexpr = 24 - 8 * DIGIT
        split_hist = hist_ptr + (row * num_splits + split) * _BINS
        for offset in range(0, length, BLOCK_V):
            x, block_cols, block_valid = _load_block(split_ptr, offset, length, stride_v, BLOCK_V, VEC, CONTIG)
            scaled_mass = _scaled_mass(x, rate, lse)
            # Unsigned order-preserving image of the rank value (= _ordered + 2**31), in 32 bits.
            bits = (_rank_value(x, scale, KEY_SCALED) + 0.0).to(tl.uint32, bitcast=True)  # -0 -> +0
            key = tl.where((bits >> 31) != 0, ~bits, bits | 0x80000000)
            # q > 0 (padding holds -inf: q = 0) and not below the nucleus bound.
            member = (scaled_mass >= 1.0) & (x * rate >= low * _LOG2E_C)
            if DIGIT > 0:
                member = member & ((key >> (shift + 8)) == prefix.to(tl.uint32))
            tl.atomic_add(split_hist + ((key >> shift) & 255), scaled_mass.to(tl.int64) + _COUNT_ONE,
                          mask=member, sem="relaxed")
        if _last_to_arrive(counter_ptr, num_splits):
            bins = tl.arange(0, _BINS)
            packed = tl.zeros([_BINS], tl.int64)
            for j in range(0, num_splits):
                packed += tl.load(hist_ptr + (row * num_splits + j) * _BINS + bins)
            count = packed >> 42
            mass = packed & _MASS_MASK
            above = tl.load(state_ptr + _ST_ABOVE * num_rows + row)
            mass_above_bin = above + tl.sum(mass, 0) - tl.cumsum(mass, 0)
            fits = (count > 0) & (mass_above_bin < limit)
            chosen = tl.minimum(tl.min(tl.where(fits, bins, _BINS), 0), _BINS - 1)
            above = tl.sum(tl.where(bins == chosen, mass_above_bin, 0), 0)
            prefix = prefix * 256 + chosen
            if DIGIT == DIGITS - 1:
                threshold = (prefix << (32 - 8 * DIGITS)) - 2147483648
                nucleus_q = above + tl.sum(tl.where(bins == chosen, mass, 0), 0)
                tl.store(state_ptr + _ST_THRESHOLD * num_rows + row, threshold)
                tl.store(state_ptr + _ST_NUCLEUS_Q * num_rows + row, nucleus_q)
                # ids_ptr was written by the partials launch.
                top_ids = tl.load(ids_ptr + row * K + tl.arange(0, KP), mask=tl.arange(0, KP) < K, other=0)
                _write_outputs(top_ids, _top_logits(row_ptr, stride_v, top_ids, K, KP), scale, threshold,
                               nucleus_q, lse, logprobs_ptr, token_ptr, token_logprob_ptr, K, KP, KEY_SCALED,
                               GREEDY)
            else:
                tl.store(state_ptr + _ST_PREFIX * num_rows + row, prefix)
                tl.store(state_ptr + _ST_ABOVE * num_rows + row, above)

@triton.jit
def _draw_kernel(x_ptr, stride_b, stride_v, vocab, chunk, num_splits, scale, rate, seed_ptr, part_ptr,
                 counter_ptr, token_ptr, token_logprob_ptr, lse_ptr, state_ptr, BLOCK_V: tl.constexpr,
                 VEC: tl.constexpr, CONTIG: tl.constexpr, KEY_SCALED: tl.constexpr):
    # Inverse-CDF draw over the nucleus on the fixed-point masses: each split writes its nucleus mass;
    # the last program of the row picks the split holding the target, then the token inside it.
    row = tl.program_id(0)
    split = tl.program_id(1)
    num_rows = tl.num_programs(0)
    row_ptr, split_ptr, split_start, length = _split_span(x_ptr, stride_b, stride_v, vocab, chunk, VEC, CONTIG)
    lse = tl.load(lse_ptr + row)
    lse = tl.where(lse == lse, lse, 0.0)
    threshold = tl.load(state_ptr + _ST_THRESHOLD * num_rows + row)
    acc = tl.zeros([BLOCK_V], tl.int64)
    for offset in range(0, length, BLOCK_V):
        x, block_cols, block_valid = _load_block(split_ptr, offset, length, stride_v, BLOCK_V, VEC, CONTIG)
        in_nucleus = _ordered(_rank_value(x, scale, KEY_SCALED)) >= threshold
        acc += tl.where(in_nucleus, _scaled_mass(x, rate, lse).to(tl.int64), 0)
    tl.store(part_ptr + row * num_splits + split, tl.sum(acc, 0))
    if _last_to_arrive(counter_ptr, num_splits):
        tiles = tl.arange(0, _SPLIT_TILE)
        total = tl.cast(0, tl.int64)
        for t in range(0, num_splits, _SPLIT_TILE):
            total += tl.sum(tl.load(part_ptr + row * num_splits + t + tiles, mask=t + tiles < num_splits,
                                    other=0), 0)
        pair = tl.arange(0, 2)
        r0, r1, r2, r3 = tl.random.philox(tl.load(seed_ptr), pair * 0 + row, pair * 0, pair * 0, pair * 0)
        bits = ((r0 & 0x1FFFFF).to(tl.int64) << 32) | r1.to(tl.int64)  # 53 random bits
        bits = tl.sum(tl.where(pair == 0, bits, 0), 0)
        target = tl.minimum((bits.to(tl.float64) * 2.0 ** -53 * total.to(tl.float64)).to(tl.int64), total - 1)
        # The split whose CDF interval holds target.
        passed = tl.cast(0, tl.int64)
        chosen = -1
        chosen_base = tl.cast(0, tl.int64)
        for t in range(0, num_splits, _SPLIT_TILE):
            mass = tl.load(part_ptr + row * num_splits + t + tiles, mask=t + tiles < num_splits, other=0)
            cdf = passed + tl.cumsum(mass, 0)
            first = tl.min(tl.where(cdf > target, t + tiles, 2147483647), 0)
            hit = (chosen < 0) & (first < 2147483647)
            chosen_base = tl.where(hit, tl.sum(tl.where(t + tiles == first, cdf - mass, 0), 0), chosen_base)
            chosen = tl.where(hit, first, chosen)
            passed = passed + tl.sum(mass, 0)
        # The token in that split whose CDF interval holds target (the last nucleus token of the
        # split if the two passes' masses disagree by rounding).
        chosen_start = tl.maximum(chosen, 0) * chunk
        chosen_ptr, chosen_length = _span(row_ptr, stride_v, chosen_start, tl.minimum(chosen_start + chunk, vocab),
                                          VEC, CONTIG)
        token = -1
        last_member = chosen_start
        cum = chosen_base
        for offset in range(0, chosen_length, BLOCK_V):
            x, cols, block_valid = _load_block(chosen_ptr, offset, chosen_length, stride_v, BLOCK_V, VEC, CONTIG)
            cols += chosen_start
            in_nucleus = _ordered(_rank_value(x, scale, KEY_SCALED)) >= threshold
            q = tl.where(in_nucleus, _scaled_mass(x, rate, lse).to(tl.int64), 0)
            cdf = cum + tl.cumsum(q, 0)
            first = tl.min(tl.where(cdf > target, cols, 2147483647), 0)
            token = tl.where((token < 0) & (first < 2147483647), first, token)
            last_member = tl.maximum(last_member, tl.max(tl.where(q > 0, cols, -1), 0))
            cum = cum + tl.sum(q, 0)
        token = tl.where(token < 0, last_member, token).to(tl.int64)
        token_x = tl.load(row_ptr + token * stride_v).to(tl.float32)
        nucleus_q = tl.load(state_ptr + _ST_NUCLEUS_Q * num_rows + row)
        tl.store(token_ptr + row, token)
        tl.store(token_logprob_ptr + row,
                 token_x / scale - (lse + tl.log(nucleus_q.to(tl.float32) / _ONE)))


# ----------------------------------------------------------------------------- ahead-of-time configs

# EIS's sampling temperature and top-p at which the configurations are generated.
_AOT_TEMPERATURE = 0.7
_AOT_TOP_P = 0.9


def aot_configs():
    """Launch configurations of :func:`nucleus_triton` as EIS calls it, for the compile lane.

    ``topk_logprobs`` with the EIS default top_k = 5 on 1 and 4 rows; ``sample_logprob`` (k = 8, the
    nucleus probe, at top_p < 1; k = 1 at top_p = 1) on 5 and 20 rows (B * K rollout rows); bf16 /
    fp16 / fp32 at the LLaDA, Dream and SDAR vocabulary widths, 132 SMs (H100), temperature 0.7, for
    contiguous logits, with the arguments :func:`nucleus_triton` passes (specialised as the JIT does).
    Each radix digit is a separate configuration.
    """
    import itertools

    from ._aot import MODEL_VOCABS, launch_config

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    calls = [("topk_logprobs", 5, 1, False), ("topk_logprobs", 5, 1, True), ("topk_logprobs", 5, 4, True),
             ("sample_logprob", 1, 5, False), ("sample_logprob", NUCLEUS_PROBE_K, 5, True),
             ("sample_logprob", NUCLEUS_PROBE_K, 20, True)]
    configs = []
    for (dtype_name, dtype), vocab, (op, k, rows, use_top_p) in itertools.product(
            dtypes.items(), sorted(MODEL_VOCABS.values()), calls):
        splits, chunk, block_v = _launch_config(rows, vocab, 132)
        width = 16 // dtype.itemsize
        keys = _key_constants(dtype, _AOT_TEMPERATURE)
        common = dict(BLOCK_V=block_v, VEC=width if vocab % width == 0 and chunk % width == 0 else 1, CONTIG=True,
                      KEY_SCALED=keys["KEY_SCALED"])
        kp = max(2, next_power_of_2(k))
        sample = op == "sample_logprob"
        digits = keys["DIGITS"] if use_top_p else 0
        top_p = _AOT_TOP_P if use_top_p else 1.0
        name = f"{op} {dtype_name} V={vocab} rows={rows} k={k} top_p<1={int(use_top_p)} splits={splits}"
        row_args = dict(x_ptr="*" + dtype_name, stride_b=vocab, stride_v=1, vocab=vocab, chunk=chunk,
                        num_splits=splits, scale=_AOT_TEMPERATURE, rate=_LOG2E / _AOT_TEMPERATURE)
        outputs = dict(ids_ptr="*i64", logprobs_ptr="*fp32", token_ptr="*i64", token_logprob_ptr="*fp32",
                       lse_ptr="*fp32", state_ptr="*i64")

        def add(what, kernel, args):
            configs.append(launch_config(f"nucleus {what} {name}", kernel, args, num_warps=_NUM_WARPS,
                                         elements_per_iteration=block_v))

        add("partials", _partials_kernel,
            dict(row_args, limit=mass_threshold(top_p), part_max_ptr="*fp32", part_sum_ptr="*fp32",
                 part_keys_ptr="*i64", counter_ptr="*i64", **outputs, **common, K=k, KP=kp,
                 USE_TOP_P=use_top_p, GREEDY=not sample))
        for digit in range(digits):
            add(f"radix digit {digit}/{digits}", _radix_pass_kernel,
                dict(row_args, limit=mass_threshold(top_p), log_tail=math.log((1.0 - top_p) / vocab) - 1.0,
                     hist_ptr="*i64", counter_ptr="*i64", **outputs, **_scatter_layout(common), K=k,
                     KP=kp, DIGIT=digit, DIGITS=digits, GREEDY=not sample))
        if sample:
            add("draw", _draw_kernel,
                dict(row_args, seed_ptr="*i64", part_ptr="*i64", counter_ptr="*i64",
                     token_ptr="*i64", token_logprob_ptr="*fp32", lse_ptr="*fp32", state_ptr="*i64", **common))
    return configs
