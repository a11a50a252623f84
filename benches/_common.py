"""Shared plumbing for the benchmark scripts: timing, peak memory, device facts, JSON output.

Every script measures its baseline in the same run, prints a table and writes one JSON record;
this module keeps that format identical across them. Where the record goes
(:func:`add_output_arguments`): ``--out PATH``, else ``<name>-<device>.json`` in the working
directory. The tracked files under ``benches/results/`` are only written when asked for, with
``--update-results`` (or ``--out benches/results/...``). A script that fails writes nothing.
"""
from __future__ import annotations

import gc
import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# Peak HBM bandwidth (bytes/s) of the GPUs this project is measured on, from the vendors' data sheets.
_PEAK_BANDWIDTH = {
    "H100 80GB HBM3": 3.35e12,
    "H100 PCIe": 2.0e12,
    "H100": 3.35e12,
    "H200": 4.8e12,
    "A100-SXM4-80GB": 2.04e12,
    "A100": 1.555e12,
}


def device_name(device: torch.device) -> str:
    """The GPU's name, or for the CPU its model (from /proc/cpuinfo where there is one), architecture
    and hardware thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = cpu_model()
    return f"cpu ({model + ', ' if model else ''}{platform.processor() or platform.machine()}, {os.cpu_count()} threads)"


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it ("" where it does not, e.g. off Linux)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def device_slug(device: torch.device) -> str:
    """Short file-name tag: ``cpu``, ``h100``, ``h200`` ..."""
    if device.type != "cuda":
        return "cpu"
    from infogain._device import gpu_tag

    return gpu_tag(torch.cuda.get_device_name(device)) or "cuda"


# Dense bf16 tensor-core peak (flop/s), from the vendors' data sheets.
_PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def _by_gpu_name(device: torch.device, table: Dict[str, float]) -> Optional[float]:
    """The first entry of ``table`` whose key is part of the CUDA device's name (None on CPU / unknown)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in table.items():
        if key in name:
            return value
    return None


def peak_bandwidth(device: torch.device) -> Optional[float]:
    return _by_gpu_name(device, _PEAK_BANDWIDTH)


def peak_bf16_flops(device: torch.device) -> Optional[float]:
    return _by_gpu_name(device, _PEAK_BF16_FLOPS)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device, *, warmup: int = 3, repeats: int = 10,
                min_time_s: float = 0.0) -> float:
    """Median wall time of ``fn()`` in seconds (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: List[float] = []
    start_all = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start_all < min_time_s:
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        if len(times) >= 10 * repeats:
            break
    return statistics.median(times)


def peak_extra_memory(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Peak bytes allocated by ``fn()`` above what was live before it.

    CUDA: the caching allocator's peak. CPU: replays the profiler's allocation
    timeline (every tensor create / destroy in order). Summing per-op
    ``cpu_memory_usage`` instead would count a child op's allocation again in
    each parent and misplace frees made inside Python custom ops.
    """
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        fn()
    live = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return peak


def environment(device: torch.device) -> Dict[str, object]:
    info: Dict[str, object] = {
        "device": device_name(device),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }
    from infogain.evaluation.generation import source_commit

    # The commit measured ("-dirty": with uncommitted changes), so a tracked record names its source.
    info["git_commit"] = source_commit()
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
        info["peak_bandwidth_bytes_per_s"] = peak_bandwidth(device)
    return info


def add_output_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """``--out PATH`` and ``--update-results``: where :func:`output_path` puts the JSON record."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="PATH", default=None,
                       help=f"JSON output path (default: ./{name}-<device>.json in the working directory)")
    where.add_argument("--update-results", action="store_true",
                       help=f"write the repository's tracked benches/results/{name}-<device>.json")


def output_path(args: argparse.Namespace, name: str, device: torch.device) -> str:
    """The record's path from the options of :func:`add_output_arguments`."""
    file_name = f"{name}-{device_slug(device)}.json"
    if args.out:
        return args.out
    if args.update_results:
        return os.path.join(RESULTS_DIR, file_name)
    return file_name


def write_results(path: str, name: str, device: torch.device, rows: List[Dict[str, object]], **extra) -> str:
    """Write the JSON record of benchmark ``name`` to ``path`` (see :func:`output_path`); return ``path``.
    Call it only once the benchmark has succeeded."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    record = {"benchmark": name, "environment": environment(device), "rows": rows, **extra}
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    return path


def print_table(rows: List[Dict[str, object]], columns: List[str]) -> None:
    from infogain.apps._cliutil import format_table

    print(format_table(rows, columns))


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads``: torch CPU threads, read back by :func:`apply_threads`."""
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: $INFOGAIN_THREADS, else the physical cores)")


def apply_threads(threads: Optional[int] = None) -> int:
    """Set torch's CPU threads by the package's policy (``infogain._runtime.threads``: ``--threads``, else
    ``$INFOGAIN_THREADS``, else the physical cores) and return the count; print it with the table
    (:func:`environment` records it in the JSON)."""
    try:
        from infogain._runtime import threads as _threads
    except ImportError:  # run from a checkout without installing: the package sits next to benches/
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python_api"))
        from infogain._runtime import threads as _threads

    return _threads.apply_threads(threads)


def add_thread_counts_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads 0,1``: the torch CPU thread counts each CPU case runs at (see :func:`threads_to_run`)."""
    parser.add_argument("--threads", default="0,1",
                        help="comma-separated torch CPU thread counts to run each CPU case at; 0 = the package's "
                             "default (infogain._runtime.threads; on an oversubscribed machine 1 gives stable timings). "
                             "Ignored on CUDA.")


def threads_to_run(args: argparse.Namespace, device: torch.device) -> Tuple[List[int], int]:
    """(the thread counts of ``--threads``, each once, 0 read as the default; the default count):
    the default is applied by the package's policy (:func:`apply_threads`); on CUDA only it runs."""
    default = apply_threads()
    if device.type == "cuda":
        return [default], default
    return list(dict.fromkeys(int(n) or default for n in args.threads.split(","))), default


def pick_device(arg: Optional[str] = None) -> torch.device:
    if arg:
        return torch.device(arg)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def add_case_arguments(parser: argparse.ArgumentParser, *, quick: str, dtype: Optional[str] = "bfloat16") -> None:
    """``--quick`` (a smoke run; ``quick`` says what it shortens), ``--device`` and, unless ``dtype``
    is None, ``--dtype`` (default ``dtype``) of the measured tensors; read them back with
    :func:`device_and_dtype`."""
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    if dtype is not None:
        parser.add_argument("--dtype", default=dtype, choices=["bfloat16", "float16", "float32"])


def device_and_dtype(args: argparse.Namespace) -> Tuple[torch.device, Optional[torch.dtype]]:
    """The device and dtype chosen by the options of :func:`add_case_arguments`."""
    dtype = getattr(args, "dtype", None)
    return pick_device(args.device), (getattr(torch, dtype) if dtype is not None else None)
