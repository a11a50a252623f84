"""Synthetic tasks on which the decoding order of a masked diffusion LM matters.

Two tasks, each a text-to-text problem over a handful of characters:

``multiplication``
    Generate a whole equation ``a*b=c`` from an empty prompt (only the BOS
    token). Fields are fixed-width and zero padded (``7*6=42`` and ``2*3=06``
    with the default 1-digit operands; ``47*6=282`` with a 2-digit ``a``), so
    every equation of a task has the same length. A generation is correct iff it parses and ``a * b == c``. Greedy
    certainty samplers tend to commit digits of ``c`` before ``a`` and ``b``
    (the leading digits of ``c`` are the most predictable), after which the
    operands must be found by factoring -- the failure case of the Info-Gain
    paper.
``sudoku``
    4x4 sudoku infilling. The prompt is the puzzle, 16 characters row-major with
    ``0`` for a blank; the generation is the full 16-cell grid. Correct iff every
    row, column and 2x2 box holds 1-4 and the givens are preserved (any valid
    completion counts, not only the one the puzzle was made from).

Every task is deterministic given a seed, and its examples fall into two
disjoint splits (``"train"`` / ``"heldout"``) decided by a stable hash of the
example itself, so no held-out example can ever be drawn for training.

Text <-> token ids goes through :class:`CharCodec`: one token per character,
looked up in any tokenizer that has single-token characters (the toy
checkpoint's char-level tokenizer, and most BPE tokenizers for digits), so
decoding never depends on a tokenizer's whitespace or merge rules.
"""
from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch

from infogain_kernels._validation import check_positive_int

SPLITS = ("train", "heldout")
# Fraction of each task's example space reserved for the held-out split.
HELDOUT_FRACTION_PER_MILLE = 100


@dataclass(frozen=True)
class Example:
    """One problem: ``prompt`` text (after BOS) and a reference ``target`` text.

    ``target`` is one correct generation (the one used for training); scoring
    accepts any correct generation, not only this one.
    """

    prompt: str
    target: str


