"""Property-based tests (hypothesis): every public op against an independent float64 definition
written here, on random shapes, dtypes, memory layouts (non-contiguous views), masks, -inf
patterns, temperatures, k and S; the samplers on random small configurations of the tiny models.

Each op is one :class:`OpProperty` in ``OPS`` (``draw`` builds the inputs from hypothesis data,
``check`` calls the op and compares); a new op is one more entry. The CPU path of each op runs
(the torch reference, or a native kernel where one exists); the Triton kernels are compared with
the reference in their own test files.

Budget: ``PROFILE`` runs ``INFOGAIN_HYPOTHESIS_EXAMPLES`` (default 1000) derandomized examples per
op without deadlines, so ``make test`` is reproducible; the sampler property runs
``SAMPLER_EXAMPLES``.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import infogain_kernels as igk  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

EXAMPLES = int(os.environ.get("INFOGAIN_HYPOTHESIS_EXAMPLES", "1000"))
SAMPLER_EXAMPLES = max(1, EXAMPLES // 5)
PROFILE = dict(deadline=None, derandomize=True, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LAYOUTS = ("contiguous", "row_padded", "column_strided", "transposed", "expanded")
NEG_INF = float("-inf")


# ----------------------------------------------------------------------------- inputs

def _values(data, shape, *, neg_inf=True):
    """float32 values: random normal * scale, optionally rounded (ties), with a -inf pattern."""
    seed = data.draw(st.integers(0, 2 ** 31 - 1), label="seed")
    scale = data.draw(st.sampled_from([0.05, 1.0, 4.0, 25.0]), label="scale")
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator) * scale
    if data.draw(st.booleans(), label="ties"):
        x = x.round()
    if neg_inf:
        fraction = data.draw(st.sampled_from([0.0, 0.0, 0.3, 0.8, 1.0]), label="neg_inf_fraction")
        x[torch.rand(shape, generator=generator) < fraction] = NEG_INF
    return x


def _view(data, x: torch.Tensor, *, allow_expand=True) -> torch.Tensor:
    """``x`` (or, for "expanded", rows of it) as a tensor with the drawn memory layout. The
    padding around the view holds NaN, which an op that reads outside the view would notice."""
    layouts = [layout for layout in LAYOUTS if allow_expand or layout != "expanded"]
    layout = data.draw(st.sampled_from(layouts), label="layout")
    if layout == "row_padded":      # rows further apart than V
        base = torch.full((*x.shape[:-1], x.shape[-1] + 3), float("nan"), dtype=x.dtype)
        base[..., :x.shape[-1]] = x
        return base[..., :x.shape[-1]]
    if layout == "column_strided":  # last dimension not unit-stride
        base = torch.full((*x.shape[:-1], 2 * x.shape[-1]), float("nan"), dtype=x.dtype)
        base[..., ::2] = x
        return base[..., ::2]
    if layout == "transposed" and x.dim() >= 2:
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "expanded" and x.dim() >= 2:
        return x[:1].expand(x.shape)
    return x


def _logits(data, *, ndim=None, max_lead=3, max_vocab=33, neg_inf=True, allow_expand=True):
    if ndim is None:
        ndim = data.draw(st.integers(1, max_lead + 1), label="ndim")
    lead = data.draw(st.lists(st.integers(1, 4), min_size=ndim - 1, max_size=ndim - 1), label="lead")
    vocab = data.draw(st.integers(1, max_vocab), label="V")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    x = _values(data, (*lead, vocab), neg_inf=neg_inf).to(dtype)
    return _view(data, x, allow_expand=allow_expand)


def _mask(data, shape, name="mask"):
    if data.draw(st.booleans(), label=f"{name}_given"):
        seed = data.draw(st.integers(0, 2 ** 31 - 1), label=f"{name}_seed")
        p = data.draw(st.sampled_from([0.2, 0.5, 0.9]), label=f"{name}_p")
        return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < p
    return None


def _temperature(data):
    return data.draw(st.one_of(st.just(0.0), st.sampled_from([0.05, 0.5, 1.0, 3.0]),
                               st.floats(0.05, 5.0, allow_nan=False)), label="temperature")


# ----------------------------------------------------------------------------- definitions

def _rows64(x: torch.Tensor) -> torch.Tensor:
    """The logits as float64 rows [N, V] (values exactly as stored in x's dtype)."""
    return x.double().reshape(-1, x.shape[-1])


def _entropy64(rows: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(rows, -1)
    return -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(-1)


def _first_argmax(rows: torch.Tensor) -> torch.Tensor:
    is_max = rows == rows.max(-1, keepdim=True).values
    return torch.where(is_max, torch.arange(rows.shape[-1]), rows.shape[-1]).min(-1).values


def _close(got, want, atol=1e-4, rtol=1e-4):
    torch.testing.assert_close(got.double(), want.double(), atol=atol, rtol=rtol, equal_nan=False)


def _has_unreadable_row(rows: torch.Tensor, read: torch.Tensor) -> bool:
    """Some read row has every entry -inf (the ops must raise)."""
    return bool((torch.isinf(rows).all(-1) & read).any())


# ----------------------------------------------------------------------------- op properties

@dataclass
class OpProperty:
    name: str
    draw: Callable  # hypothesis data -> dict of inputs
    check: Callable  # inputs -> None (asserts)


def _rows_and_read(logits, mask):
    """float64 rows [n, V] of ``logits`` and which of them the op reads (the mask, flattened)."""
    rows = _rows64(logits)
    return rows, torch.ones(rows.shape[0], dtype=torch.bool) if mask is None else mask.reshape(-1)


def _draw_token_stats(data):
    logits = _logits(data)
    return dict(logits=logits, mask=_mask(data, logits.shape[:-1]))


def _check_token_stats(logits, mask):
    rows, read = _rows_and_read(logits, mask)
    if _has_unreadable_row(rows, read):
        with pytest.raises(ValueError, match="logits row at position .* is entirely -inf"):
            igk.token_stats(logits, mask)
        return
    _check_token_stats_values(rows, read, *(t.reshape(-1) for t in igk.token_stats(logits, mask)))


def _check_token_stats_values(rows, read, entropy, top1, top1_id, top2):
    p = torch.softmax(rows[read], -1)
    ordered = p.sort(-1, descending=True).values
    _close(entropy[read], _entropy64(rows[read]))
    _close(top1[read], ordered[:, 0])
    _close(top2[read], ordered[:, 1] if rows.shape[1] > 1 else torch.zeros(int(read.sum())))
    assert torch.equal(top1_id[read], _first_argmax(rows[read]))
    assert (entropy[~read] == 0).all() and (top1[~read] == 0).all() and (top2[~read] == 0).all()
    assert (top1_id[~read] == -1).all()


def _draw_step_stats(data):
    logits = _logits(data)
    return dict(logits=logits, mask=_mask(data, logits.shape[:-1]), num_samples=data.draw(st.integers(0, 4), label="S"),
                temperature=_temperature(data), seed=data.draw(st.integers(0, 2 ** 31 - 1), label="draw_seed"))


def _check_step_stats(logits, mask, num_samples, temperature, seed):
    rows, read = _rows_and_read(logits, mask)
    generator = torch.Generator().manual_seed(seed)
    if _has_unreadable_row(rows, read):
        with pytest.raises(ValueError, match="is entirely -inf"):
            igk.step_stats(logits, mask, num_samples=num_samples, temperature=temperature, generator=generator)
        return
    got = igk.step_stats(logits, mask, num_samples=num_samples, temperature=temperature, generator=generator)
    assert got.tokens.shape == got.token_probs.shape == (*logits.shape[:-1], num_samples)
    # The statistics are token_stats' (checked against the definition above).
    _check_token_stats_values(rows, read, *(t.reshape(-1) for t in got[:4]))
    tokens, probs = got.tokens.reshape(rows.shape[0], num_samples), got.token_probs.reshape(rows.shape[0], num_samples)
    assert (tokens[~read] == -1).all() and (probs[~read] == 0).all()
    read_rows = rows[read]
    chosen = tokens[read]
    assert ((chosen >= 0) & (chosen < rows.shape[1])).all()
    _close(probs[read], torch.softmax(read_rows, -1).gather(1, chosen))
    if temperature == 0:
        assert (chosen == _first_argmax(read_rows)[:, None]).all()
        return
    # The random stream contract: draw s of row r sits where u[r, s] falls on the tempered CDF.
    uniforms = torch.rand(rows.shape[0], num_samples, generator=torch.Generator().manual_seed(seed),
                          dtype=torch.float32)[read].double()
    weights = torch.softmax(read_rows / temperature, -1)
    upper = weights.cumsum(-1).gather(1, chosen)
    lower = upper - weights.gather(1, chosen)
    assert (weights.gather(1, chosen) > 0).all()
    assert ((lower <= uniforms + 1e-5) & (uniforms <= upper + 1e-5)).all()


def _draw_gumbel_sample(data):
    logits = _logits(data)
    return dict(logits=logits, num_samples=data.draw(st.integers(1, 4), label="S"), temperature=_temperature(data),
                mask=_mask(data, logits.shape[:-1]), seed=data.draw(st.integers(0, 2 ** 31 - 1), label="draw_seed"))


def _check_gumbel_sample(logits, num_samples, temperature, mask, seed):
    rows, read = _rows_and_read(logits, mask)
    generator = torch.Generator().manual_seed(seed)
    if _has_unreadable_row(rows, read):
        with pytest.raises(ValueError, match="is entirely -inf"):
            igk.gumbel_sample(logits, num_samples, temperature, mask=mask, generator=generator)
        return
    tokens, probs = igk.gumbel_sample(logits, num_samples, temperature, mask=mask, generator=generator)
    assert tokens.shape == probs.shape == (num_samples, *logits.shape[:-1])
    tokens, probs = tokens.reshape(num_samples, -1), probs.reshape(num_samples, -1)
    assert (tokens[:, ~read] == -1).all() and (probs[:, ~read] == 0).all()
    chosen = tokens[:, read]
    assert ((chosen >= 0) & (chosen < rows.shape[1])).all()
    read_rows = rows[read]
    picked = read_rows.gather(1, chosen.T)  # [n, S]
    assert torch.isfinite(picked).all()  # a -inf token is never drawn
    _close(probs[:, read].T, torch.softmax(read_rows, -1).gather(1, chosen.T))
    if temperature == 0:
        assert (chosen == _first_argmax(read_rows)[None]).all()


def _draw_gumbel_topk(data):
    batch = data.draw(st.integers(1, 4), label="B")
    positions = data.draw(st.integers(1, 12), label="P")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    scores = _view(data, _values(data, (batch, positions)).to(dtype), allow_expand=False)
    valid = _mask(data, (batch, positions), "valid")
    return dict(scores=scores, valid=torch.ones(batch, positions, dtype=torch.bool) if valid is None else valid,
                k=data.draw(st.integers(1, positions + 2), label="k"),
                num_samples=data.draw(st.integers(1, 4), label="S"), temperature=_temperature(data),
                seed=data.draw(st.integers(0, 2 ** 31 - 1), label="draw_seed"))


def _check_gumbel_topk(scores, valid, k, num_samples, temperature, seed):
    got = igk.gumbel_topk(scores, k, num_samples, temperature, valid=valid,
                          generator=torch.Generator().manual_seed(seed))
    assert got.shape == (num_samples, scores.shape[0], k) and got.dtype == torch.int64
    values = scores.float().tolist()
    for b, row_valid in enumerate(valid.tolist()):
        candidates = [p for p, ok in enumerate(row_valid) if ok]
        n = min(k, len(candidates))
        # Sample 0: valid positions by score (descending), equal scores by position.
        want = sorted(candidates, key=lambda p: (-values[b][p], p))[:n] + [-1] * (k - n)
        assert got[0, b].tolist() == want
        for s in range(num_samples):
            row = got[s, b].tolist()
            assert row[n:] == [-1] * (k - n)
            assert len(set(row[:n])) == n and all(p in candidates for p in row[:n])
            if temperature == 0:
                assert row == want


def _draw_lookahead_objective(data):
    next_logits = _logits(data, ndim=3, allow_expand=data.draw(st.booleans(), label="may_expand"))
    candidates, positions = next_logits.shape[:2]
    remaining = _mask(data, (candidates, positions), "remaining")
    cost = _values(data, (candidates,), neg_inf=False).to(data.draw(st.sampled_from(
        [torch.float32, torch.float64, torch.bfloat16]), label="cost_dtype"))
    return dict(next_logits=next_logits, cost=cost, variant=data.draw(st.sampled_from(["info_gain", "lookum"])),
                remaining=torch.ones(candidates, positions, dtype=torch.bool) if remaining is None else remaining)


def _check_lookahead_objective(next_logits, remaining, cost, variant):
    rows = _rows64(next_logits)
    read = remaining.reshape(-1)
    if _has_unreadable_row(rows, read):
        with pytest.raises(ValueError, match="next_logits row at position .* is entirely -inf"):
            igk.lookahead_objective(next_logits, remaining, cost, variant=variant)
        return
    objective, h_next = igk.lookahead_objective(next_logits, remaining, cost, variant=variant)
    entropy = torch.zeros(rows.shape[0], dtype=torch.float64)
    entropy[read] = _entropy64(rows[read])
    want_h = entropy.view(remaining.shape).sum(1) / remaining.sum(1).clamp(min=1)
    want_j = -want_h if variant == "lookum" else -cost.double() - want_h
    _close(h_next, want_h)
    _close(objective, want_j)


def _nucleus64(logits, temperature, top_p):
    """Per row: scores s (float32, as the op scales), float64 log-probabilities of the filtered
    distribution, and whether the nucleus boundary is within float rounding of top_p."""
    s = logits.float() / temperature if temperature > 0 else logits.float()
    s64 = s.double()
    p = torch.softmax(s64, -1)
    above = ((s64[:, None, :] > s64[:, :, None]) * p[:, None, :]).sum(-1)  # mass strictly more probable
    keep = above < top_p if top_p < 1 else torch.ones_like(p, dtype=torch.bool)
    ambiguous = ((above - top_p).abs() < 1e-5).any(-1) if top_p < 1 else torch.zeros(p.shape[0], dtype=torch.bool)
    # In log space: a probability below float64's range still has a finite log-probability.
    log_p = torch.log_softmax(s64, -1)
    kept = torch.where(keep, log_p, torch.full_like(log_p, NEG_INF))
    logprob = torch.where(keep, log_p - kept.logsumexp(-1, keepdim=True), torch.full_like(p, NEG_INF))
    return s, logprob, ambiguous


def _ranked(s_row):
    values = s_row.tolist()
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


def _draw_topk_logprobs(data):
    logits = _logits(data, ndim=2, allow_expand=False)
    return dict(logits=logits, k=data.draw(st.integers(1, logits.shape[1]), label="k"),
                temperature=_temperature(data), top_p=data.draw(st.sampled_from([1.0, 0.95, 0.7, 0.3, 0.05])))


def _check_topk_logprobs(logits, k, temperature, top_p):
    if bool(torch.isinf(logits).all(-1).any()):
        with pytest.raises(ValueError, match="is entirely -inf"):
            igk.topk_logprobs(logits, k, temperature=temperature, top_p=top_p)
        return
    ids, logprobs = igk.topk_logprobs(logits, k, temperature=temperature, top_p=top_p)
    s, want, ambiguous = _nucleus64(logits, temperature, top_p)
    for b in range(logits.shape[0]):
        assert ids[b].tolist() == _ranked(s[b])[:k]
        if not ambiguous[b]:
            _close(logprobs[b], want[b].gather(0, ids[b]))


def _draw_sample_logprob(data):
    logits = _logits(data, ndim=2, allow_expand=False)
    return dict(logits=logits, mode=data.draw(st.sampled_from(["greedy", "sample"])), temperature=_temperature(data),
                top_p=data.draw(st.sampled_from([1.0, 0.9, 0.5, 0.1])),
                seed=data.draw(st.integers(0, 2 ** 31 - 1), label="draw_seed"))


def _check_sample_logprob(logits, mode, temperature, top_p, seed):
    generator = torch.Generator().manual_seed(seed)
    if bool(torch.isinf(logits).all(-1).any()):
        with pytest.raises(ValueError, match="is entirely -inf"):
            igk.sample_logprob(logits, mode=mode, temperature=temperature, top_p=top_p, generator=generator)
        return
    token, logprob = igk.sample_logprob(logits, mode=mode, temperature=temperature, top_p=top_p,
                                        generator=generator)
    s, want, ambiguous = _nucleus64(logits, temperature, top_p)
    assert torch.isfinite(logprob).all()
    for b in range(logits.shape[0]):
        t = int(token[b])
        if mode == "greedy" or temperature == 0:
            assert t == _ranked(s[b])[0]
        if not ambiguous[b]:
            assert math.isfinite(float(want[b, t]))  # drawn from the nucleus
            _close(logprob[b], want[b, t])


def _draw_kv_block_replace(data):
    layout = data.draw(st.sampled_from(["bhtd", "bthd"]), label="layout")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    batch, source_batch = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    cache_len, block_len = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 5))
    length = data.draw(st.integers(1, min(cache_len, block_len)), label="length")
    layers = data.draw(st.integers(1, 3), label="layers")
    seed = data.draw(st.integers(0, 2 ** 31 - 1), label="seed")
    generator = torch.Generator().manual_seed(seed)
    caches, blocks = [], []
    for _ in range(layers):
        heads, head_dim = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
        cache_shape = (batch, heads, cache_len, head_dim) if layout == "bhtd" else (batch, cache_len, heads, head_dim)
        block_shape = ((source_batch, heads, block_len, head_dim) if layout == "bhtd"
                       else (source_batch, block_len, heads, head_dim))
        cache = torch.randn(cache_shape, generator=generator).to(dtype)
        if data.draw(st.booleans(), label="cache_view"):  # a view into a longer buffer
            seq_dim = 2 if layout == "bhtd" else 1
            wide = list(cache_shape)
            wide[seq_dim] += 2
            cache = torch.zeros(wide, dtype=dtype).narrow(seq_dim, 1, cache_len).copy_(cache)
        caches.append(cache)
        blocks.append(torch.randn(block_shape, generator=generator).to(dtype))
    rows = torch.randint(0, source_batch, (batch,), generator=generator)
    per_row = data.draw(st.booleans(), label="per_row_offsets")
    dst = (torch.randint(0, cache_len - length + 1, (batch,), generator=generator) if per_row
           else data.draw(st.integers(0, cache_len - length)))
    src = (torch.randint(0, block_len - length + 1, (batch,), generator=generator) if per_row
           else data.draw(st.integers(0, block_len - length)))
    if source_batch != batch or data.draw(st.booleans(), label="src_rows"):
        src_rows = rows
    else:
        src_rows = None
    return dict(caches=caches, blocks=blocks, dst_start=dst, src_start=src, src_rows=src_rows, length=length,
                layout=layout)


