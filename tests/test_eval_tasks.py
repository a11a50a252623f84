"""Evaluation tasks: loading local files, prompts, answer extraction and grading on hand-written cases."""
import json
import os

import pytest

from infogain.tasks import EVAL_TASKS, PromptOptions, Sample, TaskFileError, get_eval_task
from infogain.tasks import countdown, gsm8k, humaneval, mbpp, sandbox, sudoku

OPTS = PromptOptions(code_timeout_s=5.0, code_memory_mb=512)


def grade(task_name, record, generation, options=OPTS):
    return get_eval_task(task_name).grade(Sample(id="0", record=record), generation, options)


# ---- GSM8K ----------------------------------------------------------------------------------

GSM_RECORD = {"question": "q", "answer": "Some steps.\n#### 1,234"}


# (generation, flexible-extract answer, flexible-extract verdict, strict-match verdict): lm-eval's definitions
# (tests/test_graders.py checks them against the installed lm-eval on many more cases).
@pytest.mark.parametrize("generation,answer,flexible,strict", [
    ("So the total is 1234. #### 1234", "1234", True, True),
    ("#### 1,234", "1,234", True, True),
    ("#### $1,234.00", "$1,234.00", False, False),          # "1234.00" is not "1234" as strings
    ("The answer is 1234.", "1234.", True, False),           # one trailing period is dropped; no "####"
    ("The answer is: $1,234", "$1,234", True, False),
    ("He buys 3 then 1234 more", "1234", True, False),       # the last number
    ("first 1234, but finally 1233", "1233", False, False),  # the last number counts, not any number
    ("#### 1234\nQuestion: next one? Answer: #### 7", "1234", True, True),   # cut at the next question
    ("no number at all", None, False, False),
    ("#### -1234", "-1234", False, False),
])
def test_gsm8k_extraction_and_grading(generation, answer, flexible, strict):
    g = grade("gsm8k", GSM_RECORD, generation)
    assert (g.answer, g.correct) == (answer, flexible)
    assert g.metrics == {"flexible-extract": flexible, "strict-match": strict}
    assert get_eval_task("gsm8k").headline_metric == "flexible-extract"


def test_gsm8k_prompt_fewshot_and_template():
    task = get_eval_task("gsm8k")
    s = Sample(id="0", record={"question": "What is 2+2?", "answer": "#### 4"})
    zero = task.prompt(s, PromptOptions(fewshot=False))
    few = task.prompt(s, PromptOptions(fewshot=True))
    assert zero == "Question: What is 2+2?\nAnswer:" and few.endswith(zero) and few.count("####") == 4
    assert task.prompt(s, PromptOptions(template="Q={question}")) == "Q=What is 2+2?"
    with pytest.raises(ValueError, match="problem"):
        task.prompt(s, PromptOptions(template="{problem}"))


# ---- MATH-500 -------------------------------------------------------------------------------

def test_math_grading_is_math_verify():
    pytest.importorskip("math_verify")
    rec = {"problem": "p", "answer": "\\frac{14}{3}"}
    assert grade("math500", rec, "So the answer is \\boxed{\\dfrac{14}{3}}").correct
    assert grade("math500", rec, "The final answer is $\\frac{14}{3}$.").correct
    assert grade("math500", rec, "The final answer is $\\frac{14}{3}$.").answer == "\\frac{14}{3}"
    assert not grade("math500", rec, "\\boxed{\\frac{14}{3}} hmm, \\boxed{5}").correct
    nothing = grade("math500", rec, "I do not know.")
    assert not nothing.correct and nothing.answer is None and nothing.detail
    assert get_eval_task("math500").headline_metric == "math-verify"


# ---- code tasks -----------------------------------------------------------------------------

HE_RECORD = {
    "task_id": "HumanEval/0", "entry_point": "add",
    "prompt": 'def add(a, b):\n    """Return a + b."""\n',
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
}


