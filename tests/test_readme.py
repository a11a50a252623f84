"""The README says what the code does: its verbatim commands (run by ``.ci/run``), the ops'
shapes and the command behind each quoted benchmark record."""
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

import infogain_kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "README.md")) as fh:
    README = fh.read()


def _readme_commands_module():
    spec = importlib.util.spec_from_file_location("readme_commands", os.path.join(ROOT, ".ci", "readme_commands.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ci_runs_the_verbatim_readme_commands():
    commands = _readme_commands_module().verbatim_commands(README)
    assert any(c.startswith(".venv/bin/python -m infogain demo") for c in commands)
    # After `make test` only .venv has the packages: every verbatim command must use it.
    assert all(c.startswith(".venv/bin/") or c.startswith("make ") for c in commands), commands
    with open(os.path.join(ROOT, ".ci", "run")) as fh:
        assert "readme_commands.py" in fh.read()


def test_readme_commands_parse_with_their_own_parsers():
    """Every Python / make command of the README's bash blocks, checked by its own argparse parser
    without running it (``readme_commands.py --check-arguments``; no ``--help`` appended, which would
    exit before unknown arguments are reported). The last command is the negative control."""
    module = _readme_commands_module()
    commands = module.python_commands(README)
    assert set(module.verbatim_commands(README)) <= set(commands)
    assert any(c.startswith("python -m infogain lm-eval") for c in commands)       # continuation lines
    bad = ".venv/bin/python -m infogain demo --no-such-flag 3"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "python_api")]))
    done = subprocess.run([sys.executable, os.path.join(ROOT, ".ci", "readme_commands.py"), "--check-arguments",
                           *commands, bad, bad + " --help"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["command"] for r in results] == commands + [bad, bad + " --help"], done.stderr[-2000:]
    assert [r for r in results[:-2] if r["problem"] is not None] == []
    for control in results[-2:]:
        assert control["problem"] == "infogain demo: unrecognized arguments: --no-such-flag 3", control
    assert done.returncode == 1


def test_readme_names_each_ops_shape():
    ops = [name for name in infogain_kernels.__all__ if name != "use_backend"]
    paragraph = README.split("## Use it in your own code")[1].split("```python")[0]
    for op in ops:
        assert f"`{op}`" in paragraph, op
    assert "igk`) take any leading shape" not in paragraph  # 2-D / 3-D ops exist


@pytest.mark.parametrize("record", ["e2e-cpu-llada-arch-52M.json"])
def test_quoted_benchmark_command_reproduces_its_record(record):
    """The README's command for a record has the record's settings."""
    line = next(line for line in README.splitlines() if line.startswith(".venv/bin/python") and record in line)
    argv = shlex.split(line)[3:]  # after `.venv/bin/python -m infogain`
    assert argv[0] == "bench"
    from infogain.apps import bench

    args = bench.build_parser().parse_args(argv[1:])
    with open(os.path.join(ROOT, "benches", "results", record)) as fh:
        settings = json.load(fh)["settings"]
    assert settings["model"] == f"random-weights:{args.random_weights} ({args.config})"
    assert settings["dtype"] == args.dtype
    for name in ("gen_length", "steps", "block_length", "repeats"):
        assert settings[name] == getattr(args, name), name
    assert settings["candidate_number"] == args.candidates
    assert settings["threshold"] == args.threshold and settings["seed"] == args.seed
    assert re.search(r"--config\s+\S+=", line)


def test_readme_says_how_long_make_test_takes():
    # A new user sees minutes without output while the extension builds: the README says what to expect.
    section = README.split("\n## Test\n")[1].split("\n## ")[0]
    assert re.search(r"about \d+ minutes", section) and "extension" in section
