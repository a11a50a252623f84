"""gumbel_sample, the thin wrapper over step_stats kept for compatibility: its [S, ...] layout, the
properties callers rely on, errors. The draws themselves are tested in test_step_stats.py."""
import math

import pytest
import torch

from infogain_kernels import gumbel_sample, step_stats, use_backend
from test_step_stats import chi_square_p_value

P_VALUE_FLOOR = 1e-3  # fixed seeds: a correct sampler passes deterministically; a wrong one fails by far


def seeded(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def softmax_prob_of(logits, tokens):
    """Float64 softmax of the untempered logits at each drawn token: tokens [S, ...], logits [..., V]."""
    probs = torch.softmax(logits.double().cpu(), dim=-1)
    expanded = probs.unsqueeze(0).expand(tokens.shape[0], *probs.shape)
    return expanded.gather(-1, tokens.cpu().unsqueeze(-1)).squeeze(-1)


def first_argmax(row):
    """Lowest index holding the maximum (a plain loop, not torch)."""
    values = row.tolist()
    best = 0
    for index, value in enumerate(values):
        if value > values[best]:
            best = index
    return best


# ----------------------------------------------------------------------------- the wrapper

def test_is_step_stats_with_the_sample_axis_first(backend_device):
    logits = torch.randn(2, 3, 40, generator=seeded(0)).to(backend_device)
    mask = torch.tensor([[True, False, True], [True, True, False]], device=backend_device)
    tokens, probs = gumbel_sample(logits, 4, 0.8, mask=mask, generator=seeded(1, backend_device))
    stats = step_stats(logits, mask, num_samples=4, temperature=0.8, generator=seeded(1, backend_device))
    assert tokens.shape == probs.shape == (4, 2, 3)
    assert torch.equal(tokens, stats.tokens.movedim(-1, 0)) and torch.equal(probs, stats.token_probs.movedim(-1, 0))
    assert (tokens[:, ~mask] == -1).all() and (probs[:, ~mask] == 0).all()
    torch.testing.assert_close(probs[:, mask].double().cpu(), softmax_prob_of(logits[mask], tokens[:, mask]),
                               rtol=1e-5, atol=1e-7)


def test_minus_inf_entries_are_never_drawn(backend_device):
    torch.manual_seed(2)
    logits = torch.randn(32, 40)
    logits[torch.rand(32, 40) < 0.8] = -math.inf
    logits[:, 17] = -5.0  # every row keeps at least one legal token, a very unlikely one
    logits[0] = -math.inf
    logits[0, 39] = 0.0  # a row with a single legal token draws it with probability 1
    logits = logits.to(backend_device)
    tokens, probs = gumbel_sample(logits, 8, 3.0, generator=seeded(1, backend_device))
    assert torch.isfinite(logits.cpu().gather(1, tokens.cpu().T)).all()
    assert (tokens[:, 0] == 39).all() and (probs[:, 0] == 1.0).all()


def test_temperature_zero_is_argmax_lowest_index_on_ties_and_draws_nothing(backend_device):
    vocab = 5000  # more than one vocabulary chunk on both paths
    logits = torch.randn(4, vocab).clamp(max=2.0)
    logits[0, [10, 4500]] = 9.0           # tie across chunks: the lower index wins
    logits[1, [3, 4]] = 9.0               # tie inside a chunk
    logits[2, [4999]] = 9.0               # last column
    logits[3] = -math.inf
    logits[3, [2000, 2001]] = -1.0        # ties among the only finite entries
    logits = logits.to(backend_device)
    generator = seeded(0, backend_device)
    state = generator.get_state()
    tokens, probs = gumbel_sample(logits, 3, 0.0, generator=generator)
    assert torch.equal(generator.get_state(), state)
    expected = torch.tensor([first_argmax(row) for row in logits.cpu()])
    assert expected.tolist() == [10, 3, 4999, 2000]
    assert (tokens.cpu() == expected).all()
    torch.testing.assert_close(probs.double().cpu(), softmax_prob_of(logits, tokens), rtol=1e-5, atol=1e-7)


def test_token_frequencies_follow_tempered_softmax():
    logits = torch.tensor([1.0, -0.5, 0.3, -math.inf, 2.0, -1.5, 0.0])
    with use_backend("reference"):
        tokens, _ = gumbel_sample(logits.expand(64, -1), 64, 0.7, generator=seeded(11))
    tempered = torch.softmax(logits.double() / 0.7, dim=-1).numpy()
    assert chi_square_p_value(tokens, tempered) > P_VALUE_FLOOR


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(logits=[[0.0, 1.0]]), TypeError, "logits"),
    (dict(logits=torch.zeros(2, 3, dtype=torch.float64)), TypeError, "logits"),
    (dict(num_samples=0), ValueError, "num_samples"),
    (dict(num_samples=2.0), TypeError, "num_samples"),
    (dict(temperature=-0.1), ValueError, "temperature"),
    (dict(temperature=math.inf), ValueError, "temperature"),
    (dict(mask=torch.ones(3, dtype=torch.bool)), ValueError, "mask"),
    (dict(generator=7), TypeError, "generator"),
    (dict(check_values=1), TypeError, "check_values"),
], ids=lambda value: None if not isinstance(value, str) else value)
def test_bad_arguments_raise_naming_the_argument(kwargs, error, message):
    arguments = dict(logits=torch.zeros(2, 3), num_samples=2, temperature=1.0)
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        gumbel_sample(arguments.pop("logits"), arguments.pop("num_samples"), arguments.pop("temperature"),
                      **arguments)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_nan_and_all_minus_inf_rows_raise(temperature):
    logits = torch.randn(3, 9)
    logits[1, 4] = math.nan
    with pytest.raises(ValueError, match=r"logits row at position \(1,\) contains NaN"):
        gumbel_sample(logits, 2, temperature)
    logits = torch.randn(2, 3, 9)
    logits[1, 2] = -math.inf
    with pytest.raises(ValueError, match=r"logits row at position \(1, 2\) is entirely -inf"):
        gumbel_sample(logits, 2, temperature)


# ----------------------------------------------------------------------------- GPU lane

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_frequencies_at_llada_width(dtype):
    vocab = 126464
    support = torch.tensor([5, 4096, 60000, 126463])  # spread over different vocabulary chunks and splits
    logits = torch.full((vocab,), -math.inf)
    logits[support] = torch.tensor([0.5, -0.25, 1.0, 0.0])
    logits = logits.to(dtype).cuda()
    tokens, _ = gumbel_sample(logits.expand(2000, -1), 8, 0.8, generator=seeded(1, "cuda"))
    remapped = torch.searchsorted(support, tokens.cpu().reshape(-1))
    assert torch.equal(support[remapped], tokens.cpu().reshape(-1))
    expected = torch.softmax(logits[support.cuda()].double().cpu() / 0.8, dim=-1).numpy()
    assert chi_square_p_value(remapped, expected) > P_VALUE_FLOOR


def test_one_row_with_a_false_zero_dim_mask_is_skipped():
    logits = torch.randn(7)
    tokens, probs = gumbel_sample(logits, 3, 1.0, mask=torch.tensor(False))
    assert tokens.tolist() == [-1, -1, -1] and probs.tolist() == [0.0, 0.0, 0.0]
