"""Info-Gain / LookUM sampler: trajectory vs an independent naive implementation, batching,
variants, statistics, EOS handling, sampling distribution."""
import pytest
import torch
from scipy import stats as scipy_stats

from infogain.samplers import InfoGainSampler, make_sampler
from test_samplers_helpers import single_thread  # noqa: F401  (autouse fixture)
from test_samplers_helpers import EOS_ID, MASK_ID, TinyBidirectionalLM, naive_info_gain

SETTINGS = dict(gen_length=16, steps=8, block_length=8, candidate_number=4, position_temperature=0.5,
                threshold=0.27, temperature=0.0)


@pytest.fixture(scope="module")
def model():
    return TinyBidirectionalLM(seed=0)


def _naive(model, prompt, result, row, padding=0, **settings):
    options = {**SETTINGS, "variant": "info_gain", **settings}
    keys = ("gen_length", "steps", "block_length", "threshold", "variant", "candidate_number",
            "position_temperature", "parallel_bypass", "stop_at_eos", "eos_penalty", "lookahead_eos_fill")
    return naive_info_gain(model, prompt, result.trace, row, padding=padding,
                           **{k: options[k] for k in keys if k in options})


@pytest.mark.parametrize("variant", ["info_gain", "lookum"])
def test_trajectory_matches_naive_single_row(model, variant):
    prompt = [2, 3, 4, 5]
    result = InfoGainSampler(model).generate(prompt, **SETTINGS, variant=variant, seed=1, record=True)
    expected = _naive(model, prompt, result, 0, variant=variant)
    assert result.sequences[0].tolist() == expected
    kinds = [r["rows"][0]["kind"] for r in result.trace]
    assert "lookahead" in kinds and "bypass" in kinds and "fill" in kinds
    assert result.stats.rows[0].tokens["lookahead"] > 0


def test_trajectory_matches_naive_parallel_bypass_and_uneven_steps(model):
    prompt = [7, 8]
    settings = dict(SETTINGS, steps=5, parallel_bypass=True, threshold=0.2)
    result = InfoGainSampler(model).generate(prompt, **settings, seed=3, record=True)
    assert result.sequences[0].tolist() == _naive(model, prompt, result, 0, **settings)


def test_batch_of_different_lengths_matches_naive_per_row(model):
    prompts = [[2, 3, 4, 5, 6, 7], [9], [10, 11, 12]]
    result = InfoGainSampler(model).generate(prompts, **SETTINGS, seed=2, record=True)
    assert result.sequences.shape == (3, SETTINGS["gen_length"])
    for row, prompt in enumerate(prompts):
        padding = max(map(len, prompts)) - len(prompt)
        assert result.sequences[row].tolist() == _naive(model, prompt, result, row, padding)
    # One lookahead batch per step for all rows: never more lookahead batches than steps.
    assert result.stats.lookahead_batches <= SETTINGS["steps"]
    assert result.stats.candidate_evals == sum(r.candidate_evals for r in result.stats.rows)


@pytest.mark.parametrize("position_temperature", [0.0, 1e-6])
def test_batch_equals_single_runs(model, position_temperature):
    # Without position noise (trivial path, or every candidate collapsing onto candidate 0)
    # nothing random is left at temperature 0: each row must equal its single run exactly.
    prompts = [[2, 3, 4, 5, 6, 7], [9], [10, 11, 12]]
    settings = dict(SETTINGS, position_temperature=position_temperature)
    sampler = InfoGainSampler(model)
    batch = sampler.generate(prompts, **settings)
    for row, prompt in enumerate(prompts):
        single = sampler.generate([prompt], **settings)
        assert batch.sequences[row].tolist() == single.sequences[0].tolist()
        assert batch.stats.rows[row].tokens == single.stats.rows[0].tokens
    if position_temperature > 0:
        assert batch.stats.tokens["lookahead"] > 0


def test_lookahead_reuse_equals_fresh_forward(model):
    # With one distinct candidate the lookahead commits candidate 0 and reuses its logits; the
    # trivial path commits the same tokens and forwards afresh: identical trajectories.
    settings = dict(SETTINGS, threshold=1.0)
    sampler = InfoGainSampler(model)
    reused = sampler.generate([[2, 3, 4]], **{**settings, "position_temperature": 1e-6})
    fresh = sampler.generate([[2, 3, 4]], **{**settings, "position_temperature": 0.0})
    assert reused.sequences.tolist() == fresh.sequences.tolist()
    assert reused.stats.tokens["lookahead"] == fresh.stats.tokens["trivial"] > 0
    # Reusing the winner's logits saves the fresh forward after every lookahead commit.
    assert reused.stats.nfe - reused.stats.lookahead_batches < fresh.stats.nfe


