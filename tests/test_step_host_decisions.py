"""The CPU step's host-side pieces against the device step they replace, each also against an
independent reference written here for clarity:

* :func:`infogain.samplers.step.decide_on_host` (the Info-Gain decision made on host lists by
  ``InfoGainStrategy.decide_rows``, plus the driver's last-step fill) against the device
  :func:`infogain.samplers.step.decide`, on random block statistics full of exact ties and of
  confidences at the float32 threshold and its neighbouring floats;
* :func:`infogain.samplers.strategies.kept_on_host` against the device keep rule of
  ``InfoGainStrategy.candidates`` (a candidate repeating an earlier candidate's position set is
  dropped);
* each ``*_unchecked`` op against its checked version;
* :func:`infogain_kernels._backend.op_path` against the dispatch table the module documents.

The statistics are injected through ``step._statistics`` (the one function both step paths take
them from), so that they can hold values no softmax would produce on demand (a probability of
exactly float32(0.9)); one test runs the real ``step_stats`` on random logits instead.
"""
import importlib
import random

import numpy as np
import pytest
import torch

from infogain_kernels import _backend, gumbel_topk, lm_head_entropy, step_stats
from infogain_kernels.gumbel_topk import gumbel_topk_unchecked
from infogain_kernels.lm_head_entropy import lm_head_entropy_unchecked
from infogain_kernels.step_stats import step_stats_unchecked
from infogain.samplers import step, strategies
from infogain.samplers.options import GenerateOptions
from infogain.samplers.strategies import InfoGainStrategy, StepState, commits_on_host, kept_on_host
from infogain.stats import KIND_BYPASS, KIND_FILL, KIND_LOOKAHEAD, KIND_NONE, KIND_TRIVIAL
from test_samplers_helpers import single_thread  # noqa: F401  (autouse fixture)

# The op modules (the package exports functions of the same names).
step_stats_module = importlib.import_module("infogain_kernels.step_stats")
gumbel_topk_module = importlib.import_module("infogain_kernels.gumbel_topk")
lm_head_module = importlib.import_module("infogain_kernels.lm_head_entropy")

VOCAB = 16
MASK = VOCAB - 1


# ----------------------------------------------------------------------------- the reference decision
def best(positions, scores, count):
    """The ``count`` positions of highest score; equal scores: the lower position first."""
    return sorted(positions, key=lambda p: (-float(scores[p]), p))[:count]


def reference_step(block, quota, last, top1_prob, top1_id, x0_prob, x0, opts):
    """One Info-Gain step per row, from the algorithm's description (DESIGN.md, InfoGainStrategy):
    returns ``(kinds, committed positions, block after the commits, candidates follow)``.

    Every row with masks is filled on the block's last step or when its quota covers its masks
    (tokens x0). Otherwise, with a quota: the masked positions whose top-1 probability reaches the
    threshold, compared in float32 as a float32 tensor compares with a Python number, bypass with
    their arg-max (all of them with ``parallel_bypass``, else the quota best); else the quota most
    confident positions with x0 when no lookahead can run (position temperature 0, one candidate,
    or the block's last step), else the row looks ahead and commits nothing now."""
    threshold = np.float32(opts.threshold)
    may_look = opts.position_temperature > 0 and opts.candidate_number > 1 and not last
    kinds, chosen, after = [], [], []
    for b, row in enumerate(block):
        masks = [p for p, token in enumerate(row) if token == MASK]
        new_row = list(row)
        if not masks:
            kind, picked, source = KIND_NONE, [], x0[b]
        elif last or quota[b] >= len(masks):
            kind, picked, source = KIND_FILL, masks, x0[b]
        elif quota[b] == 0:
            kind, picked, source = KIND_NONE, [], x0[b]
        else:
            high = [p for p in masks if np.float32(top1_prob[b][p]) >= threshold]
            if high:
                picked = sorted(high if opts.parallel_bypass else best(high, top1_prob[b], quota[b]))
                kind, source = KIND_BYPASS, top1_id[b]
            elif may_look:
                kind, picked, source = KIND_LOOKAHEAD, [], x0[b]
            else:
                kind, picked, source = KIND_TRIVIAL, sorted(best(masks, x0_prob[b], quota[b])), x0[b]
        for p in picked:
            new_row[p] = int(source[p])
        kinds.append(kind)
        chosen.append(sorted(picked))
        after.append(new_row)
    return kinds, chosen, after, may_look