@pytest.mark.parametrize("generation,correct", [
    ("    return a + b\n", True),                                         # completion of the prompt's body
    ("    return a + b\n```\nSome explanation after the code.", True),     # text after a closing fence
    ("Here you go:\n```python\ndef add(a, b):\n    return b + a\n```\n", True),   # full definition in a fence
    ("    return a - b\n", False),
    ("    return a +\n", False),                                          # syntax error
    ("", False),
])
def test_humaneval_grading(generation, correct):
    assert grade("humaneval", HE_RECORD, generation).correct is correct


def test_sandbox_limits_time_memory_network_and_files(tmp_path):
    assert sandbox.run_python("print('hi')").passed
    slow = sandbox.run_python("while True:\n    pass\n", timeout_s=1.0)
    assert not slow.passed and slow.status == "timeout"
    big = sandbox.run_python("x = bytearray(2 * 1024 ** 3)\n", memory_mb=256)
    assert not big.passed and "MemoryError" in big.output
    net = sandbox.run_python("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n")
    assert not net.passed and "OSError" in net.output
    raw = sandbox.run_python("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))\n")
    assert not raw.passed
    # The child works in its own temporary folder: a relative write does not land here.
    before = set(os.listdir(os.getcwd()))
    assert sandbox.run_python("open('stray.txt', 'w').write('x')\n").passed
    assert set(os.listdir(os.getcwd())) == before
    # The evaluator's environment (e.g. tokens in variables) is not passed on.
    os.environ["INFOGAIN_TEST_SECRET"] = "s3cret"
    try:
        assert sandbox.run_python("import os, sys\nsys.exit('INFOGAIN_TEST_SECRET' in os.environ)\n").passed
    finally:
        del os.environ["INFOGAIN_TEST_SECRET"]


MBPP_RECORD = {"task_id": 11, "prompt": "Write a function to double a number.",
               "test_imports": ["import math"], "test_list": ["assert double(2) == 4", "assert double(0) == 0"]}


@pytest.mark.parametrize("generation,correct", [
    ("def double(x):\n    return 2 * x\n```\n", True),                    # continues the prompt's open fence
    ("Sure!\n```python\ndef double(x):\n    return x + x\n```", True),
    ("def double(x):\n    return math.floor(x) * 2\n", True),            # test_imports are available
    ("def double(x):\n    return x\n", False),
    ("```python\n# no code\n```", False),
])
def test_mbpp_grading(generation, correct):
    assert grade("mbpp", MBPP_RECORD, generation).correct is correct


def test_code_programs_are_built_as_documented():
    prog = humaneval.build_program(HE_RECORD["prompt"], "    return 1\n", HE_RECORD["test"], "add")
    assert prog.startswith(HE_RECORD["prompt"] + "    return 1") and prog.rstrip().endswith("check(add)")
    assert mbpp.build_program("def f(): pass", ["import os"], ["assert f() is None"]).startswith("import os")


# ---- Countdown ------------------------------------------------------------------------------

@pytest.mark.parametrize("generation,correct", [
    ("Let's see. The answer is: 44-15=29,79-29=50", True),
    ("The answer is: 44 - 15 = 29, 79 - 29 = 50.", True),
    ("The answer is: 79-(44-15)", True),                    # one expression
    ("The answer is: 79 - (44 - 15) = 50", True),
    ("The answer is: 44-15=29,79-29=51", False),            # wrong arithmetic
    ("The answer is: 44-15=30,79-30=49", False),            # wrong step
    ("The answer is: 79-29=50", False),                     # 29 was never made; numbers unused
    ("The answer is: 44+15=59,59-9=50", False),             # 9 is not available
    ("The answer is: 79-44=35,35+15=50,15-15=0", False),    # 15 used twice
    ("The answer is: 79-(44-15)+0", False),                 # 0 is not one of the numbers
    ("I could not find it.", False),
])
def test_countdown_grading(generation, correct):
    assert grade("countdown", {"input": "15,44,79,50", "output": "44-15=29,79-29=50"}, generation).correct is correct


