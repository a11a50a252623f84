"""infogain.compat.dllm_info_gain against re-statements of the dllm Info-Gain core written here."""
import math
import types

import pytest
import torch

from infogain.compat import dllm_info_gain


def reference_entropy(logits, eps=1e-12):
    """Entropy of the float32 softmax with probabilities clamped below at eps (the pipeline's rule)."""
    p = torch.softmax(logits.float(), dim=-1).clamp(min=eps)
    return -(p * p.log()).sum(-1)


def reference_score(logits, next_logits, x_batch, actions, mask_id, device, variant="info_gain"):
    still_masked = x_batch == mask_id
    h_next = torch.where(still_masked, reference_entropy(next_logits), 0.0).sum(-1) / (still_masked.sum(-1) + 1e-10)
    if variant == "lookum":
        return torch.zeros_like(h_next), h_next, -h_next
    now = reference_entropy(logits)
    cost = torch.stack([now[0, a].sum() for a in actions])
    return cost, h_next, -cost - h_next


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_compute_entropy_matches_the_clamped_softmax(dtype):
    logits = (torch.randn(3, 7, 300) * 3).to(dtype)
    logits[0, 0, :150] = -math.inf
    got = dllm_info_gain.compute_entropy(logits)
    assert got.shape == (3, 7) and got.dtype == torch.float32
    torch.testing.assert_close(got, reference_entropy(logits), rtol=1e-5, atol=1e-5)


def test_compute_entropy_of_bad_rows_is_nan_like_the_original():
    logits = torch.randn(2, 10)
    logits[0] = -math.inf
    logits[1, 3] = math.nan
    assert torch.isnan(dllm_info_gain.compute_entropy(logits)).all()
    assert torch.isnan(reference_entropy(logits)).all()


@pytest.mark.parametrize("variant", ["info_gain", "lookum"])
def test_score_candidates_matches(variant):
    gen = torch.Generator().manual_seed(0)
    n, width, vocab, mask_id = 8, 12, 200, 199
    logits = torch.randn(1, width, vocab, generator=gen) * 2
    next_logits = torch.randn(n, width, vocab, generator=gen) * 2
    x_batch = torch.where(torch.rand(n, width, generator=gen) < 0.5, mask_id, 1)
    x_batch[0] = 1  # a candidate with nothing left masked
    actions = [torch.randperm(width, generator=gen)[: 1 + i % 3] for i in range(n)]
    got = dllm_info_gain.score_candidates(logits, next_logits, x_batch, actions, mask_id, "cpu", variant)
    want = reference_score(logits, next_logits, x_batch, actions, mask_id, "cpu", variant)
    for g, w in zip(got, want):
        assert g.shape == (n,) and g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_bad_input_is_refused():
    logits, next_logits = torch.randn(1, 4, 9), torch.randn(2, 4, 9)
    x_batch = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="eps"):
        dllm_info_gain.compute_entropy(logits, eps=0.0)
    with pytest.raises(TypeError, match="logits"):
        dllm_info_gain.compute_entropy(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="x_batch"):
        dllm_info_gain.score_candidates(logits, next_logits, x_batch[:1], [[0], [1]], 0, "cpu")
    with pytest.raises(ValueError, match="actions"):
        dllm_info_gain.score_candidates(logits, next_logits, x_batch, [[0]], 0, "cpu")
    with pytest.raises(ValueError, match="actions"):
        dllm_info_gain.score_candidates(logits, next_logits, x_batch, [[0], [4]], 0, "cpu")
    with pytest.raises(ValueError, match="next_logits"):
        dllm_info_gain.score_candidates(logits, next_logits[0], x_batch, [[0], [1]], 0, "cpu")


def _stand_in_core():
    """A module with the pipeline's two functions and a greedy lookahead loop calling them through
    its globals, as the pipeline's samplers do."""
    core = types.ModuleType("info_gain_core_standin")
    core.compute_entropy = reference_entropy
    core.score_candidates = reference_score

    def decode(model, x, mask_id, n_candidates=4):
        while (x == mask_id).any():
            logits = model(x)
            masked = (x[0] == mask_id).nonzero().squeeze(1)
            entropy = core.compute_entropy(logits)[0, masked]
            positions = masked[entropy.argsort()[:n_candidates]]
            actions = [positions[i:i + 1] for i in range(len(positions))]
            x_batch = x.repeat(len(actions), 1)
            for i, a in enumerate(actions):
                x_batch[i, a] = logits[0, a].argmax(-1)
            _, _, score = core.score_candidates(logits, model(x_batch), x_batch, actions, mask_id, "cpu")
            x = x_batch[int(score.argmax())].unsqueeze(0)
        return x
    core.decode = decode
    return core


def _tiny_model(vocab=30, seed=0):
    gen = torch.Generator().manual_seed(seed)
    table, head = torch.randn(vocab, 8, generator=gen), torch.randn(8, vocab, generator=gen) * 3

    def model(x):
        hidden = table[x]
        logits = torch.tanh(hidden + hidden.mean(1, keepdim=True)) @ head
        logits[..., vocab - 1] = -math.inf  # the mask token is never proposed
        return logits
    return model


def test_patch_gives_the_same_tokens_is_idempotent_and_checks_signatures():
    core = _stand_in_core()
    x = torch.full((1, 10), 29)
    x[0, :3] = torch.tensor([1, 2, 3])
    before = core.decode(_tiny_model(), x.clone(), 29)
    assert dllm_info_gain.patch(core) == ("compute_entropy", "score_candidates")
    assert dllm_info_gain.patch(core) == ("compute_entropy", "score_candidates")
    assert torch.equal(core.decode(_tiny_model(), x.clone(), 29), before)
    sampler = types.ModuleType("sampler_standin")  # imports only one of the names
    sampler.compute_entropy = reference_entropy
    assert dllm_info_gain.patch(sampler) == ("compute_entropy",)
    other = types.ModuleType("changed")
    other.score_candidates = lambda logits, next_logits, x_batch, actions, mask_id: None
    with pytest.raises(TypeError, match="score_candidates has signature"):
        dllm_info_gain.patch(other)
