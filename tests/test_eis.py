"""ExtendedInferenceSampler on tiny random transformers models (built from configs, no download)."""
import math

import pytest
import torch
from transformers import (GenerationConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

from infogain.eis import ExtendedInferenceSampler, _CachedRunner

VOCAB = 100
EOS = 99


def tiny(family):
    torch.manual_seed(0)
    # A large init range makes the random model's distributions peaked, so argmax decisions are not
    # decided by float noise.
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                           initializer_range=0.2, eos_token_id=EOS, bos_token_id=EOS))
    elif family == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             initializer_range=0.2, eos_token_id=EOS))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             initializer_range=0.2, eos_token_id=EOS))
    return model.eval()


FAMILIES = ["gpt2", "llama", "qwen2"]


def filtered_log_softmax(logits, temperature, top_p):
    """Nucleus by full sort (strictly-more-probable mass < top_p), float64."""
    s = logits.double() / (temperature if temperature > 0 else 1.0)
    p = torch.softmax(s, -1)
    sp, order = torch.sort(p, descending=True)
    keep_sorted = (torch.cumsum(sp, -1) - sp) < top_p if top_p < 1 else torch.ones_like(sp, dtype=torch.bool)
    keep = torch.empty_like(keep_sorted).scatter_(-1, order, keep_sorted)
    return torch.where(keep, p.log() - (p * keep).sum(-1, keepdim=True).log(), torch.full_like(p, -math.inf))


@torch.no_grad()
def naive_eis(model, prompt, steps, k, lookahead, gamma, temperature, top_p):
    """Independent greedy-rollout EIS for one unpadded row: every forward recomputes the full sequence."""
    seq = prompt.tolist()

    def next_logprobs(tokens):
        return filtered_log_softmax(model(torch.tensor([tokens])).logits[0, -1], temperature, top_p)

    for _ in range(steps):
        lp = next_logprobs(seq)
        candidates = torch.sort(lp, descending=True, stable=True).indices[:k].tolist()
        best, best_score = None, -math.inf
        for c in candidates:
            score, rollout = lp[c].item(), seq + [c]
            for t in range(1, lookahead + 1):
                lp_t = next_logprobs(rollout)
                tok = int(lp_t.argmax())
                score += gamma ** t * lp_t[tok].item()
                rollout.append(tok)
            if score > best_score:
                best, best_score = c, score
        seq.append(best)
    return seq


@pytest.mark.parametrize("family", FAMILIES)
def test_matches_naive_implementation(family):
    model = tiny(family)
    prompt = torch.randint(0, EOS, (6,), generator=torch.Generator().manual_seed(1))
    expected = naive_eis(model, prompt, 4, 3, 2, 0.9, 0.0, 1.0)
    sampler = ExtendedInferenceSampler(model, None, lookahead_steps=2, discount_factor=0.9, top_k=3,
                                       temperature=0.0, rollout_mode="greedy")
    out = sampler.generate(prompt[None], max_new_tokens=4, eos_token_id=[], pad_token_id=0)
    assert out[0].tolist() == expected