def test_lookum_and_info_gain_differ_only_in_cost(model):
    prompt = [2, 3, 4, 5]
    runs = {v: InfoGainSampler(model).generate(prompt, **SETTINGS, variant=v, seed=5, record=True)
            for v in ("info_gain", "lookum")}
    for variant, result in runs.items():
        for record in result.trace:
            entry = record["rows"][0]
            if entry["kind"] != "lookahead":
                continue
            for cand in entry["candidates"]:
                cost = cand["cost"] if variant == "info_gain" else 0.0
                assert cand["objective"] == pytest.approx(-cost - cand["h_next"], abs=1e-5)
            best = max(range(len(entry["candidates"])), key=lambda i: (entry["candidates"][i]["objective"], -i))
            assert entry["winner"] == best
    # Same seed, same state until the first lookahead: same candidates and H_next, J shifted by C.
    first = [next(r["rows"][0] for r in res.trace if r["rows"][0]["kind"] == "lookahead") for res in runs.values()]
    for a, b in zip(first[0]["candidates"], first[1]["candidates"]):
        assert a["positions"] == b["positions"]
        assert a["h_next"] == pytest.approx(b["h_next"], abs=1e-6)
        assert a["objective"] == pytest.approx(b["objective"] - a["cost"], abs=1e-5)


def test_statistics_add_up(model):
    prompts = [[2, 3], [4, 5, 6]]
    result = make_sampler("info_gain", model).generate(prompts, **SETTINGS, seed=0)
    stats = result.stats
    for row in stats.rows:
        assert sum(row.tokens.values()) == SETTINGS["gen_length"]
        assert row.bypass_rate == row.tokens["bypass"] / SETTINGS["gen_length"]
        assert row.cumulative_entropy > 0
    assert stats.nfe >= max(r.nfe for r in stats.rows)
    assert stats.tokens_per_second > 0 and stats.wall_time_s > 0
    as_dict = stats.to_dict()
    assert as_dict["sampler"] == "info_gain" and len(as_dict["rows"]) == 2
    assert as_dict["generated_tokens"] == 2 * SETTINGS["gen_length"]
    assert (result.sequences != MASK_ID).all()


def test_cumulative_entropy_is_sum_of_commit_entropies(model):
    # Trivial path, one token per step: cumulative entropy = sum of the entropy of each
    # committed position under the logits of its step (naive recomputation).
    from test_samplers_helpers import naive_entropy, naive_logits
    prompt = [2, 3, 4]
    result = InfoGainSampler(model).generate(prompt, gen_length=8, steps=8, block_length=8,
                                             position_temperature=0.0, threshold=1.0, record=True)
    x = list(prompt) + [MASK_ID] * 8
    total = 0.0
    for record in result.trace:
        entry = record["rows"][0]
        logits = naive_logits(model, x)
        for position, token in zip(entry["positions"], entry["tokens"]):
            total += naive_entropy(logits[position])
            x[position] = token
    assert result.stats.rows[0].cumulative_entropy == pytest.approx(total, rel=1e-4)


class _EosAt(torch.nn.Module):
    """Wraps a model and boosts the EOS logit at one canvas position (counted from the end)."""

    def __init__(self, inner, from_end, boost=50.0):
        super().__init__()
        self.inner, self.from_end, self.boost, self.config = inner, from_end, boost, inner.config

    def forward(self, ids, attention_mask=None):
        logits = self.inner(ids, attention_mask=attention_mask).clone()
        logits[:, ids.shape[1] - self.from_end, EOS_ID] += self.boost
        return logits


def test_stop_at_eos_fills_and_penalty_suppresses(model):
    wrapped = _EosAt(model, from_end=13)  # generation position 3 of 16
    sampler = InfoGainSampler(wrapped)
    result = sampler.generate([2, 3, 4], **SETTINGS, seed=0, record=True)
    sequence = result.sequences[0].tolist()
    assert sequence[3] == EOS_ID and all(t == EOS_ID for t in sequence[3:])
    assert result.stats.rows[0].tokens["eos_fill"] > 0
    assert sum(result.stats.rows[0].tokens.values()) == 16
    assert result.sequences[0].tolist() == _naive(wrapped, [2, 3, 4], result, 0)
    penalized = sampler.generate([2, 3, 4], **SETTINGS, seed=0, eos_penalty=1e4)
    assert EOS_ID not in penalized.sequences[0].tolist()
    no_stop = sampler.generate([2, 3, 4], **SETTINGS, seed=0, stop_at_eos=False)
    assert no_stop.stats.rows[0].tokens["eos_fill"] == 0


def _first_eos_candidate(trace):
    """(block, step, candidate) of the first lookahead candidate that commits EOS, or None."""
    for record in trace:
        for row in record["rows"]:
            for cand in row.get("candidates", []):
                if EOS_ID in cand["tokens"]:
                    return record["block"], record["step"], cand
    return None


