"""One sparse MoE layer: ``SparseMoE`` (sorted by expert, one GEMM pair or triple per active expert, or
grouped GEMMs) against the per-expert mask loop.

The baseline is the formulation most MoE code writes: route, then for every expert build the boolean
mask of the tokens that chose it, gather them, run the expert's SwiGLU MLP and accumulate its weighted
output into those rows. A second baseline, the dense loop, runs every expert on every token and weights
the outputs (zero where the token did not choose the expert): the shortest code, ``num_experts /
top_k`` times the expert GEMMs. All run the same routing (``SparseMoE.route``), the same weights and inputs,
and the same shared expert; their outputs are checked to agree before timing. Each time of the small
layer is the best of 5 rounds' medians (1 with ``--quick``); the full layer takes one round.

Columns: ``loop_ms`` (the mask loop), ``moe_ms`` (``SparseMoE``), ``speedup = loop_ms / moe_ms``,
``dense_loop_ms`` and ``speedup_vs_dense_loop`` (the dense loop against ``SparseMoE``).
``matmul_floor_ms`` is the time of the expert GEMMs alone on rows already sorted by expert (routed and
shared), three per expert on the weights as stored (``x @ W.T``); ``max_speedup = loop_ms /
matmul_floor_ms``: the most any formulation running those GEMM calls can gain. (``SparseMoE``'s CPU path
on a relaid-out weight copy runs two better-shaped GEMMs per expert instead, so ``moe_ms`` can go below
it.) The hard bound is by arithmetic: ``gflop`` is the GEMM work of one call, ``2 * M * K * N`` summed
over every routed (token, expert) pair's gate, up and down products (``6 * hidden * width`` a pair) and
the shared expert's on every token; ``gemm_gflops`` is this device's throughput on one large square
GEMM (``1024^3`` on CPU, ``4096^3`` on CUDA, the best of 5, measured once per run in the benchmark's
dtype), the rate the experts' small GEMMs at best approach; ``flop_bound_ms = gflop / gemm_gflops``, and
``max_speedup_at_peak = loop_ms / flop_bound_ms``: no formulation doing these FLOPs at this machine's
GEMM rate beats the loop by more. It is a bound, not a target: where the expert GEMMs are limited by
reading the weights (the mini layer's few rows per expert on CPU) no formulation comes near it.

Shapes: the shrunken LLaDA2 layer (hidden 256, 16 experts top-4, groups 4 keep 2, width 128, one
shared expert) and the LLaDA2.0-mini layer (hidden 2048, 256 experts top-8, groups 8 keep 4, width 512,
one shared expert; skipped on CPU with ``--quick``), at 256 tokens (a lookahead step: 8 candidates x
32-token windows) and 32 tokens (one block).

    python benches/bench_moe.py [--quick] [--device cuda|cpu] [--dtype float32|bfloat16|float16] [--threads N]

dtype: float32 on CPU, bfloat16 on CUDA unless ``--dtype`` says otherwise. Writes ./moe-<device>.json
(``--out PATH``; ``--update-results`` for the tracked benches/results/moe-<device>.json).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    add_case_arguments, add_output_arguments, add_threads_argument, apply_threads,
    median_time, output_path, pick_device, print_table, write_results)

from infogain.models.moe import SparseMoE  # noqa: E402

SHAPES = {
    "llada2-small": dict(hidden_size=256, moe_intermediate_size=128, num_experts=16, top_k=4, n_group=4,
                         topk_group=2, routed_scaling_factor=2.5, num_shared_experts=1),
    "llada2.0-mini": dict(hidden_size=2048, moe_intermediate_size=512, num_experts=256, top_k=8, n_group=8,
                          topk_group=4, routed_scaling_factor=2.5, num_shared_experts=1),
}
TOKENS = (256, 32)  # 8 lookahead candidates x 32-token windows; one 32-token block


def shared_mlp(moe: SparseMoE, x: torch.Tensor) -> torch.Tensor:
    s = moe.shared
    return s.down_proj(F.silu(s.gate_proj(x)) * s.up_proj(x))


def per_expert_loop(moe: SparseMoE, x: torch.Tensor) -> torch.Tensor:
    """The baseline: a boolean mask per expert, its tokens' MLP, a weighted accumulation."""
    idx, weight = moe.route(x)
    y = torch.zeros(x.shape[0], moe.hidden_size, dtype=torch.float32, device=x.device)
    for e in range(moe.num_experts):
        hit = idx == e
        rows = hit.any(dim=-1)
        if not rows.any():
            continue
        xe = x[rows]
        out = F.linear(F.silu(F.linear(xe, moe.experts_gate[e])) * F.linear(xe, moe.experts_up[e]),
                       moe.experts_down[e])
        y[rows] += out.float() * (weight * hit).sum(dim=-1)[rows].unsqueeze(-1)
    y = y.to(x.dtype)
    return y + shared_mlp(moe, x) if moe.shared is not None else y


