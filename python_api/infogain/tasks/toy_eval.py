"""The demo's synthetic tasks (:mod:`.toy`) as evaluation tasks, for end-to-end runs with the shipped toy model.

``toy_multiplication`` and ``toy_sudoku`` read no file: their problems are the
first ``max_samples`` (default 100) held-out examples drawn with the run's
seed (a longer run extends a shorter one). Prompts and generations go through
:class:`~.toy.CharCodec` (BOS, then one token per character), and a
generation is graded by the toy task's own rule (any correct answer counts).
"""
from __future__ import annotations

import hashlib
from typing import List, Optional, Sequence

from .base import EvalTask, Grade, PromptOptions, Sample, TaskFileError
from .toy import CharCodec, Task

DEFAULT_NUM_SAMPLES = 100


class ToyEvalTask(EvalTask):
    """An evaluation task over a toy :class:`~.toy.Task`."""

    file_format = "no file: problems are drawn from the task's held-out split with the run's seed"

    def __init__(self, toy: Task):
        self.toy = toy
        self.name = f"toy_{toy.name}"
        self.required_gen_length = toy.gen_length
        self._codecs: dict = {}

    def load(self, path: Optional[str], *, seed: int = 0, max_samples: Optional[int] = None) -> List[Sample]:
        if path is not None:
            raise TaskFileError(f"task {self.name!r} reads no data file (got data_path={path!r}); its problems "
                                f"are generated from the seed")
        examples = self.toy.examples("heldout", max_samples or DEFAULT_NUM_SAMPLES, seed)
        return [Sample(id=str(i), record={"prompt": ex.prompt, "target": ex.target})
                for i, ex in enumerate(examples)]

    def source_digest(self, path: Optional[str], *, seed: int = 0) -> str:
        # The problems are a function of the task's parameters and the seed.
        key = f"{self.name}:{self.toy.charset}:{self.toy.prompt_length}:{self.toy.gen_length}:{vars(self.toy)}:{seed}"
        return hashlib.sha256(key.encode()).hexdigest()

    def _codec(self, tokenizer) -> CharCodec:
        if id(tokenizer) not in self._codecs:
            self._codecs[id(tokenizer)] = CharCodec(tokenizer, self.toy.charset)
        return self._codecs[id(tokenizer)]

    def prompt(self, sample: Sample, options: PromptOptions) -> str:
        return str(sample.record["prompt"])

    def prompt_ids(self, sample: Sample, tokenizer) -> Optional[List[int]]:
        return self._codec(tokenizer).prompt_ids([str(sample.record["prompt"])])[0].tolist()

    def decode(self, token_ids: Sequence[int], text: Optional[str], tokenizer) -> str:
        return self._codec(tokenizer).decode(token_ids)

    def reference(self, sample: Sample) -> Optional[str]:
        return str(sample.record["target"])

    def grade(self, sample: Sample, generation: str, options: PromptOptions) -> Grade:
        correct = self.toy.is_correct(str(sample.record["prompt"]), generation)
        return Grade(answer=generation, correct=correct)
