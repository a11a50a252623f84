"""CPU thread policy of the demo, the CLI and the benchmarks: one place decides, every timing says.

torch's default intra-op thread count is the number of logical CPUs. On a small or busy machine
that is the worst choice for this workload: a decoding step is many small ops, each parallel region
costs a synchronisation of every thread, and hyper-threads share one core's vector units. Measured
on a 2-core machine with another job running, the ops ran up to 6x slower at 2 threads than at 1.

The policy (:func:`choose_threads`): the ``--threads`` flag, else the ``INFOGAIN_THREADS``
environment variable, else the number of physical cores available to this process, and 1 for a
tiny model (fewer than :data:`TINY_MODEL_PARAMETERS` parameters: its matrices are too small to
split). The library itself never changes the thread count; the entry points call
:func:`apply_threads` and print and record the result.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional

import torch

ENV_VAR = "INFOGAIN_THREADS"
# Below this many parameters a forward's matrix products take microseconds: threading only adds
# synchronisation (the shipped toy model has about 1M).
TINY_MODEL_PARAMETERS = 5_000_000


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-thread siblings count once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as fh:
                cores.add(fh.read().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def _positive_int(name: str, value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1 or str(number) != str(value).strip():
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


def choose_threads(threads: Optional[int] = None, *, num_parameters: Optional[int] = None) -> int:
    """The thread count to use: ``threads`` if given, else ``$INFOGAIN_THREADS``, else physical
    cores (1 when ``num_parameters`` is below :data:`TINY_MODEL_PARAMETERS`)."""
    if threads is not None:
        return _positive_int("--threads", threads)
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return _positive_int(ENV_VAR, env)
    if num_parameters is not None and num_parameters < TINY_MODEL_PARAMETERS:
        return 1
    return physical_cores()


def apply_threads(threads: Optional[int] = None, *, num_parameters: Optional[int] = None) -> int:
    """:func:`choose_threads`, then ``torch.set_num_threads``; returns the count now in effect."""
    count = choose_threads(threads, num_parameters=num_parameters)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return torch.get_num_threads()


def model_parameters(model) -> Optional[int]:
    """Parameter count of a torch module (None for anything else)."""
    try:
        return sum(p.numel() for p in model.parameters())
    except (AttributeError, TypeError):
        return None


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads N`` (default None: the policy above) to ``parser``."""
    parser.add_argument("--threads", type=int, default=None,
                        help=f"CPU threads for torch (default: ${ENV_VAR}, else the physical cores; "
                             f"1 for a tiny model such as the toy)")
