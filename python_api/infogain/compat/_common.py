"""Pieces the compat modules share: argument checks, the signature-checked ``patch`` and the exact
transfer selection on certified confidences.

Exactness at temperature 0. The originals rank positions by the probability of the arg-max token,
``c = softmax(x)[argmax x]``, computed by torch in a wide dtype (float64 in Fast-dLLM, the logits'
dtype in LLaDA) and select with ``torch.topk``. The fused ops give the same quantity in float32
(``step_stats``' top-1 probability, ``1 / sum exp(x - max)``) in one read. Two float32 values can
order differently from the originals' values only when they lie within the float32 error of each
other, so each position carries an interval ``[c (1 - d), c (1 + d)]`` certain to hold the
original's value (``d`` from :func:`relative_error_bound`). A decision that an interval overlap
leaves open (a top-k boundary, the threshold, the rank-0 position) is settled by computing the
original's own expression on those positions only (a few rows of ``V`` logits). Values the
original would hold equal (exact ties) can only be ordered by ``torch.topk`` itself; its order
among ties depends on the whole row (it is not "lowest index first" on the CPU), so a row with a tie
at a decision gets every position's exact value and the very same ``torch.topk`` call as the
original: the same tokens and the same transfer mask in every case, ties included.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

# Key given to NaN confidences in the overlap analysis: torch.topk ranks NaN above every number and
# a probability never exceeds 1.
_NAN_KEY = 2.0


def check_tensor(name: str, value, *, ndim: int, dtypes: Optional[Tuple[torch.dtype, ...]] = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    if dtypes is not None and value.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype {names}, got {str(value.dtype).replace('torch.', '')}")
    return value


def check_temperature(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {value!r}")
    return float(value)


def check_remasking(value) -> str:
    if value not in ("low_confidence", "random"):
        # The originals raise NotImplementedError here; keep the type so callers' handlers still work.
        raise NotImplementedError(f"remasking must be 'low_confidence' or 'random', got {value!r}")
    return value


def relative_error_bound(target_dtype: torch.dtype) -> float:
    """Relative distance within which the fused float32 confidence and the original's value can lie.

    The native CPU pass sums ``exp(x - max)`` over 1024-wide chunks in 8 float32 lanes (128 terms per
    lane), reduces the lanes, adds about ``V / 1024`` chunk sums and rescales at most once per chunk;
    with its ~20-ulp exponential that bounds the float32 error by about ``530 * 2**-24 = 3.2e-5`` at
    ``V = 126464`` (the Triton split-K pass has fewer terms per accumulator). 1e-4 covers it with room
    and the float64 originals' own error (``~V * 2**-53``). An original computing in float32 or
    narrower (LLaDA's softmax in the logits' dtype) adds its own float32 summation error: 1e-3.
    """
    return 1e-4 if target_dtype == torch.float64 else 1e-3


def _interval(approx: torch.Tensor, target_dtype: torch.dtype, rel: float):
    """``(value, lo, hi, point)`` float64 [B, L] around the approximations ``approx``."""
    lo = approx * (1.0 - rel)
    hi = approx * (1.0 + rel)
    point = torch.zeros_like(approx, dtype=torch.bool)
    if target_dtype != torch.float64:
        # The original rounds to its dtype: where both ends round alike, so does its value
        # (rounding is monotone), and the interval collapses to that point.
        lo_t, hi_t = lo.to(target_dtype), hi.to(target_dtype)
        point = lo_t == hi_t
        rounded = lo_t.to(torch.float64)
        lo = torch.where(point, rounded, lo)
        hi = torch.where(point, rounded, hi)
        approx = torch.where(point, rounded, approx)
    return approx, lo, hi, point


class Certified:
    """Confidences as intervals, refined on demand to the original's exact values.

    ``approx`` float64 [B, L]: the fused estimate at eligible positions; ``known`` bool [B, L]:
    positions whose exact value is already in ``approx`` (e.g. ``-inf`` at positions not eligible);
    ``exact_fn(rows_b, rows_l) -> float64 [n]``: the original's expression at those positions.
    """

    def __init__(self, approx: torch.Tensor, known: torch.Tensor, eligible: torch.Tensor,
                 exact_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 target_dtype: torch.dtype):
        value, lo, hi, point = _interval(approx, target_dtype, relative_error_bound(target_dtype))
        self.value = torch.where(known, approx, value)
        self.lo = torch.where(known, approx, lo)
        self.hi = torch.where(known, approx, hi)
        self.point = point | known
        self.eligible = eligible
        self.exact_fn = exact_fn

    def refine(self, where: torch.Tensor) -> None:
        where = where & ~self.point
        rows_b, rows_l = where.nonzero(as_tuple=True)
        if rows_b.numel() == 0:
            return
        exact = self.exact_fn(rows_b, rows_l).to(torch.float64)
        self.value[rows_b, rows_l] = exact
        self.lo[rows_b, rows_l] = exact
        self.hi[rows_b, rows_l] = exact
        self.point[rows_b, rows_l] = True

    def keys(self):
        """``(lo, hi)`` with NaN mapped above every probability, for the overlap analysis."""
        nan = torch.isnan(self.value)
        return self.lo.masked_fill(nan, _NAN_KEY), self.hi.masked_fill(nan, _NAN_KEY)

    def whole_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """[B, L] mask of every still-uncertain position in the rows flagged by ``rows`` [B]."""
        return rows[:, None] & ~self.point


def _topk_undecided(conf: Certified, k: torch.Tensor) -> torch.Tensor:
    """Positions to refine before ``topk(value, k_b)`` per row equals the original's selection."""
    lo, hi = conf.keys()
    width = lo.shape[1]
    # Rank by the surrogate (NaN first, as topk does); inS = the k_b best of the row.
    order = torch.sort(torch.where(torch.isnan(conf.value), _NAN_KEY, conf.value), dim=1,
                       descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(width, device=order.device).expand_as(order))
    in_sel = rank < k[:, None]
    inf = torch.tensor(math.inf, dtype=torch.float64, device=lo.device)
    low_in = torch.where(in_sel, lo, inf).amin(1)          # lowest possible value selected
    high_out = torch.where(in_sel, -inf, hi).amax(1)       # highest possible value left out
    open_rows = low_in <= high_out
    overlap = ~conf.point & open_rows[:, None] & ((in_sel & (lo <= high_out[:, None]))
                                                  | (~in_sel & (hi >= low_in[:, None])))
    # Rows still open with every overlapping value exact hold a tie: all of such a row goes exact.
    tied = open_rows & ~overlap.any(1)
    return overlap | conf.whole_rows(tied)


