"""Command line: ``python -m infogain <command> [options]`` (also the ``infogain`` console script).

``demo``       runs the samplers on the embedded toy model's tasks (:mod:`.demo`).
``bench``      measures end-to-end tokens/s, NFE and bypass rate (:mod:`.bench`).
``chat``       interactive multi-turn chat with a checkpoint (:mod:`.chat`).
``eval``       evaluates a sampler on a benchmark task (:mod:`infogain.evaluation.runner`).
``lm-eval``    lm-evaluation-harness's command line with the ``infogain`` model (:mod:`.lm_eval`).
``gpu-check``  the one-command GPU check: build, GPU tests, sweep, benchmarks (:mod:`.gpu_check`).
``train-toy``  trains the shipped toy model (:mod:`.train_toy`).

Each command parses its own options; ``python -m infogain <command> --help`` lists them.
"""
from __future__ import annotations

import argparse
import importlib
from typing import List, Optional

COMMANDS = {
    "demo": "run the samplers on the embedded toy model and print accuracy / entropy / NFE / tokens/s",
    "bench": "end-to-end tokens/s, NFE and bypass rate per sampler and cache mode",
    "chat": "interactive multi-turn chat with a diffusion LM checkpoint, answers shown block by block",
    "eval": "evaluate a sampler on a benchmark task (configs, torchrun / accelerate, resume, summary)",
    "lm-eval": "lm-evaluation-harness's command line with the infogain model registered",
    "gpu-check": "on a CUDA machine: build, GPU tests, CUDA graphs, kernel sweep and benchmarks, JSON results",
    "train-toy": "train the toy model shipped with the package (CPU, minutes)",
}
# The module whose main(argv) runs each command, imported only when chosen: each pulls in
# torch/models/samplers, and a broken optional command must not break the others.
COMMAND_MODULES = {"demo": ".demo", "bench": ".bench", "chat": ".chat", "eval": "..evaluation.runner",
                   "lm-eval": ".lm_eval", "gpu-check": ".gpu_check", "train-toy": ".train_toy"}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infogain", description="Info-Gain samplers for masked diffusion LMs.",
        epilog="Run 'infogain <command> --help' for a command's options.")
    parser.add_argument("command", choices=sorted(COMMANDS),
                        help="; ".join(f"{name}: {text}" for name, text in COMMANDS.items()))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="options of the command")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to the command's ``main``; returns its exit code."""
    args = _build_parser().parse_args(argv)
    from .._runtime.allocator import keep_freed_memory

    keep_freed_memory()   # every command runs models: see infogain._runtime.allocator
    command = importlib.import_module(COMMAND_MODULES[args.command], __package__)
    return int(command.main(args.args) or 0)
