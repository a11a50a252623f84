"""Tasks: the demo's synthetic tasks and the evaluation benchmarks (one module per task).

* :mod:`.toy` -- the synthetic ``multiplication`` and ``sudoku`` tasks of the demo
  and the toy model (:data:`TASKS`, :func:`get_task`, :class:`CharCodec`).
* Evaluation tasks (:data:`EVAL_TASKS`, :func:`get_eval_task`), each reading a
  local file in its public format: ``gsm8k``, ``math500``, ``humaneval``,
  ``mbpp``, ``countdown``, ``sudoku`` (4x4, the Info-Gain repository's CSV), and
  ``toy_multiplication`` / ``toy_sudoku`` (the toy tasks, no file).
"""
from typing import Dict

from .base import EvalTask, Grade, PromptOptions, Sample, TaskFileError
from .countdown import Countdown
from .gsm8k import GSM8K
from .humaneval import HumanEval
from .math500 import Math500
from .mbpp import MBPP
from .sudoku import Sudoku
from .toy import (HELDOUT_FRACTION_PER_MILLE, SPLITS, TASKS, CharCodec, Example, MultiplicationTask, SudokuTask,
                  Task, get_task, sudoku_is_valid_grid)
from .toy_eval import ToyEvalTask

EVAL_TASKS: Dict[str, EvalTask] = {
    task.name: task for task in (GSM8K(), Math500(), HumanEval(), MBPP(), Countdown(), Sudoku(),
                                 ToyEvalTask(TASKS["multiplication"]), ToyEvalTask(TASKS["sudoku"]))
}


def get_eval_task(name: str) -> EvalTask:
    """The evaluation task registered as ``name`` (a key of :data:`EVAL_TASKS`)."""
    if not isinstance(name, str):
        raise TypeError(f"task must be a str, got {type(name).__name__}")
    if name not in EVAL_TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(EVAL_TASKS)}")
    return EVAL_TASKS[name]


__all__ = ["CharCodec", "EVAL_TASKS", "EvalTask", "Example", "Grade", "HELDOUT_FRACTION_PER_MILLE",
           "MultiplicationTask", "PromptOptions", "SPLITS", "Sample", "SudokuTask", "TASKS", "Task",
           "TaskFileError", "get_eval_task", "get_task", "sudoku_is_valid_grid"]
