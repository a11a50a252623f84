"""The rough edges of issue 21 a new user hits in eval, chat, demo, bench and lm-eval, each checked where it
was reported: lengths that follow the task and the model (3), a broken checkpoint named in one line (4),
nothing written by a run whose options or model fail at its start (5), output-folder and YAML problems as
one-line errors (6), Ctrl-C and Ctrl-D (7), one run at a time per output folder (8 in this file, item 9 of
the issue), and the lm-eval model reading ``toy`` and ``device`` as the other commands do (10)."""
import io
import json
import os
import shutil

import pytest
import torch

from infogain import models
from infogain.apps import bench, chat, demo
from infogain.evaluation import EvalConfig, load_config, runner
from infogain.models import toy_model_path

TOY = toy_model_path()
# The toy multiplication task with its own lengths; two problems keep each run to a second or two.
TOY_EVAL = ["--task", "toy_multiplication", "--device", "cpu", "--max_samples", "2", "--candidate_number", "2",
            "--progress", "false"]


def one_line_usage_error(capsys, call):
    """``call()`` exits with argparse's usage error; returns its message (the last stderr line), after
    checking that no traceback came with it."""
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def without_escaping_interrupt(call):
    """``call()``'s result; a KeyboardInterrupt escaping it fails the test (rather than stopping pytest)."""
    try:
        return call()
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the command (the user would see a traceback)")


def broken_toy(tmp_path, content: bytes):
    """A copy of the toy checkpoint whose model.safetensors holds ``content``."""
    path = tmp_path / "broken"
    shutil.copytree(TOY, path)
    (path / "model.safetensors").write_bytes(content)
    return str(path)


