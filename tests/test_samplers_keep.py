"""Cache-free full forwards ask the model for the positions the sampler reads (``keep``) and give
the tokens of full-canvas forwards, on the project's tiny LLaDA / Dream / SDAR checkpoints."""
import pytest
import torch

import infogain.models
from infogain.samplers import InfoGainSampler
from test_samplers_helpers import single_thread  # noqa: F401  (autouse fixture)
from tiny_checkpoints import write_tiny_checkpoint

SETTINGS = dict(gen_length=8, steps=8, block_length=4, candidate_number=4, position_temperature=0.5,
                threshold=0.9, temperature=0.0, cache="none", seed=0)
PROMPTS = [[2, 3, 4, 5, 6], [7], [8, 9, 10]]


class WholeCanvas(torch.nn.Module):
    """The same model behind methods without ``keep``: the sampler slices full-canvas outputs."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, input_ids, attention_mask=None, *, gen_start=None, block_length=None):
        return self.model(input_ids, attention_mask, gen_start=gen_start, block_length=block_length)

    def hidden_states(self, input_ids, attention_mask=None, *, gen_start=None, block_length=None):
        return self.model.hidden_states(input_ids, attention_mask, gen_start=gen_start, block_length=block_length)

    @property
    def lm_head_weight(self):
        return self.model.lm_head_weight


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {arch: infogain.models.load(write_tiny_checkpoint(arch, root / arch))[0]
            for arch in ("llada", "dream", "sdar")}


@pytest.mark.parametrize("fused_head", [True, False])
@pytest.mark.parametrize("arch", ["llada", "dream", "sdar"])
def test_full_forwards_compute_the_read_positions_only(models, arch, fused_head, monkeypatch):
    model = models[arch]
    keeps = []
    for name in ("forward", "hidden_states"):
        original = getattr(model, name)

        def spy(*args, _original=original, keep=None, **kwargs):
            keeps.append(None if keep is None else (keep.start, keep.stop, keep.step))
            return _original(*args, keep=keep, **kwargs)

        monkeypatch.setattr(model, name, spy)
    result = InfoGainSampler(model).generate(PROMPTS, **SETTINGS, fused_head=fused_head)
    assert result.stats.tokens["lookahead"] > 0
    T = max(map(len, PROMPTS)) + SETTINGS["gen_length"]
    starts = [T - SETTINGS["gen_length"], T - SETTINGS["gen_length"] + SETTINGS["block_length"]]
    # The block at every step; a lookahead reads from the block to the end of the canvas (this
    # run has one in the first block), a block-causal model's the block only.
    blocks = {(start, start + SETTINGS["block_length"], None) for start in starts}
    assert set(keeps) == (blocks if arch == "sdar" else blocks | {(starts[0], T, None)})
    monkeypatch.undo()
    whole = InfoGainSampler(WholeCanvas(model)).generate(PROMPTS, **SETTINGS, fused_head=fused_head)
    assert torch.equal(result.sequences, whole.sequences)


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_prefix_cache_runs_the_head_on_the_block_only(models, arch, monkeypatch):
    """With the prefix cache a window runs from the block to the end of the canvas, and the
    block entry's prefill over the whole canvas; the LM head runs on the block only."""
    model = models[arch]
    widths = []
    original = model.logits_from_hidden

    def spy(hidden):
        widths.append(hidden.shape[-2])
        return original(hidden)

    monkeypatch.setattr(model, "logits_from_hidden", spy)
    settings = dict(SETTINGS, cache="prefix", threshold=0.05)   # bypass steps: plain window forwards
    result = InfoGainSampler(model).generate(PROMPTS, **settings)
    assert result.stats.tokens["bypass"] > 0
    assert widths and max(widths) <= SETTINGS["block_length"], widths
