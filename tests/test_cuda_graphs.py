"""CUDA-graph capture of every op and of one Info-Gain decoding step; ops on a second GPU.

The capture tests are marked ``gpu`` and ``cuda_graph`` (``python -m infogain gpu-check`` runs them
as their own stage). The step function they capture is checked against the sampler's own step on
every machine.
"""
import math

import pytest
import torch

import infogain.models
import infogain_kernels as ik
from infogain.samplers import make_sampler
from infogain.samplers.graph_step import device_step
from infogain.samplers.sampler import GenerateOptions, _Run
from infogain.stats import KIND_LOOKAHEAD
from tiny_checkpoints import MASK_ID, write_tiny_checkpoint

OPTIONS = dict(gen_length=8, steps=4, block_length=4, candidate_number=4, position_temperature=0.5,
               threshold=1.0, temperature=0.7, variant="info_gain", cache="dual", stop_at_eos=False, seed=3)


def seeded(seed, device):
    return torch.Generator(device=device).manual_seed(seed)


def op_calls(device, inputs=None):
    """name -> function(generator) running the op on fixed inputs (data checks off: capture-safe).
    The float and bool input tensors (KV caches included) are appended to ``inputs`` when given, for
    :func:`refill` to overwrite in place."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 1000, generator=g) * 3).to(device)
    logits[0, 0, :10] = -math.inf
    mask = (torch.rand(3, 5, generator=g) > 0.3).to(device)
    scores = torch.rand(6, 32, generator=g).to(device)
    valid = (torch.rand(6, 32, generator=g) > 0.2).to(device)
    cost = torch.rand(3, generator=g).to(device)
    rows = logits[:, 0]
    calls = {
        "token_stats": lambda gen: ik.token_stats(logits, mask, check_values=False),
        "lookahead_objective": lambda gen: ik.lookahead_objective(logits, mask, cost, check_values=False),
        "gumbel_sample": lambda gen: ik.gumbel_sample(logits, 4, 0.8, mask=mask, generator=gen, check_values=False),
        "gumbel_topk": lambda gen: ik.gumbel_topk(scores, 3, 2, 0.5, valid=valid, generator=gen, check_values=False),
        "topk_logprobs": lambda gen: ik.topk_logprobs(rows, 5, temperature=0.9, top_p=0.9),
        "sample_logprob": lambda gen: ik.sample_logprob(rows, mode="sample", top_p=0.9, generator=gen),
    }
    caches = [torch.zeros(3, 2, 16, 8, device=device), torch.zeros(3, 4, 16, 4, device=device)]
    blocks = [torch.randn(3, 2, 4, 8, generator=g).to(device), torch.randn(3, 4, 4, 4, generator=g).to(device)]
    dst_start = torch.tensor([0, 5, 12], device=device)   # made outside any capture: no copy inside

    def kv_block_replace(gen):
        ik.kv_block_replace(caches, blocks, dst_start)
        return caches

    calls["kv_block_replace"] = kv_block_replace
    hidden = torch.randn(3, 5, 64, generator=g).to(device)
    weight = (torch.randn(1000, 64, generator=g) * 0.1).to(device)
    if hasattr(ik, "lm_head_entropy"):
        calls["lm_head_entropy"] = lambda gen: ik.lm_head_entropy(hidden, weight, None, mask, check_values=False)
    if hasattr(ik, "step_stats"):
        calls["step_stats"] = lambda gen: ik.step_stats(logits, mask, num_samples=4, temperature=0.8, generator=gen,
                                                        check_values=False)
    if inputs is not None:
        inputs += [logits, mask, scores, valid, cost, hidden, weight, *caches, *blocks]
    return calls


def refill(inputs, seed):
    """Overwrite the inputs in place with values drawn from ``seed``: floats uniform in [0, 3) (finite,
    non-negative, so valid for every op), bools true with probability 0.7."""
    g = torch.Generator().manual_seed(seed)
    for tensor in inputs:
        fresh = torch.rand(tensor.shape, generator=g)
        tensor.copy_(fresh > 0.3 if tensor.dtype == torch.bool else fresh * 3)


def flat(result):
    """The output tensors of an op (a tensor, or a tuple / NamedTuple with optional fields)."""
    return [t for t in (result if isinstance(result, (tuple, list)) else (result,)) if t is not None]


@pytest.mark.gpu
@pytest.mark.cuda_graph
@pytest.mark.parametrize("name", sorted(op_calls("cpu")))
def test_op_replayed_from_a_cuda_graph_equals_eager(name):
    """Each replay runs on inputs (and, for kv_block_replace, caches) refilled with values the warm-up
    and the other replay never saw: a replay that did nothing would leave other values behind."""
    inputs = []
    call = op_calls("cuda", inputs)[name]
    generator = seeded(1, "cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):   # warm-up outside the capture (Triton compiles, allocator fills)
        call(generator)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(generator)
    with torch.cuda.graph(graph):
        captured = flat(call(generator))
    replays = []
    for seed in (5, 6):
        refill(inputs, seed)
        generator.manual_seed(seed)
        graph.replay()
        replays.append([t.clone() for t in captured])
        refill(inputs, seed)
        generator.manual_seed(seed)
        eager = flat(call(generator))
        for got, want in zip(replays[-1], eager):
            assert torch.equal(got, want), name
    assert any(not torch.equal(a, b) for a, b in zip(*replays)), f"{name}: both replays wrote the same"


@pytest.mark.parametrize("name", sorted(op_calls("cpu")))
def test_refilled_inputs_change_every_ops_outputs(name):
    """What makes the replay test able to fail, checked on any machine: the two refills give each op
    different outputs, so a replay that left the previous outputs behind would not equal eager."""
    inputs = []
    call = op_calls("cpu", inputs)[name]
    outputs = []
    for seed in (5, 6):
        refill(inputs, seed)
        outputs.append([t.clone() for t in flat(call(seeded(seed, "cpu")))])
    assert any(not torch.equal(a, b) for a, b in zip(*outputs)), name


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(op_calls("cpu")))
def test_op_on_cuda1_while_cuda0_is_current(name):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    with torch.cuda.device(0):
        on_1 = flat(op_calls("cuda:1")[name](seeded(1, "cuda:1")))
        torch.cuda.synchronize(1)
        on_0 = flat(op_calls("cuda:0")[name](seeded(1, "cuda:0")))
    for got, want in zip(on_1, on_0):
        assert got.device == torch.device("cuda:1")
        assert torch.equal(got.cpu(), want.cpu()), name


# ----------------------------------------------------------------------------- one decoding step


def make_run(tmp_path, device):
    """A dual-cache Info-Gain run of a tiny LLaDA at its first block, block logits in place."""
    model = infogain.models.load(write_tiny_checkpoint("llada", tmp_path / "llada"), device=device)[0]
    sampler = make_sampler("info_gain", model)
    opts = GenerateOptions(**OPTIONS).validate()
    prompts = [[2, 3, 4, 5, 6], [7, 8, 9, 10, 11], [12, 13, 14, 15, 16]]
    canvas = torch.tensor([p + [MASK_ID] * opts.gen_length for p in prompts], device=device)
    attention = torch.ones_like(canvas, dtype=torch.bool)
    run = _Run(sampler, opts, "dual", canvas, attention, len(prompts[0]), seeded(opts.seed, device), False)
    start = run.gen_start
    run._enter_block(start)
    quota = torch.ones(len(prompts), dtype=torch.long, device=device)
    return run, start, quota, -(-opts.block_length // (opts.steps // (opts.gen_length // opts.block_length)))


def test_device_step_takes_the_sampler_steps_decision(tmp_path, device):
    run, start, quota, max_quota = make_run(tmp_path, device)
    end = start + run.length
    state = run.generator.get_state()
    with torch.inference_mode():
        fixed = device_step(run, start, quota, max_quota)
        run.generator.set_state(state)
        kinds, _ = run._step(0, 0, start, quota, last=False, max_quota=max_quota)
    assert KIND_LOOKAHEAD in kinds, "the test needs a lookahead step"
    assert fixed["kind"].tolist() == kinds
    assert torch.equal(fixed["block"], run.canvas[:, start:end])
    # The next step reads the block logits only where the block is still masked.
    still_masked = run.canvas[:, start:end] == MASK_ID
    # The eager step runs the LM head on the still-masked rows only, the graph step on the whole
    # block: the same dot products in matmuls of other shapes, so equal up to float32 rounding.
    torch.testing.assert_close(fixed["next_logits"][still_masked], run.block_logits[still_masked],
                               rtol=1e-5, atol=1e-5)
    assert not bool(fixed["bad"])


@pytest.mark.gpu
@pytest.mark.cuda_graph
def test_info_gain_step_replayed_from_a_cuda_graph_equals_eager(tmp_path):
    run, start, quota, max_quota = make_run(tmp_path, "cuda")
    logits0 = run.block_logits.clone()
    with torch.inference_mode():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            device_step(run, start, quota, max_quota)   # warm-up
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(run.generator)
        # "relaxed": the model's candidate layout is staged in pinned memory, whose cache may query
        # CUDA events while the capture runs (the copy itself is captured like any other).
        with torch.cuda.graph(graph, capture_error_mode="relaxed"):
            captured = device_step(run, start, quota, max_quota)
        # Each replay gets seeds and block logits the warm-up did not: a replay that did nothing
        # would leave the outputs of another step behind.
        replays = []
        for seed, noise in ((11, 0.0), (12, 1.0)):
            logits = logits0 + noise * torch.randn(logits0.shape, generator=torch.Generator().manual_seed(seed)).cuda()
            run.generator.manual_seed(seed)
            run.block_logits.copy_(logits)
            graph.replay()
            replays.append({k: v.clone() for k, v in captured.items()})
            run.generator.manual_seed(seed)
            run.block_logits.copy_(logits)
            eager = device_step(run, start, quota, max_quota)
            assert noise or KIND_LOOKAHEAD in eager["kind"].tolist(), "the test needs a lookahead step"
            for key in ("kind", "block", "commit", "next_logits", "bad"):
                assert torch.equal(replays[-1][key], eager[key]), key
    assert any(not torch.equal(replays[0][k], replays[1][k]) for k in ("block", "commit", "next_logits"))
