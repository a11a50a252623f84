"""``python -m infogain bench`` and its naive baseline (:mod:`infogain.samplers.naive`).

The naive sampler must commit the same tokens as the fast sampler at
temperature 0 (the benchmark asserts it), so the main test here compares the
two on a tiny random LLaDA checkpoint in every cache mode. The benchmark itself
runs end to end on that checkpoint with one sampler and writes its JSON record.
"""
import importlib.util
import json
import os

import pytest
import torch
from scipy import stats as scipy_stats
from torch import nn

from infogain.apps import bench, bench_timing
from infogain.samplers.naive import NaiveInfoGainSampler, compute_entropy, schedule

TINY_CHECKPOINTS = os.path.join(os.path.dirname(__file__), "tiny_checkpoints.py")
SHAPE = {"gen_length": 8, "steps": 8, "block_length": 4, "candidate_number": 4, "position_temperature": 0.5,
         "threshold": 0.9}


def _have_samplers() -> bool:
    try:
        from infogain.samplers import make_sampler  # noqa: F401
    except ImportError:
        return False
    return True


def _tiny_checkpoints():
    """The tests' tiny-checkpoint helper module (skips the test while it does not exist)."""
    if not os.path.isfile(TINY_CHECKPOINTS):
        pytest.skip("tests/tiny_checkpoints.py is not available yet")
    spec = importlib.util.spec_from_file_location("tiny_checkpoints", TINY_CHECKPOINTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_tiny_checkpoint(arch: str, path: str) -> str:
    _tiny_checkpoints().write_tiny_checkpoint(arch, path)
    return path


@pytest.fixture(scope="module")
def tiny_llada_path(tmp_path_factory):
    return _write_tiny_checkpoint("llada", str(tmp_path_factory.mktemp("tiny_llada")))


@pytest.fixture(scope="module")
def tiny_llada(tiny_llada_path):
    from infogain.models import load

    model, tokenizer = load(tiny_llada_path, dtype=torch.float32, device="cpu")
    return model.eval(), tokenizer


def _prompts(model, batch=2, length=5, seed=3):
    config = model.config
    return bench.random_prompts(batch, length, config.vocab_size,
                                (config.mask_token_id, config.eos_token_id, config.pad_token_id), seed,
                                torch.device("cpu"))


# ----------------------------------------------------------------- pure helpers
def test_schedule_splits_evenly_with_remainder_first():
    assert schedule(8, 4) == [2, 2, 2, 2]
    assert schedule(7, 3) == [3, 2, 2]
    assert schedule(2, 4) == [1, 1, 0, 0]
    assert schedule(0, 2) == [0, 0]


def test_compute_entropy_matches_closed_form():
    uniform = torch.zeros(3, 7)
    assert torch.allclose(compute_entropy(uniform), torch.full((3,), torch.log(torch.tensor(7.0)).item()))
    logits = torch.tensor([[2.0, 0.5, -1.0]])
    p = torch.tensor([2.0, 0.5, -1.0]).exp()
    p = p / p.sum()
    assert torch.allclose(compute_entropy(logits), -(p * p.log()).sum().reshape(1), atol=1e-6)


def test_compare_sequences_reports_first_difference():
    a = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert bench.compare_sequences(a, a.clone()) is None
    b = a.clone()
    b[1, 2] = 9
    assert "row 1, position 2" in bench.compare_sequences(a, b)
    assert "shapes differ" in bench.compare_sequences(a, a[:, :2])


def test_random_prompts_are_deterministic_and_exclude_special_ids():
    first = bench.random_prompts(3, 50, 12, (0, 5, None), 7, torch.device("cpu"))
    again = bench.random_prompts(3, 50, 12, (0, 5, None), 7, torch.device("cpu"))
    assert first.dtype == torch.long and first.shape == (3, 50)
    assert torch.equal(first, again)
    assert not ((first == 0) | (first == 5)).any()


def test_random_prompts_are_uniform_over_allowed_ids():
    ids = bench.random_prompts(1, 20000, 10, (2, 7), 11, torch.device("cpu")).flatten()
    counts = torch.bincount(ids, minlength=10)
    assert counts[2] == 0 and counts[7] == 0
    observed = counts[[i for i in range(10) if i not in (2, 7)]].numpy()
    assert scipy_stats.chisquare(observed).pvalue > 1e-3


def test_random_prompts_rejects_vocabulary_of_only_special_ids():
    with pytest.raises(ValueError, match="vocabulary"):
        bench.random_prompts(1, 4, 2, (0, 1), 0, torch.device("cpu"))


class _Nested(nn.Module):
    def forward(self, x):
        return x + 1

    def prefill(self, x):
        return self(x) * 2  # calls forward inside: must count as one forward


def test_forward_timer_counts_outermost_calls_and_restores_methods():
    model = _Nested()
    with bench_timing.ForwardTimer(model, torch.device("cpu")) as timer:
        model(torch.zeros(2))
        model.prefill(torch.zeros(2))
        assert "forward" in model.__dict__
    assert timer.calls == 2 and timer.seconds >= 0
    assert "forward" not in model.__dict__ and "prefill" not in model.__dict__
    assert torch.equal(model.prefill(torch.zeros(1)), torch.tensor([2.0]))


# --------------------------------------------------------- naive: input checks
class _DummyLM(nn.Module):
    class config:  # noqa: N801 - mimics ModelConfig's attributes
        mask_token_id = 3
        eos_token_id = 1
        pad_token_id = 0
        vocab_size = 6
        block_causal = False

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"temperature": -0.5}, ValueError, "temperature"),
    ({"temperature": float("inf")}, ValueError, "temperature"),
    ({"variant": "greedy"}, ValueError, "variant"),
    ({"cache": "paged"}, ValueError, "cache"),
    ({"gen_length": 6, "block_length": 4}, ValueError, "multiple of block_length"),
    ({"steps": 1, "gen_length": 8, "block_length": 4}, ValueError, "steps"),
    ({"threshold": 0.0}, ValueError, "threshold"),
    ({"threshold": 1.5}, ValueError, "threshold"),
    ({"position_temperature": -1.0}, ValueError, "position_temperature"),
    ({"candidate_number": 0}, ValueError, "candidate_number"),
    ({"gen_length": 8.0}, TypeError, "gen_length"),
    ({"eos_penalty": -1.0}, ValueError, "eos_penalty"),
])
def test_naive_rejects_invalid_arguments(kwargs, error, match):
    sampler = NaiveInfoGainSampler(_DummyLM())
    args = dict(gen_length=8, steps=8, block_length=4)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        sampler.generate(torch.tensor([[4, 5]]), **args)


