"""``python -m infogain demo``: the samplers side by side on the embedded toy model.

Runs every selected sampler on a fixed held-out set of every selected task
(:mod:`infogain.tasks`) with the toy masked diffusion model shipped in
``infogain/assets/toy`` (or any checkpoint given with ``--model`` whose
tokenizer has one token per task character), then prints one table --
sampler, task, accuracy, cumulative entropy, NFE, bypass rate, tokens/s --
and writes it to ``<out>/demo.json`` and ``<out>/demo.png``.

Decoding settings: the whole generation is one block decoded one token per
step (``steps == gen_length``), so the samplers differ in the order in which
they commit positions -- exactly what the tasks test. Multiplication samples
its tokens at temperature 1 (every row starts from the same empty prompt);
sudoku takes the argmax. ``--seed`` fixes both the problems and the sampling.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

from .._runtime import allocator as _allocator, threads as _threads
from ..models.hub import toy_model_path
from ..samplers.options import CACHE_MODES, GenerateOptions
from ..tasks import TASKS, CharCodec, get_task
from ._cliutil import HelpFormatter, make_output_dir, parse_device, split_list

DEMO_SAMPLERS = ("info_gain", "lookum", "confidence", "entropy", "margin", "random", "fast_dllm")
DEFAULT_NUM_SAMPLES = 100
# Sampler settings shared by every run of the demo: generate's defaults (the Info-Gain paper's), except a
# higher bypass threshold, the demo's one deliberate difference.
DEMO_SETTINGS = {"candidate_number": GenerateOptions.candidate_number,
                 "position_temperature": GenerateOptions.position_temperature, "threshold": 0.9}
# Token temperature per task. Multiplication starts every row from the same empty
# prompt, so argmax tokens would give one equation repeated N times: its tokens
# are sampled. Sudoku prompts differ, and a puzzle has a right answer: argmax.
TASK_TEMPERATURE = {"multiplication": 1.0, "sudoku": 0.0}
TABLE_COLUMNS = ("sampler", "task", "accuracy", "cum_entropy", "nfe", "bypass_rate", "tokens_per_s")


def _parse_list(name: str, text: str, allowed: Sequence[str]) -> List[str]:
    items = split_list(f"--{name}", text)
    unknown = [item for item in items if item not in allowed]
    if unknown:
        raise ValueError(f"--{name}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infogain demo", description=__doc__.split("\n\n")[1].replace("\n", " "),
                                     formatter_class=HelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {', '.join(TASKS)}")
    parser.add_argument("--samplers", default=",".join(DEMO_SAMPLERS), help="comma-separated sampler names")
    parser.add_argument("--num-samples", type=int, default=DEFAULT_NUM_SAMPLES, help="held-out problems per task")
    parser.add_argument("--seed", type=int, default=0, help="selects the held-out problems and seeds the samplers")
    parser.add_argument("--out", default="./infogain-demo", help="folder for demo.json and demo.png")
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the embedded toy model)")
    parser.add_argument("--cache", default=GenerateOptions.cache, choices=CACHE_MODES, help="KV-cache mode")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _threads.add_threads_argument(parser)
    return parser


def _sampler_names() -> List[str]:
    from .. import samplers

    return list(samplers.SAMPLERS)


def run_one(sampler, codec: CharCodec, task, prompts: Sequence[str], *, seed: int, cache: str,
            device: torch.device) -> dict:
    """Generate for every prompt of ``task`` with ``sampler``; returns one table row (without names)."""
    prompt_ids = codec.prompt_ids(prompts).to(device)
    result = sampler.generate(
        prompt_ids, gen_length=task.gen_length, steps=task.gen_length, block_length=task.gen_length,
        cache=cache, seed=seed, progress=False, temperature=TASK_TEMPERATURE[task.name], **DEMO_SETTINGS)
    generations = result.sequences.cpu()  # [B, gen_length], without the prompt
    texts = [codec.decode(row) for row in generations]
    correct = [task.is_correct(p, t) for p, t in zip(prompts, texts)]
    stats = result.stats
    num_rows = len(stats.rows)
    return {
        "accuracy": sum(correct) / len(correct),
        # Multiplication rows share one prompt: how many different right answers were found.
        "distinct_correct": len({t for t, c in zip(texts, correct) if c}),
        # Per-problem means: the aggregate entropy is a sum over rows, and the
        # aggregate NFE counts a batched call once whatever the batch size.
        "cum_entropy": stats.cumulative_entropy / num_rows,
        "nfe": sum(row.nfe for row in stats.rows) / num_rows,
        "bypass_rate": stats.bypass_rate,
        "tokens_per_s": stats.tokens_per_second,
        "batch_nfe": stats.nfe,
        "candidate_evals": stats.candidate_evals,
        "wall_s": stats.wall_time_s,
        "examples": [{"prompt": p, "generation": t, "correct": c} for p, t, c in zip(prompts, texts, correct)],
    }


def format_table(rows: Sequence[dict]) -> str:
    """The demo's table as aligned text (one line per sampler x task)."""
    header = ("sampler", "task", "accuracy", "cum. entropy", "NFE", "bypass", "tokens/s")
    lines = [(r["sampler"], r["task"], f"{r['accuracy']:.3f}", f"{r['cum_entropy']:.3f}", f"{r['nfe']:.1f}",
              f"{r['bypass_rate']:.3f}", f"{r['tokens_per_s']:.0f}") for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines])