# ----------------------------------------------------------------------------- random statistics
def _f32(value):
    return np.float32(value)


def random_case(rng: random.Random):
    """A random step: block, quotas, options and the statistics ``step_stats`` would give (fill
    values at unmasked positions), with probabilities drawn mostly from a small palette (exact ties)
    holding float32(threshold) and its two neighbouring floats."""
    batch, width = rng.randint(1, 4), rng.randint(1, 8)
    threshold = rng.choice([0.9, 0.9, 0.9, 0.7, 0.5, 1.0])
    t32 = _f32(threshold)
    palette = [np.nextafter(t32, _f32(0)), t32, min(np.nextafter(t32, _f32(2)), _f32(1)), _f32(0.5), _f32(0.25),
               _f32(1.0), _f32(0.0625)]
    temperature = rng.choice([0.0, 0.0, 0.8])
    opts = GenerateOptions(threshold=threshold, temperature=temperature, parallel_bypass=rng.random() < 0.5,
                           candidate_number=rng.choice([1, 2, 4]), position_temperature=rng.choice([0.0, 0.5]))
    samples = InfoGainStrategy().num_token_samples(opts)

    def prob():
        return rng.choice(palette) if rng.random() < 0.7 else _f32(rng.random())

    block, quota = [], []
    for _ in range(batch):
        fraction = rng.choice([0.0, 0.5, 0.5, 1.0])
        block.append([MASK if rng.random() < fraction else rng.randrange(MASK) for _ in range(width)])
        quota.append(rng.choice([0, 1, 1, 2, rng.randint(1, width + 1)]))
    shape = (batch, width)
    entropy = np.zeros(shape, np.float32)
    top1 = np.zeros(shape, np.float32)
    top2 = np.zeros(shape, np.float32)
    top1_id = np.full(shape, -1, np.int64)
    tokens = np.full((*shape, samples), -1, np.int64)
    token_probs = np.zeros((*shape, samples), np.float32)
    for b in range(batch):
        for p in range(width):
            if block[b][p] != MASK:
                continue   # step_stats' fill values
            entropy[b, p] = rng.choice([_f32(0.5), _f32(1.25), _f32(rng.random())])   # ties too
            top1[b, p] = prob()
            top2[b, p] = top1[b, p] * _f32(0.5)
            top1_id[b, p] = rng.randrange(MASK)
            for s in range(samples):
                tokens[b, p, s] = rng.randrange(MASK)
                token_probs[b, p, s] = min(prob(), top1[b, p])
    stats = tuple(torch.from_numpy(a) for a in (entropy, top1, top1_id, top2, tokens, token_probs))
    last = rng.random() < 0.2
    return dict(block=block, quota=quota, opts=opts, stats=stats, last=last)


def run_both(case, monkeypatch, stats=None):
    """The device decide and the host decide on the case, both from the same statistics."""
    if stats is None:
        stats = case["stats"]
        monkeypatch.setattr(step, "_statistics", lambda *args, **kwargs: (None, stats))
    block = torch.tensor(case["block"], dtype=torch.int64)
    quota = torch.tensor(case["quota"], dtype=torch.int64)
    max_quota = max(case["quota"] + [1])
    strategy = InfoGainStrategy()
    logits = case.get("logits")
    device = step.decide(strategy, case["opts"], logits, block.clone(), MASK, quota, last=case["last"],
                         max_quota=max_quota, generator=torch.Generator().manual_seed(5), defer_candidates=True)
    host = step.decide_on_host(strategy, case["opts"], logits, block.clone(), MASK, quota, list(case["quota"]), None,
                               last=case["last"], max_quota=max_quota, generator=torch.Generator().manual_seed(5),
                               block=0, step=0)
    return device, host


