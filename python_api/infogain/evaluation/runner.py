"""``python -m infogain eval``: run a task with a sampler, data parallel, resumable, with an honest summary.

    python -m infogain eval --config gsm8k_info_gain --model ./model/llada [--key value ...]
    torchrun --nproc_per_node 8 -m infogain eval --config gsm8k_info_gain --model ./model/llada
    accelerate launch --num_processes 8 -m infogain eval --config gsm8k_info_gain --model ./model/llada
    python -m infogain eval --list-configs
    python -m infogain eval --compare results/gsm8k_info_gain results/gsm8k_confidence

Under torchrun / accelerate (``WORLD_SIZE`` > 1) each process loads the model
on its own device (``cuda:LOCAL_RANK``; CPU processes share the cores), takes
the batches ``b`` with ``b % WORLD_SIZE == RANK`` and appends its graded
problems to ``samples.rank<RANK>.jsonl``; after a barrier (gloo on CPU, NCCL on
GPU) rank 0 merges them and writes ``summary.json``. Each batch's generator
seed depends only on the run's seed and the batch's first problem id, and
batches are formed before sharding, so the outputs are the same for any number
of processes. See :mod:`.results` for the folder layout and resume, and
:mod:`.summary` for the figures.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
import time
from dataclasses import fields
from typing import List, Optional, Tuple

import torch

from .. import models
from ..models.hub import max_positions
from .._runtime import threads as _threads
from ..tasks import EvalTask, PromptOptions, Sample, get_eval_task
from . import results
from .config import LENGTH_OPTIONS, NOT_HASHED, EvalConfig, config_hash, describe_configs, fit_lengths, load_config
from .generation import environment, load_generator, model_identity, resolve_device, resolve_model_path
from .summary import compare, format_comparison, format_table, read_summary, summarize


class Dist:
    """This process's place in a data-parallel run (from torchrun's / accelerate's environment variables)."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, local_world_size: int = 1):
        self.rank, self.world_size = rank, world_size
        self.local_rank, self.local_world_size = local_rank, local_world_size
        # Set by init(): "gloo" (CPU) or "nccl" (GPU) when several processes run.
        self.backend: Optional[str] = None

    @classmethod
    def from_env(cls) -> "Dist":
        world = _threads.launch_variable("WORLD_SIZE", 1)
        rank = _threads.launch_variable("RANK", 0)
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
        return cls(rank=rank, world_size=world, local_rank=_threads.launch_variable("LOCAL_RANK", rank),
                   local_world_size=_threads.local_world_size())

    def init(self, device: torch.device, timeout_min: float) -> None:
        if self.world_size == 1:
            return
        import torch.distributed as dist

        self.backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=self.backend, timeout=datetime.timedelta(minutes=timeout_min))

    def barrier(self, device: torch.device) -> None:
        if self.backend is None:
            return
        import torch.distributed as dist

        if self.backend == "nccl":
            dist.barrier(device_ids=[device.index])
        else:
            dist.barrier()

    def close(self) -> None:
        if self.backend is not None:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def sample_seed(seed: int, sample_id: str) -> int:
    """The generator seed of the batch whose first problem is ``sample_id`` (independent of the rank)."""
    return int(hashlib.sha256(f"{seed}:{sample_id}".encode()).hexdigest()[:8], 16)


def prompt_options(cfg: EvalConfig) -> PromptOptions:
    return PromptOptions(fewshot=cfg.fewshot, template=cfg.prompt_template, code_timeout_s=cfg.code_timeout_s,
                         code_memory_mb=cfg.code_memory_mb)


def _data_path(cfg: EvalConfig, task: EvalTask) -> Optional[str]:
    if cfg.data_path is not None:
        return cfg.data_path
    return task.default_path(cfg.data_dir) if task.file_name else None


def _changed_keys(previous: dict, current: dict) -> List[str]:
    keys = sorted((set(previous) | set(current)) - set(NOT_HASHED))
    return [k for k in keys if previous.get(k) != current.get(k)]


