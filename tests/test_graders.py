"""The GSM8K and MATH-500 graders against the field's own graders, run from the installed libraries.

GSM8K: lm-evaluation-harness's ``gsm8k`` task is read from the installed package (its YAML's filter list,
exact_match options and stop strings), its filters are built from lm-eval's own filter classes and its
exact_match is lm-eval's function; the task's ``strict-match`` and ``flexible-extract`` verdicts must equal
them on every (generation, reference) pair below. MATH-500: math-verify's ``parse``/``verify`` on the same
strings; the task's verdict must equal it on every case, and the cases the issue names are pinned.
"""
import os
import threading

import pytest

from infogain.tasks import PromptOptions, Sample, get_eval_task

OPTS = PromptOptions()

# ---- GSM8K vs lm-eval ---------------------------------------------------------------------------

# Reference ``answer`` fields in the public file's form (steps, then ``#### N``).
GSM_REFERENCES = [
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 1234",
    "He pays 3*6 = <<3*6=18>>18 dollars.\n#### 18",
    "The temperature drops 5 - 8 = <<5-8=-3>>-3 degrees.\n#### -3",
    "Each share is 10/4 = <<10/4=2.5>>2.5.\n#### 2.5",
]

# Realistic generations (few-shot continuations, chat-style answers, broken ones).
GSM_GENERATIONS = [
    "She sold 24 in May, so 48 + 24 = 72 in total. #### 72",
    "#### 1234",
    "#### 1,234",
    "#### 1234.",
    "#### 1234.00",
    "#### $1234",
    "#### $1,234",
    "####1234",
    "#### 1234\n\nQuestion: Tom has 3 apples. How many?\nAnswer: #### 3",
    "The answer is 1234.",
    "The answer is 1,234.",
    "The answer is $1,234.",
    "The answer is 1234 dollars.",
    "So the total is \\boxed{1234}.",
    "He spends $18.",
    "He spends $18.00 in total.",
    "3 * 6 = 18, so he pays 18 dollars. #### 18",
    "#### 18 dollars",
    "#### 18\n#### 19",
    "First 18, then 20, finally 18 - 2 = 16.",
    "18 apples and 2 pears",
    "It drops to -3 degrees. #### -3",
    "It drops to - 3 degrees.",
    "The change is -3.",
    "#### -3.0",
    "#### - 3",
    "The result is 3 below zero: #### 3",
    "Each gets 2.5 cookies. #### 2.5",
    "Each gets 2.50 cookies.",
    "Each gets 5/2 = 2.5",
    "Each gets .5 more than 2, i.e. 2.5.",
    "The answer is 2,5",
    "I do not know.",
    "",
    "####",
    "#### ",
    "#### x",
    "The numbers 1, 2 and 3",
    "Total: 1234...",
    "1234!",
    "Answer: 12,34",
    "It costs $1,234.50, so the answer is #### 1234",
    "Question: another one?",
    "Step 1: 1000 + 234 = 1234\nStep 2: done\n#### 1234</s>garbage 5",
    "The answer is 18<|im_end|>\n#### 7",
    "a 7 b",
    "7",
    "72.",
    "3-2",
    "1e3",
]


def _lm_eval_gsm8k():
    """lm-eval's gsm8k task (YAML), its filter pipelines built from lm-eval's own classes, and its metric."""
    pytest.importorskip("lm_eval")
    import lm_eval
    import yaml
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter
    from lm_eval.filters.selection import TakeFirstFilter

    with open(os.path.join(os.path.dirname(lm_eval.__file__), "tasks", "gsm8k", "gsm8k.yaml")) as fh:
        spec = yaml.safe_load(fh)
    builders = {"regex": RegexFilter, "take_first": TakeFirstFilter}
    pipelines = {}
    for entry in spec["filter_list"]:
        steps = [builders[f["function"]](**{k: v for k, v in f.items() if k != "function"}) for f in entry["filter"]]
        pipelines[entry["name"]] = steps
    (metric,) = spec["metric_list"]
    options = {k: metric[k] for k in ("ignore_case", "ignore_punctuation", "regexes_to_ignore")}
    return spec, pipelines, lambda prediction, gold: exact_match_hf_evaluate(
        predictions=[prediction], references=[gold], **options)["exact_match"] == 1.0


@pytest.fixture(scope="module")
def lm_eval_gsm8k():
    return _lm_eval_gsm8k()


