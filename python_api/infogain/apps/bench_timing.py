"""How ``python -m infogain bench`` times a ``generate`` call: wall time between device synchronisations
(:func:`timed`), the share of it spent in model forwards (:class:`ForwardTimer`, :func:`profiled`) and the
steps of each kind with the lookahead premium (:func:`step_profile`). The instrumented passes perturb the
timing; the benchmark's reported tokens/s come from plain :func:`timed` runs."""
from __future__ import annotations

import statistics
import time
from typing import Dict

import torch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ForwardTimer:
    """Times every model forward (``forward``, ``prefill``, ``forward_window`` and the
    hidden-state / LM-head entry points of :class:`infogain.models.Transformer`)
    between device synchronisations, while active.

    It patches the model *instance*'s methods (``model(x)`` resolves
    ``self.forward`` on the instance) and restores them on exit; nested calls
    (``prefill`` calling ``forward``) are counted once. Use it only in a
    profiled pass: the synchronisations perturb the timing of asynchronous code.
    """

    METHODS = ("forward", "prefill", "forward_window", "window_hidden_states", "hidden_states",
               "logits_from_hidden")

    def __init__(self, model, device: torch.device):
        self.model = model
        self.device = device
        self.seconds = 0.0
        self.calls = 0
        self._depth = 0

    def _wrap(self, method):
        def timed(*args, **kwargs):
            if self._depth:
                return method(*args, **kwargs)
            _synchronize(self.device)
            start = time.perf_counter()
            self._depth += 1
            try:
                return method(*args, **kwargs)
            finally:
                self._depth -= 1
                _synchronize(self.device)
                self.seconds += time.perf_counter() - start
                self.calls += 1
        return timed

    def __enter__(self):
        for name in self.METHODS:
            if hasattr(type(self.model), name):
                setattr(self.model, name, self._wrap(getattr(self.model, name)))
        return self

    def __exit__(self, *exc):
        for name in self.METHODS:
            self.model.__dict__.pop(name, None)
        return False


def timed(fn, device: torch.device):
    _synchronize(device)
    start = time.perf_counter()
    result = fn()
    _synchronize(device)
    return result, time.perf_counter() - start


def profiled(fn, model, device: torch.device) -> Dict[str, float]:
    with ForwardTimer(model, device) as timer:
        _, wall = timed(fn, device)
    return {"wall_s": wall, "forward_s": timer.seconds, "forward_calls": timer.calls,
            "overhead": max(0.0, 1.0 - timer.seconds / wall) if wall > 0 else None}


def step_profile(fn) -> Dict[str, object]:
    """Run ``fn`` (a fast-sampler generate) with every decoding step timed; returns the steps of each
    kind and the lookahead premium.

    A step is the driver's loop iteration: the fresh forward of the rows that need one, then
    ``_step`` (decision, commits and, for lookahead rows, the candidates' batched forward). Steps
    are counted per row by the kind of their commit (``steps_<kind>``). ``lookahead_premium`` is
    the mean wall time of a step that ran the lookahead divided by that of a plain window step (a
    fresh forward and no lookahead), both from this one run (None when the run has no step of one of
    the two kinds: at threshold 1.0 every non-fill step looks ahead and reuses the winner's logits).
    """
    from ..samplers.run import _Run
    from ..stats import COMMIT_KINDS, KIND_LOOKAHEAD

    counts = {kind: 0 for kind in ("none",) + COMMIT_KINDS}
    lookahead_s, plain_s = [], []
    pending = {"forward_s": 0.0}
    original_forward, original_step = _Run._forward_rows, _Run._step

    def forward_rows(self, *args, **kwargs):
        begin = time.perf_counter()
        try:
            return original_forward(self, *args, **kwargs)
        finally:
            pending["forward_s"] += time.perf_counter() - begin

    def step(self, *args, **kwargs):
        begin = time.perf_counter()
        kinds, masks_left = original_step(self, *args, **kwargs)
        elapsed = time.perf_counter() - begin + pending["forward_s"]
        forwarded = pending["forward_s"] > 0
        pending["forward_s"] = 0.0
        for kind in kinds:
            counts["none" if kind == 0 else COMMIT_KINDS[kind - 1]] += 1
        if KIND_LOOKAHEAD in kinds:
            lookahead_s.append(elapsed)
        elif forwarded:
            plain_s.append(elapsed)
        return kinds, masks_left

    _Run._forward_rows, _Run._step = forward_rows, step
    try:
        fn()
    finally:
        _Run._forward_rows, _Run._step = original_forward, original_step
    result: Dict[str, object] = {f"steps_{kind}": n for kind, n in counts.items()}
    result["steps"] = len(lookahead_s) + len(plain_s)
    result["lookahead_steps"] = len(lookahead_s)
    result["plain_steps"] = len(plain_s)
    result["lookahead_step_ms"] = statistics.mean(lookahead_s) * 1e3 if lookahead_s else None
    result["plain_step_ms"] = statistics.mean(plain_s) * 1e3 if plain_s else None
    result["lookahead_premium"] = (statistics.mean(lookahead_s) / statistics.mean(plain_s)
                                   if lookahead_s and plain_s else None)
    return result
