"""gumbel_sample: exact properties against independent references, distribution tests, errors."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from infogain_kernels import gumbel_sample, use_backend

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


def chi_square_p_value(observed_tokens, expected_probs):
    """p-value of observed token counts against expected probabilities (cells with zero probability excluded)."""
    counts = np.bincount(observed_tokens.reshape(-1).cpu().numpy(), minlength=len(expected_probs))
    expected_probs = np.asarray(expected_probs, dtype=np.float64)
    support = expected_probs > 0
    assert counts[~support].sum() == 0, "drew a token of probability zero"
    expected = expected_probs[support] / expected_probs[support].sum() * counts.sum()
    return stats.chisquare(counts[support], expected).pvalue


# ----------------------------------------------------------------------------- exact properties

@pytest.mark.parametrize("vocab", [1, 7, 1000, 50257])
def test_tokens_in_range_and_probs_are_untempered_softmax(backend_device, vocab):
    torch.manual_seed(vocab)
    rows = 3 if vocab < 50257 else 2
    logits = (3 * torch.randn(rows, vocab)).to(backend_device)
    tokens, probs = gumbel_sample(logits, 2, 0.7, generator=seeded(0, backend_device))
    assert tokens.shape == (2, rows) and tokens.dtype == torch.int64
    assert probs.shape == (2, rows) and probs.dtype == torch.float32
    assert ((tokens >= 0) & (tokens < vocab)).all()
    torch.testing.assert_close(probs.double().cpu(), softmax_prob_of(logits, tokens), rtol=1e-5, atol=1e-7)


def test_llada_width_on_reference_path():
    torch.manual_seed(0)
    logits = torch.randn(2, 126464)
    logits[:, ::3] = -math.inf
    with use_backend("reference"):
        tokens, probs = gumbel_sample(logits, 2, 1.0, generator=seeded(0))
    assert (tokens % 3 != 0).all()
    torch.testing.assert_close(probs.double(), softmax_prob_of(logits, tokens), rtol=1e-5, atol=1e-9)


def test_vector_and_multi_dim_leading_shapes(backend_device):
    torch.manual_seed(1)
    vector = torch.randn(11, device=backend_device)
    tokens, probs = gumbel_sample(vector, 3, 1.0, generator=seeded(0, backend_device))
    assert tokens.shape == (3,) and probs.shape == (3,)
    cube = torch.randn(2, 3, 4, 5, device=backend_device)
    tokens, probs = gumbel_sample(cube, 2, 1.0, generator=seeded(0, backend_device))
    assert tokens.shape == (2, 2, 3, 4)
    torch.testing.assert_close(probs.double().cpu(), softmax_prob_of(cube, tokens), rtol=1e-5, atol=1e-7)


def test_empty_leading_dimension(backend_device):
    tokens, probs = gumbel_sample(torch.zeros(0, 5, device=backend_device), 2, 1.0)
    assert tokens.shape == (2, 0) and probs.shape == (2, 0)


def test_minus_inf_entries_are_never_drawn(backend_device):
    torch.manual_seed(2)
    logits = torch.randn(64, 40)
    logits[torch.rand(64, 40) < 0.8] = -math.inf
    logits[:, 17] = -5.0  # every row keeps at least one legal token, a very unlikely one
    logits[0] = -math.inf
    logits[0, 39] = 0.0  # a row with a single legal token draws it with probability 1
    logits = logits.to(backend_device)
    tokens, probs = gumbel_sample(logits, 8, 3.0, generator=seeded(1, backend_device))
    drawn = logits.cpu().gather(1, tokens.cpu().T)
    assert torch.isfinite(drawn).all()
    assert (tokens[:, 0] == 39).all() and (probs[:, 0] == 1.0).all()


def test_temperature_zero_is_argmax_lowest_index_on_ties(backend_device):
    vocab = 5000  # more than one vocabulary chunk on both paths
    logits = torch.randn(4, vocab).clamp(max=2.0)
    logits[0, [10, 4500]] = 9.0           # tie across chunks: the lower index wins
    logits[1, [3, 4]] = 9.0               # tie inside a chunk
    logits[2, [4999]] = 9.0               # last column
    logits[3] = -math.inf
    logits[3, [2000, 2001]] = -1.0        # ties among the only finite entries
    logits = logits.to(backend_device)
    tokens, probs = gumbel_sample(logits, 3, 0.0, generator=seeded(0, backend_device))
    expected = torch.tensor([first_argmax(row) for row in logits.cpu()])
    assert expected.tolist() == [10, 3, 4999, 2000]
    assert (tokens.cpu() == expected).all()
    torch.testing.assert_close(probs.double().cpu(), softmax_prob_of(logits, tokens), rtol=1e-5, atol=1e-7)


def test_mask_all_false_reads_nothing(backend_device):
    logits = torch.full((3, 4, 9), math.nan, device=backend_device)  # would raise if any row were read
    mask = torch.zeros(3, 4, dtype=torch.bool, device=backend_device)
    tokens, probs = gumbel_sample(logits, 2, 1.0, mask=mask)
    assert (tokens == -1).all() and (probs == 0).all()


def test_mask_all_true_equals_no_mask(backend_device):
    logits = torch.randn(5, 33, device=backend_device)
    mask = torch.ones(5, dtype=torch.bool, device=backend_device)
    unmasked = gumbel_sample(logits, 3, 1.0, generator=seeded(4, backend_device))
    masked = gumbel_sample(logits, 3, 1.0, mask=mask, generator=seeded(4, backend_device))
    assert torch.equal(unmasked[0], masked[0]) and torch.equal(unmasked[1], masked[1])


def test_partial_mask_fills_skipped_rows_and_skips_their_nan(backend_device):
    torch.manual_seed(5)
    logits = torch.randn(6, 13)
    mask = torch.tensor([True, False, True, True, False, False])
    logits[1] = math.nan  # a skipped row is not read, so its NaN is not an error
    logits = logits.to(backend_device)
    tokens, probs = gumbel_sample(logits, 2, 1.0, mask=mask.to(backend_device), generator=seeded(0, backend_device))
    assert (tokens[:, ~mask] == -1).all() and (probs[:, ~mask] == 0).all()
    assert (tokens[:, mask] >= 0).all()
    torch.testing.assert_close(probs[:, mask].double().cpu(),
                               softmax_prob_of(logits[mask], tokens[:, mask]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("make_view", [
    lambda x: x.transpose(0, 1),                       # leading dims swapped
    lambda x: x[:, 1::2],                               # strided rows
    lambda x: x.transpose(-1, -2).contiguous().transpose(-1, -2),  # vocabulary stride != 1
    lambda x: x[:1].expand(4, -1, -1),                  # stride-0 rows
], ids=["transpose", "slice", "column-major", "expand"])
def test_non_contiguous_views_match_contiguous_copy(backend_device, make_view):
    torch.manual_seed(6)
    view = make_view(torch.randn(4, 6, 21, device=backend_device))
    assert not view.is_contiguous()
    from_view = gumbel_sample(view, 3, 1.3, generator=seeded(8, backend_device))
    from_copy = gumbel_sample(view.contiguous(), 3, 1.3, generator=seeded(8, backend_device))
    assert torch.equal(from_view[0], from_copy[0]) and torch.equal(from_view[1], from_copy[1])


# ----------------------------------------------------------------------------- distribution

@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_token_frequencies_follow_tempered_softmax(backend_device, temperature):
    logits = torch.tensor([1.0, -0.5, 0.3, -math.inf, 2.0, -1.5, 0.0], device=backend_device)
    rows, samples = 64, 64  # 4096 draws; stride-0 rows reuse one distribution without a copy
    tokens, _ = gumbel_sample(logits.expand(rows, -1), samples, temperature, generator=seeded(11, backend_device))
    tempered = torch.softmax(logits.double().cpu() / temperature, dim=-1).numpy()
    assert chi_square_p_value(tokens, tempered) > P_VALUE_FLOOR
    # The same counts must reject a different temperature (the test has power).
    wrong = torch.softmax(logits.double().cpu() / (temperature * 2), dim=-1).numpy()
    assert chi_square_p_value(tokens, wrong) < P_VALUE_FLOOR


def test_samples_of_one_row_are_independent(backend_device):
    logits = torch.tensor([0.2, -0.4, 0.9], device=backend_device)
    tokens, _ = gumbel_sample(logits.expand(48, -1), 32, 1.0, generator=seeded(12, backend_device))
    tokens = tokens.cpu()
    pairs = tokens[0::2] * 3 + tokens[1::2]  # (sample 2i, sample 2i+1) of the same row: 768 pairs
    probs = torch.softmax(logits.double().cpu(), dim=-1)
    joint = (probs[:, None] * probs[None, :]).reshape(-1).numpy()
    assert chi_square_p_value(pairs, joint) > P_VALUE_FLOOR


# ----------------------------------------------------------------------------- determinism

def test_same_generator_state_same_draw_and_generator_advances(backend_device):
    logits = torch.randn(4, 50, device=backend_device)
    first = gumbel_sample(logits, 4, 1.0, generator=seeded(21, backend_device))
    again = gumbel_sample(logits, 4, 1.0, generator=seeded(21, backend_device))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    other = gumbel_sample(logits, 4, 1.0, generator=seeded(22, backend_device))
    assert not torch.equal(first[0], other[0])
    generator = seeded(21, backend_device)
    gumbel_sample(logits, 4, 1.0, generator=generator)
    assert not torch.equal(first[0], gumbel_sample(logits, 4, 1.0, generator=generator)[0])


def test_default_generator_follows_manual_seed(backend_device):
    logits = torch.randn(4, 50, device=backend_device)
    torch.manual_seed(3)
    first = gumbel_sample(logits, 4, 1.0)[0]
    torch.manual_seed(3)
    assert torch.equal(first, gumbel_sample(logits, 4, 1.0)[0])


def test_registered_custom_op_passes_opcheck():
    logits = torch.randn(3, 10)
    seed = torch.tensor([5], dtype=torch.int64)
    torch.library.opcheck(torch.ops.infogain.gumbel_sample.default, (logits, 2, 1.0, None, seed))
    torch.library.opcheck(torch.ops.infogain.gumbel_sample.default,
                          (logits, 2, 0.0, torch.tensor([True, False, True]), seed))


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(logits=[[0.0, 1.0]]), TypeError, "logits"),
    (dict(logits=torch.zeros(2, 3, dtype=torch.int64)), TypeError, "logits"),
    (dict(logits=torch.zeros(2, 3, dtype=torch.float64)), TypeError, "logits"),
    (dict(logits=torch.tensor(1.0)), ValueError, "logits"),
    (dict(logits=torch.zeros(2, 0)), ValueError, "logits"),
    (dict(num_samples=0), ValueError, "num_samples"),
    (dict(num_samples=2.0), TypeError, "num_samples"),
    (dict(num_samples=True), TypeError, "num_samples"),
    (dict(temperature=-0.1), ValueError, "temperature"),
    (dict(temperature=math.nan), ValueError, "temperature"),
    (dict(temperature=math.inf), ValueError, "temperature"),
    (dict(temperature="1"), TypeError, "temperature"),
    (dict(mask=torch.ones(3, dtype=torch.bool)), ValueError, "mask"),
    (dict(mask=torch.ones(2, dtype=torch.int64)), TypeError, "mask"),
    (dict(mask=torch.ones(2, dtype=torch.bool, device="meta")), ValueError, "mask"),
    (dict(generator=7), TypeError, "generator"),
    (dict(logits=torch.zeros(2, 3, device="meta"), generator=torch.Generator()), ValueError, "generator"),
], ids=lambda value: None if not isinstance(value, str) else value)
def test_bad_arguments_raise_naming_the_argument(kwargs, error, message):
    arguments = dict(logits=torch.zeros(2, 3), num_samples=2, temperature=1.0, mask=None, generator=None)
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        gumbel_sample(arguments.pop("logits"), arguments.pop("num_samples"), arguments.pop("temperature"),
                      **arguments)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, in the interpreter
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_nan_and_all_minus_inf_rows_raise(backend_device, temperature):
    logits = torch.randn(3, 9, device=backend_device)
    logits[1, 4] = math.nan
    with pytest.raises(ValueError, match=r"logits row \(1,\) contains NaN"):
        gumbel_sample(logits, 2, temperature)
    logits = torch.randn(2, 3, 9, device=backend_device)
    logits[1, 2] = -math.inf
    with pytest.raises(ValueError, match=r"logits row \(1, 2\) is entirely -inf"):
        gumbel_sample(logits, 2, temperature)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, in the interpreter
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_check_values_false_flags_bad_rows_without_raising(backend_device, temperature):
    logits = torch.randn(2, 3, 9, device=backend_device)
    logits[1, 2] = -math.inf
    logits[0, 0, 3] = math.nan
    tokens, probs = gumbel_sample(logits, 2, temperature, generator=seeded(5, backend_device), check_values=False)
    bad = torch.zeros(2, 3, dtype=torch.bool)
    bad[1, 2] = bad[0, 0] = True
    assert torch.isnan(probs[:, bad]).all() and (tokens[:, bad] == -1).all()
    assert torch.isfinite(probs[:, ~bad]).all() and ((tokens[:, ~bad] >= 0) & (tokens[:, ~bad] < 9)).all()
    if temperature == 0:  # the good rows get the arg-max, as a checked call on them gives
        checked_tokens, _ = gumbel_sample(logits, 2, temperature, mask=~bad)
        assert torch.equal(checked_tokens[:, ~bad], tokens[:, ~bad])
    with pytest.raises(ValueError, match="contains NaN"):
        gumbel_sample(logits, 2, temperature)  # the default still checks


def test_check_values_must_be_a_bool():
    with pytest.raises(TypeError, match="check_values"):
        gumbel_sample(torch.zeros(2, 3), 1, 1.0, check_values=1)


# ----------------------------------------------------------------------------- GPU lane

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("vocab", [126464, 152064])
def test_gpu_real_vocab_widths(dtype, vocab):
    torch.manual_seed(0)
    logits = (4 * torch.randn(64, vocab, device="cuda")).to(dtype)
    logits[:, ::7] = -math.inf
    tokens, probs = gumbel_sample(logits, 8, 1.0, generator=seeded(0, "cuda"))
    assert (tokens % 7 != 0).all()
    torch.testing.assert_close(probs.double().cpu(), softmax_prob_of(logits.float(), tokens), rtol=1e-4, atol=1e-8)
    greedy, _ = gumbel_sample(logits, 2, 0.0)
    expected = torch.tensor([first_argmax(row) for row in logits.float().cpu()])
    assert (greedy.cpu() == expected).all()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_frequencies_at_llada_width(dtype):
    vocab = 126464
    support = torch.tensor([5, 4096, 60000, 126463])  # spread over different vocabulary chunks
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
