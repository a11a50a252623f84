"""gumbel_topk: plain top-k against a loop reference, Gumbel-top-k law, padding, errors."""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from infogain_kernels import gumbel_topk, use_backend

P_VALUE_FLOOR = 1e-3  # fixed seeds: a correct sampler passes deterministically; a wrong one fails by far


def seeded(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def plain_topk(scores_row, valid_row, k):
    """Valid positions by decreasing score, ties by increasing index, padded with -1 (a plain loop)."""
    candidates = [(-score, position) for position, (score, ok) in enumerate(zip(scores_row, valid_row)) if ok]
    chosen = [position for _, position in sorted(candidates)[:k]]
    return chosen + [-1] * (k - len(chosen))


def random_problem(rows, positions, seed):
    generator = torch.Generator().manual_seed(seed)
    # Rounded scores create ties; a few valid -inf scores must still rank (last) before the padding.
    scores = torch.round(4 * torch.rand(rows, positions, generator=generator)) / 4
    scores[torch.rand(rows, positions, generator=generator) < 0.1] = -math.inf
    valid = torch.rand(rows, positions, generator=generator) < 0.6
    return scores, valid


# ----------------------------------------------------------------------------- exact properties

@pytest.mark.parametrize("positions, k", [(1, 1), (1, 3), (7, 3), (33, 32), (33, 40), (1000, 8)])
def test_sample_zero_is_plain_topk(backend_device, positions, k):
    scores, valid = random_problem(5, positions, seed=positions + k)
    valid[0] = False  # a row without any valid position is all padding
    valid[1] = True
    indices = gumbel_topk(scores.to(backend_device), k, 3, 0.7, valid=valid.to(backend_device), generator=seeded(0, backend_device))
    assert indices.shape == (3, 5, k) and indices.dtype == torch.int64
    expected = [plain_topk(scores[row].tolist(), valid[row].tolist(), k) for row in range(5)]
    assert indices[0].cpu().tolist() == expected


@pytest.mark.parametrize("positions, k", [(7, 3), (33, 40), (200, 16)])
def test_samples_are_distinct_valid_positions_padded_last(backend_device, positions, k):
    scores, valid = random_problem(6, positions, seed=positions)
    indices = gumbel_topk(scores.to(backend_device), k, 5, 1.5, valid=valid.to(backend_device), generator=seeded(1, backend_device)).cpu()
    for sample, row in itertools.product(range(5), range(6)):
        chosen = indices[sample, row].tolist()
        count = min(k, int(valid[row].sum()))
        assert chosen[count:] == [-1] * (k - count)
        picked = chosen[:count]
        assert len(set(picked)) == count and all(valid[row, p] for p in picked)


def test_temperature_zero_makes_every_sample_plain_topk(backend_device):
    scores, valid = random_problem(4, 20, seed=3)
    indices = gumbel_topk(scores.to(backend_device), 5, 4, 0.0, valid=valid.to(backend_device), generator=seeded(2, backend_device))
    assert all(torch.equal(indices[0], indices[s]) for s in range(1, 4))


def test_non_contiguous_inputs_match_contiguous_copies(backend_device):
    scores, valid = random_problem(9, 6, seed=4)
    scores_view, valid_view = scores.to(backend_device).T, valid.to(backend_device).T  # [6, 9], column-major
    from_view = gumbel_topk(scores_view, 4, 3, 1.0, valid=valid_view, generator=seeded(5, backend_device))
    from_copy = gumbel_topk(scores_view.contiguous(), 4, 3, 1.0, valid=valid_view.contiguous(),
                            generator=seeded(5, backend_device))
    assert torch.equal(from_view, from_copy)


def test_empty_batch(backend_device):
    indices = gumbel_topk(torch.zeros(0, 4, device=backend_device), 2, 3, 1.0,
                          valid=torch.zeros(0, 4, dtype=torch.bool, device=backend_device))
    assert indices.shape == (3, 0, 2)


# ----------------------------------------------------------------------------- distribution

def test_first_choice_follows_softmax_of_scores_over_temperature(backend_device):
    scores = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, -math.inf])
    valid = torch.tensor([True, True, True, False, True, True])
    temperature = 0.4
    rows, samples = 50, 81  # 4000 perturbed draws from stride-0 rows
    indices = gumbel_topk(scores.expand(rows, -1).to(backend_device), 2, samples, temperature,
                          valid=valid.expand(rows, -1).to(backend_device), generator=seeded(6, backend_device)).cpu()
    first = indices[1:, :, 0].reshape(-1).numpy()
    weights = torch.where(valid, torch.exp(scores.double() / temperature), torch.zeros(()))
    expected = (weights / weights.sum()).numpy()
    counts = np.bincount(first, minlength=6)
    assert counts[~valid.numpy()].sum() == 0 and counts[5] == 0  # invalid and -inf never first
    support = expected > 0
    assert stats.chisquare(counts[support], expected[support] * counts.sum()).pvalue > P_VALUE_FLOOR
    untempered = torch.softmax(torch.where(valid, scores.double(), -math.inf), -1).numpy()
    assert stats.chisquare(counts[support], untempered[support] * counts.sum()).pvalue < P_VALUE_FLOOR


