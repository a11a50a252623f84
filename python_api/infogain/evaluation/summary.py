"""The summary of an evaluation run (accuracy with its confidence interval, honest speed figures) and
the side-by-side comparison of two runs.

Definitions (all sums run over the graded problems of the run):

* ``accuracy`` = correct / problems, with the 95% Wilson score interval, by the
  task's headline metric, named in ``headline_metric`` (GSM8K: lm-eval's
  ``flexible-extract``; MATH-500: ``math-verify``; other tasks: ``accuracy``).
  ``metrics`` holds every metric the task grades by, the headline first, each
  with its own count, accuracy and interval (GSM8K adds ``strict-match``);
  ``grader`` says which grader (and library version) gave the verdicts;
  ``code_sandbox`` (code tasks) which isolation held the graded programs.
* ``generated_tokens``: the generation region of every problem (``gen_length``
  each; no prompt, no padding). It splits into ``decoded_tokens`` (committed by
  the sampler) and ``eos_fill_tokens`` (masks after a problem's first EOS,
  filled with EOS without any model call); the speed figures count decoded
  tokens only, and report the EOS fill separately.
* ``nfe``: model forward passes per problem, a lookahead batch counted once
  (with ``batch_size`` > 1 a batched forward counts once for each problem in it).
* ``tpf`` (tokens per forward) = decoded tokens / forward passes
  (``tpf_with_eos_fill`` counts the EOS fill too, as some papers do).
* ``tokens_per_s`` = decoded tokens / generation seconds, where generation
  seconds are the wall times of the ``generate`` calls summed over every
  process (device-seconds): a per-device throughput, independent of how many
  processes ran and of resumes.
* Timing scopes: ``generation_s``, ``tokens_per_s`` and ``wall_s`` cover every
  graded problem, over all the invocations that graded them (a resumed run
  adds up). ``wall_s`` sums the ``invocations``' wall times: the last one from
  its start to the summary, each earlier one (killed ones too) from the moment
  it rewrote ``run.json`` to its last graded problem (records written before
  invocations were stamped count their generation seconds instead). With one process, ``wall_s`` >=
  ``generation_s``. ``last_invocation`` holds the last invocation's own
  figures (``problems``, ``wall_s``, ``generation_s``, ``tokens_per_s``);
  ``samples_this_invocation`` repeats its ``problems``.
* ``bypass_rate`` = bypass-committed tokens / decoded tokens;
  ``cumulative_entropy`` = the mean over problems of Σ_t C(a_t).
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..tasks import get_eval_task, sandbox

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> Tuple[float, float]:
    """The Wilson score interval of a binomial proportion (``(0, 1)`` for ``n == 0``)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(s1: int, n1: int, s2: int, n2: int, z: float = Z95) -> Tuple[float, float, float]:
    """``p1 - p2`` and its 95% interval by Newcombe's hybrid score method (two independent Wilson intervals).

    For two runs on the same problems the runs are paired; this interval ignores the pairing and is then
    conservative (wider) whenever the runs' errors are positively correlated, as they usually are.
    """
    p1, p2 = (s1 / n1 if n1 else 0.0), (s2 / n2 if n2 else 0.0)
    l1, u1 = wilson_interval(s1, n1, z)
    l2, u2 = wilson_interval(s2, n2, z)
    d = p1 - p2
    lower = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    upper = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, max(-1.0, lower), min(1.0, upper)


def _metric(correct: int, n: int) -> dict:
    lo, hi = wilson_interval(correct, n)
    return {"problems": n, "correct": correct, "accuracy": correct / n if n else 0.0, "accuracy_ci95": [lo, hi]}


def metric_summaries(records: Sequence[dict], headline: str) -> Dict[str, dict]:
    """name -> counts, accuracy and interval of each metric, the headline (``correct``) first.

    A secondary metric counts the records that carry it (records written before a task reported it do not).
    """
    metrics = {headline: _metric(sum(1 for r in records if r["correct"]), len(records))}
    names: List[str] = []
    for r in records:
        names += [m for m in r.get("metrics") or {} if m != headline and m not in names]
    for name in names:
        verdicts = [bool(r["metrics"][name]) for r in records if name in (r.get("metrics") or {})]
        metrics[name] = _metric(sum(verdicts), len(verdicts))
    return metrics


CODE_TASKS = ("humaneval", "mbpp")


def _task_grading(task: Optional[str]) -> Tuple[str, str]:
    """(headline metric, grader) of a task name (a task this version does not know: plain accuracy)."""
    try:
        found = get_eval_task(task)
    except (TypeError, ValueError):
        return "accuracy", "unknown"
    return found.headline_metric, found.grader()


def _generation_seconds(records: Iterable[dict]) -> float:
    # Each generate call's wall time is stored with every problem of its batch: count it once (per invocation: a
    # batch cut short by a kill is generated again by the next one).
    calls = {((r.get("invocation") or {}).get("started"), r["batch"]): r["batch_stats"]["wall_s"] for r in records}
    return sum(calls.values(), 0.0)


def _decoded_tokens(records: Iterable[dict]) -> int:
    return sum(r["stats"]["generated_tokens"] - r["stats"]["tokens"].get("eos_fill", 0) for r in records)


