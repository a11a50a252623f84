"""Countdown: combine the given numbers with + - * / to reach a target.

File: JSON / JSONL records in the Info-Gain repository's format: ``input`` is
``"n1,n2,...,target"`` (the last number is the target) and ``output`` one
reference solution such as ``"44-15=29,79-29=50"``.
Prompt: the numbers, asking for ``The answer is: <formula>``; few-shot adds
three worked examples. Extraction: the text after the last ``answer is``
(to the end of its line), else the longest formula in the last line that
holds an operation.
Grading, exact (fractions, no rounding): the answer is either a chain of
steps ``a op b = c`` separated by commas or semicolons, each step arithmetically
right and using numbers still available (the given ones and earlier results),
or one expression (optionally ``= target``). Either way every given number is
used exactly once and the result equals the target.
"""
from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction
from typing import List, Optional, Tuple

from .base import EvalTask, Grade, PromptOptions, Sample, TaskFileError

SHOTS = (
    "Numbers: 6,4,3 Target: 30\nSolution: 6 * 4 = 24 and 24 + 3 = 27 is too small; 6 - 3 = 3 is not useful. "
    "Try 4 + 6 = 10, then 10 * 3 = 30. The answer is: 4+6=10,10*3=30\n\n",
    "Numbers: 9,7,2 Target: 4\nSolution: 9 - 7 = 2 and 2 * 2 = 4. The answer is: 9-7=2,2*2=4\n\n",
    "Numbers: 50,10,5 Target: 25\nSolution: 50 / 10 = 5, then 5 * 5 = 25. The answer is: 50/10=5,5*5=25\n\n",
)
PROMPT = ("Use each number exactly once with + - * / to reach the target. "
          "End with \"The answer is: <formula>\".\n")

_ANSWER_IS = re.compile(r"answer is[:\s]*([^\n]*)", re.IGNORECASE)
_STEP = re.compile(r"^\s*(\d+)\s*([-+*/×÷x])\s*(\d+)\s*=\s*(\d+(?:/\d+)?)\s*$")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "×": lambda a, b: a * b,
        "x": lambda a, b: a * b, "/": lambda a, b: a / b if b else None, "÷": lambda a, b: a / b if b else None}


def parse_input(text: str) -> Tuple[List[int], int]:
    """``"n1,...,nk,target"`` -> ([n1..nk], target)."""
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"countdown input {text!r} is not comma-separated integers") from None
    if len(values) < 2:
        raise ValueError(f"countdown input {text!r} needs at least one number and a target")
    return values[:-1], values[-1]


def extract_answer(generation: str) -> Optional[str]:
    matches = _ANSWER_IS.findall(generation)
    if matches:
        return matches[-1].strip().strip("$").rstrip(".").strip() or None
    lines = [ln for ln in generation.splitlines() if re.search(r"\d\s*[-+*/×÷]\s*\d", ln)]
    if not lines:
        return None
    # The longest formula-like span of that line (the words around it are not part of the answer).
    spans = re.findall(r"[\d\s+\-*/×÷()=,;]+", lines[-1])
    return max(spans, key=lambda span: len(span.strip())).strip().rstrip(",;") or None


def _check_steps(steps: List[str], numbers: List[int], target: int) -> bool:
    pool = Counter(Fraction(n) for n in numbers)
    result = None
    for step in steps:
        match = _STEP.match(step)
        if match is None:
            return False
        a, op, b, c = Fraction(match.group(1)), match.group(2), Fraction(match.group(3)), Fraction(match.group(4))
        value = _OPS[op](a, b)
        if value is None or value != c:
            return False
        for operand in (a, b):
            if pool[operand] <= 0:
                return False
            pool[operand] -= 1
        pool[c] += 1
        result = c
    # Every given number consumed: only the final result is left.
    return result == target and +pool == Counter({result: 1})


def _eval_expression(node, leaves: List[Fraction]) -> Optional[Fraction]:
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        leaves.append(Fraction(node.value))
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub, ast.Mult, ast.Div):
        left, right = _eval_expression(node.left, leaves), _eval_expression(node.right, leaves)
        if left is None or right is None:
            return None
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        return left / right if right else None
    return None


def _check_expression(text: str, numbers: List[int], target: int) -> bool:
    expr = text.replace("×", "*").replace("÷", "/")
    if "=" in expr:
        expr, _, rhs = expr.partition("=")
        if rhs.strip() and rhs.strip() != str(target):
            return False
    if not re.fullmatch(r"[\d\s+\-*/()]+", expr) or len(expr) > 200:
        return False
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        return False
    leaves: List[Fraction] = []
    value = _eval_expression(tree.body, leaves)
    return value == target and Counter(leaves) == Counter(Fraction(n) for n in numbers)


def is_correct(answer: Optional[str], numbers: List[int], target: int) -> bool:
    """Whether ``answer`` (a step chain or one expression) reaches ``target`` using each number once."""
    if not answer:
        return False
    steps = [s for s in re.split(r"[,;，；]", answer) if s.strip()]
    if steps and all(_STEP.match(s) for s in steps):
        return _check_steps(steps, numbers, target)
    return len(steps) == 1 and _check_expression(steps[0], numbers, target)


class Countdown(EvalTask):
    name = "countdown"
    file_name = "countdown.jsonl"
    file_format = 'JSON or JSONL of {"input": "n1,n2,...,target", "output": "a-b=c,..."} (Info-Gain format)'
    fields = ("input",)

    def load(self, path, *, seed=0, max_samples=None):
        samples = super().load(path, seed=seed, max_samples=max_samples)
        for s in samples:
            try:
                parse_input(s.record["input"])
            except ValueError as exc:
                raise TaskFileError(f"task 'countdown': sample {s.id} of {path!r}: {exc}; expected "
                                    f"{self.file_format}") from None
        return samples

    def prompt(self, sample: Sample, options: PromptOptions) -> str:
        numbers, target = parse_input(sample.record["input"])
        question = f"Numbers: {','.join(map(str, numbers))} Target: {target}\nSolution:"
        return self._build(options, sample, question, SHOTS, instruction=PROMPT + "\n")

    def reference(self, sample: Sample) -> Optional[str]:
        out = sample.record.get("output")
        return str(out) if out is not None else None

    def grade(self, sample: Sample, generation: str, options: PromptOptions) -> Grade:
        numbers, target = parse_input(sample.record["input"])
        answer = extract_answer(generation)
        return Grade(answer=answer, correct=is_correct(answer, numbers, target))