def _check_kv_block_replace(caches, blocks, dst_start, src_start, src_rows, length, layout):
    want = [c.clone() for c in caches]
    for b in range(caches[0].shape[0]):
        d = int(dst_start[b]) if isinstance(dst_start, torch.Tensor) else dst_start
        s = int(src_start[b]) if isinstance(src_start, torch.Tensor) else src_start
        r = int(src_rows[b]) if src_rows is not None else b
        for cache, block in zip(want, blocks):
            if layout == "bhtd":
                cache[b, :, d:d + length] = block[r, :, s:s + length]
            else:
                cache[b, d:d + length] = block[r, s:s + length]
    igk.kv_block_replace(caches, blocks, dst_start, src_start=src_start, src_rows=src_rows, length=length,
                         layout=layout)
    for got, expected in zip(caches, want):
        assert torch.equal(got, expected)


def _draw_lm_head_entropy(data):
    hidden = _logits(data, max_vocab=9, neg_inf=False)          # [..., D]
    vocab = data.draw(st.integers(1, 33), label="V")
    seed = data.draw(st.integers(0, 2 ** 31 - 1), label="weight_seed")
    weight = (torch.randn(vocab, hidden.shape[-1], generator=torch.Generator().manual_seed(seed)) * 0.5).to(hidden.dtype)
    bias = _values(data, (vocab,)) if data.draw(st.booleans(), label="bias_given") else None
    return dict(hidden=hidden, weight=weight, bias=bias, mask=_mask(data, hidden.shape[:-1]))


