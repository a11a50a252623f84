"""Fused decoding ops against the naive torch formulation of the reference samplers.

For each op and shape: median time of the fused op (Triton on CUDA; on CPU the native C++ kernels of
the extension, else the torch reference path) and of the naive formulation, measured in the same
run; their ratio; the peak extra memory of each (every allocation made during the call, its outputs
included, its inputs not: the same rule on both sides); on CUDA the achieved bandwidth (bytes the op
must read / time) as a fraction of the device's peak. Shapes: LLaDA (V = 126464) and Dream (V =
152064) with R = 8 candidates and L = 32 / 256 block positions; ``step_stats`` (S = 8 draws at T >
0, and at T = 0) runs on 8 x 32, 8 x 256 and 64 x 32 rows. Logits are bf16 (what the models emit)
unless ``--dtype`` says otherwise. On CPU every case runs once per thread count of ``--threads``
(default: the package's thread policy, then 1), and each row records its thread count.

    python benches/bench_ops.py [--quick] [--device cuda|cpu] [--dtype bfloat16|float32|float16]
                                [--ops step_stats,token_stats,...] [--threads 0,1]

Writes ./ops-<device>.json (``--out PATH``; ``--update-results`` for the
tracked benches/results/ops-<device>.json).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    add_case_arguments, add_output_arguments, add_thread_counts_argument, device_and_dtype, median_time,
    output_path, peak_bandwidth, peak_extra_memory, print_table, threads_to_run, write_results)

import infogain_kernels  # noqa: E402
from infogain_kernels._backend import use_native  # noqa: E402

CANDIDATES = 8
STEP_SAMPLES = 8
STEP_ROWS = [(8, 32), (8, 256), (64, 32)]  # [B, L] block positions the step statistics run on
REMAINING_FRACTION = 0.5  # share of block positions still masked after a candidate (mid-block)
TEMPERATURE = 0.7
TOPK_K = 4


# ---- naive formulations (what the reference samplers do) ----------------------------------------

def naive_entropy(logits: torch.Tensor) -> torch.Tensor:
    probs = torch.softmax(logits.float(), dim=-1)
    return -(probs * probs.clamp(min=1e-10).log()).sum(-1)


def naive_token_stats(logits):
    probs = torch.softmax(logits.float(), dim=-1)
    entropy = -(probs * probs.clamp(min=1e-10).log()).sum(-1)
    top = probs.topk(2, dim=-1)
    return entropy, top.values[..., 0], top.indices[..., 0], top.values[..., 1]


def naive_step_stats(logits, num_samples, temperature):
    """The reference samplers' step: token statistics, then (T > 0) Gumbel-max draws over [rows, V]."""
    stats = naive_token_stats(logits)
    if temperature == 0:
        return stats
    return stats, naive_gumbel_sample(logits.reshape(-1, logits.shape[-1]), num_samples, temperature)


def naive_lookahead_objective(next_logits, remaining, cost):
    entropy = naive_entropy(next_logits)
    h_next = (entropy * remaining).sum(1) / remaining.sum(1).clamp(min=1)
    return -cost - h_next, h_next


def naive_gumbel_sample(logits, num_samples, temperature):
    """Float64 Gumbel noise added to float64 logits, arg-max per sample; confidence from the softmax."""
    probs = torch.softmax(logits.float(), dim=-1)
    tokens, confidences = [], []
    for _ in range(num_samples):
        noise = -torch.log(-torch.log(torch.rand(logits.shape, dtype=torch.float64, device=logits.device)))
        token = torch.argmax(logits.double() + temperature * noise, dim=-1)
        tokens.append(token)
        confidences.append(probs.gather(-1, token.unsqueeze(-1)).squeeze(-1))
    return torch.stack(tokens), torch.stack(confidences)