def test_ordered_pairs_follow_sampling_without_replacement(backend_device):
    scores = torch.tensor([1.0, 0.0, 0.5, -0.5])
    temperature = 0.8
    rows, samples = 30, 101  # 3000 ordered pairs
    indices = gumbel_topk(scores.expand(rows, -1).to(backend_device), 2, samples, temperature,
                          valid=torch.ones(rows, 4, dtype=torch.bool, device=backend_device),
                          generator=seeded(7, backend_device)).cpu()
    pairs = (indices[1:, :, 0] * 4 + indices[1:, :, 1]).reshape(-1).numpy()
    p = torch.softmax(scores.double() / temperature, -1).tolist()
    # P(first = i, second = j) = p_i * p_j / (1 - p_i) for i != j (successive draws without replacement).
    cells = [(i, j) for i in range(4) for j in range(4) if i != j]
    expected = np.array([p[i] * p[j] / (1 - p[i]) for i, j in cells])
    counts = np.bincount(pairs, minlength=16)
    assert all(counts[i * 4 + i] == 0 for i in range(4))
    observed = np.array([counts[i * 4 + j] for i, j in cells])
    assert stats.chisquare(observed, expected * observed.sum()).pvalue > P_VALUE_FLOOR


# ----------------------------------------------------------------------------- determinism

def test_same_generator_state_same_draw_and_generator_advances(backend_device):
    scores, valid = random_problem(4, 30, seed=8)
    scores, valid = scores.to(backend_device), valid.to(backend_device)
    first = gumbel_topk(scores, 6, 4, 1.0, valid=valid, generator=seeded(9, backend_device))
    assert torch.equal(first, gumbel_topk(scores, 6, 4, 1.0, valid=valid, generator=seeded(9, backend_device)))
    assert not torch.equal(first, gumbel_topk(scores, 6, 4, 1.0, valid=valid, generator=seeded(10, backend_device)))
    generator = seeded(9, backend_device)
    gumbel_topk(scores, 6, 4, 1.0, valid=valid, generator=generator)
    assert not torch.equal(first, gumbel_topk(scores, 6, 4, 1.0, valid=valid, generator=generator))


