"""MATH-500: competition math with LaTeX answers.

File: the public JSONL (``problem``, ``answer``; ``unique_id`` when present).
Prompt: zero-shot, asking for the final answer in ``\\boxed{}``.
Extraction: the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces), else
``final answer is ...``. Two answers are equal when their normalised strings
are equal (spacing, ``\\left``/``\\right``, ``\\dfrac``, ``\\frac12``, units in
``\\text{}``, degrees, percent, ``x =`` prefixes, thousands separators), or
when both are numeric / simple symbolic expressions that sympy finds equal
(``0.5`` = ``\\frac{1}{2}``, ``2\\sqrt{3}`` = ``\\sqrt{12}``), element-wise for
tuples and intervals with the same brackets.
"""
from __future__ import annotations

import re
from typing import List, Optional

from .base import EvalTask, Grade, PromptOptions, Sample

PROMPT = ("Solve the problem below. Show your reasoning, then give the final answer as \\boxed{{ANSWER}}.\n\n"
          "Problem: {problem}\nSolution:")

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox``, or ``\\boxed 5``) in ``text``; None if none closes."""
    best = -1
    command = ""
    for cmd in _BOX_COMMANDS:
        pos = text.rfind(cmd)
        if pos > best:
            best, command = pos, cmd
    if best < 0:
        return None
    i = best + len(command)
    if i < len(text) and text[i] == " ":   # "\boxed 5": the argument is the next token
        match = re.match(r"\s*([^\s$]+)", text[i:])
        return match.group(1) if match else None
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


_FINAL = re.compile(r"final answer is[:\s]*\$?([^\n$]+)\$?", re.IGNORECASE)


def extract_answer(generation: str) -> Optional[str]:
    boxed = last_boxed(generation)
    if boxed is not None:
        return boxed
    matches = _FINAL.findall(generation)
    return matches[-1].strip().rstrip(".") if matches else None


def _replace_command_argument(text: str, command: str) -> str:
    """``\\text{abc}`` -> ``abc`` for every occurrence of ``command`` (nested braces respected)."""
    while True:
        pos = text.find(command + "{")
        if pos < 0:
            return text
        depth, start = 0, pos + len(command)
        for j in range(start, len(text)):
            depth += text[j] == "{"
            depth -= text[j] == "}"
            if depth == 0:
                text = text[:pos] + text[start + 1:j] + text[j + 1:]
                break
        else:
            return text


_UNIT_WORDS = ("degrees", "degree", "units", "unit", "cm", "meters", "inches", "feet", "dollars", "cents",
               "square", "sq", "mph", "hours", "minutes", "seconds", "days")


def normalize(answer: Optional[str]) -> Optional[str]:
    """A canonical string of a LaTeX answer (see the module docstring)."""
    if answer is None:
        return None
    s = answer.strip()
    for junk in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\displaystyle", "$"):
        s = s.replace(junk, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\ ", " ")
    for cmd in ("\\text", "\\textbf", "\\mbox", "\\mathrm", "\\textnormal"):
        s = _replace_command_argument(s, cmd)
    for deg in ("^{\\circ}", "^\\circ", "\\circ", "°", "\\%", "%"):
        s = s.replace(deg, "")
    s = re.sub(r"\s+", " ", s).strip()
    # Trailing unit words after a number ("5 cm", "12 square units").
    words = s.split(" ")
    while len(words) > 1 and words[-1].lower().rstrip(".") in _UNIT_WORDS:
        words.pop()
    s = " ".join(words)
    # "x = 5", "k=3", "x \in [1, 2)" -> the value.
    s = re.sub(r"^[a-zA-Z]\s*(=|\\in)\s*", "", s)
    s = s.replace(" ", "")
    # \frac12 -> \frac{1}{2}, \frac1{2}, \frac{1}2; \sqrt2 -> \sqrt{2}.
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):   # thousands separators, not a tuple
        s = s.replace(",", "")
    s = s.rstrip(".")
    if re.fullmatch(r"-?\d+\.\d*", s):
        s = s.rstrip("0").rstrip(".") if "." in s else s
    if re.fullmatch(r"-?\.\d+", s):
        s = s.replace(".", "0.", 1)
    return s


def _group(s: str, i: int):
    """``(content, end)`` of the brace group opening at ``s[i]``, or None."""
    if i >= len(s) or s[i] != "{":
        return None
    depth = 0
    for j in range(i, len(s)):
        depth += s[j] == "{"
        depth -= s[j] == "}"
        if depth == 0:
            return s[i + 1:j], j + 1
    return None


def _latex_to_python(s: str) -> Optional[str]:
    """Python expression text of a simple LaTeX expression (\\frac, \\sqrt, \\pi, \\cdot, ^), or None."""
    out, i = [], 0
    while i < len(s):
        if s.startswith("\\frac", i):
            first = _group(s, i + 5)
            second = _group(s, first[1]) if first else None
            if second is None:
                return None
            a, b = _latex_to_python(first[0]), _latex_to_python(second[0])
            if a is None or b is None:
                return None
            out.append(f"(({a})/({b}))")
            i = second[1]
        elif s.startswith("\\sqrt", i):
            j, root = i + 5, "2"
            if j < len(s) and s[j] == "[":
                close = s.find("]", j)
                if close < 0:
                    return None
                root, j = s[j + 1:close], close + 1
            arg = _group(s, j)
            inner = _latex_to_python(arg[0]) if arg else None
            if inner is None or not root.isdigit():
                return None
            out.append(f"(({inner})**(1/{root}))")
            i = arg[1]
        elif s.startswith("\\pi", i):
            out.append("pi")
            i += 3
        elif s.startswith("\\cdot", i) or s.startswith("\\times", i):
            out.append("*")
            i += 5 if s.startswith("\\cdot", i) else 6
        elif s[i] == "\\":
            return None   # any other command: not a simple expression
        elif s[i] == "{":
            arg = _group(s, i)
            inner = _latex_to_python(arg[0]) if arg else None
            if inner is None:
                return None
            out.append(f"({inner})")
            i = arg[1]
        else:
            out.append("**" if s[i] == "^" else s[i])
            i += 1
    return "".join(out)


def _to_sympy(s: str):
    """A sympy expression for a normalised simple answer (numbers, + - * / ^, \\frac, \\sqrt, \\pi, one-letter
    variables), or None. Only whitelisted characters reach the parser."""
    if len(s) > 80:
        return None
    expr = _latex_to_python(s)
    if not expr or not re.fullmatch(r"[0-9a-zA-Z+\-*/(). ]*", expr):
        return None
    letters = set(re.findall(r"[a-zA-Z]", expr.replace("pi", "")))
    if re.search(r"[a-zA-Z]{2,}", expr.replace("pi", "")):   # words, not one-letter symbols
        return None
    try:
        import sympy
        from sympy.parsing.sympy_parser import (implicit_multiplication_application, parse_expr,
                                                standard_transformations)

        # One-letter names are plain symbols (sympy would read E, I, N, S, Q as constants or functions).
        names = {c: sympy.Symbol(c) for c in letters}
        parsed = parse_expr(expr, local_dict=names, evaluate=False,
                            transformations=standard_transformations + (implicit_multiplication_application,))
        # Power towers (9^9^9) would make sympy compute for ever: every exponent, inner ones first, must
        # evaluate to a number of magnitude <= 1000.
        for node in sympy.postorder_traversal(parsed):
            if isinstance(node, sympy.Pow):
                exponent = node.exp.doit()
                if not exponent.is_number or abs(float(exponent)) > 1000:
                    return None
        return parsed.doit()
    except Exception:  # unbalanced parentheses and other malformed answers are just not numeric
        return None


def _sympy_equal(a: str, b: str) -> bool:
    ea, eb = _to_sympy(a), _to_sympy(b)
    if ea is None or eb is None:
        return False
    try:
        import sympy

        if not ea.free_symbols and not eb.free_symbols:
            return abs(complex(ea.evalf()) - complex(eb.evalf())) <= 1e-6 * max(1.0, abs(complex(eb.evalf())))
        return sympy.simplify(ea - eb) == 0
    except Exception:  # sympy cannot decide: not equal
        return False


def _split_tuple(s: str) -> Optional[tuple]:
    """``(a,b)`` / ``[a,b)`` / ``a,b`` -> (open bracket, [items], close bracket)."""
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        inner, brackets = s[1:-1], (s[0], s[-1])
    else:
        inner, brackets = s, ("", "")
    items: List[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(inner):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(inner[start:i])
            start = i + 1
    items.append(inner[start:])
    if len(items) < 2:
        return None
    return brackets[0], items, brackets[1]


def is_equivalent(predicted: Optional[str], reference: Optional[str]) -> bool:
    """Whether two MATH answers are the same (see the module docstring)."""
    a, b = normalize(predicted), normalize(reference)
    if a is None or b is None or a == "":
        return False
    if a == b:
        return True
    ta, tb = _split_tuple(a), _split_tuple(b)
    if ta is not None and tb is not None:
        return (ta[0] == tb[0] and ta[2] == tb[2] and len(ta[1]) == len(tb[1])
                and all(x == y or _sympy_equal(x, y) for x, y in zip(ta[1], tb[1])))
    if ta is not None or tb is not None:
        return False
    return _sympy_equal(a, b)


class Math500(EvalTask):
    name = "math500"
    file_name = "math500.jsonl"
    file_format = 'JSONL of {"problem": str, "answer": str (LaTeX)} (the public MATH-500 test file)'
    fields = ("problem", "answer")

    def prompt(self, sample: Sample, options: PromptOptions) -> str:
        return self._build(options, sample, PROMPT.format(problem=sample.record["problem"]))

    def reference(self, sample: Sample) -> Optional[str]:
        return str(sample.record["answer"])

    def grade(self, sample: Sample, generation: str, options: PromptOptions) -> Grade:
        answer = extract_answer(generation)
        return Grade(answer=answer, correct=is_equivalent(answer, self.reference(sample)))