def _cut_at_until(text, until):
    ends = [text.find(stop) for stop in until if stop in text]
    return text[:min(ends)] if ends else text


def _lm_eval_verdicts(spec, pipelines, exact_match, generation, reference):
    text = _cut_at_until(generation, spec["generation_kwargs"]["until"])
    verdicts = {}
    for name, steps in pipelines.items():
        responses = [[text]]
        for step in steps:
            responses = list(step.apply(responses, [{"answer": reference}]))
        verdicts[name] = exact_match(responses[0], reference)
    return verdicts


def test_gsm8k_uses_lm_evals_stops_and_metric_names(lm_eval_gsm8k):
    spec, pipelines, _ = lm_eval_gsm8k
    task = get_eval_task("gsm8k")
    assert set(task.stops) == set(spec["generation_kwargs"]["until"])
    assert set(pipelines) == {"strict-match", "flexible-extract"} and task.headline_metric in pipelines
    assert spec["doc_to_text"].replace("{{question}}", "{question}") == "Question: {question}\nAnswer:"


def test_gsm8k_verdicts_equal_lm_evals_on_every_case(lm_eval_gsm8k):
    spec, pipelines, exact_match = lm_eval_gsm8k
    task = get_eval_task("gsm8k")
    disagreements, checked = [], 0
    for reference in GSM_REFERENCES:
        for generation in GSM_GENERATIONS:
            ours = task.grade(Sample(id="0", record={"question": "q", "answer": reference}), generation, OPTS)
            theirs = _lm_eval_verdicts(spec, pipelines, exact_match, generation, reference)
            checked += 1
            if dict(ours.metrics) != theirs or ours.correct != theirs[task.headline_metric]:
                disagreements.append((generation, reference, dict(ours.metrics), theirs))
    assert checked == len(GSM_REFERENCES) * len(GSM_GENERATIONS) >= 150
    assert not disagreements, disagreements


def test_gsm8k_cases_both_ways():
    """A few verdicts written out (so a change of lm-eval's definitions shows here as well)."""
    task = get_eval_task("gsm8k")
    record = {"question": "q", "answer": "steps\n#### 1234"}
    verdict = lambda g: dict(task.grade(Sample(id="0", record=record), g, OPTS).metrics)
    assert verdict("#### 1,234") == {"flexible-extract": True, "strict-match": True}
    assert verdict("The answer is $1,234.") == {"flexible-extract": True, "strict-match": False}
    assert verdict("#### 1234.00") == {"flexible-extract": False, "strict-match": False}
    assert verdict("#### 1234 and 5 more") == {"flexible-extract": False, "strict-match": True}
    assert verdict("no number") == {"flexible-extract": False, "strict-match": False}


# ---- MATH-500 vs math-verify --------------------------------------------------------------------

PMATRIX = "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}"