def check_against_reference(case, device, host, stats):
    entropy, top1, top1_id, top2, tokens, token_probs = stats
    x0, x0_prob = (tokens[..., 0], token_probs[..., 0]) if tokens.shape[-1] else (top1_id, top1)
    kinds, chosen, after, deferred = reference_step(case["block"], case["quota"], case["last"], top1.numpy(),
                                                    top1_id.tolist(), x0_prob.numpy(), x0.tolist(), case["opts"])
    block = torch.tensor(case["block"], dtype=torch.int64)
    device_after = torch.where(device.commit, device.decision.tokens, block).tolist()
    what = (case["opts"], case["quota"], case["last"])
    assert device.kind.tolist() == kinds, what
    assert host.kinds == kinds and host.decided.kind.tolist() == kinds, what
    assert [row.nonzero().flatten().tolist() for row in device.commit] == chosen, what
    assert [row.nonzero().flatten().tolist() for row in host.decided.commit] == chosen, what
    assert device_after == after, what
    assert host.block_rows == after and host.decided.decision.tokens.tolist() == after, what
    assert device.decision.candidates_deferred == host.decided.decision.candidates_deferred == deferred, what
    # What the driver hands to candidates() afterwards.
    assert torch.equal(device.state.active, host.decided.state.active)
    assert host.quota == case["quota"]


def test_host_decision_equals_device_decision_on_random_statistics(monkeypatch):
    rng = random.Random(20)
    seen = set()
    for _ in range(400):
        case = random_case(rng)
        device, host = run_both(case, monkeypatch)
        check_against_reference(case, device, host, case["stats"])
        seen.update(host.kinds)
    # The cases reach every kind of decision.
    assert seen == {KIND_NONE, KIND_BYPASS, KIND_LOOKAHEAD, KIND_FILL, KIND_TRIVIAL}


@pytest.mark.parametrize("parallel_bypass", [False, True])
def test_threshold_compares_in_float32(monkeypatch, parallel_bypass):
    """float32(0.9) < 0.9 as Python floats, yet a float32 tensor holding it passes ``>= 0.9``: the
    host decision must bypass it, as the device does; the float below does not pass."""
    t32 = _f32(0.9)
    below, above = np.nextafter(t32, _f32(0)), np.nextafter(t32, _f32(1))
    assert float(t32) < 0.9 < float(above) and bool((torch.tensor([float(t32)]) >= 0.9).item())
    # Row 0: below / at / above / at (a tie) / below, quota 2 of 5 masks; row 1: only `below`.
    top1 = torch.tensor([[below, t32, above, t32, below], [below] * 5], dtype=torch.float32)
    width = top1.shape[1]
    stats = (torch.full((2, width), 0.5), top1, torch.arange(2 * width).view(2, width), top1 / 2,
             torch.empty(2, width, 0, dtype=torch.int64), torch.empty(2, width, 0))
    case = dict(block=[[MASK] * width] * 2, quota=[2, 2], last=False, stats=stats,
                opts=GenerateOptions(threshold=0.9, parallel_bypass=parallel_bypass, position_temperature=0.0))
    device, host = run_both(case, monkeypatch)
    check_against_reference(case, device, host, stats)
    # Stated outright: at / above / the tied at; the quota picks `above` then the lower `at`.
    assert host.kinds == [KIND_BYPASS, KIND_TRIVIAL]
    assert host.decided.commit[0].nonzero().flatten().tolist() == ([1, 2, 3] if parallel_bypass else [1, 2])
    # decide_rows itself, on host lists.
    kinds, positions, bypass, _ = InfoGainStrategy().decide_rows(
        [list(range(width)), list(range(width))], [2, 2], top1.double().tolist(), top1.double().tolist(),
        case["opts"], may_lookahead=True)
    assert kinds == [KIND_BYPASS, KIND_TRIVIAL] and bypass == [True, False]
    assert sorted(positions[0]) == ([1, 2, 3] if parallel_bypass else [1, 2]) and sorted(positions[1]) == [0, 1]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_host_decision_equals_device_decision_from_real_logits(monkeypatch, temperature):
    """No injected statistics: the real step_stats (same generator seed on both paths) on logits
    with tied rows (equal confidences across positions)."""
    rng = random.Random(int(temperature * 10))
    gen = torch.Generator().manual_seed(3)
    for trial in range(40):
        batch, width = rng.randint(1, 3), rng.randint(2, 6)
        base = torch.randint(-3, 4, (batch, width, VOCAB), generator=gen).float()
        base[:, ::2] = base[:, :1].clone()   # every other position repeats position 0: exact ties
        block = [[MASK if rng.random() < 0.7 else rng.randrange(MASK) for _ in range(width)] for _ in range(batch)]
        opts = GenerateOptions(threshold=rng.choice([0.2, 0.5, 0.9]), temperature=temperature,
                               parallel_bypass=rng.random() < 0.5, candidate_number=rng.choice([1, 3]),
                               position_temperature=rng.choice([0.0, 0.5]))
        case = dict(block=block, quota=[rng.randint(0, width) for _ in range(batch)], last=rng.random() < 0.2,
                    opts=opts, logits=base)
        masked = torch.tensor(block) == MASK
        stats = step_stats(base, masked, num_samples=InfoGainStrategy().num_token_samples(opts),
                           temperature=temperature, generator=torch.Generator().manual_seed(5))
        device, host = run_both(case, monkeypatch, stats=stats)
        check_against_reference(case, device, host, tuple(stats))