def test_registered_custom_op_passes_opcheck():
    scores, valid = random_problem(3, 8, seed=11)
    seed = torch.tensor([5], dtype=torch.int64)
    torch.library.opcheck(torch.ops.infogain.gumbel_topk.default, (scores, 3, 4, 1.0, valid, seed))


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(scores=[[0.0, 1.0]]), TypeError, "scores"),
    (dict(scores=torch.zeros(2, 3, dtype=torch.int64)), TypeError, "scores"),
    (dict(scores=torch.zeros(3)), ValueError, "scores"),
    (dict(scores=torch.zeros(1, 2, 3)), ValueError, "scores"),
    (dict(k=0), ValueError, "k"),
    (dict(k=1.5), TypeError, "k"),
    (dict(num_samples=0), ValueError, "num_samples"),
    (dict(num_samples=None), TypeError, "num_samples"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=math.nan), ValueError, "temperature"),
    (dict(temperature=math.inf), ValueError, "temperature"),
    (dict(valid=None), TypeError, "valid"),
    (dict(valid=torch.ones(3, 2, dtype=torch.bool)), ValueError, "valid"),
    (dict(valid=torch.ones(2, 3)), TypeError, "valid"),
    (dict(valid=torch.ones(2, 3, dtype=torch.bool, device="meta")), ValueError, "valid"),
    (dict(generator="seed"), TypeError, "generator"),
    (dict(scores=torch.zeros(2, 3, device="meta"), valid=torch.ones(2, 3, dtype=torch.bool, device="meta"),
          generator=torch.Generator()), ValueError, "generator"),
], ids=lambda value: None if not isinstance(value, str) else value)
def test_bad_arguments_raise_naming_the_argument(kwargs, error, message):
    arguments = dict(scores=torch.zeros(2, 3), k=2, num_samples=3, temperature=1.0,
                     valid=torch.ones(2, 3, dtype=torch.bool), generator=None)
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        gumbel_topk(arguments.pop("scores"), arguments.pop("k"), arguments.pop("num_samples"),
                    arguments.pop("temperature"), **arguments)


def test_nan_score_raises_only_at_valid_positions(backend_device):
    scores = torch.rand(3, 5, device=backend_device)
    scores[2, 1] = math.nan
    valid = torch.ones(3, 5, dtype=torch.bool, device=backend_device)
    with pytest.raises(ValueError, match="scores contain NaN at valid position 1 of row 2"):
        gumbel_topk(scores, 2, 2, 1.0, valid=valid)
    valid[2, 1] = False
    indices = gumbel_topk(scores, 2, 2, 1.0, valid=valid)
    assert not (indices[:, 2] == 1).any()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, in the interpreter
def test_check_values_false_does_not_raise_and_stays_in_range(backend_device):
    scores = torch.rand(3, 5, device=backend_device)
    scores[2, 1] = math.nan
    valid = torch.ones(3, 5, dtype=torch.bool, device=backend_device)
    valid[2, 4] = False
    indices = gumbel_topk(scores, 2, 3, 1.0, valid=valid, generator=seeded(1, backend_device), check_values=False)
    row = indices[:, 2]
    # Unspecified positions for the NaN row, but each is a valid position or the padding.
    assert (((row >= 0) & (row < 4)) | (row == -1)).all()
    # Rows without NaN are exactly the checked result (same generator state).
    checked = gumbel_topk(scores[:2], 2, 3, 1.0, valid=valid[:2], generator=seeded(1, backend_device))
    assert torch.equal(checked[0], indices[0, :2])
    with pytest.raises(ValueError, match="scores contain NaN"):
        gumbel_topk(scores, 2, 3, 1.0, valid=valid)  # the default still checks


def test_check_values_must_be_a_bool():
    with pytest.raises(TypeError, match="check_values"):
        gumbel_topk(torch.zeros(2, 3), 1, 1, 1.0, valid=torch.ones(2, 3, dtype=torch.bool), check_values="no")


# ----------------------------------------------------------------------------- GPU lane

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_matches_loop_reference_and_law(dtype):
    scores, valid = random_problem(8, 256, seed=12)
    indices = gumbel_topk(scores.to(dtype).cuda(), 32, 4, 0.5, valid=valid.cuda(), generator=seeded(0, "cuda"))
    rounded = scores.to(dtype).float()
    assert indices[0].cpu().tolist() == [plain_topk(rounded[r].tolist(), valid[r].tolist(), 32) for r in range(8)]
    probe = torch.tensor([0.9, 0.1, 0.5, 0.7], dtype=dtype).cuda()
    first = gumbel_topk(probe.expand(4000, -1), 1, 2, 0.3, valid=torch.ones(4000, 4, dtype=torch.bool).cuda(),
                        generator=seeded(1, "cuda"))[1, :, 0].cpu().numpy()
    expected = torch.softmax(probe.double().cpu() / 0.3, -1).numpy()
    counts = np.bincount(first, minlength=4)
    assert stats.chisquare(counts, expected * counts.sum()).pvalue > P_VALUE_FLOOR