def truncated_toy(tmp_path):
    data = open(os.path.join(TOY, "model.safetensors"), "rb").read()
    return broken_toy(tmp_path, data[:len(data) // 2])


def chat_io(lines, tty=False):
    class Input(io.StringIO):
        def isatty(self):
            return tty

    return Input("".join(line + "\n" for line in lines)), io.StringIO()


# ---- 3: lengths from the task and the model ----------------------------------------------------------

def test_chat_with_the_toy_model_answers_its_first_message_with_default_lengths():
    stdin, stdout = chat_io(["12*3"])
    assert chat.main(["--model", "toy", "--device", "cpu", "--no-chat-template", "--seed", "0"],
                     stdin=stdin, stdout=stdout) == 0
    assert stdout.getvalue().startswith("assistant> ")


def test_chat_refuses_a_gen_length_the_model_cannot_hold_at_start_up(capsys):
    stdin, stdout = chat_io(["12*3"])
    message = one_line_usage_error(capsys, lambda: chat.main(
        ["--model", "toy", "--device", "cpu", "--no-chat-template", "--gen-length", "64"], stdin=stdin,
        stdout=stdout))
    assert "gen_length" in message and "64 positions" in message
    assert stdout.getvalue() == ""   # refused before the first message was read


def test_eval_of_a_toy_task_without_a_config_takes_the_task_lengths(tmp_path):
    cfg = load_config(None, ["--task", "toy_multiplication"])
    assert (cfg.gen_length, cfg.block_length, cfg.steps) == (6, 6, 6)
    out = tmp_path / "run"
    assert runner.main([*TOY_EVAL, "--output_dir", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["problems"] == 2


def test_eval_refuses_lengths_the_task_or_the_model_cannot_take_before_writing(tmp_path, capsys):
    out = tmp_path / "run"
    message = one_line_usage_error(capsys, lambda: runner.main([*TOY_EVAL, "--gen_length", "8", "--output_dir",
                                                                str(out)]))
    assert message.startswith("infogain eval: error: gen_length") and "6 tokens" in message
    # generate's default 256 tokens cannot fit in the toy model's 64 positions
    (tmp_path / "gsm8k.jsonl").write_text(json.dumps({"question": "2*3", "answer": "#### 6"}) + "\n")
    message = one_line_usage_error(capsys, lambda: runner.main(["--task", "gsm8k", "--model", "toy", "--data_dir",
                                                                str(tmp_path), "--output_dir", str(out)]))
    assert message.startswith("infogain eval: error: gen_length (256)") and "64 positions" in message
    assert not out.exists()


# ---- 4: a broken checkpoint names its file in one line ------------------------------------------------

@pytest.mark.parametrize("content", [b"", b"not a safetensors file" * 8, None], ids=["empty", "garbage", "truncated"])
def test_load_names_the_broken_weights_file(tmp_path, content):
    path = truncated_toy(tmp_path) if content is None else broken_toy(tmp_path, content)
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file") as info:
        models.load(path)
    assert os.path.join(path, "model.safetensors") in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("front_end", ["eval", "demo", "bench", "chat"])
def test_every_front_end_reports_a_truncated_checkpoint_in_one_line(tmp_path, capsys, front_end):
    path = truncated_toy(tmp_path)
    out = tmp_path / "out"
    calls = {
        "eval": lambda: runner.main([*TOY_EVAL, "--model", path, "--output_dir", str(out)]),
        "demo": lambda: demo.main(["--model", path, "--device", "cpu", "--num-samples", "1", "--out", str(out),
                                   "--no-progress"]),
        "bench": lambda: bench.main(["--model", path, "--device", "cpu", "--repeats", "1"]),
        "chat": lambda: chat.main(["--model", path, "--device", "cpu", "--no-chat-template"],
                                  stdin=io.StringIO("hi\n"), stdout=io.StringIO()),
    }
    message = one_line_usage_error(capsys, calls[front_end])
    assert os.path.join(path, "model.safetensors") in message
    if front_end == "eval":   # 5: nothing written, so the rerun with a good checkpoint is not refused
        assert not os.path.exists(out / "run.json")


# ---- 5: invalid options are found before anything is written ----------------------------------------

def test_invalid_options_through_the_python_api_write_nothing_and_the_corrected_rerun_runs(tmp_path):
    out = str(tmp_path / "run")
    lengths = dict(task="toy_multiplication", device="cpu", max_samples=2, candidate_number=2, progress=False,
                   gen_length=6, block_length=6, output_dir=out)
    for bad in (dict(steps=0), dict(threshold=2.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            runner.run(EvalConfig(**lengths, **{"steps": 6, **bad}), stream=io.StringIO())
        assert not os.path.exists(os.path.join(out, "run.json"))
    assert runner.run(EvalConfig(**lengths, steps=6), stream=io.StringIO())["problems"] == 2


def test_a_run_that_graded_nothing_does_not_block_the_corrected_rerun(tmp_path):
    # What a run failing at its first batch used to leave: run.json of its config and an empty rank file.
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"config": {"steps": 0}, "config_hash": "0" * 16}))
    (out / "samples.rank0.jsonl").write_text("")
    assert runner.main([*TOY_EVAL, "--output_dir", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["problems"] == 2


# ---- 6: output folders and YAML ------------------------------------------------------------------------

def test_eval_output_dir_problems_are_one_line_errors(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out in (a_file, a_file / "below"):
        message = one_line_usage_error(capsys, lambda: runner.main([*TOY_EVAL, "--output_dir", str(out)]))
        assert message.startswith("infogain eval: error: output_dir") and str(out) in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_eval_into_a_read_only_folder_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "read_only"
    out.mkdir()
    out.chmod(0o555)
    try:
        message = one_line_usage_error(capsys, lambda: runner.main([*TOY_EVAL, "--output_dir", str(out)]))
    finally:
        out.chmod(0o755)
    assert "output_dir" in message and "cannot be created or written" in message


def test_malformed_yaml_is_a_one_line_error_naming_the_file_and_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("task: toy_multiplication\nsampler: [info_gain\n")
    message = one_line_usage_error(capsys, lambda: runner.main(["--config", str(config)]))
    assert str(config) in message and "not valid YAML" in message and "line" in message


def test_bench_refuses_an_existing_directory_as_out_before_running(tmp_path, capsys, monkeypatch):
    def benchmark_ran(*args, **kwargs):
        raise AssertionError("the benchmark ran although its output cannot be written")

    monkeypatch.setattr(bench, "bench_configuration", benchmark_ran)
    message = one_line_usage_error(capsys, lambda: bench.main(["--device", "cpu", "--out", str(tmp_path)]))
    assert "--out" in message and "is a directory" in message


# ---- 7: Ctrl-C and Ctrl-D ------------------------------------------------------------------------------

def test_ctrl_c_in_eval_says_how_to_resume_without_a_traceback(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_generate_batch", interrupted)
    out = tmp_path / "run"
    assert without_escaping_interrupt(lambda: runner.main([*TOY_EVAL, "--output_dir", str(out)])) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line] == [
        f"interrupted: the problems graded so far are kept in {str(out)!r}; run the same command again to resume"]


def test_ctrl_c_in_chat_returns_to_the_prompt(monkeypatch):
    replies = []
    original = chat.ChatSession.reply

    def reply(session, message):
        replies.append(message)
        if len(replies) == 1:
            session.messages.append({"role": "user", "content": message})
            raise KeyboardInterrupt
        return original(session, message)

    monkeypatch.setattr(chat.ChatSession, "reply", reply)
    stdin, stdout = chat_io(["first", "12*3"])
    assert without_escaping_interrupt(lambda: chat.main(
        ["--model", "toy", "--device", "cpu", "--no-chat-template", "--gen-length", "8", "--block-length", "8",
         "--steps", "8"], stdin=stdin, stdout=stdout)) == 0
    assert replies == ["first", "12*3"]
    assert "(interrupted" in stdout.getvalue()


def test_ctrl_c_at_the_chat_prompt_and_ctrl_d_leave_the_shell_prompt_on_its_own_line():
    class Keyboard(io.StringIO):
        """A terminal: Ctrl-C while typing the first line, then Ctrl-D."""

        calls = 0

        def isatty(self):
            return True

        def readline(self, *args):
            Keyboard.calls += 1
            if Keyboard.calls == 1:
                raise KeyboardInterrupt
            return ""

    stdout = io.StringIO()
    assert without_escaping_interrupt(lambda: chat.main(
        ["--model", "toy", "--device", "cpu", "--no-chat-template"], stdin=Keyboard(), stdout=stdout)) == 0
    assert stdout.getvalue() == "you> \nyou> \n"


# ---- issue item 9: one eval run per output folder at a time --------------------------------------------

def test_a_second_run_into_a_busy_folder_is_refused_and_no_problem_is_written_twice(tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = load_config(None, [*TOY_EVAL, "--output_dir", str(out)])
    original = runner._generate_batch
    refusals = []

    def generate_while_another_run_starts(*args, **kwargs):
        if not refusals:   # the same folder, same config, while this run is busy
            try:
                runner.run(load_config(None, [*TOY_EVAL, "--output_dir", str(out)]), stream=io.StringIO())
                refusals.append(None)
            except ValueError as exc:
                refusals.append(str(exc))
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "_generate_batch", generate_while_another_run_starts)
    runner.run(cfg, stream=io.StringIO())
    assert refusals[0] is not None and "in use by another eval run" in refusals[0]
    ids = [json.loads(line)["id"] for line in (out / "samples.rank0.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 2


# ---- 10: the lm-eval model reads pretrained and device as the other commands do -------------------------

def test_lm_eval_model_accepts_toy_and_refuses_cuda_without_it(monkeypatch):
    pytest.importorskip("lm_eval")
    from infogain.evaluation.lm_eval_model import InfoGainLM

    lm = InfoGainLM(pretrained="toy", device="cpu", gen_length=8, block_length=8)
    assert lm.model.config.max_position_embeddings == 64
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda': CUDA is not available"):
        InfoGainLM(pretrained="toy", device="cuda")
