"""The README's toy evaluation example (issue 21, rough edges 1 and 2): its table and ``--compare`` block are what
the committed output folders in ``docs/examples/eval-toy`` give, those folders come from a clean commit, and the
README's loop runs on them as written (it resumes them: every problem is already graded)."""
import json
import os
import re
import shutil

import pytest

from infogain.apps import cli
from infogain.evaluation.summary import compare, format_comparison, format_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = "docs/examples/eval-toy"
COMPARE_FILE = os.path.join(ROOT, EXAMPLES, "compare-toy_sudoku-info_gain-vs-fast_dllm.txt")
with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
    README = fh.read()
# The loop: `for t in <tasks>; do for s in <samplers>; do` ... `--output_dir docs/examples/eval-toy/${t}_$s`.
LOOP = re.search(r"for t in ([\w ]+); do for s in ([\w ]+); do\n\s*python -m infogain eval --config \$\{t\}_\$s "
                 r"--output_dir " + re.escape(EXAMPLES) + r"/\$\{t\}_\$s; done; done\n```\n", README)
COMPARE_COMMAND = re.search(r"\$ (python -m infogain eval --compare (\S+) (\S+))\n", README)


def _block_after(position: int) -> str:
    """The text of the first fenced block that opens after ``position``."""
    start = README.index("```\n", position) + len("```\n")
    return README[start:README.index("\n```", start)]


def _configs():
    return [f"{t}_{s}" for t in LOOP.group(1).split() for s in LOOP.group(2).split()]


def _summary(directory):
    with open(os.path.join(directory, "summary.json"), encoding="utf-8") as fh:
        return json.load(fh)


def test_the_readme_names_the_loop_and_the_comparison():
    assert LOOP is not None and COMPARE_COMMAND is not None
    assert len(_configs()) == 6


def test_the_readme_table_is_the_committed_summaries():
    summaries = [_summary(os.path.join(ROOT, EXAMPLES, name)) for name in _configs()]
    assert _block_after(LOOP.end()) == format_table(summaries)


def test_the_readme_comparison_is_the_committed_summaries():
    dirs = [COMPARE_COMMAND.group(2), COMPARE_COMMAND.group(3)]
    first, second = (_summary(os.path.join(ROOT, d)) for d in dirs)
    printed = format_comparison(dirs, first, second, compare(first, second))
    assert _block_after(COMPARE_COMMAND.start() - len("```\n")) == f"$ {COMPARE_COMMAND.group(1)}\n{printed}"
    with open(COMPARE_FILE, encoding="utf-8") as fh:
        assert fh.read().rstrip("\n") == printed


@pytest.mark.parametrize("name", ["toy_multiplication_info_gain", "toy_multiplication_confidence",
                                  "toy_multiplication_fast_dllm", "toy_sudoku_info_gain", "toy_sudoku_confidence",
                                  "toy_sudoku_fast_dllm"])
def test_each_folder_is_a_complete_run_of_a_clean_commit(name):
    assert name in _configs()
    folder = os.path.join(ROOT, EXAMPLES, name)
    for file in ("run.json", "samples.rank0.jsonl", "samples.jsonl", "env.rank0.json", "summary.json"):
        assert os.path.isfile(os.path.join(folder, file)), file
    summary = _summary(folder)
    assert summary["complete"] and summary["problems"] == summary["config"]["max_samples"] == 100
    assert summary["config"]["output_dir"] == f"{EXAMPLES}/{name}"
    for process in summary["environment"]["processes"]:
        assert re.fullmatch(r"[0-9a-f]{40}", process["git_commit"] or ""), process["git_commit"]  # no "-dirty"


def test_the_readme_loop_resumes_the_committed_folders(tmp_path):
    """The loop as written, each output folder a copy of the committed one: nothing is decoded (every problem is
    graded and the config hash matches) and the accuracies are the committed ones."""
    for name in _configs():
        committed = os.path.join(ROOT, EXAMPLES, name)
        copy = str(tmp_path / name)
        shutil.copytree(committed, copy)
        assert cli.main(["eval", "--config", name, "--output_dir", copy]) == 0
        before, after = _summary(committed), _summary(copy)
        assert after["samples_this_invocation"] == 0
        for key in ("config_hash", "problems", "correct", "accuracy", "accuracy_ci95", "metrics", "nfe",
                    "generation_s", "tokens_per_s"):
            assert after[key] == before[key], (name, key)
