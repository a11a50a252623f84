"""Fused LM head + entropy (``lm_head_entropy``) vs materialised logits + the entropy op.

For hidden states ``[rows, positions, D]`` and an LM head ``[V, D]`` at LLaDA-8B (D = 4096,
V = 126,464) and Dream-7B (D = 3584, V = 152,064) shapes, each configuration scores lookahead
candidates both ways, in the same run:

* fused: ``lm_head_entropy(hidden, weight, mask=keep, cost=cost, variant="info_gain")``;
* baseline: ``logits = hidden @ weight.T`` (one matmul in the model dtype), then
  ``lookahead_objective(logits, keep, cost)``.

``keep`` marks the positions whose entropy is needed (the still-masked positions of a lookahead);
``--keep 1.0 0.5`` runs every position and half of them. Reported: median time, peak extra memory,
and on a GPU the fused kernel's tensor-core throughput (2 * kept positions * V * D flops) as a
fraction of the dense bf16 peak.

    python benches/bench_lm_head.py                     # CUDA, bf16, full head shapes
    python benches/bench_lm_head.py --small             # CPU: D and V shrunk 16x, memory projected

On the CPU (``--small``) the head is shrunk by ``--shrink`` in D and V. Peak memory is measured at
(V, D), (2V, D) and (V, 2D) and fitted as ``a + b * V + c * D``; the JSON holds that fit at the full
V and D next to the measured values (in the measured dtype, float32 on the CPU).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (add_output_arguments, apply_threads, median_time, output_path, peak_bf16_flops,  # noqa: E402
                     peak_extra_memory, pick_device, print_table, write_results)

from infogain_kernels import lm_head_entropy, lookahead_objective  # noqa: E402

HEADS = {"llada-8b": (4096, 126464), "dream-7b": (3584, 152064)}
POSITIONS = ((8, 32), (8, 256), (64, 32))
def make_inputs(rows, positions, dim, vocab, keep_fraction, dtype, device, seed=0):
    generator = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(rows, positions, dim, generator=generator).to(device=device, dtype=dtype)
    weight = (torch.randn(vocab, dim, generator=generator) * dim ** -0.5).to(device=device, dtype=dtype)
    keep = (torch.rand(rows, positions, generator=generator) < keep_fraction).to(device)
    cost = torch.rand(rows, generator=generator).to(device)
    return hidden, weight, keep, cost


def runners(hidden, weight, keep, cost):
    def fused():
        return lm_head_entropy(hidden, weight, mask=keep, cost=cost, variant="info_gain", check_values=False)

    def materialised():
        return lookahead_objective(F.linear(hidden, weight), keep, cost, check_values=False)

    return fused, materialised


def memory_fit(rows, positions, dim, vocab, keep_fraction, dtype, device):
    """Peak extra bytes of both paths at (V, D), (2V, D) and (V, 2D), fitted per path as
    ``a + b * V + c * D``. Returns ``({path: (a, b, c)}, (fused, materialised) peaks at (V, D))``."""
    peaks = {}
    for v, d in ((vocab, dim), (2 * vocab, dim), (vocab, 2 * dim)):
        fused, materialised = runners(*make_inputs(rows, positions, d, v, keep_fraction, dtype, device))
        peaks[v, d] = (peak_extra_memory(fused, device), peak_extra_memory(materialised, device))
    fit = {}
    for i, name in enumerate(("fused", "materialised")):
        base = peaks[vocab, dim][i]
        b = (peaks[2 * vocab, dim][i] - base) / vocab
        c = (peaks[vocab, 2 * dim][i] - base) / dim
        fit[name] = (base - b * vocab - c * dim, b, c)
    return fit, peaks[vocab, dim]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", nargs="+", choices=sorted(HEADS), default=sorted(HEADS))
    parser.add_argument("--small", action="store_true", help="CPU-sized head (D and V divided by --shrink)")
    parser.add_argument("--shrink", type=int, default=16)
    parser.add_argument("--keep", type=float, nargs="+", default=[1.0, 0.5],
                        help="fractions of positions whose entropy is needed")
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    add_output_arguments(parser, "lm_head")
    args = parser.parse_args()

    device = pick_device(args.device)
    print(f"{apply_threads(args.threads)} torch thread(s)")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = peak_bf16_flops(device)
    rows_out = []
    with torch.inference_mode():
        for head in args.heads:
            full_dim, full_vocab = HEADS[head]
            dim, vocab = (full_dim // args.shrink, full_vocab // args.shrink) if args.small else (full_dim, full_vocab)
            for rows, positions in POSITIONS:
                for keep_fraction in args.keep:
                    hidden, weight, keep, cost = make_inputs(rows, positions, dim, vocab, keep_fraction, dtype, device)
                    fused, materialised = runners(hidden, weight, keep, cost)
                    torch.testing.assert_close(fused().objective, materialised()[0], atol=2e-2, rtol=1e-2)
                    t_fused = median_time(fused, device, repeats=args.repeats)
                    t_mat = median_time(materialised, device, repeats=args.repeats)
                    kept = int(keep.sum())
                    row = {
                        "head": head + ("-small" if args.small else ""), "rows": rows, "positions": positions,
                        "keep": keep_fraction, "kept": kept, "D": dim, "V": vocab,
                        "dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
                        "fused_ms": t_fused * 1e3, "materialised_ms": t_mat * 1e3, "speedup": t_mat / t_fused,
                    }
                    if device.type == "cuda":
                        m_fused, m_mat = peak_extra_memory(fused, device), peak_extra_memory(materialised, device)
                        tflops = 2.0 * kept * vocab * dim / t_fused
                        row.update(fused_tflops=tflops / 1e12, peak_fraction=tflops / peak if peak else None)
                    else:
                        fit, (m_fused, m_mat) = memory_fit(rows, positions, dim, vocab, keep_fraction, dtype, device)
                        row.update({f"projected_{name}_MiB": (a + b * full_vocab + c * full_dim) / 2**20
                                    for name, (a, b, c) in fit.items()})
                        row["projected_memory_ratio"] = (row["projected_materialised_MiB"]
                                                         / row["projected_fused_MiB"])
                        row["projected_at"] = {"D": full_dim, "V": full_vocab}
                    row.update(fused_extra_MiB=m_fused / 2**20, materialised_extra_MiB=m_mat / 2**20,
                               memory_ratio=m_mat / m_fused if m_fused else None)
                    rows_out.append(row)
                    print(f"{head} {rows}x{positions} keep={keep_fraction}: fused {t_fused * 1e3:.2f} ms, "
                          f"materialised {t_mat * 1e3:.2f} ms", flush=True)
    columns = ["head", "rows", "positions", "keep", "fused_ms", "materialised_ms", "speedup",
               "fused_extra_MiB", "materialised_extra_MiB", "memory_ratio"]
    columns += ["fused_tflops", "peak_fraction"] if device.type == "cuda" else \
        ["projected_fused_MiB", "projected_materialised_MiB", "projected_memory_ratio"]
    print_table(rows_out, columns)
    path = write_results(output_path(args, "lm_head", device), "lm_head", device, rows_out, small=args.small, shrink=args.shrink if args.small else 1,
                         peak_bf16_flops=peak,
                         fused="lm_head_entropy(hidden, weight, mask, cost, variant='info_gain')",
                         baseline="logits = hidden @ weight.T, then lookahead_objective(logits, mask, cost)")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