def _check_lm_head_entropy(hidden, weight, bias, mask):
    # The definition: float64 entropy of the model's own logits (the matmul in hidden's dtype) plus the bias.
    logits = torch.nn.functional.linear(hidden, weight).double()
    if bias is not None:
        logits = logits + bias.double()
    rows = logits.reshape(-1, weight.shape[0])
    read = mask.reshape(-1) if mask is not None else torch.ones(rows.shape[0], dtype=torch.bool)
    if _has_unreadable_row(rows, read):
        with pytest.raises(ValueError, match="-inf"):
            igk.lm_head_entropy(hidden, weight, bias, mask)
        return
    got = igk.lm_head_entropy(hidden, weight, bias, mask).entropy
    assert got.shape == hidden.shape[:-1] and got.dtype == torch.float32
    _close(got.reshape(-1), torch.where(read, _entropy64(rows), 0.0))


OPS = [
    OpProperty("step_stats", _draw_step_stats, _check_step_stats),
    OpProperty("token_stats", _draw_token_stats, _check_token_stats),
    OpProperty("gumbel_sample", _draw_gumbel_sample, _check_gumbel_sample),
    OpProperty("gumbel_topk", _draw_gumbel_topk, _check_gumbel_topk),
    OpProperty("lookahead_objective", _draw_lookahead_objective, _check_lookahead_objective),
    OpProperty("topk_logprobs", _draw_topk_logprobs, _check_topk_logprobs),
    OpProperty("sample_logprob", _draw_sample_logprob, _check_sample_logprob),
    OpProperty("kv_block_replace", _draw_kv_block_replace, _check_kv_block_replace),
    OpProperty("lm_head_entropy", _draw_lm_head_entropy, _check_lm_head_entropy),
]


