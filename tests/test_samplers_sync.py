"""Host synchronisations of the samplers' decoding loop: at most one per step.

On CPU nothing really synchronises, so the test counts the operations that would on a GPU:

* every read of a tensor value on the host: ``aten._local_scalar_dense`` (what ``.item()``,
  ``bool()``, ``int()``, ``float()`` of a tensor go through) and ``Tensor.tolist`` / ``numpy``
  (on CPU these read memory directly, so they are counted by wrapping the methods);
* every op whose output shape depends on the data (``nonzero``, ``unique``, ``masked_select``,
  ...): the host must learn the shape.

Operations inside the ``infogain`` custom ops are not counted: on CPU those run the torch
reference (whose chunking reads shapes back), on CUDA the Triton kernels, which never
synchronise. Host-to-device copies only cost a sync on CUDA; the GPU test counts them with
``torch.cuda.set_sync_debug_mode``.
"""
import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import infogain.models
from infogain.samplers import make_sampler
from infogain.samplers.sampler import _Run
from test_samplers_helpers import single_thread  # noqa: F401  (autouse fixture)
from tiny_checkpoints import write_tiny_checkpoint

SETTINGS = dict(gen_length=8, steps=4, block_length=4, candidate_number=4, position_temperature=0.5,
                threshold=0.9, seed=0)
PROMPTS = [[2, 3, 4, 5, 6], [7, 8, 9, 10, 11]]            # equal lengths: no padding
PADDED_PROMPTS = [[2, 3, 4, 5, 6], [7, 8]]

# Syncs a run may make outside its steps: the first (checked) model call's token-id check,
# the statistics read-back at the end (three tensors) and one spare.
RUN_CONSTANT = 5

# Ops whose output shape depends on the data, plus the scalar reads the wrapped methods funnel into.
_DATA_DEPENDENT = {"nonzero", "_unique2", "unique_dim", "unique_consecutive", "masked_select", "bincount",
                   "equal", "is_nonzero", "_local_scalar_dense"}
# repeat_interleave is data dependent only with a tensor of repeats and no output_size.
_REPEATS_FROM_TENSOR = {"Tensor", "self_Tensor"}
# Python-level reads: on CPU some take fast paths that never reach the dispatcher.
_READ_METHODS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


class SyncCounter(TorchDispatchMode):
    """Counts host read-backs outside the ``infogain`` custom ops; ``events`` names them."""

    def __init__(self):
        super().__init__()
        self.events = []
        self._inside_op = 0
        self._inside_read = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "infogain":
            self._inside_op += 1
            try:
                return func(*args, **kwargs)
            finally:
                self._inside_op -= 1
        name = func.overloadpacket.__name__
        data_dependent = name in _DATA_DEPENDENT or (
            name == "repeat_interleave" and func._overloadname in _REPEATS_FROM_TENSOR
            and kwargs.get("output_size") is None)
        if data_dependent and not self._inside_read:
            self.events.append(name)
        return func(*args, **kwargs)

    @contextlib.contextmanager
    def host_read(self, name):
        """One read counted once, whatever it dispatches to underneath."""
        if not self._inside_op and not self._inside_read:
            self.events.append(name)
        self._inside_read += 1
        try:
            yield
        finally:
            self._inside_read -= 1

    @property
    def count(self):
        return len(self.events)


@contextlib.contextmanager
def counting_syncs(monkeypatch):
    counter = SyncCounter()
    for method in _READ_METHODS:
        original = getattr(torch.Tensor, method)

        def wrapped(self, *args, _original=original, _name=method, **kwargs):
            with counter.host_read(_name):
                return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, wrapped)
    try:
        with counter:
            yield counter
    finally:
        monkeypatch.undo()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_sync")
    return {arch: infogain.models.load(write_tiny_checkpoint(arch, root / arch))[0]
            for arch in ("llada", "dream", "sdar")}


def _count_per_step(monkeypatch, sampler, prompts, reads_free=False, **options):
    """Run ``generate``; returns (syncs in total, steps, syncs of each step). The driver takes its
    accelerator path (candidates before the one read-back) unless ``reads_free``."""
    from infogain.samplers import sampler as sampler_module

    monkeypatch.setattr(sampler_module, "_host_reads_are_free", lambda device: reads_free)
    per_step = []
    original_step = _Run._step

    def step(self, *args, **kwargs):
        before = counter.count
        try:
            return original_step(self, *args, **kwargs)
        finally:
            per_step.append(counter.count - before)

    monkeypatch.setattr(_Run, "_step", step)
    with counting_syncs(monkeypatch) as counter:
        result = sampler.generate(prompts, **{**SETTINGS, **options})
    return counter, per_step, result


def test_counter_registers_deliberate_reads(monkeypatch):
    x = torch.arange(6.0)
    with counting_syncs(monkeypatch) as counter:
        x.sum().item()
        bool(x.any())
        x.tolist()
        x.nonzero()
        torch.unique(x)
        x + 1                      # no read-back
        torch.sort(x)              # no read-back
        x.repeat_interleave(2)     # no read-back (int repeats)
        x.repeat_interleave(torch.tensor([1, 2, 0, 1, 1, 1]))
    assert counter.events == ["item", "__bool__", "tolist", "nonzero", "_unique2", "repeat_interleave"]


