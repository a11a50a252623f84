"""LLaDA2.x's own decoders (``infogain.samplers.llada2``): a ragged batch decodes every row token
for token as the official single-prompt loops do, which are re-implemented below for clarity
(batch 1, plain torch, the official semantics step by step)."""
import math

import pytest
import torch
from torch import nn

from infogain import models
from infogain.samplers.llada2 import LLaDA2ThresholdSampler, LLaDA21EditSampler
from infogain.samplers.llada2_rules import (extend_to_block_end, filter_top_k_top_p, row_end, sample_tokens,
                                            transfer_schedule)
from infogain.samplers.prompts import build_block_aligned_canvas
from tiny_checkpoints import MASK_ID, write_tiny_checkpoint

EOS = 1
BLOCK = 8
GEN = 20   # not a multiple of BLOCK: the last block reaches past the answer, as in the official canvas
# Prompt ends at offsets 3, 0 (exactly on a block boundary) and 5 inside a block.
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35],
           [40, 41, 42, 43, 44]]


class Sharpened(nn.Module):
    """The tiny LLaDA2 model with its logits scaled (a peakier, trained-like distribution) and biased
    (EOS raised so that answers end; the mask token never predicted, as in a trained model)."""

    def __init__(self, model, scale: float, eos_bias: float):
        super().__init__()
        self.model, self.config, self.scale = model, model.config, scale
        bias = torch.zeros(model.config.vocab_size)
        bias[EOS] = eos_bias
        bias[MASK_ID] = -1e4
        self.register_buffer("bias", bias)

    def forward(self, input_ids, attention_mask=None, *, gen_start=None, block_length=None, check_values=True,
                keep=None):
        logits = self.model(input_ids, attention_mask, gen_start=gen_start, block_length=block_length,
                            check_values=check_values, keep=keep)
        return logits * self.scale + self.bias


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    return models.load(write_tiny_checkpoint("llada2", tmp_path_factory.mktemp("llada2"), seed=5))[0]


def sharpened(base_model, eos_bias):
    return Sharpened(base_model, scale=4.0, eos_bias=eos_bias)


# --------------------------------------------------------------------------- official loops, batch 1

def block_logits(model, x, end):
    """The official loops' forward: the canvas up to the block's end, block-causal from position 0."""
    return model(x[None, :end], None, block_length=BLOCK)[0, end - BLOCK:end].float()


def greedy(logits):
    probs = torch.softmax(logits, dim=-1)
    token = probs.argmax(dim=-1)
    return token, probs.gather(-1, token[:, None])[:, 0]


def answer(x, prompt_length, gen_length):
    """The official return value: the generation cut after its first EOS."""
    out = x[prompt_length:prompt_length + gen_length].tolist()
    return out[:out.index(EOS) + 1] if EOS in out else out