def _graded_nothing(out: str) -> bool:
    """Whether the eval files in ``out`` hold no graded problem (a run that failed before its first one)."""
    graded = [path for path in results.existing_outputs(out)
              if os.path.basename(path).startswith("samples") or os.path.basename(path) == results.SUMMARY_FILE]
    return all(os.path.getsize(path) == 0 for path in graded)


def _check_previous_run(out: str, run_record: dict, overwrite: bool) -> bool:
    """Refuse to mix results of another config into ``out`` (unless ``overwrite``); returns whether the
    folder's eval files are to be replaced: with ``overwrite``, or when they hold no graded problem (a
    corrected rerun of a run that failed at its start is not refused)."""
    if overwrite or (results.existing_outputs(out) and _graded_nothing(out)):
        return True
    previous = results.read_run(out)
    if previous is None:
        leftovers = results.existing_outputs(out)
        if leftovers:
            raise ValueError(f"output_dir {out!r} holds eval files but no {results.RUN_FILE} "
                             f"({os.path.basename(leftovers[0])}, ...); pass --overwrite to replace them")
        return
    if previous.get("config_hash") != run_record["config_hash"]:
        what = _changed_keys(previous.get("config", {}), run_record["config"])
        for key in ("model_identity", "task_digest"):
            if previous.get(key) != run_record[key]:
                what.append(key.replace("_", " "))
        raise ValueError(f"output_dir {out!r} holds results of a different config (changed: "
                         f"{', '.join(what) or 'hash'}); pass --overwrite to discard them, or choose another "
                         f"output_dir")
    return False


def _generate_batch(gen, task: EvalTask, batch: List[Sample], cfg: EvalConfig, popts: PromptOptions):
    prompts = []
    for s in batch:
        ids = task.prompt_ids(s, gen.tokenizer)
        prompts.append(ids if ids is not None else task.prompt(s, popts))
    # A task that encodes its own prompts (the toy tasks) gets no chat template: it applies to text only.
    own_ids = not isinstance(prompts[0], str)
    return gen.generate(prompts, seed=sample_seed(cfg.seed, batch[0].id), **({"chat": False} if own_ids else {}))


def output_dir(cfg: EvalConfig) -> str:
    """Where the run ``cfg`` writes: its ``output_dir``, else ``results/<task>_<sampler>``."""
    return cfg.output_dir or os.path.join("results", f"{cfg.task}_{cfg.sampler}")


def lock_file(directory: str, rank: int) -> str:
    return os.path.join(directory, f".rank{rank}.lock")


