"""Cascade vs stacked attention for candidate batches: where does the cascade start to pay?

A lookahead batch of N candidates per cache row attends to S shared (cached) keys plus each
candidate's own W window keys. :func:`infogain.models.attention.cascade_attention` runs two
attentions (shared part with all candidates' queries stacked, own part per candidate) and a
float32 LSE merge; :func:`infogain.models.attention.stacked_attention` runs one attention over
[shared | all candidates' windows] with a block-diagonal mask. This script times both per layer
call (the mask is built once per forward and shared by the layers, so it is not timed) over S and
prints the crossover that ``CASCADE_MIN_SHARED_KEYS`` / ``STACKED_MAX_OWN_KEYS`` in attention.py record.

    python benches/bench_attention.py --threads 1            # the measurement behind the threshold
    python benches/bench_attention.py --quick                # smoke run
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    add_case_arguments, add_output_arguments, apply_threads, device_and_dtype, median_time, output_path,
    print_table, write_results)

from infogain._runtime import threads as _threads  # noqa: E402
from infogain.models import attention  # noqa: E402

# (heads, head_dim): the toy model and the 52M-parameter LLaDA-architecture model of the README.
HEAD_SHAPES = ((4, 32), (8, 64))
WINDOWS = (8, 32)
SHARED = (32, 128, 256, 512, 1024, 2048)


def measure(device, dtype, heads, head_dim, n, window, shared, repeats):
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    q = rand(n, heads, window, head_dim)
    shared_k, shared_v = rand(1, heads, shared, head_dim), rand(1, heads, shared, head_dim)
    own_k, own_v = rand(n, heads, window, head_dim), rand(n, heads, window, head_dim)
    mask = attention.stacked_mask(None, None, groups=1, per_group=n, queries=window, shared_keys=shared,
                                  own_keys=window, device=device)
    cascade_s = median_time(lambda: attention.cascade_attention(q, shared_k, shared_v, own_k, own_v), device,
                            repeats=repeats)
    stacked_s = median_time(lambda: attention.stacked_attention(q, shared_k, shared_v, own_k, own_v, mask), device,
                            repeats=repeats)
    return {"heads": heads, "head_dim": head_dim, "candidates": n, "window": window, "shared_keys": shared,
            "cascade_ms": cascade_s * 1e3, "stacked_ms": stacked_s * 1e3, "cascade_speedup": stacked_s / cascade_s}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_arguments(parser, quick="two sizes, few repeats (smoke run)", dtype="float32")
    parser.add_argument("--candidates", type=int, default=8)
    _threads.add_threads_argument(parser)
    add_output_arguments(parser, "attention")
    args = parser.parse_args(argv)
    threads = apply_threads(args.threads)
    device, dtype = device_and_dtype(args)
    print(f"attention choice on {device}, {args.dtype}, {threads} thread(s)")
    sizes = (32, 512) if args.quick else SHARED
    repeats = 3 if args.quick else 20
    rows = []
    for heads, head_dim in HEAD_SHAPES[:1] if args.quick else HEAD_SHAPES:
        for window in WINDOWS[:1] if args.quick else WINDOWS:
            for shared in sizes:
                rows.append(measure(device, dtype, heads, head_dim, args.candidates, window, shared, repeats))
    print_table(rows, list(rows[0]))
    for heads, head_dim in HEAD_SHAPES:
        for window in WINDOWS:
            paying = [r["shared_keys"] for r in rows if (r["heads"], r["head_dim"], r["window"]) ==
                      (heads, head_dim, window) and r["cascade_speedup"] > 1]
            if any((r["heads"], r["window"]) == (heads, window) for r in rows):
                print(f"H={heads} D={head_dim} W={window}: cascade faster from S = "
                      f"{min(paying) if paying else 'never (measured range)'}")
    print(f"current thresholds: CASCADE_MIN_SHARED_KEYS={attention.CASCADE_MIN_SHARED_KEYS}, "
          f"STACKED_MAX_OWN_KEYS={attention.STACKED_MAX_OWN_KEYS}")
    print("wrote", write_results(output_path(args, "attention", device), "attention", device, rows,
                                 dtype=args.dtype, torch_threads=threads))


if __name__ == "__main__":
    main()