# ----------------------------------------------------------------------------- kept candidates
def reference_keep(sets, lookahead_rows):
    """keep[n][b]: row b looks ahead and no earlier candidate of row b commits the same set."""
    return [[b in lookahead_rows and all(sets[m][b] != sets[n][b] for m in range(n)) for b in range(len(sets[n]))]
            for n in range(len(sets))]


def _state(masked, quota, opts, generator, samples=0, entropy=None):
    batch, width = masked.shape
    probs = torch.rand(batch, width, generator=generator)
    return StepState(logits=None, masked=masked, quota=quota, active=masked.any(dim=1),
                     entropy=torch.rand(batch, width, generator=generator) if entropy is None else entropy,
                     top1_prob=probs, top1_id=torch.randint(0, MASK, (batch, width), generator=generator),
                     top2_prob=probs / 2, tokens=torch.randint(0, MASK, (batch, width, samples), generator=generator),
                     token_probs=torch.rand(batch, width, samples, generator=generator) * probs[..., None],
                     options=opts, max_quota=int(quota.max()), generator=generator, defer_candidates=True)


def test_kept_on_host_on_hand_made_commits():
    a, b, c = [True, False, True], [False, True, True], [False, False, False]
    commit = [[a, a, c], [b, a, c], [a, a, c], [b, b, c]]   # [N=4][B=3][L=3]
    assert kept_on_host(commit, [0, 1, 2]) == reference_keep(commit, [0, 1, 2]) == [
        [True, True, True], [True, False, False], [False, False, False], [False, True, False]]
    assert kept_on_host(commit, [1]) == [[False, True, False], [False] * 3, [False] * 3, [False, True, False]]
    assert kept_on_host(commit, []) == [[False] * 3] * 4


