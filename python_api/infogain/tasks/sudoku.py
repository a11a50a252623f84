"""Sudoku (4x4) in the Info-Gain repository's format.

File: a CSV with the header ``Puzzle,Solution``; each a 16-digit row-major
string, ``0`` for an empty cell. Prompt: the puzzle as four lines of four
digits, then ``<answer>``; few-shot adds worked examples. Extraction: the text
after the last ``<answer>`` (when the generation repeats it) up to
``</answer>``; its first 16 digits are the grid. Correct when the grid is a
solved sudoku that keeps every given digit (any valid completion counts).
"""
from __future__ import annotations

import csv
import os
import re
from typing import List, Optional

from .base import EvalTask, Grade, PromptOptions, Sample, TaskFileError
from .toy import sudoku_is_valid_grid

INSTRUCTION = ("Fill in the 4x4 sudoku below (rows top to bottom, 0 = empty) so that every row, column and "
               "2x2 box holds 1, 2, 3 and 4 once. Write the full grid between <answer> and </answer>.\n\n")
# Worked examples made for this package (puzzle, solution).
EXAMPLES = (("1040002121000302", "1243342121344312"), ("0300100330010100", "2314142332414132"))


def _rows(grid: str) -> str:
    return "\n".join(grid[i:i + 4] for i in range(0, 16, 4))


def _question(puzzle: str) -> str:
    return f"Puzzle:\n{_rows(puzzle)}\n<answer>\n"


SHOTS = tuple(f"{_question(p)}{_rows(s)}\n</answer>\n\n" for p, s in EXAMPLES)


def extract_grid(generation: str) -> Optional[str]:
    """The first 16 digits after the last ``<answer>`` (or from the start), before ``</answer>``; None if fewer."""
    text = generation.rsplit("<answer>", 1)[-1].split("</answer>", 1)[0]
    digits = re.findall(r"\d", text)
    return "".join(digits[:16]) if len(digits) >= 16 else None


def is_solution(puzzle: str, grid: Optional[str]) -> bool:
    return grid is not None and sudoku_is_valid_grid(grid) and all(
        p == "0" or p == g for p, g in zip(puzzle, grid))


class Sudoku(EvalTask):
    name = "sudoku"
    file_name = "sudoku.csv"
    file_format = "CSV with header Puzzle,Solution (16-digit row-major strings, 0 = empty; Info-Gain format)"

    def load(self, path, *, seed=0, max_samples=None) -> List[Sample]:
        if path is None or not os.path.isfile(path):
            raise TaskFileError(f"task 'sudoku': data file {path!r} not found; expected {self.file_format} "
                                f"(set data_path to the local file; nothing is downloaded)")
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or "Puzzle" not in reader.fieldnames:
                raise TaskFileError(f"task 'sudoku': {path!r} has header {reader.fieldnames}; expected "
                                    f"{self.file_format}")
            samples = []
            for i, row in enumerate(reader):
                puzzle = (row.get("Puzzle") or "").strip()
                if not re.fullmatch(r"[0-4]{16}", puzzle):
                    raise TaskFileError(f"task 'sudoku': row {i + 2} of {path!r} has puzzle {puzzle!r}; expected "
                                        f"{self.file_format}")
                samples.append(Sample(id=str(i), record={"Puzzle": puzzle,
                                                         "Solution": (row.get("Solution") or "").strip()}))
        if not samples:
            raise TaskFileError(f"task 'sudoku': {path!r} holds no puzzles; expected {self.file_format}")
        return samples[:max_samples] if max_samples is not None else samples

    def prompt(self, sample: Sample, options: PromptOptions) -> str:
        return self._build(options, sample, _question(sample.record["Puzzle"]), SHOTS, instruction=INSTRUCTION)

    def reference(self, sample: Sample) -> Optional[str]:
        return sample.record.get("Solution") or None

    def grade(self, sample: Sample, generation: str, options: PromptOptions) -> Grade:
        grid = extract_grid(generation)
        return Grade(answer=grid, correct=is_solution(sample.record["Puzzle"], grid))
