"""python -m infogain gpu-check: what can be checked without a GPU."""
import json
import os
import subprocess
import sys

from infogain.apps import gpu_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_without_cuda_exits_2_with_a_message_and_no_traceback(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "python_api")]))
    proc = subprocess.run([sys.executable, "-m", "infogain", "gpu-check", "--out", str(tmp_path)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert os.listdir(tmp_path) == []   # nothing was run or written


def test_stages_are_data_and_name_their_results():
    names = [s.name for s in gpu_check.STAGES]
    assert names[0] == "build" and len(set(names)) == len(names)
    benches = [i for i, n in enumerate(names) if n.startswith("bench")]
    assert benches and benches == list(range(benches[0], len(names))), "benchmarks must run last"
    # The compat drop-ins' bench runs right after the lm_head bench, when the checkout has it.
    assert names.index("bench-compat") == names.index("bench-lm-head") + 1
    compat = gpu_check.STAGES[names.index("bench-compat")]
    assert compat.requires == "benches/bench_compat.py" and compat.results == ["compat-{gpu}.json"]
    for stage in gpu_check.STAGES:
        for name in stage.results:
            assert "{gpu}" in name and name.endswith(".json"), (stage.name, name)
        if stage.name.startswith("bench"):   # results go to the check's folder, never the working directory
            assert stage.argv[stage.argv.index("--out") + 1] == "{out}/" + stage.results[0], stage.name


def test_a_stage_whose_file_is_missing_is_skipped(tmp_path):
    stage = gpu_check.Stage("x", ["{python}", "-c", "pass"], 10, requires="benches/no_such_bench.py")
    record = gpu_check.run_stage(stage, python=sys.executable, out=str(tmp_path), gpu="h200", timeout_s=10)
    assert record["status"] == "skipped" and "not present" in record["reason"]


def test_stage_timeout_and_failure_are_reported(tmp_path):
    slow = gpu_check.Stage("slow", ["{python}", "-c", "import time; print('started', flush=True); time.sleep(30)"], 30)
    record = gpu_check.run_stage(slow, python=sys.executable, out=str(tmp_path), gpu="h200", timeout_s=5)
    assert record["status"] == "TIMEOUT"
    failing = gpu_check.Stage("failing", ["{python}", "-c", "raise SystemExit(3)"], 30)
    record = gpu_check.run_stage(failing, python=sys.executable, out=str(tmp_path), gpu="h200", timeout_s=30)
    assert record["status"] == "FAIL (exit 3)"


def test_junit_results_become_json_and_the_summary_reads_them(tmp_path):
    xml = tmp_path / "gpu-tests-h200.xml"
    xml.write_text('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1" time="1.5">'
                   '<testcase classname="tests.test_a" name="test_ok"/>'
                   '<testcase classname="tests.test_a" name="test_bad"><failure message="boom"/></testcase>'
                   '<testcase classname="tests.test_a" name="test_skip"><skipped/></testcase>'
                   '</testsuite></testsuites>')
    gpu_check._junit_to_json(str(xml), str(tmp_path / "gpu-tests-h200.json"))
    with open(tmp_path / "gpu-tests-h200.json") as f:
        record = json.load(f)
    assert record["tests"] == 3 and record["failed"] == [{"test": "tests.test_a::test_bad", "message": "boom"}]
    text = gpu_check.summary([dict(stage="gpu-tests", status="FAIL (exit 1)", seconds=2.0,
                                   results=["gpu-tests-h200.json"])], str(tmp_path), "h200", 2.0)
    assert "1 passed, 1 failed, 1 skipped" in text and "test_bad" in text


def test_root_is_the_source_checkout():
    """The stages run from the checkout's root (setup.py, tests/, benches/), not from python_api/."""
    for name in ("setup.py", "tests", os.path.join("benches", "bench_ops.py")):
        assert os.path.exists(os.path.join(gpu_check.ROOT, name)), name


def test_stage_figures_go_into_the_record(tmp_path):
    rows = [{"setting": "bench", "sampler": "info_gain", "cache": "prefix", "fast_tok_s": 12.5, "nfe": 65,
             "tokens_match": True}, {"sampler": "x", "note": "no figures"}]
    (tmp_path / "e2e-llada2-mini-h200.json").write_text(json.dumps({"rows": rows}))
    record = dict(stage="bench-e2e-llada2-mini", results=["e2e-llada2-mini-h200.json", "absent-h200.json"])
    assert gpu_check.stage_figures(str(tmp_path), record) == [
        {"result": "e2e-llada2-mini-h200.json", "label": "bench info_gain prefix", "fast_tok_s": 12.5, "nfe": 65}]
    assert "fast_tok_s=12.5 nfe=65" in gpu_check.headline(str(tmp_path), record)
    llada2 = next(s for s in gpu_check.STAGES if s.name == "bench-e2e-llada2-mini")
    assert llada2.argv[llada2.argv.index("--random-weights") + 1] == "llada2-mini"
    assert llada2.argv[llada2.argv.index("--cache") + 1] == "prefix"
