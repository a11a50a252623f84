"""The sampler's lookahead on hidden states (``lm_head_entropy``): same trajectories as the logits
path, on the tiny LLaDA / Dream / SDAR checkpoints in every cache mode, and no [R, W, V] tensor."""
import importlib

import pytest
import torch

import infogain.models
import infogain.samplers.lookahead as lookahead_module
from infogain.samplers import InfoGainSampler
from infogain.samplers.run import _Run
from test_samplers_cache import PROMPTS as RAGGED_PROMPTS  # ragged: lengths 5, 1, 3
from test_samplers_cache import SETTINGS, models  # noqa: F401  (the tiny LLaDA / Dream / SDAR fixture)
from test_samplers_helpers import single_thread  # noqa: F401  (autouse fixture)
from tiny_checkpoints import write_tiny_checkpoint


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the sampler's calls of lm_head_entropy."""
    calls = []
    original = lookahead_module.lm_head_entropy

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(lookahead_module, "lm_head_entropy", spy)
    return calls


def _decisions(trace):
    """Per step and row: the kind, the committed positions and tokens, the winner."""
    return [[(row["kind"], row["positions"], row["tokens"], row.get("winner")) for row in step["rows"]]
            for step in trace]


@pytest.mark.parametrize("arch", ["llada", "dream", "sdar"])
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_fused_lookahead_keeps_the_trajectory(models, fused_calls, arch, cache):
    sampler = InfoGainSampler(models[arch])
    for settings in (dict(seed=0), dict(seed=1, temperature=0.7, variant="lookum", eos_penalty=0.5)):
        settings = dict(SETTINGS, cache=cache, record=True, **settings)
        fused = sampler.generate(RAGGED_PROMPTS, **settings)
        calls = len(fused_calls)
        assert calls > 0 and fused.stats.tokens["lookahead"] > 0
        plain = sampler.generate(RAGGED_PROMPTS, fused_head=False, **settings)
        assert len(fused_calls) == calls   # the logits path does not call it
        assert torch.equal(fused.sequences, plain.sequences)
        assert _decisions(fused.trace) == _decisions(plain.trace)
        assert fused.stats.nfe == plain.stats.nfe and fused.stats.tokens == plain.stats.tokens
        for fused_step, plain_step in zip(fused.trace, plain.trace):
            for fused_row, plain_row in zip(fused_step["rows"], plain_step["rows"]):
                for a, b in zip(fused_row.get("candidates", []), plain_row.get("candidates", [])):
                    assert a["h_next"] == pytest.approx(b["h_next"], abs=1e-5)
                    assert a["objective"] == pytest.approx(b["objective"], abs=1e-5)


@pytest.mark.parametrize("arch", ["llada", "dream", "sdar"])
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_winner_statistics_from_the_lookahead_keep_the_trajectory(models, monkeypatch, arch, cache):
    """At T = 0 the next step takes the winner's statistics from the lookahead (with_top) instead of
    its logits: same tokens, decisions and entropies as recomputing the logits, and after a
    lookahead no LM head runs on the winner (with EOS fills and rows that bypass in between)."""
    from infogain.models.base import DiffusionLM

    head_calls = []
    original_head = DiffusionLM.logits_from_hidden

    def counted_head(self, hidden):
        head_calls.append(hidden.shape)
        return original_head(self, hidden)

    # On the base class: the sampler fuses only models that keep its plain head.
    monkeypatch.setattr(DiffusionLM, "logits_from_hidden", counted_head)
    sampler = InfoGainSampler(models[arch])
    original_init = _Run.__init__
    reuse = {"on": True}

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.reuse_head_stats = self.reuse_head_stats and reuse["on"]

    monkeypatch.setattr(_Run, "__init__", init)
    seen = {"lookahead": 0, "bypass": 0, "eos_fill": 0}
    # EOS boosted (a negative penalty) fills rows early; a low threshold makes rows bypass.
    for threshold, eos_penalty in ((0.1, 0.0), (0.1, -2.0), (0.3, -4.0)):
        settings = dict(SETTINGS, cache=cache, record=True, seed=3, eos_penalty=eos_penalty, threshold=threshold)
        runs = {}
        for on in (True, False):
            reuse["on"] = on
            head_calls.clear()
            runs[on] = sampler.generate(RAGGED_PROMPTS, **settings), len(head_calls)
        (reused, reused_heads), (recomputed, recomputed_heads) = runs[True], runs[False]
        assert torch.equal(reused.sequences, recomputed.sequences)
        assert _decisions(reused.trace) == _decisions(recomputed.trace)
        assert reused.stats.tokens == recomputed.stats.tokens
        assert reused.stats.cumulative_entropy == pytest.approx(recomputed.stats.cumulative_entropy, abs=1e-4)
        # Recomputing heads each lookahead step's winners once; reusing never does.
        lookahead_steps = sum(1 for step in recomputed.trace if any(row["kind"] == "lookahead" for row in step["rows"]))
        assert recomputed_heads - reused_heads == lookahead_steps
        for kind in seen:
            seen[kind] += reused.stats.tokens[kind]
    assert all(seen.values()), seen