def _threshold_undecided(conf: Certified, threshold: float) -> torch.Tensor:
    lo, hi = conf.keys()
    eligible = conf.eligible
    straddle = eligible & ~conf.point & (lo < threshold) & (hi >= threshold)
    # The rank-0 position matters only when the best value is below the threshold (otherwise it
    # passes the threshold like every other kept one).
    inf = torch.tensor(math.inf, dtype=torch.float64, device=lo.device)
    best_low = torch.where(eligible, lo, -inf).amax(1)
    contenders = eligible & (hi >= best_low[:, None])
    open_rows = (best_low < threshold) & (contenders.sum(1) > 1)
    overlap = contenders & ~conf.point & open_rows[:, None]
    tied = open_rows & ~overlap.any(1)
    return straddle | overlap | conf.whole_rows(tied)


def _topk_groups(value: torch.Tensor, k: torch.Tensor):
    """Yield ``(rows, torch.topk(value[rows], k_value).indices)`` for each distinct k_value > 0 of ``k``
    [B]: rows sharing k go through one call (topk treats the rows of a batch independently)."""
    for k_value in sorted(set(k.tolist())):
        if k_value:
            rows = (k == k_value).nonzero().squeeze(1)
            yield rows, torch.topk(value[rows], k_value, dim=1).indices


