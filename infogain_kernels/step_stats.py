"""``step_stats``: everything a decoding step needs from the block logits, in one op.

For every position of ``logits`` [..., V]: the entropy, top-1 probability and id, top-2 probability of
``softmax(x)``, and ``S`` token draws from ``softmax(x / T)`` with each draw's untempered probability.
``token_stats`` (S = 0) and ``gumbel_sample`` are thin public functions over it, and the samplers call
it once per step.

Random stream contract (every backend follows it, so backends agree draw for draw):

* The public function draws ``uniforms = torch.rand(n_rows, S, generator=generator,
  device=logits.device, dtype=torch.float32)``, exactly this call, with ``n_rows =
  prod(logits.shape[:-1])`` (every row, masked out or not, in row-major order of the leading
  dimensions), and only when ``S > 0`` and ``T > 0``. At ``T = 0`` it draws nothing at all.
* The op is then a deterministic function of ``(logits, mask, uniforms, T)``: with
  ``w_j = exp((x_j - m) / T)`` (``m`` the row maximum, float32; ``-inf`` logits give ``w_j = 0``)
  and ``Z = sum_j w_j``, draw ``s`` is the smallest index ``i`` with ``sum_{j<=i} w_j > u_s * Z``
  (inverse-CDF sampling, an exact sample of ``softmax(x / T)``), or, if rounding leaves no such
  ``i``, the last index with ``w_j > 0``. Implementations may add the weights in any order, so two
  backends can disagree only on a draw whose ``u_s * Z`` lies within rounding of a CDF boundary.

Why inverse-CDF rather than Gumbel-max: Gumbel-max needs one random number and two logarithms per
(sample, logit), so its random work grows with ``V * S`` and makes the kernel compute-bound.
Inverse-CDF needs ``S`` uniforms per row. On CUDA the statistics pass also sums the tempered
weights per 4096-wide chunk (one more exponential per logit, no extra read), a tiny per-row step
places the ``S`` targets among the chunk prefix sums, and each draw re-reads only its own chunk:
the logits are read once, plus at most ``S`` chunks per row. The kernels are in
:mod:`._entropy_triton` (design notes there); the CPU path runs the native kernel
``torch.ops.infogain._step_stats_cpu`` when the C++ extension provides it, else the torch reference
below, which is the specification.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch

from ._backend import call_op, op_path, value_checks_enabled
from ._validation import (bad_row_problem, check_bool, check_generator, check_int, check_logits, check_mask,
                          check_same_device, check_temperature)

try:
    from . import _C  # noqa: F401  (loading the extension registers its ops, if any)
except ImportError:  # pragma: no cover - only when the extension was not built
    pass

# Fill values for positions that the mask skips.
SKIPPED_ENTROPY = 0.0
SKIPPED_PROB = 0.0
SKIPPED_ID = -1

# The reference converts at most this many logits to float32 at a time (4 MB), so it never holds
# a float32 copy of a whole [rows, V] tensor; a chunk is always at least one row.
_REFERENCE_CHUNK_ELEMENTS = 1 << 20


class StepStats(NamedTuple):
    """Outputs of :func:`step_stats` (leading shape ``[...]`` = ``logits.shape[:-1]``)."""

    entropy: torch.Tensor      # float32 [...]
    top1_prob: torch.Tensor    # float32 [...]
    top1_id: torch.Tensor      # int64 [...]
    top2_prob: torch.Tensor    # float32 [...]
    tokens: torch.Tensor       # int64 [..., S]
    token_probs: torch.Tensor  # float32 [..., S]


# ---- the torch reference (the specification) ----------------------------------------------------

def _chunk_stats(rows: torch.Tensor, with_top: bool, drawn: Optional[torch.Tensor] = None):
    """Row statistics of ``rows`` [n, V] (any float dtype) in float32 (see :func:`step_stats_reference`).

    Returns ``(entropy, top1_prob, top1_id, top2_prob, drawn_probs)``; the top fields are None unless
    ``with_top``; ``drawn_probs`` [n, S] are the probabilities of the tokens ``drawn`` [n, S] (None
    without ``drawn``)."""
    # softmax is max-shifted (exp(x - m) / sum exp(x - m)) and converts to float32 on the fly; entr
    # is -p log p with entr(0) = 0, so -inf logits contribute exactly 0 and no 0 * -inf appears.
    # NaN in a row, or a row of only -inf (0 / 0), makes its probabilities and entropy NaN.
    probs = torch.softmax(rows, dim=-1, dtype=torch.float32)
    entropy = torch.special.entr(probs).sum(-1)
    drawn_probs = probs.gather(-1, drawn) if drawn is not None else None
    if not with_top:
        return entropy, None, None, None, drawn_probs
    # Ranked on the logits (exact in any dtype; max returns the first of equal maxima), as the
    # kernel does: probabilities of logits closer than an ulp could round equal. (max(dim) rather
    # than argmax: on CPU it is several times faster for bf16.)
    top1_id = rows.max(dim=-1, keepdim=True).indices
    top1_prob = probs.gather(-1, top1_id).squeeze(-1)
    # The second-largest probability: the max once one occurrence of the maximum is hidden.
    top2_prob = probs.scatter_(-1, top1_id, 0.0).amax(-1)
    return entropy, top1_prob, top1_id.squeeze(-1), top2_prob, drawn_probs


def _chunk_draws(rows: torch.Tensor, uniforms: torch.Tensor, temperature: float) -> torch.Tensor:
    """Inverse-CDF draws (int64 [n, S]) from ``softmax(rows / temperature)`` at ``uniforms`` [n, S]."""
    x = rows.float()
    weights = torch.exp((x - x.amax(-1, keepdim=True)) / temperature)  # -inf logits: weight 0
    cdf = torch.cumsum(weights, dim=-1)
    # right=True: the first index whose cumulative weight is strictly greater than u * Z.
    tokens = torch.searchsorted(cdf, uniforms * cdf[:, -1:], right=True)
    # u * Z can round up to Z itself: take the last token that can be drawn.
    vocab = rows.shape[-1]
    last_drawable = vocab - 1 - torch.argmax((weights > 0).flip(-1).to(torch.uint8), dim=-1, keepdim=True)
    return torch.where(tokens >= vocab, last_drawable, tokens)


def _row_chunks(logits: torch.Tensor, keep: Optional[torch.Tensor]):
    """Yield ``(row_indices or None, rows [n, V])`` over the rows to read, about 2**20 logits at a time.

    ``row_indices`` is None when the chunk is every row in order (the common small case: no gather)."""
    n_cols = logits.shape[-1]
    lead_shape = logits.shape[:-1]
    n_rows = lead_shape.numel()
    rows_per_chunk = max(1, _REFERENCE_CHUNK_ELEMENTS // n_cols)
    if keep is None and n_rows <= rows_per_chunk:
        yield None, logits.reshape(n_rows, n_cols)
        return
    selected = torch.arange(n_rows, device=logits.device) if keep is None else keep.reshape(-1).nonzero().squeeze(-1)
    if selected.numel() == 0:
        return  # (splitting no rows would still yield one empty chunk)
    for chunk in selected.split(rows_per_chunk):
        # One index tensor per leading dimension gathers just these rows, whatever the strides
        # (reshape(-1, V) would copy a non-collapsible tensor whole).
        yield chunk, (logits[torch.unravel_index(chunk, lead_shape)] if lead_shape else logits.unsqueeze(0))


def step_stats_reference(logits: torch.Tensor, keep: Optional[torch.Tensor], uniforms: Optional[torch.Tensor],
                         temperature: float, *, with_top: bool = True):
    """Torch reference of the op over ``logits`` [..., V] (fp32/bf16/fp16, any strides).

    For each position p with ``keep[p]`` True (every position when ``keep`` is None), in float32:

    * ``entropy[p] = -sum q log q`` with ``q = softmax(x)`` (max-shifted), -inf logits contributing 0,
    * ``top1_prob[p]`` / ``top1_id[p]``: the largest probability and its lowest index,
    * ``top2_prob[p]``: the second-largest probability (0 when V == 1; equals top1_prob on a tie),
    * ``tokens[p, s]``: the inverse-CDF draw of the module docstring at ``uniforms[p, s]`` (T > 0), or
      ``top1_id[p]`` (T = 0), and ``token_probs[p, s] = q[tokens[p, s]]``.

    ``S = uniforms.shape[-1]`` (0 when ``uniforms`` is None); at T = 0 the uniforms' values are not
    read. A non-finite ``entropy`` flags a row that contains NaN or is all -inf (its other fields are
    then undefined; see :func:`raise_on_bad_rows`). Positions with ``keep`` False are never read and
    get entropy 0, probabilities 0, ids -1. Returns flat tensors over ``n_rows =
    prod(logits.shape[:-1])``: ``entropy, top1_prob, top1_id, top2_prob`` [n_rows] (the top fields
    None unless ``with_top``), ``tokens, token_probs`` [n_rows, S].
    """
    n_rows = logits.shape[:-1].numel()
    n_samples = uniforms.shape[-1] if uniforms is not None else 0
    sampling = n_samples > 0 and temperature > 0
    with_top = with_top or n_samples > 0
    device = logits.device
    entropy = torch.full((n_rows,), SKIPPED_ENTROPY, dtype=torch.float32, device=device)
    top1_prob = top1_id = top2_prob = None
    if with_top:
        top1_prob = torch.full((n_rows,), SKIPPED_PROB, dtype=torch.float32, device=device)
        top1_id = torch.full((n_rows,), SKIPPED_ID, dtype=torch.int64, device=device)
        top2_prob = torch.full((n_rows,), SKIPPED_PROB, dtype=torch.float32, device=device)
    tokens = torch.full((n_rows, n_samples), SKIPPED_ID, dtype=torch.int64, device=device)
    token_probs = torch.full((n_rows, n_samples), SKIPPED_PROB, dtype=torch.float32, device=device)
    for chunk, rows in _row_chunks(logits, keep):
        where = slice(None) if chunk is None else chunk
        drawn = _chunk_draws(rows, uniforms[where], temperature) if sampling else None
        stats = _chunk_stats(rows, with_top, drawn)
        entropy[where] = stats[0]
        if with_top:
            top1_prob[where], top1_id[where], top2_prob[where] = stats[1:4]
        if sampling:
            tokens[where] = drawn
            token_probs[where] = stats[4]
        elif n_samples:
            tokens[where] = stats[2][:, None]
            token_probs[where] = stats[1][:, None]
    return entropy, top1_prob, top1_id, top2_prob, tokens, token_probs


def raise_on_bad_rows(name: str, logits: torch.Tensor, entropy: torch.Tensor, prefix: Tuple[int, ...] = ()) -> None:
    """Raise ValueError naming the first row of ``logits`` whose ``entropy`` (flat, from the row
    pass) flags a row with NaN or +inf or every entry -inf; ``prefix`` is prepended to the reported
    position (for a sub-tensor of the caller's argument). This check is the op's one host
    synchronisation; it does not run where ``_backend.value_checks_enabled`` says so."""
    if not value_checks_enabled(entropy):
        return  # flagged rows keep their non-finite entropy
    bad = ~torch.isfinite(entropy)
    if not bool(bad.any()):
        return
    first = int(bad.nonzero()[0, 0])
    lead_shape = logits.shape[:-1]
    position = tuple(int(i) for i in torch.unravel_index(torch.tensor(first), lead_shape)) if lead_shape else ()
    # Error path only: look at the row itself to say what is wrong with it.
    raise ValueError(f"{name} row at position {tuple(prefix) + position} {bad_row_problem(logits[position])}")


# ---- the custom op ------------------------------------------------------------------------------

def _step_stats_impl(logits: torch.Tensor, mask: Optional[torch.Tensor], uniforms: Optional[torch.Tensor],
                     temperature: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                  torch.Tensor, torch.Tensor]:
    lead_shape = logits.shape[:-1]
    n_samples = uniforms.shape[-1] if uniforms is not None else 0
    if uniforms is not None and (uniforms.shape != (lead_shape.numel(), n_samples) or uniforms.dtype != torch.float32
                                 or uniforms.device != logits.device):
        raise ValueError(f"uniforms must be float32 of shape ({lead_shape.numel()}, S) on {logits.device}, got "
                         f"{str(uniforms.dtype).replace('torch.', '')} {tuple(uniforms.shape)} on {uniforms.device}")
    path = op_path(logits)
    if path == "native":  # csrc/step_stats_cpu.cpp
        return torch.ops.infogain._step_stats_cpu(logits, mask, uniforms, temperature)
    if path == "triton":
        from ._entropy_triton import launch_step_stats

        flat = launch_step_stats(logits, mask, uniforms, temperature)
    else:
        flat = step_stats_reference(logits, mask, uniforms, temperature)
    entropy, top1_prob, top1_id, top2_prob, tokens, token_probs = flat
    return (entropy.view(lead_shape), top1_prob.view(lead_shape), top1_id.view(lead_shape),
            top2_prob.view(lead_shape), tokens.view(*lead_shape, n_samples), token_probs.view(*lead_shape, n_samples))


_step_stats_op = torch.library.custom_op("infogain::step_stats", _step_stats_impl, mutates_args=())


@_step_stats_op.register_fake
def _step_stats_fake(logits, mask, uniforms, temperature):
    lead_shape = logits.shape[:-1]
    n_samples = uniforms.shape[-1] if uniforms is not None else 0
    entropy = logits.new_empty(lead_shape, dtype=torch.float32)
    return (entropy, torch.empty_like(entropy), logits.new_empty(lead_shape, dtype=torch.int64),
            torch.empty_like(entropy), logits.new_empty((*lead_shape, n_samples), dtype=torch.int64),
            logits.new_empty((*lead_shape, n_samples), dtype=torch.float32))


def step_stats(logits: torch.Tensor, mask: Optional[torch.Tensor] = None, *, num_samples: int = 0,
               temperature: float = 0.0, generator: Optional[torch.Generator] = None,
               check_values: bool = True) -> StepStats:
    """Entropy, top-1/top-2 and ``num_samples`` token draws for every position, in at most two reads.

    Args:
        logits: [..., V] float32, bfloat16 or float16, any leading shape and strides (views are read
            in place). ``-inf`` entries are legal (suppressed tokens; never drawn).
        mask: optional bool tensor of shape ``logits.shape[:-1]``. Positions where it is False are not
            read at all and get the fill values below.
        num_samples: S >= 0 draws per position (0: statistics only).
        temperature: finite T >= 0. Draws follow ``softmax(logits / T)``; at T = 0 every draw is
            ``top1_id`` with probability ``top1_prob`` and no random numbers are drawn.
        generator: ``torch.Generator`` on the logits' device type, or None for the default one. When
            S > 0 and T > 0 the call draws exactly ``torch.rand(n_rows, S, generator=generator,
            device=logits.device, dtype=torch.float32)`` (``n_rows = prod(logits.shape[:-1])``, every
            row, masked or not), the random stream contract of the module docstring; otherwise the
            generator is not touched.
        check_values: when True (default), raise for a read row that contains NaN or +inf or has every
            entry -inf. That check costs one host synchronisation; pass False to fold it into your own
            read-back (a bad row is flagged by a non-finite ``entropy``; its other fields are then
            undefined).

    Returns:
        :class:`StepStats` ``(entropy, top1_prob, top1_id, top2_prob, tokens, token_probs)``: float32
        entropy (nats), float32 largest probability, int64 index of the largest probability (lowest
        among equal maxima), float32 second-largest probability (0 when V == 1, equal to
        ``top1_prob`` on a tied maximum), all of shape ``logits.shape[:-1]``; int64 ``tokens`` and
        float32 ``token_probs`` of shape ``[..., S]`` (the sample axis LAST), ``token_probs[..., s] =
        softmax(logits)[tokens[..., s]]`` (untempered). Skipped positions: entropy 0, probabilities
        0, ids and tokens -1. All arithmetic is float32 whatever the input dtype.

    Raises:
        TypeError / ValueError naming the argument for a bad dtype, rank, device, mask shape, sample
        count, temperature or generator; ValueError when a read row contains NaN or +inf or is all
        -inf (only with ``check_values=True``; skipped under ``torch.compile`` and other tracers and
        while a CUDA graph is being captured, and ``torch.ops.infogain.step_stats`` never does it).

    ``torch.ops.infogain.step_stats(logits, mask, uniforms, temperature)`` is the custom op: S is
    ``uniforms.shape[-1]`` (None: S = 0); at T = 0 the uniforms' values are never read.
    """
    check_logits("logits", logits)
    check_mask("mask", mask, logits.shape[:-1])
    check_same_device(logits=logits, mask=mask)
    num_samples = check_int("num_samples", num_samples, 0)
    temperature = check_temperature("temperature", temperature)
    check_generator("generator", generator, logits.device)
    check_values = check_bool("check_values", check_values)
    out = step_stats_unchecked(logits, mask, num_samples, temperature, generator)
    if check_values:
        raise_on_bad_rows("logits", logits, out[0].reshape(-1))
    return out


def step_stats_unchecked(logits: torch.Tensor, mask: Optional[torch.Tensor], num_samples: int, temperature: float,
                         generator: Optional[torch.Generator]) -> StepStats:
    """:func:`step_stats` with ``check_values=False`` and no argument checks, for a caller that
    calls it at every decoding step with arguments of kinds it checked once (a sampler: there the
    checks cost about as much as the op's work on a small block). Anything :func:`step_stats` would
    reject is undefined here."""
    uniforms = None
    if num_samples > 0:
        n_rows = math.prod(logits.shape[:-1])
        if temperature > 0:
            uniforms = torch.rand(n_rows, num_samples, generator=generator, device=logits.device,
                                  dtype=torch.float32)
        else:
            # Only its shape carries S: at T = 0 nothing is drawn and the values are never read.
            uniforms = torch.empty(n_rows, num_samples, device=logits.device, dtype=torch.float32)
    return StepStats(*call_op(torch.ops.infogain.step_stats, _step_stats_impl, logits, mask, uniforms, temperature))
