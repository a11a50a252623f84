"""CPU thread policy of the demo, the CLI and the benchmarks: one place decides, every timing says.

torch's default intra-op thread count is the number of logical CPUs. On a small or busy machine
that is the worst choice for this workload: a decoding step is many small ops, each parallel region
costs a synchronisation of every thread, and hyper-threads share one core's vector units. Measured
on a 2-core machine with another job running, the ops ran up to 6x slower at 2 threads than at 1.

The policy (:func:`choose_threads`): the ``--threads`` flag, else the ``INFOGAIN_THREADS``
environment variable, else 1 for tiny work (a forward of fewer than :data:`TINY_WORK` parameters x
tokens: its matrix products take microseconds and threading only adds synchronisation; the shipped
toy model decoding one prompt), else the physical cores available to this process that other work
leaves free (at least 1; the last minute's load average, checked against the present when it
reports other work, see :func:`free_cores`): on a busy machine extra threads wait on each other
(measured here: the demo's sudoku runs took 3.7 s at 1 thread and 38 s at 2 with another job
running). When several processes of one run share the machine (data-parallel ranks of ``infogain
eval`` or of the lm-evaluation-harness model under torchrun / accelerate launch, counted by
:func:`local_world_size`), each takes its share of those cores; the flag and the variable are per
process. The
library itself never changes the thread count; the entry points call :func:`apply_threads` and
print and record the result.
"""
from __future__ import annotations

import argparse
import os
import re
import time
from typing import Optional

import torch

from infogain_kernels._validation import check_positive_int

ENV_VAR = "INFOGAIN_THREADS"
# Parameters x tokens of one forward below which one thread is best: the toy model (0.66M
# parameters) decoding one prompt (~24 tokens per forward) is far below it; 100 demo prompts of
# ~40 tokens are far above.
TINY_WORK = 50_000_000


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


def _decimal(value) -> Optional[int]:
    """An int, or the int its decimal text spells (``"3"``, not ``"3.0"``); None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = value.strip() if isinstance(value, str) else ""
    return int(text) if re.fullmatch(r"[-+]?[0-9]+", text) else None


def _positive_int(name: str, value) -> int:
    number = _decimal(value)
    if number is None:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return check_positive_int(name, number)


def launch_variable(name: str, default: int) -> int:
    """An integer that torchrun / accelerate launch set for this process (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``), ``default`` when unset; ValueError naming it otherwise."""
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    number = _decimal(value)
    if number is None:
        raise ValueError(f"environment variable {name}={value!r} is not an integer")
    return number


def local_world_size() -> int:
    """The processes of this run on this machine: ``LOCAL_WORLD_SIZE``, else ``WORLD_SIZE``, else 1."""
    return launch_variable("LOCAL_WORLD_SIZE", launch_variable("WORLD_SIZE", 1))


# How long :func:`busy_cpus_now` watches the machine (seconds): 10 ticks of /proc/stat per CPU.
BUSY_SAMPLE_S = 0.1


def busy_cpus_now(sample_s: float = BUSY_SAMPLE_S) -> Optional[float]:
    """Logical CPUs kept busy by other work right now (this process sleeps while it watches): the busy
    share of the machine's CPU time in /proc/stat over ``sample_s``, times its CPU count. None where
    there is no /proc/stat."""
    def snapshot():
        with open("/proc/stat") as fh:
            lines = fh.read().splitlines()
        # cpu user nice system idle iowait irq softirq steal (guest time is inside user)
        fields = [int(x) for x in lines[0].split()[1:9]]
        return sum(fields), fields[3] + fields[4], sum(1 for line in lines[1:] if line.startswith("cpu"))

    try:
        total_0, idle_0, _ = snapshot()
        time.sleep(sample_s)
        total_1, idle_1, cpus = snapshot()
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total_1 - total_0
    if elapsed <= 0 or cpus < 1:
        return None
    return (1.0 - (idle_1 - idle_0) / elapsed) * cpus


def free_cores() -> int:
    """Physical cores the machine's load leaves free, at least 1.

    One unit of the last minute's load average is taken to be this process (or the run just before
    it); the rest is other work, whose cores are not free. The average also remembers work that has
    just ended (a benchmark run a moment ago reads as a busy core for about a minute), so when it
    reports other work, :func:`busy_cpus_now` checks the present and the smaller count wins: work
    that is really running shows in both."""
    cores = physical_cores()
    try:
        others = max(0, int(round(os.getloadavg()[0])) - 1)
    except (AttributeError, OSError):  # no load average on this platform
        others = 0
    if others:
        busy = busy_cpus_now()
        if busy is not None:
            logical_per_core = max(1, (os.cpu_count() or cores) // cores)
            others = min(others, int(round(busy / logical_per_core)))
    return max(1, cores - others)


def choose_threads(threads: Optional[int] = None, *, num_parameters: Optional[int] = None,
                   tokens_per_forward: int = 1, local_processes: Optional[int] = None) -> int:
    """The thread count to use: ``threads`` if given, else ``$INFOGAIN_THREADS``, else 1 when
    ``num_parameters * tokens_per_forward`` is below :data:`TINY_WORK`, else :func:`free_cores`
    divided among the ``local_processes`` processes of the run on this machine (at least 1 each;
    None: :func:`local_world_size`, from the launcher's environment)."""
    local_processes = _positive_int("local_processes",
                                    local_world_size() if local_processes is None else local_processes)
    if threads is not None:
        return _positive_int("--threads", threads)
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return _positive_int(ENV_VAR, env)
    if num_parameters is not None and num_parameters * max(1, tokens_per_forward) < TINY_WORK:
        return 1
    return max(1, free_cores() // local_processes)


def apply_threads(threads: Optional[int] = None, *, num_parameters: Optional[int] = None,
                  tokens_per_forward: int = 1, local_processes: Optional[int] = None) -> int:
    """:func:`choose_threads`, then ``torch.set_num_threads``; returns the count now in effect."""
    count = choose_threads(threads, num_parameters=num_parameters, tokens_per_forward=tokens_per_forward,
                           local_processes=local_processes)
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
                        help=f"CPU threads for torch (default: ${ENV_VAR}, else 1 for tiny work such as the "
                             f"toy model on one prompt, else the physical cores the machine's load leaves free)")
