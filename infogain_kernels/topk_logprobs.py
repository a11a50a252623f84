"""Top-k log-probabilities under temperature + top-p (nucleus) filtering, sort-free.

The distribution. For a row of logits ``x`` (float32 accumulation for every
input dtype) and temperature ``T`` let ``s = x / T`` (``T = 0`` scores with
``s = x``, i.e. the untempered model distribution, see below) and
``p = softmax(s)``. The top-p *nucleus* is defined without sorting:

    token i is in the nucleus  <=>  sum of p_j over tokens with s_j > s_i  <  top_p

i.e. a token is kept when the mass of the strictly more probable tokens has
not yet reached ``top_p``. This is the usual "smallest prefix of the sorted
distribution whose mass reaches top_p", except that tokens tied with the last
kept token are all kept (the set is independent of how ties would be sorted).
``top_p = 1`` keeps every token. The filtered distribution is ``p`` restricted
to the nucleus and renormalised; tokens outside it have log-probability
``-inf``. Equivalently the nucleus is ``{i : s_i >= tau}`` for one threshold
``tau``, which is what the kernels search for.

``temperature = 0`` means "deterministic": :func:`topk_logprobs` ranks by the
logits (same order as any T > 0) and reports log-probabilities of the
untempered distribution ``softmax(x)`` with its own top-p nucleus, so that the
scores stay informative instead of collapsing to a point mass; likewise
:func:`infogain_kernels.sample_logprob` returns the arg-max token and its
untempered filtered log-probability.

Ordering. Tokens are ranked by ``s`` descending, ties by lower token id. The
rank uses one int64 key per token, ``(order-preserving int32 image of s) << 32 |
(2**32 - 1 - id)``, so "the k largest keys" is a total order and the Triton and
reference paths return the same ids.

Reads of the vocabulary per row (the row is never sorted):

* pass 1 (always): online log-sum-exp and the running top-k keys;
* if ``top_p < 1`` and the nucleus boundary falls inside the top-k, the
  threshold and the nucleus mass come from the k kept tokens: no more reads;
* otherwise the threshold is found by bisection over the 32-bit ordered image
  of ``s``; each step is one read (mass above the pivot, nearest token values
  on either side) and the bracket snaps to actual token values, so at most 32
  extra reads, usually far fewer.

Registered as ``torch.ops.infogain.topk_logprobs``. The helpers here
(``nucleus_reference``, ``nucleus_triton``, ``raise_on_invalid_rows``) are also
the engine of :mod:`infogain_kernels.sample_logprob`.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from . import _random
from ._backend import call_op, capturing_cuda_graph, device_guard, use_triton
from ._random import triton
from ._validation import check_logits, check_positive_int

# The Triton kernel unrolls its running top-k merge k times; above this k the
# op runs the torch path on every device.
TRITON_MAX_K = 64
# Reference work-space budget: [rows, chunk] tiles never exceed this many elements.
_REFERENCE_TILE_ELEMENTS = 1 << 20
_TRITON_BLOCK_V = 1024

_LOW_BITS = 1 << 32
# Order-preserving int32 image of -inf; the bisection starts just below it.
_ORDERED_NEG_INF = -2139095041
# Key smaller than every real key (real keys are >= _ORDERED_NEG_INF << 32).
_KEY_NONE = -2147483647 * _LOW_BITS


def check_top_p(name: str, value) -> float:
    """A number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return float(value)