def naive_gumbel_topk(scores, k, num_samples, temperature, valid):
    masked = torch.where(valid, scores.double(), float("-inf"))
    picks = [masked.topk(k, dim=-1).indices]
    for _ in range(1, num_samples):
        noise = -torch.log(-torch.log(torch.rand(scores.shape, dtype=torch.float64, device=scores.device)))
        perturbed = torch.where(valid, scores.double() / temperature + noise, float("-inf"))
        picks.append(perturbed.topk(k, dim=-1).indices)
    return torch.stack(picks)


# ---- cases -----------------------------------------------------------------------------------

def make_cases(device: torch.device, dtype: torch.dtype, quick: bool) -> List[Dict[str, object]]:
    generator = torch.Generator(device="cpu").manual_seed(0)
    vocabularies = [("llada", 126464), ("dream", 152064)] if not quick else [("small", 32000)]
    block_lengths = [32, 256] if not quick else [32]
    cases = []
    for model, vocab in vocabularies:
        for n_positions in block_lengths:
            logits = (torch.randn(CANDIDATES, n_positions, vocab, generator=generator) * 4.0).to(dtype).to(device)
            remaining = (torch.rand(CANDIDATES, n_positions, generator=generator) < REMAINING_FRACTION).to(device)
            cost = (torch.rand(CANDIDATES, generator=generator) * 10).to(device)
            block_logits = logits[0]  # [L, V]: the current step's logits that candidates are drawn from
            scores = torch.rand(1, n_positions, generator=generator).to(device)
            valid = (torch.rand(1, n_positions, generator=generator) < 0.7).to(device)
            element = logits.element_size()
            shape = f"{model} R={CANDIDATES} L={n_positions} V={vocab}"
            cases += [
                dict(op="token_stats", shape=shape,
                     fused=lambda x=logits: infogain_kernels.token_stats(x),
                     naive=lambda x=logits: naive_token_stats(x),
                     bytes_read=logits.numel() * element),
                dict(op="lookahead_objective", shape=shape,
                     fused=lambda x=logits, r=remaining, c=cost: infogain_kernels.lookahead_objective(x, r, c),
                     naive=lambda x=logits, r=remaining, c=cost: naive_lookahead_objective(x, r, c),
                     bytes_read=int(remaining.sum()) * vocab * element),
                dict(op="gumbel_sample", shape=f"{model} S={CANDIDATES} [L={n_positions}, V={vocab}]",
                     fused=lambda x=block_logits: infogain_kernels.gumbel_sample(x, CANDIDATES, TEMPERATURE),
                     naive=lambda x=block_logits: naive_gumbel_sample(x, CANDIDATES, TEMPERATURE),
                     bytes_read=block_logits.numel() * element),
                dict(op="gumbel_topk", shape=f"S={CANDIDATES} k={TOPK_K} [B=1, P={n_positions}]",
                     fused=lambda s=scores, v=valid: infogain_kernels.gumbel_topk(s, TOPK_K, CANDIDATES, TEMPERATURE,
                                                                                  valid=v),
                     naive=lambda s=scores, v=valid: naive_gumbel_topk(s, TOPK_K, CANDIDATES, TEMPERATURE, v),
                     bytes_read=scores.numel() * scores.element_size()),
            ]
    for model, vocab in vocabularies:
        for batch, length in (STEP_ROWS if not quick else [(2, 8)]):
            logits = (torch.randn(batch, length, vocab, generator=generator) * 4.0).to(dtype).to(device)
            for temperature in (TEMPERATURE, 0.0):
                cases.append(dict(
                    op="step_stats", shape=f"{model} S={STEP_SAMPLES} T={temperature} [{batch}x{length}, V={vocab}]",
                    fused=lambda x=logits, t=temperature: infogain_kernels.step_stats(
                        x, num_samples=STEP_SAMPLES, temperature=t, check_values=False),
                    naive=lambda x=logits, t=temperature: naive_step_stats(x, STEP_SAMPLES, t),
                    bytes_read=logits.numel() * logits.element_size()))
    return cases


