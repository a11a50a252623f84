"""One offline command that builds, tests and benchmarks everything on a CUDA machine.

    python -m infogain gpu-check [--out DIR] [--budget SECONDS] [--only NAME,...]
    make gpu-check

It uses the Python that runs it (the machine's CUDA torch): no virtual environment, no pip, no
network. From the source checkout it runs, each stage in its own process with its own timeout and
all of them within one time budget (default 9 minutes), the stages of :data:`STAGES`, in order:

1. build the extension in place for the local GPU (``setup.py build_ext --inplace``) and check
   that the CUDA kernel is compiled in;
2. the GPU test lane (``pytest -m "gpu and not cuda_graph"``) and the CUDA-graph tests;
3. a correctness sweep of every Triton kernel against its torch reference at full vocabulary
   widths (126,464 and 152,064) and 1 / 8 / 256 / 4096 rows, in bf16, fp16 and fp32;
4. the benchmarks, last, so that a timeout cuts them and nothing else: bench_ops, bench_kv, the
   EIS and lm_head benches when present, the compat drop-ins (:mod:`infogain.compat`, bench_compat)
   against the formulations they replace, the shared-cache lookahead of LLaDA-8B, the end-to-end
   Info-Gain benchmark on a full-size random-weight LLaDA-8B (prefix and dual cache, block 32, 8 candidates), and Info-Gain decoding a
   full-size random-weight LLaDA2.0-mini (16B-parameter MoE, bf16; its exact block-causal prefix
   cache, block 32, 8 candidates, 64 tokens; tokens/s and NFE, without the naive baseline).

Every result is JSON under one folder (default ``benches/results/``; each benchmark gets its
``--out``), named with the GPU
(``ops-h200.json``, ``gpu-tests-h200.json``, ...), plus ``gpu-check-<gpu>.json`` (every stage's
status, time and output tail) and ``gpu-check-<gpu>.txt``, the one-screen summary also printed at
the end; each stage's record in ``gpu-check-<gpu>.json`` also holds the figures of its results
(``figures``: tokens/s, NFE, speedups, bandwidths per row). Exit status: 0 when every stage passed, 1 when one failed or timed out, 2 when there is
no CUDA device (nothing is run).

Adding a stage is one line in :data:`STAGES`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from typing import Dict, List, Optional

# The source checkout: python_api/infogain/apps/<this file> is four levels below it.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DEFAULT_BUDGET_S = 9 * 60


@dataclass
class Stage:
    """One step of the check. ``argv`` may use {python}, {out} and {gpu}; ``results`` names the
    JSON files it writes under {out}; ``requires`` a path (from the repository root) without which
    the stage is skipped."""
    name: str
    argv: List[str]
    timeout_s: int
    results: List[str] = field(default_factory=list)
    requires: Optional[str] = None


_PYTEST = ["{python}", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]

STAGES = [
    # --force: a CPU-only _C*.so copied along with the checkout must not count as up to date.
    Stage("build", ["{python}", "setup.py", "build_ext", "--inplace", "--force"], 300, requires="setup.py"),
    Stage("cuda-kernel", ["{python}", "-m", "infogain", "gpu-check", "--stage", "cuda-kernel", "--out", "{out}"], 60,
          results=["cuda-kernel-{gpu}.json"]),
    Stage("gpu-tests", _PYTEST + ["-m", "gpu and not cuda_graph", "--junitxml={out}/gpu-tests-{gpu}.xml"], 150,
          results=["gpu-tests-{gpu}.json"], requires="tests"),
    Stage("cuda-graph-tests", _PYTEST + ["-m", "cuda_graph", "--junitxml={out}/cuda-graph-tests-{gpu}.xml"], 90,
          results=["cuda-graph-tests-{gpu}.json"], requires="tests"),
    Stage("sweep", ["{python}", "-m", "infogain", "gpu-check", "--stage", "sweep", "--out", "{out}"], 120,
          results=["sweep-{gpu}.json"]),
    Stage("bench-ops", ["{python}", "benches/bench_ops.py", "--out", "{out}/ops-{gpu}.json"], 120,
          results=["ops-{gpu}.json"], requires="benches/bench_ops.py"),
    Stage("bench-kv", ["{python}", "benches/bench_kv.py", "--out", "{out}/kv-{gpu}.json"], 60,
          results=["kv-{gpu}.json"], requires="benches/bench_kv.py"),
    Stage("bench-eis", ["{python}", "benches/bench_eis.py", "--quick", "--out", "{out}/eis-{gpu}.json"], 60,
          results=["eis-{gpu}.json"], requires="benches/bench_eis.py"),
    Stage("bench-nucleus", ["{python}", "benches/bench_nucleus.py", "--out", "{out}/nucleus-{gpu}.json"], 60,
          results=["nucleus-{gpu}.json"], requires="benches/bench_nucleus.py"),
    Stage("bench-lm-head", ["{python}", "benches/bench_lm_head.py", "--out", "{out}/lm_head-{gpu}.json"], 60,
          results=["lm_head-{gpu}.json"], requires="benches/bench_lm_head.py"),
    Stage("bench-compat", ["{python}", "benches/bench_compat.py", "--out", "{out}/compat-{gpu}.json"], 60,
          results=["compat-{gpu}.json"], requires="benches/bench_compat.py"),
    Stage("bench-models-llada-8b", ["{python}", "benches/bench_models.py", "--random-weights", "llada-8b",
                                    "--repeats", "3", "--out", "{out}/models-{gpu}.json"], 90,
          results=["models-{gpu}.json"], requires="benches/bench_models.py"),
    Stage("bench-e2e-llada-8b", ["{python}", "-m", "infogain", "bench", "--random-weights", "llada-8b",
                                 "--cache", "prefix,dual", "--block-length", "32", "--candidates", "8",
                                 "--repeats", "1", "--out", "{out}/e2e-{gpu}.json"], 240,
          results=["e2e-{gpu}.json"]),
    # LLaDA2.0-mini: 16B parameters (about 32 GB in bf16) with its routed experts; the fast path only
    # (at random weights in bf16 a comparison of tokens with the naive sampler would hinge on ties).
    Stage("bench-e2e-llada2-mini", ["{python}", "-m", "infogain", "bench", "--random-weights", "llada2-mini",
                                    "--cache", "prefix", "--block-length", "32", "--candidates", "8",
                                    "--gen-length", "64", "--steps", "64", "--repeats", "1", "--no-naive",
                                    "--out", "{out}/e2e-llada2-mini-{gpu}.json"], 240,
          results=["e2e-llada2-mini-{gpu}.json"]),
]


def gpu_slug() -> str:
    """File-name tag of GPU 0 (``h200``, ``h100``, ``a100`` ... or the name, simplified)."""
    import torch

    from .._device import gpu_tag

    name = torch.cuda.get_device_name(0)
    return gpu_tag(name) or "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def _environment() -> Dict[str, str]:
    """The stages' environment: compiled Triton on CUDA tensors, whatever the caller's shell had set
    (``INFOGAIN_BACKEND=reference`` would make every stage test the torch reference on CUDA)."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env.pop("INFOGAIN_BACKEND", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.path.join(ROOT, "python_api"), env.get("PYTHONPATH"))
                                        if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _junit_to_json(xml_path: str, json_path: str) -> None:
    """pytest's JUnit XML as a small JSON record: counts and the failing tests with their message."""
    root = ElementTree.parse(xml_path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    failed = []
    for case in suite.iter("testcase"):
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            failed.append(dict(test=f"{case.get('classname')}::{case.get('name')}",
                               message=(problem.get("message") or "")[:500]))
    record = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    record.update(time_s=float(suite.get("time", 0.0)), failed=failed)
    with open(json_path, "w") as f:
        json.dump(record, f, indent=1)


def run_stage(stage: Stage, *, python: str, out: str, gpu: str, timeout_s: float) -> dict:
    fill = dict(python=python, out=out, gpu=gpu)
    argv = [a.format(**fill) for a in stage.argv]
    record = dict(stage=stage.name, command=" ".join(argv), results=[r.format(**fill) for r in stage.results])
    if stage.requires and not os.path.exists(os.path.join(ROOT, stage.requires)):
        return dict(record, status="skipped", reason=f"{stage.requires} not present", seconds=0.0)
    if timeout_s < 5:
        return dict(record, status="NOT RUN", reason="time budget spent", seconds=0.0)
    started = time.perf_counter()
    print(f"\n=== {stage.name} (timeout {timeout_s:.0f} s): {record['command']}", flush=True)
    try:
        proc = subprocess.run(argv, cwd=ROOT, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout_s)
        output, status = proc.stdout, "ok" if proc.returncode == 0 else f"FAIL (exit {proc.returncode})"
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout.decode(errors="replace") if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        status = "TIMEOUT"
    record.update(status=status, seconds=round(time.perf_counter() - started, 1), output_tail=output[-4000:])
    print(output[-3000:], flush=True)
    for junit in (a.split("=", 1)[1] for a in argv if a.startswith("--junitxml=")):
        if os.path.exists(junit):
            _junit_to_json(junit, junit[:-len(".xml")] + ".json")
            os.remove(junit)
    return record


# Figures of a benchmark row worth a line in the summary: bandwidths, speedups, tokens/s, NFE.
_FIGURE_MARKS = ("gbps", "gb_s", "of_peak", "speedup", "tok_s", "tokens_per_s")
_FIGURE_KEYS = ("nfe",)
_LABEL_KEYS = ("setting", "op", "impl", "sampler", "model", "variant", "cache", "shape", "rows")


def row_figures(row: dict) -> Dict[str, object]:
    """The headline figures of one benchmark row (``{key: value}``, possibly empty)."""
    return {k: v for k, v in row.items() if k in _FIGURE_KEYS or any(t in k.lower() for t in _FIGURE_MARKS)}


def stage_figures(out: str, record: dict) -> List[dict]:
    """``[{"result", "label", figures...}]``: the figures of every row of the stage's benchmark results
    (rows of ``{"rows": [...]}`` JSON files; other results give none)."""
    figures = []
    for name in record.get("results", []):
        data = _read_result(os.path.join(out, name))
        for row in (data or {}).get("rows", []):
            found = row_figures(row)
            if found:
                label = " ".join(str(row[k]) for k in _LABEL_KEYS if k in row)
                figures.append(dict(result=name, label=label, **found))
    return figures


def _read_result(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def headline(out: str, record: dict) -> str:
    """A few words on what a stage's JSON says (for the summary)."""
    words = []
    for name in record.get("results", []):
        data = _read_result(os.path.join(out, name))
        if data is None:
            continue
        if "tests" in data:
            passed = data["tests"] - data["failures"] - data["errors"] - data["skipped"]
            words.append(f"{passed} passed, {data['failures'] + data['errors']} failed, {data['skipped']} skipped")
            words += [f"  x {f['test']}" for f in data["failed"][:5]]
        elif "cases" in data:
            bad = [c for c in data["cases"] if not c["ok"]]
            words.append(f"{len(data['cases'])} cases, {len(bad)} off the reference")
            words += [f"  x {c['case']}: {c['problem']}" for c in bad[:5]]
        elif "rows" in data:
            words.append(f"{len(data['rows'])} rows -> {name}")
            for row in data["rows"][:12]:
                figures = row_figures(row)
                label = " ".join(str(row[k]) for k in _LABEL_KEYS if k in row)
                if figures:
                    words.append("  " + label + " " + " ".join(
                        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))
        else:
            words.append(name)
    return "\n".join(words)


def summary(records: List[dict], out: str, gpu: str, total_s: float) -> str:
    lines = [f"GPU check on {gpu}: {sum(r['status'] == 'ok' for r in records)}/{len(records)} stages ok, "
             f"{total_s:.0f} s; results in {out}"]
    for r in records:
        lines.append(f"{r['stage']:22} {r['status']:16} {r['seconds']:6.1f} s  {r.get('reason', '')}")
        detail = headline(out, r)
        if detail:
            lines += ["    " + line for line in detail.splitlines()]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- in-process stages


def stage_cuda_kernel(out: str, gpu: str) -> int:
    """The extension is importable and registers its CUDA kernel."""
    import torch

    import infogain_kernels._C  # noqa: F401
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("infogain::kv_block_replace", "CUDA")
    record = dict(extension=infogain_kernels._C.__file__, kv_block_replace_cuda=bool(has_cuda),
                  arch_list=torch.cuda.get_arch_list(), capability=list(torch.cuda.get_device_capability(0)))
    with open(os.path.join(out, f"cuda-kernel-{gpu}.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(record)
    return 0 if has_cuda else 1


SWEEP_VOCABS = (126464, 152064)
SWEEP_ROWS = (1, 8, 256, 4096)


def _sweep_ops():
    """name -> (function of a [rows, V] logits tensor returning tensors, integer outputs' tolerance).

    Integer outputs (token ids) may differ from the reference only at near-ties (the GPU's division
    and exponential differ from torch's in the last bits): at most 0.1% of them."""
    import torch

    import infogain_kernels as ik

    ops = {
        "token_stats": lambda x: tuple(ik.token_stats(x)),
        "lookahead_objective": lambda x: tuple(ik.lookahead_objective(
            x.view(1, *x.shape), torch.ones(1, x.shape[0], dtype=torch.bool, device=x.device),
            torch.zeros(1, device=x.device))),
        "gumbel_sample T=0": lambda x: tuple(ik.gumbel_sample(x, 4, 0.0)),
        "topk_logprobs k=5 top_p=0.9": lambda x: tuple(ik.topk_logprobs(x, 5, temperature=1.0, top_p=0.9)),
        "sample_logprob greedy top_p=0.9": lambda x: tuple(ik.sample_logprob(x, mode="greedy", top_p=0.9)),
    }
    if hasattr(ik, "lm_head_entropy"):
        ops["lm_head_entropy D=4096"] = lambda x: (ik.lm_head_entropy(*_head_inputs(x), check_values=False)[0],)
    if hasattr(ik, "step_stats"):
        ops["step_stats T=0 S=4"] = lambda x: tuple(ik.step_stats(x, num_samples=4, temperature=0.0))
    return ops


_HEADS = {}


def _head_inputs(logits):
    """(hidden [rows, 4096], weight [V, 4096]) of ``logits``' rows, dtype and vocabulary, the same
    tensors at every call (so that both backends see them). Hidden in {-3..3}/4 and weight in
    {-7..7}/64: every dot product is exact in float32 whatever the summation order, so the Triton
    tiles and cuBLAS return the same logits and only the float32 statistics differ (_sweep_bound)."""
    import torch

    rows, vocab = logits.shape
    key = (vocab, logits.dtype)
    if key not in _HEADS:
        generator = torch.Generator(device=logits.device).manual_seed(vocab)
        _HEADS.clear()   # one head in memory at a time
        _HEADS[key] = (
            (torch.randint(-3, 4, (4096, 4096), device=logits.device, generator=generator) / 4).to(logits.dtype),
            (torch.randint(-7, 8, (vocab, 4096), device=logits.device, generator=generator) / 64).to(logits.dtype))
    hidden, weight = _HEADS[key]
    return hidden[:rows], weight


def stage_sweep(out: str, gpu: str) -> int:
    """Every Triton path against the torch reference on the same CUDA tensors."""
    import torch

    from infogain_kernels import use_backend

    cases = []
    generator = torch.Generator(device="cuda").manual_seed(0)
    for vocab in SWEEP_VOCABS:
        base = torch.randn(max(SWEEP_ROWS), vocab, device="cuda", generator=generator) * 4.0
        base[:, : vocab // 16] = -float("inf")
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            full = base.to(dtype)
            for rows in SWEEP_ROWS:
                logits = full[:rows]
                for name, op in _sweep_ops().items():
                    case = f"{name} {str(dtype)[6:]} V={vocab} rows={rows}"
                    problem = None
                    try:
                        with use_backend("triton"):
                            got = op(logits)
                        with use_backend("reference"):
                            want = op(logits)
                        torch.cuda.synchronize()
                        problem = _compare(got, want, vocab)
                    except Exception as exc:  # reported per case; the sweep goes on
                        problem = f"{type(exc).__name__}: {exc}"[:300]
                    cases.append(dict(case=case, ok=problem is None, problem=problem))
                    print(("ok   " if problem is None else "FAIL ") + case + ("" if problem is None else f": {problem}"),
                          flush=True)
    with open(os.path.join(out, f"sweep-{gpu}.json"), "w") as f:
        json.dump(dict(vocabs=SWEEP_VOCABS, rows=SWEEP_ROWS, cases=cases), f, indent=1)
    return 0 if all(c["ok"] for c in cases) else 1


def _sweep_bound(vocab: int, want):
    """How far a float output of a kernel may be from the reference's on the same inputs: both compute
    in float32 from the same logits, and a statistic of a row sums V terms in tiles (a tree of at most
    log2 V levels, then at most V / 1024 partial results one after another), each step and each
    exp / log (2 ulp on the GPU) costing a relative 2**-24; the factor 4 covers exp, log, the division
    and the final subtraction. Errors scale with the magnitudes involved: the value itself and the
    output's typical size (mean |value|, e.g. about 11 nats for entropies, 1e-3 for probabilities)."""
    import math

    scale = want.abs().mean() if want.numel() else 0.0
    return 4 * (math.log2(vocab) + vocab / 1024) * 2.0 ** -24 * (scale + want.abs())


def _compare(got, want, vocab: int) -> Optional[str]:
    import torch

    for i, (g, w) in enumerate(zip(got, want)):
        if g.shape != w.shape or g.dtype != w.dtype:
            return f"output {i}: {tuple(g.shape)} {g.dtype} vs reference {tuple(w.shape)} {w.dtype}"
        if g.dtype.is_floating_point:
            finite = torch.isfinite(w)
            if not torch.equal(finite, torch.isfinite(g)):
                return f"output {i}: finite entries differ"
            err = (g[finite].double() - w[finite].double()).abs()
            bound = _sweep_bound(vocab, w[finite].double())
            if err.numel() and bool((err > bound).any()):
                worst = int((err / bound).argmax())
                return f"output {i}: error {float(err[worst]):.3g} above its bound {float(bound[worst]):.3g}"
        else:
            mismatched = float((g != w).double().mean()) if g.numel() else 0.0
            if mismatched > 1e-3:
                return f"output {i}: {mismatched:.2%} of the ids differ"
    return None


IN_PROCESS_STAGES = {"cuda-kernel": stage_cuda_kernel, "sweep": stage_sweep}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infogain gpu-check",
                                     description="Build, test and benchmark on a CUDA machine, offline.")
    parser.add_argument("--out", default=os.path.join(ROOT, "benches", "results"),
                        help="folder for every JSON result and the summary (default: benches/results)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="total seconds (default: 540)")
    parser.add_argument("--only", default=None, help="comma-separated stage names (default: all)")
    parser.add_argument("--stage", choices=sorted(IN_PROCESS_STAGES), help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if os.environ.get("INFOGAIN_BACKEND", "auto") not in ("", "auto"):
        print(f"infogain gpu-check: ignoring INFOGAIN_BACKEND={os.environ['INFOGAIN_BACKEND']} (it would test the "
              "torch reference instead of the kernels); the stages run without it.", file=sys.stderr)

    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        print("infogain gpu-check: no CUDA device is visible to this Python (torch.cuda.is_available() is False, "
              f"python: {sys.executable}). Run it on a machine with an NVIDIA GPU and a CUDA build of torch; "
              "nothing was run.", file=sys.stderr)
        return 2
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    gpu = gpu_slug()
    if args.stage:
        return IN_PROCESS_STAGES[args.stage](out, gpu)

    wanted = set(args.only.split(",")) if args.only else None
    stages = [s for s in STAGES if wanted is None or s.name in wanted]
    started = time.perf_counter()
    records = []
    for stage in stages:
        left = args.budget - (time.perf_counter() - started)
        records.append(run_stage(stage, python=sys.executable, out=out, gpu=gpu,
                                 timeout_s=min(stage.timeout_s, left)))
        figures = stage_figures(out, records[-1])
        if figures:
            records[-1]["figures"] = figures
        if stage.name == "build" and records[-1]["status"] != "ok":
            break   # nothing else can run against a broken build
    total = time.perf_counter() - started
    text = summary(records, out, gpu, total)
    with open(os.path.join(out, f"gpu-check-{gpu}.json"), "w") as f:
        json.dump(dict(gpu=gpu, total_s=round(total, 1), budget_s=args.budget, stages=records), f, indent=1)
    with open(os.path.join(out, f"gpu-check-{gpu}.txt"), "w") as f:
        f.write(text + "\n")
    print("\n" + text)
    return 0 if all(r["status"] in ("ok", "skipped") for r in records) and len(records) == len(stages) else 1


if __name__ == "__main__":
    sys.exit(main())
