"""Synthetic tasks: scoring rules, determinism, split disjointness, char codec."""
import itertools
import random

import pytest

from infogain.tasks import (TASKS, CharCodec, Example, MultiplicationTask, SudokuTask, get_task,
                            sudoku_is_valid_grid)
from infogain.apps.train_toy import TOY_CHARSET, build_tokenizer


# ---- independent references -------------------------------------------------------------

def reference_sudoku_ok(grid):
    """Written out cell by cell, independently of the task's unit tables."""
    if len(grid) != 16 or not set(grid) <= set("1234"):
        return False
    cells = [[int(grid[4 * r + c]) for c in range(4)] for r in range(4)]
    groups = [cells[r] for r in range(4)]
    groups += [[cells[r][c] for r in range(4)] for c in range(4)]
    groups += [[cells[r][c] for r in (br, br + 1) for c in (bc, bc + 1)] for br in (0, 2) for bc in (0, 2)]
    return all(set(g) == {1, 2, 3, 4} for g in groups)


# ---- multiplication ---------------------------------------------------------------------

@pytest.mark.parametrize("text,ok", [
    ("7*6=42", True), ("9*9=81", True), ("2*3=06", True), ("1*1=01", True),
    ("7*6=43", False),        # wrong product
    ("2*3=6", False),         # not fixed width
    ("7*6=042", False),       # c too wide
    ("7*6=42?", False),       # trailing junk (e.g. a leftover mask)
    ("7+6=42", False), ("", False), ("7*6=4?", False), ("76*=42", False),
])
def test_multiplication_scoring_default_one_digit_operands(text, ok):
    assert TASKS["multiplication"].is_correct("", text) is ok


@pytest.mark.parametrize("text,ok", [
    ("07*6=042", True), ("99*9=891", True), ("10*1=010", True),
    ("07*6=043", False), ("7*6=42", False), ("07*6=0042", False), ("07*6=042?", False),
])
def test_multiplication_scoring_two_digit_operand(text, ok):
    assert MultiplicationTask(a_digits=2, b_digits=1).is_correct("", text) is ok


@pytest.mark.parametrize("a_digits,b_digits", [(1, 1), (2, 1)])
def test_multiplication_examples_are_correct_equations(a_digits, b_digits):
    task = MultiplicationTask(a_digits, b_digits)
    for ex in task.examples("train", 50, seed=3) + task.examples("heldout", 20, seed=3):
        a, rest = ex.target.split("*")
        b, c = rest.split("=")
        assert ex.prompt == ""
        assert (len(a), len(b), len(c)) == (a_digits, b_digits, a_digits + b_digits)
        assert int(a) * int(b) == int(c) and 1 <= int(a) < 10 ** a_digits and 1 <= int(b) <= 9
        assert len(ex.target) == task.gen_length


def test_multiplication_two_by_two_digits():
    task = MultiplicationTask(a_digits=2, b_digits=2)
    assert task.gen_length == 10
    assert task.is_correct("", "12*34=0408") and not task.is_correct("", "12*34=0409")


def test_multiplication_splits_are_disjoint_and_cover_the_space():
    task = MultiplicationTask(a_digits=2, b_digits=1)
    heldout = {ex.target for ex in task.examples("heldout", 3000, seed=0)}
    train = {ex.target for ex in task.examples("train", 6000, seed=0)}
    assert heldout.isdisjoint(train)
    assert len(heldout) + len(train) >= 99 * 9 - 5  # nearly every pair drawn at these sizes
    assert 40 < len(heldout) < 150  # about 10% held out
    small = MultiplicationTask()
    heldout = {ex.target for ex in small.examples("heldout", 500, seed=0)}
    train = {ex.target for ex in small.examples("train", 2000, seed=0)}
    assert heldout.isdisjoint(train) and len(heldout) + len(train) == 81 and len(heldout) >= 1


# ---- sudoku -----------------------------------------------------------------------------

def test_sudoku_grid_validity_matches_reference_on_all_row_combinations():
    rows = ["".join(p) for p in itertools.permutations("1234")]
    rng = random.Random(0)
    grids = ["".join(rng.choice(rows) for _ in range(4)) for _ in range(1000)]
    grids += ["1234341221434321", "1234341221434312", "12343412214343", "1234341221434320"]
    for grid in grids:
        assert sudoku_is_valid_grid(grid) == reference_sudoku_ok(grid), grid
    # 288 grids in all, 12 per first row by symmetry: count those under "1234" exhaustively.
    first_row_1234 = sum(reference_sudoku_ok("1234" + "".join(g)) for g in itertools.product(rows, repeat=3))
    assert first_row_1234 == 12