def test_countdown_exact_division_and_fallback_extraction():
    rec = {"input": "3,85,5,30", "output": "85+5=90,90/3=30"}
    assert grade("countdown", rec, "85+5=90\n90/3=30").correct is False   # last line alone does not use 85, 5
    assert grade("countdown", rec, "so (85+5)/3 works").correct
    assert countdown.is_correct("7/2=7/2", [7, 2], 3) is False
    assert countdown.is_correct("(7*2+1)/5", [7, 2, 1, 5], 3)
    assert countdown.parse_input("1,2,3") == ([1, 2], 3)
    with pytest.raises(ValueError, match="integers"):
        countdown.parse_input("a,b")


# ---- Sudoku ---------------------------------------------------------------------------------

PUZZLE, SOLUTION = "3102200002100320", "3142243142131324"


@pytest.mark.parametrize("generation,correct", [
    ("3142\n2431\n4213\n1324\n</answer>", True),
    ("<answer>\n3142\n2431\n4213\n1324\n</answer>", True),
    ("3142 2431 4213 1324", True),
    ("3142\n2431\n4213\n132", False),                 # 15 digits
    ("3142\n2431\n4213\n1342\n</answer>", False),     # column clash
    ("1342\n2431\n4213\n3124\n</answer>", False),     # valid-looking but overwrites givens
])
def test_sudoku_grading(generation, correct):
    assert grade("sudoku", {"Puzzle": PUZZLE, "Solution": SOLUTION}, generation).correct is correct


def test_sudoku_csv_loading_and_errors(tmp_path):
    path = tmp_path / "sudoku.csv"
    path.write_text(f"Puzzle,Solution\n{PUZZLE},{SOLUTION}\n0000000000000000,\n")
    samples = get_eval_task("sudoku").load(str(path))
    assert [s.id for s in samples] == ["0", "1"] and samples[0].record["Puzzle"] == PUZZLE
    (tmp_path / "bad.csv").write_text("puzzle\n123\n")
    with pytest.raises(TaskFileError, match="Puzzle,Solution"):
        get_eval_task("sudoku").load(str(tmp_path / "bad.csv"))
    assert "<answer>" in get_eval_task("sudoku").prompt(samples[0], PromptOptions(fewshot=False))
    for puzzle, solution in sudoku.EXAMPLES:   # the few-shot examples are right
        assert sudoku.is_solution(puzzle, solution)


# ---- files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gsm8k", "math500", "humaneval", "mbpp", "countdown", "sudoku"])
def test_missing_file_names_the_path_and_the_format(tmp_path, name):
    task = get_eval_task(name)
    path = str(tmp_path / task.file_name)
    with pytest.raises(TaskFileError) as exc:
        task.load(path)
    assert path in str(exc.value) and task.file_format in str(exc.value)


def test_json_records_formats_and_field_errors(tmp_path):
    rows = [{"question": "a", "answer": "#### 1"}, {"question": "b", "answer": "#### 2"}]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "lines.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    for name in ("list.json", "lines.jsonl"):
        samples = get_eval_task("gsm8k").load(str(tmp_path / name), max_samples=1)
        assert [s.record["question"] for s in samples] == ["a"]
    (tmp_path / "missing.jsonl").write_text(json.dumps({"question": "a"}) + "\n")
    with pytest.raises(TaskFileError, match="lacks field"):
        get_eval_task("gsm8k").load(str(tmp_path / "missing.jsonl"))
    (tmp_path / "broken.jsonl").write_text('{"question": "a", "answer": "#### 1"}\n{oops\n')
    with pytest.raises(TaskFileError, match="broken.jsonl:2"):
        get_eval_task("gsm8k").load(str(tmp_path / "broken.jsonl"))


def test_registry():
    assert set(EVAL_TASKS) == {"gsm8k", "math500", "humaneval", "mbpp", "countdown", "sudoku",
                               "toy_multiplication", "toy_sudoku"}
    with pytest.raises(ValueError, match="unknown task"):
        get_eval_task("gsm9k")
    with pytest.raises(TaskFileError, match="reads no data file"):
        get_eval_task("toy_sudoku").load("x.jsonl")
    toy = get_eval_task("toy_sudoku")
    first = toy.load(None, seed=3, max_samples=5)
    assert toy.load(None, seed=3, max_samples=3) == first[:3]   # a longer run extends a shorter one
    assert gsm8k.reference_answer("x\n#### 42") == "42"
