"""``python -m infogain lm-eval``: lm-evaluation-harness's own command line with the ``infogain`` model.

Registers the ``infogain`` model (:mod:`infogain.evaluation.lm_eval_model`) and runs the
harness's CLI with the remaining arguments; ``--model infogain`` is implied::

    python -m infogain lm-eval --tasks gsm8k --batch_size 8 \\
        --model_args pretrained=/ckpt/LLaDA-8B-Instruct,sampler=info_gain,cache=dual,gen_length=256,block_length=32
    accelerate launch --num_processes 8 -m infogain lm-eval --tasks gsm8k --model_args pretrained=...

Every harness option works (``--apply_chat_template``, ``--limit``,
``--output_path``, ``--log_samples``, ``--include_path`` ...). Needs ``lm-eval``
(``pip install lm-eval``).
"""
from __future__ import annotations

import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    """Run the harness CLI on ``argv`` (default ``sys.argv[1:]``) with the infogain model registered."""
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError as exc:  # keep the message actionable: the harness is an optional dependency
        raise SystemExit(f"python -m infogain lm-eval needs lm-evaluation-harness: pip install lm-eval ({exc})")
    from ..evaluation import lm_eval_model  # noqa: F401  (registers the "infogain" model)

    args = list(sys.argv[1:] if argv is None else argv)
    commands = ("run", "ls", "validate")
    if not args or args[0] not in commands + ("-h", "--help"):
        args = ["run"] + args
    if args[0] == "run" and not any(a == "--model" or a.startswith("--model=") for a in args):
        args[1:1] = ["--model", "infogain"]
    saved = sys.argv
    sys.argv = ["infogain lm-eval"] + args
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