def _is_heldout(key: str) -> bool:
    # crc32 rather than hash(): Python's str hash is salted per process.
    return zlib.crc32(key.encode("ascii")) % 1000 < HELDOUT_FRACTION_PER_MILLE


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def _check_str(name: str, value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


class Task:
    """A synthetic task. Subclasses define the example space and the scoring rule.

    Attributes: ``name``; ``charset`` (every character a prompt or a correct
    generation can contain); ``prompt_length`` and ``gen_length`` (characters;
    fixed per task, so a batch never needs padding).
    """

    name: str
    charset: str
    prompt_length: int
    gen_length: int

    def sample(self, rng: random.Random, split: str) -> Example:
        """Draw one example of ``split`` with ``rng`` (a :class:`random.Random`)."""
        _check_split(split)
        if not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random, got {type(rng).__name__}")
        # Rejection against the split hash: both splits are large fractions of
        # the space, so this ends after a few draws.
        while True:
            example = self._draw(rng)
            if _is_heldout(self._split_key(example)) == (split == "heldout"):
                return example

    def examples(self, split: str, num: int, seed: int) -> List[Example]:
        """``num`` examples of ``split``, the same list for the same ``seed``."""
        _check_split(split)
        check_positive_int("num", num)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        rng = random.Random(f"{self.name}:{split}:{seed}")
        return [self.sample(rng, split) for _ in range(num)]

    def is_correct(self, prompt: str, generation: str) -> bool:
        """Whether ``generation`` (text) solves the problem posed by ``prompt``."""
        raise NotImplementedError

    def _draw(self, rng: random.Random) -> Example:
        raise NotImplementedError

    def _split_key(self, example: Example) -> str:
        raise NotImplementedError


class MultiplicationTask(Task):
    """``a*b=c`` generated from scratch; ``a`` has ``a_digits`` digits, ``b`` ``b_digits``.

    Operands range over ``1 .. 10**digits - 1`` and are zero padded; ``c`` is
    zero padded to ``a_digits + b_digits`` digits. The split is by operand pair
    (for the default 1-digit operands, 8 of the 81 pairs are held out).
    """

    name = "multiplication"
    charset = "0123456789*="

    def __init__(self, a_digits: int = 1, b_digits: int = 1):
        self.a_digits = check_positive_int("a_digits", a_digits)
        self.b_digits = check_positive_int("b_digits", b_digits)
        self.c_digits = a_digits + b_digits
        self.prompt_length = 0
        self.gen_length = a_digits + b_digits + self.c_digits + 2
        self._pattern = re.compile(
            rf"(\d{{{a_digits}}})\*(\d{{{b_digits}}})=(\d{{{self.c_digits}}})")

    def format(self, a: int, b: int) -> str:
        """The correct equation for operands ``a`` and ``b``."""
        return f"{a:0{self.a_digits}d}*{b:0{self.b_digits}d}={a * b:0{self.c_digits}d}"

    def is_correct(self, prompt: str, generation: str) -> bool:
        _check_str("prompt", prompt)
        _check_str("generation", generation)
        match = self._pattern.fullmatch(generation)
        if match is None:
            return False
        a, b, c = (int(g) for g in match.groups())
        return a * b == c

    def _draw(self, rng):
        a = rng.randint(1, 10 ** self.a_digits - 1)
        b = rng.randint(1, 10 ** self.b_digits - 1)
        return Example(prompt="", target=self.format(a, b))

    def _split_key(self, example):
        return example.target.split("=")[0]


def _all_sudoku_4x4() -> List[str]:
    """Every valid 4x4 sudoku grid (288 of them), row-major strings, sorted."""
    grids: List[str] = []
    cells: List[str] = []

    def fill() -> None:
        # Depth-first, one cell at a time, pruning digits already in the cell's row/column/box.
        index = len(cells)
        if index == 16:
            grids.append("".join(cells))
            return
        taken = {cells[j] for unit in _SUDOKU_UNITS if index in unit for j in unit if j < index}
        for digit in "1234":
            if digit not in taken:
                cells.append(digit)
                fill()
                cells.pop()

    fill()
    return sorted(grids)


def _sudoku_units() -> List[Tuple[int, ...]]:
    rows = [tuple(4 * r + c for c in range(4)) for r in range(4)]
    cols = [tuple(4 * r + c for r in range(4)) for c in range(4)]
    boxes = [tuple(4 * (br + r) + bc + c for r in range(2) for c in range(2))
             for br in (0, 2) for bc in (0, 2)]
    return rows + cols + boxes


_SUDOKU_UNITS = _sudoku_units()


def sudoku_is_valid_grid(grid: str) -> bool:
    """Whether ``grid`` (16 chars, row-major) is a solved 4x4 sudoku."""
    _check_str("grid", grid)
    if len(grid) != 16 or any(ch not in "1234" for ch in grid):
        return False
    return all(sorted(grid[i] for i in unit) == ["1", "2", "3", "4"] for unit in _SUDOKU_UNITS)


class SudokuTask(Task):
    """4x4 sudoku infilling with ``min_blanks .. max_blanks`` blank cells.

    The split is by puzzle string, so a held-out puzzle never appears in
    training (its solution grid may, with other blanks).
    """

    name = "sudoku"
    charset = "01234"

    def __init__(self, min_blanks: int = 4, max_blanks: int = 10):
        check_positive_int("min_blanks", min_blanks)
        check_positive_int("max_blanks", max_blanks)
        if not min_blanks <= max_blanks <= 16:
            raise ValueError(f"need min_blanks <= max_blanks <= 16, got {min_blanks}, {max_blanks}")
        self.min_blanks = min_blanks
        self.max_blanks = max_blanks
        self.prompt_length = 16
        self.gen_length = 16
        self._grids: List[str] = []  # filled on first use: keeps importing the module cheap

    def is_correct(self, prompt: str, generation: str) -> bool:
        _check_str("prompt", prompt)
        _check_str("generation", generation)
        if len(prompt) != 16 or any(ch not in self.charset for ch in prompt):
            raise ValueError(f"prompt must be 16 characters from {self.charset!r}, got {prompt!r}")
        if not sudoku_is_valid_grid(generation):
            return False
        return all(given == "0" or given == cell for given, cell in zip(prompt, generation))

    def _draw(self, rng):
        if not self._grids:
            self._grids = _all_sudoku_4x4()
        grid = rng.choice(self._grids)
        blanks = set(rng.sample(range(16), rng.randint(self.min_blanks, self.max_blanks)))
        puzzle = "".join("0" if i in blanks else ch for i, ch in enumerate(grid))
        return Example(prompt=puzzle, target=grid)

    def _split_key(self, example):
        return example.prompt


TASKS: Dict[str, Task] = {"multiplication": MultiplicationTask(), "sudoku": SudokuTask()}


def get_task(name: str) -> Task:
    """The task registered as ``name`` (a key of :data:`TASKS`)."""
    _check_str("name", name)
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    return TASKS[name]


class CharCodec:
    """One token per character, through any tokenizer that has such tokens.

    ``tokenizer`` is a transformers tokenizer (or anything with ``encode`` and
    ``bos_token_id``); ``charset`` the characters to support. Raises
    ``ValueError`` naming the first character that the tokenizer does not
    encode as exactly one token, or if the tokenizer has no BOS token.
    """

    def __init__(self, tokenizer, charset: str):
        _check_str("charset", charset)
        if not charset:
            raise ValueError("charset must not be empty")
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is None:
            raise ValueError("tokenizer has no bos_token_id; the tasks start every prompt with BOS")
        self.bos_token_id = int(bos)
        self._char_to_id: Dict[str, int] = {}
        for ch in dict.fromkeys(charset):
            ids = tokenizer.encode(ch, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(
                    f"tokenizer encodes {ch!r} as {len(ids)} tokens {ids}; the tasks need one token per "
                    f"character of {charset!r}")
            self._char_to_id[ch] = int(ids[0])
        if len(set(self._char_to_id.values())) != len(self._char_to_id):
            raise ValueError(f"tokenizer maps two characters of {charset!r} to the same token")
        self._id_to_char = {i: ch for ch, i in self._char_to_id.items()}

    def encode(self, text: str) -> List[int]:
        """Token ids of ``text``, one per character."""
        _check_str("text", text)
        try:
            return [self._char_to_id[ch] for ch in text]
        except KeyError as exc:
            raise ValueError(f"text contains {exc.args[0]!r}, which is not in the codec's charset") from None

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; a token outside the charset (mask, EOS, ...) becomes ``?``.

        ``?`` never appears in a correct generation, so it makes scoring fail
        rather than silently skipping the token.
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(self._id_to_char.get(int(i), "?") for i in ids)

    def prompt_ids(self, prompts: Sequence[str]) -> torch.Tensor:
        """``[B, 1 + P]`` long: BOS then the prompt's characters (all prompts the same length)."""
        rows = [[self.bos_token_id] + self.encode(p) for p in prompts]
        if not rows:
            raise ValueError("prompts must not be empty")
        if len({len(r) for r in rows}) != 1:
            raise ValueError("prompts must all have the same length")
        return torch.tensor(rows, dtype=torch.long)