@pytest.mark.parametrize("generation,ok", [
    ("1234341221434321", True),
    ("1234341221434312", False),   # rows fine, columns broken
    ("2143341212344321", False),   # valid grid but violates the given "1" at cell 0
    ("123434122143432", False),    # 15 cells
    ("12343412214343210", False),  # 17 cells
    ("1234341221434?21", False),
])
def test_sudoku_scoring(generation, ok):
    assert TASKS["sudoku"].is_correct("1000001000000000", generation) is ok


def test_sudoku_accepts_any_valid_completion_not_only_the_reference():
    task = SudokuTask()
    puzzle = "0" * 16  # every valid grid completes an empty puzzle
    assert task.is_correct(puzzle, "1234341221434321") and task.is_correct(puzzle, "2143341212344321")


def test_sudoku_examples_are_consistent():
    task = SudokuTask(min_blanks=3, max_blanks=6)
    for ex in task.examples("heldout", 40, seed=1):
        assert reference_sudoku_ok(ex.target)
        blanks = ex.prompt.count("0")
        assert 3 <= blanks <= 6
        assert all(p in ("0", t) for p, t in zip(ex.prompt, ex.target))
        assert task.is_correct(ex.prompt, ex.target)


def test_sudoku_splits_are_disjoint_and_all_grids_are_used():
    task = SudokuTask()
    heldout = {ex.prompt for ex in task.examples("heldout", 500, seed=0)}
    train = task.examples("train", 3000, seed=0)
    assert heldout.isdisjoint(ex.prompt for ex in train)
    assert len({ex.target for ex in train}) == 288


# ---- determinism ------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TASKS))
def test_examples_are_deterministic_per_seed(name):
    task = get_task(name)
    assert task.examples("heldout", 20, seed=5) == task.examples("heldout", 20, seed=5)
    assert task.examples("heldout", 20, seed=5) != task.examples("heldout", 20, seed=6)
    assert task.examples("train", 20, seed=5) != task.examples("heldout", 20, seed=5)


# ---- codec ------------------------------------------------------------------------------

def test_char_codec_round_trip_with_the_toy_tokenizer():
    tokenizer = build_tokenizer()
    codec = CharCodec(tokenizer, TOY_CHARSET)
    ids = codec.encode("07*6=042")
    assert len(ids) == 8 and codec.decode(ids) == "07*6=042"
    assert tokenizer.decode(ids) == "07*6=042"
    assert codec.decode(ids + [tokenizer.mask_token_id]) == "07*6=042?"
    assert "?" not in TOY_CHARSET
    prompts = codec.prompt_ids(["1000", "0200"])
    assert prompts.shape == (2, 5) and (prompts[:, 0] == tokenizer.bos_token_id).all()


class _FakeTokenizer:
    bos_token_id = 0

    def __init__(self, table):
        self.table = table

    def encode(self, text, add_special_tokens=False):
        return self.table[text]


def test_char_codec_rejects_tokenizers_that_cannot_encode_the_tasks():
    with pytest.raises(ValueError, match="'\\*'"):
        CharCodec(_FakeTokenizer({"1": [5], "*": [6, 7]}), "1*")
    with pytest.raises(ValueError, match="same token"):
        CharCodec(_FakeTokenizer({"1": [5], "2": [5]}), "12")
    no_bos = _FakeTokenizer({"1": [5]})
    no_bos.bos_token_id = None
    with pytest.raises(ValueError, match="bos_token_id"):
        CharCodec(no_bos, "1")
    codec = CharCodec(_FakeTokenizer({"1": [5]}), "1")
    with pytest.raises(ValueError, match="'x'"):
        codec.encode("1x")
    with pytest.raises(ValueError, match="same length"):
        codec.prompt_ids(["1", "11"])


# ---- invalid arguments ------------------------------------------------------------------

def test_invalid_arguments_raise_clear_errors():
    task = get_task("sudoku")
    with pytest.raises(ValueError, match="split"):
        task.examples("test", 3, seed=0)
    with pytest.raises(ValueError, match="num"):
        task.examples("train", 0, seed=0)
    with pytest.raises(TypeError, match="seed"):
        task.examples("train", 3, seed="0")
    with pytest.raises(TypeError, match="rng"):
        task.sample(0, "train")
    with pytest.raises(ValueError, match="unknown task"):
        get_task("addition")
    with pytest.raises(ValueError, match="max_blanks"):
        SudokuTask(min_blanks=5, max_blanks=4)
    with pytest.raises(TypeError, match="a_digits"):
        MultiplicationTask(a_digits=1.5)
    with pytest.raises(TypeError, match="generation"):
        get_task("multiplication").is_correct("", None)
    with pytest.raises(ValueError, match="prompt"):
        task.is_correct("12", "1234341221434321")
    assert Example("a", "b") == Example("a", "b")