def test_lookahead_eos_fill_option_matches_naive(model):
    # A moderate EOS boost makes EOS likely but not certain, so some lookahead candidate commits it.
    for from_end, boost in ((12, 3.0), (10, 4.0), (14, 5.0), (9, 6.0)):
        wrapped = _EosAt(model, from_end=from_end, boost=boost)
        results = {}
        for fill in (False, True):
            settings = dict(SETTINGS, threshold=0.9, lookahead_eos_fill=fill)
            result = InfoGainSampler(wrapped).generate([2, 3, 4], **settings, seed=0, record=True)
            assert result.sequences[0].tolist() == _naive(wrapped, [2, 3, 4], result, 0, **settings)
            results[fill] = _first_eos_candidate(result.trace)
        if results[False] is not None:
            break
    else:
        pytest.fail("no lookahead candidate committed EOS: the test does not exercise the option")
    # Both runs agree up to the first EOS candidate; only its score differs: with the fill, the
    # masks after its EOS are no longer counted in H_next.
    (block, step, plain), (block_f, step_f, filled) = results[False], results[True]
    assert (block, step, plain["positions"], plain["tokens"]) == (block_f, step_f, filled["positions"],
                                                                  filled["tokens"])
    assert plain["cost"] == pytest.approx(filled["cost"])
    assert plain["h_next"] != pytest.approx(filled["h_next"], abs=1e-4)


def test_seed_reproducible_and_seeds_differ(model):
    sampler = InfoGainSampler(model)
    settings = dict(SETTINGS, temperature=1.0)
    first = sampler.generate([[2, 3], [4, 5]], **settings, seed=11).sequences
    again = sampler.generate([[2, 3], [4, 5]], **settings, seed=11).sequences
    assert torch.equal(first, again)
    others = [sampler.generate([[2, 3], [4, 5]], **settings, seed=s).sequences for s in (12, 13, 14)]
    assert any(not torch.equal(first, o) for o in others)


def test_tokens_are_sampled_at_temperature(model):
    # One masked position decoded by the last-step fill: its token must follow softmax(logits / T).
    rows, temperature, prompt = 3000, 1.5, [2, 3, 4]
    result = InfoGainSampler(model).generate([prompt] * rows, gen_length=1, steps=1, block_length=1,
                                             temperature=temperature, seed=0, stop_at_eos=False)
    from test_samplers_helpers import naive_logits, naive_probs
    expected = naive_probs(naive_logits(model, prompt + [MASK_ID])[-1] / temperature)
    counts = torch.bincount(result.sequences[:, 0], minlength=expected.numel()).double()
    keep = expected * rows >= 5
    observed = torch.cat([counts[keep], counts[~keep].sum()[None]])
    wanted = torch.cat([expected[keep], expected[~keep].sum()[None]]) * rows
    if wanted[-1] == 0:
        observed, wanted = observed[:-1], wanted[:-1]
    assert counts[MASK_ID] == 0
    _, p_value = scipy_stats.chisquare(observed.numpy(), wanted.numpy() * observed.sum().item() / wanted.sum().item())
    assert p_value > 1e-3


def test_string_prompts_and_texts(model):
    class CharTokenizer:
        mask_token_id = MASK_ID
        eos_token_id = EOS_ID
        pad_token_id = 0
        chat_template = "x"

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [2 + (ord(c) % 30) for c in text]}

        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
            return "<" + messages[0]["content"] + ">"

        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(97 + (t % 26)) for t in ids)

    tokenizer = CharTokenizer()
    sampler = InfoGainSampler(model, tokenizer)
    result = sampler.generate(["ab", "abc"], **SETTINGS, seed=0)
    assert len(result.texts) == 2 and all(isinstance(t, str) for t in result.texts)
    chat = sampler.generate("ab", **SETTINGS, seed=0, chat=True)
    assert chat.canvas.shape[1] == 4 + SETTINGS["gen_length"]  # "<ab>"
    with pytest.raises(ValueError, match="tokenizer"):
        InfoGainSampler(model).generate("ab", **SETTINGS)


def test_triton_kernels_give_the_reference_trajectory(model, triton_interpreted):
    # At temperature 0 with collapsed candidates nothing random is left, so the Triton kernels
    # (interpreted on CPU without a GPU) must reproduce the reference path's trajectory.
    from infogain_kernels import use_backend
    device = torch.device(triton_interpreted)
    model_on_device = model.to(device)
    settings = dict(SETTINGS, gen_length=8, steps=4, block_length=4, position_temperature=1e-6)
    runs = {}
    for backend in ("reference", "triton"):
        with use_backend(backend):
            runs[backend] = InfoGainSampler(model_on_device).generate([[2, 3, 4], [5]], **settings)
    model.to("cpu")
    assert torch.equal(runs["reference"].sequences, runs["triton"].sequences)
    assert runs["triton"].stats.tokens == runs["reference"].stats.tokens
