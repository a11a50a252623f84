"""Top-k log-probabilities under temperature + top-p (nucleus) filtering, sort-free.

The distribution. For a row of logits ``x`` (float32 accumulation for every
input dtype) and temperature ``T`` let ``s = x / T`` (IEEE division; ``T = 0``
scores with ``s = x``, see below) and ``p = softmax(s)``. The top-p *nucleus*
is defined without sorting:

    token i is in the nucleus  <=>  P(s_j > s_i)  <  top_p

i.e. a token is kept when the mass of the strictly more probable tokens has
not yet reached ``top_p``. This is the usual "smallest prefix of the sorted
distribution whose mass reaches top_p", except that tokens tied with the last
kept token are all kept (the set is independent of how ties would be sorted).
``top_p = 1`` keeps every token. The filtered distribution is ``p`` restricted
to the nucleus and renormalised; tokens outside it have log-probability
``-inf``. Equivalently the nucleus is ``{i : s_i >= tau}`` for one threshold
``tau``, which is what both implementations search for.

Mass arithmetic. For ``top_p < 1`` the masses that decide the nucleus are
counted in fixed point: ``q_i = floor(p_i * 2**40)`` (``p_i`` computed in
float32: ``exp(s_i - lse)`` in torch, ``exp2(x_i * log2(e) / T - lse *
log2(e))`` in the kernels) summed in int64. Integer sums are exact in any
order, so within one backend the top-k shortcut, the radix search and the
sampler see the same totals whatever the order of the work.
A token with ``p_i < 2**-40`` is never in a ``top_p < 1`` nucleus (it could
only be when ``top_p`` is within about ``V * 2**-40`` of 1).

``temperature = 0`` means "deterministic": :func:`topk_logprobs` ranks by the
logits (same order as any T > 0) and reports log-probabilities of the
untempered distribution ``softmax(x)`` with its own top-p nucleus, so that the
scores stay informative instead of collapsing to a point mass; likewise
:func:`infogain_kernels.sample_logprob` returns the arg-max token and its
untempered filtered log-probability.

Ordering. Tokens are ranked by ``s`` descending, ties by lower token id. The
rank uses one int64 key per token, ``(order-preserving int32 image of s) << 32 |
(2**32 - 1 - id)``, so "the k largest keys" is a total order and the Triton and
reference paths return the same ids. On a GPU the ranking is the reference's
bit for bit, near-ties included: float32 logits are divided with
``tl.math.div_rn`` (correctly rounded, as torch divides), and 16-bit logits are
ranked by ``x`` itself, which orders them exactly as ``x / T`` does (their 8 /
11-bit significands are far coarser than float32's, so the division is strictly
increasing on them and creates no ties) at no division per element.

Reads of the vocabulary per row (the row is never sorted, there is no bisection):

1. one read: log-sum-exp and the top-k keys (a two-level select: each split of
   the row keeps its own top-k, inserting only keys above its running k-th; a
   combine step merges the splits' lists);
2. ``top_p < 1``: when the nucleus boundary falls inside the top-k, the
   threshold and the nucleus mass come from the k kept tokens, no more reads;
3. otherwise a radix select finds ``tau``: one pass per 8-bit digit of the
   32-bit ordered image of the rank value. A pass builds the histogram
   (fixed-point mass and count in each of 256 bins) of the tokens that share
   the digits found so far; walking it from the top bin gives the next digit
   (the lowest non-empty bin whose mass above is still ``< top_p``). After the
   last digit the threshold is an exact token value and its tie group's mass is
   known. 4 digits for float32; the Triton path needs 2 for bf16 and 3 for fp16
   logits (the float32 image of a 16-bit value has its low 16 / 13 bits zero).
   The Triton passes only look at tokens that can be in the nucleus
   (``s >= lse + log((1 - top_p) / V) - 1``, a bound on ``tau`` when
   ``1 - top_p >= 1e-3``), which keeps the histograms small for peaked rows.
4. sampling (:mod:`infogain_kernels.sample_logprob`): one more read for each
   split's nucleus mass, then the draw reads one split of the row.

So a row is read once (``top_p = 1`` or a nucleus inside the top-k), otherwise
3 times (bf16), 4 (fp16) or 5 (float32), plus 1 + 1/splits when sampling.
Alternatives considered: bisection over the ordered image (what this module did
before) costs up to 32 reads; a sort costs ``log V`` passes and a [V]
workspace; one histogram on raw values cannot give an exact threshold.

Split-vocabulary parallelism (Triton). EIS runs 1 to 8 rows (``sample_logprob``
B*K rows), far fewer than a GPU's SMs, so every pass splits each row into
``splits`` chunks, one program each (:func:`_launch_config`: about one program
per SM in total, chunks of at least 4 blocks of 1024). Programs write partial
states (max and normaliser, top-k keys, histograms, nucleus masses) and the last
program of a row to finish (an acquire-release counter per row and pass) does
the combine, in the same launch: 1 launch for ``top_p = 1``, one per radix
digit, 1 more for a draw, plus one memset of the workspace. The launch count is
fixed by the arguments (rows that need no search return at once), so a step
can be captured in a CUDA graph. Row starts come from strides; with unit
column stride and 16-byte alignment proved by the host, ``tl.multiple_of`` /
``tl.max_constancy`` hints make the loads 16-byte vectors (the radix pass
keeps one element per thread, the layout of its histogram scatter). Masses are
computed as ``exp2(x * log2(e) / T - lse * log2(e))``: one FMA and one exp2.

CPU tensors run the native C++ kernel ``torch.ops.infogain._nucleus_cpu``
(csrc/nucleus_cpu.cpp, nucleus_cpu_kernel.h) when the extension is built: the
same definitions, reads and tie rules, with the row in cache instead of split
across programs. One pass gives the max, the normaliser and the top-k keys (a
vector compare against the running k-th admits the few candidates); the radix
select uses digits of up to 11 bits (2 passes for 16-bit logits, 3 for float32,
skipping tokens below the bound on ``tau`` with one compare); a draw reads the
row once for each 1024-logit chunk's nucleus mass, then only the chunk that
holds the target. Rows run in parallel when they are long enough to pay for a
thread. The log-sum-exp is summed in a different order than the reference's, so
a nucleus boundary or a drawn token may differ from the reference's when the
mass above lies within float32 rounding of ``top_p`` or of a CDF boundary.

Registered as ``torch.ops.infogain.topk_logprobs``. The helpers here
(``run_nucleus``, ``raise_on_invalid_rows``) are also the engine of
:mod:`infogain_kernels.sample_logprob`.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from . import _random
from ._backend import call_op, cuda_sm_count, device_guard, use_native, use_triton, value_checks_enabled
from ._random import triton
from ._validation import bad_row_problem, check_logits, check_positive_int

# The Triton kernels' running top-k moves [k, k] tiles; above this k the op runs the torch
# path on every device.
TRITON_MAX_K = 64
# The Triton path packs a count (< 2**21) above the 42-bit fixed-point mass of each histogram bin.
TRITON_MAX_VOCAB = (1 << 21) - 1
# Reference work-space budget: [rows, chunk] tiles never exceed this many elements.
_REFERENCE_TILE_ELEMENTS = 1 << 20

_LOW_BITS = 1 << 32
# Order-preserving int32 image of -inf.
_ORDERED_NEG_INF = -2139095041
# Key smaller than every real key (real keys are >= _ORDERED_NEG_INF << 32).
_KEY_NONE = -2147483647 * _LOW_BITS

# Fixed-point mass: q = floor(p * 2**40); histogram bins add (1 << 42) per token for the count.
_MASS_BITS = 40
_MASS_ONE = 1 << _MASS_BITS
_COUNT_SHIFT = 42
_RADIX_BITS = 8
_RADIX_BINS = 1 << _RADIX_BITS
_RADIX_DIGITS = 32 // _RADIX_BITS
# The Triton passes skip tokens below lse + log((1 - top_p) / V) - 1 only when 1 - top_p is at least
# this: the bound on tau then holds with a wide margin for float32 rounding of lse.
_CANDIDATE_FILTER_MIN_TAIL = 1e-3


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
        temperature. (While a CUDA graph is captured that data check is
        skipped and such rows give NaN log-probabilities.)
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


def _mass_threshold(top_p: float) -> int:
    """Smallest fixed-point mass that is not ``< top_p`` (``q < result`` <=> ``q / 2**40 < top_p``)."""
    return math.ceil(top_p * _MASS_ONE)


# ----------------------------------------------------------------------------- reference


def _scale(x: torch.Tensor, temperature: float) -> torch.Tensor:
    return x.float() / temperature if temperature > 0 else x.float()


def ordered_int(s: torch.Tensor) -> torch.Tensor:
    """Order-preserving map of float32 values to int64 (``a < b`` <=> image(a) < image(b); -0 and +0 map to one value)."""
    bits = (s + 0.0).contiguous().view(torch.int32)  # + 0.0 turns -0 into +0: they are equal scores
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(torch.int64)  # negatives: flip all but the sign bit


def _rank_keys(s: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return ordered_int(s) * _LOW_BITS + (_LOW_BITS - 1 - ids)


def _ids_of_keys(keys: torch.Tensor) -> torch.Tensor:
    return (_LOW_BITS - 1) - (keys & (_LOW_BITS - 1))


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
    return (torch.exp(s - lse) * float(_MASS_ONE)).to(torch.int64)


def nucleus_reference(logits, k, temperature, top_p, seed):
    """The specification, in torch; chunked over the vocabulary (see the module docstring)."""
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
    best = torch.full((num_rows, k), _KEY_NONE, dtype=torch.int64, device=device)
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
        threshold = torch.full((num_rows,), _ORDERED_NEG_INF, dtype=torch.int64, device=device)
        nucleus_q = torch.full((num_rows,), _MASS_ONE, dtype=torch.int64, device=device)
    else:
        # Mass of strictly more probable tokens, for each kept token (all of them are among the kept).
        top_q = _fixed_mass(top_s, lse_or_zero[:, None])
        above = ((top_order[:, None, :] > top_order[:, :, None]) * top_q[:, None, :]).sum(dim=2)
        in_nucleus = (above < _mass_threshold(top_p)) & (top_q > 0)
        threshold = torch.where(in_nucleus, top_order, torch.iinfo(torch.int64).max).min(dim=1).values
        nucleus_q = (top_q * in_nucleus).sum(dim=1)
        search = in_nucleus[:, -1] & valid  # the nucleus may reach past the k kept tokens
        if bool(search.any()):
            t, q = _radix_threshold(chunks, lse_or_zero, search, top_p)
            threshold = torch.where(search, t, threshold)
            nucleus_q = torch.where(search, q, nucleus_q)
    lse_nucleus = lse + torch.log(nucleus_q.double() / _MASS_ONE).float()
    top_logprobs = torch.where(top_order >= threshold[:, None], top_s - lse_nucleus[:, None],
                               torch.full_like(top_s, -math.inf))

    if seed is None:
        return top_ids, top_logprobs, top_ids[:, 0], top_logprobs[:, 0], lse
    token = _draw_reference(chunks, lse_or_zero, threshold, seed)
    token_logprob = _scale(logits.gather(1, token[:, None]).squeeze(1), temperature) - lse_nucleus
    return top_ids, top_logprobs, token, token_logprob, lse


def _radix_threshold(chunks, lse, search, top_p):
    """Radix select of the nucleus threshold (module docstring, read 3) on the rows where ``search``.

    Returns ``(tau, nucleus_q)``: the ordered value of the lowest nucleus token and the fixed-point
    mass of the tokens ``>= tau`` (meaningless on the other rows).
    """
    num_rows = lse.shape[0]
    device = lse.device
    limit = _mass_threshold(top_p)
    bins = torch.arange(_RADIX_BINS, device=device)
    prefix = torch.zeros(num_rows, dtype=torch.int64, device=device)  # digits found so far
    above = torch.zeros(num_rows, dtype=torch.int64, device=device)  # mass above the tokens sharing them
    for digit in range(_RADIX_DIGITS):
        shift = 32 - _RADIX_BITS * (digit + 1)
        mass = torch.zeros(num_rows, _RADIX_BINS, dtype=torch.int64, device=device)
        count = torch.zeros_like(mass)
        for _, s in chunks():
            q = _fixed_mass(s, lse[:, None])
            key = ordered_int(s) + (1 << 31)  # unsigned 32-bit image
            member = search[:, None] & (q > 0) & ((key >> (shift + _RADIX_BITS)) == prefix[:, None])
            digit_bin = (key >> shift) & (_RADIX_BINS - 1)
            mass.scatter_add_(1, digit_bin, q * member)
            count.scatter_add_(1, digit_bin, member.long())
        mass_above_bin = above[:, None] + mass.sum(dim=1, keepdim=True) - mass.cumsum(dim=1)
        fits = (count > 0) & (mass_above_bin < limit)
        chosen = torch.where(fits, bins, _RADIX_BINS).min(dim=1).values.clamp(max=_RADIX_BINS - 1)
        prefix = prefix * _RADIX_BINS + chosen
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


# ----------------------------------------------------------------------------- Triton launch


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
    block_v = min(_BLOCK_V, max(16, _random.next_power_of_2(per_split)))
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
    digits = {torch.bfloat16: 2, torch.float16: 3}.get(dtype, _RADIX_DIGITS)
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
    kp = max(2, _random.next_power_of_2(k))
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
    hist_size = digits * num_rows * splits * _RADIX_BINS
    zeroed = torch.zeros(passes * num_rows + hist_size, dtype=torch.int64, device=device)
    counters, hist = zeroed[:passes * num_rows], zeroed[passes * num_rows:]

    limit = _mass_threshold(top_p)
    tail = 1.0 - top_p
    log_tail = math.log(tail / vocab) - 1.0 if tail >= _CANDIDATE_FILTER_MIN_TAIL else -math.inf
    common = dict(BLOCK_V=block_v, VEC=_vector_width(logits, chunk), CONTIG=logits.stride(1) == 1,
                  KEY_SCALED=keys["KEY_SCALED"], num_warps=_NUM_WARPS)
    row_args = (logits, logits.stride(0), logits.stride(1), vocab, chunk, splits, scale, _LOG2E / scale)
    grid = (num_rows, splits)
    _partials_kernel[grid](
        *row_args, limit, part_max, part_sum, part_keys, counters, ids, logprobs, token, token_logprob,
        lse, row_state, K=k, KP=kp, USE_TOP_P=top_p < 1.0, GREEDY=not sample, **common)
    for digit in range(digits):
        _radix_pass_kernel[grid](
            *row_args, limit, log_tail, hist[digit * num_rows * splits * _RADIX_BINS:],
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


if triton is not None:
    import triton.language as tl

    _NONE_KEY: tl.constexpr = tl.constexpr(_KEY_NONE)
    _NEG_INF_ORDER: tl.constexpr = tl.constexpr(_ORDERED_NEG_INF)
    _ONE: tl.constexpr = tl.constexpr(float(_MASS_ONE))
    _COUNT_ONE: tl.constexpr = tl.constexpr(1 << _COUNT_SHIFT)
    _MASS_MASK: tl.constexpr = tl.constexpr((1 << _COUNT_SHIFT) - 1)
    _BINS: tl.constexpr = tl.constexpr(_RADIX_BINS)
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
            low = lse + log_tail  # tokens below cannot be in the nucleus (module docstring)
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


def aot_configs():
    """Launch configurations of :func:`nucleus_triton` as EIS calls it, for the compile lane.

    ``topk_logprobs`` with the EIS default top_k = 5 on 1 and 4 rows; ``sample_logprob`` (k = 8, the
    nucleus probe, at top_p < 1; k = 1 at top_p = 1) on 5 and 20 rows (B * K rollout rows); bf16 /
    fp16 / fp32 at the LLaDA, Dream and SDAR vocabulary widths, 132 SMs (H100), temperature 0.7.
    Each radix digit is a separate configuration.
    """
    if triton is None:
        return []
    import itertools

    from .sample_logprob import _NUCLEUS_PROBE_K

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    calls = [("topk_logprobs", 5, 1, False), ("topk_logprobs", 5, 1, True), ("topk_logprobs", 5, 4, True),
             ("sample_logprob", 1, 5, False), ("sample_logprob", _NUCLEUS_PROBE_K, 5, True),
             ("sample_logprob", _NUCLEUS_PROBE_K, 20, True)]
    configs = []
    for (dtype_name, dtype), vocab, (op, k, rows, use_top_p) in itertools.product(
            dtypes.items(), (126464, 151936, 152064), calls):
        splits, chunk, block_v = _launch_config(rows, vocab, 132)
        width = 16 // dtype.itemsize
        keys = _key_constants(dtype, 0.7)
        common = dict(BLOCK_V=block_v, VEC=width if vocab % width == 0 and chunk % width == 0 else 1, CONTIG=True,
                      KEY_SCALED=keys["KEY_SCALED"])
        kp = max(2, _random.next_power_of_2(k))
        sample = op == "sample_logprob"
        name = f"{op} {dtype_name} V={vocab} rows={rows} k={k} top_p<1={int(use_top_p)} splits={splits}"
        row_sig = {"x_ptr": "*" + dtype_name, "stride_b": "i32", "stride_v": "i32", "vocab": "i32", "chunk": "i32",
                   "num_splits": "i32", "scale": "fp32", "rate": "fp32"}
        out_sig = {"ids_ptr": "*i64", "logprobs_ptr": "*fp32", "token_ptr": "*i64", "token_logprob_ptr": "*fp32",
                   "lse_ptr": "*fp32", "state_ptr": "*i64"}
        configs.append(_aot_dict(
            f"nucleus partials {name}", _partials_kernel,
            dict(row_sig, limit="i64", part_max_ptr="*fp32", part_sum_ptr="*fp32",
                 part_keys_ptr="*i64", counter_ptr="*i64", **out_sig),
            dict(common, K=k, KP=kp, USE_TOP_P=use_top_p, GREEDY=not sample), block_v))
        digits = keys["DIGITS"] if use_top_p else 0
        for digit in range(digits):
            configs.append(_aot_dict(
                f"nucleus radix digit {digit}/{digits} {name}", _radix_pass_kernel,
                dict(row_sig, limit="i64", log_tail="fp32", hist_ptr="*i64", counter_ptr="*i64", **out_sig),
                dict(_scatter_layout(common), K=k, KP=kp, DIGIT=digit, DIGITS=digits, GREEDY=not sample), block_v))
        if sample:
            configs.append(_aot_dict(
                f"nucleus draw {name}", _draw_kernel,
                dict(row_sig, seed_ptr="*i64", part_ptr="*i64", counter_ptr="*i64", token_ptr="*i64",
                     token_logprob_ptr="*fp32", lse_ptr="*fp32", state_ptr="*i64"), common, block_v))
    return configs


def _aot_dict(name, kernel, signature, constexprs, block_v):
    """One registry entry (format: see the ahead-of-time compile lane); arguments in kernel order."""
    import inspect

    params = list(inspect.signature(kernel.fn).parameters)
    full = {p: signature.get(p, "constexpr") for p in params}
    missing = [p for p in params if full[p] == "constexpr" and p not in constexprs]
    if missing:
        raise ValueError(f"{name}: no type or value for {missing}")
    return dict(name=name, kernel=kernel, signature=full,
                constexprs={p: constexprs[p] for p in params if p in constexprs},
                num_warps=_NUM_WARPS, num_stages=3, elements_per_iteration=block_v)