@pytest.mark.parametrize("prompts, error", [
    ("hello", TypeError),
    (torch.tensor([4, 5]), ValueError),
    (torch.tensor([[4.0, 5.0]]), ValueError),
    ([[4, 5], []], ValueError),
])
def test_naive_rejects_invalid_prompts(prompts, error):
    with pytest.raises(error, match="prompt"):
        NaiveInfoGainSampler(_DummyLM()).generate(prompts, gen_length=4, steps=4, block_length=4)


def test_naive_needs_a_mask_id():
    model = _DummyLM()
    model.config = type("Config", (), {"mask_token_id": None, "eos_token_id": None, "pad_token_id": None})
    with pytest.raises(ValueError, match="mask_id"):
        NaiveInfoGainSampler(model)
    with pytest.raises(TypeError, match="model"):
        NaiveInfoGainSampler(None)


# ------------------------------------------------------ naive on a tiny model
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_naive_commits_every_position_and_keeps_prompts(tiny_llada, cache):
    model, tokenizer = tiny_llada
    prompts = _prompts(model)
    result = NaiveInfoGainSampler(model, tokenizer).generate(prompts, cache=cache, seed=0, stop_at_eos=False,
                                                             **SHAPE)
    assert result.sequences.shape == (2, SHAPE["gen_length"])
    assert torch.equal(result.canvas[:, :5], prompts)
    assert torch.equal(result.canvas[:, 5:], result.sequences)
    assert not (result.sequences == model.config.mask_token_id).any()
    tokens = result.stats["tokens"]
    assert sum(tokens[k] for k in ("bypass", "lookahead", "fill", "trivial")) == 2 * SHAPE["gen_length"]
    if cache == "dual":  # same seed, same candidates, same tokens
        again = NaiveInfoGainSampler(model, tokenizer).generate(prompts, cache=cache, seed=0, stop_at_eos=False,
                                                                **SHAPE)
        assert torch.equal(again.sequences, result.sequences)


