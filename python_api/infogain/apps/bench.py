"""End-to-end benchmark: ``python -m infogain bench``.

For every decoding setting x sampler x cache mode it runs the project's sampler
and, in the same process and on the same prompts, the naive implementation of
the same algorithm (:mod:`infogain.samplers.naive`: per-candidate cache copies, unfused
float32 ops, host syncs), and reports tokens/s of both, their ratio, NFE, bypass
rate, the steps of each kind, the lookahead premium (mean wall time of a step
that runs the lookahead / that of a plain window step, same run) and the sampler
overhead (fraction of the run's time spent outside the model forwards and the lookahead's fused
LM head, which replaces the model's head there). The settings
(``--settings``, :data:`SETTINGS`) include ones where the lookahead really runs:
threshold 1.0 and the demo's settings.

Model sources (exactly one):

* default: the toy model shipped with the package (``infogain.models.toy_model_path()``);
* ``--model PATH``: any checkpoint directory :func:`infogain.models.load` reads;
* ``--random-weights PRESET`` (llada-8b, dream-7b, sdar-8b, llada2-mini, sdar-moe-30b-a3b,
  fast-dllm-v2-7b: every preset of :func:`infogain.models.preset_config`): the full-size
  architecture with random weights (speed only; bf16 on CUDA by default); ``--config
  KEY=VALUE,...`` overrides integer fields of its config.json, e.g. for a CPU-sized model of the
  same architecture (MoE fields included: ``num_experts``, ``num_experts_per_tok``, ...; Fast-dLLM
  v2's block is ``bd_size``, which ``--block-length`` should equal, as its attention was trained
  on it). LLaDA2's ``rotary_dim`` follows an overridden ``head_dim`` (it is ``head_dim *
  partial_rotary_factor``) unless it is overridden itself.

Prompts are random token ids (special tokens excluded) of ``--prompt-length``
drawn from ``--seed``, so every source is benchmarked the same way.

Correctness check: at temperature 0 both implementations must commit the same
tokens. A mismatch (or an exception in one configuration) is reported in the
table and in the JSON row (``tokens_match: false`` / ``error``) and makes the
command exit with status 2 after all configurations have run (no JSON record is
written then); it never aborts the other configurations.

Timing: each configuration runs once untimed (warm-up; its sequences are the
ones compared), then ``--repeats`` timed runs of the fast and the naive
implementation, interleaved: each implementation's median wall time is reported,
and ``speedup`` is the median of the per-pair ratios (naive / fast of the runs
made back to back), so that a burst of load on a shared machine moves one pair,
not one implementation's median. The sampler overhead comes
from separate *profiled* runs (the median of 5) in which every model forward and fused head is
timed between device synchronisations, in per-thread CPU time on a 1-thread CPU run (less
sensitive to other load on the machine) and in wall time otherwise; the main timings never carry that instrumentation The steps of each
kind and the lookahead premium come from one more run with every step timed.
The CPU thread count follows ``infogain._runtime.threads`` (``--threads``,
``$INFOGAIN_THREADS``, physical cores, 1 for the toy model); it is printed and
recorded in the settings.

Output: a table on stdout and a JSON record with the same layout as the scripts
in ``benches/`` (``benchmark``, ``environment``, ``rows`` and the run's
settings), written only when every configuration succeeded, to ``--out`` or by
default to ``e2e-<device>.json`` in the working directory. ``--update-results``
writes the source tree's tracked ``benches/results/e2e-<device>.json`` instead.
When the repository's ``benches/_common.py`` is reachable (source checkout or
editable install), its ``environment``/``device_slug`` are used so the record is
identical to the other benchmarks'; otherwise (installed wheel) a minimal
fallback with the same keys is used and ``--update-results`` is refused.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
from typing import Dict, List, Optional, Sequence

import torch

from .. import models
from .._runtime import threads as _threads
from infogain_kernels._validation import check_positive_int

from .bench_timing import profiled, step_profile, timed
from ._cliutil import HelpFormatter, check_output_file, format_table, option_type, parse_device, split_list

FAST_AND_NAIVE_VARIANTS = {"info_gain": "info_gain", "lookum": "lookum"}
# Every preset of models.preset_config: llada-8b, dream-7b, sdar-8b, llada2-mini, sdar-moe-30b-a3b,
# fast-dllm-v2-7b.
RANDOM_WEIGHT_PRESETS = tuple(name for arch in models.hub.ARCHITECTURES for name in arch.PRESETS)

# Per-source defaults: the toy model's context is 64 positions, the real
# architectures are benchmarked at the target shape.
_TOY_DEFAULTS = {"prompt_length": 16, "gen_length": 32, "steps": 32, "block_length": 8}
_FULL_DEFAULTS = {"prompt_length": 64, "gen_length": 256, "steps": 256, "block_length": 32}

# The source checkout: python_api/infogain/apps/<this file> is four levels below it.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
_TABLE_COLUMNS = ["setting", "sampler", "cache", "fast_tok_s", "naive_tok_s", "speedup", "nfe", "naive_nfe",
                  "bypass_rate", "steps", "lookahead_steps", "lookahead_premium", "overhead", "tokens_match"]

# Decoding settings a run covers (--settings). "bench": the command's --threshold / --candidates /
# --position-temperature; "threshold-1": the same with threshold 1.0, so no position bypasses and
# every step that does not fill runs the lookahead; "demo": the demo's sampler settings, one block
# decoded one token per step (steps = block_length = gen_length), as `infogain demo` decodes.
SETTINGS = ("bench", "threshold-1", "demo")
_TOY_SETTINGS = "bench,threshold-1,demo"


def _bench_common():
    """The repository's ``benches/_common.py`` module, or None when it is not on disk."""
    path = os.path.join(_REPO_ROOT, "benches", "_common.py")
    if not os.path.isfile(path):
        return None
    spec = importlib.util.spec_from_file_location("_infogain_benches_common", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception:  # a broken checkout must not stop the benchmark; the fallback writes the same keys
        return None
    return module


def build_parser() -> argparse.ArgumentParser:
    from ..samplers import GenerateOptions

    parser = argparse.ArgumentParser(
        prog="python -m infogain bench", formatter_class=HelpFormatter,
        description="End-to-end tokens/s, NFE, bypass rate and sampler overhead of each sampler x cache "
                    "mode, against the naive implementation of the same algorithm in the same run.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="PATH", help="checkpoint directory (default: the shipped toy model)")
    source.add_argument("--random-weights", choices=RANDOM_WEIGHT_PRESETS,
                        help="full-size architecture with random weights (speed only)")
    parser.add_argument("--config", metavar="KEY=VALUE,...", default=None,
                        help="with --random-weights: override integer fields of the preset's config.json, "
                             "e.g. d_model=512,n_layers=6 for a CPU-sized model of the same architecture")
    parser.add_argument("--head-scale", type=float, default=1.0,
                        help="with --random-weights: multiply the output head's random weights by this factor; "
                             "a freshly initialised model predicts nearly uniform distributions, so at a large "
                             "vocabulary the candidates' objectives can tie to within float rounding and the "
                             "token comparison with the naive sampler would be decided by rounding noise; 8 "
                             "gives peaked, well-separated predictions at the same cost per forward")
    parser.add_argument("--samplers", default="info_gain",
                        help="comma-separated sampler names (infogain.samplers.SAMPLERS); the naive "
                             "comparison exists for info_gain and lookum (default: info_gain)")
    parser.add_argument("--cache", default="none,prefix,dual", help="comma-separated cache modes")
    for name, text in (("prompt-length", "random prompt tokens per row"), ("gen-length", "gen_length"),
                       ("steps", "steps"), ("block-length", "block_length")):
        key = name.replace("-", "_")
        parser.add_argument(f"--{name}", type=int if key == "prompt_length" else option_type(key), default=None,
                            help=f"{text} (default: {_TOY_DEFAULTS[key]} for the toy model, "
                                 f"{_FULL_DEFAULTS[key]} otherwise)")
    # The sampler options take generate's own defaults (infogain.samplers.options).
    parser.add_argument("--candidates", "--candidate-number", dest="candidates", type=option_type("candidate_number"),
                        default=GenerateOptions.candidate_number, help="candidate_number")
    parser.add_argument("--position-temperature", type=option_type("position_temperature"),
                        default=GenerateOptions.position_temperature, help="position_temperature")
    parser.add_argument("--threshold", type=option_type("threshold"), default=GenerateOptions.threshold,
                        help="bypass threshold")
    parser.add_argument("--batch-size", type=int, default=1, help="prompts per generate call")
    parser.add_argument("--settings", default=None,
                        help=f"comma-separated, from {', '.join(SETTINGS)} (default: all three for the toy model, "
                             f"bench otherwise); see SETTINGS in infogain/apps/bench.py")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per implementation")
    parser.add_argument("--seed", type=int, default=0, help="seeds the prompts and the samplers")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline (speed of the fast path only)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", choices=sorted(models.DTYPES), default=None,
                        help="model dtype (default: bfloat16 on CUDA, float32 on CPU)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="PATH", default=None,
                       help="JSON output path (default: ./e2e-<device>.json in the working directory)")
    where.add_argument("--update-results", action="store_true",
                       help="write the source checkout's tracked benches/results/e2e-<device>.json")
    _threads.add_threads_argument(parser)
    return parser


def parse_config_overrides(text: Optional[str]) -> Dict[str, int]:
    """``"key=value,..."`` (integer values) -> dict; ``None`` -> ``{}``."""
    overrides: Dict[str, int] = {}
    if text is None:
        return overrides
    for item in split_list("--config", text):
        key, sep, value = item.partition("=")
        try:
            overrides[key.strip()] = int(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise ValueError(f"--config entries must be KEY=INTEGER, got {item!r}")
    return overrides


def _check_args(args) -> None:
    if args.config is not None and not args.random_weights:
        raise ValueError("--config only applies with --random-weights")
    if args.head_scale != 1.0 and not args.random_weights:
        raise ValueError("--head-scale only applies with --random-weights")
    if not (args.head_scale > 0 and args.head_scale < float("inf")):
        raise ValueError(f"--head-scale must be a finite number > 0, got {args.head_scale}")
    from ..samplers import CACHE_MODES

    for name in ("prompt_length", "gen_length", "steps", "block_length", "candidates", "batch_size", "repeats"):
        if getattr(args, name) is not None:
            check_positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
    unknown = [c for c in args.cache_modes if c not in CACHE_MODES]
    if unknown:
        raise ValueError(f"--cache: unknown mode(s) {unknown}; choose from {list(CACHE_MODES)}")
    if args.settings is not None:
        unknown = [s for s in split_list("--settings", args.settings) if s not in SETTINGS]
        if unknown:
            raise ValueError(f"--settings: unknown setting(s) {unknown}; choose from {list(SETTINGS)}")


def generate_options(args, shape: Dict[str, int]) -> Dict[str, object]:
    """The ``generate`` options of the command's "bench" setting: ``shape`` (gen_length, steps,
    block_length), the sampler flags, temperature 0 (the token comparison needs it) and ``--seed``."""
    return {"gen_length": shape["gen_length"], "steps": shape["steps"], "block_length": shape["block_length"],
            "candidate_number": args.candidates, "position_temperature": args.position_temperature,
            "threshold": args.threshold, "temperature": 0.0, "seed": args.seed}


def _follow_head_dim(config: Dict[str, object], overrides: Dict[str, int]) -> None:
    """A preset's ``rotary_dim`` that is derived from its head geometry (``head_dim *
    partial_rotary_factor``, LLaDA2) follows shrunken heads, unless ``overrides`` set it: otherwise
    the config would contradict itself."""
    if "rotary_dim" in overrides or config.get("rotary_dim") is None or "partial_rotary_factor" not in config:
        return
    head_dim = config.get("head_dim") or int(config["hidden_size"]) // int(config["num_attention_heads"])
    config["rotary_dim"] = int(int(head_dim) * config["partial_rotary_factor"])


def _load_model(args, device: torch.device, dtype: torch.dtype):
    """Returns ``(model, tokenizer, source)``; ``source`` describes the model for the JSON record."""

    if args.random_weights:
        torch.manual_seed(args.seed)
        config = models.preset_config(args.random_weights)
        overrides = parse_config_overrides(args.config)
        unknown = sorted(set(overrides) - set(config))
        if unknown:
            raise ValueError(f"--config: {unknown} are not fields of the {args.random_weights} config")
        config.update(overrides)
        _follow_head_dim(config, overrides)
        model = models.build(config, dtype=dtype, device=device)
        source = f"random-weights:{args.random_weights}" + (f" ({args.config})" if overrides else "")
        if args.head_scale != 1.0:
            with torch.no_grad():
                model.lm_head_weight.mul_(args.head_scale)
            source += f", head weights x{args.head_scale:g}"
        return model, None, source
    if args.model:
        path, source = args.model, f"checkpoint:{args.model}"
    else:
        from ..models import toy_model_path

        path, source = toy_model_path(), "toy"
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"the toy model is not installed at {path}; pass --model PATH or --random-weights NAME")
    model, tokenizer = models.load(path, dtype=dtype, device=device)
    return model, tokenizer, source


def random_prompts(batch_size: int, prompt_length: int, vocab_size: int, special_ids: Sequence[Optional[int]],
                   seed: int, device: torch.device) -> torch.Tensor:
    """``[batch_size, prompt_length]`` long token ids, uniform over the vocabulary minus ``special_ids``.

    The same ``seed`` gives the same prompts on every device (drawn on the CPU).
    """
    excluded = {int(i) for i in special_ids if i is not None}
    allowed = torch.tensor([i for i in range(vocab_size) if i not in excluded], dtype=torch.long)
    if allowed.numel() == 0:
        raise ValueError("the vocabulary has no token besides the special ones")
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, allowed.numel(), (batch_size, prompt_length), generator=generator)
    return allowed[picks].to(device)