def test_kept_on_host_equals_device_keep_on_chosen_position_lists(monkeypatch):
    """The candidates' position lists are chosen here (gumbel_topk replaced): the same set in
    another order, or differing only beyond the row's quota, is a duplicate; all duplicates leave
    candidate 0 alone."""
    rng = random.Random(7)
    for _ in range(150):
        batch, width, count = rng.randint(1, 3), rng.randint(1, 6), rng.choice([1, 2, 4])
        masked = torch.tensor([[rng.random() < 0.8 for _ in range(width)] for _ in range(batch)])
        quota = torch.tensor([rng.randint(1, width) for _ in range(batch)])
        slots = min(int(quota.max()), width)
        lists = []   # [N][B] position lists as gumbel_topk returns them: distinct, then -1 padding
        for n in range(count):
            rows = []
            for b in range(batch):
                allowed = masked[b].nonzero().flatten().tolist()
                if n and rng.random() < 0.5:
                    # An earlier candidate's positions within the quota, in another order, and
                    # other positions beyond it.
                    head = [p for p in lists[rng.randrange(n)][b][:int(quota[b])] if p >= 0]
                    rng.shuffle(head)
                    rest = [p for p in allowed if p not in head]
                    rng.shuffle(rest)
                    chosen = head + rest[:slots - len(head)]
                else:
                    chosen = rng.sample(allowed, min(len(allowed), slots))
                rows.append(chosen + [-1] * (slots - len(chosen)))
            lists.append(rows)
        positions = torch.tensor([row for rows in lists for row in rows], dtype=torch.int64)
        monkeypatch.setattr(strategies, "gumbel_topk_unchecked",
                            lambda *args, **kwargs: torch.stack([positions, positions]))
        lookahead = torch.tensor([rng.random() < 0.7 for _ in range(batch)])
        opts = GenerateOptions(candidate_number=count, position_temperature=0.5)
        state = _state(masked & lookahead[:, None], quota, opts, torch.Generator().manual_seed(1))
        on_device = InfoGainStrategy().candidates(state, lookahead)
        deferred = InfoGainStrategy().candidates(state, lookahead, keep=False)
        assert deferred.keep is None and torch.equal(deferred.commit, on_device.commit)
        rows = lookahead.nonzero().flatten().tolist()
        sets = [[{p for p in lists[n][b][:int(quota[b])] if p >= 0} if b in rows else set() for b in range(batch)]
                for n in range(count)]
        expected = reference_keep(sets, rows)
        assert on_device.keep.tolist() == expected
        assert kept_on_host(deferred.commit.tolist(), rows) == expected


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_kept_on_host_equals_device_keep_with_real_candidates(temperature):
    """The real candidates (gumbel_topk, same seeds): tied confidences and quotas close to the
    mask count make many duplicates, a quota equal to it makes all candidates equal."""
    rng = random.Random(11)
    seen_duplicates = seen_all_duplicates = False
    for _ in range(120):
        batch, width, count = rng.randint(1, 3), rng.randint(1, 6), rng.choice([2, 4, 6])
        masked = torch.tensor([[rng.random() < 0.7 for _ in range(width)] for _ in range(batch)])
        masked[:, 0] = True
        quota = torch.tensor([max(1, int(row.sum()) - rng.choice([0, 0, 1, 2])) for row in masked])
        lookahead = torch.tensor([rng.random() < 0.8 for _ in range(batch)])
        opts = GenerateOptions(candidate_number=count, position_temperature=rng.choice([0.05, 1.0]),
                               temperature=temperature)
        samples = InfoGainStrategy().num_token_samples(opts)
        states = [_state(masked & lookahead[:, None], quota, opts, torch.Generator().manual_seed(9), samples)
                  for _ in range(2)]
        for state in states:   # tied confidences
            state.top1_prob[:, 1::2] = state.top1_prob[:, :1]
        on_device = InfoGainStrategy().candidates(states[0], lookahead)
        deferred = InfoGainStrategy().candidates(states[1], lookahead, keep=False)
        assert torch.equal(deferred.commit, on_device.commit) and torch.equal(deferred.cost, on_device.cost)
        rows = lookahead.nonzero().flatten().tolist()
        commit = deferred.commit.tolist()
        sets = [[{p for p in range(width) if commit[n][b][p]} for b in range(batch)] for n in range(count)]
        expected = reference_keep(sets, rows)
        assert on_device.keep.tolist() == expected
        assert kept_on_host(commit, rows) == expected
        kept = on_device.keep.sum(dim=0)
        seen_duplicates |= bool(((kept < count) & lookahead).any())
        seen_all_duplicates |= bool(((kept == 1) & lookahead).any())
    assert seen_duplicates and seen_all_duplicates


