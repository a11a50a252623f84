"""Forward convention, left padding, the three cache modes and candidate packing.

Every model is a tiny random checkpoint in its official format (tests/tiny_checkpoints.py),
compared with an independent cache-free forward (tests/models_reference.py).
"""
import copy
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from models_reference import reference_logits  # noqa: E402
from tiny_checkpoints import tiny_config, tiny_state_dict, write_tiny_checkpoint  # noqa: E402

import infogain.models as models  # noqa: E402

ARCHS = ["llada", "dream", "sdar"]
ATOL = 2e-5
T, GEN_START, BLOCK = 16, 6, 4   # canvas: prompt [0, 6), blocks [6,10) [10,14) [14,16)


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request, tmp_path_factory):
    arch = request.param
    path = write_tiny_checkpoint(arch, tmp_path_factory.mktemp(arch), seed=3)
    model, _ = models.load(path)
    return arch, model, tiny_config(arch), tiny_state_dict(arch, tiny_config(arch), seed=3)


def seg_kwargs(arch):
    return dict(gen_start=GEN_START, block_length=BLOCK) if arch == "sdar" else {}


def mode_of(arch, wanted):
    return "block_causal" if arch == "sdar" else wanted


def canvas(B=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 90, (B, T), generator=gen)


def row_cache(cache, row):
    """An independent copy of one batch row of ``cache`` (the copy-the-cache baseline)."""
    return models.KVCache(keys=[k[row:row + 1].clone() for k in cache.keys],
                          values=[v[row:row + 1].clone() for v in cache.values], length=cache.length,
                          token_ids=cache.token_ids[row:row + 1].clone(),
                          attention_mask=cache.attention_mask[row:row + 1].clone(), mode=cache.mode)


@torch.no_grad()
def test_full_forward_matches_independent_reference(tiny):
    arch, model, config, state = tiny
    ids = canvas()
    got = model(ids, **seg_kwargs(arch))
    want = reference_logits(arch, config, state, ids, **seg_kwargs(arch))
    assert got.shape == (2, T, 96)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)


@torch.no_grad()
def test_hidden_states_and_lm_head_give_the_logits(tiny):
    # Against the independent reference, not against forward(), which is built from hidden_states
    # (a missing Dream shift would otherwise go unnoticed).
    arch, model, config, state = tiny
    ids = canvas()
    hidden = model.hidden_states(ids, **seg_kwargs(arch))
    want = reference_logits(arch, config, state, ids, **seg_kwargs(arch))
    torch.testing.assert_close(hidden @ model.lm_head_weight.T, want, atol=ATOL, rtol=1e-4)


