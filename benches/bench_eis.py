"""EIS tokens/s: ExtendedInferenceSampler (shared-cache tree rollout, fused ops) vs a naive implementation.

The naive baseline is the textbook loop: per generated token, each of the K candidates gets its own copy
of the prompt's KV cache and rolls out L tokens with single-row forwards and unfused torch ops
(log_softmax, sort-based top-p, topk/argmax), i.e. K*L + 1 forwards per token. Both run greedy rollouts at
temperature 0 on the same random-weight model and the script asserts they produce the same tokens.

CPU: a small GPT-2-like model. CUDA: a ~1B-parameter Llama-style model in bf16. K = 5, L = 3.
``--quick`` shortens everything. Writes ./eis-<device>.json (``--out PATH``; ``--update-results`` for the
tracked benches/results/eis-<device>.json).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    add_case_arguments, add_output_arguments, add_threads_argument, apply_threads,
    output_path, pick_device, print_table, synchronize, write_results)

from infogain.eis import ExtendedInferenceSampler  # noqa: E402


def build_model(device, quick):
    torch.manual_seed(0)
    if device.type == "cuda":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
                             num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                             initializer_range=0.05)
        model = LlamaForCausalLM(config).to(device=device, dtype=torch.bfloat16)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(vocab_size=5000, n_positions=512, n_embd=128, n_layer=2 if quick else 4, n_head=4,
                            bos_token_id=0, eos_token_id=0,
                            initializer_range=0.1)
        model = GPT2LMHeadModel(config).to(device)
    return model.eval()


def _nucleus_log_softmax(logits, top_p):
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    if top_p < 1:
        sorted_lp, order = torch.sort(logprobs, descending=True)
        probs = sorted_lp.exp()
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)
        kept = logprobs.masked_fill(drop, -float("inf"))
        logprobs = kept - torch.logsumexp(kept, dim=-1, keepdim=True)
    return logprobs


@torch.no_grad()
def naive_generate(model, input_ids, max_new_tokens, k, lookahead, gamma, top_p):
    """Batch of one; every candidate rolls out alone on its own deep copy of the cache."""
    out = model(input_ids=input_ids, use_cache=True)
    cache, logits, seq = out.past_key_values, out.logits[:, -1], input_ids
    for step in range(max_new_tokens):
        logprobs = _nucleus_log_softmax(logits, top_p)
        cand_lp, candidates = torch.topk(logprobs, k, dim=-1)
        scores = []
        for j in range(k):
            candidate_cache = copy.deepcopy(cache)
            token = candidates[:, j:j + 1]
            score = cand_lp[0, j]
            for t in range(1, lookahead + 1):
                o = model(input_ids=token, past_key_values=candidate_cache, use_cache=True)
                lp = _nucleus_log_softmax(o.logits[:, -1], top_p)
                token = lp.argmax(dim=-1, keepdim=True)
                score = score + gamma ** t * lp.gather(1, token)[0, 0]
            scores.append(score)
        best = int(torch.stack(scores).argmax())
        chosen = candidates[:, best:best + 1]
        seq = torch.cat([seq, chosen], dim=1)
        if step + 1 < max_new_tokens:
            o = model(input_ids=chosen, past_key_values=cache, use_cache=True)
            cache, logits = o.past_key_values, o.logits[:, -1]
    return seq


def timed(fn, device, repeats):
    times, result = [], None
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        result = fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_case_arguments(parser, quick="a smaller model, fewer tokens and repeats", dtype=None)
    add_threads_argument(parser)
    add_output_arguments(parser, "eis")
    args = parser.parse_args()
    print(f"{apply_threads(args.threads)} torch thread(s)")
    device = pick_device(args.device)
    model = build_model(device, args.quick)
    params = sum(p.numel() for p in model.parameters())
    k, lookahead, gamma, top_p = 5, 3, 0.9, 1.0
    new_tokens = 8 if args.quick else 32
    prompt_len = 16 if args.quick else 64
    repeats = 1 if args.quick else 3
    ids = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    sampler = ExtendedInferenceSampler(model, None, lookahead_steps=lookahead, discount_factor=gamma, top_k=k,
                                       temperature=0.0, top_p=top_p, rollout_mode="greedy")

    def fused():
        return sampler.generate(ids, max_new_tokens=new_tokens, eos_token_id=[], pad_token_id=0)

    def naive():
        return naive_generate(model, ids, new_tokens, k, lookahead, gamma, top_p)

    fused()  # warm-up (Triton compile on CUDA)
    t_fused, out_fused = timed(fused, device, repeats)
    t_naive, out_naive = timed(naive, device, repeats)
    same = torch.equal(out_fused, out_naive)
    assert same, f"fused and naive EIS disagree:\n{out_fused[0, prompt_len:]}\n{out_naive[0, prompt_len:]}"
    rows = [
        {"impl": "naive (K cache copies, K*L+1 forwards/token)", "seconds": t_naive,
         "tokens_per_s": new_tokens / t_naive, "speedup": 1.0},
        {"impl": "ExtendedInferenceSampler", "seconds": t_fused, "tokens_per_s": new_tokens / t_fused,
         "speedup": t_naive / t_fused},
    ]
    print(f"device={device} params={params / 1e6:.1f}M prompt={prompt_len} new_tokens={new_tokens} "
          f"K={k} L={lookahead} same_tokens={same}")
    print_table(rows, ["impl", "seconds", "tokens_per_s", "speedup"])
    path = write_results(output_path(args, "eis", device), "eis", device, rows,
                         model_parameters=params, prompt_length=prompt_len,
                         new_tokens=new_tokens, top_k=k, lookahead_steps=lookahead, discount_factor=gamma,
                         top_p=top_p, same_tokens=same, quick=args.quick, dtype=str(next(model.parameters()).dtype))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