def invocation_timing(records: Sequence[dict], wall_s: float, samples_this_invocation: int) -> dict:
    """The wall seconds of every invocation that worked on the run, and the last invocation's own figures.

    ``wall_s`` is the last invocation's time from its start to the summary. Records are grouped by their
    ``invocation`` stamp (see :class:`.results.RankWriter`); when the last invocation graded problems, the
    latest group is its own.
    """
    groups: Dict[str, List[dict]] = {}
    unstamped = []
    for r in records:
        if "invocation" in r:
            groups.setdefault(r["invocation"]["started"], []).append(r)
        else:
            unstamped.append(r)
    # ISO times of one clock sort as they happened.
    walls = [max(r["invocation"]["elapsed_s"] for r in groups[k]) for k in sorted(groups)]
    last = groups[max(groups)] if samples_this_invocation and groups else []
    if last:
        walls[-1] = max(walls[-1], wall_s)
    else:
        walls.append(wall_s)
    if unstamped:
        walls.insert(0, _generation_seconds(unstamped))
    generation_s = _generation_seconds(last)
    return {"wall_s": sum(walls), "invocations": len(walls),
            "last_invocation": {"problems": samples_this_invocation, "wall_s": wall_s,
                                "generation_s": generation_s,
                                "tokens_per_s": _decoded_tokens(last) / generation_s if generation_s > 0 else 0.0}}


def summarize(records: Sequence[dict], *, config: dict, config_hash: str, expected: int,
              environments: Sequence[dict], wall_s: float, samples_this_invocation: int) -> dict:
    """The summary dict of a run from its merged per-problem ``records`` (see the module docstring); ``wall_s``
    and ``samples_this_invocation`` are the last invocation's (start to summary)."""
    n = len(records)
    headline, grader = _task_grading(config.get("task"))
    metrics = metric_summaries(records, headline)
    correct = metrics[headline]["correct"]
    lo, hi = metrics[headline]["accuracy_ci95"]
    tokens: Dict[str, int] = {}
    for r in records:
        for kind, count in r["stats"]["tokens"].items():
            tokens[kind] = tokens.get(kind, 0) + count
    generated = sum(r["stats"]["generated_tokens"] for r in records)
    eos_fill = tokens.get("eos_fill", 0)
    decoded = generated - eos_fill
    nfe = sum(r["stats"]["nfe"] for r in records)
    generation_s = _generation_seconds(records)
    timing = invocation_timing(records, wall_s, samples_this_invocation)
    entropy = sum(r["stats"]["cumulative_entropy"] for r in records)
    return {
        "task": config.get("task"), "sampler": config.get("sampler"), "model": config.get("model"),
        "config_hash": config_hash,
        "problems": n, "expected_problems": expected, "complete": n == expected,
        "headline_metric": headline, "grader": grader,
        # Which isolation held the graded programs of a code task (it depends on the kernel).
        "code_sandbox": sandbox.isolation() if config.get("task") in CODE_TASKS else None,
        "correct": correct, "accuracy": correct / n if n else 0.0, "accuracy_ci95": [lo, hi],
        "metrics": metrics,
        "generated_tokens": generated, "decoded_tokens": decoded, "eos_fill_tokens": eos_fill,
        "tokens_by_kind": tokens,
        "nfe": nfe, "nfe_per_problem": nfe / n if n else 0.0,
        "tpf": decoded / nfe if nfe else 0.0,
        "tpf_with_eos_fill": generated / nfe if nfe else 0.0,
        "candidate_evals": sum(r["stats"]["candidate_evals"] for r in records),
        "bypass_rate": tokens.get("bypass", 0) / decoded if decoded else 0.0,
        "cumulative_entropy": entropy / n if n else 0.0,
        "generation_s": generation_s,
        "tokens_per_s": decoded / generation_s if generation_s > 0 else 0.0,
        "eos_fill_tokens_per_s": eos_fill / generation_s if generation_s > 0 else 0.0,
        "wall_s": timing["wall_s"], "invocations": timing["invocations"],
        "last_invocation": timing["last_invocation"], "samples_this_invocation": samples_this_invocation,
        "config": config,
        "environment": {"world_size": len(environments), "processes": list(environments)},
    }


_COLUMNS = ("task", "sampler", "problems", "metric", "accuracy (95% CI)", "tok/s", "TPF", "NFE/problem", "bypass",
            "cum. entropy", "EOS fill", "wall s")


def run_metrics(s: dict) -> Dict[str, dict]:
    """The summary's metrics, headline first (a summary written before metrics were recorded: its accuracy)."""
    if "metrics" in s:
        return s["metrics"]
    return {"accuracy": {"problems": s["problems"], "correct": s["correct"], "accuracy": s["accuracy"],
                         "accuracy_ci95": s["accuracy_ci95"]}}


def _accuracy_text(m: dict) -> str:
    lo, hi = m["accuracy_ci95"]
    return f"{m['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"