@torch.no_grad()
def test_left_padded_batch_equals_each_row_alone(tiny):
    arch, model, config, state = tiny
    ids = canvas()
    pad = 3
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, :pad] = False
    ids[1, :pad] = 1
    logits = model(ids, mask, **seg_kwargs(arch))
    assert torch.isfinite(logits).all()
    alone0 = model(ids[:1], **seg_kwargs(arch))
    torch.testing.assert_close(logits[0], alone0[0], atol=ATOL, rtol=1e-4)
    # row 1 alone is the unpadded sequence; SDAR's segments move with the padding
    kw = dict(gen_start=GEN_START - pad, block_length=BLOCK) if arch == "sdar" else {}
    alone1 = model(ids[1:, pad:], **kw)
    torch.testing.assert_close(logits[1, pad:], alone1[0], atol=ATOL, rtol=1e-4)
    want = reference_logits(arch, config, state, ids, mask, **seg_kwargs(arch))
    torch.testing.assert_close(logits[1, pad:], want[1, pad:], atol=ATOL, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("padded", [False, True])
def test_keep_gives_those_positions_of_the_reference(tiny, padded):
    # keep computes the last layer at the kept positions only: Dream's shift needs the hidden
    # state one position before the slice, and left padding moves where the shift stops.
    arch, model, config, state = tiny
    ids, mask, pad = canvas(), None, 3
    if padded:
        mask = torch.ones(2, T, dtype=torch.bool)
        mask[1, :pad] = False
        ids[1, :pad] = 1
    want = reference_logits(arch, config, state, ids, mask, **seg_kwargs(arch))
    real = torch.ones(2, T, dtype=torch.bool) if mask is None else mask
    for keep in (slice(0, T), slice(0, 1), slice(GEN_START, GEN_START + BLOCK), slice(pad, pad + 2), slice(-3, None)):
        got = model(ids, mask, keep=keep, **seg_kwargs(arch))
        hidden = model.hidden_states(ids, mask, keep=keep, **seg_kwargs(arch))
        assert got.shape == want[:, keep].shape
        read = real[:, keep]   # padding positions predict nothing
        torch.testing.assert_close(got[read], want[:, keep][read], atol=ATOL, rtol=1e-4)
        torch.testing.assert_close((hidden @ model.lm_head_weight.T)[read], want[:, keep][read], atol=ATOL, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("wanted", ["prefix", "dual"])
def test_prefill_keep_returns_those_logits_and_the_whole_cache(tiny, wanted):
    arch, model, config, state = tiny
    mode = mode_of(arch, wanted)
    ids, mask, pad = canvas(), torch.ones(2, T, dtype=torch.bool), 3
    mask[1, :pad] = False
    ids[1, :pad] = 1
    start = GEN_START
    want = reference_logits(arch, config, state, ids, mask, **seg_kwargs(arch))
    full_logits, full_cache = model.prefill(ids, mask, mode=mode, start=start, **seg_kwargs(arch))
    for keep in (slice(start, start + BLOCK), slice(pad, pad + 2), slice(0, T)):
        logits, cache = model.prefill(ids, mask, mode=mode, start=start, keep=keep, **seg_kwargs(arch))
        assert logits.shape == want[:, keep].shape
        read = mask[:, keep]
        torch.testing.assert_close(logits[read], want[:, keep][read], atol=ATOL, rtol=1e-4)
        assert cache.length == full_cache.length
        for got, expected in zip(cache.keys + cache.values, full_cache.keys + full_cache.values):
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4)
    with pytest.raises(ValueError, match="keep"):
        model.prefill(ids, mask, mode=mode, start=start, keep=slice(0, T, 2), **seg_kwargs(arch))


@torch.no_grad()
@pytest.mark.parametrize("wanted", ["prefix", "dual"])
def test_window_equals_full_forward_when_nothing_changed(tiny, wanted):
    arch, model, _, _ = tiny
    mode = mode_of(arch, wanted)
    ids = canvas()
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, :2] = False
    start = GEN_START + BLOCK
    W = T - start if mode == "prefix" else BLOCK
    full = model(ids, mask, **seg_kwargs(arch))
    logits, cache = model.prefill(ids, mask, mode=mode, start=start, **seg_kwargs(arch))
    torch.testing.assert_close(logits, full)
    window = model.forward_window(ids[:, start:start + W], start=start, cache=cache, mode=mode, attention_mask=mask)
    torch.testing.assert_close(window, full[:, start:start + W], atol=ATOL, rtol=1e-4)
    if mode == "prefix":
        assert cache.length == start and cache.keys[0].shape[2] == start


@torch.no_grad()
def test_sdar_block_causal_cache_is_exact_across_blocks():
    config = tiny_config("sdar")
    state = tiny_state_dict("sdar", config, seed=5)
    model = models.build(config)
    model.load_state_dict({n: state[o] for o, n in models.hub.sdar.key_map(model.spec).items()})
    ids = canvas(seed=1)
    logits, cache = model.prefill(ids, None, mode="block_causal", start=GEN_START, gen_start=GEN_START, block_length=BLOCK)
    for start in range(GEN_START, T, BLOCK):
        W = min(BLOCK, T - start)
        ids[:, start:start + W] = torch.randint(0, 90, (2, W), generator=torch.Generator().manual_seed(start))
        got = model.forward_window(ids[:, start:start + W], start=start, cache=cache, mode="block_causal", write=True)
        want = reference_logits("sdar", config, state, ids, gen_start=GEN_START, block_length=BLOCK)
        torch.testing.assert_close(got, want[:, start:start + W], atol=ATOL, rtol=1e-4)
        assert cache.length == start + W


@torch.no_grad()
def test_dual_write_replaces_the_block():
    """After write=True the cache equals a fresh prefill of the updated canvas at the block."""
    model = models.build(tiny_config("llada"))
    ids = canvas()
    start = GEN_START
    _, cache = model.prefill(ids, None, mode="dual", start=start)
    new = ids.clone()
    new[:, start:start + BLOCK] = 7
    model.forward_window(new[:, start:start + BLOCK], start=start, cache=cache, mode="dual", write=True)
    _, fresh = model.prefill(new, None, mode="dual", start=start)
    # layer 0's K/V of the block depend only on the block's own tokens and positions
    torch.testing.assert_close(cache.keys[0][:, :, start:start + BLOCK], fresh.keys[0][:, :, start:start + BLOCK])
    torch.testing.assert_close(cache.values[0][:, :, :start], fresh.values[0][:, :, :start])
    assert torch.equal(cache.token_ids, new)


