"""``infogain eval``: configs and overrides, every task end to end on the toy model, resume after a kill,
refusal to mix configs, torchrun data parallelism with the same per-problem outputs, summary and compare."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from infogain.apps import cli
from infogain.evaluation import EvalConfig, load_config, load_generator, shipped_configs
from infogain.evaluation import runner
from infogain.evaluation.summary import (compare, difference_interval, format_comparison, format_table, summarize,
                                         wilson_interval)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny settings: the toy model has 64 positions and a 17-token vocabulary.
FAST = ["--sampler", "info_gain", "--candidate_number", "2", "--progress", "false"]


def child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "python_api"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"   # the same thread count (and float sums) as this test process
    return env


def eval_main(*args):
    assert cli.main(["eval", *args]) == 0


def read_jsonl(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh]


def read_summary(out):
    with open(os.path.join(out, "summary.json")) as fh:
        return json.load(fh)


def same_outputs(a, b):
    """Per-problem outputs equal; statistics equal up to float summation order."""
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for x, y in zip(a, b):
        for key in ("output", "answer", "correct", "seed", "batch", "prompt"):
            assert x[key] == y[key], (x["id"], key)
        sx, sy = dict(x["stats"]), dict(y["stats"])
        assert math.isclose(sx.pop("cumulative_entropy"), sy.pop("cumulative_entropy"), rel_tol=1e-5)
        assert sx == sy


# ---- configs --------------------------------------------------------------------------------

def test_every_shipped_config_loads_and_covers_each_task_and_sampler():
    shipped = shipped_configs()
    tasks = ("gsm8k", "math500", "humaneval", "mbpp", "countdown", "sudoku", "toy_multiplication", "toy_sudoku")
    benchmarks = ("gsm8k", "math500", "humaneval", "mbpp")
    # The other model families on the four benchmarks: {name part: (model alias, block_length, {config
    # suffix: sampler})}. LLaDA2.x: Info-Gain, Fast-dLLM and its own threshold decoder (block 32, its own);
    # SDAR-MoE: Info-Gain and Fast-dLLM at the Info-Gain paper's SDAR block 16; Fast-dLLM v2: Info-Gain at its
    # bd_size 32 and its own decoder.
    families = {"llada2": ("llada2", 32, {"info_gain": "info_gain", "fast_dllm": "fast_dllm",
                                          "threshold": "llada2_threshold"}),
                "sdar_moe": ("sdar_moe", 16, {"info_gain": "info_gain", "fast_dllm": "fast_dllm"}),
                "fast_dllm_v2": ("fast_dllm_v2", 32, {"info_gain": "info_gain", "own": "fast_dllm_v2"})}
    family_configs = {f"{t}_{family}_{suffix}": (family, sampler) for family, (_, _, samplers) in families.items()
                      for suffix, sampler in samplers.items() for t in benchmarks}
    assert set(shipped) == {f"{t}_{s}" for t in tasks for s in ("info_gain", "confidence", "fast_dllm")} | \
        set(family_configs)
    for name in shipped:
        cfg = load_config(name)
        if name in family_configs:
            family, sampler = family_configs[name]
            model, block_length, _ = families[family]
            assert (cfg.sampler, cfg.model, cfg.block_length) == (sampler, model, block_length)
            assert name.startswith(f"{cfg.task}_{family}_") and cfg.output_dir == f"results/{name}"
            # Each family's own exact cache: the block-causal cache (prefix), Fast-dLLM v2's sub-block cache.
            assert cfg.cache == ("sub_block" if sampler == "fast_dllm_v2" else "prefix") or sampler == "llada2_threshold"
            assert cfg.sub_block_length == (8 if sampler == "fast_dllm_v2" else None)
            continue
        assert f"{cfg.task}_{cfg.sampler}" == name and cfg.output_dir == f"results/{name}"


def test_overrides_aliases_and_errors():
    cfg = load_config("gsm8k_info_gain", ["--candidate_number", "4", "--use_cache", "dual", "--mode", "info-gain",
                                          "--no_shot", "--max-samples=3", "--temperature", "0.5",
                                          "--result_dir", "x", "--prompt_template", "{question}"])
    assert (cfg.candidate_number, cfg.cache, cfg.sampler, cfg.fewshot, cfg.max_samples, cfg.temperature,
            cfg.output_dir, cfg.prompt_template) == (4, "dual", "info_gain", False, 3, 0.5, "x", "{question}")
    assert load_config(None, ["--task", "gsm8k", "--mode", "original"]).sampler == "confidence"
    assert load_config(None, ["--task", "gsm8k", "--max_samples", "null"]).max_samples is None
    for args, match in [
        (["--task", "gsm8k", "--candidate_number", "two"], "candidate_number must be an integer"),
        (["--task", "gsm8k", "--steps", "1.5"], "steps must be an integer"),
        (["--task", "gsm8k", "--parallel_bypass", "maybe"], "parallel_bypass must be true or false"),
        (["--task", "gsm8k", "--candidates", "4"], "unknown key 'candidates'"),
        (["--task", "gsm9k"], "task: unknown 'gsm9k'"),
        (["--task", "gsm8k", "--sampler", "pc_sampler"], "sampler: unknown"),
        (["--task", "gsm8k", "--cache", "full"], "cache must be one of"),
        (["--task", "gsm8k", "--dtype", "float64"], "dtype must be one of"),
        (["--task", "gsm8k", "--threads", "0"], "threads must be >= 1"),
        (["--task", "gsm8k", "--sampler", "confidence", "--variant", "lookum"], "variant"),
        ([], "task is required"),
        (["gsm8k"], "unexpected argument"),
    ]:
        with pytest.raises(ValueError, match=match):
            load_config(None, args)


def test_list_configs_and_cli_errors(capsys, tmp_path):
    eval_main("--list-configs")
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 52 and any(line.startswith("gsm8k_info_gain") for line in listed)
    with pytest.raises(SystemExit) as exc:
        cli.main(["eval", "--task", "gsm8k", "--data_dir", str(tmp_path), "--model", "toy"])
    assert exc.value.code == 2 and "gsm8k.jsonl" in capsys.readouterr().err   # names the expected file


# ---- end to end on the toy model --------------------------------------------------------------

def write_task_files(directory):
    files = {
        "gsm8k.jsonl": [{"question": "2*3", "answer": "2*3=6\n#### 6"}, {"question": "4*2", "answer": "#### 8"}],
        "math500.jsonl": [{"problem": "1+1", "answer": "2", "unique_id": "a"},
                          {"problem": "3*3", "answer": "\\frac{18}{2}", "unique_id": "b"}],
        "humaneval.jsonl": [{"task_id": "HE/0", "prompt": "def f():\n", "entry_point": "f",
                             "test": "def check(c):\n    assert c() == 1\n"}],
        "mbpp.jsonl": [{"task_id": 1, "prompt": "one", "test_list": ["assert f()==1"], "test_imports": []}],
        "countdown.jsonl": [{"input": "2,3,6", "output": "2*3=6"}, {"input": "4,2,8", "output": "4*2=8"}],
    }
    for name, rows in files.items():
        with open(os.path.join(directory, name), "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(directory, "sudoku.csv"), "w") as fh:
        fh.write("Puzzle,Solution\n3102200002100320,3142243142131324\n0140432014020000,2143432114323214\n")


TEMPLATES = {"gsm8k": "{question}=", "math500": "{problem}=", "countdown": "{input}", "sudoku": "{Puzzle}"}


@pytest.mark.parametrize("task", ["gsm8k", "math500", "humaneval", "mbpp", "countdown", "sudoku"])
def test_every_file_task_runs_end_to_end_on_the_toy_model(tmp_path, task, capsys):
    write_task_files(tmp_path)
    out = str(tmp_path / "out")
    args = ["--task", task, "--model", "toy", "--data_dir", str(tmp_path), "--output_dir", out, "--gen_length", "8",
            "--steps", "8", "--block_length", "8", "--cache", "prefix", "--no_shot", *FAST]
    if task in TEMPLATES:
        args += ["--prompt_template", TEMPLATES[task]]
    eval_main(*args)
    assert f"{task}  info_gain" in capsys.readouterr().out
    summary = read_summary(out)
    records = read_jsonl(os.path.join(out, "samples.jsonl"))
    assert summary["complete"] and summary["problems"] == len(records) >= 1
    assert summary["accuracy"] == sum(r["correct"] for r in records) / len(records)
    assert summary["generated_tokens"] == 8 * len(records)
    assert summary["tpf"] == pytest.approx(summary["decoded_tokens"] / summary["nfe"])
    for r in records:
        assert r["stats"]["generated_tokens"] == 8 and r["config_hash"] == summary["config_hash"]
        assert sum(r["stats"]["tokens"].values()) == 8
    if task == "humaneval":
        assert records[0]["correct"] is False and records[0]["detail"]   # the toy model cannot write Python
    if task == "gsm8k":   # both of lm-eval's verdicts reach the records and the summary
        assert all(set(r["metrics"]) == {"flexible-extract", "strict-match"} for r in records)
        assert list(summary["metrics"]) == ["flexible-extract", "strict-match"]
        assert summary["metrics"]["strict-match"]["problems"] == len(records)


@pytest.mark.parametrize("task,sampler", [("toy_multiplication", "info_gain"), ("toy_sudoku", "confidence"),
                                          ("toy_sudoku", "fast_dllm")])
def test_toy_tasks_with_shipped_configs(tmp_path, task, sampler):
    out = str(tmp_path / "out")
    eval_main("--config", f"{task}_{sampler}", "--max_samples", "4", "--output_dir", out, "--progress", "false")
    summary = read_summary(out)
    assert summary["problems"] == 4 and summary["sampler"] == sampler
    # The accuracy is the share of correct records and its interval the Wilson interval of those counts
    # (wilson_interval is checked against published values below); any other interval fails here.
    correct = sum(bool(r["correct"]) for r in read_jsonl(os.path.join(out, "samples.jsonl")))
    assert summary["correct"] == correct and summary["accuracy"] == correct / 4
    assert summary["accuracy_ci95"] == pytest.approx(list(wilson_interval(correct, 4)), abs=1e-12)
    env = summary["environment"]
    assert env["world_size"] == 1 and env["processes"][0]["chat_template_applied"] is False
    for key in ("torch", "transformers", "triton", "dtype", "device", "device_name", "git_commit",
                "package_version", "python"):
        assert key in env["processes"][0]
    assert summary["tokens_per_s"] > 0 and summary["generation_s"] > 0


def test_resume_extends_and_refuses_a_changed_config(tmp_path, capsys):
    out = str(tmp_path / "out")
    base = ["--config", "toy_sudoku_info_gain", "--output_dir", out, "--progress", "false", "--candidate_number", "2"]
    eval_main(*base, "--max_samples", "3")
    first = read_jsonl(os.path.join(out, "samples.jsonl"))
    eval_main(*base, "--max_samples", "5")
    summary = read_summary(out)
    assert summary["problems"] == 5 and summary["samples_this_invocation"] == 2
    assert read_jsonl(os.path.join(out, "samples.jsonl"))[:3] == first
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["eval", *base, "--max_samples", "5", "--threshold", "0.5"])
    assert "different config (changed: threshold)" in capsys.readouterr().err
    eval_main(*base, "--max_samples", "2", "--threshold", "0.5", "--overwrite")
    assert read_summary(out)["problems"] == 2 and read_summary(out)["config"]["threshold"] == 0.5


def test_kill_mid_run_then_resume_gives_the_uninterrupted_results(tmp_path):
    common = ["--config", "toy_sudoku_info_gain", "--max_samples", "10", "--candidate_number", "2",
              "--progress", "false"]
    killed = str(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-m", "infogain", "eval", *common, "--output_dir", killed],
                            env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rank_file = os.path.join(killed, "samples.rank0.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline:
        if os.path.isfile(rank_file) and len(read_jsonl(rank_file)) >= 2:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(read_jsonl(rank_file))
    assert 2 <= done_before < 10 and not os.path.isfile(os.path.join(killed, "summary.json"))
    eval_main(*common, "--output_dir", killed)
    assert read_summary(killed)["samples_this_invocation"] == 10 - done_before
    reference = str(tmp_path / "reference")
    eval_main(*common, "--output_dir", reference)
    same_outputs(read_jsonl(os.path.join(killed, "samples.jsonl")), read_jsonl(os.path.join(reference, "samples.jsonl")))


def test_torchrun_two_processes_give_the_single_process_outputs(tmp_path):
    # --threads 1: every rank and this process at this test process's thread count (the same float sums),
    # which the thread policy would otherwise choose from the machine's free cores.
    common = ["--config", "toy_multiplication_info_gain", "--max_samples", "6", "--batch_size", "2",
              "--candidate_number", "2", "--progress", "false", "--threads", "1"]
    multi = str(tmp_path / "multi")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run([*torchrun, "-m", "infogain", "eval", *common, "--output_dir", multi], env=child_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "toy_multiplication" in done.stdout   # rank 0 printed the table, once
    assert done.stdout.count("accuracy (95% CI)") == 1
    single = str(tmp_path / "single")
    eval_main(*common, "--output_dir", single)
    multi_records = read_jsonl(os.path.join(multi, "samples.jsonl"))
    assert {r["rank"] for r in multi_records} == {0, 1}
    assert os.path.isfile(os.path.join(multi, "samples.rank1.jsonl"))
    same_outputs(multi_records, read_jsonl(os.path.join(single, "samples.jsonl")))
    summary = read_summary(multi)
    assert summary["environment"]["world_size"] == 2 and summary["problems"] == 6
    assert summary["accuracy"] == read_summary(single)["accuracy"]


# ---- summary and compare ----------------------------------------------------------------------

def test_wilson_and_newcombe_intervals_match_published_values():
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    d, lo, hi = difference_interval(56, 70, 48, 80)   # Newcombe (1998), example: 0.0524 to 0.3339
    assert (round(d, 4), round(lo, 4), round(hi, 4)) == (0.2, 0.0524, 0.3339)


def test_compare_prints_difference_and_ratios(tmp_path, capsys):
    dirs = []
    for sampler in ("info_gain", "confidence"):
        out = str(tmp_path / sampler)
        eval_main("--config", f"toy_sudoku_{sampler}", "--max_samples", "4", "--output_dir", out,
                  "--progress", "false", "--candidate_number", "2")
        dirs.append(out)
    capsys.readouterr()
    eval_main("--compare", *dirs)
    text = capsys.readouterr().out
    a, b = read_summary(dirs[0]), read_summary(dirs[1])
    assert f"accuracy [1] - [2]: {a['accuracy'] - b['accuracy']:+.3f}" in text
    assert "tokens/s" in text and "TPF" in text and "[1] " in text and "[2] " in text
    with pytest.raises(SystemExit):
        cli.main(["eval", "--compare", dirs[0], str(tmp_path / "nothing")])


def _graded_records(verdicts):
    """Records as the runner writes them, with only what the summary reads."""
    stats = {"tokens": {"heuristic": 4}, "generated_tokens": 4, "nfe": 4, "candidate_evals": 0,
             "cumulative_entropy": 0.0}
    return [{"correct": flexible, "metrics": {"flexible-extract": flexible, "strict-match": strict}, "stats": stats,
             "batch": i, "batch_stats": {"wall_s": 1.0}} for i, (flexible, strict) in enumerate(verdicts)]


def test_summary_and_compare_name_the_headline_metric_and_report_the_others():
    def run(verdicts):
        return summarize(_graded_records(verdicts), config={"task": "gsm8k", "sampler": "info_gain"},
                         config_hash="h", expected=len(verdicts), environments=[{}], wall_s=1.0,
                         samples_this_invocation=len(verdicts))

    first, second = run([(True, True), (True, False), (False, False)]), run([(False, False)] * 3)
    assert first["headline_metric"] == "flexible-extract" and first["grader"].startswith("lm-eval gsm8k")
    assert list(first["metrics"]) == ["flexible-extract", "strict-match"]   # the headline first
    assert (first["correct"], first["metrics"]["strict-match"]["correct"]) == (2, 1)
    assert first["accuracy"] == first["metrics"]["flexible-extract"]["accuracy"] == 2 / 3
    assert first["metrics"]["strict-match"]["accuracy_ci95"] == pytest.approx(list(wilson_interval(1, 3)))
    table = format_table([first]).splitlines()
    assert "flexible-extract" in table[2] and "strict-match" in table[3] and "0.333" in table[3]
    result = compare(first, second)
    assert result["headline_metric"] == "flexible-extract" and result["accuracy_difference"] == pytest.approx(2 / 3)
    assert result["other_metrics"]["strict-match"]["difference"] == pytest.approx(1 / 3)
    text = format_comparison(["a", "b"], first, second, result)
    assert "headline metric: flexible-extract" in text and "strict-match [1] - [2]: +0.333" in text
    assert "accuracy [1] - [2]: +0.667" in text
    # A summary written before metrics were recorded still compares (its accuracy is its headline).
    old = {k: v for k, v in second.items() if k not in ("metrics", "headline_metric")}
    assert "headline metrics differ" in format_comparison(["a", "b"], first, old, compare(first, old))


def test_load_generator_from_plain_keys():
    gen = load_generator({"model": "toy", "sampler": "confidence", "gen_length": 8, "steps": 8,
                          "block_length": 8, "use_cache": "dual"})
    result = gen.generate([[2, 5, 6]], seed=1)
    assert tuple(result.sequences.shape) == (1, 8) and gen.options["cache"] == "dual"
    assert isinstance(EvalConfig().to_dict(), dict)


def test_load_generator_dtypes_and_transformers_logging():
    import torch
    from transformers.utils import logging as transformers_logging

    before = transformers_logging.get_verbosity()
    assert load_generator({"model": "toy", "dtype": "bfloat16"}).dtype == torch.bfloat16
    assert load_generator({"model": "toy", "dtype": "checkpoint"}).dtype == torch.float32   # as stored
    assert load_generator({"model": "toy", "device": "cpu"}).dtype == torch.float32         # auto on CPU
    assert transformers_logging.get_verbosity() == before   # silenced during the load only


def test_threads_follow_the_package_policy(tmp_path, monkeypatch):
    calls = []

    def record(threads=None, **kwargs):
        calls.append((threads, kwargs))
        return 1

    monkeypatch.setattr(runner._threads, "apply_threads", record)
    eval_main("--config", "toy_multiplication_info_gain", "--max_samples", "1", "--output_dir", str(tmp_path / "out"),
              "--progress", "false", "--threads", "3")
    (threads, kwargs), = calls
    assert threads == 3 and kwargs["local_processes"] == 1 and kwargs["num_parameters"] > 0
    # The thread count is where a run happens, not what it computes: a resume may change it.
    eval_main("--config", "toy_multiplication_info_gain", "--max_samples", "2", "--output_dir", str(tmp_path / "out"),
              "--progress", "false")
    assert calls[1][0] is None and read_summary(str(tmp_path / "out"))["problems"] == 2


def test_rank_environment_is_validated(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2 is outside"):
        runner.Dist.from_env()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="RANK='one' is not an integer"):
        runner.Dist.from_env()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    dist = runner.Dist.from_env()
    assert (dist.rank, dist.world_size, dist.local_rank) == (1, 2, 1)
    assert runner.sample_seed(0, "7") == runner.sample_seed(0, "7") != runner.sample_seed(1, "7")


def test_chat_template_is_applied_to_text_prompts_when_the_tokenizer_has_one(tmp_path):
    import shutil

    from infogain.models import toy_model_path

    model = tmp_path / "toy-chat"
    shutil.copytree(toy_model_path(), model)
    with open(model / "tokenizer_config.json") as fh:
        tok_config = json.load(fh)
    tok_config["chat_template"] = "{% for m in messages %}{{ m['content'] }}={% endfor %}"
    with open(model / "tokenizer_config.json", "w") as fh:
        json.dump(tok_config, fh)
    write_task_files(tmp_path)
    out = str(tmp_path / "out")
    common = ["--model", str(model), "--output_dir", out, "--max_samples", "1", *FAST]
    eval_main("--task", "gsm8k", "--data_dir", str(tmp_path), "--prompt_template", "{question}", "--gen_length", "8",
              "--steps", "8", "--block_length", "8", *common)
    assert read_summary(out)["environment"]["processes"][0]["chat_template_applied"] is True
    # Tasks that encode their own token ids never get the template.
    eval_main("--config", "toy_sudoku_info_gain", *common, "--overwrite")
    assert read_summary(out)["environment"]["processes"][0]["chat_template_applied"] is False
