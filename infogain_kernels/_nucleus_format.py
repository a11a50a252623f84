"""Number formats shared by the two implementations of the nucleus engine (the torch reference in
:mod:`._nucleus` and the kernels in :mod:`._nucleus_triton`): rank keys, fixed-point masses, the radix
digits of the threshold search. Both paths must use the same constants for their totals and their
rankings to agree; see docs/kernels.md ("Nucleus engine") for the definitions.
"""
from __future__ import annotations

import math

# Top-k width kept in the first read when sampling with top_p < 1: a nucleus inside it
# needs no radix search.
NUCLEUS_PROBE_K = 8

# A rank key is (order-preserving int32 image of the score) << 32 | (2**32 - 1 - token id).
LOW_BITS = 1 << 32
# Order-preserving int32 image of -inf.
ORDERED_NEG_INF = -2139095041
# Key smaller than every real key (real keys are >= ORDERED_NEG_INF << 32).
KEY_NONE = -2147483647 * LOW_BITS

# Fixed-point mass: q = floor(p * 2**40); histogram bins add (1 << 42) per token for the count.
MASS_BITS = 40
MASS_ONE = 1 << MASS_BITS
COUNT_SHIFT = 42
RADIX_BITS = 8
RADIX_BINS = 1 << RADIX_BITS
RADIX_DIGITS = 32 // RADIX_BITS
# The Triton passes skip tokens below lse + log((1 - top_p) / V) - 1 only when 1 - top_p is at least
# this: the bound on tau then holds with a wide margin for float32 rounding of lse.
CANDIDATE_FILTER_MIN_TAIL = 1e-3


def mass_threshold(top_p: float) -> int:
    """Smallest fixed-point mass that is not ``< top_p`` (``q < result`` <=> ``q / 2**40 < top_p``)."""
    return math.ceil(top_p * MASS_ONE)