@pytest.mark.skipif(not _have_samplers(), reason="infogain.samplers is not available yet")
@pytest.mark.parametrize("variant", ["info_gain", "lookum"])
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_naive_equals_fast_sampler(tiny_llada, cache, variant):
    from infogain.samplers import make_sampler

    model, tokenizer = tiny_llada
    prompts = _prompts(model)
    fast = make_sampler("info_gain", model, tokenizer).generate(prompts, cache=cache, variant=variant, seed=5,
                                                                 temperature=0.0, **SHAPE)
    naive = NaiveInfoGainSampler(model, tokenizer).generate(prompts, cache=cache, variant=variant, seed=5,
                                                            temperature=0.0, **SHAPE)
    assert bench.compare_sequences(fast.sequences, naive.sequences) is None
    assert naive.stats["nfe"] == fast.stats.nfe


@pytest.mark.skipif(not _have_samplers(), reason="infogain.samplers is not available yet")
def test_naive_equals_fast_sampler_when_candidates_commit_eos(tiny_llada):
    import copy

    from infogain.samplers import make_sampler

    model, tokenizer = tiny_llada
    model = copy.deepcopy(model)
    eos = model.config.eos_token_id
    with torch.no_grad():  # EOS competes with token 55, a frequent arg-max of this random model
        model.lm_head_weight[eos] = 1.05 * model.lm_head_weight[55]
    prompts = torch.randint(5, 60, (3, 5), generator=torch.Generator().manual_seed(2))
    sequences = {}
    for fill in (False, True):
        for cache in ("none", "dual"):
            kwargs = dict(SHAPE, cache=cache, lookahead_eos_fill=fill, seed=2)
            fast = make_sampler("info_gain", model, tokenizer).generate(prompts, record=True, **kwargs)
            naive = NaiveInfoGainSampler(model, tokenizer).generate(prompts, **kwargs)
            assert bench.compare_sequences(fast.sequences, naive.sequences) is None, (fill, cache)
            assert any(eos in c["tokens"] for r in fast.trace for row in r["rows"] for c in row.get("candidates", []))
            sequences[fill, cache] = fast.sequences
    assert any(not torch.equal(sequences[False, c], sequences[True, c]) for c in ("none", "dual"))


@pytest.mark.skipif(not _have_samplers(), reason="infogain.samplers is not available yet")
@pytest.mark.parametrize("cache", ["none", "dual"])
def test_naive_equals_fast_sampler_at_positive_temperature(tiny_llada, cache):
    """Both follow step_stats' random stream contract: the same uniforms give the same token draws,
    for x0 and for every candidate."""
    from infogain.samplers import make_sampler

    model, tokenizer = tiny_llada
    prompts = _prompts(model)
    kwargs = dict(SHAPE, cache=cache, seed=7, temperature=0.8)
    fast = make_sampler("info_gain", model, tokenizer).generate(prompts, **kwargs)
    naive = NaiveInfoGainSampler(model, tokenizer).generate(prompts, **kwargs)
    assert bench.compare_sequences(fast.sequences, naive.sequences) is None
    assert naive.stats["tokens"]["lookahead"] == fast.stats.tokens["lookahead"] > 0
    greedy = make_sampler("info_gain", model, tokenizer).generate(prompts, **dict(kwargs, temperature=0.0))
    assert not torch.equal(greedy.sequences, fast.sequences)  # the draws are not the arg-max


