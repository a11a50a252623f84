"""EIS's nucleus ops (topk_logprobs, sample_logprob) against the naive sort-based top-p filter.

EIS calls them on few rows: topk_logprobs on the B rows of a step, sample_logprob on the B*K
rollout rows. Shapes: 1 and 4 rows at V = 126464 (LLaDA) and 152064 (Dream / SDAR), bf16 logits
(``--dtype`` to change), temperature 0.7, top_p 0.9 (the radix search runs: the logits are random,
so the nucleus holds thousands of tokens) and 1.0, k = 5.

The naive formulation is what a textbook EIS does: float32 log_softmax, a full sort of each row,
cumulative sum, scatter of the drop mask, renormalisation, then topk (or softmax + multinomial to
sample). On CUDA the fused ops run the split-vocabulary Triton kernels and the table gives the
achieved bandwidth (logit bytes / time) and its fraction of the device's peak HBM bandwidth; on
CPU they run the torch reference path.

    python benches/bench_nucleus.py [--quick] [--device cuda|cpu] [--dtype bfloat16|float16|float32]
                                    [--threads N] [--out PATH | --update-results]

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
    add_output_arguments, apply_threads, median_time, output_path, peak_bandwidth, pick_device, print_table,
    write_results)
from bench_eis import _nucleus_log_softmax  # noqa: E402  (the naive filter of the EIS benchmark)

from infogain_kernels import sample_logprob, topk_logprobs  # noqa: E402

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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="V = 32000 only, few repeats")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the package's policy, infogain._threads)")
    add_output_arguments(parser, "nucleus")
    args = parser.parse_args(argv)
    print(f"{apply_threads(args.threads)} torch thread(s)")
    device = pick_device(args.device)
    dtype = getattr(torch, args.dtype)
    vocabularies = [("small", 32000)] if args.quick else [("llada", 126464), ("dream", 152064)]
    repeats = 3 if device.type == "cpu" or args.quick else 50
    peak = peak_bandwidth(device)
    generator = torch.Generator(device=device).manual_seed(0)
    rows = []
    for (model, vocab), num_rows, top_p in [(v, r, p) for v in vocabularies for r in (1, 4) for p in (0.9, 1.0)]:
        logits = (torch.randn(num_rows, vocab, generator=torch.Generator().manual_seed(vocab + num_rows)) * 3.0)
        logits = logits.to(device=device, dtype=dtype)
        ids, values = topk_logprobs(logits, TOP_K, temperature=TEMPERATURE, top_p=top_p)
        _, naive_values = naive_topk_logprobs(logits, TOP_K, TEMPERATURE, top_p)
        torch.testing.assert_close(values, naive_values, atol=1e-3, rtol=1e-3)  # (bf16 ties may order ids differently)
        cases = {
            "topk_logprobs": (lambda: topk_logprobs(logits, TOP_K, temperature=TEMPERATURE, top_p=top_p),
                              lambda: naive_topk_logprobs(logits, TOP_K, TEMPERATURE, top_p)),
            "sample_logprob": (lambda: sample_logprob(logits, mode="sample", temperature=TEMPERATURE, top_p=top_p,
                                                      generator=generator),
                               lambda: naive_sample_logprob(logits, TEMPERATURE, top_p, generator)),
        }
        for op, (fused, naive) in cases.items():
            fused_s = median_time(fused, device, repeats=repeats)
            naive_s = median_time(naive, device, repeats=repeats)
            row = {"op": op, "model": model, "rows": num_rows, "vocab": vocab, "top_p": top_p,
                   "fused_us": fused_s * 1e6, "naive_us": naive_s * 1e6, "speedup": naive_s / fused_s,
                   "fused_GBps": logits.numel() * logits.element_size() / fused_s / 1e9}
            if peak:
                row["fraction_of_peak_bw"] = row["fused_GBps"] * 1e9 / peak
            rows.append(row)
            print_table([row], list(row))
    print()
    columns = ["op", "model", "rows", "top_p", "fused_us", "naive_us", "speedup", "fused_GBps"] + (
        ["fraction_of_peak_bw"] if peak else [])
    print_table(rows, columns)
    path = write_results(
        output_path(args, "nucleus", device), "nucleus", device, rows,
        fused_path="triton (split-vocabulary)" if device.type == "cuda" else "torch reference",
        logits_dtype=args.dtype, temperature=TEMPERATURE, top_k=TOP_K, quick=args.quick,
        torch_threads=torch.get_num_threads(), repeats=repeats,
        notes=("logits = 3 * randn (a flat distribution: the top_p = 0.9 nucleus holds thousands of tokens, so the "
               "fused ops run the full radix search); naive = float32 log_softmax, full sort, cumsum, scatter, "
               "renormalise, then topk / multinomial; fused_GBps = logit bytes / median time."),
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
