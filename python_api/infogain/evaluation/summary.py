"""The summary of an evaluation run (accuracy with its confidence interval, honest speed figures) and
the side-by-side comparison of two runs.

Definitions (all sums run over the graded problems of the run):

* ``accuracy`` = correct / problems, with the 95% Wilson score interval.
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
  processes ran and of resumes. ``wall_s`` is the elapsed time of the last
  invocation (start to summary), and ``samples_this_invocation`` what it did.
* ``bypass_rate`` = bypass-committed tokens / decoded tokens;
  ``cumulative_entropy`` = the mean over problems of Σ_t C(a_t).
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

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


def summarize(records: Sequence[dict], *, config: dict, config_hash: str, expected: int,
              environments: Sequence[dict], wall_s: float, samples_this_invocation: int) -> dict:
    """The summary dict of a run from its merged per-problem ``records`` (see the module docstring)."""
    n = len(records)
    correct = sum(1 for r in records if r["correct"])
    lo, hi = wilson_interval(correct, n)
    tokens: Dict[str, int] = {}
    for r in records:
        for kind, count in r["stats"]["tokens"].items():
            tokens[kind] = tokens.get(kind, 0) + count
    generated = sum(r["stats"]["generated_tokens"] for r in records)
    eos_fill = tokens.get("eos_fill", 0)
    decoded = generated - eos_fill
    nfe = sum(r["stats"]["nfe"] for r in records)
    # Each generate call's wall time is stored with every problem of its batch: count it once.
    batch_seconds = {r["batch"]: r["batch_stats"]["wall_s"] for r in records}
    generation_s = sum(batch_seconds.values())
    entropy = sum(r["stats"]["cumulative_entropy"] for r in records)
    return {
        "task": config.get("task"), "sampler": config.get("sampler"), "model": config.get("model"),
        "config_hash": config_hash,
        "problems": n, "expected_problems": expected, "complete": n == expected,
        "correct": correct, "accuracy": correct / n if n else 0.0, "accuracy_ci95": [lo, hi],
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
        "wall_s": wall_s, "samples_this_invocation": samples_this_invocation,
        "config": config,
        "environment": {"world_size": len(environments), "processes": list(environments)},
    }


_COLUMNS = ("task", "sampler", "problems", "accuracy (95% CI)", "tok/s", "TPF", "NFE/problem", "bypass",
            "cum. entropy", "EOS fill", "wall s")


def _row(s: dict) -> List[str]:
    lo, hi = s["accuracy_ci95"]
    return [str(s["task"]), str(s["sampler"]), f"{s['problems']}/{s['expected_problems']}",
            f"{s['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]", f"{s['tokens_per_s']:.1f}", f"{s['tpf']:.2f}",
            f"{s['nfe_per_problem']:.1f}", f"{s['bypass_rate']:.3f}", f"{s['cumulative_entropy']:.2f}",
            str(s["eos_fill_tokens"]), f"{s['wall_s']:.1f}"]


def format_table(summaries: Sequence[dict]) -> str:
    """Aligned text table, one line per summary."""
    lines = [list(_COLUMNS)] + [_row(s) for s in summaries]
    widths = [max(len(line[i]) for line in lines) for i in range(len(_COLUMNS))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def read_summary(directory: str) -> dict:
    path = os.path.join(directory, "summary.json")
    if not os.path.isfile(path):
        raise ValueError(f"{directory!r} has no summary.json (is it an eval output folder of a finished run?)")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _ratio(a: float, b: float) -> Optional[float]:
    return a / b if b else None


def compare(first: dict, second: dict) -> dict:
    """Run 1 vs run 2: accuracy difference (1 - 2) with its 95% interval and speed ratios (1 / 2)."""
    d, lo, hi = difference_interval(first["correct"], first["problems"], second["correct"], second["problems"])
    return {
        "accuracy": [first["accuracy"], second["accuracy"]],
        "accuracy_difference": d, "accuracy_difference_ci95": [lo, hi],
        "significant": lo > 0 or hi < 0,
        "tokens_per_s_ratio": _ratio(first["tokens_per_s"], second["tokens_per_s"]),
        "tpf_ratio": _ratio(first["tpf"], second["tpf"]),
        "nfe_ratio": _ratio(first["nfe_per_problem"], second["nfe_per_problem"]),
        "same_task": first["task"] == second["task"],
        "same_problems": first["problems"] == second["problems"],
    }


def format_comparison(dirs: Sequence[str], first: dict, second: dict, result: dict) -> str:
    table = format_table([first, second]).splitlines()
    lines = [prefix + line for prefix, line in zip(("    ", "    ", "[1] ", "[2] "), table)]
    lo, hi = result["accuracy_difference_ci95"]
    fmt = lambda r: "n/a" if r is None else f"{r:.2f}x"
    lines.append("")
    lines.append(f"[1] {dirs[0]}\n[2] {dirs[1]}")
    lines.append(f"accuracy [1] - [2]: {result['accuracy_difference']:+.3f}  95% CI [{lo:+.3f}, {hi:+.3f}]"
                 + ("" if result["significant"] else "  (not significant)"))
    lines.append(f"speed [1] / [2]: tokens/s {fmt(result['tokens_per_s_ratio'])}, TPF {fmt(result['tpf_ratio'])}, "
                 f"NFE per problem {fmt(result['nfe_ratio'])}")
    if not result["same_task"]:
        lines.append("warning: the runs are on different tasks")
    elif not result["same_problems"]:
        lines.append("warning: the runs graded different numbers of problems")
    return "\n".join(lines)
