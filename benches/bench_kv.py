"""Multi-layer KV block replacement (one op call) against the per-layer Python loop.

The dual-cache decode step writes the block's fresh K/V into every layer's cache. The baseline
is what the reference samplers do: for each layer, ``cache[:, :, s:s+L].copy_(block)`` for K and
for V (2 x layers small copies). A second variant gives every row its own offset and source row
(lookahead commit, offsets on the device); its baseline reads the offsets to the host once
(``.tolist()``, as the references' ``nonzero()`` does) and loops over layers and rows.

Shapes: LLaDA-8B (32 layers, 32 KV heads, head dim 128) and Dream-7B (28 layers, 4 KV heads,
head dim 128), cache length T = 1024 (``--quick``: 256; the copied bytes do not depend on T),
block L = 32, batch B = 1 and 8, layout [B, H, T, D]. dtype bf16 unless ``--dtype`` says otherwise.

    python benches/bench_kv.py [--quick] [--device cuda|cpu] [--dtype bfloat16|float32|float16] [--threads N]

Writes ./kv-<device>.json (``--out PATH``; ``--update-results`` for the
tracked benches/results/kv-<device>.json).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    add_case_arguments, add_output_arguments, add_threads_argument, apply_threads,
    device_and_dtype, median_time, output_path, peak_bandwidth, print_table, write_results)

import infogain_kernels  # noqa: E402
from infogain_kernels import _C  # noqa: E402

MODELS = {
    "LLaDA-8B": dict(layers=32, heads=32, head_dim=128),
    "Dream-7B": dict(layers=28, heads=4, head_dim=128),
}
BLOCK = 32
BLOCK_START = 512  # where the block sits in a T = 1024 cache (clamped for --quick)


def build(model: Dict[str, int], batch: int, cache_len: int, dtype: torch.dtype, device: torch.device):
    """K and V caches and fresh blocks for every layer, as the list [k_0, v_0, k_1, v_1, ...]."""
    shape_cache = (batch, model["heads"], cache_len, model["head_dim"])
    shape_block = (batch, model["heads"], BLOCK, model["head_dim"])
    caches = [torch.zeros(shape_cache, dtype=dtype, device=device) for _ in range(2 * model["layers"])]
    blocks = [torch.randn(shape_block, device=device).to(dtype) for _ in range(2 * model["layers"])]
    return caches, blocks


def loop_uniform(caches, blocks, start):
    for cache, block in zip(caches, blocks):
        cache[:, :, start : start + BLOCK].copy_(block)


def loop_per_row(caches, blocks, dst, rows):
    dst_host, rows_host = dst.tolist(), rows.tolist()
    for cache, block in zip(caches, blocks):
        for b, (d, r) in enumerate(zip(dst_host, rows_host)):
            cache[b, :, d : d + BLOCK].copy_(block[r])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_case_arguments(parser, quick="T = 256 and fewer repeats")
    add_threads_argument(parser)
    add_output_arguments(parser, "kv")
    args = parser.parse_args(argv)
    device, dtype = device_and_dtype(args)
    apply_threads(args.threads)
    cache_len = 256 if args.quick else 1024
    start = min(BLOCK_START, cache_len - 2 * BLOCK)
    repeats = 25 if args.quick else 30
    peak = peak_bandwidth(device)

    rows: List[Dict[str, object]] = []
    for name, model in MODELS.items():
        for batch in (1, 8):
            caches, blocks = build(model, batch, cache_len, dtype, device)
            copied = sum(b.numel() * b.element_size() for b in blocks)
            gen = torch.Generator().manual_seed(batch)
            dst = torch.randint(0, cache_len - BLOCK + 1, (batch,), generator=gen).to(device)
            src_rows = torch.randint(0, batch, (batch,), generator=gen).to(device)
            variants = {
                "same offset": (
                    lambda: loop_uniform(caches, blocks, start),
                    lambda: infogain_kernels.kv_block_replace(caches, blocks, start),
                ),
                "per-row offset+src_rows": (
                    lambda: loop_per_row(caches, blocks, dst, src_rows),
                    lambda: infogain_kernels.kv_block_replace(caches, blocks, dst, src_rows=src_rows),
                ),
            }
            for variant, (loop_fn, fused_fn) in variants.items():
                # Correctness guard: from zeroed caches both paths must leave identical caches.
                for c in caches:
                    c.zero_()
                loop_fn()
                expected = [c.clone() for c in caches]
                for c in caches:
                    c.zero_()
                fused_fn()
                if not all(torch.equal(c, e) for c, e in zip(caches, expected)):
                    raise RuntimeError(f"kv_block_replace disagrees with the loop for {name} B={batch} {variant}")
                del expected
                t_loop = median_time(loop_fn, device, repeats=repeats)
                t_fused = median_time(fused_fn, device, repeats=repeats)
                row = {
                    "model": name,
                    "B": batch,
                    "T": cache_len,
                    "L": BLOCK,
                    "tensors": len(caches),
                    "variant": variant,
                    "dtype": args.dtype,
                    "bytes_copied": copied,
                    "loop_ms": t_loop * 1e3,
                    "fused_ms": t_fused * 1e3,
                    "speedup": t_loop / t_fused,
                    # read + write of the block bytes per unit time
                    "fused_GBps": 2 * copied / t_fused / 1e9,
                }
                if peak:
                    row["fused_fraction_of_peak"] = 2 * copied / t_fused / peak
                rows.append(row)
            del caches, blocks

    columns = ["model", "B", "variant", "tensors", "bytes_copied", "loop_ms", "fused_ms", "speedup", "fused_GBps"]
    if peak:
        columns.append("fused_fraction_of_peak")
    print_table(rows, columns)
    path = write_results(output_path(args, "kv", device), "kv",
        device,
        rows,
        quick=args.quick,
        threads=torch.get_num_threads(),
        baseline="per-layer Python loop of cache[:, :, s:s+L].copy_(block) (per-row variant: offsets read "
        "to the host with .tolist(), then one copy per layer and row)",
        with_cuda_extension=bool(_C.with_cuda),
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