def _lock_output_dir(out: str, rank: int):
    """Create ``out`` and hold this rank's lock in it for the run (the returned open file; closing it
    releases the lock). Two runs into one folder would both do every problem and append each one twice to
    the rank file: the second is refused. ValueError naming ``output_dir`` when the folder cannot be
    created or written (a file in the way, no permission, a read-only file system)."""
    import fcntl

    try:
        os.makedirs(out, exist_ok=True)
        handle = open(lock_file(out, rank), "a+", encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"output_dir {out!r} cannot be created or written: {exc.strerror or exc}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ValueError(f"output_dir {out!r} is in use by another eval run ({holder}); wait for it to finish "
                         f"or choose another output_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def _pending_batches(samples: List[Sample], done: dict, cfg: EvalConfig, dist: Dist):
    """This rank's batches with a problem not yet graded, as (batch number, problems)."""
    batches = [samples[i:i + cfg.batch_size] for i in range(0, len(samples), cfg.batch_size)]
    return [(b, batch) for b, batch in enumerate(batches)
            if b % dist.world_size == dist.rank and any(s.id not in done for s in batch)]


def run(cfg: EvalConfig, *, overwrite: bool = False, stream=None) -> Optional[dict]:
    """Run (or resume) the evaluation ``cfg`` in this process; rank 0 returns the summary, others None.

    Everything that can be checked -- the config, the lengths against the task and the model, the data,
    the output folder, the checkpoint itself -- is checked before anything is written to the folder."""
    started = time.perf_counter()
    stream = stream or sys.stdout
    dist = Dist.from_env()
    cfg.validate()
    task = get_eval_task(cfg.task)
    data_path = _data_path(cfg, task)
    samples = task.load(data_path, seed=cfg.seed, max_samples=cfg.max_samples)
    model_path = resolve_model_path(cfg.model)
    fit_lengths(cfg.to_dict(), LENGTH_OPTIONS, max_positions=max_positions(model_path),
                required_gen_length=task.required_gen_length)   # checks the lengths: every one is set here
    run_record = {"config": cfg.to_dict(), "model_path": os.path.abspath(model_path),
                  "model_identity": model_identity(model_path),
                  "task_digest": task.source_digest(data_path, seed=cfg.seed),
                  "data_path": os.path.abspath(data_path) if data_path else None}
    run_record["config_hash"] = config_hash(cfg, run_record["model_identity"], run_record["task_digest"])
    chash = run_record["config_hash"]
    out = output_dir(cfg)
    lock = _lock_output_dir(out, dist.rank)
    try:
        overwrite = _check_previous_run(out, run_record, overwrite)
        device = resolve_device(cfg.device, dist.local_rank, dist.world_size)
        dist.init(device, cfg.dist_timeout_min)
        try:
            done = {} if overwrite else results.read_records(out, chash)
            mine = _pending_batches(samples, done, cfg, dist)
            # Loaded before the folder is touched: a broken checkpoint leaves nothing to refuse on the rerun.
            gen = load_generator(cfg, local_rank=dist.local_rank, world_size=dist.world_size) if mine else None
            dist.barrier(device)   # every rank has checked the folder and its model before rank 0 changes it
            if dist.rank == 0:
                previous = None if overwrite else results.read_run(out)
                if overwrite:
                    results.remove_outputs(out)
                now = datetime.datetime.now().isoformat(timespec="seconds")
                results.write_json(os.path.join(out, results.RUN_FILE),
                                   {**run_record, "created": (previous or {}).get("created", now),
                                    "last_started": now})
            dist.barrier(device)
            index = {s.id: i for i, s in enumerate(samples)}
            written, chat_applied = _decode_batches(gen, mine, done, index, task, cfg, dist, out, chash)
            env = {"rank": dist.rank, "elapsed_s": time.perf_counter() - started, "samples_written": written,
                   "chat_template_applied": chat_applied,
                   **environment(device, models.resolve_dtype(cfg.dtype, device))}
            results.write_json(results.env_file(out, dist.rank), env)
            dist.barrier(device)
            if dist.rank != 0:
                return None
            return _finish(out, samples, cfg, chash, dist, started, stream)
        finally:
            dist.close()
    finally:
        lock.close()


def _decode_batches(gen, mine, done, index, task: EvalTask, cfg: EvalConfig, dist: Dist, out: str,
                    chash: str) -> Tuple[int, Optional[bool]]:
    """Generate and grade this rank's pending batches with ``gen`` (None when there are none); returns
    (problems written, whether text prompts got the chat template; None when nothing ran)."""
    if not mine:
        return 0, None
    from tqdm import tqdm

    # The package's thread policy (infogain._runtime.threads): threads, else $INFOGAIN_THREADS, else 1 for tiny work,
    # else this process's share of the free cores among the run's processes on this machine.
    threads = _threads.apply_threads(
        cfg.threads, num_parameters=_threads.model_parameters(gen.model),
        tokens_per_forward=cfg.batch_size * gen.model.config.max_position_embeddings,
        local_processes=dist.local_world_size)
    if cfg.progress and dist.rank == 0:
        print(f"{threads} torch thread{'s' if threads != 1 else ''} per process", file=sys.stderr)
    popts = prompt_options(cfg)
    writer = None   # opened with the first graded problem: a failing first batch leaves no empty file
    written = 0
    try:
        show = cfg.progress and dist.rank == 0
        for b, batch in tqdm(mine, desc=f"{cfg.task} / {cfg.sampler}", unit="batch", disable=not show,
                             file=sys.stderr):
            result = _generate_batch(gen, task, batch, cfg, popts)
            texts = result.texts or [None] * len(batch)
            batch_stats = {"size": len(batch), "nfe": result.stats.nfe,
                           "lookahead_batches": result.stats.lookahead_batches,
                           "wall_s": result.stats.wall_time_s}
            for i, s in enumerate(batch):
                if s.id in done:
                    continue
                output = task.decode(result.sequences[i].tolist(), texts[i], gen.tokenizer)
                grade = task.grade(s, output, popts)
                writer = writer or results.RankWriter(out, dist.rank)
                writer.write({
                    "id": s.id, "index": index[s.id], "batch": b, "rank": dist.rank,
                    "seed": sample_seed(cfg.seed, batch[0].id), "prompt": task.prompt(s, popts),
                    "output": output, "answer": grade.answer, "reference": task.reference(s),
                    "correct": bool(grade.correct), "metrics": dict(grade.metrics), "detail": grade.detail,
                    "stats": result.stats.rows[i].to_dict(), "batch_stats": batch_stats, "config_hash": chash,
                })
                written += 1
    finally:
        if writer is not None:
            writer.close()
    return written, bool(gen.options["chat"]) and task.prompt_ids(mine[0][1][0], gen.tokenizer) is None


def _finish(out: str, samples: List[Sample], cfg: EvalConfig, chash: str, dist: Dist, started: float,
            stream) -> dict:
    records = results.read_records(out, chash)
    ordered = [records[s.id] for s in samples if s.id in records]
    results.write_merged(out, ordered)
    environments = []
    for rank in range(dist.world_size):
        path = results.env_file(out, rank)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as fh:
                environments.append(json.load(fh))
    summary = summarize(ordered, config=cfg.to_dict(), config_hash=chash, expected=len(samples),
                        environments=environments, wall_s=time.perf_counter() - started,
                        samples_this_invocation=sum(e.get("samples_written", 0) for e in environments))
    results.write_json(os.path.join(out, results.SUMMARY_FILE), summary)
    print(format_table([summary]), file=stream)
    print(f"\nwrote {os.path.join(out, results.SUMMARY_FILE)} and {os.path.join(out, results.MERGED_FILE)}",
          file=stream)
    return summary


def _key_help() -> str:
    defaults = EvalConfig()
    return "config keys (--key value): " + ", ".join(
        f"{f.name}={getattr(defaults, f.name)!r}" for f in fields(EvalConfig))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infogain eval", allow_abbrev=False,
        description="Evaluate a sampler on a benchmark task (single process, torchrun or accelerate launch).",
        epilog=_key_help())
    parser.add_argument("--config", default=None, help="a YAML config file or the name of a shipped config")
    parser.add_argument("--list-configs", "--list_configs", action="store_true", help="list the shipped configs")
    parser.add_argument("--compare", nargs=2, metavar=("DIR1", "DIR2"), default=None,
                        help="compare two finished runs (accuracy difference with its CI, speed ratios)")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard results of a different config in output_dir instead of refusing")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``infogain eval``; returns the exit code."""
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    if args.list_configs:
        print("\n".join(describe_configs()))
        return 0
    if args.compare:
        try:
            first, second = (read_summary(d) for d in args.compare)
        except ValueError as exc:
            parser.error(str(exc))
        print(format_comparison(args.compare, first, second, compare(first, second)))
        return 0
    cfg = None
    try:
        cfg = load_config(args.config, overrides)
        run(cfg, overwrite=args.overwrite)
    except ValueError as exc:   # bad config, missing task file, refused output folder: a usage error
        parser.error(str(exc))
    except KeyboardInterrupt:
        # Every graded problem is already on disk (results.RankWriter): say how to go on, not where it stopped.
        kept = f" are kept in {output_dir(cfg)!r}" if cfg is not None else " are kept"
        print(f"\ninterrupted: the problems graded so far{kept}; run the same command again to resume",
              file=sys.stderr)
        return 130
    return 0