def measure(case: Dict[str, object], device: torch.device, repeats: int) -> Optional[Dict[str, object]]:
    fused: Callable = case["fused"]
    naive: Callable = case["naive"]
    try:
        fused()
    except NotImplementedError as exc:
        print(f"skipping {case['op']}: {exc}")
        return None
    warmup = 1 if device.type == "cpu" else 5
    fused_s = median_time(fused, device, warmup=warmup, repeats=repeats)
    naive_s = median_time(naive, device, warmup=warmup, repeats=repeats)
    row = {
        "op": case["op"],
        "shape": case["shape"],
        "fused_ms": fused_s * 1e3,
        "naive_ms": naive_s * 1e3,
        "speedup": naive_s / fused_s,
        "fused_peak_extra_MB": peak_extra_memory(fused, device) / 2**20,
        "naive_peak_extra_MB": peak_extra_memory(naive, device) / 2**20,
    }
    row["memory_ratio"] = row["fused_peak_extra_MB"] / max(row["naive_peak_extra_MB"], 1e-9)
    bandwidth = peak_bandwidth(device)
    row["fused_GBps"] = case["bytes_read"] / fused_s / 1e9
    if bandwidth:
        row["fraction_of_peak_bw"] = case["bytes_read"] / fused_s / bandwidth
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_arguments(parser, quick="one small shape (V=32000, L=32), few repeats")
    parser.add_argument("--ops", default="step_stats,token_stats,lookahead_objective,gumbel_sample,gumbel_topk")
    add_thread_counts_argument(parser)
    add_output_arguments(parser, "ops")
    args = parser.parse_args(argv)
    device, dtype = device_and_dtype(args)
    thread_counts, default_threads = threads_to_run(args, device)
    torch.manual_seed(0)
    repeats = 3 if device.type == "cpu" else (10 if args.quick else 50)
    wanted = set(args.ops.split(","))
    rows, skipped = [], []
    cases = [case for case in make_cases(device, dtype, args.quick) if case["op"] in wanted]
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for case in cases:
            row = measure(case, device, repeats)
            if row is None:
                skipped.append(case["op"])
                continue
            row["threads"] = threads
            rows.append(row)
            print_table([row], list(row))  # progress, one line per case
    torch.set_num_threads(default_threads)
    print()
    columns = ["op", "shape", "threads", "fused_ms", "naive_ms", "speedup", "fused_peak_extra_MB", "naive_peak_extra_MB",
               "memory_ratio", "fused_GBps"] + (["fraction_of_peak_bw"] if peak_bandwidth(device) else [])
    print_table(rows, columns)
    path = write_results(
        output_path(args, "ops", device), "ops", device, rows,
        fused_path="triton" if device.type == "cuda" else (
            "native C++ (csrc), else torch reference" if use_native(torch.empty(0)) else "torch reference"),
        logits_dtype=args.dtype,
        quick=args.quick,
        torch_threads=thread_counts,
        candidates=CANDIDATES,
        remaining_fraction=REMAINING_FRACTION,
        temperature=TEMPERATURE,
        skipped_ops=sorted(set(skipped)),
        notes=("naive = float32 softmax, clamp, log, multiply, sum (token_stats adds topk(2); lookahead_objective a "
               "masked mean over all positions); gumbel naive = float64 noise added to float64 logits, argmax per "
               "sample, confidence gathered from a float32 softmax. The fused lookahead_objective reads only the "
               "remaining rows (bytes_read counts those). gumbel_sample draws S=R samples from one [L, V] block. "
               "step_stats: bytes_read is one read of the [B, L, V] logits (at T > 0 the draw pass re-reads at most "
               "the part of each row up to its last draw); its naive formulation is token_stats' naive plus, at T > 0, "
               "the gumbel naive over all B*L rows. Peak extra memory: everything allocated during one call, outputs "
               "included and inputs excluded, on both sides (on CPU the allocator's tensors; a kernel's stack and "
               "small scratch vectors are not seen, e.g. gumbel_topk's 8 KiB noise chunk and 16 B per kept position)."),
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