def prefilled_canvas(tiny, wanted, *, seed, padded_row, padding):
    """A 3-row canvas (row ``padded_row`` left padded by ``padding``) prefilled for the window
    after the second block; returns ``(model, mode, ids, mask, start, W, cache)``."""
    arch, model, _, _ = tiny
    mode = mode_of(arch, wanted)
    ids = canvas(B=3, seed=seed)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[padded_row, :padding] = False
    start = GEN_START + BLOCK
    W = T - start if mode == "prefix" else BLOCK
    _, cache = model.prefill(ids, mask, mode=mode, start=start, **seg_kwargs(tiny[0]))
    return model, mode, ids, mask, start, W, cache


@torch.no_grad()
@pytest.mark.parametrize("wanted", ["prefix", "dual"])
def test_packed_candidates_equal_separate_forwards(tiny, wanted):
    model, mode, ids, mask, start, W, cache = prefilled_canvas(tiny, wanted, seed=2, padded_row=2, padding=3)
    # 3 candidates of row 2, 2 of row 0, none of row 1, interleaved
    cache_rows = torch.tensor([2, 0, 2, 0, 2])
    gen = torch.Generator().manual_seed(9)
    windows = ids[cache_rows, start:start + W].clone()
    windows[:, :2] = torch.randint(0, 90, (5, 2), generator=gen)
    before = [k.clone() for k in cache.keys]
    packed = model.forward_window(windows, start=start, cache=cache, mode=mode, cache_rows=cache_rows)
    assert packed.shape == (5, W, 96)
    for r, row in enumerate(cache_rows.tolist()):
        alone = model.forward_window(windows[r:r + 1], start=start, cache=row_cache(cache, row), mode=mode)
        torch.testing.assert_close(packed[r], alone[0], atol=ATOL, rtol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(before, cache.keys)), "candidates must not write the cache"


@torch.no_grad()
@pytest.mark.parametrize("layout", ["every_row_twice", "single_position", "empty_cache"])
def test_candidates_equal_separate_forwards_in_edge_layouts(tiny, layout):
    """Every cache row read (no row selection), a one-position window, and a prefix
    cache of length 0 whose window holds the left padding itself."""
    arch, model, _, _ = tiny
    ids = canvas(B=3, seed=4)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :2] = False
    if layout == "empty_cache":
        if arch == "sdar":
            pytest.skip("block-causal windows are single blocks after the prompt")
        mode, start, W = "prefix", 0, T
    else:
        mode = mode_of(arch, "dual")
        start = GEN_START + BLOCK
        W = 1 if layout == "single_position" else BLOCK
    _, cache = model.prefill(ids, mask, mode=mode, start=start, **seg_kwargs(arch))
    cache_rows = torch.tensor([0, 0, 1, 1, 2, 2])
    windows = ids[cache_rows, start:start + W].clone()
    windows[:, -1] = torch.randint(0, 90, (6,), generator=torch.Generator().manual_seed(11))
    packed = model.forward_window(windows, start=start, cache=cache, mode=mode, cache_rows=cache_rows)
    assert torch.isfinite(packed).all()
    for r, row in enumerate(cache_rows.tolist()):
        alone = model.forward_window(windows[r:r + 1], start=start, cache=row_cache(cache, row), mode=mode)
        real = mask[row, start:start + W]
        torch.testing.assert_close(packed[r][real], alone[0][real], atol=ATOL, rtol=1e-4)