def topk_logprobs(logits: torch.Tensor, k: int, *, temperature: float = 1.0,
                  top_p: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The k most likely tokens of each row and their filtered log-probabilities.

    Args:
        logits: ``[B, V]`` float32, bfloat16 or float16, any strides. ``-inf``
            entries are legal (such tokens have log-probability ``-inf``).
        k: 1 <= k <= V (``k > V`` raises ``ValueError``; callers clamp).
        temperature: finite, >= 0. ``0``: untempered scores (module docstring).
        top_p: in (0, 1]; 1 disables nucleus filtering.

    Returns:
        ``(ids, logprobs)``: ``ids`` int64 ``[B, k]``, ranked by probability
        (ties: lower id first); ``logprobs`` float32 ``[B, k]``, the
        log-probability of each id under softmax(logits / T) renormalised over
        the top-p nucleus, ``-inf`` for ids outside it. Nucleus tokens always
        come before non-nucleus tokens (they are the most probable ones).

    Raises:
        TypeError / ValueError naming the argument for bad types, shapes or
        ranges, and ``ValueError`` for a row that contains NaN or +inf, is
        entirely ``-inf``, or overflows float32 after dividing by the
        temperature. (Under CUDA-graph capture that data check is skipped and
        such rows give NaN log-probabilities.)
    """
    check_logits("logits", logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape [B, V], got {tuple(logits.shape)}")
    k = check_positive_int("k", k)
    if k > logits.shape[1]:
        raise ValueError(f"k must be <= the vocabulary size {logits.shape[1]}, got {k}")
    temperature = _random.check_temperature("temperature", temperature)
    top_p = check_top_p("top_p", top_p)
    return call_op(torch.ops.infogain.topk_logprobs, _topk_logprobs_impl, logits, k, temperature, top_p)


def _topk_logprobs_impl(logits: torch.Tensor, k: int, temperature: float,
                      top_p: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Custom op behind :func:`topk_logprobs` (arguments already validated)."""
    ids, logprobs, _, _, lse = run_nucleus(logits, k, temperature, top_p, seed=None)
    raise_on_invalid_rows(logits, lse)
    return ids, logprobs


_topk_logprobs_op = torch.library.custom_op("infogain::topk_logprobs", _topk_logprobs_impl, mutates_args=())


@_topk_logprobs_op.register_fake
def _(logits, k, temperature, top_p):
    shape = (logits.shape[0], k)
    return logits.new_empty(shape, dtype=torch.int64), logits.new_empty(shape, dtype=torch.float32)


def run_nucleus(logits: torch.Tensor, k: int, temperature: float, top_p: float,
                seed: Optional[torch.Tensor]):
    """Dispatch to the Triton kernel or the torch reference.

    Returns ``(ids [B,k], logprobs [B,k], token [B], token_logprob [B], lse [B])``;
    ``token``/``token_logprob`` are the Gumbel-max draw from the filtered
    distribution when ``seed`` (int64 tensor [1]) is given, else the top-1.
    ``lse`` is the log-sum-exp of the whole scaled row, non-finite for an invalid row.
    """
    if logits.shape[0] > 0 and k <= TRITON_MAX_K and use_triton(logits):
        with device_guard(logits):
            return nucleus_triton(logits, k, temperature, top_p, seed)
    return nucleus_reference(logits, k, temperature, top_p, seed)


def raise_on_invalid_rows(logits: torch.Tensor, lse: torch.Tensor) -> None:
    """Both paths report an unusable row by a non-finite log-sum-exp; say why."""
    if lse.numel() == 0 or capturing_cuda_graph(logits.device):
        return
    bad = ~torch.isfinite(lse)
    if not bool(bad.any()):
        return
    row_index = int(bad.nonzero()[0, 0])
    row = logits[row_index].float()
    if bool(torch.isnan(row).any()):
        problem = "contains NaN"
    elif bool((row == math.inf).any()):
        problem = "contains +inf"
    elif bool((row == -math.inf).all()):
        problem = "is entirely -inf (no token has probability > 0)"
    else:
        problem = "overflows float32 after division by the temperature"
    raise ValueError(f"logits row {row_index} {problem}")


# ----------------------------------------------------------------------------- reference


def _scale(x: torch.Tensor, temperature: float) -> torch.Tensor:
    return x.float() / temperature if temperature > 0 else x.float()


def ordered_int(s: torch.Tensor) -> torch.Tensor:
    """Order-preserving map of float32 values to int64 (``a < b`` <=> image(a) < image(b), -0 < +0)."""
    bits = s.contiguous().view(torch.int32)
    return torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)


