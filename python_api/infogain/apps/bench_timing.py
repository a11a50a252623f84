"""How ``python -m infogain bench`` times a ``generate`` call: wall time between device synchronisations
(:func:`timed`), the share of it spent outside the model (:class:`ForwardTimer`, :func:`profiled`) and the
steps of each kind with the lookahead premium (:func:`step_profile`). The instrumented passes perturb the
timing; the benchmark's reported tokens/s come from plain :func:`timed` runs.

What counts as the model: its forwards (the methods in :attr:`ForwardTimer.METHODS`) and the fused LM
head of the lookahead (:func:`infogain.samplers.lookahead.fused_head`), which replaces the model's own
head there: the lookahead's forward stops at the hidden states, and the op turns them into the
per-position statistics of the logits (the LM head's product, the entropy and top probabilities at
each still-masked position, and the candidates' masked mean of those entropies) without
materialising the logits. Everything else, the sampler's per-step logic, is the overhead."""
from __future__ import annotations

import functools
import statistics
import time
from typing import Callable, Dict

import torch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_clock(device: torch.device) -> Callable[[], float]:
    """The clock of the profiled passes: on a CPU run with one torch thread, the CPU time of this
    thread (``time.thread_time``), which other processes' load on a shared machine barely moves
    (everything runs on this thread then); otherwise wall time (worker threads and the device run
    beside it)."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.thread_time
    return time.perf_counter


class ForwardTimer:
    """Times every model forward (``forward``, ``prefill``, ``forward_window`` and the
    hidden-state / LM-head entry points of :class:`infogain.models.Transformer`) and, with
    ``fused_head``, every call of the lookahead's fused LM head
    (:func:`infogain.samplers.lookahead.fused_head`), between device synchronisations on ``clock``,
    while active.

    It patches the model *instance*'s methods (``model(x)`` resolves
    ``self.forward`` on the instance) and the head function of the lookahead module, and restores
    them on exit; a patched method keeps its signature (the sampler inspects which keywords a
    method takes); nested calls (``prefill`` calling ``forward``) are counted once. Use it only in a
    profiled pass: the synchronisations perturb the timing of asynchronous code.
    """

    METHODS = ("forward", "prefill", "forward_window", "window_hidden_states", "hidden_states",
               "logits_from_hidden")

    def __init__(self, model, device: torch.device, clock: Callable[[], float] = time.perf_counter,
                 fused_head: bool = True):
        self.model = model
        self.device = device
        self.clock = clock
        self.seconds = 0.0
        self.calls = 0
        self._depth = 0
        # The lookahead's fused LM head is the model's head there (see the module docstring).
        self._head_module = None
        if fused_head:
            from ..samplers import lookahead

            self._head_module = lookahead

    def _wrap(self, method):
        @functools.wraps(method)
        def timed(*args, **kwargs):
            if self._depth:
                return method(*args, **kwargs)
            _synchronize(self.device)
            start = self.clock()
            self._depth += 1
            try:
                return method(*args, **kwargs)
            finally:
                self._depth -= 1
                _synchronize(self.device)
                self.seconds += self.clock() - start
                self.calls += 1
        return timed

    def __enter__(self):
        # Methods already replaced on the instance (a patch, a spy, an outer timer) come back on exit.
        self._saved = {n: self.model.__dict__[n] for n in self.METHODS if n in self.model.__dict__}
        for name in self.METHODS:
            if hasattr(type(self.model), name):
                setattr(self.model, name, self._wrap(getattr(self.model, name)))
        if self._head_module is not None:
            self._head = self._head_module.fused_head
            self._head_module.fused_head = self._wrap(self._head)
        return self

    def __exit__(self, *exc):
        for name in self.METHODS:
            self.model.__dict__.pop(name, None)
        for name, value in self._saved.items():
            setattr(self.model, name, value)
        if self._head_module is not None:
            self._head_module.fused_head = self._head
        return False


def timed(fn, device: torch.device, clock: Callable[[], float] = time.perf_counter):
    _synchronize(device)
    start = clock()
    result = fn()
    _synchronize(device)
    return result, clock() - start


def profiled(fn, model, device: torch.device, passes: int = 3) -> Dict[str, float]:
    """Run ``fn`` ``passes`` times with every model forward timed (:class:`ForwardTimer`, on
    :func:`profile_clock`); returns the pass with the median overhead: its ``wall_s``, ``forward_s``
    (time in the model), ``forward_calls`` and ``overhead`` (the share of ``wall_s`` outside the
    model). Several passes because one pass on a shared machine moves by several percent."""
    clock = profile_clock(device)
    results = []
    for _ in range(passes):
        with ForwardTimer(model, device, clock) as timer:
            _, wall = timed(fn, device, clock)
        results.append({"wall_s": wall, "forward_s": timer.seconds, "forward_calls": timer.calls,
                        "overhead": max(0.0, 1.0 - timer.seconds / wall) if wall > 0 else None})
    if any(result["overhead"] is None for result in results):
        return results[0]
    return sorted(results, key=lambda result: result["overhead"])[(len(results) - 1) // 2]


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
