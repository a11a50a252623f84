"""Command line: ``python -m infogain demo|bench|eval [options]`` (also the ``infogain`` console script).

``demo``  runs the samplers on the embedded toy model's tasks (:mod:`infogain.demo`).
``bench`` measures end-to-end tokens/s, NFE and bypass rate (:mod:`infogain.bench`).
``chat``  interactive multi-turn chat with a checkpoint (:mod:`infogain.chat`).
``eval``  evaluates a sampler on a benchmark task (:mod:`infogain.evaluation`).

Each command parses its own options; ``python -m infogain <command> --help`` lists them.
"""
from __future__ import annotations

import argparse
from typing import List, Optional

COMMANDS = {
    "demo": "run the samplers on the embedded toy model and print accuracy / entropy / NFE / tokens/s",
    "bench": "end-to-end tokens/s, NFE and bypass rate per sampler and cache mode",
    "chat": "interactive multi-turn chat with a diffusion LM checkpoint, answers shown block by block",
    "eval": "evaluate a sampler on a benchmark task (configs, torchrun / accelerate, resume, summary)",
}


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
    from ._allocator import keep_freed_memory

    keep_freed_memory()   # every command runs models: see infogain._allocator
    # Commands are imported lazily: each pulls in torch/models/samplers, and a
    # broken optional command must not break the others.
    if args.command == "demo":
        from . import demo as command
    elif args.command == "chat":
        from . import chat as command
    elif args.command == "eval":
        from .evaluation import runner as command
    else:
        from . import bench as command
    return int(command.main(args.args) or 0)
