"""Evaluation configs: YAML files, ``--key value`` overrides, the shipped configs, and the run's config hash.

Keys (defaults in :class:`EvalConfig`) follow the standalone Info-Gain
repository's ``run.py`` where they apply; its spellings are accepted as
aliases (``use_cache`` -> ``cache``, ``mode`` -> ``sampler`` with its mode names,
``result_dir`` -> ``output_dir``, ``no_shot`` -> ``fewshot: false``,
``model_name`` -> ``model``, ``max_new_tokens`` -> ``gen_length``,
``block_size`` -> ``block_length``).
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from dataclasses import dataclass, fields
from typing import Collection, Dict, List, Mapping, Optional, Sequence, Tuple

from infogain_kernels._validation import check_positive_int

from ..models import DTYPES as MODEL_DTYPES
from ..samplers import MODEL_DECODERS, SAMPLERS, VARIANTS
from ..samplers.options import GenerateOptions, field_types, option_types, parse_value

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

# The standalone repository's mode names.
SAMPLER_ALIASES = {"info-gain": "info_gain", "infogain": "info_gain", "original": "confidence",
                   "eb_sampler": "eb", "fast-dllm": "fast_dllm"}
KEY_ALIASES = {"use_cache": "cache", "mode": "sampler", "result_dir": "output_dir", "model_name": "model",
               "max_new_tokens": "gen_length", "block_size": "block_length"}
# auto: bfloat16 on GPU, float32 on CPU; checkpoint: the checkpoint's own dtype (models.resolve_dtype).
DTYPES = ("auto", "checkpoint", *MODEL_DTYPES)

# The sampler options take generate's own defaults (GenerateOptions), except these, where an evaluation
# deliberately differs: a benchmark prompt is long (few-shot examples, a chat template), so eval keeps the K/V
# of the prompt and the finished blocks by default. The one place eval overrides a generate default.
EVAL_OPTION_DEFAULTS = {"cache": "prefix"}
# Options of generate that eval sets differently: seed is the run's (each batch's generator seed is derived
# from it, see runner.sample_seed), chat comes from chat_template, variant and lookahead_eos_fill are
# nullable here (null keeps the sampler's own default), fused_head is generate's (an implementation choice).
# The lengths of a generation, fitted to the task and the model when left unset (fit_lengths).
LENGTH_OPTIONS = ("gen_length", "block_length", "steps")
_NOT_PLAIN_OPTIONS = ("seed", "chat", "variant", "lookahead_eos_fill", "fused_head")
# Options that only some of the models' own decoders take (not GenerateOptions): null leaves the decoder's
# default and keeps the key out of the config hash, so runs without it hash as they did before it existed.
DECODER_OPTIONS = ("sub_block_length",)
_G = GenerateOptions


@dataclass
class EvalConfig:
    """One evaluation run. Every field is a config key and a ``--key value`` option.

    Task: ``task`` (see :data:`infogain.tasks.EVAL_TASKS`), ``data_path`` (the
    local task file; default ``<data_dir>/<task file name>``), ``max_samples``
    (the first N problems), ``fewshot``, ``chat_template`` (apply the
    tokenizer's chat template, when it has one), ``prompt_template`` (a
    ``str.format`` template over the task record's fields replacing the task's
    prompt). Model: ``model`` (checkpoint folder; ``toy`` = the shipped toy
    model), ``dtype`` (auto = bfloat16 on GPU, float32 on CPU; checkpoint = the
    checkpoint's own dtype), ``device`` (auto = the process's GPU under torchrun
    / accelerate, else CPU), ``threads`` (torch CPU threads per process; null =
    the package's policy, :mod:`infogain._runtime.threads`: ``$INFOGAIN_THREADS``, else
    the free physical cores shared among the run's processes on this machine). Sampler:
    ``sampler`` and the options of :meth:`~infogain.samplers.DiffusionSampler.generate`
    with generate's defaults, except ``cache`` (``prefix``, :data:`EVAL_OPTION_DEFAULTS`);
    ``variant`` and ``lookahead_eos_fill`` left null keep the sampler's defaults.
    A model's own decoder (:data:`~infogain.samplers.MODEL_DECODERS`: ``llada2_threshold``,
    ``llada21_edit``, ``fast_dllm_v2``) takes those of these keys it knows (and its own ``cache``
    names, e.g. ``sub_block`` for ``fast_dllm_v2``), checked when it is made for the model;
    ``sub_block_length`` (:data:`DECODER_OPTIONS`) is Fast-dLLM v2's decoding sub-block, for the
    ``fast_dllm_v2`` decoder only (null: the checkpoint's ``small_block_size``, else 8).
    Run: ``seed`` (each problem's generator is seeded from it and the problem's
    id only), ``batch_size`` (problems per ``generate`` call; batches are formed
    before sharding, so results do not depend on the number of processes),
    ``output_dir``, ``code_timeout_s`` / ``code_memory_mb`` (limits of the code
    graders), ``progress``, ``dist_timeout_min`` (how long ranks wait for each
    other at the final barrier).
    """

    task: Optional[str] = None
    data_path: Optional[str] = None
    data_dir: str = "data"
    max_samples: Optional[int] = None
    fewshot: bool = True
    chat_template: bool = True
    prompt_template: Optional[str] = None
    model: str = "toy"
    dtype: str = "auto"
    device: str = "auto"
    threads: Optional[int] = None
    sampler: str = "info_gain"
    variant: Optional[str] = None
    candidate_number: int = _G.candidate_number
    position_temperature: float = _G.position_temperature
    threshold: float = _G.threshold
    cache: str = EVAL_OPTION_DEFAULTS["cache"]
    temperature: float = _G.temperature
    gen_length: int = _G.gen_length
    steps: int = _G.steps
    block_length: int = _G.block_length
    parallel_bypass: bool = _G.parallel_bypass
    eos_penalty: float = _G.eos_penalty
    stop_at_eos: bool = _G.stop_at_eos
    lookahead_eos_fill: Optional[bool] = None
    gamma: float = _G.gamma
    sub_block_length: Optional[int] = None
    seed: int = 0
    batch_size: int = 1
    output_dir: Optional[str] = None
    code_timeout_s: float = 10.0
    code_memory_mb: int = 1024
    progress: bool = True
    dist_timeout_min: float = 600.0

    def validate(self, require_task: bool = True) -> "EvalConfig":
        """Check every key (raises ValueError naming it); ``require_task=False`` for generation-only use."""
        from ..tasks import EVAL_TASKS

        if self.task is None and require_task:
            raise ValueError("task is required (set it in the config or pass --task NAME); choose from "
                             f"{sorted(EVAL_TASKS)}")
        if self.task is not None and self.task not in EVAL_TASKS:
            raise ValueError(f"task: unknown {self.task!r}; choose from {sorted(EVAL_TASKS)}")
        self.sampler = SAMPLER_ALIASES.get(self.sampler, self.sampler)
        if self.sampler not in SAMPLERS and self.sampler not in MODEL_DECODERS:
            raise ValueError(f"sampler: unknown {self.sampler!r}; choose from {list(SAMPLERS) + list(MODEL_DECODERS)} "
                             f"(or the standalone mode names {sorted(SAMPLER_ALIASES)})")
        if self.variant is not None and self.variant in VARIANTS and (
                self.sampler not in ("info_gain", "lookum") or (self.sampler == "lookum" and self.variant != "lookum")):
            raise ValueError(f"variant={self.variant!r} applies to sampler info_gain only (sampler is "
                             f"{self.sampler!r})")
        # The sampler options: generate's own checks, naming the key. A model's own decoder (LLaDA2's,
        # Fast-dLLM v2's) takes the options it knows and checks them when it is made for the model.
        if self.sampler in SAMPLERS:
            for name in DECODER_OPTIONS:
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} applies to the models' own decoders that take it (fast_dllm_v2), "
                                     f"not to sampler {self.sampler!r}; leave it unset (null)")
            GenerateOptions(**self.generate_options()).validate()
        for name in DECODER_OPTIONS:
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        for name in ("threads", "batch_size", "code_memory_mb", "max_samples"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        for name in ("code_timeout_s", "dist_timeout_min"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        return self

    def fit_lengths(self, explicit: Collection[str] = LENGTH_OPTIONS) -> "EvalConfig":
        """Set ``gen_length`` / ``block_length`` / ``steps`` not in ``explicit`` from the task (its answers'
        length; see :func:`fit_lengths`), refusing lengths it cannot take (ValueError naming the key). The
        model's positions are checked by the run, which resolves the model, before it writes anything."""
        from ..tasks import EVAL_TASKS, get_eval_task

        required = get_eval_task(self.task).required_gen_length if self.task in EVAL_TASKS else None
        for name, value in fit_lengths(self.to_dict(), explicit, required_gen_length=required).items():
            setattr(self, name, value)
        return self

    def generate_options(self) -> Dict[str, object]:
        """Keyword arguments of ``DiffusionSampler.generate`` (seed excluded: it is per problem), plus the
        :data:`DECODER_OPTIONS` that are set (only a model's own decoder takes them)."""
        options = {name: getattr(self, name) for name in option_types() if name not in _NOT_PLAIN_OPTIONS}
        options["chat"] = self.chat_template
        # None keys keep the sampler's own default (lookahead_eos_fill: the reference behaviour).
        for name in ("variant", "lookahead_eos_fill") + DECODER_OPTIONS:
            if getattr(self, name) is not None:
                options[name] = getattr(self, name)
        return options

    def to_dict(self) -> Dict[str, object]:
        return dataclasses.asdict(self)


def fit_lengths(options: Mapping[str, object], explicit: Collection[str], *, max_positions: Optional[int] = None,
                required_gen_length: Optional[int] = None) -> Dict[str, object]:
    """``gen_length`` / ``block_length`` / ``steps`` of ``options`` for a model of ``max_positions`` positions
    and a task whose answers have ``required_gen_length`` tokens (None: not known / any).

    The options named in ``explicit`` (set by the user) are kept; the others are defaults, and a default
    ``gen_length`` that the task or the model cannot take becomes the task's length, else half the model's
    positions (the other half for the prompt), with ``steps`` following it (one token per step, as generate's
    defaults have); a default ``block_length`` that does not divide ``gen_length`` becomes ``gen_length``.
    A length that still cannot work -- another length than the task's, or no room left for a prompt -- is a
    ValueError naming the option, raised before anything runs.
    """
    gen, block, steps = (int(options[name]) for name in LENGTH_OPTIONS)
    if "gen_length" not in explicit:
        fitted = required_gen_length
        if fitted is None and max_positions is not None and gen > max_positions // 2:
            fitted = max(1, max_positions // 2)
            if "block_length" in explicit and block <= fitted:
                fitted -= fitted % block   # keep the user's block length dividing it
        if fitted is not None and fitted != gen:
            gen = fitted
            if "steps" not in explicit:
                steps = gen
    if "block_length" not in explicit and (block > gen or gen % block):
        block = gen   # a default block length that does not divide the generation: one block
    if required_gen_length is not None and gen != required_gen_length:
        raise ValueError(f"gen_length: the task's answers have {required_gen_length} tokens, got {gen} "
                         f"(leave gen_length unset or set it to {required_gen_length})")
    if max_positions is not None and gen >= max_positions:
        raise ValueError(f"gen_length ({gen}) leaves no room for a prompt in the model's {max_positions} positions "
                         f"(set a gen_length below {max_positions})")
    return {"gen_length": gen, "block_length": block, "steps": steps}


_FIELDS = {f.name: f for f in fields(EvalConfig)}
_TYPES = field_types(EvalConfig)
# Keys that say where or how fast a run happens, not what it computes: excluded from the config hash,
# so that a run can be resumed on other devices, with more samples or another output folder.
NOT_HASHED = ("data_path", "data_dir", "max_samples", "device", "threads", "output_dir", "progress",
              "dist_timeout_min")


def coerce(name: str, value):
    """``value`` (from YAML or the command line) as the type of config key ``name``; raises naming the key."""
    return parse_value(name, value, *_TYPES[name])


def _apply(values: Dict[str, object], key: str, value, source: str) -> None:
    key = key.replace("-", "_")
    if key == "no_shot":   # the standalone repository's spelling, inverted
        values["fewshot"] = not coerce("fewshot", value)
        return
    key = KEY_ALIASES.get(key, key)
    if key not in _FIELDS:
        raise ValueError(f"{source}: unknown key {key!r}; valid keys: {', '.join(sorted(_FIELDS))}")
    values[key] = coerce(key, value)


def parse_overrides(args: Sequence[str]) -> List[Tuple[str, object]]:
    """``["--key", "value", "--flag", "--k=v"]`` -> [(key, value)]; a key without a value means true."""
    pairs: List[Tuple[str, object]] = []
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--") or len(token) == 2:
            raise ValueError(f"unexpected argument {token!r}; overrides are --key value")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value, i = args[i + 1], i + 2
        else:
            value, i = "true", i + 1
        pairs.append((key, value))
    return pairs


def shipped_configs() -> Dict[str, str]:
    """Name -> path of the configs shipped with the package."""
    return {os.path.splitext(os.path.basename(p))[0]: p for p in sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))}


