"""infogain.compat.fast_dllm against a re-statement of Fast-dLLM's transfer rule written here."""
import math
import types

import pytest
import torch

from infogain.compat import fast_dllm


def reference_transfer(logits, temperature, remasking, mask_index, x, num_transfer_tokens, threshold=None):
    """Fast-dLLM's rule at temperature 0, spelled out: x0 = arg-max, confidence = float64 softmax
    probability of x0 (or a torch.rand draw), -inf off the mask, torch.topk per row; with a
    threshold every masked position is ranked, rank 0 kept, the others dropped below it."""
    x0 = logits.argmax(dim=-1)
    if remasking == "low_confidence":
        probs = torch.softmax(logits.to(torch.float64), dim=-1)
        conf = probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    else:
        conf = torch.rand(x0.shape[0], x0.shape[1])
    x0 = torch.where(mask_index, x0, x)
    conf = torch.where(mask_index, conf, -math.inf)
    transfer = torch.zeros_like(mask_index)
    counts = mask_index.sum(dim=1) if threshold is not None else num_transfer_tokens
    for row in range(conf.shape[0]):
        k = int(counts[row])
        order = torch.topk(conf[row], k=k).indices
        transfer[row, order] = True
        if threshold is not None:
            for rank in range(1, k):
                if conf[row, order[rank]] < threshold:
                    transfer[row, order[rank]] = False
    return x0, transfer


def _logits(batch, width, vocab, seed, kind):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, width, vocab, generator=gen) * 2
    if kind == "peaked":  # confidences spread over (0, 1)
        boost = torch.rand(batch, width, 1, generator=gen) * 12
        logits.scatter_add_(-1, torch.randint(vocab, (batch, width, 1), generator=gen), boost)
    elif kind == "near_ties":  # rows that differ by one ulp-sized nudge: float32 cannot order them
        logits[:, 1::2] = logits[:, 0::2][:, : logits[:, 1::2].shape[1]]
        logits[:, 1::2, 0] += 1e-6
    elif kind == "exact_ties":  # identical rows: the original's order is torch.topk's tie order
        logits[:, :] = logits[:, :1]
    elif kind == "inf":
        logits[..., ::3] = -math.inf
    return logits


