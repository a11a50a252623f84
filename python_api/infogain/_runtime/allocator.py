"""glibc malloc settings of the entry points: freed activation memory is kept for reuse.

A forward on the CPU allocates and frees the same few activation tensors of a few megabytes at
every op (torch's CPU allocator is plain ``malloc``). With glibc's defaults such blocks keep going
back to the kernel: blocks above the mmap threshold are mapped and unmapped on every allocation,
and freed memory at the top of the heap above the trim threshold is released, so the next
allocation of the same size page-faults on every page and the kernel zeroes it again. That made
memory-bound elementwise ops about ten times slower than their arithmetic: measured on the demo's
toy-model forward ([100, 33] tokens, 2 threads, idle-ish 2-core machine), 46 ms per forward with
the defaults and 33 ms with the thresholds below; one float32 RMSNorm of [100, 33, 128] took
1.18 ms and 0.09 ms.

:func:`keep_freed_memory` raises the mmap threshold to :data:`MMAP_THRESHOLD` (setting it also
stops glibc's dynamic adjustment) and the trim threshold to :data:`TRIM_THRESHOLD`: blocks below
the first come from the heap, and up to the second of free heap is kept. The process may then
hold that much freed memory. The library never changes the allocator: the entry points (the demo
and the ``infogain`` command) call this, like the thread policy (:mod:`infogain._runtime.threads`). It does
nothing off glibc, and nothing when the user set glibc's own ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` environment variables (theirs apply).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

MMAP_THRESHOLD = 32 << 20    # glibc's own ceiling for its dynamic threshold on 64-bit machines
TRIM_THRESHOLD = 128 << 20
# mallopt parameter numbers from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_applied = False


def keep_freed_memory() -> bool:
    """Apply the thresholds above once per process; returns whether they are in effect."""
    global _applied
    if _applied:
        return True
    if any(name in os.environ for name in _USER_SETTINGS) or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success
    _applied = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return _applied
