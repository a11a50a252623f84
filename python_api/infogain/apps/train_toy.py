"""Train the embedded toy masked diffusion model (LLaDA architecture) on the synthetic tasks.

Run ``python -m infogain train-toy --out python_api/infogain/assets/toy`` to
reproduce the shipped checkpoint (CPU, two cores, well under 15 minutes with the
defaults). The model is built and saved through :mod:`infogain.models`, so the
result is an ordinary LLaDA-format checkpoint (``config.json`` +
``model.safetensors``) plus a char-level tokenizer (``tokenizer.json`` +
``tokenizer_config.json``) and ``training_log.json`` (seed, steps, wall time,
validation figures).

Objective: the masked-diffusion (LLaDA) loss. Per example draw
``t ~ U(eps, 1]``, mask each generation token independently with probability
``t`` (prompt tokens are never masked), and take the cross-entropy on the masked
positions weighted by ``1/t``, summed and divided by the number of generation
tokens in the batch. Every step uses one batch of each task (tasks have fixed
lengths, so no padding is needed).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..tasks import CharCodec, Example, Task, get_task

SPECIAL_TOKENS = {"pad": "<|pad|>", "eos": "<|eos|>", "bos": "<|bos|>", "mask": "<|mask|>", "unk": "<|unk|>"}
# Every character either task can emit or read.
TOY_CHARSET = "0123456789*="
DEFAULT_TASKS = ("multiplication", "sudoku")
# Examples per task per step. Sudoku is learnt within a few hundred steps while
# multiplication needs many more examples, and a sudoku row is 4x longer, so the
# compute goes mostly to multiplication.
DEFAULT_BATCH_SIZES = {"multiplication": 64, "sudoku": 32}
# Smallest timestep: keeps the 1/t weight bounded.
MIN_MASK_PROB = 1e-3
WARMUP_STEPS = 30
# With a time budget, the step count is fixed from the speed of these first steps.
TIMING_STEPS = 10


def build_tokenizer():
    """The toy char-level tokenizer: 5 special tokens, then one token per character of TOY_CHARSET.

    Returns a ``transformers.PreTrainedTokenizerFast`` with bos/eos/pad/mask/unk
    declared; ids are fixed (pad 0, eos 1, bos 2, mask 3, unk 4, then "0".."9", "*", "=").
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values())
    vocab = {token: i for i, token in enumerate(specials + list(TOY_CHARSET))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    backend.decoder = decoders.Fuse()  # join without spaces
    backend.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=SPECIAL_TOKENS["bos"], eos_token=SPECIAL_TOKENS["eos"], pad_token=SPECIAL_TOKENS["pad"],
        mask_token=SPECIAL_TOKENS["mask"], unk_token=SPECIAL_TOKENS["unk"],
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer, path: str) -> None:
    """Save ``tokenizer`` to ``path`` so that transformers 4.x and 5.x both load it.

    transformers 5 writes its internal class name (``TokenizersBackend``), which
    4.x does not know; ``PreTrainedTokenizerFast`` is understood by both.
    """
    tokenizer.save_pretrained(path)
    config_path = os.path.join(path, "tokenizer_config.json")
    with open(config_path) as fh:
        config = json.load(fh)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(config_path, "w") as fh:
        json.dump(config, fh, indent=2, sort_keys=True)


def toy_config(tokenizer, *, d_model: int = 128, n_layers: int = 4, n_heads: int = 4,
               mlp_hidden_size: int = 256, max_sequence_length: int = 64) -> dict:
    """An official-format LLaDA ``config.json`` dict for the toy model.

    Same fields and architecture switches as LLaDA-8B (llama blocks, RMSNorm,
    RoPE, SiLU-gated MLP, no biases, untied output head); only the sizes differ.
    The embedding is padded to a multiple of 8, as LLaDA pads its vocabulary.
    """
    vocab_size = len(tokenizer)
    return {
        "architectures": ["LLaDAModelLM"],
        "model_type": "llada",
        "d_model": d_model,
        "n_heads": n_heads,
        "n_kv_heads": n_heads,
        "n_layers": n_layers,
        "mlp_hidden_size": mlp_hidden_size,
        "mlp_ratio": mlp_hidden_size // d_model,
        "activation_type": "silu",
        "block_type": "llama",
        "block_group_size": 1,
        "layer_norm_type": "rms",
        "rms_norm_eps": 1e-5,
        "layer_norm_with_affine": True,
        "bias_for_layer_norm": False,
        "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": 10000.0,
        "alibi": False,
        "alibi_bias_max": 8.0,
        "flash_attention": False,
        "multi_query_attention": None,
        "include_bias": False,
        "include_qkv_bias": False,
        "weight_tying": False,
        "input_emb_norm": False,
        "scale_logits": False,
        "vocab_size": vocab_size,
        "embedding_size": 8 * math.ceil(vocab_size / 8),
        "max_sequence_length": max_sequence_length,
        "mask_token_id": tokenizer.mask_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "residual_dropout": 0.0,
        "embedding_dropout": 0.0,
        "attention_dropout": 0.0,
        "init_fn": "mitchell",
        "init_std": 0.02,
        "precision": "fp32",
        "torch_dtype": "float32",
        "use_cache": False,
    }


