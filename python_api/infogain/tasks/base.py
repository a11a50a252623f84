"""What every evaluation task provides: loading its local file, prompts, answer extraction, grading.

An :class:`EvalTask` turns one record of a benchmark file into a prompt and
grades a generation against that record. Tasks never download anything: they
read a local file in the benchmark's public format, and a missing or malformed
file raises :class:`TaskFileError` naming the expected path and format.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence


class TaskFileError(ValueError):
    """A task file is missing or not in the format the task reads (the message says which)."""


@dataclass(frozen=True)
class Sample:
    """One benchmark problem: a stable ``id`` (unique in its file) and the file's ``record``."""

    id: str
    record: Dict[str, object]


@dataclass(frozen=True)
class Grade:
    """The grading of one generation.

    ``answer``: the extracted answer (None when none could be found);
    ``correct``: whether it is right by the task's headline metric
    (:attr:`EvalTask.headline_metric`); ``detail``: why not, when useful (a
    failing test's status, a parse error); ``metrics``: the verdict under each
    metric of a task that reports several (GSM8K's ``strict-match`` and
    ``flexible-extract``), the headline included; empty for one-metric tasks.
    """

    answer: Optional[str]
    correct: bool
    detail: Optional[str] = None
    metrics: Mapping[str, bool] = field(default_factory=dict)


@dataclass
class PromptOptions:
    """How a task builds prompts and grades (set from the eval config).

    ``fewshot``: prepend the task's worked examples (where customary);
    ``template``: a ``str.format`` template over the record's fields that
    replaces the task's own prompt (``{question}``, ``{problem}``, ...);
    ``code_timeout_s`` / ``code_memory_mb``: limits of the code-running graders.
    """

    fewshot: bool = True
    template: Optional[str] = None
    code_timeout_s: float = 10.0
    code_memory_mb: int = 1024


def file_digest(path: str) -> str:
    """sha256 of a file's bytes (the task-file part of a run's config hash)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json_records(path: str, task: str, file_format: str) -> List[dict]:
    """Records of a ``.json`` (a list, or an object of records) or ``.jsonl`` file (one object per line)."""
    if not os.path.isfile(path):
        raise TaskFileError(f"task {task!r}: data file {path!r} not found; expected {file_format} "
                            f"(set data_path to the local file; nothing is downloaded)")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    records: List[object]
    try:
        data = json.loads(text)
        if isinstance(data, list):
            records = data
        elif isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()):
            records = list(data.values())
        else:
            records = [data]
    except json.JSONDecodeError:
        records = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise TaskFileError(f"task {task!r}: {path}:{line_no} is not JSON ({exc.msg}); expected "
                                    f"{file_format}") from None
    if not records:
        raise TaskFileError(f"task {task!r}: data file {path!r} holds no records; expected {file_format}")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise TaskFileError(f"task {task!r}: record {i} of {path!r} is a {type(rec).__name__}, not an "
                                f"object; expected {file_format}")
    return records  # type: ignore[return-value]


def check_fields(records: Sequence[dict], fields: Sequence[str], path: str, task: str, file_format: str) -> None:
    for i, rec in enumerate(records):
        missing = [f for f in fields if f not in rec]
        if missing:
            raise TaskFileError(f"task {task!r}: record {i} of {path!r} lacks field(s) {missing}; expected "
                                f"{file_format}")


def samples_from_records(records: Sequence[dict], id_fields: Sequence[str]) -> List[Sample]:
    """Samples with the first present id field as id (else the record's position), ids made unique."""
    samples, seen = [], set()
    for i, rec in enumerate(records):
        raw = next((rec[f] for f in id_fields if f in rec and rec[f] is not None), i)
        sid = str(raw)
        if sid in seen:  # a file with repeated ids still gets one result per record
            sid = f"{sid}#{i}"
        seen.add(sid)
        samples.append(Sample(id=sid, record=dict(rec)))
    return samples


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string."""
    end = len(text)
    for stop in stops:
        pos = text.find(stop)
        if pos != -1:
            end = min(end, pos)
    return text[:end]


class EvalTask:
    """Base class of the evaluation tasks.

    Subclasses set ``name``, ``file_name`` (default data file), ``file_format``
    (how the error messages describe the expected file), ``fields`` (required
    record fields) and ``stops`` (strings at which a generation is cut before
    extraction), and implement :meth:`prompt` and :meth:`grade`. A task whose
    field reports several metrics names the one its accuracy is quoted by in
    ``headline_metric`` (the summary's ``accuracy``) and describes its grader
    in :meth:`grader`.
    """

    name: str = ""
    file_name: str = ""
    file_format: str = ""
    fields: Sequence[str] = ()
    id_fields: Sequence[str] = ("task_id", "unique_id", "id")
    stops: Sequence[str] = ()
    #: When set, the generation length the task's answers need (the toy tasks).
    required_gen_length: Optional[int] = None
    #: The metric ``Grade.correct`` (and so the run's accuracy) reports.
    headline_metric: str = "accuracy"

    def grader(self) -> str:
        """Which grader gives the verdicts, with its version where it is a library (recorded in the summary)."""
        return "infogain"

    def default_path(self, data_dir: str) -> str:
        return os.path.join(data_dir, self.file_name)

    def load(self, path: Optional[str], *, seed: int = 0, max_samples: Optional[int] = None) -> List[Sample]:
        """The samples of the task file at ``path``, in file order (the first ``max_samples``)."""
        if path is None:
            raise TaskFileError(f"task {self.name!r} needs data_path: {self.file_format}")
        records = read_json_records(path, self.name, self.file_format)
        check_fields(records, self.fields, path, self.name, self.file_format)
        samples = samples_from_records(records, self.id_fields)
        return samples[:max_samples] if max_samples is not None else samples

    def source_digest(self, path: Optional[str], *, seed: int = 0) -> str:
        """A digest of what the samples are made from (the task file's bytes)."""
        if path is None or not os.path.isfile(path):
            raise TaskFileError(f"task {self.name!r}: data file {path!r} not found; expected {self.file_format}")
        return file_digest(path)

    def prompt(self, sample: Sample, options: PromptOptions) -> str:
        """The prompt text of ``sample`` (before any chat template)."""
        raise NotImplementedError

    def prompt_ids(self, sample: Sample, tokenizer) -> Optional[List[int]]:
        """Token ids of the prompt when the task encodes them itself (toy tasks); None for text tasks."""
        return None

    def decode(self, token_ids: Sequence[int], text: Optional[str], tokenizer) -> str:
        """The generation text (``text``: the sampler's decoding, cut at EOS)."""
        return text if text is not None else ""

    def grade(self, sample: Sample, generation: str, options: PromptOptions) -> Grade:
        raise NotImplementedError

    def reference(self, sample: Sample) -> Optional[str]:
        """The reference answer stored with results (for reading them; grading does not use it)."""
        return None

    def _format(self, template: str, sample: Sample) -> str:
        try:
            return template.format(**sample.record)
        except KeyError as exc:
            raise ValueError(f"prompt_template refers to {{{exc.args[0]}}}, which task {self.name!r} records "
                             f"do not have (fields: {sorted(sample.record)})") from None

    def _build(self, options: PromptOptions, sample: Sample, question: str, shots: Sequence[str] = (),
               instruction: str = "") -> str:
        """``options.template`` if given; else ``instruction``, the task's shots when few-shot, ``question``."""
        if options.template is not None:
            return self._format(options.template, sample)
        return instruction + ("".join(shots) if options.fewshot else "") + question
