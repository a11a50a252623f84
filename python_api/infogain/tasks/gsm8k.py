"""GSM8K: grade-school math word problems with a numeric answer, graded as lm-evaluation-harness grades them.

File: the public JSONL (``question``, ``answer`` whose last line is ``#### N``).
Prompt: ``Question: ...\\nAnswer:`` after a few worked examples (few-shot is
customary for GSM8K), as lm-eval's ``gsm8k`` task writes it.

Grading follows lm-eval's ``gsm8k`` task (version 3.0 of its YAML) so that the
numbers sit beside papers that used the harness. The generation is first cut at
the task's stop strings (lm-eval's ``until``); then two filters each extract one
answer, and each is scored by lm-eval's ``exact_match``:

* ``strict-match``: the first ``#### N`` (N made of digits, ``.`` and ``,``,
  optionally after a ``-``);
* ``flexible-extract``: the last number-like run in the text (two or more of
  ``-$0-9.,``, or a lone digit string).

No match gives lm-eval's ``[invalid]``, which never equals a reference.
``exact_match`` compares strings after the same normalisation of the
extracted answer and of the whole reference ``answer`` field: delete every
``,`` and ``$``, delete everything up to the last ``#### ``, delete one
trailing ``.``, lower-case. So ``1,234`` equals ``1234`` but ``1234.00`` does
not, exactly as in the harness.

The headline (``Grade.correct``, the summary's ``accuracy``) is
``flexible-extract``: it does not depend on the model copying the few-shot
``####`` format, so zero-shot and chat-template runs are graded on their
answer rather than their formatting; ``strict-match`` is reported beside it.
tests/test_graders.py checks both verdicts against the installed lm-eval's own
filter objects on a broad set of generations.
"""
from __future__ import annotations

import re
from typing import Optional

from .base import EvalTask, Grade, PromptOptions, Sample, cut_at_stops

# Worked examples written for this package (short, GSM8K style).
SHOTS = (
    "Question: A baker makes 24 rolls and sells them in bags of 6. How many bags does she fill?\n"
    "Answer: 24 / 6 = 4 bags. #### 4\n\n",
    "Question: Tom has 3 boxes with 12 pencils each and gives away 10 pencils. How many pencils are left?\n"
    "Answer: He has 3 * 12 = 36 pencils. After giving away 10, 36 - 10 = 26 are left. #### 26\n\n",
    "Question: A ticket costs $15. How much do 4 adult tickets and 2 half-price child tickets cost?\n"
    "Answer: Adults pay 4 * 15 = 60 dollars. A child ticket costs 15 / 2 = 7.5, so two cost 15. "
    "In total 60 + 15 = 75. #### 75\n\n",
    "Question: A tank holds 1,200 liters and loses 150 liters a day. After how many days is it empty?\n"
    "Answer: 1200 / 150 = 8 days. #### 8\n\n",
)

STRICT_MATCH = "strict-match"
FLEXIBLE_EXTRACT = "flexible-extract"

# The two filters' patterns and exact_match's ignored patterns, as lm-eval's gsm8k.yaml (version 3.0) states them.
_STRICT_PATTERN = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_IGNORED_PATTERNS = tuple(re.compile(p) for p in (",", r"\$", r"(?s).*#### ", r"\.$"))
INVALID = "[invalid]"   # lm-eval's fallback when a filter finds nothing

_REFERENCE = re.compile(r"####\s*([^\n]*)")


def reference_answer(answer_field: str) -> Optional[str]:
    """The ``#### N`` value of a GSM8K ``answer`` field (stored with results for reading them)."""
    match = _REFERENCE.search(answer_field)
    return match.group(1).strip() if match else None


def strict_match(generation: str) -> str:
    """lm-eval's ``strict-match`` extraction: the first ``#### N``'s number, else ``[invalid]``."""
    match = _STRICT_PATTERN.search(generation)
    return match.group(1).strip() if match else INVALID


def flexible_extract(generation: str) -> str:
    """lm-eval's ``flexible-extract`` extraction: the last number-like match, else ``[invalid]``."""
    matches = list(_FLEXIBLE_PATTERN.finditer(generation))
    if not matches:
        return INVALID
    # The pattern has two alternatives; the harness keeps the first group that matched something.
    return next((g for g in matches[-1].groups() if g), INVALID).strip()


def exact_match_normalise(text: str) -> str:
    """lm-eval's ``exact_match`` normalisation for GSM8K (see the module docstring)."""
    for pattern in _IGNORED_PATTERNS:
        text = pattern.sub("", text)
    return text.lower()


def exact_match(extracted: str, answer_field: str) -> bool:
    """Whether an extracted answer equals the reference ``answer`` field under lm-eval's ``exact_match``."""
    return exact_match_normalise(extracted) == exact_match_normalise(answer_field)


class GSM8K(EvalTask):
    name = "gsm8k"
    file_name = "gsm8k.jsonl"
    file_format = 'JSONL of {"question": str, "answer": str ending with "#### N"} (the public GSM8K test file)'
    fields = ("question", "answer")
    # lm-eval's until: the next few-shot question, and end-of-text markers that survive decoding.
    stops = ("Question:", "</s>", "<|im_end|>")
    headline_metric = FLEXIBLE_EXTRACT

    def grader(self) -> str:
        return "lm-eval gsm8k v3.0 filters (strict-match, flexible-extract) with exact_match"

    def prompt(self, sample: Sample, options: PromptOptions) -> str:
        zero_shot = f"Question: {sample.record['question']}\nAnswer:"
        return self._build(options, sample, zero_shot, SHOTS)

    def reference(self, sample: Sample) -> Optional[str]:
        return reference_answer(str(sample.record["answer"]))

    def grade(self, sample: Sample, generation: str, options: PromptOptions) -> Grade:
        text = cut_at_stops(generation, self.stops)
        answer_field = str(sample.record["answer"])
        strict, flexible = strict_match(text), flexible_extract(text)
        metrics = {FLEXIBLE_EXTRACT: exact_match(flexible, answer_field),
                   STRICT_MATCH: exact_match(strict, answer_field)}
        detail = None if strict == flexible else f"{STRICT_MATCH} extracted {strict}"
        return Grade(answer=None if flexible == INVALID else flexible, correct=metrics[FLEXIBLE_EXTRACT],
                     detail=detail, metrics=metrics)
