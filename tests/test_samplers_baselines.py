"""Baseline samplers on the shared code path, plus argument validation of every sampler."""
import pytest
import torch

from infogain.samplers import SAMPLERS, DiffusionSampler, InfoGainSampler, make_sampler
from test_samplers_helpers import single_thread  # noqa: F401  (autouse fixture)
from test_samplers_helpers import MASK_ID, TinyBidirectionalLM, naive_entropy, naive_logits, naive_probs

SETTINGS = dict(gen_length=12, steps=6, block_length=4, candidate_number=3, position_temperature=0.5,
                threshold=0.27)


@pytest.fixture(scope="module")
def model():
    return TinyBidirectionalLM(seed=1)


def _check_block_order(canvases, gen_start, block_length):
    """Every forwarded canvas: the blocks before some block b are complete, those after b untouched."""
    for ids in canvases:
        for row in ids.tolist():
            region = row[gen_start:]
            blocks = [region[i:i + block_length] for i in range(0, len(region), block_length)]
            started = [any(t != MASK_ID for t in blk) for blk in blocks]
            complete = [all(t != MASK_ID for t in blk) for blk in blocks]
            current = next((b for b, done in enumerate(complete) if not done), len(blocks))
            assert all(complete[:current]), row
            assert not any(started[current + 1:]), f"a token was written after the current block: {row}"


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_fills_exactly_gen_length_inside_the_current_block(model, name):
    prompts = [[2, 3, 4], [5, 6]]
    model.recording, model.calls = True, []
    try:
        result = make_sampler(name, model).generate(prompts, **SETTINGS, temperature=0.7, seed=0,
                                                    stop_at_eos=False)
    finally:
        model.recording = False
    assert result.sequences.shape == (2, SETTINGS["gen_length"])
    assert (result.sequences != MASK_ID).all()
    for row in result.stats.rows:
        assert sum(row.tokens.values()) == SETTINGS["gen_length"]
        assert row.tokens["eos_fill"] == 0
    _check_block_order(model.calls, gen_start=3, block_length=SETTINGS["block_length"])
    assert result.stats.sampler == name


@pytest.mark.parametrize("name", ["confidence", "entropy", "margin", "fast_dllm", "eb", "info_gain"])
def test_batch_equals_single_runs(model, name):
    prompts = [[2, 3, 4, 5], [9], [10, 11]]
    sampler = make_sampler(name, model, **{**SETTINGS, "position_temperature": 0.0})
    batch = sampler.generate(prompts)
    for row, prompt in enumerate(prompts):
        assert batch.sequences[row].tolist() == sampler.generate([prompt]).sequences[0].tolist()


def _naive_heuristic(model, prompt, name, gen_length, steps, block_length, threshold, gamma=0.01):
    """Greedy baselines written out with python loops (temperature 0, no EOS fill)."""
    x = list(prompt) + [MASK_ID] * gen_length
    num_blocks = gen_length // block_length
    for block in range(num_blocks):
        start = len(prompt) + block * block_length
        block_steps = steps // num_blocks + (1 if block < steps % num_blocks else 0)
        initial = block_length
        step = 0
        while True:
            masked = [i for i in range(start, start + block_length) if x[i] == MASK_ID]
            if not masked:
                break
            logits = naive_logits(model, x)
            probs = {i: naive_probs(logits[i]) for i in masked}
            token = {i: int(probs[i].argmax()) for i in masked}
            confidence = {i: float(probs[i].max()) for i in masked}
            if name in ("confidence", "entropy", "margin"):
                quota = initial // block_steps + (1 if step < initial % block_steps else 0)
                if step == block_steps - 1 or quota >= len(masked):
                    chosen = masked
                else:
                    if name == "confidence":
                        score = confidence
                    elif name == "entropy":
                        score = {i: -naive_entropy(logits[i]) for i in masked}
                    else:
                        score = {i: float(probs[i].topk(2).values[0] - probs[i].topk(2).values[1]) for i in masked}
                    chosen = sorted(masked, key=lambda i: -score[i])[:quota]
            elif name == "fast_dllm":
                best = max(masked, key=lambda i: confidence[i])
                chosen = sorted({best} | {i for i in masked if confidence[i] >= threshold})
            else:  # eb
                entropy = sorted((naive_entropy(logits[i]), i) for i in masked)
                chosen, total, largest = [], 0.0, 0.0
                for h, i in entropy:
                    total, largest = total + h, max(largest, h)
                    if total - largest > gamma and chosen:
                        break
                    chosen.append(i)
            for i in chosen:
                x[i] = token[i]
            step += 1
    return x[len(prompt):]


