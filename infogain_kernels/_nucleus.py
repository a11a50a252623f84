"""The nucleus engine behind :func:`~infogain_kernels.topk_logprobs` and
:func:`~infogain_kernels.sample_logprob`: temperature + sort-free top-p filtering of ``[B, V]`` logits,
the top-k of the filtered distribution and one inverse-CDF draw from it.

The nucleus of a row is ``{i : P(s_j > s_i) < top_p}`` with ``s = x / T`` (``s = x`` at ``T = 0``):
tokens tied with the last kept token are all kept. Masses are counted in 40-bit fixed point summed in
int64, so totals do not depend on the order of the work; tokens rank by ``s`` descending, ties by lower
id. A row is read once when ``top_p = 1`` or the nucleus lies inside the top-k, else a radix select
finds the threshold in 2-4 more reads. The full design (reads per row, split-vocabulary kernels, the
native CPU kernel) is in docs/kernels.md, "Nucleus engine".

This module holds the dispatch (:func:`run_nucleus`: native CPU kernel, Triton kernels of
:mod:`._nucleus_triton`, or the torch reference below, which is the specification), the check shared
by both ops and the data check of their outputs.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from . import _random
from ._backend import device_guard, use_native, use_triton, value_checks_enabled
from ._nucleus_format import (KEY_NONE, LOW_BITS, MASS_ONE, ORDERED_NEG_INF, RADIX_BINS, RADIX_BITS, RADIX_DIGITS,
                              mass_threshold)
from ._validation import bad_row_problem, check_logits, check_temperature, check_top_p

# The Triton kernels' running top-k moves [k, k] tiles; above this k the op runs the torch
# path on every device.
TRITON_MAX_K = 64
# The Triton path packs a count (< 2**21) above the 42-bit fixed-point mass of each histogram bin.
TRITON_MAX_VOCAB = (1 << 21) - 1
# Reference work-space budget: [rows, chunk] tiles never exceed this many elements.
_REFERENCE_TILE_ELEMENTS = 1 << 20


def check_row_logits(logits) -> torch.Tensor:
    """Floating ``[B, V]`` logits (V >= 1), as both ops take them."""
    check_logits("logits", logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape [B, V], got {tuple(logits.shape)}")
    return logits


def check_filter(temperature, top_p) -> Tuple[float, float]:
    """The validated ``(temperature, top_p)`` of the filtered distribution."""
    return check_temperature("temperature", temperature), check_top_p("top_p", top_p)


def nucleus_outputs(logits: torch.Tensor, k: int, temperature: float, top_p: float,
                    seed: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The body of both custom ops: :func:`run_nucleus`, then :func:`raise_on_invalid_rows`.

    Returns ``(ids [B,k], logprobs [B,k], token [B], token_logprob [B])``."""
    ids, logprobs, token, token_logprob, lse = run_nucleus(logits, k, temperature, top_p, seed)
    raise_on_invalid_rows(logits, lse)
    return ids, logprobs, token, token_logprob


def run_nucleus(logits: torch.Tensor, k: int, temperature: float, top_p: float,
                seed: Optional[torch.Tensor]):
    """Dispatch to the native CPU kernel, the Triton kernels or the torch reference.

    Returns ``(ids [B,k], logprobs [B,k], token [B], token_logprob [B], lse [B])``;
    ``token``/``token_logprob`` are an inverse-CDF draw from the filtered
    distribution when ``seed`` (int64 tensor [1]) is given, else the top-1.
    ``lse`` is the log-sum-exp of the whole scaled row, non-finite for an invalid row.
    """
    if use_native(logits):  # csrc/nucleus_cpu.cpp (never true where Triton would run)
        return torch.ops.infogain._nucleus_cpu(logits, k, temperature, top_p, seed)
    if (logits.shape[0] > 0 and k <= TRITON_MAX_K and logits.shape[1] <= TRITON_MAX_VOCAB
            and use_triton(logits)):
        from ._nucleus_triton import nucleus_triton

        with device_guard(logits):
            return nucleus_triton(logits, k, temperature, top_p, seed)
    return nucleus_reference(logits, k, temperature, top_p, seed)


def raise_on_invalid_rows(logits: torch.Tensor, lse: torch.Tensor) -> None:
    """Both paths report an unusable row by a non-finite log-sum-exp; say why."""
    if lse.numel() == 0 or not value_checks_enabled(logits):
        return
    if math.isfinite(float(lse.sum())):  # one cheap read-back when every row is valid (the usual case)
        return
    bad = ~torch.isfinite(lse)
    if not bool(bad.any()):
        return
    row_index = int(bad.nonzero()[0, 0])
    problem = bad_row_problem(logits[row_index]) or "overflows float32 after division by the temperature"
    raise ValueError(f"logits row {row_index} {problem}")


