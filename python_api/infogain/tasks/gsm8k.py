"""GSM8K: grade-school math word problems with a numeric answer.

File: the public JSONL (``question``, ``answer`` whose last line is ``#### N``).
Prompt: ``Question: ...\\nAnswer:`` after a few worked examples (few-shot is
customary for GSM8K). Extraction, in order: ``#### N``, ``The answer is N``,
``\\boxed{N}``, else the last number of the generation; comparison is numeric
(``1,000`` = ``1000`` = ``1000.00``, ``$`` ignored).
"""
from __future__ import annotations

import re
from typing import Optional

from .base import EvalTask, Grade, PromptOptions, Sample, cut_at_stops, last_number, normalize_number
from .math500 import last_boxed

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

_HASH_ANSWER = re.compile(r"####\s*([^\n]*)")
_THE_ANSWER_IS = re.compile(r"answer is[:\s]*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)


def reference_answer(answer_field: str) -> Optional[str]:
    """The ``#### N`` value of a GSM8K ``answer`` field."""
    match = _HASH_ANSWER.search(answer_field)
    return match.group(1).strip() if match else None


def extract_answer(generation: str) -> Optional[str]:
    """The model's final answer in ``generation`` (see the module docstring for the order)."""
    match = _HASH_ANSWER.search(generation)
    if match:
        number = last_number(match.group(1))
        if number is not None:
            return number.strip()
    matches = _THE_ANSWER_IS.findall(generation)
    if matches:
        return matches[-1]
    boxed = last_boxed(generation)
    if boxed is not None and normalize_number(boxed) is not None:
        return boxed
    number = last_number(generation)
    return number.strip() if number is not None else None


def answers_match(predicted: Optional[str], reference: Optional[str]) -> bool:
    a, b = normalize_number(predicted), normalize_number(reference)
    return a is not None and b is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b))


class GSM8K(EvalTask):
    name = "gsm8k"
    file_name = "gsm8k.jsonl"
    file_format = 'JSONL of {"question": str, "answer": str ending with "#### N"} (the public GSM8K test file)'
    fields = ("question", "answer")
    stops = ("\nQuestion:", "Question:")

    def prompt(self, sample: Sample, options: PromptOptions) -> str:
        zero_shot = f"Question: {sample.record['question']}\nAnswer:"
        return self._build(options, sample, zero_shot, SHOTS)

    def reference(self, sample: Sample) -> Optional[str]:
        return reference_answer(str(sample.record["answer"]))

    def grade(self, sample: Sample, generation: str, options: PromptOptions) -> Grade:
        answer = extract_answer(cut_at_stops(generation, self.stops))
        return Grade(answer=answer, correct=answers_match(answer, self.reference(sample)))