# (reference answer as in the public file, generation)
MATH_CASES = [
    ("18.90", "The total is \\boxed{\\$18.90}."),
    ("\\$18.90", "The total is \\boxed{18.90}."),
    ("18.90", "The book costs \\$18.90."),                       # a dollar amount outside math mode
    ("18.90", "The final answer is $18.9$."),
    (PMATRIX, "So $\\boxed{\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}}$"),
    (PMATRIX, "\\boxed{\\begin{pmatrix} 1 & 2 \\\\ 3 & 5 \\end{pmatrix}}"),
    ("1, -2", "The solutions are $x = -2$ and $x = 1$, so \\boxed{-2, 1}."),
    ("-2, 1", "\\boxed{1,-2}"),
    ("1, -2", "\\boxed{1, 2}"),
    ("\\frac{14}{3}", "The final answer is $\\frac{14}{3}$."),
    ("\\frac{14}{3}", "So the answer is 14/3"),
    ("\\frac{14}{3}", "Therefore the answer is $4\\frac{2}{3}$."),
    ("\\frac{14}{3}", "We get \\boxed{4} wait no, \\boxed{\\dfrac{14}{3}}"),
    ("\\frac{14}{3}", "\\boxed{\\frac{14}{3}} hmm, \\boxed{5}"),
    ("\\frac{14}{3}", "It is about \\boxed{4.67}."),
    ("\\frac{1}{2}", "\\boxed{0.5}"),
    ("\\frac{1}{2}", "\\boxed{\\frac12}"),
    ("2\\sqrt{3}", "\\boxed{\\sqrt{12}}"),
    ("\\frac{\\sqrt{3}}{2}", "The answer is $\\dfrac{\\sqrt3}{2}$."),
    ("(3, \\frac{\\pi}{2})", "\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}"),
    ("(3, \\frac{\\pi}{2})", "\\boxed{\\left( \\frac{\\pi}{2}, 3 \\right)}"),
    ("[1, 2)", "\\boxed{(1, 2)}"),
    ("(-\\infty, 0) \\cup (1, \\infty)", "\\boxed{(-\\infty,0)\\cup(1,\\infty)}"),
    ("x \\in [-2, 7]", "\\boxed{[-2,7]}"),
    ("10^\\circ", "\\boxed{10}"),
    ("90^\\circ", "The angle is $90^{\\circ}$."),
    ("5\\%", "\\boxed{5}"),
    ("1,000", "\\boxed{1000}"),
    ("12 \\text{ cm}", "\\boxed{12}"),
    ("\\text{(B)}", "The correct option is \\boxed{B}."),
    ("\\text{Evelyn}", "\\boxed{\\text{Evelyn}}"),
    ("\\text{Evelyn}", "\\boxed{\\text{Tom}}"),
    ("y = 2x + 3", "\\boxed{y=3+2x}"),
    ("x^2+2x+1", "\\boxed{(x+1)^2}"),
    ("p - q", "\\boxed{-q+p}"),
    ("\\infty", "\\boxed{\\infty}"),
    ("-3", "The answer is $-3$."),
    ("-3", "The answer is $3$."),
    ("2", "The answer is 2"),                                      # no \boxed{}
    ("2", "First I found 3, but the final answer is 2."),
    ("2", "I could not solve it."),
    ("2", ""),
    ("2", "\\boxed{unclosed"),
    ("2^{10}", "\\boxed{1024}"),
    ("\\frac{1}{3}", "\\boxed{0.33}"),
    ("E", "\\boxed{e}"),
    ("9", "\\boxed{9^9^9}"),
]


@pytest.fixture(scope="module")
def math_verify():
    return pytest.importorskip("math_verify")


def _reference_verdict(mv, answer, generation):
    """math-verify as its documentation shows it: the gold in math mode, the generation as written."""
    return mv.verify(mv.parse(f"${answer}$"), mv.parse(generation))


def _grade_math(answer, generation):
    return get_eval_task("math500").grade(Sample(id="0", record={"problem": "p", "answer": answer}), generation, OPTS)


def test_math_verdicts_equal_math_verifys_on_every_case(math_verify):
    disagreements = [(a, g) for a, g in MATH_CASES
                     if _grade_math(a, g).correct != _reference_verdict(math_verify, a, g)]
    assert len(MATH_CASES) >= 40 and not disagreements, disagreements


@pytest.mark.parametrize("answer,generation,correct", [
    ("18.90", "The total is \\boxed{\\$18.90}.", True),
    (PMATRIX, "So $\\boxed{\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}}$", True),
    ("1, -2", "The solutions are $x = -2$ and $x = 1$, so \\boxed{-2, 1}.", True),
    ("2", "The answer is 2", True),
    ("2", "I could not solve it.", False),
    ("\\frac{14}{3}", "\\boxed{\\frac{14}{3}} hmm, \\boxed{5}", False),
])
def test_math_cases_the_issue_names(math_verify, answer, generation, correct):
    assert _grade_math(answer, generation).correct is correct


def test_math_grading_off_the_main_thread_gives_the_same_verdicts(math_verify):
    """math-verify's signal-based time limit cannot run off the main thread; grading must still work there."""
    cases = MATH_CASES[:8]
    found = {}
    thread = threading.Thread(target=lambda: found.update(
        {i: _grade_math(a, g).correct for i, (a, g) in enumerate(cases)}))
    thread.start()
    thread.join(120)
    assert found == {i: _grade_math(a, g).correct for i, (a, g) in enumerate(cases)}


def test_math_refuses_to_start_without_math_verify(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "math_verify", None)   # import math_verify now raises ImportError
    path = tmp_path / "math500.jsonl"
    path.write_text('{"problem": "1+1", "answer": "2"}\n')
    with pytest.raises(ValueError, match="math-verify.*pip install"):
        get_eval_task("math500").load(str(path))