# ----------------------------------------------------------------------------- torch reference


def _scale(x: torch.Tensor, temperature: float) -> torch.Tensor:
    return x.float() / temperature if temperature > 0 else x.float()


def ordered_int(s: torch.Tensor) -> torch.Tensor:
    """Order-preserving map of float32 values to int64 (``a < b`` <=> image(a) < image(b); -0 and +0 map to one value)."""
    bits = (s + 0.0).contiguous().view(torch.int32)  # + 0.0 turns -0 into +0: they are equal scores
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(torch.int64)  # negatives: flip all but the sign bit


def _rank_keys(s: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return ordered_int(s) * LOW_BITS + (LOW_BITS - 1 - ids)


def _ids_of_keys(keys: torch.Tensor) -> torch.Tensor:
    return (LOW_BITS - 1) - (keys & (LOW_BITS - 1))


def _chunk_top_keys(s: torch.Tensor, start: int, k: int) -> torch.Tensor:
    """Rank keys [rows, min(k, width)] of the best tokens of a chunk whose first column is ``start``."""
    values, ids = s.topk(min(k, s.shape[1]), dim=1)
    kth = values[:, -1:]
    if bool(((s == kth).sum(dim=1) == (values == kth).sum(dim=1)).all()):
        # No tie straddles the k-th place, so topk's set is the answer (the keys order it).
        return _rank_keys(values, ids + start)
    ids = torch.arange(start, start + s.shape[1], device=s.device).expand_as(s)
    return _rank_keys(s, ids).topk(min(k, s.shape[1]), dim=1).values


def _fixed_mass(s: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """``floor(exp(s - lse) * 2**40)`` as int64 (0 for -inf scores); ``lse`` broadcasts against ``s``."""
    return (torch.exp(s - lse) * float(MASS_ONE)).to(torch.int64)


def nucleus_reference(logits, k, temperature, top_p, seed):
    """The specification, in torch; chunked over the vocabulary (docs/kernels.md, "Nucleus engine")."""
    num_rows, vocab = logits.shape
    device = logits.device
    chunk = max(1, min(vocab, _REFERENCE_TILE_ELEMENTS // max(1, num_rows)))

    def chunks():
        for start in range(0, vocab, chunk):
            stop = min(start + chunk, vocab)
            yield start, _scale(logits[:, start:stop], temperature)

    # Read 1: online log-sum-exp and the running top-k keys. (NaN and +inf propagate into a
    # non-finite lse, as does an all -inf row: that is how invalid rows are reported.)
    running_max = torch.full((num_rows,), -math.inf, device=device)
    running_sum = torch.zeros(num_rows, device=device)
    best = torch.full((num_rows, k), KEY_NONE, dtype=torch.int64, device=device)
    for start, s in chunks():
        new_max = torch.maximum(running_max, s.max(dim=1).values)
        shift = torch.where(new_max == -math.inf, torch.zeros_like(new_max), new_max)
        running_sum = running_sum * torch.exp(running_max - shift) + torch.exp(s - shift[:, None]).sum(dim=1)
        running_max = new_max
        merged = torch.cat([best, _chunk_top_keys(s, start, k)], dim=1)
        best = merged.topk(k, dim=1).values  # keys are unique, so this order is total
    lse = running_max + torch.log(running_sum)
    valid = torch.isfinite(lse)
    lse = torch.where(valid, lse, torch.full_like(lse, math.nan))
    lse_or_zero = torch.where(valid, lse, torch.zeros_like(lse))

    top_ids = _ids_of_keys(best)
    top_s = _scale(logits.gather(1, top_ids), temperature)
    top_order = ordered_int(top_s)
    if top_p >= 1.0:
        threshold = torch.full((num_rows,), ORDERED_NEG_INF, dtype=torch.int64, device=device)
        nucleus_q = torch.full((num_rows,), MASS_ONE, dtype=torch.int64, device=device)
    else:
        # Mass of strictly more probable tokens, for each kept token (all of them are among the kept).
        top_q = _fixed_mass(top_s, lse_or_zero[:, None])
        above = ((top_order[:, None, :] > top_order[:, :, None]) * top_q[:, None, :]).sum(dim=2)
        in_nucleus = (above < mass_threshold(top_p)) & (top_q > 0)
        threshold = torch.where(in_nucleus, top_order, torch.iinfo(torch.int64).max).min(dim=1).values
        nucleus_q = (top_q * in_nucleus).sum(dim=1)
        search = in_nucleus[:, -1] & valid  # the nucleus may reach past the k kept tokens
        if bool(search.any()):
            t, q = _radix_threshold(chunks, lse_or_zero, search, top_p)
            threshold = torch.where(search, t, threshold)
            nucleus_q = torch.where(search, q, nucleus_q)
    lse_nucleus = lse + torch.log(nucleus_q.double() / MASS_ONE).float()
    top_logprobs = torch.where(top_order >= threshold[:, None], top_s - lse_nucleus[:, None],
                               torch.full_like(top_s, -math.inf))

    if seed is None:
        return top_ids, top_logprobs, top_ids[:, 0], top_logprobs[:, 0], lse
    token = _draw_reference(chunks, lse_or_zero, threshold, seed)
    token_logprob = _scale(logits.gather(1, token[:, None]).squeeze(1), temperature) - lse_nucleus
    return top_ids, top_logprobs, token, token_logprob, lse


def _radix_threshold(chunks, lse, search, top_p):
    """Radix select of the nucleus threshold (docs/kernels.md, read 3) on the rows where ``search``.

    Returns ``(tau, nucleus_q)``: the ordered value of the lowest nucleus token and the fixed-point
    mass of the tokens ``>= tau`` (meaningless on the other rows).
    """
    num_rows = lse.shape[0]
    device = lse.device
    limit = mass_threshold(top_p)
    bins = torch.arange(RADIX_BINS, device=device)
    prefix = torch.zeros(num_rows, dtype=torch.int64, device=device)  # digits found so far
    above = torch.zeros(num_rows, dtype=torch.int64, device=device)  # mass above the tokens sharing them
    for digit in range(RADIX_DIGITS):
        shift = 32 - RADIX_BITS * (digit + 1)
        mass = torch.zeros(num_rows, RADIX_BINS, dtype=torch.int64, device=device)
        count = torch.zeros_like(mass)
        for _, s in chunks():
            q = _fixed_mass(s, lse[:, None])
            key = ordered_int(s) + (1 << 31)  # unsigned 32-bit image
            member = search[:, None] & (q > 0) & ((key >> (shift + RADIX_BITS)) == prefix[:, None])
            digit_bin = (key >> shift) & (RADIX_BINS - 1)
            mass.scatter_add_(1, digit_bin, q * member)
            count.scatter_add_(1, digit_bin, member.long())
        mass_above_bin = above[:, None] + mass.sum(dim=1, keepdim=True) - mass.cumsum(dim=1)
        fits = (count > 0) & (mass_above_bin < limit)
        chosen = torch.where(fits, bins, RADIX_BINS).min(dim=1).values.clamp(max=RADIX_BINS - 1)
        prefix = prefix * RADIX_BINS + chosen
        above = mass_above_bin.gather(1, chosen[:, None]).squeeze(1)
    return prefix - (1 << 31), above + mass.gather(1, chosen[:, None]).squeeze(1)


def _draw_reference(chunks, lse, threshold, seed):
    """Inverse-CDF draw over the nucleus in token order, on the integer masses (one read)."""
    generator = _random.seeded_generator(seed)
    num_rows = lse.shape[0]
    device = lse.device

    def nucleus_masses(s):
        q = _fixed_mass(s, lse[:, None])
        return torch.where(ordered_int(s) >= threshold[:, None], q, torch.zeros_like(q))

    total = torch.zeros(num_rows, dtype=torch.int64, device=device)
    for _, s in chunks():
        total += nucleus_masses(s).sum(dim=1)
    # A uniform fraction of 53 bits scales the total (so a target moves little when the total does).
    bits = torch.randint(0, 1 << 53, (num_rows,), generator=generator, device=device, dtype=torch.int64)
    target = torch.minimum((bits.double() * 2.0 ** -53 * total.double()).long(), total - 1)
    # The draw is the token whose CDF interval holds target.
    token = torch.full((num_rows,), -1, dtype=torch.int64, device=device)
    passed = torch.zeros(num_rows, dtype=torch.int64, device=device)
    for start, s in chunks():
        cdf = passed[:, None] + nucleus_masses(s).cumsum(dim=1)
        hit = (cdf > target[:, None]).int().argmax(dim=1)  # first True (0 if none)
        found = (token < 0) & (cdf[:, -1] > target)
        token = torch.where(found, start + hit, token)
        passed = cdf[:, -1]
    return token.clamp(min=0)