@torch.no_grad()
def test_dream_window_first_position_uses_the_previous_hidden_state():
    """The logit at ``start`` changes with the window's tokens (it is not a stale placeholder)."""
    model = models.build(tiny_config("dream"))
    ids = canvas(B=1)
    start = GEN_START
    _, cache = model.prefill(ids, None, mode="dual", start=start)
    a = model.forward_window(ids[:, start:start + BLOCK], start=start, cache=cache, mode="dual")
    changed = ids[:, start:start + BLOCK].clone()
    changed[0, 1:] = (changed[0, 1:] + 1) % 90
    b = model.forward_window(changed, start=start, cache=cache, mode="dual")
    assert not torch.allclose(a[0, 0], b[0, 0])
    # with a cache built from the changed canvas, the window equals the full forward exactly
    full_ids = ids.clone()
    full_ids[:, start:start + BLOCK] = changed
    _, cache2 = model.prefill(full_ids, None, mode="dual", start=start)
    c = model.forward_window(changed, start=start, cache=cache2, mode="dual")
    torch.testing.assert_close(c, model(full_ids)[:, start:start + BLOCK], atol=ATOL, rtol=1e-4)


# ----------------------------------------------------------------------------- errors

@pytest.fixture(scope="module")
def llada():
    torch.manual_seed(0)
    return models.build(tiny_config("llada"))


def test_forward_rejects_bad_inputs(llada):
    ids = canvas()
    with pytest.raises(TypeError, match="input_ids"):
        llada([[1, 2]])
    with pytest.raises(ValueError, match="input_ids"):
        llada(ids.float().long()[0])
    with pytest.raises(ValueError, match="input_ids"):
        llada(ids + 1000)
    with pytest.raises(TypeError, match="attention_mask"):
        llada(ids, torch.ones_like(ids))
    with pytest.raises(ValueError, match="attention_mask"):
        llada(ids, torch.ones(2, 3, dtype=torch.bool))
    for keep, error in (([1, 2], TypeError), (slice("a", 3), TypeError), (slice(0, T, 2), ValueError),
                        (slice(5, 5), ValueError), (slice(T, None), ValueError)):
        with pytest.raises(error, match="keep"):
            llada(ids, keep=keep)
        with pytest.raises(error, match="keep"):
            llada.hidden_states(ids, keep=keep)


def test_sdar_needs_segments():
    model = models.build(tiny_config("sdar"))
    with pytest.raises(ValueError, match="gen_start"):
        model(canvas())
    with pytest.raises(ValueError, match="block_length"):
        model(canvas(), gen_start=2, block_length=0)
    with pytest.raises(ValueError, match="mode"):
        model.prefill(canvas(), None, mode="dual", start=6, gen_start=6, block_length=4)
    with pytest.raises(ValueError, match="block boundary"):
        model.prefill(canvas(), None, mode="block_causal", start=7, gen_start=6, block_length=4)


@torch.no_grad()
def test_window_rejects_bad_arguments(llada):
    ids = canvas()
    _, cache = llada.prefill(ids, None, mode="prefix", start=10)
    win = ids[:, 10:]
    with pytest.raises(ValueError, match="mode"):
        llada.prefill(ids, None, mode="paged", start=10)
    with pytest.raises(ValueError, match="start"):
        llada.prefill(ids, None, mode="prefix", start=99)
    with pytest.raises(ValueError, match="block_causal"):
        llada.prefill(ids, None, mode="block_causal", start=10)
    with pytest.raises(ValueError, match="built for mode"):
        llada.forward_window(win, start=10, cache=cache, mode="dual")
    with pytest.raises(ValueError, match="prefix mode"):
        llada.forward_window(win[:, :3], start=10, cache=cache, mode="prefix")
    with pytest.raises(TypeError, match="cache"):
        llada.forward_window(win, start=10, cache=None, mode="prefix")
    with pytest.raises(ValueError, match="cache_rows"):
        llada.forward_window(win, start=10, cache=cache, mode="prefix", cache_rows=torch.tensor([0, 5]))
    with pytest.raises(TypeError, match="cache_rows"):
        llada.forward_window(win, start=10, cache=cache, mode="prefix", cache_rows=[0, 1])
    with pytest.raises(ValueError, match="write"):
        llada.forward_window(win, start=10, cache=cache, mode="prefix", cache_rows=torch.tensor([0, 1]), write=True)
    with pytest.raises(ValueError, match="rows"):
        llada.forward_window(win[:1].expand(3, -1), start=10, cache=cache, mode="prefix")
    with pytest.raises(ValueError, match="window_ids"):
        llada.forward_window(win.float().long()[0], start=10, cache=cache, mode="prefix")
    with pytest.raises(ValueError, match="attention_mask"):
        llada.forward_window(win, start=10, cache=cache, mode="prefix", attention_mask=torch.ones(2, 3, dtype=torch.bool))
    _, dual = llada.prefill(ids, None, mode="dual", start=10)
    with pytest.raises(ValueError, match="dual mode"):
        llada.forward_window(ids[:, 10:], start=12, cache=dual, mode="dual")