def test_every_public_op_has_a_property():
    public = {name for name in igk.__all__ if name != "use_backend"}
    assert public <= {op.name for op in OPS}


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
@settings(max_examples=EXAMPLES, **PROFILE)
@given(data=st.data())
def test_op_matches_its_definition(op, data):
    op.check(**op.draw(data))


# ----------------------------------------------------------------------------- samplers

@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from tiny_checkpoints import write_tiny_checkpoint

    from infogain import models

    root = tmp_path_factory.mktemp("property_models")
    return {arch: models.load(write_tiny_checkpoint(arch, root / arch, seed=7))[0] for arch in ("llada", "dream", "sdar")}


@st.composite
def sampler_runs(draw):
    from infogain.samplers import SAMPLERS

    block_length = draw(st.sampled_from([1, 2, 4]))
    blocks = draw(st.integers(1, 3))
    gen_length = block_length * blocks
    prompts = draw(st.lists(st.lists(st.integers(2, 90), min_size=1, max_size=5), min_size=1, max_size=3))
    return dict(
        arch=draw(st.sampled_from(["llada", "dream", "sdar"])),
        name=draw(st.sampled_from(SAMPLERS)),
        prompts=prompts,
        options=dict(gen_length=gen_length, block_length=block_length,
                     steps=draw(st.integers(blocks, gen_length)),
                     candidate_number=draw(st.integers(1, 4)),
                     position_temperature=draw(st.sampled_from([0.0, 0.5, 2.0])),
                     threshold=draw(st.sampled_from([0.2, 0.9, 1.0])),
                     cache=draw(st.sampled_from(["none", "prefix", "dual"])),
                     temperature=draw(st.sampled_from([0.0, 0.0, 1.0])),
                     parallel_bypass=draw(st.booleans()), stop_at_eos=draw(st.booleans()),
                     seed=draw(st.integers(0, 1000))),
    )