@pytest.mark.skipif(not _have_samplers(), reason="infogain.samplers is not available yet")
@pytest.mark.parametrize("parallel_bypass", [False, True])
def test_naive_equals_fast_sampler_with_bypass_and_padded_prompts(tiny_llada, parallel_bypass):
    from infogain.samplers import make_sampler

    model, tokenizer = tiny_llada
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12]]  # left padded into one canvas
    # threshold 0.1 makes this tiny model mix bypass and lookahead steps
    kwargs = dict(SHAPE, threshold=0.1, parallel_bypass=parallel_bypass, eos_penalty=0.5, cache="dual", seed=2)
    fast = make_sampler("info_gain", model, tokenizer).generate(prompts, **kwargs)
    naive = NaiveInfoGainSampler(model, tokenizer).generate(prompts, **kwargs)
    assert bench.compare_sequences(fast.sequences, naive.sequences) is None
    assert naive.stats["tokens"]["bypass"] == fast.stats.tokens["bypass"] > 0
    assert naive.stats["tokens"]["lookahead"] == fast.stats.tokens["lookahead"]


@pytest.mark.skipif(not _have_samplers(), reason="infogain.samplers is not available yet")
def test_naive_equals_fast_sampler_on_block_causal_sdar(tmp_path):
    from infogain.models import load
    from infogain.samplers import make_sampler

    model, tokenizer = load(_write_tiny_checkpoint("sdar", str(tmp_path)), dtype=torch.float32, device="cpu")
    prompts = _prompts(model.eval())
    fast = make_sampler("lookum", model, tokenizer).generate(prompts, cache="prefix", seed=4, **SHAPE)
    naive = NaiveInfoGainSampler(model, tokenizer).generate(prompts, cache="prefix", variant="lookum", seed=4,
                                                            **SHAPE)
    assert bench.compare_sequences(fast.sequences, naive.sequences) is None
    assert naive.stats["nfe"] == fast.stats.nfe


