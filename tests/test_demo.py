"""``infogain demo`` end to end on a small subset, the CLI dispatcher, and argument errors."""
import json
import os

import pytest

from infogain.apps import cli, demo

FAST_SAMPLERS = "info_gain,confidence,fast_dllm"


def test_toy_model_path_points_into_the_package():
    path = demo.toy_model_path()
    assert os.path.isdir(path) and path.endswith(os.path.join("infogain", "assets", "toy"))


def test_demo_runs_end_to_end_on_five_samples(tmp_path, capsys):
    out = tmp_path / "demo"
    code = cli.main(["demo", "--num-samples", "5", "--samplers", FAST_SAMPLERS, "--out", str(out),
                     "--no-progress", "--seed", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "cum. entropy" in printed and "tokens/s" in printed
    with open(out / "demo.json") as fh:
        record = json.load(fh)
    rows = record["rows"]
    assert [(r["sampler"], r["task"]) for r in rows] == [
        (s, t) for t in ("multiplication", "sudoku") for s in FAST_SAMPLERS.split(",")]
    for row in rows:
        assert 0.0 <= row["accuracy"] <= 1.0 and row["cum_entropy"] >= 0.0 and row["nfe"] >= 1
        assert 0.0 <= row["bypass_rate"] <= 1.0 and row["tokens_per_s"] > 0
        # Every printed row appears in the table.
        assert any(line.startswith(row["sampler"]) and row["task"] in line for line in printed.splitlines())
        # The accuracy is recomputable from the stored generations (all 5 are kept).
        assert len(row["examples"]) == 5
        assert row["accuracy"] == sum(e["correct"] for e in row["examples"]) / 5
    assert record["num_samples"] == 5 and record["seed"] == 1
    with open(out / "demo.png", "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_demo_rows_are_deterministic_for_a_seed(tmp_path):
    outs = []
    for name in ("a", "b"):
        assert demo.main(["--num-samples", "3", "--samplers", "random", "--tasks", "multiplication",
                          "--out", str(tmp_path / name), "--no-progress"]) == 0
        with open(tmp_path / name / "demo.json") as fh:
            outs.append(json.load(fh)["rows"][0]["examples"])
    assert outs[0] == outs[1]


def test_cli_dispatches_help_and_rejects_unknown_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--help"])
    assert exc.value.code == 0 and "--num-samples" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main(["train"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--samplers", "greedy"], "--samplers: unknown greedy"),
    (["--tasks", "addition"], "--tasks: unknown addition"),
    (["--tasks", ","], "--tasks must name at least one"),
    (["--num-samples", "0"], "--num-samples must be >= 1"),
    (["--model", "/nonexistent/checkpoint"], "is not a checkpoint folder"),
])
def test_demo_rejects_bad_options(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(args + ["--out", str(tmp_path)])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_rejects_a_checkpoint_whose_tokenizer_cannot_encode_the_tasks(tmp_path, capsys):
    from tokenizers import Regex, Tokenizer, models as tok_models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from infogain import models
    from infogain.apps.train_toy import toy_config

    # Digits only: no "*" or "=".
    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<mask>", "<unk>"] + list("0123456789"))}
    backend = Tokenizer(tok_models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", mask_token="<mask>", unk_token="<unk>")
    config = toy_config(tokenizer, d_model=16, n_layers=1, n_heads=2, mlp_hidden_size=32)
    path = str(tmp_path / "ckpt")
    models.save(models.build(config), path, tokenizer=tokenizer)
    with pytest.raises(SystemExit) as exc:
        demo.main(["--model", path, "--tasks", "multiplication", "--out", str(tmp_path / "o"), "--no-progress"])
    assert exc.value.code == 2
    assert "cannot encode the tasks" in capsys.readouterr().err