def official_llada20(model, prompt, *, gen_length, steps, threshold, minimal_topk=1, eos_early_stop=False):
    steps = min(steps, gen_length // minimal_topk)
    P = len(prompt)
    num_blocks = math.ceil((P + gen_length) / BLOCK)
    x = torch.full((num_blocks * BLOCK,), MASK_ID, dtype=torch.long)
    x[:P] = torch.tensor(prompt)
    quotas = [BLOCK // steps + (1 if s < BLOCK % steps else 0) for s in range(steps)]
    log = {"forwards": 0, "threshold": 0, "topk": 0, "early_stop": False, "blocks": 0}
    for b in range(P // BLOCK, num_blocks):
        start, end = b * BLOCK, (b + 1) * BLOCK
        log["blocks"] += 1
        for s in range(steps):
            masked = x[start:end] == MASK_ID
            if not masked.any():
                break
            token, prob = greedy(block_logits(model, x, end))
            log["forwards"] += 1
            confidence = torch.where(masked, prob, torch.tensor(-math.inf))
            chosen = confidence > threshold
            if int(chosen.sum()) >= quotas[s]:
                log["threshold"] += 1
            else:
                log["topk"] += 1
                chosen = torch.zeros_like(masked)
                chosen[torch.topk(confidence, min(quotas[s], int(masked.sum()))).indices] = True
            x[start:end][chosen] = token[chosen]
            if eos_early_stop and (token[chosen] == EOS).any():
                first_eos = int((x == EOS).nonzero()[0])
                if (x[P:first_eos] != MASK_ID).all():
                    log["early_stop"] = True
                    return x[P:first_eos + 1].tolist(), log
        if (x[P:end] == EOS).any():
            break
    return answer(x, P, gen_length), log


def official_llada21(model, prompt, *, gen_length, threshold, editing_threshold, max_post_steps, num_to_transfer,
                     eos_early_stop=False, penalty_lambda=0.0):
    P = len(prompt)
    num_blocks = math.ceil((P + gen_length) / BLOCK)
    x = torch.full((num_blocks * BLOCK,), MASK_ID, dtype=torch.long)
    x[:P] = torch.tensor(prompt)
    log = {"forwards": 0, "threshold": 0, "topk": 0, "edits": 0, "blocks": 0}
    for b in range(P // BLOCK, num_blocks):
        start, end = b * BLOCK, (b + 1) * BLOCK
        is_prompt = torch.arange(start, end) < P
        log["blocks"] += 1
        post_steps = 0
        while True:
            old = x[start:end].clone()
            masked = old == MASK_ID
            if not masked.any():
                post_steps += 1
            if post_steps > max_post_steps:
                break
            logits = block_logits(model, x, end)
            log["forwards"] += 1
            for j in range(1, BLOCK):   # SGLang's penalty on repeating the previous position's token
                logits[j, old[j - 1]] -= penalty_lambda
            token, prob = greedy(logits)
            unmask = torch.zeros_like(masked)
            if masked.any():
                confidence = torch.where(masked, prob, torch.tensor(-math.inf))
                above = (confidence > threshold) & masked
                if int(above.sum()) >= num_to_transfer:
                    log["threshold"] += 1
                    unmask = above
                else:
                    log["topk"] += 1
                    unmask[torch.topk(confidence, min(num_to_transfer, int(masked.sum()))).indices] = True
            edit = ~masked & ~is_prompt & (prob > editing_threshold) & (token != old)
            log["edits"] += int(edit.sum())
            write = unmask | edit
            x[start:end][write] = token[write]
            if not masked.any() and not edit.any():
                break
        if eos_early_stop:
            generated = x[P:end]
            if not (generated == MASK_ID).any() and (generated == EOS).any():
                break
    return answer(x, P, gen_length), log


def cut(row):
    row = row.tolist()
    return row[:row.index(EOS) + 1] if EOS in row else row


# ------------------------------------------------------------------------------------- agreement

@pytest.mark.parametrize("eos_early_stop", [False, True])
def test_threshold_decoder_matches_the_official_loop_per_row(base_model, eos_early_stop):
    model = sharpened(base_model, eos_bias=3.0)
    kw = dict(gen_length=GEN, steps=4, threshold=0.6, eos_early_stop=eos_early_stop)
    result = LLaDA2ThresholdSampler(model).generate(PROMPTS, block_length=BLOCK, **kw)
    logs = []
    for row, prompt in enumerate(PROMPTS):
        expected, log = official_llada20(model, prompt, **kw)
        logs.append(log)
        # The official early stop may return tokens past gen_length (the last block's tail up to
        # an EOS there); the sampler's answer holds gen_length tokens.
        assert cut(result.sequences[row]) == expected[:GEN], row
        assert result.stats.rows[row].nfe == log["forwards"], row
        tokens = result.stats.rows[row].tokens
        assert sum(tokens.values()) == GEN and tokens["bypass"] + tokens["heuristic"] + tokens["eos_fill"] == GEN
    # Not vacuous: both branches ran, an EOS ended a row before its last block (and, with the early
    # stop, in the middle of a block).
    assert sum(log["threshold"] for log in logs) > 0 and sum(log["topk"] for log in logs) > 0
    assert any(log["blocks"] < row_end(len(p), GEN, BLOCK) // BLOCK - len(p) // BLOCK for log, p in zip(logs, PROMPTS))
    assert result.stats.tokens["eos_fill"] > 0
    if eos_early_stop:
        assert any(log["early_stop"] for log in logs)
    rows_nfe = [r.nfe for r in result.stats.rows]
    assert max(rows_nfe) <= result.stats.nfe < sum(rows_nfe)   # rows share forwards


@pytest.mark.parametrize("eos_early_stop,penalty_lambda", [(False, 0.0), (True, 0.0), (False, 1.5)])
def test_edit_decoder_matches_the_official_loop_per_row(base_model, eos_early_stop, penalty_lambda):
    model = sharpened(base_model, eos_bias=3.0)
    kw = dict(gen_length=GEN, threshold=0.6, editing_threshold=0.5, max_post_steps=3, num_to_transfer=2,
              eos_early_stop=eos_early_stop, penalty_lambda=penalty_lambda)
    result = LLaDA21EditSampler(model).generate(PROMPTS, block_length=BLOCK, record=True, **kw)
    logs = []
    for row, prompt in enumerate(PROMPTS):
        expected, log = official_llada21(model, prompt, **kw)
        logs.append(log)
        assert cut(result.sequences[row]) == expected, row
        assert result.stats.rows[row].nfe == log["forwards"], row
        edits = sum(len(e["edited"][i]) for e in result.trace for i, r in enumerate(e["rows"]) if r == row)
        assert edits == log["edits"], row
    assert sum(log["edits"] for log in logs) > 0   # committed tokens were re-written
    assert sum(log["threshold"] for log in logs) > 0 and sum(log["topk"] for log in logs) > 0
    assert any(EOS in cut(r) for r in result.sequences)
    if eos_early_stop:
        assert result.stats.tokens["eos_fill"] > 0


def test_rows_decode_as_alone_and_stats_add_up(base_model):
    model = sharpened(base_model, eos_bias=3.0)
    sampler = LLaDA2ThresholdSampler(model, block_length=BLOCK)
    batched = sampler.generate(PROMPTS, gen_length=GEN, steps=4, threshold=0.6)
    for row, prompt in enumerate(PROMPTS):
        alone = sampler.generate([prompt], gen_length=GEN, steps=4, threshold=0.6)
        assert torch.equal(alone.sequences[0], batched.sequences[row])
        assert alone.stats.rows[0].to_dict()["tokens"] == batched.stats.rows[row].to_dict()["tokens"]
    # The package's result layout: prompts left padded to one length, then the generations.
    longest = max(map(len, PROMPTS))
    assert torch.equal(batched.canvas[:, longest:], batched.sequences)
    assert batched.canvas[0, longest - len(PROMPTS[0]):longest].tolist() == PROMPTS[0]


# ------------------------------------------------------------------------------ pieces and sampling

def test_canvas_extends_each_row_to_its_block_end():
    canvas, attention, _, starts, _ = build_block_aligned_canvas(PROMPTS, GEN, BLOCK, EOS, MASK_ID, "cpu")
    ends = extend_to_block_end(canvas, attention, starts, GEN, BLOCK, MASK_ID)
    for row, (prompt, start, end) in enumerate(zip(PROMPTS, starts, ends)):
        first = int(attention[row].nonzero()[0])
        assert first % BLOCK == 0 and end % BLOCK == 0 and end == row_end(start, GEN, BLOCK)
        assert canvas[row, first:start].tolist() == prompt
        assert (canvas[row, start:end] == MASK_ID).all() and attention[row, first:end].all()
        assert not attention[row, end:].any() and not attention[row, :first].any()
        # Positions as the model counts them give the row's own batch-1 block layout.
        assert end - first == math.ceil((len(prompt) + GEN) / BLOCK) * BLOCK


def test_transfer_schedule_is_even_with_the_remainder_first():
    assert transfer_schedule(32, 32) == [1] * 32
    assert transfer_schedule(8, 3) == [3, 3, 2]
    assert transfer_schedule(4, 6) == [1, 1, 1, 1, 0, 0]


def official_filters(logits, top_k, top_p):
    """The official top-k, then nucleus, filters, written out."""
    if top_k:
        kth = torch.sort(logits, descending=True).values[..., top_k - 1:top_k]
        logits = torch.where(logits < kth, torch.tensor(-math.inf), logits)
    if top_p is not None and top_p < 1:
        values, order = torch.sort(logits, descending=True)
        mass_before = torch.cumsum(torch.softmax(values, -1), -1)
        remove_sorted = torch.cat([torch.zeros_like(mass_before[..., :1], dtype=torch.bool),
                                   mass_before[..., :-1] > top_p], dim=-1)
        remove = torch.empty_like(remove_sorted)
        remove.scatter_(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, -math.inf)
    return logits


@pytest.mark.parametrize("top_k,top_p", [(None, None), (3, None), (None, 0.7), (4, 0.8), (0, 1.0)])
def test_filters_match_the_official_ones(top_k, top_p):
    logits = torch.randn(5, 7, 30, generator=torch.Generator().manual_seed(1))
    assert torch.equal(filter_top_k_top_p(logits, top_k, top_p), official_filters(logits, top_k, top_p))


def test_draws_follow_the_filtered_tempered_distribution():
    logits = torch.tensor([2.0, 1.5, 1.0, 0.2, -0.5, -3.0])
    n = 20000
    batch = logits.expand(1, n, 6).contiguous()
    read = torch.ones(1, n, dtype=torch.bool)
    generator = torch.Generator().manual_seed(0)
    tokens, probs, _ = sample_tokens(batch, read, 0.7, 4, 0.9, generator)
    expected = torch.softmax(official_filters(logits / 0.7, 4, 0.9), -1)
    counts = torch.bincount(tokens.flatten(), minlength=6).double()
    assert counts[expected == 0].sum() == 0
    # Each frequency within 5 standard deviations of its probability.
    sd = (expected * (1 - expected) / n).sqrt()
    assert ((counts / n - expected).abs() <= 5 * sd + 1e-12).all()
    assert torch.allclose(probs[0], expected[tokens[0]])


def test_sampling_options_reach_the_draws(base_model):
    model = sharpened(base_model, eos_bias=3.0)
    sampler = LLaDA21EditSampler(model, block_length=BLOCK, gen_length=GEN, max_post_steps=2)
    greedy_run = sampler.generate(PROMPTS)
    # top_k=1: the arg-max with probability 1 under the filtered distribution, whatever the seed, so
    # every mask passes the threshold at once.
    top1 = sampler.generate(PROMPTS, temperature=1.3, top_k=1, seed=1)
    assert torch.equal(top1.sequences, sampler.generate(PROMPTS, temperature=0.4, top_k=1, seed=2).sequences)
    assert top1.stats.tokens["heuristic"] == 0 and top1.stats.tokens["bypass"] > 0
    one = sampler.generate(PROMPTS, temperature=1.5, seed=7).sequences
    assert torch.equal(one, sampler.generate(PROMPTS, temperature=1.5, seed=7).sequences)
    assert not torch.equal(one, greedy_run.sequences)


def test_string_prompts_and_texts(base_model):
    class Tokenizer:
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [2 + ord(c) % 80 for c in text]}

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    model = sharpened(base_model, eos_bias=3.0)
    result = LLaDA2ThresholdSampler(model, Tokenizer()).generate(["hello", "a longer prompt here"], gen_length=GEN,
                                                                  block_length=BLOCK, steps=4)
    assert [t == " ".join(map(str, cut(r)[:-1] if EOS in cut(r) else cut(r)))
            for t, r in zip(result.texts, result.sequences)] == [True, True]


# ----------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("cls,options,error,match", [
    (LLaDA2ThresholdSampler, {"threshold": 1.5}, ValueError, "threshold"),
    (LLaDA2ThresholdSampler, {"threshold": -0.1}, ValueError, "threshold"),
    (LLaDA2ThresholdSampler, {"steps": 0}, ValueError, "steps"),
    (LLaDA2ThresholdSampler, {"block_length": 0}, ValueError, "block_length"),
    (LLaDA2ThresholdSampler, {"gen_length": 0}, ValueError, "gen_length"),
    (LLaDA2ThresholdSampler, {"minimal_topk": 0}, ValueError, "minimal_topk"),
    (LLaDA2ThresholdSampler, {"minimal_topk": 50}, ValueError, "minimal_topk"),
    (LLaDA2ThresholdSampler, {"temperature": -1.0}, ValueError, "temperature"),
    (LLaDA2ThresholdSampler, {"top_p": 0.0}, ValueError, "top_p"),
    (LLaDA2ThresholdSampler, {"top_k": -1}, ValueError, "top_k"),
    (LLaDA2ThresholdSampler, {"steps": 2.5}, TypeError, "steps"),
    (LLaDA2ThresholdSampler, {"eos_early_stop": "yes"}, TypeError, "eos_early_stop"),
    (LLaDA2ThresholdSampler, {"editing_threshold": 0.5}, ValueError, "editing_threshold"),   # not its option
    (LLaDA21EditSampler, {"editing_threshold": 2.0}, ValueError, "editing_threshold"),
    (LLaDA21EditSampler, {"max_post_steps": -1}, ValueError, "max_post_steps"),
    (LLaDA21EditSampler, {"num_to_transfer": 0}, ValueError, "num_to_transfer"),
    (LLaDA21EditSampler, {"penalty_lambda": -1.0}, ValueError, "penalty_lambda"),
    (LLaDA21EditSampler, {"gen_length": 1000}, ValueError, "max_position_embeddings"),
])
def test_bad_options_raise_naming_the_argument(base_model, cls, options, error, match):
    with pytest.raises(error, match=match):
        cls(base_model).generate([[5, 6, 7]], **{"gen_length": GEN, "block_length": BLOCK, **options})
    if "gen_length" not in options:   # a bad default fails at construction
        with pytest.raises(error, match=match):
            cls(base_model, gen_length=GEN, **options)


def test_bad_prompts_and_ids_raise(base_model):
    sampler = LLaDA2ThresholdSampler(base_model)
    with pytest.raises(ValueError, match="mask"):
        sampler.generate([[5, MASK_ID]], gen_length=GEN)
    with pytest.raises(ValueError, match="tokenizer"):
        sampler.generate("text", gen_length=GEN)
    with pytest.raises(ValueError, match="empty"):
        sampler.generate([[5], []], gen_length=GEN)

    class Configured(nn.Module):
        def __init__(self, **ids):
            super().__init__()
            self.config = type("Config", (), ids)()

        def forward(self, ids, attention_mask=None, **kw):
            raise AssertionError("never called")

    with pytest.raises(ValueError, match="EOS"):
        LLaDA21EditSampler(Configured(mask_token_id=MASK_ID))
    with pytest.raises(ValueError, match="mask_id"):
        LLaDA21EditSampler(Configured(eos_token_id=EOS))
    with pytest.raises(ValueError, match="differ"):
        LLaDA21EditSampler(Configured(eos_token_id=EOS, mask_token_id=EOS))
    with pytest.raises(ValueError, match="block_anchor"):
        LLaDA21EditSampler(Configured(eos_token_id=EOS, mask_token_id=MASK_ID, block_causal=True,
                                      block_anchor="prompt"))
