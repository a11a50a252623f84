"""MATH-500: competition math with LaTeX answers, graded by math-verify.

File: the public JSONL (``problem``, ``answer``; ``unique_id`` when present).
Prompt: zero-shot, asking for the final answer in ``\\boxed{}``.

Grading is Hugging Face's math-verify (the ``eval`` extra:
``pip install 'infogain-kernels[eval]'``), the verifier recent papers report
MATH-500 with, called as its documentation shows: the reference is parsed as
``$answer$``, the whole generation with ``parse``'s default extraction, and
``verify(reference, generation)`` gives the verdict. Nothing is extracted or
normalised here first, so the verdicts are math-verify's own (tests/test_graders.py
checks them on a broad set of generations).

What math-verify's default extraction takes from a generation (version 0.9):
an answer after an anchor such as ``final answer is`` or ``answer:``, a
``\\boxed{...}``, LaTeX in ``$...$`` / ``\\[...\\]``, or a plain expression
(``14/3``), preferring anchored answers and the last match; several
``\\boxed{}`` in the chosen span are read together as one set (``\\boxed{4}
... \\boxed{5}`` is ``{4, 5}``), and a dollar amount outside math mode
(``costs \\$18.90.``) is not extracted. It compares symbolically and
numerically (``\\$18.90`` = ``18.90``, ``0.5`` = ``\\frac12``, matrices
whatever their spacing, unordered solution lists ``1, -2`` = ``-2, 1``).

math-verify bounds each parse and comparison with ``signal.alarm``, which only
works on the main thread; off it, grading runs without that bound (math-verify
logs a warning once) instead of failing.
"""
from __future__ import annotations

import functools
import threading
from typing import Optional

from .base import EvalTask, Grade, PromptOptions, Sample

PROMPT = ("Solve the problem below. Show your reasoning, then give the final answer as \\boxed{{ANSWER}}.\n\n"
          "Problem: {problem}\nSolution:")

MATH_VERIFY = "math-verify"
#: math-verify's own default bound on one parse / one comparison, in whole seconds (signal.alarm).
TIMEOUT_S = 5


class GraderUnavailable(ValueError):
    """The library a task is graded with is not installed (the message says how to install it)."""


def _math_verify():
    try:
        import math_verify
    except ImportError:
        raise GraderUnavailable("task 'math500' is graded by math-verify, which is not installed: "
                                "pip install 'infogain-kernels[eval]' (or pip install math-verify)") from None
    return math_verify


def _time_limit() -> Optional[int]:
    """math-verify's signal-based bound where it can run (the main thread), else none."""
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=4096)
def _parsed_reference(answer: str, limit: Optional[int]):
    return _math_verify().parse(f"${answer}$", parsing_timeout=limit)


def math_verify_grade(answer: str, generation: str) -> Grade:
    """math-verify's verdict on ``generation`` against the reference ``answer`` (see the module docstring)."""
    mv, limit = _math_verify(), _time_limit()
    reference = _parsed_reference(answer, limit)
    predicted = mv.parse(generation, parsing_timeout=limit)
    correct = bool(mv.verify(reference, predicted, timeout_seconds=limit))
    # parse returns [sympy object, extracted string] (or just the string when sympy could not read it).
    extracted = next((p for p in predicted if isinstance(p, str)), None)
    detail = None if predicted else "math-verify extracted no answer"
    return Grade(answer=extracted, correct=correct, detail=detail)


def math_verify_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("math-verify")
    except PackageNotFoundError:
        return "not installed"


class Math500(EvalTask):
    name = "math500"
    file_name = "math500.jsonl"
    file_format = 'JSONL of {"problem": str, "answer": str (LaTeX)} (the public MATH-500 test file)'
    fields = ("problem", "answer")
    headline_metric = MATH_VERIFY

    def grader(self) -> str:
        return f"math-verify {math_verify_version()}"

    def load(self, path, *, seed=0, max_samples=None):
        _math_verify()   # refuse at start-up, before any generation, when the grader is missing
        return super().load(path, seed=seed, max_samples=max_samples)

    def prompt(self, sample: Sample, options: PromptOptions) -> str:
        return self._build(options, sample, PROMPT.format(problem=sample.record["problem"]))

    def reference(self, sample: Sample) -> Optional[str]:
        return str(sample.record["answer"])

    def grade(self, sample: Sample, generation: str, options: PromptOptions) -> Grade:
        return math_verify_grade(str(sample.record["answer"]), generation)