def test_counter_ignores_the_inside_of_the_custom_ops_but_not_their_wrappers(monkeypatch):
    from infogain_kernels import token_stats

    logits = torch.randn(3, 7)
    with counting_syncs(monkeypatch) as counter:
        token_stats(logits, check_values=False)
    assert counter.count == 0
    with counting_syncs(monkeypatch) as counter:
        token_stats(logits)        # the checked call reads its flag back
    assert counter.count >= 1


@pytest.mark.parametrize("name", ["info_gain", "fast_dllm", "confidence"])
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_at_most_one_sync_per_step(models, monkeypatch, cache, name):
    sampler = make_sampler(name, models["llada"])
    counter, per_step, result = _count_per_step(monkeypatch, sampler, PROMPTS, cache=cache)
    assert per_step and all(n == 1 for n in per_step), (per_step, counter.events)
    assert counter.count <= len(per_step) + RUN_CONSTANT, counter.events
    if name == "info_gain":
        assert result.stats.lookahead_batches > 0   # the lookahead path was measured


@pytest.mark.parametrize("cache", ["none", "prefix"])
def test_dream_has_one_sync_per_step(models, monkeypatch, cache):
    counter, per_step, _ = _count_per_step(monkeypatch, make_sampler("info_gain", models["dream"]), PROMPTS,
                                           cache=cache)
    assert per_step and all(n == 1 for n in per_step), (per_step, counter.events)


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_padded_batch_has_one_sync_per_step(models, monkeypatch, cache):
    sampler = make_sampler("info_gain", models["llada"])
    counter, per_step, result = _count_per_step(monkeypatch, sampler, PADDED_PROMPTS, cache=cache)
    assert all(n == 1 for n in per_step), (per_step, counter.events)
    assert counter.count <= len(per_step) + RUN_CONSTANT, counter.events


@pytest.mark.parametrize("cache", ["none", "prefix"])
def test_block_causal_model_has_one_sync_per_step(models, monkeypatch, cache):
    sampler = make_sampler("info_gain", models["sdar"])
    counter, per_step, _ = _count_per_step(monkeypatch, sampler, PROMPTS, cache=cache)
    assert all(n == 1 for n in per_step), (per_step, counter.events)
    assert counter.count <= len(per_step) + RUN_CONSTANT, counter.events


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_cpu_path_reads_the_kept_candidates_only_on_lookahead_steps(models, monkeypatch, cache):
    """Where reads are free (the CPU), candidates are built after the read-back: a second read
    (their kept mask) on the steps that look ahead, one read on the others."""
    lookahead_calls = []
    original = _Run._lookahead

    def lookahead(self, *args, **kwargs):
        lookahead_calls.append(len(lookahead_calls))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(_Run, "_lookahead", lookahead)
    sampler = make_sampler("info_gain", models["llada"])
    counter, per_step, _ = _count_per_step(monkeypatch, sampler, PROMPTS, reads_free=True, cache=cache)
    assert set(per_step) <= {1, 2}, per_step
    assert 1 in per_step and lookahead_calls, per_step      # the settings have both kinds of step
    assert per_step.count(2) == len(lookahead_calls), per_step