def test_plain_callable_keeps_the_logits_path(models, fused_calls):
    model = models["llada"]

    class Plain(torch.nn.Module):
        """Any module returning logits: no hidden states to fuse."""

        def __init__(self):
            super().__init__()
            self.inner = model
            self.config = model.config

        def forward(self, input_ids, attention_mask=None):
            return self.inner(input_ids, attention_mask)

    plain = InfoGainSampler(Plain()).generate(RAGGED_PROMPTS, **SETTINGS, seed=0)
    assert not fused_calls and plain.stats.tokens["lookahead"] > 0
    fused = InfoGainSampler(model).generate(RAGGED_PROMPTS, **SETTINGS, seed=0)
    assert fused_calls
    assert torch.equal(plain.sequences, fused.sequences)


def test_fused_head_must_be_a_bool(models):
    with pytest.raises(TypeError, match="fused_head must be a bool"):
        InfoGainSampler(models["llada"]).generate(RAGGED_PROMPTS, **SETTINGS, fused_head=1)


@pytest.mark.parametrize("fused_head", [True, False])
def test_lookahead_never_allocates_candidate_logits(tmp_path, monkeypatch, fused_head):
    """Largest single allocation of each lookahead (profiler memory events): with the fused head it
    is bounded by the op's chunk or the winners' block logits, whatever R and W; the logits path is
    the control that the check sees the [R, W, V] logits."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    from infogain_kernels.lm_head_entropy import _CHUNK_LOGITS

    vocab = 16384   # wide enough that [R, W, V] dwarfs the attention and KV cache of the tiny model
    path = write_tiny_checkpoint("llada", tmp_path / "wide", vocab_size=vocab, embedding_size=vocab,
                                 mask_token_id=vocab - 1)
    model = infogain.models.load(path)[0]
    seen = []
    original = _Run._lookahead

    def profiled(self, start, candidates, pairs, lookahead_rows, entropy):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            out = original(self, start, candidates, pairs, lookahead_rows, entropy)
        largest = max(size for _, action, _, size in prof._memory_profile().timeline if action == Action.CREATE)
        window = self.canvas.shape[1] - start       # prefix mode: the block and everything after it
        bound = max(_CHUNK_LOGITS, len(lookahead_rows) * self.length * vocab) * 4
        seen.append((largest, len(pairs) * window * vocab * 4, bound))
        return out

    monkeypatch.setattr(_Run, "_lookahead", profiled)
    InfoGainSampler(model).generate([[2, 3, 4, 5]], gen_length=16, steps=4, block_length=8, candidate_number=6,
                                    position_temperature=1.0, threshold=1.0, cache="prefix", seed=0,
                                    fused_head=fused_head)
    assert seen
    for largest, candidate_logits, bound in seen:
        if fused_head:
            assert largest <= bound < candidate_logits
        else:
            assert largest >= candidate_logits


def test_interpreted_kernel_gives_the_same_trajectory(models, fused_calls, triton_interpreted, monkeypatch):
    """The fused lookahead on the Triton kernel (interpreted on CPU without a GPU) picks the same
    winners as the torch path; the other ops stay on the reference so only the head differs."""
    from infogain_kernels import use_backend

    head_module = importlib.import_module("infogain_kernels.lm_head_entropy")
    model = models["llada"].to(triton_interpreted)
    settings = dict(SETTINGS, cache="prefix", seed=0, record=True)
    try:
        with use_backend("reference"):
            reference = InfoGainSampler(model).generate(RAGGED_PROMPTS, **settings)
            original = head_module._lm_head_entropy_impl

            kernel_calls = []

            def on_triton(*args):
                kernel_calls.append(args[0].shape)
                with use_backend("triton"):
                    return original(*args)

            monkeypatch.setattr(head_module, "_lm_head_entropy_impl", on_triton)
            kernel = InfoGainSampler(model).generate(RAGGED_PROMPTS, **settings)
    finally:
        models["llada"].to("cpu")
    assert kernel_calls
    assert torch.equal(reference.sequences, kernel.sequences)
    assert _decisions(reference.trace) == _decisions(kernel.trace)


@pytest.mark.gpu
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_fused_lookahead_on_cuda_keeps_the_trajectory(tmp_path, cache):
    """On a GPU the fused lookahead runs the Triton kernel; float32 tiny model, same winners."""
    model = infogain.models.load(write_tiny_checkpoint("llada", tmp_path / "llada", vocab_size=4096,
                                                       embedding_size=4096, mask_token_id=4095), device="cuda")[0]
    sampler = InfoGainSampler(model)
    settings = dict(SETTINGS, cache=cache, seed=0, record=True)
    fused = sampler.generate(RAGGED_PROMPTS, **settings)
    plain = sampler.generate(RAGGED_PROMPTS, fused_head=False, **settings)
    assert fused.stats.tokens["lookahead"] > 0
    assert torch.equal(fused.sequences, plain.sequences)
    assert _decisions(fused.trace) == _decisions(plain.trace)
