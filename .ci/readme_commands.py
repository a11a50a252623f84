#!/usr/bin/env python3
"""The README's commands, run or checked.

Default: run the README's commands verbatim: every line of each ```bash block that follows a
``<!-- ci: verbatim -->`` marker, from the repository root, in order (after ``make test``). Exits
non-zero at the first command that fails. ``--list`` prints them instead.

``--check-arguments [COMMAND ...]``: check, without running anything, that every Python command of
the README's ```bash blocks (or the COMMANDs given) passes its arguments to a parser that accepts
them. Each command's own code runs in this process up to its ``argparse`` parse, which runs for real
(unknown arguments, bad choices and missing values fail as on the command line) and then stops the
command; ``make`` commands must name a target of the Makefile. Prints one JSON object per command
(``{"command": ..., "problem": null or the parser's message}``); exits 1 when one has a problem.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import runpy
import shlex
import sys
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BLOCK = re.compile(r"<!-- ci: verbatim -->\s*```bash\n(.*?)```", re.S)
_ANY_BLOCK = re.compile(r"```bash\n(.*?)```", re.S)
_PYTHON = re.compile(r"^(\.venv/bin/)?python3?$")
_SHELL_OPERATORS = {";", "&&", "||", "|", ">", ">>", "<", "&"}


def verbatim_commands(readme: str) -> List[str]:
    """The command lines of the marked blocks (blank lines and whole-line comments dropped)."""
    lines = []
    for block in _BLOCK.findall(readme):
        lines += [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return lines


def _words(command: str) -> List[str]:
    """The words of the first simple command of ``command`` (comments, environment assignments and
    what follows a shell operator dropped)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = []
    for word in lexer:
        if word in _SHELL_OPERATORS:
            break
        if not words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", word):
            continue
        words.append(word)
    return words


def python_commands(readme: str) -> List[str]:
    """Every command of the README's ```bash blocks that runs Python, the console script ``infogain``
    or ``make`` (continuation lines joined), in order."""
    commands = []
    for block in _ANY_BLOCK.findall(readme):
        for line in block.replace("\\\n", " ").splitlines():
            words = _words(line) if line.strip() and not line.lstrip().startswith("#") else []
            if words and (_PYTHON.match(words[0]) or words[0] in ("infogain", "make")):
                commands.append(line.strip())
    return commands


class _Parsed(Exception):
    """Raised by the patched parser once the command's arguments have been parsed."""

    def __init__(self, problem: Optional[str]):
        super().__init__(problem)
        self.problem = problem


def _overrides_problem(parser: argparse.ArgumentParser, extras: List[str]) -> Optional[str]:
    """Arguments a parser leaves to its program (``parse_known_args``): only ``infogain eval`` does,
    for its ``--key value`` config overrides, which its config loader checks."""
    if parser.prog != "infogain eval":
        return f"{parser.prog} leaves {extras} to code this check cannot run" if extras else None
    from infogain.evaluation.config import EvalConfig, coerce, parse_overrides

    fields = set(EvalConfig.__dataclass_fields__)
    try:
        from infogain.evaluation.config import KEY_ALIASES
    except ImportError:
        KEY_ALIASES = {}
    try:
        for key, value in parse_overrides(extras):
            key = KEY_ALIASES.get(key.replace("-", "_"), key.replace("-", "_"))
            if key not in fields and key != "no_shot":
                return f"infogain eval: unknown config key {key!r}"
            if key in fields:
                coerce(key, value)
    except ValueError as exc:
        return f"infogain eval: {exc}"
    return None


@contextlib.contextmanager
def _stop_after_parsing():
    """Make the first parser that keeps all its arguments (no ``REMAINDER`` positional handing them on
    to a sub-command's parser) raise :class:`_Parsed` right after parsing."""
    original_known, original_args = argparse.ArgumentParser.parse_known_args, argparse.ArgumentParser.parse_args
    strict = []

    def parse_args(self, args=None, namespace=None):
        strict.append(True)
        try:
            return original_args(self, args, namespace)
        finally:
            strict.pop()

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = original_known(self, args, namespace)
        if any(action.nargs == argparse.REMAINDER for action in self._actions):
            return namespace, extras
        if extras and strict:
            raise _Parsed(f"{self.prog}: unrecognized arguments: {' '.join(extras)}")
        raise _Parsed(_overrides_problem(self, extras))

    argparse.ArgumentParser.parse_known_args, argparse.ArgumentParser.parse_args = parse_known_args, parse_args
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_known_args, argparse.ArgumentParser.parse_args = original_known, original_args


def _make_targets() -> List[str]:
    with open(os.path.join(ROOT, "Makefile")) as fh:
        return re.findall(r"^([A-Za-z0-9_.-]+):", fh.read(), re.M)


def check_arguments(command: str) -> Optional[str]:
    """None when ``command``'s parser accepts its arguments, else what is wrong (see the module doc)."""
    words = _words(command)
    if words[0] == "make":
        missing = [w for w in words[1:] if not w.startswith("-") and "=" not in w and w not in _make_targets()]
        return f"no Makefile target {missing}" if missing else None
    if words[0] == "infogain":
        words = ["python", "-m", "infogain"] + words[1:]
    if len(words) < 2:
        return "no script or module to run"
    module = words[2] if words[1] == "-m" else None
    args = words[3:] if module else words[2:]
    script = None if module else os.path.join(ROOT, words[1])
    if "--help" in args or "-h" in args:   # --help exits before unknown arguments are reported
        without_help = [w for w in words if w not in ("--help", "-h")]
        problem = check_arguments(shlex.join(without_help))
        if problem is not None:
            return problem
    saved = sys.argv, list(sys.path)
    sys.argv = [module or script] + args
    if script:
        sys.path.insert(0, os.path.dirname(script))
    errors = io.StringIO()
    try:
        with _stop_after_parsing(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
            if module:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(script, run_name="__main__")
    except _Parsed as parsed:
        return parsed.problem
    except SystemExit as exc:   # argparse's error (2) or --help (0); a command that exits before parsing
        if exc.code in (0, None) and "usage:" in errors.getvalue() + "usage:" * ("--help" in args):
            return None
        return f"exit {exc.code}: {errors.getvalue().strip()[-600:] or exc.code}"
    finally:
        sys.argv, sys.path[:] = saved
    return "the command ran to its end without parsing arguments"


def main(argv: List[str]) -> int:
    with open(os.path.join(ROOT, "README.md")) as fh:
        readme = fh.read()
    if argv[:1] == ["--check-arguments"]:
        problems = 0
        for command in argv[1:] or python_commands(readme):
            problem = check_arguments(command)
            problems += problem is not None
            print(json.dumps(dict(command=command, problem=problem)), flush=True)
        return 1 if problems else 0
    commands = verbatim_commands(readme)
    if not commands:
        print("README.md has no '<!-- ci: verbatim -->' blocks", file=sys.stderr)
        return 1
    for command in commands:
        print(f"$ {command}", flush=True)
        if "--list" in argv:
            continue
        if subprocess_run(command) != 0:
            print(f"README command failed: {command}", file=sys.stderr)
            return 1
    return 0


def subprocess_run(command: str) -> int:
    import subprocess

    return subprocess.run(["bash", "-c", command], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
