"""Quality effect of ``lookahead_eos_fill`` (does the lookahead score EOS-filled states?).

With ``lookahead_eos_fill=True`` the Info-Gain lookahead evaluates each candidate on the
state its commit produces *including* the EOS fill, so a candidate that commits EOS empties
the remaining masks and sees H_next = 0: a bias toward early EOS. The reference pipeline scores
the candidate state without the fill (``lookahead_eos_fill=False``). This script runs the
Info-Gain sampler both ways on the demo's toy tasks (the shipped toy model) and reports
accuracy, the rate of generations that end early (EOS before the task's answer length),
cumulative entropy and NFE.

Scenarios per task:
  ``plain``    the demo's settings (the answer fills the generation exactly);
  ``longer``   ``gen_length`` = answer length + ``--extra`` positions (the model must stop);
  ``eos+B``    ``longer`` with EOS logits raised by B (``eos_penalty=-B``): a model that
               emits EOS readily, where the bias can show.

Runs at ``--threads`` CPU threads (default 1). Prints a table; writes JSON to ``--out``
(default ``./lookahead-eos-<device>.json``; never a tracked file unless asked).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import add_output_arguments, output_path, pick_device, print_table, write_results  # noqa: E402

from infogain import models  # noqa: E402
from infogain.apps.demo import DEMO_SETTINGS, TASK_TEMPERATURE, toy_model_path  # noqa: E402
from infogain.samplers import InfoGainSampler  # noqa: E402
from infogain.tasks import TASKS, CharCodec  # noqa: E402

COLUMNS = ["task", "scenario", "eos_fill", "accuracy", "early_eos", "cum_entropy", "nfe", "wall_s"]


def run(sampler, codec, task, prompts, *, gen_length, eos_boost, fill, seed, device):
    prompt_ids = codec.prompt_ids(prompts).to(device)
    started = time.perf_counter()
    result = sampler.generate(prompt_ids, gen_length=gen_length, steps=gen_length, block_length=gen_length,
                              seed=seed, temperature=TASK_TEMPERATURE[task.name], eos_penalty=-eos_boost,
                              lookahead_eos_fill=fill, **DEMO_SETTINGS)
    wall = time.perf_counter() - started
    eos_id = sampler.eos_id
    correct = early = 0
    for prompt, row in zip(prompts, result.sequences.tolist()):
        answer = row[:task.gen_length]
        early += eos_id in answer
        correct += task.is_correct(prompt, codec.decode(answer))
    rows = result.stats.rows
    return {"accuracy": correct / len(prompts), "early_eos": early / len(prompts),
            "cum_entropy": sum(r.cumulative_entropy for r in rows) / len(rows),
            "nfe": sum(r.nfe for r in rows) / len(rows), "wall_s": wall}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-samples", type=int, default=100, help="held-out problems per task")
    parser.add_argument("--extra", type=int, default=4, help="positions beyond the answer ('longer' scenarios)")
    parser.add_argument("--eos-boost", type=float, nargs="*", default=[2.0, 4.0],
                        help="EOS logit boosts of the eos+B scenarios")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (problems and sampling)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    add_output_arguments(parser, "lookahead-eos")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model, tokenizer = models.load(toy_model_path())
    model = model.to(device)
    sampler = InfoGainSampler(model, tokenizer)
    scenarios = [("plain", 0, 0.0), ("longer", args.extra, 0.0)]
    scenarios += [(f"eos+{b:g}", args.extra, b) for b in args.eos_boost]
    rows = []
    for task in TASKS.values():
        codec = CharCodec(tokenizer, task.charset)
        for name, extra, boost in scenarios:
            for fill in (False, True):
                totals = None
                for seed in args.seeds:
                    prompts = [ex.prompt for ex in task.examples("heldout", args.num_samples, seed)]
                    got = run(sampler, codec, task, prompts, gen_length=task.gen_length + extra, eos_boost=boost,
                              fill=fill, seed=seed, device=device)
                    totals = got if totals is None else {k: totals[k] + got[k] for k in got}
                mean = {k: v / len(args.seeds) for k, v in totals.items()}
                rows.append({"task": task.name, "scenario": name, "eos_fill": fill, **mean})
                print(f"{task.name} {name} eos_fill={fill}: accuracy {mean['accuracy']:.3f}", flush=True)
    print()
    print_table(rows, COLUMNS)
    path = write_results(output_path(args, "lookahead-eos", device), "lookahead_eos", device, rows,
                         threads=args.threads, num_samples=args.num_samples, seeds=args.seeds,
                         settings=DEMO_SETTINGS)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
