"""What a user does with the results and commands: autograd on generated sequences, ``--help``,
the machine label of the demo."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from tiny_checkpoints import write_tiny_checkpoint  # noqa: E402


@pytest.mark.parametrize("name", ["info_gain", "confidence"])
def test_generated_tensors_are_ordinary_tensors(name, tmp_path):
    from infogain import models
    from infogain.samplers import make_sampler

    model, _ = models.load(write_tiny_checkpoint("llada", tmp_path))
    result = make_sampler(name, model).generate([[2, 3, 4], [5, 6]], gen_length=4, steps=4, block_length=4,
                                                candidate_number=2)
    for tensor in (result.sequences, result.canvas, result.attention_mask):
        assert not tensor.is_inference()
    # Scoring the generations with gradients (e.g. for training) works on them.
    logits = model(result.canvas, result.attention_mask)
    logits.float().logsumexp(-1).mean().backward()
    assert model.lm_head_weight.grad is not None or any(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("command, expected", [
    ("demo", ["(default: 100)", "(default: ./infogain-demo)", "(default: none)", "(default: cpu)"]),
    ("bench", ["(default: 8)", "(default: 0.8)", "(default: 3)", "(default: none,prefix,dual)"]),
])
def test_help_shows_the_defaults(command, expected, capsys):
    from infogain.apps import cli

    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for item in expected:
        assert item in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_demo_reports_the_threads_it_used(tmp_path, monkeypatch):
    from infogain.apps import demo

    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # the label must not be the core count
    assert demo.main(["--num-samples", "1", "--samplers", "confidence", "--tasks", "sudoku", "--out",
                      str(tmp_path), "--no-progress"]) == 0
    threads = torch.get_num_threads()   # what the demo's thread policy set and ran with
    with open(tmp_path / "demo.json") as fh:
        assert json.load(fh)["machine"].endswith(f", {threads} CPU threads")
