"""The scripts in ``benches/`` write their JSON to ``--out`` or the working directory, and the tracked
``benches/results/`` only with ``--update-results``."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHES = os.path.join(ROOT, "benches")
SCRIPTS = sorted(f for f in os.listdir(BENCHES) if f.startswith("bench_") and f.endswith(".py"))


def _run(script, *args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "python_api")]))
    return subprocess.run([sys.executable, os.path.join(BENCHES, script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_offers_out_and_update_results(script, tmp_path):
    done = _run(script, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "--out PATH" in done.stdout and "--update-results" in done.stdout
    assert os.listdir(tmp_path) == []


def test_a_run_writes_to_the_working_directory_only(tmp_path):
    results = os.path.join(BENCHES, "results")
    before = {f: os.path.getmtime(os.path.join(results, f)) for f in os.listdir(results)}
    done = _run("bench_ops.py", "--quick", "--ops", "gumbel_topk", "--device", "cpu", "--threads", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert os.listdir(tmp_path) == ["ops-cpu.json"]
    assert "fused_ms" in done.stdout  # the table
    assert {f: os.path.getmtime(os.path.join(results, f)) for f in os.listdir(results)} == before


def test_output_path_choices(tmp_path):
    sys.path.insert(0, BENCHES)
    try:
        import _common
    finally:
        sys.path.remove(BENCHES)
    import argparse

    import torch

    parser = argparse.ArgumentParser()
    _common.add_output_arguments(parser, "kv")
    cpu = torch.device("cpu")
    assert _common.output_path(parser.parse_args([]), "kv", cpu) == "kv-cpu.json"
    assert _common.output_path(parser.parse_args(["--out", "a/b.json"]), "kv", cpu) == "a/b.json"
    assert _common.output_path(parser.parse_args(["--update-results"]), "kv", cpu) == \
        os.path.join(BENCHES, "results", "kv-cpu.json")
    with pytest.raises(SystemExit):
        parser.parse_args(["--update-results", "--out", "x.json"])
    path = _common.write_results(str(tmp_path / "deep" / "r.json"), "kv", cpu, [{"a": 1}], quick=True)
    assert os.path.isfile(path)


def test_moe_bench_quick_run_checks_and_times_every_formulation(tmp_path):
    done = _run("bench_moe.py", "--quick", "--device", "cpu", "--threads", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert os.listdir(tmp_path) == ["moe-cpu.json"]
    record = json.load(open(tmp_path / "moe-cpu.json"))
    for row in record["rows"]:
        assert row["speedup"] > 0 and row["speedup_vs_dense_loop"] > 0 and row["relative_error"] <= 1e-4