def write_chart(rows: Sequence[dict], path: str) -> None:
    """Grouped bars of accuracy and cumulative entropy per sampler, one group per task, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    by_key = {(r["sampler"], r["task"]): r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(samplers)
    for metric, title, ax in (("accuracy", "accuracy (higher is better)", axes[0]),
                              ("cum_entropy", "cumulative entropy (lower is better)", axes[1])):
        for i, sampler in enumerate(samplers):
            values = [by_key[(sampler, t)][metric] if (sampler, t) in by_key else 0.0 for t in tasks]
            ax.bar([j + i * width for j in range(len(tasks))], values, width, label=sampler)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))])
        ax.set_xticklabels(tasks)
        ax.set_title(title)
    axes[0].set_ylim(0, 1)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``infogain demo``; ``argv`` defaults to ``sys.argv[1:]``. Returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        tasks = [get_task(name) for name in _parse_list("tasks", args.tasks, list(TASKS))]
        sampler_names = _parse_list("samplers", args.samplers, _sampler_names())
        if args.num_samples < 1:
            raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
        device = parse_device("--device", args.device)
        model_path = args.model or toy_model_path()
        if not os.path.isfile(os.path.join(model_path, "config.json")):
            raise ValueError(f"--model {model_path!r} is not a checkpoint folder (no config.json)")
        make_output_dir("--out", args.out)  # before the runs, not after them
    except ValueError as exc:
        parser.error(str(exc))

    from tqdm import tqdm

    from .. import models, samplers

    kept = _allocator.keep_freed_memory()   # before the first large allocation
    try:
        model, tokenizer = models.load(model_path)
    except ValueError as exc:   # a broken checkpoint (e.g. a truncated model.safetensors) names its file
        parser.error(f"--model {model_path!r}: {exc}")
    model = model.to(device).eval()
    try:
        # One forward covers every prompt of a task: the work per forward is prompts x positions.
        threads = _threads.apply_threads(args.threads, num_parameters=_threads.model_parameters(model),
                                         tokens_per_forward=args.num_samples * model.config.max_position_embeddings)
    except ValueError as exc:
        parser.error(str(exc))
    if tokenizer is None:
        parser.error(f"--model {model_path!r} has no tokenizer; the tasks need one")
    try:
        codec = CharCodec(tokenizer, "".join(task.charset for task in tasks))
    except ValueError as exc:
        parser.error(f"--model {model_path!r} cannot encode the tasks: {exc}")

    rows = []
    runs = [(task, name) for task in tasks for name in sampler_names]
    start = time.perf_counter()
    with tqdm(runs, desc="demo", unit="run", disable=args.no_progress, file=sys.stderr) as bar:
        for task, name in bar:
            bar.set_postfix_str(f"{task.name} / {name}")
            prompts = [ex.prompt for ex in task.examples("heldout", args.num_samples, args.seed)]
            sampler = samplers.make_sampler(name, model, tokenizer)
            row = run_one(sampler, codec, task, prompts, seed=args.seed, cache=args.cache, device=device)
            rows.append({"sampler": name, "task": task.name, **row})
    wall = time.perf_counter() - start

    print(format_table(rows))
    record = {
        "model": os.path.abspath(model_path), "device": str(device),
        # The threads torch computed with, not the core count.
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads"
        if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch": torch.__version__, "threads": threads,
        "keep_freed_memory": kept, "num_samples": args.num_samples, "seed": args.seed, "cache": args.cache,
        "settings": DEMO_SETTINGS, "temperature": {task.name: TASK_TEMPERATURE[task.name] for task in tasks},
        "wall_s": round(wall, 2),
        "gen_lengths": {task.name: task.gen_length for task in tasks}, "rows": rows,
    }
    json_path = os.path.join(args.out, "demo.json")
    with open(json_path, "w") as fh:
        json.dump(record, fh, indent=2)
    png_path = os.path.join(args.out, "demo.png")
    write_chart(rows, png_path)
    print(f"\n{len(runs)} runs in {wall:.1f}s on {record['machine']} ({threads} torch thread"
          f"{'s' if threads != 1 else ''}); wrote {json_path} and {png_path}")
    return 0