def test_an_extra_read_in_a_step_is_detected(models, monkeypatch):
    """The bound can fail: one deliberate ``.item()`` per step breaks it."""
    original = _Run._decide

    def decide_with_read(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        result[2].sum().item()  # the step's entropies
        return result

    monkeypatch.setattr(_Run, "_decide", decide_with_read)
    sampler = make_sampler("info_gain", models["llada"])
    counter, per_step, _ = _count_per_step(monkeypatch, sampler, PROMPTS, cache="prefix")
    assert all(n == 2 for n in per_step), per_step


# Window forwards are poisoned at the hidden states, which the logits (forward_window) and the fused
# lookahead (lm_head_entropy on the hidden states) both go through.

@pytest.mark.parametrize("fused_head", [True, False])
def test_nan_logits_raise_after_the_step_read_back(models, monkeypatch, fused_head):
    model = models["llada"]
    original = model.window_hidden_states

    def poisoned(*args, **kwargs):
        hidden = original(*args, **kwargs)
        hidden[..., 5] = float("nan")
        return hidden

    monkeypatch.setattr(model, "window_hidden_states", poisoned)
    with pytest.raises(ValueError, match=r"NaN / all -inf logits .*block 0 step"):
        make_sampler("info_gain", model).generate(PROMPTS, **SETTINGS, cache="dual", fused_head=fused_head)


@pytest.mark.parametrize("fused_head", [True, False])
def test_nan_only_in_lookahead_logits_raises(models, monkeypatch, fused_head):
    model = models["llada"]
    original = model.window_hidden_states

    def poisoned(window_ids, **kwargs):
        hidden = original(window_ids, **kwargs)
        if window_ids.shape[0] > 2:        # a lookahead batch (several candidates per row)
            hidden[..., 5] = float("nan")
        return hidden

    monkeypatch.setattr(model, "window_hidden_states", poisoned)
    with pytest.raises(ValueError, match=r"NaN / all -inf logits in the lookahead forward of block 0"):
        make_sampler("info_gain", model).generate(PROMPTS, **SETTINGS, cache="prefix", fused_head=fused_head)


def _gpu_syncs_per_run(sampler, cache, extra_read=False):
    """(steps, synchronisation warnings) of one ``generate`` on CUDA under
    ``torch.cuda.set_sync_debug_mode("warn")``; ``extra_read`` adds one ``.item()`` per step."""
    import warnings

    steps = []
    original_step = _Run._step

    def step(self, *args, **kwargs):
        steps.append(1)
        result = original_step(self, *args, **kwargs)
        if extra_read:
            self.canvas.sum().item()
        return result

    _Run._step = step
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                sampler.generate(PROMPTS, **SETTINGS, cache=cache)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    finally:
        _Run._step = original_step
    return len(steps), [str(w.message) for w in caught if "synchroniz" in str(w.message)]


@pytest.mark.gpu
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_gpu_sync_debug_mode_counts_at_most_one_sync_per_step(tmp_path, cache):
    """On CUDA, count every synchronising call (read-backs and blocking copies) the driver makes.

    Positive controls: steps ran, and one deliberate ``.item()`` per step adds at least one warning
    per step (so the warnings fire and are caught; the step's own read-back may avoid the warning,
    e.g. through a pinned copy and an event, so it is not counted on as a control)."""
    model = infogain.models.load(write_tiny_checkpoint("llada", tmp_path / "llada"), device="cuda")[0]
    sampler = make_sampler("info_gain", model)
    sampler.generate(PROMPTS, **SETTINGS, cache=cache)   # warm-up (kernels compiled, allocators filled)
    steps, syncs = _gpu_syncs_per_run(sampler, cache)
    assert steps > 0
    assert len(syncs) <= steps + RUN_CONSTANT, syncs
    steps_again, with_extra = _gpu_syncs_per_run(sampler, cache, extra_read=True)
    assert steps_again == steps and len(with_extra) >= len(syncs) + steps, (syncs, with_extra)


# ----------------------------------------------------------------------------- the model's window forward

@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_window_forward_with_host_rows_reads_nothing_back(models, monkeypatch, arch):
    model = models[arch]
    canvas = torch.randint(2, 90, (2, 12))
    start = 8
    with torch.inference_mode():
        _, cache = model.prefill(canvas, None, mode="prefix", start=start)
        assert cache.all_real   # no mask given: known on the host to have no padding
        rows = (1, 0, 1, 1)
        window = canvas[list(rows), start:]
        with counting_syncs(monkeypatch) as counter:
            from_tuple = model.forward_window(window, start=start, cache=cache, mode="prefix", cache_rows=rows,
                                              check_values=False)
        assert counter.events == []
        from_tensor = model.forward_window(window, start=start, cache=cache, mode="prefix",
                                           cache_rows=torch.tensor(rows))
        # The same layout and kernels: identical logits.
        assert torch.equal(from_tuple, from_tensor)
        with counting_syncs(monkeypatch) as counter:
            model.forward_window(window, start=start, cache=cache, mode="prefix", cache_rows=torch.tensor(rows),
                                 check_values=False)
        assert counter.events == ["tolist"]   # a tensor of rows is read back once


def test_unchecked_forward_and_prefill_read_nothing_back(models, monkeypatch):
    model = models["llada"]
    canvas = torch.randint(2, 90, (2, 10))
    with torch.inference_mode(), counting_syncs(monkeypatch) as counter:
        model(canvas, None, check_values=False)
        model.prefill(canvas, None, mode="dual", start=4, check_values=False)
        padded = torch.ones(2, 10, dtype=torch.bool)
        padded[1, :3] = False
        model(canvas, padded, check_values=False)   # a given mask is applied as is
    assert counter.events == []


def test_window_cache_rows_are_validated(models):
    model = models["llada"]
    canvas = torch.randint(2, 90, (2, 10))
    with torch.inference_mode():
        _, cache = model.prefill(canvas, None, mode="dual", start=4)
        window = canvas[:, 4:8]
        with pytest.raises(ValueError, match="cache_rows must lie in"):
            model.forward_window(window, start=4, cache=cache, mode="dual", cache_rows=(0, 2))
        with pytest.raises(ValueError, match="cache_rows must hold 2 rows"):
            model.forward_window(window, start=4, cache=cache, mode="dual", cache_rows=(0,))
        with pytest.raises(TypeError, match="cache_rows"):
            model.forward_window(window, start=4, cache=cache, mode="dual", cache_rows=(0, True))
        with pytest.raises(TypeError, match="cache_rows"):
            model.forward_window(window, start=4, cache=cache, mode="dual", cache_rows=[0, 1])
        with pytest.raises(TypeError, match="check_values"):
            model.forward_window(window, start=4, cache=cache, mode="dual", check_values=None)
        with pytest.raises(ValueError, match="window_ids must lie in"):
            model.forward_window(window + 1000, start=4, cache=cache, mode="dual")   # checked by default