def _rank_keys(s: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return ordered_int(s) * _LOW_BITS + (_LOW_BITS - 1 - ids)


def _ids_of_keys(keys: torch.Tensor) -> torch.Tensor:
    return (_LOW_BITS - 1) - (keys & (_LOW_BITS - 1))


def nucleus_reference(logits, k, temperature, top_p, seed):
    """The specification, in torch; chunked over the vocabulary (see the module docstring)."""
    num_rows, vocab = logits.shape
    device = logits.device
    chunk = max(1, min(vocab, _REFERENCE_TILE_ELEMENTS // max(1, num_rows)))

    def chunks():
        for start in range(0, vocab, chunk):
            stop = min(start + chunk, vocab)
            yield start, _scale(logits[:, start:stop], temperature)

    # Pass 1: online log-sum-exp and the running top-k keys.
    running_max = torch.full((num_rows,), -math.inf, device=device)
    running_sum = torch.zeros(num_rows, device=device)
    has_nan = torch.zeros(num_rows, dtype=torch.bool, device=device)
    best = torch.full((num_rows, k), _KEY_NONE, dtype=torch.int64, device=device)
    for start, s in chunks():
        has_nan |= torch.isnan(s).any(dim=1)
        new_max = torch.maximum(running_max, s.max(dim=1).values)
        shift = torch.where(new_max == -math.inf, torch.zeros_like(new_max), new_max)
        running_sum = running_sum * torch.exp(running_max - shift) + torch.exp(s - shift[:, None]).sum(dim=1)
        running_max = new_max
        ids = torch.arange(start, start + s.shape[1], device=device).expand_as(s)
        merged = torch.cat([best, _rank_keys(s, ids)], dim=1)
        best = merged.topk(k, dim=1).values  # keys are unique, so this order is total
    lse = running_max + torch.log(running_sum)
    lse = torch.where(has_nan | (running_max == -math.inf), torch.full_like(lse, math.nan), lse)

    top_ids = _ids_of_keys(best)
    top_s = _scale(logits.gather(1, top_ids), temperature)
    top_p_mass = torch.exp(top_s - lse[:, None])
    top_order = ordered_int(top_s)
    if top_p >= 1.0:
        threshold = torch.full((num_rows,), _ORDERED_NEG_INF, dtype=torch.int64, device=device)
        nucleus_mass = torch.ones(num_rows, device=device)
    else:
        # Mass of strictly more probable tokens, for each kept token (all of them are among the kept).
        above = ((top_order[:, None, :] > top_order[:, :, None]) * top_p_mass[:, None, :]).sum(dim=2)
        in_nucleus = above < top_p
        threshold = torch.where(in_nucleus, top_order, torch.iinfo(torch.int64).max).min(dim=1).values
        nucleus_mass = (top_p_mass * in_nucleus).sum(dim=1)
        search = in_nucleus[:, -1] & torch.isfinite(lse)
        if bool(search.any()):
            t, m = _bisect_threshold(chunks, top_order[:, -1], search, lse, top_p)
            threshold = torch.where(search, t, threshold)
            nucleus_mass = torch.where(search, m, nucleus_mass)
    lse_nucleus = lse + torch.log(nucleus_mass)
    top_logprobs = torch.where(top_order >= threshold[:, None], top_s - lse_nucleus[:, None],
                               torch.full_like(top_s, -math.inf))

    if seed is None:
        token, token_logprob = top_ids[:, 0], top_logprobs[:, 0]
    else:
        generator = _random.seeded_generator(seed)
        best_key = torch.full((num_rows,), -math.inf, device=device)
        token = torch.zeros(num_rows, dtype=torch.int64, device=device)
        token_s = torch.full((num_rows,), -math.inf, device=device)
        for start, s in chunks():
            key = s + _random.gumbel_noise(s.shape, generator)
            key = torch.where(ordered_int(s) >= threshold[:, None], key, torch.full_like(key, -math.inf))
            chunk_key, chunk_arg = key.max(dim=1)
            better = chunk_key > best_key
            best_key = torch.where(better, chunk_key, best_key)
            token = torch.where(better, chunk_arg + start, token)
            token_s = torch.where(better, s.gather(1, chunk_arg[:, None]).squeeze(1), token_s)
        token_logprob = token_s - lse_nucleus
    return top_ids, top_logprobs, token, token_logprob, lse


def _bisect_threshold(chunks, known_in, search, lse, top_p):
    """Smallest ordered value ``tau`` with mass(s > tau) < top_p, and the nucleus mass mass(s >= tau).

    ``known_in``: ordered value of a token known to be in the nucleus (upper end of the bracket);
    rows where ``search`` is False start with an empty bracket and are not searched.
    Invariant: mass(> lo) >= top_p (lo_mass) and mass(> hi) < top_p, hi a token value.
    """
    num_rows = lse.shape[0]
    device = lse.device
    lo = torch.full((num_rows,), _ORDERED_NEG_INF - 1, dtype=torch.int64, device=device)
    hi = torch.where(search, known_in, lo + 1)
    lo_mass = torch.ones(num_rows, device=device)
    big = torch.iinfo(torch.int64).max
    while True:
        active = hi - lo > 1
        if not bool(active.any()):
            return hi, lo_mass
        pivot = lo + (hi - lo) // 2
        mass = torch.zeros(num_rows, device=device)
        below_max = torch.full((num_rows,), -big, dtype=torch.int64, device=device)
        above_min = torch.full((num_rows,), big, dtype=torch.int64, device=device)
        for _, s in chunks():
            order = ordered_int(s)
            above = order > pivot[:, None]
            mass += torch.where(above, torch.exp(s - lse[:, None]), torch.zeros_like(s)).sum(dim=1)
            below_max = torch.maximum(below_max, torch.where(above, -big, order).max(dim=1).values)
            above_min = torch.minimum(above_min, torch.where(above, order, big).min(dim=1).values)
        inside = mass < top_p
        # No token lies in (below_max, pivot] or (pivot, above_min): snap the bracket to token values.
        hi = torch.where(active & inside, below_max, hi)
        lo = torch.where(active & ~inside, above_min - 1, lo)
        lo_mass = torch.where(active & ~inside, mass, lo_mass)


# ----------------------------------------------------------------------------- Triton


def _triton_block_v(vocab: int) -> int:
    return min(_TRITON_BLOCK_V, max(16, _random.next_power_of_2(vocab)))


def nucleus_triton(logits, k, temperature, top_p, seed):
    num_rows, vocab = logits.shape
    device = logits.device
    ids = torch.empty((num_rows, k), dtype=torch.int64, device=device)
    logprobs = torch.empty((num_rows, k), dtype=torch.float32, device=device)
    token = torch.empty(num_rows, dtype=torch.int64, device=device)
    token_logprob = torch.empty(num_rows, dtype=torch.float32, device=device)
    lse = torch.empty(num_rows, dtype=torch.float32, device=device)
    block_v = _triton_block_v(vocab)
    seed_arg = seed if seed is not None else lse  # unused pointer when not sampling
    _nucleus_kernel[(num_rows,)](
        logits, logits.stride(0), logits.stride(1), vocab,
        temperature if temperature > 0 else 1.0, top_p, seed_arg,
        ids, logprobs, token, token_logprob, lse,
        K=k, KP=max(2, _random.next_power_of_2(k)), BLOCK_V=block_v,
        USE_TOP_P=top_p < 1.0, SAMPLE=seed is not None,
    )
    return ids, logprobs, token, token_logprob, lse


if triton is not None:
    import triton.language as tl

    @triton.jit
    def _ordered(s):
        bits = s.to(tl.int32, bitcast=True)
        return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64)

    @triton.jit
    def _nucleus_kernel(x_ptr, stride_b, stride_v, vocab, temperature, top_p, seed_ptr,
                        ids_ptr, logprobs_ptr, token_ptr, token_logprob_ptr, lse_ptr,
                        K: tl.constexpr, KP: tl.constexpr, BLOCK_V: tl.constexpr,
                        USE_TOP_P: tl.constexpr, SAMPLE: tl.constexpr):
        # One program per row; the algorithm is nucleus_reference's, read for read.
        row = tl.program_id(0)
        row_ptr = x_ptr + row.to(tl.int64) * stride_b
        slots = tl.arange(0, KP)
        lanes = tl.arange(0, BLOCK_V)
        if SAMPLE:
            seed = tl.load(seed_ptr)

        # Pass 1: per-lane online log-sum-exp, running top-k keys and (top_p == 1) Gumbel-max.
        lane_max = tl.full([BLOCK_V], -float("inf"), tl.float32)
        lane_sum = tl.zeros([BLOCK_V], tl.float32)
        nan_count = 0
        best = tl.full([KP], -2147483647 * 4294967296, tl.int64)
        kth = tl.min(best, 0)
        gumbel_best = tl.full([BLOCK_V], -float("inf"), tl.float32)
        gumbel_token = tl.zeros([BLOCK_V], tl.int32)
        for start in range(0, vocab, BLOCK_V):
            cols = start + lanes
            valid = cols < vocab
            s = tl.load(row_ptr + cols.to(tl.int64) * stride_v, mask=valid, other=-float("inf")).to(tl.float32)
            s = s / temperature
            nan_count += tl.sum((s != s).to(tl.int32), 0)
            new_max = tl.maximum(lane_max, s)
            shift = tl.where(new_max == -float("inf"), 0.0, new_max)
            lane_sum = lane_sum * tl.exp(lane_max - shift) + tl.exp(s - shift)
            lane_max = new_max
            keys = tl.where(valid, _ordered(s) * 4294967296 + (4294967295 - cols.to(tl.int64)),
                            -2147483647 * 4294967296)
            if tl.max(keys, 0) > kth:
                merged = tl.full([KP], -2147483647 * 4294967296, tl.int64)
                for j in tl.static_range(K):
                    top = tl.maximum(tl.max(keys, 0), tl.max(best, 0))
                    merged = tl.where(slots == j, top, merged)
                    keys = tl.where(keys == top, -2147483647 * 4294967296, keys)
                    best = tl.where(best == top, -2147483647 * 4294967296, best)
                best = merged
                kth = tl.sum(tl.where(slots == K - 1, best, 0), 0)
            if SAMPLE and not USE_TOP_P:
                noise = _random.gumbel_noise_philox(seed, cols, tl.zeros([BLOCK_V], tl.int32) + row,
                                                    tl.zeros([BLOCK_V], tl.int32))
                gumbel_key = s + noise
                better = gumbel_key > gumbel_best
                gumbel_best = tl.where(better, gumbel_key, gumbel_best)
                gumbel_token = tl.where(better, cols, gumbel_token)
        row_max = tl.max(lane_max, 0)
        shift = tl.where(row_max == -float("inf"), 0.0, row_max)
        lse = shift + tl.log(tl.sum(lane_sum * tl.exp(lane_max - shift), 0))
        lse = tl.where((nan_count > 0) | (row_max == -float("inf")), float("nan"), lse)

        in_k = slots < K
        top_ids = tl.where(in_k, 4294967295 - (best & 4294967295), 0)
        top_s = tl.load(row_ptr + top_ids * stride_v, mask=in_k, other=-float("inf")).to(tl.float32) / temperature
        top_mass = tl.where(in_k, tl.exp(top_s - lse), 0.0)
        top_order = _ordered(top_s)
        threshold = tl.min(top_order, 0) * 0 - 2139095041
        nucleus_mass = tl.sum(top_mass, 0) * 0.0 + 1.0
        search = False
        if USE_TOP_P:
            above = tl.sum(tl.where(top_order[None, :] > top_order[:, None], top_mass[None, :], 0.0), 1)
            in_nucleus = (above < top_p) & in_k
            threshold = tl.min(tl.where(in_nucleus, top_order, 9223372036854775807), 0)
            nucleus_mass = tl.sum(tl.where(in_nucleus, top_mass, 0.0), 0)
            last_in = tl.sum((in_nucleus & (slots == K - 1)).to(tl.int32), 0) > 0
            search = last_in & (lse == lse) & (lse != float("inf"))
            if search:
                lo = threshold * 0 + (-2139095041 - 1)
                hi = threshold
                lo_mass = nucleus_mass * 0.0 + 1.0
                while hi - lo > 1:
                    pivot = lo + (hi - lo) // 2
                    mass = tl.zeros([BLOCK_V], tl.float32)
                    below_max = tl.full([BLOCK_V], -9223372036854775807, tl.int64)
                    above_min = tl.full([BLOCK_V], 9223372036854775807, tl.int64)
                    for start in range(0, vocab, BLOCK_V):
                        cols = start + lanes
                        valid = cols < vocab
                        s = tl.load(row_ptr + cols.to(tl.int64) * stride_v, mask=valid,
                                    other=-float("inf")).to(tl.float32) / temperature
                        order = _ordered(s)
                        is_above = (order > pivot) & valid
                        mass += tl.where(is_above, tl.exp(s - lse), 0.0)
                        below_max = tl.maximum(below_max, tl.where(valid & ~is_above, order, -9223372036854775807))
                        above_min = tl.minimum(above_min, tl.where(is_above, order, 9223372036854775807))
                    pivot_mass = tl.sum(mass, 0)
                    if pivot_mass < top_p:
                        hi = tl.max(below_max, 0)
                    else:
                        lo = tl.min(above_min, 0) - 1
                        lo_mass = pivot_mass
                threshold = hi
                nucleus_mass = lo_mass
        lse_nucleus = lse + tl.log(nucleus_mass)
        top_logprobs = tl.where(top_order >= threshold, top_s - lse_nucleus, -float("inf"))
        out = row.to(tl.int64) * K + slots
        tl.store(ids_ptr + out, top_ids, mask=in_k)
        tl.store(logprobs_ptr + out, top_logprobs, mask=in_k)

        if SAMPLE:
            if USE_TOP_P:
                if search:
                    # The nucleus reaches past the top-k: one more read for the Gumbel-max.
                    for start in range(0, vocab, BLOCK_V):
                        cols = start + lanes
                        valid = cols < vocab
                        s = tl.load(row_ptr + cols.to(tl.int64) * stride_v, mask=valid,
                                    other=-float("inf")).to(tl.float32) / temperature
                        noise = _random.gumbel_noise_philox(seed, cols, tl.zeros([BLOCK_V], tl.int32) + row,
                                                            tl.zeros([BLOCK_V], tl.int32))
                        gumbel_key = tl.where(valid & (_ordered(s) >= threshold), s + noise, -float("inf"))
                        better = gumbel_key > gumbel_best
                        gumbel_best = tl.where(better, gumbel_key, gumbel_best)
                        gumbel_token = tl.where(better, cols, gumbel_token)
                else:
                    # The whole nucleus is among the top-k: same noise values, read only at those ids.
                    noise = _random.gumbel_noise_philox(seed, top_ids.to(tl.int32), tl.zeros([KP], tl.int32) + row,
                                                        tl.zeros([KP], tl.int32))
                    slot_key = tl.where(in_k & (top_order >= threshold), top_s + noise, -float("inf"))
                    pick = tl.argmax(slot_key, 0, tie_break_left=True)
                    gumbel_best = tl.where(lanes == 0, tl.max(slot_key, 0), -float("inf"))
                    gumbel_token = tl.where(lanes == 0, tl.sum(tl.where(slots == pick, top_ids, 0), 0).to(tl.int32), 0)
            lane = tl.argmax(gumbel_best, 0, tie_break_left=True)
            token = tl.sum(tl.where(lanes == lane, gumbel_token, 0), 0).to(tl.int64)
            token_s = tl.load(row_ptr + token * stride_v).to(tl.float32) / temperature
            tl.store(token_ptr + row, token)
            tl.store(token_logprob_ptr + row, token_s - lse_nucleus)
        else:
            tl.store(token_ptr + row, tl.sum(tl.where(slots == 0, top_ids, 0), 0))
            tl.store(token_logprob_ptr + row, tl.sum(tl.where(slots == 0, top_logprobs, 0.0), 0))
        tl.store(lse_ptr + row, lse)


def aot_configs():
    """Launch configurations of :func:`nucleus_triton` as the public ops call it, for the compile
    lane: topk_logprobs (EIS top_k = 5), sample_logprob greedy (k = 1) and sampling (k = 1 at
    top_p = 1, else the probe of 16)."""
    from . import _aot
    from .sample_logprob import _NUCLEUS_PROBE_K

    calls = {"topk_logprobs": [(5, False, False), (5, True, False)],
             "sample_logprob greedy": [(1, False, False), (1, True, False)],
             "sample_logprob sample": [(1, False, True), (_NUCLEUS_PROBE_K, True, True)]}
    configs = []
    for dtype in _aot.DTYPES:
        for vocab in _aot.MODEL_VOCABS.values():
            block_v = _triton_block_v(vocab)
            for op, variants in calls.items():
                for k, use_top_p, sample in variants:
                    args = dict(x_ptr="*" + dtype, stride_b=vocab, stride_v=1, vocab=vocab, temperature=0.7,
                                top_p=0.9, seed_ptr="*i64" if sample else "*fp32", ids_ptr="*i64",
                                logprobs_ptr="*fp32", token_ptr="*i64", token_logprob_ptr="*fp32", lse_ptr="*fp32",
                                K=k, KP=max(2, _random.next_power_of_2(k)), BLOCK_V=block_v,
                                USE_TOP_P=use_top_p, SAMPLE=sample)
                    configs.append(_aot.launch_config(
                        f"nucleus {dtype} V={vocab} {op} k={k} top_p<1={int(use_top_p)}", _nucleus_kernel, args,
                        num_warps=4, elements_per_iteration=block_v))
    return configs
