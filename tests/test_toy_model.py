"""The toy model's training script and the shipped checkpoint."""
import json
import math
import os

import pytest
import torch

from infogain import models
from infogain.models import toy_model_path
from infogain.tasks import CharCodec, get_task
from infogain.apps.train_toy import MIN_MASK_PROB, TOY_CHARSET, build_tokenizer, main, masked_diffusion_loss

TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "mlp_hidden_size": 64}


# ---- the objective ----------------------------------------------------------------------

class _UniformModel(torch.nn.Module):
    """Constant logits (uniform over V) that records its inputs."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.inputs = []

    def forward(self, ids):
        self.inputs.append(ids.clone())
        return torch.zeros(*ids.shape, self.vocab)


def test_loss_is_an_unbiased_elbo_weighting_and_never_masks_the_prompt():
    # With uniform predictions every masked token costs log V; masking with
    # probability t and weighting by 1/t makes the expected loss exactly log V.
    vocab, mask_id = 17, 3
    model = _UniformModel(vocab)
    prompt = torch.randint(5, vocab, (4000, 4))
    target = torch.randint(5, vocab, (4000, 6))
    loss = masked_diffusion_loss(model, prompt, target, mask_id, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(math.log(vocab), rel=0.05)
    seen = model.inputs[0]
    assert torch.equal(seen[:, :4], prompt)
    generation = seen[:, 4:]
    masked = generation == mask_id
    assert torch.equal(generation[~masked], target[~masked])
    # t ~ U(0, 1], so on average half the generation tokens are masked.
    assert masked.float().mean().item() == pytest.approx(0.5, abs=0.02)


class _MaskCountModel(torch.nn.Module):
    """Logits under which a masked position of a row with k masked tokens costs exactly RATE * k nats
    when the target is token 5: p(5) = exp(-RATE k), the rest spread evenly (a model that finds a row
    harder the more of it is masked, as real models do)."""

    RATE = 0.1

    def __init__(self, vocab, mask_id, prompt_length):
        super().__init__()
        self.vocab, self.mask_id, self.prompt_length = vocab, mask_id, prompt_length

    def forward(self, ids):
        k = (ids[:, self.prompt_length:] == self.mask_id).sum(1).double()
        p_target = torch.exp(-self.RATE * k)
        others = torch.log((1 - p_target) / (self.vocab - 1))
        logits = others[:, None, None].expand(*ids.shape, self.vocab).clone()
        logits[..., 5] = torch.log(p_target)[:, None]
        return logits.float()


def test_loss_weights_each_row_by_one_over_t():
    """Where the per-token loss depends on how much of the row is masked, the 1/t ELBO weighting has
    its own expectation, unlike averaging over the masked tokens or not weighting at all (with a
    uniform model all three give log V). A row with k ~ Binomial(G, t) masked tokens costs RATE k^2,
    and E[k^2 | t] / t = G (1 - t) + G^2 t, so the 1/t-weighted loss per token has expectation
    RATE ((1 - E[t]) + G E[t]) with t ~ U(m, 1], E[t] = (1 + m) / 2. Averaging over the masked tokens
    gives RATE E[k^2] / E[k] instead, not weighting RATE E[k^2] / G: both 15% or more away."""
    vocab, mask_id, gen = 17, 3, 6
    rate = _MaskCountModel.RATE
    prompt = torch.randint(6, vocab, (20000, 2), generator=torch.Generator().manual_seed(1))
    target = torch.full((20000, gen), 5)
    loss = masked_diffusion_loss(_MaskCountModel(vocab, mask_id, 2), prompt, target, mask_id,
                                 torch.Generator().manual_seed(0)).item()
    m = MIN_MASK_PROB
    mean_t, mean_t2 = (1 + m) / 2, (1 + m + m * m) / 3
    elbo = rate * ((1 - mean_t) + gen * mean_t)
    mean_k, mean_k2 = gen * mean_t, gen * (mean_t - mean_t2) + gen * gen * mean_t2
    per_masked_token, unweighted = rate * mean_k2 / mean_k, rate * mean_k2 / gen
    assert abs(per_masked_token - elbo) > 0.15 * elbo and abs(unweighted - elbo) > 0.15 * elbo
    assert loss == pytest.approx(elbo, rel=0.04)


def test_loss_is_deterministic_per_generator():
    model = _UniformModel(11)
    prompt, target = torch.randint(5, 11, (8, 2)), torch.randint(5, 11, (8, 5))
    a = masked_diffusion_loss(model, prompt, target, 3, torch.Generator().manual_seed(4))
    b = masked_diffusion_loss(model, prompt, target, 3, torch.Generator().manual_seed(4))
    assert torch.equal(model.inputs[0], model.inputs[1]) and a.item() == b.item()


# ---- the training script ----------------------------------------------------------------

def test_training_script_runs_and_saves_a_loadable_checkpoint(tmp_path, capsys):
    out = str(tmp_path / "toy")
    from infogain.apps import train_toy

    log = train_toy.train(out, steps=3, batch_sizes={"multiplication": 4, "sudoku": 2}, model_size=TINY,
                          log_every=2, validate_num=4, verbose=False)
    assert log["steps"] == 3 and [h["step"] for h in log["history"]] == [2, 3]
    assert set(log["validation"]) == {"multiplication", "sudoku"}
    with open(os.path.join(out, "training_log.json")) as fh:
        assert json.load(fh)["seed"] == 0

    model, tokenizer = models.load(out)
    assert tokenizer is not None and tokenizer.mask_token_id == model.config.mask_token_id
    assert model.config.arch == "llada" and model.config.extra["d_model"] == 32
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(out)
    assert reloaded.encode("12*3=", add_special_tokens=False) == tokenizer.encode("12*3=", add_special_tokens=False)
    with open(os.path.join(out, "tokenizer_config.json")) as fh:
        assert json.load(fh)["tokenizer_class"] == "PreTrainedTokenizerFast"
    logits = model(torch.tensor([[tokenizer.bos_token_id] + [tokenizer.mask_token_id] * 8]))
    assert logits.shape == (1, 9, model.config.vocab_size) and torch.isfinite(logits).all()

    # The command line runs the same function (2 steps, one task).
    assert main(["--out", str(tmp_path / "cli"), "--steps", "2", "--tasks", "sudoku", "--batch-sizes", "sudoku=2",
                 "--log-every", "1"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out


def test_training_rejects_bad_arguments(tmp_path):
    from infogain.apps import train_toy

    with pytest.raises(ValueError, match="steps"):
        train_toy.train(str(tmp_path), steps=0)
    with pytest.raises(ValueError, match="batch_sizes"):
        train_toy.train(str(tmp_path), steps=1, batch_sizes={"sudoku": 0})
    with pytest.raises(ValueError, match="lr"):
        train_toy.train(str(tmp_path), steps=1, lr=0.0)
    with pytest.raises(ValueError, match="unknown task"):
        train_toy.train(str(tmp_path), steps=1, tasks=["addition"])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--batch-sizes", "sudoku"])


# ---- the shipped checkpoint -------------------------------------------------------------

@pytest.fixture(scope="module")
def toy():
    path = toy_model_path()
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        pytest.fail(f"the toy checkpoint is missing from {path}")
    model, tokenizer = models.load(path)
    return model, tokenizer


def test_shipped_checkpoint_is_small_and_complete():
    path = toy_model_path()
    names = set(os.listdir(path))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "training_log.json"} <= names
    assert sum(os.path.getsize(os.path.join(path, n)) for n in names) <= 10 * 2 ** 20
    with open(os.path.join(path, "training_log.json")) as fh:
        log = json.load(fh)
    for key in ("seed", "steps", "train_wall_s", "validation"):
        assert key in log
    with open(os.path.join(path, "config.json")) as fh:
        config = json.load(fh)
    assert config["block_type"] == "llama" and config["layer_norm_type"] == "rms" and not config["weight_tying"]


def test_shipped_model_loads_with_its_tokenizer(toy):
    model, tokenizer = toy
    codec = CharCodec(tokenizer, TOY_CHARSET)
    assert codec.decode(codec.encode("7*6=42")) == "7*6=42"
    assert model.config.mask_token_id == tokenizer.mask_token_id == build_tokenizer().mask_token_id


def _generate(model, tokenizer, prompt_ids, gen_length):
    from infogain.samplers import make_sampler

    sampler = make_sampler("info_gain", model, tokenizer)
    result = sampler.generate(prompt_ids, gen_length=gen_length, steps=gen_length, block_length=gen_length,
                              temperature=0.0, candidate_number=4, position_temperature=0.2, threshold=0.9,
                              seed=0)
    return result.sequences


def test_shipped_model_solves_easy_sudokus(toy):
    model, tokenizer = toy
    codec = CharCodec(tokenizer, TOY_CHARSET)
    task = get_task("sudoku")
    # Held-out puzzles with four blanks (the fewest seen in training); each has one completion.
    puzzles = ["2000412332141032", "3124003124131300", "2104401234011240"]
    out = _generate(model, tokenizer, codec.prompt_ids(puzzles), 16)
    for puzzle, row in zip(puzzles, out):
        assert task.is_correct(puzzle, codec.decode(row)), (puzzle, codec.decode(row))


def test_shipped_model_multiplies_given_the_operands(toy):
    model, tokenizer = toy
    codec = CharCodec(tokenizer, TOY_CHARSET)
    task = get_task("multiplication")
    # Operand pairs of the training split (a held-out pair is a fact the model
    # never saw). Prompt = BOS + "a*b=": only the product is generated.
    equations = sorted({ex.target for ex in task.examples("train", 200, seed=0)})[::9][:6]
    assert len(equations) == 6
    operands = [eq[: eq.index("=") + 1] for eq in equations]
    out = _generate(model, tokenizer, codec.prompt_ids(operands), task.c_digits)
    assert [codec.decode(row) for row in out] == [eq[len(op):] for eq, op in zip(equations, operands)]
