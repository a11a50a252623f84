"""Lookahead step of N candidates against one shared KV cache vs copying the cache.

A lookahead step forwards N candidate windows of one prompt. "shared" forwards
them in one ``forward_window(..., cache_rows=zeros(N))`` call that reads the
single cache (cascade attention: shared cache + own window, merged by
log-sum-exp); the baseline "copy" first expands the cache N times (contiguous
copies of every layer's K/V, as the reference samplers do) and forwards the N
windows as a batch of N. Both are measured in the same run, with their peak
extra memory.

    python benches/bench_models.py --random-weights llada-8b      # CUDA, bf16, full size
    python benches/bench_models.py --random-weights llada2-mini   # LLaDA2.0-mini (16B MoE), CUDA, bf16
    python benches/bench_models.py --random-weights sdar-moe-30b-a3b fast-dllm-v2-7b   # SDAR-MoE, Fast-dLLM v2
    python benches/bench_models.py --small                        # all six, CPU-sized

Each row also scores the N candidates as the sampler's lookahead does, both ways, from the same
window hidden states: "logits" (the ``[N, W, V]`` logits ``forward_window`` would return, then
``lookahead_objective``) and "fused" (``lm_head_entropy``, plus the winner's block logits
recomputed from its hidden states), with the head's peak extra memory and time (the forward
before it is common to both). With ``--small`` the step is also
measured with the vocabulary doubled, and the JSON holds the per-vocabulary-entry slope of each
path's peak and the peak projected to the full model's vocabulary (at the small hidden size).

All configurations of one run (each architecture's cache modes: dual and
prefix, or the block-causal models' block_causal: SDAR, LLaDA2, SDAR-MoE,
Fast-dLLM v2) are written to one results file.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    add_output_arguments, add_threads_argument, apply_threads, median_time, output_path,
    peak_extra_memory, pick_device, print_table, write_results)

import infogain.models as models  # noqa: E402
from infogain.models.cache import TransformerKVCache  # noqa: E402
from infogain_kernels import lm_head_entropy, lookahead_objective  # noqa: E402


ARCHITECTURES = ("llada-8b", "dream-7b", "sdar-8b", "llada2-mini", "sdar-moe-30b-a3b", "fast-dllm-v2-7b")
# The sparse MoE models shrunk with them: 16 experts, 4 per token. LLaDA2 also keeps its grouped routing (4
# groups of which 2 are kept: 8 experts eligible), one dense layer first and one shared expert, as in the
# full model; SDAR-MoE (softmax over all experts, every layer sparse) needs nothing more.
SMALL_MOE = dict(num_experts=16, num_experts_per_tok=4, moe_intermediate_size=128)
SMALL_LLADA2_MOE = dict(n_group=4, topk_group=2, first_k_dense_replace=1)
# Special ids inside the shrunken vocabulary (the mask is 4095), for the MoE presets and Fast-dLLM v2.
SMALL_SPECIAL_IDS = dict(eos_token_id=4094, pad_token_id=4094)


def small_config(name: str) -> dict:
    """The preset's architecture shrunk to CPU size (same fields, same switches). The vocabulary
    (4096) stays wider than one chunk of the fused head's CPU path, so that the measured slope of
    its peak in V is the one that holds at the full vocabulary."""
    config = models.preset_config(name)
    if "d_model" in config:   # LLaDA's own field names
        config.update(d_model=128, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=256,
                      vocab_size=4096, embedding_size=4096, mask_token_id=4095)
        return config
    config.update(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                  intermediate_size=256, vocab_size=4096, mask_token_id=4095)
    if "head_dim" in config:
        config["head_dim"] = 32
    if "num_experts" in config:
        config.update(SMALL_MOE)
        if "n_group" in config:
            config.update(SMALL_LLADA2_MOE)
    if "num_experts" in config or "bd_size" in config:   # LLaDA2, SDAR-MoE, Fast-dLLM v2
        config.update(SMALL_SPECIAL_IDS)
        if config.get("bos_token_id") is not None:
            config["bos_token_id"] = 4093
    if config.get("rotary_dim") is not None:   # LLaDA2: head_dim * partial_rotary_factor, kept consistent
        config["rotary_dim"] = int(config["head_dim"] * config["partial_rotary_factor"])
    return config


def expand_cache(cache: models.KVCache, n: int) -> models.KVCache:
    """The copying baseline: every layer's K/V repeated n times (contiguous); a shift model's block
    boundary states (Fast-dLLM v2, :class:`~infogain.models.cache.TransformerKVCache`) with them."""
    rep = lambda t: t.repeat_interleave(n, dim=0)  # noqa: E731
    copied = dict(keys=[rep(k) for k in cache.keys], values=[rep(v) for v in cache.values], length=cache.length,
                  token_ids=rep(cache.token_ids), attention_mask=rep(cache.attention_mask), mode=cache.mode)
    boundary = getattr(cache, "boundary", None)
    if boundary:
        return TransformerKVCache(**copied, boundary={p: rep(h) for p, h in boundary.items()})
    return models.KVCache(**copied)


def lookahead_scoring(model, windows, start, cache, mode, cache_rows, block: int):
    """The two ways to score lookahead candidates from the window's hidden states (computed once
    here: the forward is the same for both): ``{"logits": fn, "fused": fn}``.

    "logits" materialises ``[N, W, V]`` (what ``forward_window`` returns) and runs
    ``lookahead_objective``; "fused" runs ``lm_head_entropy``. H_next covers the block and, in prefix
    mode, everything after it (as the sampler); half of those positions are still masked. Both
    return the objective and the winner's block logits. Their peak memory is the head's alone: at
    the shrunken sizes the forward's own activations would hide the logits tensor, which is the
    part that grows with the vocabulary.
    """
    width = windows.shape[1]
    gen = torch.Generator(device="cpu").manual_seed(1)
    remaining = (torch.rand(windows.shape[0], width, generator=gen) < 0.5).to(windows.device)
    cost = torch.rand(windows.shape[0], generator=gen).to(windows.device)
    hidden = model.window_hidden_states(windows, start=start, cache=cache, mode=mode, cache_rows=cache_rows)

    def logits():
        next_logits = model.logits_from_hidden(hidden)
        objective, _ = lookahead_objective(next_logits, remaining, cost, check_values=False)
        return objective, next_logits[0, :block]

    def fused():
        head = lm_head_entropy(hidden, model.lm_head_weight, mask=remaining, cost=cost, variant="info_gain",
                               check_values=False)
        return head.objective, model.logits_from_hidden(hidden[0, :block])

    return {"logits": logits, "fused": fused}


def bench_model(name: str, args, device: torch.device) -> "tuple[list, dict]":
    """Rows (one per cache mode of the architecture) and the config used, for one model."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = small_config(name) if args.small else models.preset_config(name)
    torch.manual_seed(0)
    model = models.build(config, dtype=dtype, device=device)
    wide = None
    if args.small:   # the same model with twice the vocabulary: the slope of the lookahead's peak in V
        wide_config = dict(config)
        vocab_key = "embedding_size" if "embedding_size" in config else "vocab_size"
        wide_config.update({vocab_key: 2 * config[vocab_key], "vocab_size": 2 * config["vocab_size"]})
        wide = models.build(wide_config, dtype=dtype, device=device)
    full_vocab = models.preset_config(name).get("embedding_size") or models.preset_config(name)["vocab_size"]
    block_causal = model.config.block_causal
    T, W, N = args.length or (256 if args.small else 512), args.block, args.candidates
    start = T - 4 * W                       # three blocks after the current one
    gen = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size - 1, (1, T), generator=gen).to(device)
    seg = dict(gen_start=start, block_length=W) if block_causal else {}
    modes = ["block_causal"] if block_causal else ["dual", "prefix"]

    rows = []
    with torch.inference_mode():
        for mode in modes:
            _, cache = model.prefill(ids, None, mode=mode, start=start, **seg)
            width = T - start if mode == "prefix" else W
            windows = ids[:, start:start + width].repeat(N, 1)
            windows[:, :W] = torch.randint(0, model.config.vocab_size - 1, (N, W), generator=gen).to(device)
            cache_rows = torch.zeros(N, dtype=torch.long, device=device)

            def shared():
                return model.forward_window(windows, start=start, cache=cache, mode=mode, cache_rows=cache_rows)

            def copy():
                return model.forward_window(windows, start=start, cache=expand_cache(cache, N), mode=mode)

            torch.testing.assert_close(shared().float(), copy().float(), atol=5e-2 if dtype != torch.float32 else 1e-4,
                                       rtol=5e-2 if dtype != torch.float32 else 1e-4)
            t_shared = median_time(shared, device, repeats=args.repeats)
            t_copy = median_time(copy, device, repeats=args.repeats)
            m_shared = peak_extra_memory(shared, device)
            m_copy = peak_extra_memory(copy, device)
            scoring = lookahead_scoring(model, windows, start, cache, mode, cache_rows, W)
            torch.testing.assert_close(scoring["fused"]()[0], scoring["logits"]()[0], atol=1e-2, rtol=1e-2)
            head = {}
            for path, fn in scoring.items():
                head[f"lookahead_{path}_ms"] = median_time(fn, device, repeats=args.repeats) * 1e3
                head[f"lookahead_{path}_MiB"] = peak_extra_memory(fn, device) / 2**20
            head["head_memory_ratio"] = head["lookahead_logits_MiB"] / head["lookahead_fused_MiB"]
            if wide is not None:
                _, wide_cache = wide.prefill(ids, None, mode=mode, start=start, **seg)
                vocab = model.config.vocab_size
                for path, fn in lookahead_scoring(wide, windows, start, wide_cache, mode, cache_rows, W).items():
                    slope = (peak_extra_memory(fn, device) / 2**20 - head[f"lookahead_{path}_MiB"]) / vocab
                    head[f"lookahead_{path}_MiB_per_vocab"] = slope
                    head[f"projected_lookahead_{path}_MiB"] = head[f"lookahead_{path}_MiB"] + slope * (full_vocab - vocab)
                head["projected_head_memory_ratio"] = (head["projected_lookahead_logits_MiB"]
                                                       / head["projected_lookahead_fused_MiB"])
                del wide_cache
            rows.append({
                "model": name + ("-small" if args.small else ""), "mode": mode, "T": T, "block": W,
                "window": width, "candidates": N, "dtype": str(dtype).replace("torch.", ""),
                "shared_ms": t_shared * 1e3, "copy_ms": t_copy * 1e3, "speedup": t_copy / t_shared,
                "shared_extra_MiB": m_shared / 2**20 if m_shared is not None else None,
                "copy_extra_MiB": m_copy / 2**20 if m_copy is not None else None,
                "memory_ratio": (m_copy / m_shared) if m_shared and m_copy is not None else None,
                **head,
            })
            del cache
    del model
    return rows, {k: config[k] for k in sorted(config)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random-weights", nargs="+", choices=ARCHITECTURES, default=list(ARCHITECTURES),
                        help="architectures to run (default: all); their rows go into one results file")
    parser.add_argument("--small", action="store_true", help="shrunken architecture (CPU)")
    parser.add_argument("--device", default=None)
    add_threads_argument(parser)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--length", type=int, default=None, help="canvas length T (512; 256 with --small)")
    parser.add_argument("--repeats", type=int, default=10)
    add_output_arguments(parser, "models")
    args = parser.parse_args()
    print(f"{apply_threads(args.threads)} torch thread(s)")

    device = pick_device(args.device)
    rows, configs = [], {}
    for name in args.random_weights:
        model_rows, configs[name] = bench_model(name, args, device)
        rows += model_rows
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print_table(rows, ["model", "mode", "window", "candidates", "shared_ms", "copy_ms", "speedup",
                       "shared_extra_MiB", "copy_extra_MiB", "memory_ratio"])
    print_table(rows, ["model", "mode", "window", "candidates", "lookahead_logits_ms", "lookahead_fused_ms",
                       "lookahead_logits_MiB", "lookahead_fused_MiB", "head_memory_ratio",
                       "projected_lookahead_logits_MiB", "projected_lookahead_fused_MiB",
                       "projected_head_memory_ratio"])
    path = write_results(output_path(args, "models", device), "models", device, rows, configs=configs,
                         shared="candidates read one cache row through cascade attention "
                                "(shared-cache and own-window attention merged by log-sum-exp)",
                         baseline="KV cache expanded N times (contiguous copies) then a batch-N window forward",
                         lookahead_fused="window_hidden_states + lm_head_entropy + winner block logits from its "
                                         "hidden states",
                         lookahead_logits="forward_window logits [N, W, V] + lookahead_objective",
                         projection="with --small: peak + (MiB per vocabulary entry, measured with the vocabulary "
                                    "doubled) x (full vocabulary - small vocabulary), at the small hidden size")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