@pytest.mark.parametrize("kind", ["peaked", "near_ties", "exact_ties", "inf"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("threshold", [None, 0.05, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_temperature_zero_matches_reference_exactly(kind, batch, threshold, dtype):
    width, vocab = 16, 257
    for seed in range(4):
        logits = _logits(batch, width, vocab, seed, kind).to(dtype)
        gen = torch.Generator().manual_seed(100 + seed)
        mask = torch.rand(batch, width, generator=gen) < 0.7
        mask[0] = True  # one row all masked
        x = torch.randint(vocab, (batch, width), generator=gen)
        counts = torch.randint(0, width + 1, (batch,), generator=gen)  # may exceed the masked count
        want = reference_transfer(logits, 0.0, "low_confidence", mask, x, counts, threshold)
        got = fast_dllm.get_transfer_index(logits, 0.0, "low_confidence", mask, x, counts, threshold)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert got[0].dtype == torch.int64 and got[1].dtype == torch.bool


def test_masks_all_false_and_sequence_counts():
    logits = _logits(2, 8, 33, 0, "peaked")
    x = torch.arange(16).view(2, 8)
    none = torch.zeros(2, 8, dtype=torch.bool)
    for counts, threshold in (([0, 0], None), ([2, 5], None), ([0, 0], 0.5)):
        want = reference_transfer(logits, 0, "low_confidence", none, x, torch.tensor(counts), threshold)
        got = fast_dllm.get_transfer_index(logits, 0, "low_confidence", none, x, counts, threshold)
        assert torch.equal(got[0], x) and torch.equal(got[1], want[1])


def test_random_remasking_at_temperature_zero_draws_the_same_stream():
    logits = _logits(3, 12, 40, 1, "peaked")
    mask = torch.rand(3, 12) < 0.6
    x = torch.zeros(3, 12, dtype=torch.long)
    for threshold in (None, 0.5):
        torch.manual_seed(7)
        want = reference_transfer(logits, 0, "random", mask, x, torch.tensor([1, 3, 2]), threshold)
        torch.manual_seed(7)
        got = fast_dllm.get_transfer_index(logits, 0, "random", mask, x, torch.tensor([1, 3, 2]), threshold)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_temperature_draws_follow_the_tempered_distribution():
    torch.manual_seed(0)
    row = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    temperature, n = 0.7, 4000
    logits = row.expand(1, n, 5).contiguous()
    x0, _ = fast_dllm.get_transfer_index(logits, temperature, "low_confidence", torch.ones(1, n, dtype=torch.bool),
                                         torch.zeros(1, n, dtype=torch.long), [1])
    noisy = fast_dllm.add_gumbel_noise(logits, temperature).argmax(-1)
    expected = torch.softmax(row / temperature, 0) * n
    for draws in (x0[0], noisy[0]):
        observed = torch.bincount(draws, minlength=5).double()
        chi2 = float(((observed - expected) ** 2 / expected).sum())
        assert chi2 < 18.5  # chi-square, 4 degrees of freedom, p = 0.001


def test_add_gumbel_noise_at_zero_returns_the_logits():
    logits = torch.randn(2, 3, 7)
    assert fast_dllm.add_gumbel_noise(logits, 0) is logits


@pytest.mark.parametrize("change,error", [
    (dict(logits=torch.zeros(2, 4, 5, dtype=torch.long)), TypeError),
    (dict(logits=torch.zeros(4, 5)), ValueError),
    (dict(temperature=-1.0), ValueError),
    (dict(remasking="top_p"), NotImplementedError),
    (dict(mask_index=torch.ones(2, 4)), TypeError),
    (dict(mask_index=torch.ones(2, 3, dtype=torch.bool)), ValueError),
    (dict(x=torch.zeros(2, 5, dtype=torch.long)), ValueError),
    (dict(num_transfer_tokens=torch.tensor([1, 5])), ValueError),
    (dict(num_transfer_tokens=torch.tensor([1])), ValueError),
    (dict(num_transfer_tokens=torch.tensor([1.0, 2.0])), TypeError),
    (dict(threshold=float("nan")), ValueError),
])
def test_bad_input_is_refused_naming_the_argument(change, error):
    args = dict(logits=torch.zeros(2, 4, 5), temperature=0.0, remasking="low_confidence",
                mask_index=torch.ones(2, 4, dtype=torch.bool), x=torch.zeros(2, 4, dtype=torch.long),
                num_transfer_tokens=torch.tensor([1, 2]), threshold=None)
    args.update(change)
    with pytest.raises(error, match=next(iter(change))):
        fast_dllm.get_transfer_index(**args)


# ---- patch(): a stand-in for Fast-dLLM's generate module with the documented signatures ----------

def _stand_in_module():
    module = types.ModuleType("fastdllm_generate_standin")

    def add_gumbel_noise(logits, temperature):
        if temperature == 0:
            return logits
        u = torch.rand_like(logits, dtype=torch.float64)
        return logits.to(torch.float64).exp() / (-torch.log(u)) ** temperature

    def generate(model, prompt, steps, gen_length, threshold=None):
        # A plain one-block loop that calls the module's helpers through its globals, as Fast-dLLM's does.
        x = torch.cat([prompt, torch.full((prompt.shape[0], gen_length), 0)], dim=1)
        masked = torch.zeros_like(x, dtype=torch.bool)
        masked[:, prompt.shape[1]:] = True
        per_step = gen_length // steps
        while masked.any():
            logits = model(torch.where(masked, -1, x))
            x0, transfer = module.get_transfer_index(logits, 0.0, "low_confidence", masked, x,
                                                     masked.sum(1).clamp(max=per_step), threshold)
            x[transfer] = x0[transfer]
            masked &= ~transfer
        return x

    module.add_gumbel_noise = add_gumbel_noise
    module.get_transfer_index = reference_transfer
    module.generate = generate
    return module


def _tiny_model(vocab=50, seed=0):
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(vocab + 1, 16, generator=gen)
    head = torch.randn(16, vocab, generator=gen) * 3

    def model(tokens):
        hidden = table[tokens + 1]  # -1 (masked) is row 0
        context = hidden.mean(dim=1, keepdim=True) + 0.1 * torch.arange(tokens.shape[1]).view(1, -1, 1)
        return torch.tanh(hidden + context) @ head
    return model


def test_patch_gives_the_same_tokens_and_is_idempotent():
    module = _stand_in_module()
    model = _tiny_model()
    prompt = torch.randint(50, (2, 5), generator=torch.Generator().manual_seed(3))
    before = [module.generate(model, prompt, 6, 12, threshold) for threshold in (None, 0.3)]
    assert fast_dllm.patch(module) == ("get_transfer_index", "add_gumbel_noise")
    assert module.get_transfer_index is fast_dllm.get_transfer_index
    assert fast_dllm.patch(module) == ("get_transfer_index", "add_gumbel_noise")
    after = [module.generate(model, prompt, 6, 12, threshold) for threshold in (None, 0.3)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert module.__infogain_originals__["get_transfer_index"] is reference_transfer


def test_patch_refuses_a_different_signature():
    module = _stand_in_module()
    module.get_transfer_index = lambda logits, temperature, remasking, mask_index, x, num_transfer_tokens: None
    original_noise = module.add_gumbel_noise
    with pytest.raises(TypeError, match="get_transfer_index has signature"):
        fast_dllm.patch(module)
    assert module.add_gumbel_noise is original_noise  # nothing replaced
    with pytest.raises(AttributeError, match="get_transfer_index"):
        fast_dllm.patch(types.ModuleType("empty"))
    with pytest.raises(TypeError, match="module"):
        fast_dllm.patch("generate")
