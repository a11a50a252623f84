"""Load a model, its tokenizer and a sampler from an eval config, and generate for a list of prompts.

:func:`load_generator` is the one place that turns config keys into a ready
sampler; the eval runner, the lm-evaluation-harness model and chat reuse it::

    gen = load_generator({"model": "path/to/llada", "sampler": "info_gain", "cache": "dual"})
    result = gen.generate(["What is 2 + 2?"], seed=0)      # a GenerationResult
    result.texts, result.stats.to_dict()
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Union

import torch

from .config import DECODER_OPTIONS, EvalConfig


def resolve_model_path(model: str) -> str:
    """``toy`` -> the shipped toy checkpoint; ``name`` -> ``./model/<name>`` when that exists (the
    standalone repository's local aliases); else the path itself, which must be a checkpoint folder."""
    if model == "toy":
        from ..models import toy_model_path

        return toy_model_path()
    if not os.path.isdir(model) and os.path.isdir(os.path.join("model", model)):
        model = os.path.join("model", model)
    if not os.path.isfile(os.path.join(model, "config.json")):
        raise ValueError(f"model {model!r} is not a checkpoint folder (no config.json); give a local path or "
                         f"'toy' (nothing is downloaded)")
    return model


def model_identity(path: str) -> str:
    """A digest of a checkpoint: its config.json bytes and the names and sizes of its other files (hashing
    the weights themselves would take minutes for 8B models)."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            continue
        if name.endswith(".json"):
            with open(full, "rb") as fh:
                digest.update(name.encode() + b"\0" + fh.read())
        else:
            digest.update(f"{name}\0{os.path.getsize(full)}".encode())
    return digest.hexdigest()[:16]


def resolve_device(name: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """``auto``: the process's GPU (``cuda:LOCAL_RANK``) when CUDA is available, else CPU. ``cuda`` also maps
    to ``cuda:LOCAL_RANK``; an explicit ``cuda:N`` is only accepted in a single-process run."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a torch device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        elif world_size > 1:
            raise ValueError(f"device {name!r} names one GPU, but {world_size} processes run: use device auto or "
                             f"cuda (each process takes cuda:LOCAL_RANK)")
    return device


@dataclass
class Generator:
    """A loaded model + tokenizer + sampler with the config's generation options.

    ``options``: keyword arguments of ``DiffusionSampler.generate`` (seed
    excluded); :meth:`generate` adds a seed and any per-call overrides.
    """

    model: torch.nn.Module
    tokenizer: object
    sampler: object
    options: Dict[str, object]
    device: torch.device
    dtype: torch.dtype  # the loaded model's
    model_path: str

    def generate(self, prompts, *, seed: Optional[int] = None, **overrides):
        """Generate for ``prompts`` (strings, token-id lists or a tensor; see ``DiffusionSampler.generate``)."""
        return self.sampler.generate(prompts, **{**self.options, **overrides, "seed": seed})


def load_generator(config: Union[EvalConfig, Mapping[str, object]], *, local_rank: int = 0,
                   world_size: int = 1) -> Generator:
    """Load the model of ``config`` (an :class:`EvalConfig` or a mapping of its keys) on its device, and
    make its sampler. ``local_rank`` / ``world_size`` place the model under data parallelism.

    The one way the package's commands (eval, chat, the lm-evaluation-harness model) load a
    diffusion checkpoint and build its sampler. Raises ValueError for a bad key, a path that is not
    a checkpoint folder or an unavailable device; ``tokenizer`` is None for a checkpoint without
    tokenizer files (callers that need one say so)."""
    if not isinstance(config, EvalConfig):
        from .config import _apply

        values: Dict[str, object] = {}
        for key, value in dict(config).items():
            _apply(values, key, value, "config")
        config = EvalConfig(**values).validate(require_task=False)
    from transformers.utils import logging as transformers_logging

    from .. import models, samplers

    path = resolve_model_path(config.model)
    device = resolve_device(config.device, local_rank, world_size)
    # A tokenizer folder whose config.json is not a transformers config makes transformers warn;
    # silenced for this load only (the caller's own transformers logging is left as it was).
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        model, tokenizer = models.load(path, dtype=models.resolve_dtype(config.dtype, device), device=device)
    finally:
        transformers_logging.set_verbosity(verbosity)
    model.eval()
    dtype = next(model.parameters()).dtype
    options = config.generate_options()
    if config.sampler in samplers.MODEL_DECODERS:
        # A model's own decoder: pass on the options it takes; it checks them here, before anything runs.
        known = samplers.MODEL_DECODERS[config.sampler](model, tokenizer).option_names
        for name in DECODER_OPTIONS:
            if name in options and name not in known:   # set on purpose (null leaves it out): say so
                raise ValueError(f"{name} is not an option of the {config.sampler} decoder; its options: "
                                 f"{sorted(known)}")
        options = {k: v for k, v in options.items() if k in known}
        if options.get("cache") in ("prefix", "dual"):
            del options["cache"]   # the package's "use a cache": the decoder's own default cache
        sampler = samplers.make_sampler(config.sampler, model, tokenizer, **options)
    else:
        sampler = samplers.make_sampler(config.sampler, model, tokenizer)
    # chat_template means "when the tokenizer has one": base models and the toy model have none.
    options["chat"] = bool(options["chat"] and getattr(tokenizer, "chat_template", None))
    return Generator(model=model, tokenizer=tokenizer, sampler=sampler, options=options,
                     device=device, dtype=dtype, model_path=os.path.abspath(path))


def environment(device: torch.device, dtype: Optional[torch.dtype]) -> Dict[str, object]:
    """Versions and device facts of this process (one entry of the summary's environment record); ``dtype``
    None: the checkpoint's own."""
    import platform

    import transformers

    info: Dict[str, object] = {"python": platform.python_version(), "torch": torch.__version__,
                               "transformers": transformers.__version__,
                               "dtype": "checkpoint" if dtype is None else str(dtype).replace("torch.", ""),
                               "device": str(device), "platform": platform.platform()}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # triton is optional on CPU
        info["triton"] = None
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["device_name"] = f"cpu ({platform.processor() or platform.machine()})"
        info["cpu_threads"] = torch.get_num_threads()
    info["package_version"] = _package_version()
    info["git_commit"] = source_commit()
    return info


def _package_version() -> Optional[str]:
    try:
        from importlib.metadata import version

        return version("infogain-kernels")
    except Exception:  # running from a source tree that is not installed
        return None


def source_commit() -> Optional[str]:
    """The commit of the source tree the package runs from (None when it is not a git checkout)."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")

