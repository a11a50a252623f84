"""The compat replacements against the straightforward formulations they replace.

Each case times one call of a drop-in from :mod:`infogain.compat` and of the formulation the
original code bases use, re-stated here: a float64 (Fast-dLLM) or logits-dtype (LLaDA) softmax over
``[B, L, V]``, a gather of the arg-max probability and a Python loop of ``torch.topk`` over rows; a
float32 softmax per candidate for the Info-Gain entropies; float64 Gumbel noise over ``[B, L, V]``.
Before timing, every case checks that both give the same tokens / masks (temperature 0) or the
same scores to float32 rounding.

Shapes: LLaDA's vocabulary V = 126464, block L = 32, batch B = 1 and 8, float32 logits (``--dtype``),
N = 8 lookahead candidates for the Info-Gain scores. Logits are random with one boosted token per
position, so confidences spread over (0, 1) as a model's do.

    python benches/bench_compat.py [--quick] [--device cuda|cpu] [--dtype float32|bfloat16] [--threads N]

Writes ./compat-<device>.json (``--out PATH``; ``--update-results`` for the tracked
benches/results/compat-<device>.json).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    add_case_arguments, add_output_arguments, add_threads_argument, apply_threads,
    device_and_dtype, median_time, output_path, print_table, write_results)

from infogain.compat import dllm_info_gain, fast_dllm, llada  # noqa: E402

VOCAB = 126464
BLOCK = 32
CANDIDATES = 8


# ---- the straightforward formulations -------------------------------------------------------------

def naive_transfer(logits, mask_index, x, counts, threshold, softmax_dtype):
    x0 = logits.argmax(-1)
    probs = torch.softmax(logits.to(softmax_dtype), dim=-1)
    conf = torch.where(mask_index, probs.gather(-1, x0[..., None]).squeeze(-1), -math.inf)
    x0 = torch.where(mask_index, x0, x)
    transfer = torch.zeros_like(mask_index)
    if threshold is not None:
        counts = mask_index.sum(1)
    for row in range(conf.shape[0]):
        picked = torch.topk(conf[row], k=int(counts[row])).indices
        transfer[row, picked] = True
        if threshold is not None:
            for rank in range(1, int(counts[row])):
                if conf[row, picked[rank]] < threshold:
                    transfer[row, picked[rank]] = False
    return x0, transfer


def naive_gumbel(logits, temperature):
    noise = torch.rand_like(logits, dtype=torch.float64)
    return logits.to(torch.float64).exp() / (-torch.log(noise)) ** temperature


def naive_entropy(logits):
    p = torch.softmax(logits.float(), dim=-1).clamp(min=1e-12)
    return -(p * p.log()).sum(-1)


def naive_scores(logits, next_logits, x_batch, actions, mask_id):
    remaining = x_batch == mask_id
    h_next = torch.where(remaining, naive_entropy(next_logits), 0.0).sum(-1) / (remaining.sum(-1) + 1e-10)
    now = naive_entropy(logits)
    cost = torch.stack([now[0, a].sum() for a in actions])
    return cost, h_next, -cost - h_next


def make_logits(batch, width, vocab, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, width, vocab, generator=gen) * 2
    boost = torch.rand(batch, width, 1, generator=gen) * 14
    logits.scatter_add_(-1, torch.randint(vocab, (batch, width, 1), generator=gen), boost)
    return logits.to(device=device, dtype=dtype)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_case_arguments(parser, quick="V = 8192 and fewer repeats", dtype="float32")
    add_threads_argument(parser)
    add_output_arguments(parser, "compat")
    args = parser.parse_args(argv)
    device, dtype = device_and_dtype(args)
    apply_threads(args.threads)
    vocab = 8192 if args.quick else VOCAB
    repeats = 3 if args.quick else 7

    rows: List[Dict[str, object]] = []

    def record(case, batch, naive_fn, fused_fn, **extra):
        t_naive = median_time(naive_fn, device, warmup=1, repeats=repeats)
        t_fused = median_time(fused_fn, device, warmup=1, repeats=repeats)
        rows.append({"case": case, "B": batch, "L": BLOCK, "V": vocab, "dtype": args.dtype, **extra,
                     "naive_ms": t_naive * 1e3, "fused_ms": t_fused * 1e3, "speedup": t_naive / t_fused})

    for batch in (1, 8):
        logits = make_logits(batch, BLOCK, vocab, dtype, device, seed=batch)
        mask = torch.ones(batch, BLOCK, dtype=torch.bool, device=device)
        mask[:, ::5] = False
        x = torch.zeros(batch, BLOCK, dtype=torch.long, device=device)
        counts = torch.full((batch,), 4, dtype=torch.long, device=device)
        for threshold in (None, 0.9):
            want = naive_transfer(logits, mask, x, counts, threshold, torch.float64)
            got = fast_dllm.get_transfer_index(logits, 0.0, "low_confidence", mask, x, counts, threshold)
            if not (torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])):
                raise RuntimeError(f"fast_dllm.get_transfer_index disagrees (B={batch}, threshold={threshold})")
            record("fast_dllm.get_transfer_index", batch,
                   lambda: naive_transfer(logits, mask, x, counts, threshold, torch.float64),
                   lambda: fast_dllm.get_transfer_index(logits, 0.0, "low_confidence", mask, x, counts, threshold),
                   threshold=threshold)
        # One official LLaDA step on the block: softmax in the logits' dtype, then per-row top-k.
        want = naive_transfer(logits, mask, x, counts, None, logits.dtype)
        got = llada._step(logits, 0.0, "low_confidence", mask, counts, False)
        if not torch.equal(want[1], got[1]) or not torch.equal(want[0][got[1]], got[0][got[1]]):
            raise RuntimeError(f"llada step disagrees (B={batch})")
        record("llada.generate step", batch, lambda: naive_transfer(logits, mask, x, counts, None, logits.dtype),
               lambda: llada._step(logits, 0.0, "low_confidence", mask, counts, False), threshold=None)
        record("fast_dllm.add_gumbel_noise + argmax (T=1)", batch,
               lambda: naive_gumbel(logits, 1.0).argmax(-1),
               lambda: fast_dllm.add_gumbel_noise(logits, 1.0).argmax(-1), threshold=None)
        del logits

    # Info-Gain scores: current logits [1, L, V], N candidates' next logits [N, L, V].
    logits = make_logits(1, BLOCK, vocab, dtype, device, seed=11)
    next_logits = make_logits(CANDIDATES, BLOCK, vocab, dtype, device, seed=12)
    mask_id = vocab - 1
    gen = torch.Generator().manual_seed(13)
    x_batch = torch.where(torch.rand(CANDIDATES, BLOCK, generator=gen) < 0.6, mask_id, 5).to(device)
    actions = [torch.randperm(BLOCK, generator=gen)[:2].to(device) for _ in range(CANDIDATES)]

    def naive_ig():
        return naive_scores(logits, next_logits, x_batch, actions, mask_id)

    def fused_ig():
        return dllm_info_gain.score_candidates(logits, next_logits, x_batch, actions, mask_id, device)

    for want, got in zip(naive_ig(), fused_ig()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    record("dllm compute_entropy + score_candidates", 1, naive_ig, fused_ig, N=CANDIDATES, threshold=None)

    print_table(rows, ["case", "B", "threshold", "naive_ms", "fused_ms", "speedup"])
    path = write_results(output_path(args, "compat", device), "compat", device, rows, quick=args.quick,
                         threads=torch.get_num_threads(),
                         baseline="the straightforward formulations re-stated in this script (float64 / "
                                  "logits-dtype softmax over [B, L, V], gather, Python loop of torch.topk over "
                                  "rows; float32 softmax entropies per candidate; float64 Gumbel noise)")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