def _rows(s: dict) -> List[List[str]]:
    """One row per metric: the headline's carries the run's figures, the others only their accuracy."""
    (headline, first), *others = run_metrics(s).items()
    rows = [[str(s["task"]), str(s["sampler"]), f"{s['problems']}/{s['expected_problems']}", headline,
             _accuracy_text(first), f"{s['tokens_per_s']:.1f}", f"{s['tpf']:.2f}", f"{s['nfe_per_problem']:.1f}",
             f"{s['bypass_rate']:.3f}", f"{s['cumulative_entropy']:.2f}", str(s["eos_fill_tokens"]),
             f"{s['wall_s']:.1f}"]]
    for name, m in others:
        rows.append(["", "", f"{m['problems']}/{s['expected_problems']}", name, _accuracy_text(m)]
                    + [""] * (len(_COLUMNS) - 5))
    return rows


def _render(prefixed_rows: Sequence[Tuple[str, List[str]]], header_prefix: str = "") -> List[str]:
    """Aligned lines of the header, a rule and ``rows``, each line after its prefix."""
    lines = [(header_prefix, list(_COLUMNS))] + list(prefixed_rows)
    widths = [max(len(line[i]) for _, line in lines) for i in range(len(_COLUMNS))]
    out = [prefix + "  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for prefix, line in lines]
    out.insert(1, lines[0][0] + "  ".join("-" * w for w in widths))
    return out


def format_table(summaries: Sequence[dict]) -> str:
    """Aligned text table, one block per summary: its headline metric's line, then one line per other metric."""
    return "\n".join(_render([("", row) for s in summaries for row in _rows(s)]))


def read_summary(directory: str) -> dict:
    path = os.path.join(directory, "summary.json")
    if not os.path.isfile(path):
        raise ValueError(f"{directory!r} has no summary.json (is it an eval output folder of a finished run?)")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _ratio(a: float, b: float) -> Optional[float]:
    return a / b if b else None


def _difference(a: dict, b: dict) -> dict:
    d, lo, hi = difference_interval(a["correct"], a["problems"], b["correct"], b["problems"])
    return {"accuracy": [a["accuracy"], b["accuracy"]], "difference": d, "ci95": [lo, hi],
            "significant": lo > 0 or hi < 0}


def compare(first: dict, second: dict) -> dict:
    """Run 1 vs run 2: the headline accuracy's difference (1 - 2) with its 95% interval, the same for every
    other metric both runs report, and speed ratios (1 / 2)."""
    m1, m2 = run_metrics(first), run_metrics(second)
    headlines = [next(iter(m1)), next(iter(m2))]
    headline = _difference(m1[headlines[0]], m2[headlines[1]])
    return {
        "headline_metric": headlines[0] if headlines[0] == headlines[1] else headlines,
        "accuracy": headline["accuracy"],
        "accuracy_difference": headline["difference"], "accuracy_difference_ci95": headline["ci95"],
        "significant": headline["significant"],
        "other_metrics": {name: _difference(m1[name], m2[name])
                          for name in m1 if name in m2 and name not in headlines},
        "tokens_per_s_ratio": _ratio(first["tokens_per_s"], second["tokens_per_s"]),
        "tpf_ratio": _ratio(first["tpf"], second["tpf"]),
        "nfe_ratio": _ratio(first["nfe_per_problem"], second["nfe_per_problem"]),
        "same_task": first["task"] == second["task"],
        "same_problems": first["problems"] == second["problems"],
    }


def _difference_line(label: str, diff: dict) -> str:
    lo, hi = diff["ci95"]
    return (f"{label} [1] - [2]: {diff['difference']:+.3f}  95% CI [{lo:+.3f}, {hi:+.3f}]"
            + ("" if diff["significant"] else "  (not significant)"))


def format_comparison(dirs: Sequence[str], first: dict, second: dict, result: dict) -> str:
    rows = [(prefix if i == 0 else "    ", row) for prefix, s in (("[1] ", first), ("[2] ", second))
            for i, row in enumerate(_rows(s))]
    lines = _render(rows, header_prefix="    ")
    fmt = lambda r: "n/a" if r is None else f"{r:.2f}x"
    headline = result["headline_metric"]
    headline_diff = {"difference": result["accuracy_difference"], "ci95": result["accuracy_difference_ci95"],
                     "significant": result["significant"]}
    lines.append("")
    lines.append(f"[1] {dirs[0]}\n[2] {dirs[1]}")
    if isinstance(headline, str):
        lines.append(f"headline metric: {headline}")
    else:
        lines.append(f"warning: the runs' headline metrics differ ([1] {headline[0]}, [2] {headline[1]})")
    lines.append(_difference_line("accuracy", headline_diff))
    lines += [_difference_line(name, diff) for name, diff in result["other_metrics"].items()]
    lines.append(f"speed [1] / [2]: tokens/s {fmt(result['tokens_per_s_ratio'])}, TPF {fmt(result['tpf_ratio'])}, "
                 f"NFE per problem {fmt(result['nfe_ratio'])}")
    if not result["same_task"]:
        lines.append("warning: the runs are on different tasks")
    elif not result["same_problems"]:
        lines.append("warning: the runs graded different numbers of problems")
    return "\n".join(lines)
