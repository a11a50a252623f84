"""HumanEval: complete a Python function so that its unit tests pass.

File: the public JSONL (``task_id``, ``prompt``, ``test``, ``entry_point``).
Prompt: the function's signature and docstring (zero-shot completion, as is
customary). Grading: the program is the prompt followed by the generated code
(a bare body continues the prompt's function; a generation that defines the
entry point itself replaces it), then the file's ``test`` and
``check(entry_point)``. As in OpenAI's human-eval harness, the program is
executed in a fresh namespace (not as ``__main__``) and passes only when
``check`` returns normally; an early exit of any kind fails. It runs in a
separate, limited process (:mod:`.sandbox`).
"""
from __future__ import annotations

import re
from typing import Optional

from .base import EvalTask, Grade, PromptOptions, Sample
from .sandbox import extract_code, grade_program


def build_program(prompt: str, generation: str, test: str, entry_point: str) -> str:
    """The test program of one generation (see the module docstring)."""
    code = extract_code(generation)
    # A full definition of the entry point follows the prompt's (docstring-only) one and replaces it.
    joiner = "\n" if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.M) else ""
    return f"{prompt}{joiner}{code}\n\n{test}\n\ncheck({entry_point})\n"


class HumanEval(EvalTask):
    name = "humaneval"
    file_name = "humaneval.jsonl"
    file_format = ('JSONL of {"task_id": str, "prompt": str, "test": str, "entry_point": str} '
                   '(the public HumanEval file)')
    fields = ("prompt", "test", "entry_point")
    headline_metric = "pass@1"

    def grader(self) -> str:
        return "infogain sandbox (human-eval's pass rule; isolation in summary.json's code_sandbox)"

    def prompt(self, sample: Sample, options: PromptOptions) -> str:
        return self._build(options, sample, str(sample.record["prompt"]))

    def reference(self, sample: Sample) -> Optional[str]:
        return str(sample.record["entry_point"])

    def grade(self, sample: Sample, generation: str, options: PromptOptions) -> Grade:
        rec = sample.record
        program = build_program(str(rec["prompt"]), generation, str(rec["test"]), str(rec["entry_point"]))
        return grade_program(program, generation, options)