def encode_batch(codec: CharCodec, examples: Sequence[Example]):
    """``(prompt_ids [B, 1 + P], target_ids [B, G])`` long tensors for same-length examples."""
    prompt_ids = codec.prompt_ids([ex.prompt for ex in examples])
    target_ids = torch.tensor([codec.encode(ex.target) for ex in examples], dtype=torch.long)
    return prompt_ids, target_ids


def masked_diffusion_loss(model, prompt_ids: torch.Tensor, target_ids: torch.Tensor, mask_token_id: int,
                          generator: torch.Generator) -> torch.Tensor:
    """The LLaDA objective on one batch (see the module docstring); returns a scalar.

    ``prompt_ids [B, P]`` are never masked; ``target_ids [B, G]`` are masked with
    per-row probability ``t``; ``generator`` (CPU) draws ``t`` and the masks.
    """
    batch, gen_length = target_ids.shape
    t = MIN_MASK_PROB + (1 - MIN_MASK_PROB) * torch.rand(batch, generator=generator)
    masked = torch.rand(batch, gen_length, generator=generator) < t[:, None]
    noisy = torch.where(masked, torch.full_like(target_ids, mask_token_id), target_ids)
    logits = model(torch.cat([prompt_ids, noisy], dim=1))[:, prompt_ids.shape[1]:]
    token_loss = F.cross_entropy(logits.float().transpose(1, 2), target_ids, reduction="none")
    return (token_loss * masked / t[:, None]).sum() / (batch * gen_length)


@torch.no_grad()
def validate(model, codec: CharCodec, tasks: Sequence[Task], mask_token_id: int, *, num: int = 256,
             seed: int = 0, splits: Sequence[str] = ("heldout", "train")) -> Dict[str, dict]:
    """Figures per task and split: masked-diffusion loss and one-shot accuracy.

    One-shot accuracy fills every generation position at once with the argmax of
    a single forward from the fully masked generation (for multiplication the
    operands are given and only ``c`` is masked, i.e. "does it multiply"). It is
    a training diagnostic, not a sampler. Keys: ``"<split>_loss"`` and
    ``"<split>_one_shot_accuracy"``. The training split shows the fit (a held-out
    multiplication pair is a fact the model never saw).
    """
    model.eval()
    figures = {}
    for task in tasks:
        figures[task.name] = {"num_examples": num}
        for split in splits:
            examples = task.examples(split, num, seed)
            prompt_ids, target_ids = encode_batch(codec, examples)
            loss = masked_diffusion_loss(model, prompt_ids, target_ids, mask_token_id,
                                         torch.Generator().manual_seed(seed)).item()
            masked = torch.ones_like(target_ids, dtype=torch.bool)
            if task.name == "multiplication":
                masked[:, : task.gen_length - task.c_digits] = False
            noisy = torch.where(masked, torch.full_like(target_ids, mask_token_id), target_ids)
            logits = model(torch.cat([prompt_ids, noisy], dim=1))[:, prompt_ids.shape[1]:]
            filled = torch.where(masked, logits.argmax(-1), target_ids)
            correct = sum(task.is_correct(ex.prompt, codec.decode(row)) for ex, row in zip(examples, filled))
            figures[task.name][f"{split}_loss"] = round(loss, 4)
            figures[task.name][f"{split}_one_shot_accuracy"] = correct / len(examples)
    model.train()
    return figures


def _init_weights(model, std: float) -> None:
    # build() leaves torch's layer defaults (unit-variance embeddings); the small
    # normal init of LLaDA/OLMo's config trains faster and more stably here.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, std)