def compare_sequences(fast: torch.Tensor, naive: torch.Tensor) -> Optional[str]:
    """None when equal, else a one-line description of the first difference."""
    fast, naive = fast.detach().cpu(), naive.detach().cpu()
    if fast.shape != naive.shape:
        return f"shapes differ: fast {tuple(fast.shape)} vs naive {tuple(naive.shape)}"
    diff = (fast != naive).nonzero()
    if diff.numel() == 0:
        return None
    row, col = diff[0].tolist()
    return (f"{diff.shape[0]} token(s) differ; first at row {row}, position {col}: "
            f"fast {int(fast[row, col])} vs naive {int(naive[row, col])}")


def setting_kwargs(setting: str, base: Dict[str, object]) -> Dict[str, object]:
    """The generate options of ``setting`` (see :data:`SETTINGS`) built on the command's ``base``."""
    if setting == "threshold-1":
        return dict(base, threshold=1.0)
    if setting == "demo":
        from .demo import DEMO_SETTINGS

        return dict(base, **DEMO_SETTINGS, steps=base["gen_length"], block_length=base["gen_length"])
    return dict(base)


def _median(values: List[float]) -> float:
    return statistics.median(values) if values else float("nan")


def bench_configuration(model, tokenizer, prompts: torch.Tensor, sampler_name: str, cache: str,
                        generate_kwargs: Dict[str, object], *, repeats: int, run_naive: bool,
                        device: torch.device) -> Dict[str, object]:
    """Benchmark one sampler x cache mode; returns one JSON row (errors are recorded, not raised)."""
    from ..samplers.naive import NaiveInfoGainSampler
    from infogain.samplers import make_sampler

    row: Dict[str, object] = {"sampler": sampler_name, "cache": cache}
    kwargs = dict(generate_kwargs, cache=cache)
    variant = FAST_AND_NAIVE_VARIANTS.get(sampler_name)
    if variant is not None:
        kwargs["variant"] = variant
    generated = prompts.shape[0] * int(kwargs["gen_length"])
    try:
        sampler = make_sampler(sampler_name, model, tokenizer)
        fast_call = lambda: sampler.generate(prompts, **kwargs)  # noqa: E731
        naive_call = None
        if run_naive and variant is not None:
            naive = NaiveInfoGainSampler(model, tokenizer)
            naive_call = lambda: naive.generate(prompts, **kwargs)  # noqa: E731

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        fast_result, _ = timed(fast_call, device)  # warm-up; its tokens are the ones compared
        if device.type == "cuda":
            row["fast_peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
        fast_stats = fast_result.stats.to_dict()
        for key in ("nfe", "candidate_evals", "tokens", "bypass_rate", "cumulative_entropy"):
            row[key] = fast_stats[key]
        naive_result = None
        if naive_call is not None:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            naive_result, _ = timed(naive_call, device)
            if device.type == "cuda":
                row["naive_peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
            row["naive_nfe"] = naive_result.stats.get("nfe")
            row["naive_model_calls"] = naive_result.stats.get("model_calls")
            mismatch = compare_sequences(fast_result.sequences, naive_result.sequences)
            row["tokens_match"] = mismatch is None
            if mismatch is not None:
                row["mismatch"] = mismatch

        fast_times, naive_times = [], []
        for _ in range(repeats):  # interleaved so that slow drifts (clocks, other load) hit both alike
            fast_times.append(timed(fast_call, device)[1])
            if naive_call is not None:
                naive_times.append(timed(naive_call, device)[1])
        pair_ratios = [naive / fast for fast, naive in zip(fast_times, naive_times)]
        row["fast_wall_s"] = _median(fast_times)
        row["fast_tok_s"] = generated / row["fast_wall_s"]
        profile = profiled(fast_call, model, device, passes=5)
        row["overhead"] = profile["overhead"]
        row["profiled_wall_s"] = profile["wall_s"]
        row["profiled_forward_s"] = profile["forward_s"]
        row["profiled_forward_calls"] = profile["forward_calls"]
        row.update(step_profile(fast_call))
        if naive_call is not None:
            row["naive_wall_s"] = _median(naive_times)
            row["naive_tok_s"] = generated / row["naive_wall_s"]
            row["speedup"] = _median(pair_ratios)
            row["speedup_min"], row["speedup_max"] = min(pair_ratios), max(pair_ratios)
            row["naive_overhead"] = profiled(naive_call, model, device)["overhead"]
    except Exception as exc:  # one broken configuration must not hide the others' results
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def _environment(device: torch.device, common) -> Dict[str, object]:
    if common is not None:
        return common.environment(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    return {"device": name, "python": sys.version.split()[0], "torch": torch.__version__,
            "platform": platform.platform()}


def default_output_path(device: torch.device, common=None, *, update_results: bool = False) -> str:
    """``e2e-<device>.json`` in the working directory, or with ``update_results`` the tracked
    ``benches/results/e2e-<device>.json`` of the source tree (needs ``common``); the naming of
    ``benches/_common.output_path``."""
    slug = common.device_slug(device) if common is not None else ("cpu" if device.type != "cuda" else "cuda")
    if update_results:
        return os.path.join(common.RESULTS_DIR, f"e2e-{slug}.json")
    return f"e2e-{slug}.json"


def write_record(path: str, device: torch.device, rows: List[Dict[str, object]], common=None, **extra) -> str:
    """Write ``{"benchmark": "e2e", "environment", "rows", **extra}`` to ``path`` and return it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    record = {"benchmark": "e2e", "environment": _environment(device, common), "rows": rows, **extra}
    with open(path, "w") as fh:
        json.dump(record, fh, indent=2)
        fh.write("\n")
    return path


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark; returns 0, or 2 when a configuration failed or the tokens differ."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.sampler_names = split_list("--samplers", args.samplers)
        args.cache_modes = split_list("--cache", args.cache)
        if args.out:  # fail now, not after the whole benchmark
            check_output_file("--out", args.out)
        _check_args(args)
        device = parse_device("--device", args.device)
        dtype = models.resolve_dtype(args.dtype, device)
    except ValueError as exc:
        parser.error(str(exc))

    common = _bench_common()
    if args.update_results and common is None:
        parser.error("--update-results writes benches/results/ of a source checkout, which this "
                     "installation does not have; use --out PATH")
    from infogain.samplers import SAMPLERS

    unknown = [s for s in args.sampler_names if s not in SAMPLERS]
    if unknown:
        parser.error(f"--samplers: unknown sampler(s) {unknown}; choose from {sorted(SAMPLERS)}")

    try:
        model, tokenizer, source = _load_model(args, device, dtype)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    model.eval()
    defaults = _TOY_DEFAULTS if source == "toy" else _FULL_DEFAULTS
    shape = {name: getattr(args, name) if getattr(args, name) is not None else default
             for name, default in defaults.items()}
    try:
        # Work per forward: the batch's rows x the canvas (prompt + generation).
        threads = _threads.apply_threads(
            args.threads, num_parameters=_threads.model_parameters(model),
            tokens_per_forward=args.batch_size * (shape["prompt_length"] + shape["gen_length"]))
    except ValueError as exc:
        parser.error(str(exc))
    config = model.config
    prompts = random_prompts(args.batch_size, shape["prompt_length"], config.vocab_size,
                             (config.mask_token_id, config.eos_token_id, config.pad_token_id), args.seed, device)
    generate_kwargs = generate_options(args, shape)
    settings = {"model": source, "dtype": str(dtype).replace("torch.", ""), "threads": threads,
                "batch_size": args.batch_size,
                "prompt_length": shape["prompt_length"], "repeats": args.repeats,
                **{k: v for k, v in generate_kwargs.items()}}
    print(f"e2e bench on {device} ({settings['dtype']}, {threads} torch thread{'s' if threads != 1 else ''}): "
          f"{source}, batch {args.batch_size}, prompt "
          f"{shape['prompt_length']}, gen {shape['gen_length']}, steps {shape['steps']}, block "
          f"{shape['block_length']}, {args.candidates} candidates", flush=True)

    setting_names = split_list("--settings", args.settings or (_TOY_SETTINGS if source == "toy" else "bench"))
    settings["settings"] = {name: setting_kwargs(name, generate_kwargs) for name in setting_names}
    rows = []
    with torch.inference_mode():
        for setting in setting_names:
            for sampler_name in args.sampler_names:
                for cache in args.cache_modes:
                    row = bench_configuration(model, tokenizer, prompts, sampler_name, cache,
                                              setting_kwargs(setting, generate_kwargs), repeats=args.repeats,
                                              run_naive=not args.no_naive, device=device)
                    rows.append({"setting": setting, **row})
                    print(f"  {setting:>11} / {sampler_name:>10} / {cache:<6} done"
                          + (f"  ERROR {row['error']}" if "error" in row else ""), flush=True)

    print(format_table(rows, _TABLE_COLUMNS))
    failures = [r for r in rows if "error" in r or r.get("tokens_match") is False]
    for row in failures:
        reason = row.get("error") or f"TOKENS DIFFER from the naive implementation: {row.get('mismatch')}"
        print(f"!!! {row['setting']} / {row['sampler']} / {row['cache']}: {reason}", file=sys.stderr)
    if failures:
        print("no results written: a configuration failed", file=sys.stderr)
        return 2
    path = args.out or default_output_path(device, common, update_results=args.update_results)
    write_record(path, device, rows, common, settings=settings, all_tokens_match=True)
    print(f"wrote {path}")
    return 0