# ----------------------------------------------------------------------------- unchecked ops
@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("num_samples", [0, 3])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_stats_unchecked_equals_step_stats(temperature, num_samples, with_mask, dtype):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 5, 33, generator=gen) * 3).to(dtype)
    logits[0, 1] = logits[0, 0]   # a tied row
    mask = torch.rand(2, 5, generator=gen) < 0.6 if with_mask else None
    checked_gen, unchecked_gen = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    checked = step_stats(logits, mask, num_samples=num_samples, temperature=temperature, generator=checked_gen,
                         check_values=False)
    unchecked = step_stats_unchecked(logits, mask, num_samples, temperature, unchecked_gen)
    assert type(unchecked) is type(checked)
    for name, a, b in zip(checked._fields, checked, unchecked):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    # The same random stream consumed.
    assert torch.equal(checked_gen.get_state(), unchecked_gen.get_state())


@pytest.mark.parametrize("temperature", [0.0, 0.5])
@pytest.mark.parametrize("num_samples", [1, 3])
def test_gumbel_topk_unchecked_equals_gumbel_topk(temperature, num_samples):
    gen = torch.Generator().manual_seed(1)
    scores = torch.rand(4, 9, generator=gen)
    scores[:, 3] = scores[:, 5]   # ties
    valid = torch.rand(4, 9, generator=gen) < 0.7
    checked_gen, unchecked_gen = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    checked = gumbel_topk(scores, 4, num_samples, temperature, valid=valid, generator=checked_gen,
                          check_values=True)
    unchecked = gumbel_topk_unchecked(scores, 4, num_samples, temperature, valid, unchecked_gen)
    assert torch.equal(checked, unchecked)
    assert torch.equal(checked_gen.get_state(), unchecked_gen.get_state())


