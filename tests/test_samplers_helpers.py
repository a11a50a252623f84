"""Shared pieces of the sampler tests: a tiny bidirectional model and an independent naive
Info-Gain implementation (single row, full forwards, float64 softmax by hand, python loops).

The naive implementation re-derives every decision of the algorithm in DESIGN.md. The only
thing it takes from the sampler is the random part it cannot reproduce: the position sets of
candidates 1..N-1 (Gumbel noise); it checks that they are valid and distinct, recomputes
their objective itself, and must reach the same winner and the same canvas.
"""
import math

import pytest
import torch
from torch import nn

from infogain.models.base import ModelConfig

@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """The tiny models are far faster on one thread on a shared machine (no oversubscription)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


VOCAB = 40
MASK_ID = VOCAB - 1
EOS_ID = 1
PAD_ID = 0


class TinyBidirectionalLM(nn.Module):
    """Embedding + learned positions + one transformer encoder layer + head (bidirectional).

    Honours ``attention_mask`` (left padding): positions are ``cumsum(mask) - 1`` and padded
    keys are ignored, so a left-padded row gives the logits of the unpadded prompt.
    """

    def __init__(self, seed: int = 0, vocab: int = VOCAB, width: int = 32, scale: float = 2.0):
        super().__init__()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Embedding(256, width)
        self.layer = nn.TransformerEncoderLayer(width, 4, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(width, vocab)
        torch.random.set_rng_state(generator_state)
        self.scale = scale
        self.config = ModelConfig(arch="tiny", vocab_size=vocab, mask_token_id=vocab - 1, eos_token_id=EOS_ID,
                                  pad_token_id=PAD_ID, num_layers=1, num_kv_heads=4, head_dim=8,
                                  max_position_embeddings=256)
        self.calls = []  # input canvases of every forward, when recording
        self.recording = False
        self.eval()

    def forward(self, input_ids, attention_mask=None):
        if self.recording:
            self.calls.append(input_ids.clone())
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        positions = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
        hidden = self.embed(input_ids) + self.position(positions)
        hidden = self.layer(hidden, src_key_padding_mask=~attention_mask)
        return self.scale * self.head(hidden)


def naive_logits(model, ids, eos_penalty=0.0):
    """Full forward of one row (list of ids) -> float64 logits [T, V] with the sampler's conventions."""
    with torch.no_grad():
        logits = model(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.bool))[0].double()
    logits[:, MASK_ID] = -math.inf
    if eos_penalty:
        for token in {EOS_ID, PAD_ID}:
            logits[:, token] -= eos_penalty
    return logits


def naive_probs(logits_row):
    shifted = logits_row - logits_row.max()
    weights = shifted.exp()
    return weights / weights.sum()


def naive_entropy(logits_row):
    p = naive_probs(logits_row)
    nonzero = p > 0
    return float(-(p[nonzero] * p[nonzero].log()).sum())


def naive_eos_fill(ids, gen_start):
    seen = False
    out = list(ids)
    for i in range(gen_start, len(out)):
        if seen and out[i] == MASK_ID:
            out[i] = EOS_ID
        if out[i] == EOS_ID:
            seen = True
    return out


def _unpad(entry, padding):
    entry = dict(entry, positions=[p - padding for p in entry["positions"]])
    if "candidates" in entry:
        entry["candidates"] = [dict(c, positions=[p - padding for p in c["positions"]])
                               for c in entry["candidates"]]
    return entry


