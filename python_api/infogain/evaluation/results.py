"""The output folder of an eval run: per-rank JSONL written as problems complete, resume, merge.

Layout of ``output_dir``:

* ``run.json`` -- the resolved config and its hash (rewritten by rank 0 at every start:
  its modification time is when the invocation started);
* ``samples.rank<R>.jsonl`` -- one JSON line per graded problem, appended and
  flushed to disk by process R as soon as the problem is graded, stamped with
  its invocation (``invocation``: when it started, and the seconds from then to
  this problem) so that the summary can add up the wall time of every
  invocation, killed ones included;
* ``env.rank<R>.json`` -- process R's environment and timing (written at its end);
* ``samples.jsonl`` and ``summary.json`` -- merged by rank 0 after the barrier.

A rerun reads every ``samples.rank*.jsonl`` (whatever the number of processes
that wrote them) and skips the problems already there, so a kill loses only
the problems in flight. A line cut short by a kill is dropped on the next start.
"""
from __future__ import annotations

import datetime
import glob
import json
import os
import re
import time
from typing import Dict, Iterable, List, Optional

RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
MERGED_FILE = "samples.jsonl"
_RANK_FILE = re.compile(r"samples\.rank(\d+)\.jsonl$")


def rank_file(directory: str, rank: int) -> str:
    return os.path.join(directory, f"samples.rank{rank}.jsonl")


def env_file(directory: str, rank: int) -> str:
    return os.path.join(directory, f"env.rank{rank}.json")


def read_run(directory: str) -> Optional[dict]:
    path = os.path.join(directory, RUN_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def existing_outputs(directory: str) -> List[str]:
    """Files of a previous run in ``directory``."""
    names = [RUN_FILE, SUMMARY_FILE, MERGED_FILE]
    found = [os.path.join(directory, n) for n in names if os.path.isfile(os.path.join(directory, n))]
    found += glob.glob(os.path.join(directory, "samples.rank*.jsonl"))
    found += glob.glob(os.path.join(directory, "env.rank*.json"))
    return sorted(found)


def write_json(path: str, data: dict) -> None:
    """Write atomically (a reader never sees half a file)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.replace(tmp, path)


def _lines(path: str) -> Iterable[dict]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                return  # cut short by a kill: dropped (the problem is redone)
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def read_records(directory: str, config_hash: str) -> Dict[str, dict]:
    """id -> record of every graded problem of this config in the folder's rank files (first one wins)."""
    records: Dict[str, dict] = {}
    paths = sorted(glob.glob(os.path.join(directory, "samples.rank*.jsonl")),
                   key=lambda p: int(_RANK_FILE.search(p).group(1)))
    for path in paths:
        for rec in _lines(path):
            if rec.get("config_hash") == config_hash and "id" in rec:
                records.setdefault(str(rec["id"]), rec)
    return records


def invocation_started(directory: str) -> float:
    """When the current invocation started, in epoch seconds: the time ``run.json`` was last written (rank 0
    rewrites it at every start, before any rank decodes, so all ranks of one invocation read the same time, to
    the nanosecond); now when there is no ``run.json``."""
    try:
        return os.stat(os.path.join(directory, RUN_FILE)).st_mtime_ns / 1e9
    except FileNotFoundError:
        return time.time()


class RankWriter:
    """Appends records to ``samples.rank<R>.jsonl``, each flushed and fsynced before the next problem.

    Each record gets ``invocation``: ``{"started": <ISO time the invocation started, to the microsecond; it names
    the invocation>, "elapsed_s": <seconds from then to this record>}``.
    """

    def __init__(self, directory: str, rank: int):
        self.path = rank_file(directory, rank)
        self._started = invocation_started(directory)
        self._invocation = datetime.datetime.fromtimestamp(self._started).isoformat(timespec="microseconds")
        self._drop_partial_line()
        self._fh = open(self.path, "a", encoding="utf-8")

    def _drop_partial_line(self) -> None:
        if not os.path.isfile(self.path):
            return
        with open(self.path, "rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)

    def write(self, record: dict) -> None:
        record = {**record, "invocation": {"started": self._invocation,
                                           "elapsed_s": max(0.0, time.time() - self._started)}}
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def write_merged(directory: str, records: List[dict]) -> str:
    path = os.path.join(directory, MERGED_FILE)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def remove_outputs(directory: str) -> None:
    for path in existing_outputs(directory):
        os.remove(path)