def resolve_config_path(name_or_path: str) -> str:
    if os.path.isfile(name_or_path):
        return name_or_path
    shipped = shipped_configs()
    key = os.path.splitext(os.path.basename(name_or_path))[0]
    if key in shipped and not os.path.dirname(name_or_path):
        return shipped[key]
    raise ValueError(f"--config {name_or_path!r}: no such file and not a shipped config (see --list-configs)")


def load_config(config: Optional[str] = None, overrides: Sequence[str] = ()) -> EvalConfig:
    """The config file ``config`` (a path or a shipped name; optional), then ``--key value`` ``overrides``."""
    import yaml

    values: Dict[str, object] = {}
    if config is not None:
        path = resolve_config_path(config)
        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ValueError(f"config {path!r} is not valid YAML{where}: {problem}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"config {path!r} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"config {path!r} must be a mapping of keys to values")
        for key, value in data.items():
            _apply(values, str(key), value, f"config {path!r}")
    for key, value in parse_overrides(list(overrides)):
        _apply(values, key, value, "command line")
    # Lengths the user left unset follow the task (a toy task's answers have a fixed length).
    return EvalConfig(**values).fit_lengths(explicit=set(values)).validate()


def config_hash(cfg: EvalConfig, model_identity: str, task_digest: str) -> str:
    """What the results depend on: the hashed config keys, the model's identity and the task's source."""
    keyed = {k: v for k, v in cfg.to_dict().items()
             if k not in NOT_HASHED and k != "model" and not (k in DECODER_OPTIONS and v is None)}
    blob = json.dumps({"config": keyed, "model": model_identity, "task": task_digest}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def describe_configs() -> List[str]:
    """One line per shipped config: name, task, sampler."""
    import yaml

    lines = []
    for name, path in shipped_configs().items():
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        lines.append(f"{name:32s} task={data.get('task')} sampler={data.get('sampler')} cache={data.get('cache')}")
    return lines