def naive_info_gain(model, prompt, trace, row, *, gen_length, steps, block_length, threshold, variant,
                    candidate_number, position_temperature, parallel_bypass=False, stop_at_eos=True,
                    eos_penalty=0.0, padding=0, lookahead_eos_fill=False):
    """Greedy (temperature 0) Info-Gain on one prompt; checks the sampler's ``trace`` of ``row``.

    ``padding``: left padding of the row in the sampler's canvas (trace positions are canvas
    positions). Returns the generated tokens (list). Asserts, step by step, that the sampler made the
    same decision (kind, positions, tokens, and for lookahead steps the candidates' objective
    and the winner).
    """
    records = {(r["block"], r["step"]): _unpad(r["rows"][row], padding) for r in trace}
    x = list(prompt) + [MASK_ID] * gen_length
    gen_start = len(prompt)
    num_blocks = gen_length // block_length
    for block in range(num_blocks):
        start = gen_start + block * block_length
        end = start + block_length
        block_steps = steps // num_blocks + (1 if block < steps % num_blocks else 0)
        initial = sum(1 for i in range(start, end) if x[i] == MASK_ID)
        logits = None
        for step in range(block_steps):
            masked = [i for i in range(start, end) if x[i] == MASK_ID]
            record = records.get((block, step))
            if not masked:
                assert record is None or record["kind"] == "none", (block, step, record)
                continue
            assert record is not None, f"sampler skipped block {block} step {step}"
            if logits is None:
                logits = naive_logits(model, x, eos_penalty)
            probs = {i: naive_probs(logits[i]) for i in masked}
            entropy = {i: naive_entropy(logits[i]) for i in masked}
            argmax = {i: int(probs[i].argmax()) for i in masked}
            top1 = {i: float(probs[i].max()) for i in masked}
            quota = initial // block_steps + (1 if step < initial % block_steps else 0)
            by_confidence = sorted(masked, key=lambda i: -top1[i])
            next_logits = None
            if quota >= len(masked) or step == block_steps - 1:
                kind, chosen = "fill", masked
            elif quota == 0:
                kind, chosen = "none", []
            elif any(top1[i] >= threshold for i in masked):
                high = [i for i in by_confidence if top1[i] >= threshold]
                kind, chosen = "bypass", (high if parallel_bypass else high[:quota])
            elif position_temperature <= 0 or candidate_number <= 1:
                kind, chosen = "trivial", by_confidence[:quota]
            else:
                kind = "lookahead"
                candidates = record["candidates"]
                assert record["kind"] == "lookahead"
                assert sorted(candidates[0]["positions"]) == sorted(by_confidence[:quota])
                seen_sets = set()
                best_j, best = -math.inf, None
                for cand in candidates:
                    positions = sorted(cand["positions"])
                    assert len(positions) == quota and set(positions) <= set(masked)
                    assert tuple(positions) not in seen_sets, "duplicate candidate forwarded"
                    seen_sets.add(tuple(positions))
                    state = list(x)
                    for i in positions:
                        state[i] = argmax[i]
                    if stop_at_eos and lookahead_eos_fill:
                        state = naive_eos_fill(state, gen_start)
                    cand_logits = naive_logits(model, state, eos_penalty)
                    left = [i for i in range(start, len(state)) if state[i] == MASK_ID]
                    h_next = sum(naive_entropy(cand_logits[i]) for i in left) / len(left) if left else 0.0
                    cost = sum(entropy[i] for i in positions)
                    objective = -h_next - (cost if variant == "info_gain" else 0.0)
                    assert abs(objective - cand["objective"]) < 1e-3, (objective, cand)
                    assert abs(h_next - cand["h_next"]) < 1e-3
                    assert abs(cost - cand["cost"]) < 1e-3
                    if objective > best_j + 1e-9:
                        best_j, best, next_logits, chosen = objective, cand, cand_logits, positions
                assert candidates[record["winner"]] is best, (block, step)
            assert record["kind"] == kind, (block, step, record["kind"], kind)
            assert sorted(record["positions"]) == sorted(chosen), (block, step, record, chosen)
            for i in chosen:
                x[i] = int(logits[i].argmax()) if kind != "bypass" else argmax[i]
            if stop_at_eos:
                x = naive_eos_fill(x, gen_start)
            if kind != "none":
                logits = next_logits  # the winner's lookahead logits; None = fresh forward next step
    return x[gen_start:]
