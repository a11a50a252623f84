"""infogain.compat.llada.generate against a re-statement of LLaDA's official decoder written here."""
import math
import types

import pytest
import torch

from infogain.compat import llada

VOCAB, MASK, EOS, EOT = 40, 39, 3, 5


def reference_generate(model, prompt, attention_mask=None, steps=128, gen_length=128, block_length=128,
                       temperature=0., cfg_scale=0., remasking='low_confidence', mask_id=126336,
                       logits_eos_inf=False, confidence_eos_eot_inf=False):
    """The official decoder at temperature 0, spelled out for clarity (token ids EOS / EOT here)."""
    batch, prompt_len = prompt.shape
    x = torch.full((batch, prompt_len + gen_length), mask_id, dtype=torch.long)
    x[:, :prompt_len] = prompt
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones(batch, gen_length, dtype=attention_mask.dtype)], 1)
    is_prompt = x != mask_id
    blocks = gen_length // block_length
    per_block = steps // blocks
    for block in range(blocks):
        end = prompt_len + (block + 1) * block_length
        count = (x[:, end - block_length:end] == mask_id).sum(1)
        schedule = [[int(c) // per_block + (1 if s < int(c) % per_block else 0) for s in range(per_block)]
                    for c in count]
        for step in range(per_block):
            masked = x == mask_id
            if cfg_scale > 0:
                unconditional = torch.where(is_prompt, mask_id, x)
                both = None if attention_mask is None else torch.cat([attention_mask] * 2)
                cond, uncond = model(torch.cat([x, unconditional]), attention_mask=both).logits.chunk(2)
                logits = uncond + (cfg_scale + 1) * (cond - uncond)
            else:
                logits = model(x, attention_mask=attention_mask).logits
            if logits_eos_inf:
                logits[:, :, EOS] = -math.inf
            x0 = logits.argmax(-1)
            if confidence_eos_eot_inf:
                logits[:, :, EOS] = -math.inf
                logits[:, :, EOT] = -math.inf
            if remasking == "low_confidence":
                conf = torch.softmax(logits, -1).gather(-1, x0[..., None]).squeeze(-1)
            else:
                conf = torch.rand(x0.shape[0], x0.shape[1])
            conf[:, end:] = -math.inf
            x0 = torch.where(masked, x0, x)
            conf = torch.where(masked, conf, -math.inf)
            for row in range(batch):
                picked = torch.topk(conf[row], k=schedule[row][step]).indices
                x[row, picked] = x0[row, picked]
    return x


class TinyModel(torch.nn.Module):
    """A bidirectional toy: embedding, one mixing layer that honours the attention mask, a head."""

    def __init__(self, dtype=torch.float32, seed=0, scale=4.0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.randn(VOCAB, 16, generator=gen)
        self.head = torch.randn(16, VOCAB, generator=gen) * scale
        self.dtype = dtype
        self.device = torch.device("cpu")

    def forward(self, x, attention_mask=None):
        hidden = self.table[x]
        weights = torch.ones(x.shape, dtype=torch.float32) if attention_mask is None else attention_mask.float()
        context = (hidden * weights[..., None]).sum(1, keepdim=True) / weights.sum(1, keepdim=True)[..., None]
        positions = torch.arange(x.shape[1]).view(1, -1, 1) * 0.05
        logits = (torch.tanh(hidden + context + positions) @ self.head).to(self.dtype)
        return types.SimpleNamespace(logits=logits)


@pytest.fixture(autouse=True)
def small_token_ids(monkeypatch):
    monkeypatch.setattr(llada, "EOS_TOKEN_ID", EOS)
    monkeypatch.setattr(llada, "EOT_TOKEN_ID", EOT)


def _prompt(batch, seed=1):
    return torch.randint(0, MASK - 1, (batch, 6), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("options", [
    dict(),
    dict(cfg_scale=1.5),
    dict(logits_eos_inf=True),
    dict(confidence_eos_eot_inf=True),
    dict(logits_eos_inf=True, confidence_eos_eot_inf=True, cfg_scale=0.5),
    dict(steps=4, block_length=4),
    dict(steps=16),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3])
def test_temperature_zero_gives_the_official_tokens(options, dtype, batch):
    model = TinyModel(dtype)
    prompt = _prompt(batch)
    mask = torch.ones_like(prompt)
    mask[-1, :2] = 0  # a left-padded row
    args = dict(steps=8, gen_length=16, block_length=8, mask_id=MASK)
    args.update(options)
    want = reference_generate(model, prompt, mask, **args)
    got = llada.generate(model, prompt, mask, **args)
    assert torch.equal(got, want)


def test_peaked_bf16_logits_with_tied_confidences():
    # bf16 rounds many confidences to 1.0: the official topk tie order must come out unchanged.
    model = TinyModel(torch.bfloat16, seed=2, scale=40.0)
    prompt = _prompt(2, seed=4)
    want = reference_generate(model, prompt, steps=4, gen_length=16, block_length=16, mask_id=MASK)
    got = llada.generate(model, prompt, steps=4, gen_length=16, block_length=16, mask_id=MASK)
    assert torch.equal(got, want)


def test_random_remasking_at_temperature_zero_uses_the_same_stream():
    model = TinyModel()
    prompt = _prompt(2)
    torch.manual_seed(11)
    want = reference_generate(model, prompt, None, 8, 16, 8, remasking="random", mask_id=MASK)
    torch.manual_seed(11)
    got = llada.generate(model, prompt, None, 8, 16, 8, remasking="random", mask_id=MASK)
    assert torch.equal(got, want)


def test_temperature_above_zero_fills_every_mask_with_a_drawn_token():
    torch.manual_seed(0)
    out = llada.generate(TinyModel(), _prompt(2), steps=8, gen_length=16, block_length=8, temperature=1.0,
                         mask_id=MASK, logits_eos_inf=True)
    assert out.shape == (2, 22) and not (out == MASK).any() and not (out[:, 6:] == EOS).any()


@pytest.mark.parametrize("change,error,name", [
    (dict(gen_length=10, block_length=4), ValueError, "gen_length"),
    (dict(steps=3), ValueError, "steps"),
    (dict(temperature=-0.5), ValueError, "temperature"),
    (dict(cfg_scale=-1.0), ValueError, "cfg_scale"),
    (dict(remasking="margin"), NotImplementedError, "remasking"),
    (dict(attention_mask=torch.ones(2, 3)), ValueError, "attention_mask"),
    (dict(prompt=torch.zeros(6)), ValueError, "prompt"),
])
def test_bad_input_is_refused(change, error, name):
    args = dict(model=TinyModel(), prompt=_prompt(2), steps=8, gen_length=16, block_length=8, mask_id=MASK)
    args.update(change)
    with pytest.raises(error, match=name):
        llada.generate(**args)


def test_patch_replaces_generate_and_refuses_other_signatures():
    module = types.ModuleType("llada_generate_standin")
    module.generate = reference_generate
    model, prompt = TinyModel(), _prompt(2)
    before = module.generate(model, prompt, steps=8, gen_length=16, block_length=8, mask_id=MASK)
    assert llada.patch(module) == ("generate",)
    assert llada.patch(module) == ("generate",)
    assert module.generate is llada.generate
    assert torch.equal(module.generate(model, prompt, steps=8, gen_length=16, block_length=8, mask_id=MASK), before)
    other = types.ModuleType("older")
    other.generate = lambda model, prompt, steps=128, gen_length=128, block_length=128, temperature=0.: None
    with pytest.raises(TypeError, match="generate has signature"):
        llada.patch(other)