@settings(max_examples=SAMPLER_EXAMPLES, **PROFILE)
@given(run=sampler_runs())
def test_samplers_commit_exactly_gen_length_tokens(tiny_models, run):
    from infogain.samplers import make_sampler

    model = tiny_models[run["arch"]]
    mask_id = model.config.mask_token_id
    options = run["options"]
    sampler = make_sampler(run["name"], model)
    result = sampler.generate(run["prompts"], **options)
    assert result.sequences.shape == (len(run["prompts"]), options["gen_length"])
    assert not (result.sequences == mask_id).any()
    for row in result.stats.rows:
        assert sum(row.tokens.values()) == options["gen_length"]
    # The prompts are kept, right-aligned before the generation.
    width = max(len(p) for p in run["prompts"])
    for b, prompt in enumerate(run["prompts"]):
        assert result.canvas[b, width - len(prompt):width].tolist() == prompt
    # Deterministic runs only: the random sampler, and Info-Gain's Gumbel-perturbed candidate
    # positions (position_temperature > 0 with several candidates), draw from one generator whose
    # stream depends on the batch.
    deterministic = options["temperature"] == 0 and run["name"] != "random" and (
        run["name"] not in ("info_gain", "lookum") or options["position_temperature"] == 0
        or options["candidate_number"] == 1)
    if deterministic and len(run["prompts"]) > 1:
        for b, prompt in enumerate(run["prompts"]):
            alone = sampler.generate([prompt], **options)
            assert alone.sequences[0].tolist() == result.sequences[b].tolist(), b
