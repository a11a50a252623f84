"""Info-Gain, LookUM and the baselines decode LLaDA2.x (blocks counted from position 0) with its
exact block-causal cache, at batch > 1 with ragged prompts."""
import pytest
import torch

from infogain import models
from infogain.samplers import SAMPLERS, make_sampler
from infogain.samplers.naive import NaiveInfoGainSampler
from infogain.samplers.prompts import build_block_aligned_canvas
from tiny_checkpoints import MASK_ID, write_tiny_checkpoint

BLOCK = 8
# Prompt lengths whose ends fall at different offsets inside a block, one exactly on a boundary.
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [20, 21, 22], [30] * 16]
DETERMINISTIC = ("confidence", "entropy", "margin", "fast_dllm", "eb")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = write_tiny_checkpoint("llada2", tmp_path_factory.mktemp("llada2"), seed=2)
    return models.load(path)[0]


def test_block_aligned_canvas_layout():
    canvas, attention, first, starts, padded = build_block_aligned_canvas(PROMPTS, 16, BLOCK, 1, MASK_ID, "cpu")
    assert canvas.shape[1] % BLOCK == 0 and padded
    for row, prompt, start in zip(range(3), PROMPTS, starts):
        real = attention[row].nonzero().flatten()
        first_real = int(real[0])
        assert first_real % BLOCK == 0                                   # left padding by whole blocks
        assert canvas[row, first_real:start].tolist() == prompt
        assert (canvas[row, start:start + 16] == MASK_ID).all()
        assert int(real[-1]) == start + 15                               # right padding after the masks
        assert max(starts) - start < BLOCK                               # generations start within one block
    assert first == min(starts) // BLOCK * BLOCK


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_decodes_with_the_exact_cache(model, name):
    """Block-causal cache ("prefix"/"dual" map to it) gives the tokens of full forwards."""
    kw = dict(gen_length=16, steps=8, block_length=BLOCK, seed=4, temperature=0.0)
    outputs = {cache: make_sampler(name, model).generate(PROMPTS, cache=cache, **kw).sequences
               for cache in ("none", "prefix", "dual")}
    assert outputs["none"].shape == (3, 16)
    assert (outputs["none"] != MASK_ID).all()
    assert torch.equal(outputs["prefix"], outputs["none"]) and torch.equal(outputs["dual"], outputs["none"])


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_each_row_decodes_as_it_would_alone(model, name):
    kw = dict(gen_length=16, steps=8, block_length=BLOCK, temperature=0.0, cache="prefix")
    batched = make_sampler(name, model).generate(PROMPTS, **kw).sequences
    for row, prompt in enumerate(PROMPTS):
        alone = make_sampler(name, model).generate([prompt], **kw).sequences[0]
        assert torch.equal(batched[row], alone), row


@pytest.mark.parametrize("variant", ["info_gain", "lookum"])
@pytest.mark.parametrize("cache", ["none", "prefix"])
def test_fast_sampler_equals_naive_baseline(model, variant, cache):
    kw = dict(gen_length=16, steps=8, block_length=BLOCK, cache=cache, seed=3, temperature=0.0, variant=variant)
    fast = make_sampler("info_gain", model).generate(PROMPTS, **kw)
    naive = NaiveInfoGainSampler(model).generate(PROMPTS, **kw)
    assert torch.equal(fast.sequences, naive.sequences)


def test_prompt_with_eos_in_its_decoded_block_is_refused(model):
    with pytest.raises(ValueError, match="stop_at_eos"):
        make_sampler("confidence", model).generate([[5, 6, 1, 7]], gen_length=8, steps=8, block_length=BLOCK)
    out = make_sampler("confidence", model).generate([[5, 6, 1, 7]], gen_length=8, steps=8, block_length=BLOCK,
                                                     stop_at_eos=False)
    assert out.sequences.shape == (1, 8)