def test_matches_naive_with_temperature_and_top_p():
    model = tiny("llama")
    prompt = torch.randint(0, EOS, (5,), generator=torch.Generator().manual_seed(2))
    expected = naive_eis(model, prompt, 3, 4, 2, 0.7, 0.8, 0.9)
    sampler = ExtendedInferenceSampler(model, None, lookahead_steps=2, discount_factor=0.7, top_k=4,
                                       temperature=0.8, top_p=0.9)
    assert sampler.generate(prompt[None], max_new_tokens=3, eos_token_id=[])[0].tolist() == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_lookahead_zero_is_greedy(family):
    model = tiny(family)
    prompt = torch.randint(0, EOS, (1, 5), generator=torch.Generator().manual_seed(3))
    seq = prompt[0].tolist()
    with torch.no_grad():
        for _ in range(5):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    sampler = ExtendedInferenceSampler(model, None, lookahead_steps=0, top_k=4, temperature=0.7, top_p=0.9)
    assert sampler.generate(prompt, max_new_tokens=5, eos_token_id=[])[0].tolist() == seq


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rollout_mode", ["greedy", "sample"])
def test_cache_on_off_and_padded_batch_equal_rows_alone(family, rollout_mode):
    model = tiny(family)
    ids = torch.randint(0, EOS, (2, 7), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # row 1 is a 4-token prompt, left-padded
    ids[1, :3] = 0

    def run(input_ids, attention_mask, use_cache):
        sampler = ExtendedInferenceSampler(model, None, lookahead_steps=2, top_k=3, temperature=0.9, top_p=0.95,
                                           rollout_mode=rollout_mode, use_cache=use_cache,
                                           generator=torch.Generator().manual_seed(5))
        return sampler.generate(input_ids, max_new_tokens=5, attention_mask=attention_mask, eos_token_id=[])

    cached, uncached = run(ids, mask, True), run(ids, mask, False)
    assert torch.equal(cached, uncached)
    if rollout_mode == "greedy":  # sampled rollouts draw noise per batch row, so only greedy compares by row
        assert cached[1, 7:].tolist() == run(ids[1:, 3:], None, True)[0, 4:].tolist()
        assert cached[0].tolist() == run(ids[:1], None, True)[0].tolist()


def test_eos_stops_and_pads():
    model = tiny("qwen2")
    ids = torch.randint(0, EOS, (2, 5), generator=torch.Generator().manual_seed(6))
    sampler = ExtendedInferenceSampler(model, None, lookahead_steps=1, top_k=2, temperature=0.0)
    free = sampler.generate(ids, max_new_tokens=6, eos_token_id=[])
    eos = int(free[0, 6])  # make row 0's second generated token the EOS
    config = GenerationConfig(max_new_tokens=6, eos_token_id=eos, pad_token_id=7)
    out = sampler.generate(ids, generation_config=config)
    assert out[0, 5:7].tolist() == free[0, 5:7].tolist()
    assert out.shape[1] <= 11
    assert (out[0, 7:] == 7).all()
    row1 = free[1, 5:].tolist()
    cut = row1.index(eos) + 1 if eos in row1 else len(row1)
    assert out[1, 5:5 + cut].tolist() == row1[:cut]
    single = sampler.generate(ids[:1], generation_config=config)
    assert single.shape == (1, 7)  # stopped early: every row has emitted EOS


def test_debug_records_scores_and_choice():
    model = tiny("gpt2")
    ids = torch.randint(0, EOS, (2, 4), generator=torch.Generator().manual_seed(7))
    sampler = ExtendedInferenceSampler(model, None, lookahead_steps=2, top_k=3, temperature=0.0, debug=True)
    out = sampler.generate(ids, max_new_tokens=3, eos_token_id=[])
    assert len(sampler.last_debug) == 3
    for step, record in enumerate(sampler.last_debug):
        assert record["candidates"].shape == record["scores"].shape == (2, 3)
        assert record["chosen"].tolist() == out[:, 4 + step].tolist()
        best = record["scores"].argmax(dim=1)
        assert record["candidates"].gather(1, best[:, None]).squeeze(1).tolist() == record["chosen"].tolist()
        assert record["mean_score"].shape == (2,)


@torch.no_grad()
def test_rollout_shares_and_restores_the_cache():
    model = tiny("llama")
    ids = torch.randint(0, EOS, (2, 6), generator=torch.Generator().manual_seed(8))
    runner = _CachedRunner(model, ids, torch.ones_like(ids))
    candidates = torch.tensor([[1, 2, 3], [4, 5, 6]])
    for t in range(3):
        logits = runner.rollout_step(candidates, t)
        assert logits.shape == (2, 3, VOCAB)
        layer = runner.cache.layers[0]
        assert layer.keys.shape[0] == 2  # batch stays B: no per-candidate copies
        assert layer.keys.shape[2] == 6 + 3 * (t + 1)
    runner.end_rollout()
    assert runner.cache.get_seq_length() == 6
    runner.append(torch.tensor([9, 9]))
    assert runner.cache.get_seq_length() == 7


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(lookahead_steps=-1), ValueError, "lookahead_steps"),
    (dict(lookahead_steps=1.5), TypeError, "lookahead_steps"),
    (dict(discount_factor=1.5), ValueError, "discount_factor"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(temperature=-1), ValueError, "temperature"),
    (dict(top_p=0), ValueError, "top_p"),
    (dict(top_p=1.1), ValueError, "top_p"),
    (dict(rollout_mode="beam"), ValueError, "rollout_mode"),
    (dict(use_cache="yes"), TypeError, "use_cache"),
    (dict(generator=1), TypeError, "generator"),
])
def test_invalid_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ExtendedInferenceSampler(tiny("gpt2"), None, **kwargs)


def test_invalid_generate_arguments():
    sampler = ExtendedInferenceSampler(tiny("gpt2"), None, lookahead_steps=1)
    ids = torch.randint(0, EOS, (2, 4))
    with pytest.raises(ValueError, match="input_ids"):
        sampler.generate(ids[0], max_new_tokens=2)
    with pytest.raises(ValueError, match="input_ids"):
        sampler.generate(ids.int(), max_new_tokens=2)
    with pytest.raises(ValueError, match="attention_mask must use left padding"):
        mask = torch.ones_like(ids)
        mask[0, -1] = 0
        sampler.generate(ids, max_new_tokens=2, attention_mask=mask)
    with pytest.raises(ValueError, match="attention_mask must be"):
        sampler.generate(ids, max_new_tokens=2, attention_mask=torch.ones(2, 3))
    with pytest.raises(TypeError, match="unsupported keyword"):
        sampler.generate(ids, max_new_tokens=2, num_beams=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sampler.generate(ids, max_new_tokens=-1)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("use_cache", [True, False])
def test_installed_transformers_gives_no_deprecation_warning(family, use_cache):
    """The cache goes through the keyword the installed transformers wants (``cache`` in 5.x)."""
    import warnings

    model = tiny(family)
    sampler = ExtendedInferenceSampler(model, None, lookahead_steps=2, top_k=3, temperature=0.0, use_cache=use_cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = sampler.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=3, eos_token_id=[], pad_token_id=0)
    assert out.shape == (1, 6)