def select_transfer(conf: Certified, k: Optional[torch.Tensor], threshold: Optional[float],
                    *, certify: bool = True) -> torch.Tensor:
    """The transfer mask of the originals' selection (bool [B, L]).

    Without ``threshold``: the positions of ``torch.topk(confidence[b], k_b)``. With it: ``k_b`` is the
    row's number of eligible positions, the first ``topk`` position is always kept and every other
    one is kept unless its confidence is below ``threshold``. ``certify=False`` (values already exact
    or only a distribution is promised) skips the refinement.
    """
    if threshold is not None:
        k = conf.eligible.sum(1)
    while certify:
        undecided = (_threshold_undecided(conf, threshold) if threshold is not None
                     else _topk_undecided(conf, k))
        if not bool(undecided.any()):
            break
        conf.refine(undecided)
    out = torch.zeros_like(conf.eligible)
    for rows, picked in _topk_groups(conf.value, k):
        if threshold is None:
            out[rows[:, None], picked] = True
        else:
            out[rows, picked[:, 0]] = True
    return out if threshold is None else out | (conf.eligible & ~(conf.value < threshold))


def check_counts(name: str, value, batch: int, width: int, device: torch.device) -> torch.Tensor:
    """Per-row transfer counts as int64 [B] in [0, width] (a tensor of B entries or a sequence)."""
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got {str(value.dtype).replace('torch.', '')}")
        counts = value.reshape(-1).to(device=device, dtype=torch.int64)
    elif isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        counts = torch.tensor(value, dtype=torch.int64, device=device)
    else:
        raise TypeError(f"{name} must be a tensor or a sequence of {batch} integers, got {type(value).__name__}")
    if counts.numel() != batch:
        raise ValueError(f"{name} must hold one count per row ({batch}), got {counts.numel()}")
    if bool(((counts < 0) | (counts > width)).any()):
        raise ValueError(f"{name} must lie in [0, {width}] (the row length), got {counts.tolist()}")
    return counts


# ---- patch() --------------------------------------------------------------------------------------

def _signature_facts(func) -> Tuple:
    return tuple((p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values())


def patch_module(module, replacements: Dict[str, Callable], *, required: Sequence[str] = ()) -> Tuple[str, ...]:
    """Replace ``module.<name>`` by ``replacements[name]`` for the names the module defines.

    Each original must have exactly the replacement's parameters (names, kinds, defaults), else
    TypeError names the function and both signatures and nothing is replaced. Calling it again is a
    no-op. The originals are kept in ``module.__infogain_originals__``. Returns the names that now
    point at the replacements, in ``replacements``' order.
    """
    if not inspect.ismodule(module):
        raise TypeError(f"module must be a module object (the one you imported), got {type(module).__name__}")
    present = [name for name in replacements if hasattr(module, name)]
    missing = [name for name in required if name not in present]
    if missing or not present:
        raise AttributeError(f"module {module.__name__!r} defines none of / lacks the functions to patch: "
                             f"needs {', '.join(missing or list(replacements))}")
    for name in present:
        current, new = getattr(module, name), replacements[name]
        if current is new:
            continue
        if not callable(current):
            raise TypeError(f"{module.__name__}.{name} is not a function ({type(current).__name__})")
        if _signature_facts(current) != _signature_facts(new):
            raise TypeError(f"{module.__name__}.{name} has signature {inspect.signature(current)}, not the known "
                            f"{inspect.signature(new)}: refusing to patch (this version is not the one supported)")
    originals = module.__dict__.setdefault("__infogain_originals__", {})
    for name in present:
        if getattr(module, name) is not replacements[name]:
            originals[name] = getattr(module, name)
            setattr(module, name, replacements[name])
    return tuple(present)
