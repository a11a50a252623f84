"""EIS's nucleus ops (topk_logprobs, sample_logprob) against the naive sort-based top-p filter.

EIS calls them on few rows: topk_logprobs on the B rows of a step, sample_logprob on the B*K
rollout rows. Shapes: 1 and 4 rows at V = 126464 (LLaDA) and 152064 (Dream / SDAR), bf16 logits
(``--dtype`` to change), temperature 0.7, top_p 0.9 (the radix search runs: the logits are random,
so the nucleus holds thousands of tokens) and 1.0, k = 5.

The naive formulation is what a textbook EIS does: float32 log_softmax, a full sort of each row,
cumulative sum, scatter of the drop mask, renormalisation, then topk (or softmax + multinomial to
sample). On CUDA the fused ops run the split-vocabulary Triton kernels and the table gives the
achieved bandwidth (logit bytes / time) and its fraction of the device's peak HBM bandwidth; on
CPU they run the native C++ kernel (csrc/nucleus_cpu*.cpp), else the torch reference. Each row
also gives the peak extra memory of both (torch allocations). On CPU every case runs once per
thread count of ``--threads`` (default: the package's thread policy, then 1), and each row records
its thread count.

    python benches/bench_nucleus.py [--quick] [--device cuda|cpu] [--dtype bfloat16|float16|float32]
                                    [--threads 0,1] [--out PATH | --update-results]

Writes nucleus-<device>.json in the working directory (``--update-results``: the tracked
benches/results/nucleus-<device>.json).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    add_case_arguments, add_output_arguments, add_thread_counts_argument, device_and_dtype, median_time,
    output_path, peak_bandwidth, peak_extra_memory, print_table, threads_to_run, write_results)
from bench_eis import _nucleus_log_softmax  # noqa: E402  (the naive filter of the EIS benchmark)

from infogain_kernels import sample_logprob, topk_logprobs  # noqa: E402
from infogain_kernels._backend import use_native  # noqa: E402

TEMPERATURE = 0.7
TOP_K = 5


def naive_filtered_logprobs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    return _nucleus_log_softmax(logits.float() / temperature, top_p)


def naive_topk_logprobs(logits, k, temperature, top_p):
    values, ids = naive_filtered_logprobs(logits, temperature, top_p).topk(k, dim=-1)
    return ids, values


def naive_sample_logprob(logits, temperature, top_p, generator):
    logprobs = naive_filtered_logprobs(logits, temperature, top_p)
    token = torch.multinomial(logprobs.exp(), 1, generator=generator)
    return token.squeeze(1), logprobs.gather(1, token).squeeze(1)


def fused_path(device: torch.device) -> str:
    if device.type == "cuda":
        return "triton (split-vocabulary)"
    return "native CPU kernel (csrc/nucleus_cpu.cpp)" if use_native(torch.empty(0)) else "torch reference"


def make_cases(device, dtype, vocabularies, generator):
    """One dict per (shape, op): the fused and naive callables, checked against each other once."""
    cases = []
    for (model, vocab), num_rows, top_p in [(v, r, p) for v in vocabularies for r in (1, 4) for p in (0.9, 1.0)]:
        logits = (torch.randn(num_rows, vocab, generator=torch.Generator().manual_seed(vocab + num_rows)) * 3.0)
        logits = logits.to(device=device, dtype=dtype)
        ids, values = topk_logprobs(logits, TOP_K, temperature=TEMPERATURE, top_p=top_p)
        _, naive_values = naive_topk_logprobs(logits, TOP_K, TEMPERATURE, top_p)
        # (bf16 ties may order ids differently.) The naive cut sums the sorted masses with a float32 cumsum,
        # off by up to ~V * 2**-25 at the boundary: the renormalised values differ by ~5e-3 at V = 126464.
        tolerance = 1e-3 if top_p >= 1 else 2e-2
        torch.testing.assert_close(values, naive_values, atol=tolerance, rtol=1e-3)
        shape = dict(model=model, rows=num_rows, vocab=vocab, top_p=top_p, bytes=logits.numel() * logits.element_size())
        cases.append(dict(shape, op="topk_logprobs",
                          fused=lambda x=logits, p=top_p: topk_logprobs(x, TOP_K, temperature=TEMPERATURE, top_p=p),
                          naive=lambda x=logits, p=top_p: naive_topk_logprobs(x, TOP_K, TEMPERATURE, p)))
        cases.append(dict(shape, op="sample_logprob",
                          fused=lambda x=logits, p=top_p: sample_logprob(x, mode="sample", temperature=TEMPERATURE,
                                                                         top_p=p, generator=generator),
                          naive=lambda x=logits, p=top_p: naive_sample_logprob(x, TEMPERATURE, p, generator)))
    return cases


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_arguments(parser, quick="V = 32000 only, few repeats")
    add_thread_counts_argument(parser)
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case (default: 5 on CPU, 50 on CUDA)")
    add_output_arguments(parser, "nucleus")
    args = parser.parse_args(argv)
    device, dtype = device_and_dtype(args)
    thread_counts, default_threads = threads_to_run(args, device)
    print(f"torch threads per run: {thread_counts} (default {default_threads})")
    vocabularies = [("small", 32000)] if args.quick else [("llada", 126464), ("dream", 152064)]
    repeats = args.repeats or (5 if device.type == "cpu" else 50)
    peak = peak_bandwidth(device)
    generator = torch.Generator(device=device).manual_seed(0)
    cases = make_cases(device, dtype, vocabularies, generator)
    rows = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for case in cases:
            fused_s = median_time(case["fused"], device, repeats=repeats)
            naive_s = median_time(case["naive"], device, repeats=repeats)
            row = {"op": case["op"], "model": case["model"], "rows": case["rows"], "vocab": case["vocab"],
                   "top_p": case["top_p"], "threads": threads, "fused_us": fused_s * 1e6, "naive_us": naive_s * 1e6,
                   "speedup": naive_s / fused_s,
                   "fused_peak_extra_MB": peak_extra_memory(case["fused"], device) / 2**20,
                   "naive_peak_extra_MB": peak_extra_memory(case["naive"], device) / 2**20,
                   "fused_GBps": case["bytes"] / fused_s / 1e9}
            row["memory_ratio"] = row["fused_peak_extra_MB"] / max(row["naive_peak_extra_MB"], 1e-9)
            if peak:
                row["fraction_of_peak_bw"] = row["fused_GBps"] * 1e9 / peak
            rows.append(row)
            print_table([row], list(row))
    torch.set_num_threads(default_threads)
    print()
    columns = ["op", "model", "rows", "top_p", "threads", "fused_us", "naive_us", "speedup", "fused_peak_extra_MB",
               "naive_peak_extra_MB", "memory_ratio", "fused_GBps"] + (["fraction_of_peak_bw"] if peak else [])
    print_table(rows, columns)
    path = write_results(
        output_path(args, "nucleus", device), "nucleus", device, rows,
        fused_path=fused_path(device),
        logits_dtype=args.dtype, temperature=TEMPERATURE, top_k=TOP_K, quick=args.quick,
        torch_threads=thread_counts, repeats=repeats,
        notes=("logits = 3 * randn (a flat distribution: the top_p = 0.9 nucleus holds thousands of tokens, so the "
               "fused ops run the full radix search); naive = float32 log_softmax, full sort, cumsum, scatter, "
               "renormalise, then topk / multinomial; fused_GBps = logit bytes / median time. Peak extra memory "
               "counts torch allocations: the native kernel's own scratch (per row task: the top-k key buffer, "
               "one int64 per 1024 logits for a draw, 2 x 2048 int64 radix bins and 8 KB on the stack; a float32 "
               "copy of the row only for strided rows) is a few tens of KB and not included."),
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
