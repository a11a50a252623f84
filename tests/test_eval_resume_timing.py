"""``summary.json`` after a resume: every timing figure has one scope (issue 21, rough edge 8).

``generation_s`` and ``tokens_per_s`` cover every graded problem, over all invocations; ``wall_s`` must too (it
used to be the last invocation's alone, so a resumed run reported less wall time than generation time), and the
last invocation's own figures sit apart in ``last_invocation``.
"""
import json
import os

import pytest

from infogain.apps import cli
from infogain.evaluation.summary import invocation_timing


def _read_summary(out):
    with open(os.path.join(out, "summary.json")) as fh:
        return json.load(fh)


def _record(batch, started, elapsed_s, generate_s, tokens=4):
    return {"batch": batch, "batch_stats": {"wall_s": generate_s},
            "stats": {"generated_tokens": tokens, "tokens": {"eos_fill": 0}},
            **({"invocation": {"started": started, "elapsed_s": elapsed_s}} if started else {})}


def test_resumed_run_adds_up_the_wall_time_of_every_invocation(tmp_path):
    out = str(tmp_path / "out")
    base = ["eval", "--config", "toy_sudoku_info_gain", "--output_dir", out, "--progress", "false",
            "--candidate_number", "2"]
    assert cli.main([*base, "--max_samples", "3"]) == 0
    first = _read_summary(out)
    assert cli.main([*base, "--max_samples", "6"]) == 0
    second = _read_summary(out)
    assert second["invocations"] == 2
    last = second["last_invocation"]
    assert last["problems"] == 3 == second["samples_this_invocation"]
    # One process: the run's wall time covers its generation time, over both invocations.
    assert second["wall_s"] >= second["generation_s"]
    assert second["wall_s"] >= first["generation_s"] + last["wall_s"]
    assert second["generation_s"] == pytest.approx(first["generation_s"] + last["generation_s"])
    assert 0 < last["generation_s"] <= last["wall_s"] and last["tokens_per_s"] > 0
    # A rerun with nothing left to do adds its own (short) wall time and keeps the rest.
    assert cli.main([*base, "--max_samples", "6"]) == 0
    third = _read_summary(out)
    assert third["invocations"] == 3 and third["last_invocation"]["problems"] == 0
    assert third["wall_s"] >= second["wall_s"] - 1.0   # earlier invocations counted to their last problem
    assert third["generation_s"] == second["generation_s"]


def test_invocation_timing_counts_killed_invocations_to_their_last_problem():
    records = [_record(0, "2024-01-01T10:00:00", 5.0, 2.0), _record(1, "2024-01-01T10:00:00", 9.0, 2.0),
               _record(2, "2024-01-01T11:00:00", 3.0, 1.5)]
    timing = invocation_timing(records, wall_s=4.0, samples_this_invocation=1)
    assert timing["invocations"] == 2 and timing["wall_s"] == pytest.approx(9.0 + 4.0)
    assert timing["last_invocation"] == {"problems": 1, "wall_s": 4.0, "generation_s": 1.5,
                                         "tokens_per_s": pytest.approx(4 / 1.5)}
    # Nothing graded by the last invocation: every group is an earlier one.
    idle = invocation_timing(records, wall_s=0.5, samples_this_invocation=0)
    assert idle["invocations"] == 3 and idle["wall_s"] == pytest.approx(9.0 + 3.0 + 0.5)
    assert idle["last_invocation"]["generation_s"] == 0.0
    # Records written before invocations were stamped count their generation seconds (each batch once).
    old = invocation_timing([_record(0, None, 0, 2.0), _record(0, None, 0, 2.0)], wall_s=1.0,
                            samples_this_invocation=0)
    assert old["invocations"] == 2 and old["wall_s"] == pytest.approx(3.0)