@torch.no_grad()
@pytest.mark.parametrize("wanted", ["prefix", "dual"])
def test_attention_choices_give_the_same_logits(tiny, wanted, monkeypatch):
    """Candidate batches by cascade attention (forced: threshold 0) and by one stacked
    block-diagonal attention (forced: threshold above any cache), and ordinary rows
    (one per cache row, a subset in any order) by the plain window forward, all equal."""
    from infogain.models import attention

    model, mode, ids, mask, start, W, cache = prefilled_canvas(tiny, wanted, seed=5, padded_row=0, padding=2)
    cache_rows = (1, 0, 1, 1, 0)
    windows = ids[list(cache_rows), start:start + W].clone()
    windows[:, 0] = torch.randint(0, 90, (5,), generator=torch.Generator().manual_seed(12))
    results = {}
    # rows: each candidate as a plain window row over its cache row's keys (small batches on the CPU).
    for name, threshold, rows_limit in (("cascade", 0, 0), ("stacked", 1 << 30, 0), ("rows", 0, 1 << 62)):
        monkeypatch.setitem(attention.CASCADE_MIN_SHARED_KEYS, "cpu", threshold)
        monkeypatch.setitem(attention.STACKED_MAX_OWN_KEYS, "cpu", threshold)
        monkeypatch.setitem(attention.ROWS_COPY_LIMIT, "cpu", rows_limit)
        results[name] = model.forward_window(windows, start=start, cache=cache, mode=mode, cache_rows=cache_rows)
    torch.testing.assert_close(results["stacked"], results["cascade"], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(results["rows"], results["cascade"], atol=ATOL, rtol=1e-4)
    # Ordinary rows: rows 2 and 0 of the batch, one window each, against the per-row forwards.
    subset = model.forward_window(ids[[2, 0], start:start + W], start=start, cache=cache, mode=mode,
                                  cache_rows=(2, 0))
    every = model.forward_window(ids[:, start:start + W], start=start, cache=cache, mode=mode)
    for r, row in enumerate((2, 0)):
        alone = model.forward_window(ids[row:row + 1, start:start + W], start=start, cache=row_cache(cache, row),
                                     mode=mode)
        real = mask[row, start:start + W]
        torch.testing.assert_close(subset[r][real], alone[0][real], atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(every[row][real], alone[0][real], atol=ATOL, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("wanted", ["prefix", "dual"])
@pytest.mark.parametrize("layout", ["cascade", "stacked", "rows"])
def test_candidate_hidden_states_at_the_read_positions(tiny, wanted, layout, monkeypatch):
    """``read``: the last layer's MLP runs where the read positions need it (Dream: the query
    before each one); the hidden states there equal those of the whole window."""
    from infogain.models import attention

    threshold = 0 if layout == "cascade" else 1 << 30
    monkeypatch.setitem(attention.CASCADE_MIN_SHARED_KEYS, "cpu", threshold)
    monkeypatch.setitem(attention.STACKED_MAX_OWN_KEYS, "cpu", threshold)
    monkeypatch.setitem(attention.ROWS_COPY_LIMIT, "cpu", 1 << 62 if layout == "rows" else 0)
    model, mode, ids, mask, start, W, cache = prefilled_canvas(tiny, wanted, seed=4, padded_row=1, padding=3)
    cache_rows = (1, 0, 1, 2, 1)
    windows = ids[list(cache_rows), start:start + W].clone()
    gen = torch.Generator().manual_seed(3)
    windows[:, 0] = torch.randint(0, 90, (5,), generator=gen)
    read = torch.rand(5, W, generator=gen) < 0.5
    read[0] = False                      # a row reading nothing
    read[1] = True                       # a row reading everything
    whole = model.window_hidden_states(windows, start=start, cache=cache, mode=mode, cache_rows=cache_rows)
    partial = model.window_hidden_states(windows, start=start, cache=cache, mode=mode, cache_rows=cache_rows,
                                         read=read)
    torch.testing.assert_close(partial[read], whole[read], atol=ATOL, rtol=1e-4)
    assert not torch.allclose(partial[~read], whole[~read], atol=ATOL), "the MLP was skipped nowhere"