def _learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(out: str, *, steps: int = 3000, batch_sizes: Optional[Dict[str, int]] = None, lr: float = 3e-3,
          seed: int = 0, tasks: Sequence[str] = DEFAULT_TASKS, model_size: Optional[dict] = None,
          log_every: int = 100, validate_num: int = 256, threads: Optional[int] = None,
          time_budget_s: Optional[float] = None, verbose: bool = True, command: Optional[str] = None) -> dict:
    """Train from scratch and save the checkpoint to ``out``; returns the training log dict.

    ``steps`` optimizer steps, each on ``batch_sizes[task]`` examples (default
    :data:`DEFAULT_BATCH_SIZES`) of every task in ``tasks``; AdamW with linear
    warmup and cosine decay to 10% of ``lr``. ``model_size`` overrides
    :func:`toy_config` keywords (d_model, n_layers, ...). ``time_budget_s``: after
    the first steps, lower ``steps`` to what fits in the budget at the measured
    speed (so the LR schedule still completes on a loaded machine); the log
    records the final count, and re-running with that ``steps`` and no budget
    reproduces the run. Deterministic for a given ``seed``, thread count and steps.
    """
    from .. import models

    task_objs = [get_task(name) for name in tasks]   # unknown names fail here, first
    batch_sizes = dict(DEFAULT_BATCH_SIZES, **(batch_sizes or {}))
    for name, value in (("steps", steps), ("log_every", log_every), ("validate_num", validate_num),
                        *((f"batch_sizes[{t!r}]", batch_sizes.get(t)) for t in tasks)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not isinstance(out, str) or not out:
        raise ValueError(f"out must be a non-empty path, got {out!r}")
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)

    tokenizer = build_tokenizer()
    codec = CharCodec(tokenizer, TOY_CHARSET)
    config = toy_config(tokenizer, **(model_size or {}))
    model = models.build(config, dtype=torch.float32, device="cpu")
    _init_weights(model, config["init_std"])
    model.train()
    num_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = min(WARMUP_STEPS, max(1, steps // 10))

    log = {"command": command, "seed": seed, "steps_planned": steps, "batch_sizes": {t: batch_sizes[t] for t in tasks}, "peak_lr": lr,
           "tasks": list(tasks), "num_parameters": num_params, "torch_threads": torch.get_num_threads(),
           "model": {k: config[k] for k in ("d_model", "n_layers", "n_heads", "mlp_hidden_size", "vocab_size",
                                            "embedding_size")},
           "history": []}
    if verbose:
        print(f"training toy model: {num_params} parameters, {steps} steps, seed {seed}, "
              f"{torch.get_num_threads()} threads", flush=True)
    start = time.perf_counter()
    running = 0.0
    step = 0
    while step < steps:
        if time_budget_s is not None and step == TIMING_STEPS and steps > TIMING_STEPS:
            per_step = (time.perf_counter() - start) / TIMING_STEPS
            # 10% of the budget is left for validation, saving and speed noise.
            steps = max(TIMING_STEPS + 1, min(steps, int(0.9 * time_budget_s / per_step)))
            if verbose:
                print(f"{per_step:.2f}s per step: training {steps} steps to fit {time_budget_s:.0f}s", flush=True)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, steps, lr, warmup)
        loss = 0.0
        for task in task_objs:
            examples = [task.sample(rng, "train") for _ in range(batch_sizes[task.name])]
            prompt_ids, target_ids = encode_batch(codec, examples)
            loss = loss + masked_diffusion_loss(model, prompt_ids, target_ids, tokenizer.mask_token_id, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running += loss.item()
        step += 1
        if step % log_every == 0 or step == steps:
            count = (step - 1) % log_every + 1
            entry = {"step": step, "train_loss": round(running / count, 4),
                     "wall_s": round(time.perf_counter() - start, 1)}
            log["history"].append(entry)
            running = 0.0
            if verbose:
                print(f"step {entry['step']:5d}  loss {entry['train_loss']:.4f}  {entry['wall_s']:.0f}s", flush=True)
    log["steps"] = steps
    log["time_budget_s"] = time_budget_s
    log["train_wall_s"] = round(time.perf_counter() - start, 1)
    log["validation"] = validate(model, codec, task_objs, tokenizer.mask_token_id, num=validate_num, seed=seed)

    os.makedirs(out, exist_ok=True)
    models.save(model, out)
    save_tokenizer(tokenizer, out)
    log["total_wall_s"] = round(time.perf_counter() - start, 1)
    with open(os.path.join(out, "training_log.json"), "w") as fh:
        json.dump(log, fh, indent=2)
    if verbose:
        print(f"trained {steps} steps in {log['train_wall_s']:.0f}s; validation:")
        for name, fig in log["validation"].items():
            print(f"  {name:15s} held-out loss {fig['heldout_loss']:.4f}, one-shot accuracy "
                  f"{fig['heldout_one_shot_accuracy']:.3f}; train split {fig['train_loss']:.4f}, "
                  f"{fig['train_one_shot_accuracy']:.3f}  (n={fig['num_examples']} each)")
        print(f"saved to {out}")
    return log


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infogain train-toy", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-sizes", default=",".join(f"{k}={v}" for k, v in DEFAULT_BATCH_SIZES.items()),
                        help="examples per step of each task, as task=N,task=N")
    parser.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated task names")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    try:
        batch_sizes = {name: int(size) for name, size in (item.split("=") for item in args.batch_sizes.split(","))}
    except ValueError:
        parser.error(f"--batch-sizes must look like multiplication=96,sudoku=16, got {args.batch_sizes!r}")
    train(args.out, steps=args.steps, batch_sizes=batch_sizes, lr=args.lr, seed=args.seed,
          tasks=[t for t in args.tasks.split(",") if t], log_every=args.log_every, threads=args.threads,
          time_budget_s=args.time_budget, command="python -m infogain train-toy " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