@pytest.mark.parametrize("variant", [None, "info_gain", "lookum"])
@pytest.mark.parametrize("with_top", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_lm_head_entropy_unchecked_equals_lm_head_entropy(variant, with_top, with_mask):
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(3, 4, 8, generator=gen)
    weight = torch.randn(20, 8, generator=gen)
    bias = torch.randn(20, generator=gen)
    bias[5] = float("-inf")
    mask = torch.rand(3, 4, generator=gen) < 0.6 if with_mask else None
    cost = torch.rand(3, generator=gen) if variant == "info_gain" else None
    checked = lm_head_entropy(hidden, weight, bias, mask, cost=cost, variant=variant, with_top=with_top,
                              check_values=True)
    unchecked = lm_head_entropy_unchecked(hidden, weight, bias, mask, cost=cost, variant=variant, with_top=with_top)
    assert type(unchecked) is type(checked)
    for name, a, b in zip(checked._fields, checked, unchecked):
        assert (a is None and b is None) or torch.equal(a, b), name


def _refuse(*args, **kwargs):
    raise AssertionError("an argument check ran")


def test_unchecked_ops_run_no_checks(monkeypatch):
    """Documented: no argument checks and no value check. Every check helper the checked ops call
    is made to fail, and bad values (NaN logits / scores / hidden states) pass through, flagged
    in the outputs as the checked ops' docstrings say (a non-finite entropy)."""
    for module in (step_stats_module, gumbel_topk_module, lm_head_module):
        for name in dir(module):
            if name.startswith(("check_", "raise_on_", "_raise_on_")):
                monkeypatch.setattr(module, name, _refuse)
    logits = torch.randn(2, 3, 7)
    logits[1, 2] = float("nan")
    out = step_stats_unchecked(logits, None, 2, 0.5, None)
    assert not torch.isfinite(out.entropy[1, 2]) and torch.isfinite(out.entropy[0]).all()
    scores = torch.rand(2, 5)
    scores[0, 1] = float("nan")
    assert gumbel_topk_unchecked(scores, 2, 2, 0.5, torch.ones(2, 5, dtype=torch.bool), None).shape == (2, 2, 2)
    hidden = torch.randn(2, 3, 4)
    hidden[0, 0, 0] = float("nan")
    head = lm_head_entropy_unchecked(hidden, torch.randn(9, 4), None, None, cost=None, variant=None, with_top=False)
    assert not torch.isfinite(head.entropy[0, 0]) and torch.isfinite(head.entropy[1]).all()


def _with_nan(tensor, index):
    tensor = tensor.clone()
    tensor[index] = float("nan")
    return tensor


_LOGITS = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0))
_SCORES, _VALID = torch.rand(2, 5, generator=torch.Generator().manual_seed(0)), torch.ones(2, 5, dtype=torch.bool)
_HIDDEN = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
_WEIGHT = torch.randn(9, 4, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("call, error, message", [
    (lambda: step_stats(_LOGITS.long()), TypeError, r"^logits must have dtype"),
    (lambda: step_stats(_LOGITS, torch.ones(2, 4, dtype=torch.bool)), ValueError, r"^mask must have shape \(2, 3\)"),
    (lambda: step_stats(_LOGITS, temperature=-1.0), ValueError, r"^temperature must be >= 0"),
    (lambda: step_stats(_LOGITS, num_samples=-1), ValueError, r"^num_samples must be >= 0"),
    (lambda: step_stats(_with_nan(_LOGITS, (1, 2))), ValueError, r"^logits row at position \(1, 2\) contains NaN"),
    (lambda: gumbel_topk(_SCORES, 0, 1, 0.5, valid=_VALID), ValueError, r"^k must be >= 1"),
    (lambda: gumbel_topk(_SCORES, 2, 1, 0.5, valid=_VALID[:, :4]), ValueError, r"^valid must have shape \(2, 5\)"),
    (lambda: gumbel_topk(_SCORES, 2, 1, float("nan"), valid=_VALID), ValueError, r"^temperature must be >= 0"),
    (lambda: gumbel_topk(_with_nan(_SCORES, (0, 1)), 2, 2, 0.5, valid=_VALID), ValueError,
     r"^scores contain NaN at valid position 1 of row 0"),
    (lambda: lm_head_entropy(_HIDDEN, _WEIGHT.double()), TypeError, r"^weight must have dtype"),
    (lambda: lm_head_entropy(_HIDDEN, _WEIGHT, variant="info_gain"), ValueError, r"^cost is required"),
    (lambda: lm_head_entropy(_with_nan(_HIDDEN, (0, 0, 0)), _WEIGHT), ValueError,
     r"row at position \(0, 0\) contains NaN"),
], ids=["step_stats-dtype", "step_stats-mask", "step_stats-temperature", "step_stats-samples", "step_stats-nan",
        "gumbel_topk-k", "gumbel_topk-valid", "gumbel_topk-temperature", "gumbel_topk-nan", "lm_head-dtype",
        "lm_head-cost", "lm_head-nan"])
def test_checked_ops_refuse_what_the_unchecked_ones_do_not_check(call, error, message):
    """The checked ops' own messages (the native kernels check some shapes too, in other words)."""
    with pytest.raises(error, match=message):
        call()


# ----------------------------------------------------------------------------- op_path
class _On:
    """Stands for a tensor on ``device``: op_path reads only ``.device`` (a CUDA tensor cannot be
    built on a CPU-only machine)."""

    def __init__(self, device):
        self.device = torch.device(device)


def expected_path(forced, device, native, triton, interpret):
    """The dispatch the _backend module documents: by default CUDA tensors go to Triton and CPU
    tensors to the native kernels where they are available, else the reference;
    ``INFOGAIN_BACKEND`` forces one path, and a forced path that cannot run raises RuntimeError
    (Triton needs CUDA or TRITON_INTERPRET=1, native needs a CPU tensor and the extension)."""
    if forced == "auto":
        if device == "cuda" and triton:
            return "triton"
        if device == "cpu" and native:
            return "native"
        return "reference"
    if forced == "reference":
        return "reference"
    if forced == "triton":
        return "triton" if triton and (device == "cuda" or interpret) else RuntimeError
    return "native" if device == "cpu" and native else RuntimeError


def _resolve(forced, how, device):
    if how == "context":
        with _backend.use_backend(forced):
            return _backend.op_path(_On(device))
    return _backend.op_path(_On(device))


def _cases():
    for forced in ("auto", "reference", "triton", "native"):
        for device in ("cpu", "cuda", "meta"):
            for native in (False, True):
                for triton in (False, True):
                    for interpret in (False, True):
                        yield forced, device, native, triton, interpret


def _check_op_path(monkeypatch, forced, device, native, triton, interpret):
    monkeypatch.setattr(_backend, "_native_available", lambda: native)
    monkeypatch.setattr(_backend, "_triton_available", lambda: triton)
    monkeypatch.setenv("TRITON_INTERPRET", "1" if interpret else "0")
    expected = expected_path(forced, device, native, triton, interpret)
    for how in ("env", "context"):
        if how == "env":
            monkeypatch.setenv("INFOGAIN_BACKEND", forced)
        else:   # the context manager wins over the environment
            monkeypatch.setenv("INFOGAIN_BACKEND", "native" if forced == "reference" else "reference")
        if expected is RuntimeError:
            with pytest.raises(RuntimeError):
                _resolve(forced, how, device)
        else:
            assert _resolve(forced, how, device) == expected, (forced, how, device, native, triton, interpret)


def test_op_path_follows_the_documented_dispatch(monkeypatch):
    for forced, device, native, triton, interpret in _cases():
        if forced == "native" and device == "cuda" and triton:
            continue   # see test_forced_native_never_sends_a_cuda_tensor_to_triton
        _check_op_path(monkeypatch, forced, device, native, triton, interpret)
    monkeypatch.setenv("INFOGAIN_BACKEND", "fast")
    with pytest.raises(ValueError, match="INFOGAIN_BACKEND"):
        _backend.op_path(torch.zeros(1))


def test_forced_native_never_sends_a_cuda_tensor_to_triton(monkeypatch):
    _check_op_path(monkeypatch, "native", "cuda", True, True, False)


def test_op_path_on_real_cpu_tensors_and_the_ops_follow_it(monkeypatch):
    """Real CPU tensors (the native extension is built here), and step_stats runs the path op_path names."""
    monkeypatch.delenv("INFOGAIN_BACKEND", raising=False)
    x = torch.zeros(2, 3)
    if not _backend._native_available():
        pytest.skip("the native CPU kernels are not built")
    assert _backend.op_path(x) == "native"
    with _backend.use_backend("reference"):
        assert _backend.op_path(x) == "reference"
    monkeypatch.setenv("INFOGAIN_BACKEND", "reference")
    assert _backend.op_path(x) == "reference"
    with _backend.use_backend("native"):
        assert _backend.op_path(x) == "native"
    calls = []
    original = step_stats_module.step_stats_reference
    monkeypatch.setattr(step_stats_module, "step_stats_reference", lambda *a: calls.append(1) or original(*a))
    logits = torch.randn(2, 3, 5)
    reference = step_stats_unchecked(logits, None, 0, 0.0, None)
    assert calls == [1]
    monkeypatch.delenv("INFOGAIN_BACKEND")
    native = step_stats_unchecked(logits, None, 0, 0.0, None)
    assert calls == [1]
    torch.testing.assert_close(native.entropy, reference.entropy)
    assert torch.equal(native.top1_id, reference.top1_id)


def test_commits_are_the_in_quota_positions_when_a_row_has_padding_slots(monkeypatch):
    """A row with fewer masked positions than the batch's largest quota gets -1 slots after its
    positions; they must not erase a committed position 0 (they once did, clamped to 0)."""
    masked = torch.tensor([[True, True, True, True], [True, True, False, False]])
    quota = torch.tensor([3, 2])
    lists = [[[2, 0, 3], [0, 1, -1]], [[1, 2, 3], [1, 0, -1]]]   # [N=2][B=2][slots=3]
    positions = torch.tensor([row for rows in lists for row in rows], dtype=torch.int64)
    monkeypatch.setattr(strategies, "gumbel_topk_unchecked", lambda *args, **kwargs: torch.stack([positions, positions]))
    opts = GenerateOptions(candidate_number=2, position_temperature=0.5)
    state = _state(masked, quota, opts, torch.Generator().manual_seed(0))
    commit = InfoGainStrategy().candidates(state, torch.tensor([True, True]), keep=False).commit
    expected = [[[p in lists[n][b][:int(quota[b])] for p in range(4)] for b in range(2)] for n in range(2)]
    assert commit.tolist() == expected
    assert commits_on_host(lists, quota.tolist(), 4) == expected
