"""Cache modes of the samplers on the project's tiny LLaDA / Dream / SDAR checkpoints."""
import pytest
import torch

import infogain.models
from infogain.samplers import InfoGainSampler, make_sampler
from test_samplers_helpers import single_thread  # noqa: F401  (autouse fixture)
from tiny_checkpoints import MASK_ID, write_tiny_checkpoint

SETTINGS = dict(gen_length=8, steps=4, block_length=4, candidate_number=4, position_temperature=0.5,
                threshold=0.9)
PROMPTS = [[2, 3, 4, 5, 6], [7], [8, 9, 10]]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {arch: infogain.models.load(write_tiny_checkpoint(arch, root / arch))[0]
            for arch in ("llada", "dream", "sdar")}


@pytest.mark.parametrize("arch", ["llada", "dream"])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cache_batch_equals_single_runs_through_the_lookahead(models, arch, cache):
    # position_temperature 1e-6: every candidate collapses onto candidate 0, so the lookahead
    # path runs (one candidate per row) with nothing random left at temperature 0.
    sampler = InfoGainSampler(models[arch])
    settings = dict(SETTINGS, cache=cache, position_temperature=1e-6)
    batch = sampler.generate(PROMPTS, **settings)
    assert batch.stats.tokens["lookahead"] > 0
    for row, prompt in enumerate(PROMPTS):
        single = sampler.generate([prompt], **settings)
        assert batch.sequences[row].tolist() == single.sequences[0].tolist()
    # Reusing the winner's lookahead logits equals a fresh cached forward of the committed state.
    fresh = sampler.generate(PROMPTS, **{**settings, "position_temperature": 0.0})
    assert torch.equal(batch.sequences, fresh.sequences)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_lookahead_is_one_batch_sharing_the_cache(models, cache, monkeypatch):
    model = models["llada"]
    calls = []
    # Every window forward goes through the hidden states (the fused lookahead stops there).
    original = model.window_hidden_states

    def spy(window_ids, *, start, cache, mode, attention_mask=None, cache_rows=None, write=False):
        # The sampler passes cache rows as a host tuple (no read-back); a tensor is accepted too.
        rows = cache_rows.tolist() if isinstance(cache_rows, torch.Tensor) else cache_rows
        calls.append((tuple(window_ids.shape), None if rows is None else list(rows), id(cache), cache.batch_size))
        return original(window_ids, start=start, cache=cache, mode=mode, attention_mask=attention_mask,
                        cache_rows=cache_rows, write=write)

    monkeypatch.setattr(model, "window_hidden_states", spy)
    result = InfoGainSampler(model).generate(PROMPTS, **SETTINGS, cache=cache, seed=0)
    lookahead_calls = [c for c in calls if len(c[1]) > 0 and len(c[1]) != len(set(c[1]))]
    assert lookahead_calls, "expected a lookahead batch holding several candidates of a row"
    for shape, rows, _, cache_batch in calls:
        assert cache_batch == len(PROMPTS)  # the cache is never expanded per candidate
        assert shape[0] == len(rows)
    assert result.stats.lookahead_batches > 0
    assert result.stats.candidate_evals > result.stats.lookahead_batches
    assert (result.sequences != MASK_ID).all()
    for row in result.stats.rows:
        assert sum(row.tokens.values()) == SETTINGS["gen_length"]


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("name", ["info_gain", "confidence", "fast_dllm"])
def test_sdar_exact_cache_equals_no_cache(models, cache, name):
    sampler = make_sampler(name, models["sdar"])
    cached = sampler.generate(PROMPTS, **SETTINGS, cache=cache, seed=3, temperature=0.0)
    uncached = sampler.generate(PROMPTS, **SETTINGS, cache="none", seed=3, temperature=0.0)
    assert torch.equal(cached.sequences, uncached.sequences)
    # The block-causal cache appends each finished block once (one extra forward per block but the last).
    assert cached.stats.nfe >= uncached.stats.nfe


def test_sdar_batch_equals_single_runs(models):
    sampler = InfoGainSampler(models["sdar"])
    settings = dict(SETTINGS, cache="prefix", position_temperature=1e-6)
    batch = sampler.generate(PROMPTS, **settings)
    for row, prompt in enumerate(PROMPTS):
        assert batch.sequences[row].tolist() == sampler.generate([prompt], **settings).sequences[0].tolist()


@pytest.mark.parametrize("arch", ["llada", "dream", "sdar"])
def test_baselines_run_in_every_cache_mode(models, arch):
    for name in ("eb", "margin"):
        for cache in ("none", "prefix", "dual"):
            result = make_sampler(name, models[arch]).generate(PROMPTS[:2], **SETTINGS, cache=cache, seed=0,
                                                               stop_at_eos=False)
            assert (result.sequences != MASK_ID).all()
            assert all(sum(r.tokens.values()) == SETTINGS["gen_length"] for r in result.stats.rows)


@pytest.mark.parametrize("arch", ["llada", "dream", "sdar"])
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_cpu_and_accelerator_step_paths_decide_the_same(models, monkeypatch, arch, cache, temperature):
    """The CPU path builds candidates only after the read-back, on steps that look ahead (see
    sampler._host_reads_are_free); the accelerator path builds them every step before it. Same
    random stream, so the same tokens, statistics and per-step trace."""
    from infogain.samplers import sampler as sampler_module

    sampler = InfoGainSampler(models[arch])
    # Threshold 0.06: steps where every row bypasses (no candidates built on the CPU path) come
    # before steps that look ahead, so the random stream after a skipped build is compared too.
    settings = dict(SETTINGS, steps=8, threshold=0.06, cache=cache, temperature=temperature, seed=5, record=True)
    results = {}
    for reads_free in (True, False):
        monkeypatch.setattr(sampler_module, "_host_reads_are_free", lambda device, free=reads_free: free)
        results[reads_free] = sampler.generate(PROMPTS, **settings)
    cpu, accelerator = results[True], results[False]
    assert any(row["kind"] == "lookahead" for step in cpu.trace for row in step["rows"])
    assert torch.equal(cpu.sequences, accelerator.sequences)
    # The CPU path runs the lookahead's last MLP at the read positions only (window_hidden_states'
    # ``read``): the same decisions, entropies equal up to float rounding.
    _assert_same_up_to_rounding(cpu.trace, accelerator.trace)
    assert cpu.stats.cumulative_entropy == pytest.approx(accelerator.stats.cumulative_entropy, rel=1e-5)
    assert cpu.stats.candidate_evals == accelerator.stats.candidate_evals


def _assert_same_up_to_rounding(got, want, where="trace"):
    """``got`` equals ``want`` (nested lists / dicts), floats within a relative 1e-5."""
    assert type(got) is type(want), where
    if isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), where
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            _assert_same_up_to_rounding(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want)):
            _assert_same_up_to_rounding(a, b, f"{where}[{i}]")
    else:
        assert got == want, where
