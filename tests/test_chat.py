"""``python -m infogain chat`` fed through stdin with the toy model, and the sampler's per-block hook."""
import io
import os
import subprocess
import sys

import pytest
import torch

from infogain import models
from infogain.apps import chat
from infogain.models import toy_model_path
from infogain.samplers import make_sampler
from tiny_checkpoints import toy_with_chat_template

TOY = toy_model_path()
OPTIONS = dict(gen_length=16, block_length=4, steps=16, seed=0)
FLAGS = ["--device", "cpu", "--gen-length", "16", "--block-length", "4", "--steps", "16", "--seed", "0"]
PUZZLES = ["0001412310000402", "1200340000210000", "0000123421430000"]


@pytest.fixture(scope="module")
def toy():
    return models.load(TOY)


class _Recorder(io.StringIO):
    """stdout that also keeps every write separately (to see the answer arrive in pieces)."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, text):
        self.writes.append(text)
        return super().write(text)


def _answers(output):
    return [line[len("assistant> "):] for line in output.splitlines() if line.startswith("assistant> ")]


def test_on_block_sees_each_decoded_block(toy):
    model, tokenizer = toy
    sampler = make_sampler("info_gain", model, tokenizer)
    seen = []
    prompt = [tokenizer.bos_token_id] + tokenizer(PUZZLES[0])["input_ids"]
    result = sampler.generate([prompt, prompt], **OPTIONS, on_block=lambda b, t: seen.append((b, t)))
    assert [b for b, _ in seen] == [0, 1, 2, 3]
    for block, tokens in seen:
        assert tokens.shape == (2, 16) and tokens.dtype == torch.int64
        masked = tokens == sampler.mask_id
        assert not masked[:, :4 * (block + 1)].any() and masked[:, 4 * (block + 1):].all()
    assert torch.equal(seen[-1][1], result.sequences)
    with pytest.raises(TypeError, match="on_block"):
        sampler.generate([prompt], **OPTIONS, on_block=3)


def test_chat_without_template_streams_blocks_and_matches_the_sampler(toy):
    model, tokenizer = toy
    out = _Recorder()
    stdin = io.StringIO("\n".join([PUZZLES[0], "", PUZZLES[1], "/reset", PUZZLES[2], "/exit", "ignored"]) + "\n")
    assert chat.main(["--model", TOY, "--no-chat-template", *FLAGS], stdin=stdin, stdout=out) == 0
    answers = _answers(out.getvalue())
    assert len(answers) == 3 and "(conversation reset)" in out.getvalue()
    sampler = make_sampler("info_gain", model, tokenizer)
    bos = [tokenizer.bos_token_id]
    first = sampler.generate([bos + tokenizer(PUZZLES[0])["input_ids"]], **OPTIONS).texts[0]
    assert answers[0] == first
    # Turn 2 continues the transcript; after /reset, turn 3 starts afresh.
    transcript = PUZZLES[0] + first + PUZZLES[1]
    ids = tokenizer(transcript)["input_ids"]  # 48 tokens: with BOS and 16 generated, one too many
    second = sampler.generate([bos + ids[1:]], **OPTIONS).texts[0]
    assert answers[1] == second
    third = sampler.generate([bos + tokenizer(PUZZLES[2])["input_ids"]], **OPTIONS).texts[0]
    assert answers[2] == third
    # Shown block by block: the first answer arrived in four pieces of four characters.
    start = out.writes.index("assistant> ")
    assert out.writes[start + 1:start + 5] == [first[i:i + 4] for i in range(0, 16, 4)]


def test_chat_template_and_long_conversations(tmp_path, toy):
    model, tokenizer = toy
    folder = toy_with_chat_template(tmp_path / "toy_chat")
    out = io.StringIO()
    turns = PUZZLES * 2  # six turns of 16 + 16 tokens: far past the toy model's 64 positions
    chat.main(["--model", folder, "--system", "1234", *FLAGS], stdin=io.StringIO("\n".join(turns)), stdout=out)
    answers = _answers(out.getvalue())
    assert len(answers) == 6 and all(len(a) == 16 for a in answers)
    sampler = make_sampler("info_gain", model, tokenizer)
    expected = sampler.generate([[tokenizer.bos_token_id] + tokenizer("1234" + PUZZLES[0])["input_ids"]],
                                **OPTIONS).texts[0]
    assert answers[0] == expected


def test_chat_errors(capsys):
    with pytest.raises(SystemExit):
        chat.main(["--model", TOY], stdin=io.StringIO("hi\n"), stdout=io.StringIO())
    assert "no chat template" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        chat.main(["--model", TOY, "--no-chat-template", "--system", "x"], stdin=io.StringIO(""), stdout=io.StringIO())
    assert "--system" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        chat.main(["--model", TOY, "--no-chat-template", "--gen-length", "0"], stdin=io.StringIO(""),
                  stdout=io.StringIO())
    assert "gen_length" in capsys.readouterr().err


def test_chat_loads_through_load_generator(monkeypatch, capsys):
    # One way to load a model and build a sampler (infogain.evaluation.load_generator); no --dtype
    # keeps the checkpoint's dtype, and load errors name --model.
    import infogain.evaluation

    seen = []

    def refuse(config):
        seen.append(dict(config))
        raise ValueError("not loaded")

    monkeypatch.setattr(infogain.evaluation, "load_generator", refuse)
    for extra, dtype in (([], "checkpoint"), (["--dtype", "bfloat16"], "bfloat16")):
        with pytest.raises(SystemExit):
            chat.main(["--model", TOY, "--device", "cpu", "--sampler", "confidence", *extra],
                      stdin=io.StringIO(""), stdout=io.StringIO())
        assert f"--model {TOY!r}: not loaded" in capsys.readouterr().err
        assert seen.pop() == {"model": TOY, "sampler": "confidence", "device": "cpu", "dtype": dtype}


def test_infogain_works_without_the_harness():
    # lm-eval is optional: with it blocked, the package and the chat import, and the harness
    # command fails with an actionable message.
    code = ("import sys; sys.modules['lm_eval'] = None\n"
            "import infogain, infogain.apps.cli, infogain.apps.chat, infogain.samplers\n"
            "from infogain.apps import lm_eval\n"
            "try:\n    lm_eval.main(['--tasks', 'x'])\nexcept SystemExit as exc:\n    print(exc)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert run.returncode == 0, run.stderr
    assert "pip install lm-eval" in run.stdout