def dense_expert_loop(moe: SparseMoE, x: torch.Tensor) -> torch.Tensor:
    """The second baseline, the shortest code: every expert on every token, weighted by the token's
    routing weight for it (zero where it was not chosen): ``num_experts / top_k`` times the GEMMs."""
    idx, weight = moe.route(x)
    dense = torch.zeros(x.shape[0], moe.num_experts, dtype=torch.float32, device=x.device)
    dense.scatter_(1, idx, weight)
    y = torch.zeros(x.shape[0], moe.hidden_size, dtype=torch.float32, device=x.device)
    for e in range(moe.num_experts):
        out = F.linear(F.silu(F.linear(x, moe.experts_gate[e])) * F.linear(x, moe.experts_up[e]), moe.experts_down[e])
        y += out.float() * dense[:, e:e + 1]
    y = y.to(x.dtype)
    return y + shared_mlp(moe, x) if moe.shared is not None else y


def matmul_floor(moe: SparseMoE, x: torch.Tensor):
    """A function running only the GEMMs of one call: each active expert on its (pre-sorted) rows,
    and the shared expert."""
    idx, _ = moe.route(x)
    order = idx.view(-1).argsort(stable=True)
    rows = x[order // moe.top_k]
    counts = torch.bincount(idx.view(-1), minlength=moe.num_experts).tolist()

    def run():
        start = 0
        for e, count in enumerate(counts):
            if count:
                seg = rows[start:start + count]
                h = torch.mm(seg, moe.experts_gate[e].t())
                torch.mm(h, moe.experts_down[e].t())
                torch.mm(seg, moe.experts_up[e].t())
                start += count
        if moe.shared is not None:
            h = moe.shared.gate_proj(x)
            moe.shared.up_proj(x)
            moe.shared.down_proj(h)

    return run


def gemm_flops(moe: SparseMoE, tokens: int) -> float:
    """FLOPs of the expert GEMMs of one call: ``2 * M * K * N`` for the gate, up and down products of
    every routed (token, expert) pair and of the shared expert on every token (the router's small
    GEMM is left out)."""
    per_row = 3 * 2 * moe.hidden_size * moe.moe_intermediate_size
    return float(tokens * moe.top_k * per_row + tokens * moe.num_shared_experts * per_row)


def peak_gemm_gflops(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """GFLOP/s of one square ``torch.mm`` in ``dtype`` (1024 on CPU; 4096 on CUDA, where 1024 leaves
    the GPU underfilled): the best of ``repeats`` timings after a warm-up, i.e. the rate this device's
    GEMM reaches on a large, well-shaped problem."""
    size = 4096 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = min(median_time(lambda: torch.mm(a, b), device, warmup=2, repeats=1) for _ in range(repeats))
    return 2.0 * size ** 3 / best / 1e9


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_case_arguments(parser, quick="the small layer only, fewer repeats", dtype=None)
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="default: float32 on CPU, bfloat16 on CUDA")
    add_threads_argument(parser)
    add_output_arguments(parser, "moe")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    dtype_name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    threads = apply_threads(args.threads)
    print(f"MoE layer on {device}, {dtype_name}, {threads} torch thread(s)")
    shapes = ["llada2-small"] if args.quick and device.type != "cuda" else list(SHAPES)

    rows: List[Dict[str, object]] = []
    with torch.inference_mode():
        gemm_gflops = peak_gemm_gflops(device, dtype)
    print(f"one large square GEMM: {gemm_gflops:.1f} GFLOP/s")
    for shape in shapes:
        config = SHAPES[shape]
        torch.manual_seed(0)
        # Built outside inference mode, as a loaded model is: inference tensors track no versions, so
        # SparseMoE would not cache its relaid-out weights for them.
        with torch.no_grad():
            moe = SparseMoE(**config, device=device, dtype=dtype)
            moe.gate_weight.normal_(0.0, config["hidden_size"] ** -0.5)  # router logits of about unit spread
            moe.expert_bias.normal_(0.0, 0.05)
        with torch.inference_mode():
            if config["hidden_size"] <= 512:
                rounds, repeats, min_time = (1, 5, 0.2) if args.quick else (5, 20, 0.2)
            else:  # GEMM-bound on CPU (hundreds of ms a call): load bursts matter less
                rounds, repeats, min_time = 1, 3, 0.0
            for tokens in TOKENS:
                x = torch.randn(tokens, config["hidden_size"], device=device).to(dtype)
                expected, got = per_expert_loop(moe, x), moe(x)
                tolerance = 1e-4 if dtype == torch.float32 else 3e-2
                error = ((got.float() - expected.float()).norm() / expected.float().norm()).item()
                dense_error = ((dense_expert_loop(moe, x).float() - expected.float()).norm()
                               / expected.float().norm()).item()
                if not max(error, dense_error) <= tolerance:
                    raise RuntimeError(f"SparseMoE disagrees with the per-expert loop at {shape}, {tokens} tokens: "
                                       f"relative error {error:.2e} > {tolerance}")
                # Rounds of (loop, moe, floor), each the best of its round medians: on a shared machine a
                # burst of load then hits one round, not one variant.
                best = [float("inf")] * 4
                for _ in range(rounds):
                    for i, fn in enumerate((lambda: per_expert_loop(moe, x), lambda: moe(x), matmul_floor(moe, x),
                                            lambda: dense_expert_loop(moe, x))):
                        best[i] = min(best[i], median_time(fn, device, repeats=repeats, min_time_s=min_time))
                t_loop, t_moe, t_floor, t_dense = best
                active = int(torch.unique(moe.route(x)[0]).numel())
                flop = gemm_flops(moe, tokens)
                bound = flop / (gemm_gflops * 1e9)
                rows.append({
                    "shape": shape, "tokens": tokens, "experts": config["num_experts"], "top_k": config["top_k"],
                    "active_experts": active, "dtype": dtype_name,
                    "path": "grouped_mm" if moe._grouped_mm_ok(x) else
                            "per-active-expert mm" + (", relaid out" if moe._relayout is not None else ""),
                    "loop_ms": t_loop * 1e3, "moe_ms": t_moe * 1e3, "speedup": t_loop / t_moe,
                    "matmul_floor_ms": t_floor * 1e3, "max_speedup": t_loop / t_floor,
                    "dense_loop_ms": t_dense * 1e3, "speedup_vs_dense_loop": t_dense / t_moe,
                    "gflop": flop / 1e9, "gemm_gflops": gemm_gflops, "flop_bound_ms": bound * 1e3,
                    "max_speedup_at_peak": t_loop / bound,
                    "relative_error": error,
                })
        del moe

    print_table(rows, ["shape", "tokens", "active_experts", "path", "loop_ms", "moe_ms", "speedup",
                       "matmul_floor_ms", "max_speedup", "flop_bound_ms", "max_speedup_at_peak",
                       "dense_loop_ms", "speedup_vs_dense_loop"])
    path = write_results(output_path(args, "moe", device), "moe", device, rows, quick=args.quick,
                         threads=torch.get_num_threads(),
                         baseline="per-expert loop: a boolean token mask per expert, its tokens' SwiGLU MLP, "
                                  "weighted accumulation (same routing, weights, inputs, shared expert); "
                                  "dense_loop: every expert on every token, weighted (zero where not chosen)")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