# --------------------------------------------------------------- the command
@pytest.mark.skipif(not _have_samplers(), reason="infogain.samplers is not available yet")
def test_bench_runs_and_writes_json(tiny_llada_path, tmp_path, capsys):
    out = tmp_path / "e2e.json"
    code = bench.main(["--model", tiny_llada_path, "--samplers", "info_gain", "--cache", "none,dual",
                       "--prompt-length", "4", "--gen-length", "8", "--steps", "8", "--block-length", "4",
                       "--candidates", "3", "--repeats", "1", "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr()
    record = json.loads(out.read_text())
    assert record["benchmark"] == "e2e" and record["all_tokens_match"] is True
    assert record["settings"]["gen_length"] == 8 and record["environment"]["torch"] == torch.__version__
    assert [(r["sampler"], r["cache"]) for r in record["rows"]] == [("info_gain", "none"), ("info_gain", "dual")]
    for row in record["rows"]:
        assert "error" not in row and row["tokens_match"] is True
        assert row["fast_tok_s"] > 0 and row["naive_tok_s"] > 0 and row["speedup"] > 0
        assert 0.0 <= row["overhead"] <= 1.0 and row["nfe"] >= 1 and 0.0 <= row["bypass_rate"] <= 1.0
    assert "info_gain" in capsys.readouterr().out


def test_bench_runs_on_the_shipped_toy_model(tmp_path, capsys):
    # No --model: the embedded toy checkpoint, one sampler, the CLI entry point.
    from infogain.apps import cli

    out = tmp_path / "e2e.json"
    code = cli.main(["bench", "--samplers", "lookum", "--cache", "prefix", "--repeats", "1", "--device", "cpu",
                     "--gen-length", "16", "--steps", "16", "--out", str(out)])
    assert code == 0, capsys.readouterr()
    record = json.loads(out.read_text())
    assert record["settings"]["model"] == "toy" and record["all_tokens_match"] is True
    assert record["settings"]["threads"] == 1   # the thread policy: 1 for a tiny model
    # The toy model runs the settings where the lookahead runs too, and reports the steps of each kind.
    assert [(r["setting"], r["sampler"], r["cache"]) for r in record["rows"]] == [
        ("bench", "lookum", "prefix"), ("threshold-1", "lookum", "prefix"), ("demo", "lookum", "prefix")]
    by_setting = {r["setting"]: r for r in record["rows"]}
    assert by_setting["threshold-1"]["steps_bypass"] == 0 and by_setting["threshold-1"]["lookahead_steps"] > 0
    for row in record["rows"]:
        if row["lookahead_steps"] and row["plain_steps"]:
            assert row["lookahead_premium"] > 0
        else:
            assert row["lookahead_premium"] is None


@pytest.mark.skipif(not _have_samplers(), reason="infogain.samplers is not available yet")
def test_bench_reports_a_token_mismatch_without_crashing(tiny_llada_path, tmp_path, monkeypatch, capsys):
    original = NaiveInfoGainSampler.generate

    def corrupted(self, prompts, **kwargs):
        result = original(self, prompts, **kwargs)
        result.sequences[0, -1] = (result.sequences[0, -1] + 1) % self.model.config.vocab_size
        return result

    monkeypatch.setattr(NaiveInfoGainSampler, "generate", corrupted)
    out = tmp_path / "e2e.json"
    code = bench.main(["--model", tiny_llada_path, "--samplers", "info_gain", "--cache", "none",
                       "--prompt-length", "4", "--gen-length", "4", "--steps", "4", "--block-length", "4",
                       "--candidates", "2", "--repeats", "1", "--device", "cpu", "--out", str(out)])
    assert code == 2
    captured = capsys.readouterr()
    assert "TOKENS DIFFER" in captured.err and "no results written" in captured.err
    assert "False" in captured.out  # the table's tokens_match column
    assert not out.exists()  # a failed run writes no record


def _tree_snapshot(root):
    return {os.path.relpath(os.path.join(d, f), root): os.path.getmtime(os.path.join(d, f))
            for d, _, files in os.walk(root) for f in files}


@pytest.mark.skipif(not _have_samplers(), reason="infogain.samplers is not available yet")
def test_bench_writes_to_the_working_directory_and_never_to_tracked_results(tiny_llada_path, tmp_path,
                                                                            monkeypatch, capsys):
    results = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benches", "results")
    before = _tree_snapshot(results)
    monkeypatch.chdir(tmp_path)
    argv = ["--model", tiny_llada_path, "--cache", "none", "--prompt-length", "4", "--block-length", "4",
            "--candidates", "2", "--repeats", "1", "--device", "cpu", "--steps", "4"]
    # A failing configuration (gen_length not a multiple of block_length): exit 2, nothing written.
    assert bench.main(argv + ["--gen-length", "5"]) == 2
    assert os.listdir(tmp_path) == []
    assert bench.main(argv + ["--gen-length", "4"]) == 0
    out = capsys.readouterr().out
    assert os.listdir(tmp_path) == ["e2e-cpu.json"]  # no ./benches/results/ created
    header = next(line for line in out.splitlines() if line.startswith("setting"))
    assert header.split() == bench._TABLE_COLUMNS and "=" not in out.split(header)[1]
    assert _tree_snapshot(results) == before


def test_bench_update_results_needs_a_source_checkout(monkeypatch, capsys):
    monkeypatch.setattr(bench, "_bench_common", lambda: None)  # as after a wheel install
    with pytest.raises(SystemExit) as exc:
        bench.main(["--update-results", "--device", "cpu"])
    assert exc.value.code == 2 and "--update-results" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--update-results", "--out", "x.json"])
    assert "not allowed" in capsys.readouterr().err


@pytest.mark.parametrize("argv, match", [
    (["--cache", "paged"], "--cache"),
    (["--cache", ","], "--cache"),
    (["--samplers", "info_gain,,lookum"], "--samplers has an empty entry"),
    (["--repeats", "0"], "--repeats"),
    (["--gen-length", "0"], "--gen-length"),
    (["--random-weights", "gpt-2"], "random-weights"),
    (["--model", "x", "--random-weights", "llada-8b"], "not allowed"),
    (["--config", "d_model=64"], "only applies with --random-weights"),
    (["--random-weights", "llada-8b", "--config", "d_model"], "KEY=INTEGER"),
    (["--random-weights", "llada-8b", "--config", "d_model=big"], "KEY=INTEGER"),
    (["--random-weights", "llada-8b", "--config", "hidden_size=64"], "not fields of the llada-8b config"),
])
def test_bench_rejects_invalid_options(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert match in capsys.readouterr().err


@pytest.mark.skipif(not _have_samplers(), reason="infogain.samplers is not available yet")
def test_bench_random_weights_path_without_naive(tmp_path, monkeypatch):
    """--random-weights builds the preset architecture; a tiny config stands in for the 8B one here."""
    from infogain import models

    tiny_config = _tiny_checkpoints().tiny_config
    monkeypatch.setattr(models, "preset_config", lambda name: tiny_config("llada"))
    out = tmp_path / "e2e.json"
    code = bench.main(["--random-weights", "llada-8b", "--cache", "dual", "--prompt-length", "4",
                       "--gen-length", "4", "--steps", "4", "--block-length", "4", "--candidates", "2",
                       "--repeats", "1", "--no-naive", "--device", "cpu", "--out", str(out)])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["settings"]["model"] == "random-weights:llada-8b"
    row = record["rows"][0]
    assert "naive_tok_s" not in row and "tokens_match" not in row and row["fast_tok_s"] > 0


def test_bench_config_overrides_shrink_the_preset(tmp_path):
    """--config overrides fields of the real preset: a CPU-sized model of the LLaDA-8B architecture."""
    out = tmp_path / "e2e.json"
    overrides = ("d_model=32,n_heads=2,n_kv_heads=2,n_layers=1,mlp_hidden_size=64,vocab_size=64,"
                 "embedding_size=64,mask_token_id=63,eos_token_id=62,pad_token_id=61")
    code = bench.main(["--random-weights", "llada-8b", "--config", overrides, "--cache", "dual",
                       "--prompt-length", "4", "--gen-length", "4", "--steps", "4", "--block-length", "4",
                       "--candidates", "2", "--repeats", "1", "--device", "cpu", "--out", str(out)])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["settings"]["model"] == f"random-weights:llada-8b ({overrides})"
    assert record["rows"][0]["tokens_match"] is True
    assert bench.parse_config_overrides(None) == {}
    assert bench.parse_config_overrides(" a=1, b=-2 ") == {"a": 1, "b": -2}


def test_bench_reports_a_missing_model_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--model", str(tmp_path / "missing"), "--device", "cpu"])
    assert exc.value.code == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.gpu
def test_bench_on_cuda_matches_naive(tiny_llada_path, tmp_path):
    out = tmp_path / "e2e.json"
    code = bench.main(["--model", tiny_llada_path, "--cache", "none,prefix,dual", "--dtype", "float32",
                       "--prompt-length", "8", "--gen-length", "16", "--steps", "16", "--block-length", "8",
                       "--repeats", "1", "--device", "cuda", "--out", str(out)])
    record = json.loads(out.read_text())
    assert code == 0, record["rows"]
    assert all(row["tokens_match"] for row in record["rows"])
