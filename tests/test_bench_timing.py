"""The bench's :class:`infogain.apps.bench_timing.ForwardTimer` on a real run: the wrapped model
methods keep their signatures, so the sampler still passes them the keywords it passes an
unwrapped model (``keep``, ``read``, ``check_values``), and the lookahead's fused LM head
(``samplers.lookahead.fused_head``) is counted as model time."""
import contextlib
import functools
import inspect

import pytest
import torch

import infogain.models
from infogain.apps.bench_timing import ForwardTimer
from infogain.samplers import InfoGainSampler, lookahead
from test_samplers_helpers import single_thread  # noqa: F401  (autouse fixture)
from tiny_checkpoints import write_tiny_checkpoint

# Threshold 1.0: every step that does not fill looks ahead (fused head calls).
SETTINGS = dict(gen_length=8, steps=4, block_length=4, candidate_number=3, position_temperature=0.5,
                threshold=1.0, temperature=0.0, seed=0, fused_head=True)
PROMPTS = [[2, 3, 4, 5, 6], [7, 8, 9, 10, 11]]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    # Hidden size 256: from there the lookahead passes the positions it reads (``read``).
    path = write_tiny_checkpoint("llada", tmp_path_factory.mktemp("tiny") / "llada", d_model=256)
    return infogain.models.load(path)[0]


def test_wrapped_methods_keep_their_signatures(model):
    expected = {name: inspect.signature(getattr(model, name)) for name in ForwardTimer.METHODS}
    assert "keep" in expected["forward"].parameters and "read" in expected["window_hidden_states"].parameters
    with ForwardTimer(model, torch.device("cpu")):
        for name in ForwardTimer.METHODS:
            assert name in model.__dict__, name   # wrapped on the instance
            assert inspect.signature(getattr(model, name)) == expected[name], name
    assert not any(name in model.__dict__ for name in ForwardTimer.METHODS)


@contextlib.contextmanager
def wrapped_on_instance(model, make):
    """Each of the timer's methods replaced on the instance by ``make(name, method)``, a wrapper
    that keeps its signature (what the sampler inspects), before the timer wraps it; removed after
    (the timer's exit already drops instance attributes: monkeypatch could not undo them)."""
    for name in ForwardTimer.METHODS:
        method = getattr(model, name)
        setattr(model, name, functools.wraps(method)(make(name, method)))
    try:
        yield
    finally:
        for name in ForwardTimer.METHODS:
            model.__dict__.pop(name, None)


def keyword_spy(seen):
    def make(name, method):
        def spy(*args, **kwargs):
            seen.add((name, tuple(sorted(kwargs))))
            return method(*args, **kwargs)
        return spy
    return make


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_the_sampler_passes_the_same_keywords_under_the_timer(model, cache):
    runs = []
    for timed in (False, True):
        seen = set()
        with wrapped_on_instance(model, keyword_spy(seen)):
            if timed:
                with ForwardTimer(model, torch.device("cpu")):
                    result = InfoGainSampler(model).generate(PROMPTS, **SETTINGS, cache=cache)
            else:
                result = InfoGainSampler(model).generate(PROMPTS, **SETTINGS, cache=cache)
        assert result.stats.tokens["lookahead"] > 0
        runs.append((seen, result.sequences))
    (plain, plain_sequences), (timed, timed_sequences) = runs
    assert timed == plain
    assert torch.equal(timed_sequences, plain_sequences)
    keywords = {keyword for _, names in timed for keyword in names}
    expected = {"keep", "check_values"} | ({"read"} if cache == "dual" else set())
    assert expected <= keywords, (expected, timed)
    if cache == "dual":
        assert any(name == "window_hidden_states" and "read" in names for name, names in timed)


def test_fused_head_counts_as_model_time(model, monkeypatch):
    """A clock that advances only inside the fused head: the timer's model time is then exactly
    one unit per fused-head call, each call counted; without ``fused_head`` none of it is."""
    now = [0.0]
    head_calls = []
    original = lookahead.fused_head

    def head(*args, **kwargs):
        head_calls.append(1)
        now[0] += 1.0
        return original(*args, **kwargs)

    monkeypatch.setattr(lookahead, "fused_head", head)
    forward_calls, depth = [], [0]

    def outermost_counter(name, method):
        def counted(*args, **kwargs):
            forward_calls.append(name) if not depth[0] else None
            depth[0] += 1
            try:
                return method(*args, **kwargs)
            finally:
                depth[0] -= 1
        return counted

    clock = lambda: now[0]   # noqa: E731
    with wrapped_on_instance(model, outermost_counter):
        with ForwardTimer(model, torch.device("cpu"), clock=clock) as timer:
            InfoGainSampler(model).generate(PROMPTS, **SETTINGS, cache="dual")
    assert head_calls and lookahead.fused_head is head   # restored on exit
    assert timer.seconds == float(len(head_calls))
    # Every outermost call counted once: the model's own and the head's.
    assert timer.calls == len(forward_calls) + len(head_calls)
    head_calls.clear()
    with ForwardTimer(model, torch.device("cpu"), clock=clock, fused_head=False) as timer:
        InfoGainSampler(model).generate(PROMPTS, **SETTINGS, cache="dual")
    assert head_calls and timer.seconds == 0.0


def test_exit_restores_a_method_already_replaced_on_the_instance(model):
    original = model.forward

    @functools.wraps(original)
    def patched(*args, **kwargs):
        return original(*args, **kwargs)

    model.forward = patched
    try:
        with ForwardTimer(model, torch.device("cpu")):
            pass
        assert model.__dict__.get("forward") is patched
    finally:
        model.__dict__.pop("forward", None)