@pytest.mark.parametrize("name", ["confidence", "entropy", "margin", "fast_dllm", "eb"])
def test_baselines_match_naive(model, name):
    prompt = [2, 3, 4, 5]
    settings = dict(gen_length=8, steps=6, block_length=4, threshold=0.25)
    gamma = 0.5
    result = make_sampler(name, model).generate(prompt, **settings, gamma=gamma, stop_at_eos=False)
    assert result.sequences[0].tolist() == _naive_heuristic(model, prompt, name, **settings, gamma=gamma)


def test_random_remasking_uses_the_seed(model):
    sampler = make_sampler("random", model, **SETTINGS)
    a = sampler.generate([[2, 3]], seed=4, record=True)
    b = sampler.generate([[2, 3]], seed=4, record=True)
    assert a.trace == b.trace
    orders = {tuple(tuple(r["rows"][0]["positions"]) for r in sampler.generate([[2, 3]], seed=s, record=True).trace)
              for s in range(4)}
    assert len(orders) > 1


def test_fast_dllm_commits_at_least_one_per_step(model):
    result = make_sampler("fast_dllm", model).generate([2, 3], gen_length=8, steps=2, block_length=8,
                                                       threshold=1.0, record=True)
    assert all(len(r["rows"][0]["positions"]) == 1 for r in result.trace)
    assert result.stats.nfe == 8


# ---------------------------------------------------------------- validation

class _NoConfig(torch.nn.Module):
    def forward(self, ids, attention_mask=None):
        return torch.zeros(*ids.shape, 8)


@pytest.mark.parametrize("options, error, match", [
    (dict(steps=2, gen_length=12, block_length=4), ValueError, "steps"),
    (dict(gen_length=10, block_length=4), ValueError, "multiple of block_length"),
    (dict(threshold=0.0), ValueError, "threshold"),
    (dict(threshold=1.5), ValueError, "threshold"),
    (dict(temperature=-0.1), ValueError, "temperature"),
    (dict(position_temperature=-1.0), ValueError, "position_temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(candidate_number=0), ValueError, "candidate_number"),
    (dict(gen_length=0), ValueError, "gen_length"),
    (dict(steps=2.5), TypeError, "steps"),
    (dict(variant="greedy"), ValueError, "variant"),
    (dict(cache="paged"), ValueError, "cache"),
    (dict(cache="prefix"), ValueError, "prefill"),
    (dict(seed="x"), TypeError, "seed"),
    (dict(unknown_option=1), TypeError, "unknown_option"),
    (dict(gen_length=256, block_length=32, steps=256), ValueError, "max_position_embeddings"),
])
def test_invalid_options_raise(model, options, error, match):
    with pytest.raises(error, match=match):
        InfoGainSampler(model).generate([2, 3], **{**SETTINGS, **options})


@pytest.mark.parametrize("prompts, error, match", [
    ([], ValueError, "empty"),
    ([[2, 3], []], ValueError, r"prompts\[1\] is empty"),
    ([[2, 3], [1.5]], TypeError, r"prompts\[1\]"),
    (torch.zeros(2, 3), TypeError, "integer"),
    (torch.zeros(2, 3, 4, dtype=torch.long), ValueError, "shape"),
    ([[2, -1]], ValueError, "negative"),
    (3.0, TypeError, "prompts"),
])
def test_invalid_prompts_raise(model, prompts, error, match):
    with pytest.raises(error, match=match):
        InfoGainSampler(model).generate(prompts, **SETTINGS)


def test_invalid_construction_raises(model):
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("beam", model)
    with pytest.raises(ValueError, match="mask_id"):
        InfoGainSampler(_NoConfig())
    with pytest.raises(ValueError, match="threshold"):
        make_sampler("fast_dllm", model, threshold=2.0)
    with pytest.raises(TypeError, match="strategy"):
        DiffusionSampler(model, strategy=3)
    with pytest.raises(TypeError, match="model"):
        InfoGainSampler("not a model")
    # Without a config, mask_id must be given; then cache="none" works.
    result = InfoGainSampler(_NoConfig(), mask_id=7).generate([1, 2], gen_length=4, steps=4, block_length=4)
    assert result.sequences.shape == (1, 4)


def test_stats_json_and_summary(model, capsys):
    import json

    from infogain.stats import summarize
    runs = [make_sampler(name, model).generate([[2, 3], [4]], **SETTINGS, seed=0, progress=True).stats
            for name in ("info_gain", "eb")]
    for run in runs:
        restored = json.loads(json.dumps(run.to_dict()))
        assert restored["generated_tokens"] == 2 * SETTINGS["gen_length"]
        assert sum(restored["tokens"].values()) == restored["generated_tokens"]
    summary = summarize(runs)
    assert summary["prompts"] == 4 and summary["nfe"] == sum(r.nfe for r in runs)
    assert summarize([]) is None
