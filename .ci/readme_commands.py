#!/usr/bin/env python3
"""Run the README's commands verbatim: every line of each ```bash block that follows a
``<!-- ci: verbatim -->`` marker, from the repository root, in order (after ``make test``).
Exits non-zero at the first command that fails. ``--list`` prints them instead."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BLOCK = re.compile(r"<!-- ci: verbatim -->\s*```bash\n(.*?)```", re.S)


def verbatim_commands(readme: str) -> List[str]:
    """The command lines of the marked blocks (blank lines and whole-line comments dropped)."""
    lines = []
    for block in _BLOCK.findall(readme):
        lines += [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return lines


def main(argv: List[str]) -> int:
    with open(os.path.join(ROOT, "README.md")) as fh:
        commands = verbatim_commands(fh.read())
    if not commands:
        print("README.md has no '<!-- ci: verbatim -->' blocks", file=sys.stderr)
        return 1
    for command in commands:
        print(f"$ {command}", flush=True)
        if "--list" in argv:
            continue
        if subprocess.run(["bash", "-c", command], cwd=ROOT).returncode != 0:
            print(f"README command failed: {command}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
