"""Every public op compiles with ``torch.compile(fullgraph=True)`` at its default arguments.

The compiled call must give what the eager call gives. Compiled calls skip the ops' host-side
value check (``_backend.value_checks_enabled``); a bad row then shows up in the outputs instead,
as each op documents, which is checked here too.

Backend: ``aot_eager`` (dynamo + AOTAutograd with fake tensors, so the ops' fake implementations
and the functionalisation of ``kv_block_replace`` are exercised; inductor's code generation is not,
it would add minutes of C++ compilation on a CPU machine without testing anything of ours).

A new op is one more ``OpCase`` in ``OPS``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import pytest
import torch

import infogain_kernels as igk

BACKEND = "aot_eager"


def _logits(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


def _kv_block_replace(cache, block):
    igk.kv_block_replace([cache], [block], 2)
    return cache


@dataclass
class OpCase:
    name: str
    call: Callable  # op at its defaults, taking the tensors of ``inputs``
    inputs: Callable[[], tuple]
    # Turns ``inputs`` into inputs with a bad row, and says how the compiled call flags it.
    bad_inputs: Optional[Callable[[tuple], tuple]] = None
    flagged: Optional[Callable[[tuple], bool]] = None
    mutates_first: bool = False


def _with_nan_row(inputs):
    x = inputs[0].clone()
    x[(0,) * (x.dim() - 1)] = float("nan")
    return (x,) + tuple(inputs[1:])


OPS = [
    OpCase("token_stats", lambda x: igk.token_stats(x), lambda: (_logits(2, 3, 17),),
           _with_nan_row, lambda out: bool(torch.isnan(out[0][0, 0]))),
    OpCase("gumbel_sample", lambda x: igk.gumbel_sample(x, 3, 0.7), lambda: (_logits(2, 3, 17),),
           _with_nan_row, lambda out: bool(torch.isnan(out[1][:, 0, 0]).all())),
    OpCase("gumbel_topk", lambda s, v: igk.gumbel_topk(s, 2, 3, 0.5, valid=v),
           lambda: (_logits(3, 9), torch.rand(3, 9, generator=torch.Generator().manual_seed(1)) < 0.7),
           _with_nan_row, lambda out: bool(((out >= -1) & (out < 9)).all())),
    OpCase("lookahead_objective", lambda x, r, c: igk.lookahead_objective(x, r, c),
           lambda: (_logits(2, 4, 17), torch.tensor([[True, False, True, True], [False, True, True, False]]),
                    torch.tensor([0.5, 1.5])),
           _with_nan_row, lambda out: bool(torch.isnan(out[0][0]))),
    OpCase("topk_logprobs", lambda x: igk.topk_logprobs(x, 3), lambda: (_logits(3, 17),)),
    OpCase("sample_logprob", lambda x: igk.sample_logprob(x), lambda: (_logits(3, 17),)),
    OpCase("lm_head_entropy", lambda h, w, m, c: igk.lm_head_entropy(h, w, None, m, cost=c, variant="info_gain"),
           lambda: (_logits(2, 4, 8), _logits(17, 8, seed=1),
                    torch.tensor([[True, False, True, True], [False, True, True, False]]), torch.tensor([0.5, 1.5])),
           _with_nan_row, lambda out: bool(torch.isnan(out.entropy[0, 0]) and torch.isnan(out.objective[0]))),
    OpCase("step_stats", lambda x: igk.step_stats(x, num_samples=3, temperature=0.7), lambda: (_logits(2, 3, 17),),
           _with_nan_row, lambda out: bool(torch.isnan(out[0][0, 0]))),
    OpCase("kv_block_replace", _kv_block_replace, lambda: (torch.zeros(2, 2, 8, 4), _logits(2, 2, 3, 4)),
           mutates_first=True),
]


def _run(fn, inputs, seed=123):
    inputs = tuple(t.clone() for t in inputs)
    torch.manual_seed(seed)  # the stochastic ops draw their seed from the default generator
    return fn(*inputs)


def _flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


@pytest.mark.parametrize("case", OPS, ids=lambda c: c.name)
def test_fullgraph_compile_matches_eager(case):
    torch._dynamo.reset()
    inputs = case.inputs()
    eager = _run(case.call, inputs)
    compiled = _run(torch.compile(case.call, fullgraph=True, backend=BACKEND), inputs)
    for want, got in zip(_flat(eager), _flat(compiled)):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, equal_nan=True)


@pytest.mark.parametrize("case", [c for c in OPS if c.bad_inputs is not None], ids=lambda c: c.name)
def test_compiled_ops_flag_bad_rows_in_their_outputs(case):
    """Eager raises naming the argument; compiled skips the host check and flags the row."""
    bad = case.bad_inputs(case.inputs())
    with pytest.raises(ValueError, match="logits|scores"):
        _run(case.call, bad)
    torch._dynamo.reset()
    out = _run(torch.compile(case.call, fullgraph=True, backend=BACKEND), bad)
    assert case.flagged(out)


def test_value_checks_enabled_only_when_running_eagerly():
    from infogain_kernels._backend import value_checks_enabled

    seen = []

    def probe(x):
        seen.append(value_checks_enabled(x))
        return x + 1

    probe(torch.zeros(1))
    torch._dynamo.reset()
    torch.compile(probe, fullgraph=True, backend=BACKEND)(torch.zeros(1))
    assert seen == [True, False]


def test_fake_tensors_skip_the_check_and_other_dispatch_modes_keep_it():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    bad = _with_nan_row((_logits(2, 3, 17),))[0]
    with FakeTensorMode() as mode:
        entropy = igk.token_stats(mode.from_tensor(bad))[0]
    assert entropy.shape == (2, 3)
    with FlopCounterMode(display=False), pytest.raises(ValueError, match="contains NaN"):
        igk.token_stats(bad)


def test_every_public_op_is_compiled_here():
    public = {name for name in igk.__all__ if name != "use_backend"}
    assert public <= {case.name for case in OPS}
