"""MBPP (sanitized): write a Python function from a one-line description and its tests.

File: the public sanitized JSON / JSONL (``task_id``, ``prompt``, ``test_list``,
``test_imports``). Prompt: the description and the tests, then an opened
```` ```python ```` fence; few-shot prepends two worked examples. Grading: the
test imports, the generated code (first fenced block that defines something,
else the text before a closing fence) and every assert of ``test_list`` run in
a separate, limited process (:mod:`.sandbox`); the sample passes when the
program runs to its last assert and past it (executed in a fresh namespace, not
as ``__main__``; an early exit of any kind fails).
"""
from __future__ import annotations

from typing import Optional, Sequence

from .base import EvalTask, Grade, PromptOptions, Sample
from .sandbox import extract_code, grade_program

# Worked examples written for this package.
SHOTS = (
    "Task: Write a function to return the sum of the squares of a list of numbers.\n"
    "Tests:\nassert sum_squares([1, 2, 3]) == 14\n"
    "```python\ndef sum_squares(numbers):\n    return sum(x * x for x in numbers)\n```\n\n",
    "Task: Write a function to check whether a string reads the same backwards.\n"
    "Tests:\nassert is_palindrome(\"level\") == True\nassert is_palindrome(\"abc\") == False\n"
    "```python\ndef is_palindrome(text):\n    return text == text[::-1]\n```\n\n",
)


def build_program(generation: str, test_imports: Sequence[str], test_list: Sequence[str]) -> str:
    imports = "\n".join(test_imports)
    tests = "\n".join(test_list)
    return f"{imports}\n\n{extract_code(generation)}\n\n{tests}\n"


class MBPP(EvalTask):
    name = "mbpp"
    file_name = "mbpp.jsonl"
    file_format = ('JSON or JSONL of {"task_id": int, "prompt": str, "test_list": [str], "test_imports": [str]} '
                   '(the public sanitized MBPP file)')
    fields = ("prompt", "test_list")
    headline_metric = "pass@1"

    def grader(self) -> str:
        return "infogain sandbox (human-eval's pass rule; isolation in summary.json's code_sandbox)"

    def prompt(self, sample: Sample, options: PromptOptions) -> str:
        rec = sample.record
        tests = "\n".join(rec["test_list"])
        zero_shot = f"Task: {rec['prompt']}\nTests:\n{tests}\n```python\n"
        return self._build(options, sample, zero_shot, SHOTS)

    def reference(self, sample: Sample) -> Optional[str]:
        return str(sample.record.get("code", "")) or None

    def grade(self, sample: Sample, generation: str, options: PromptOptions) -> Grade:
        rec = sample.record
        program = build_program(generation, rec.get("test_imports") or [], rec["test_list"])
        return grade_program(program, generation, options)
