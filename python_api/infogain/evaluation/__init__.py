"""Evaluation at scale: ``python -m infogain eval`` (configs, data-parallel runs, resume, summary, compare).

* :func:`load_generator` -- model + tokenizer + sampler from config keys, and
  ``Generator.generate(prompts, seed=...)`` (reused by the lm-evaluation-harness
  model and chat);
* :func:`load_config` / :class:`EvalConfig` -- YAML configs with ``--key value`` overrides;
* :func:`run` -- one evaluation (single process, torchrun or accelerate launch);
* :mod:`.summary` -- accuracy with Wilson intervals, throughput, TPF, comparisons;
* :mod:`.likelihood` -- the Monte-Carlo masked log-likelihood of a diffusion LM (the
  lm-evaluation-harness model's ``loglikelihood``).
"""
from .config import EvalConfig, config_hash, load_config, shipped_configs
from .generation import Generator, load_generator
from .runner import main, run

__all__ = ["EvalConfig", "Generator", "config_hash", "load_config", "load_generator", "main", "run",
           "shipped_configs"]
