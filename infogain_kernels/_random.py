"""Randomness shared by the Gumbel ops (:mod:`.gumbel_topk`, and EIS's :mod:`.topk_logprobs` /
:mod:`.sample_logprob`). Token draws of :mod:`.step_stats` do not use it: they take ``torch.rand``
uniforms directly (inverse CDF; see the random stream contract there).

Design. The public function draws one 63-bit seed from the caller's
``torch.Generator`` (or the device's default generator) as a one-element int64
tensor on the data's device, and passes that tensor into the custom op. The op
itself is then a pure function of its inputs, which is what ``torch.library``
(fake tensors, ``opcheck``), ``torch.compile`` and CUDA-graph capture need: no
host sync is required to read the seed (the Triton kernel loads it from device
memory), and the generator advances exactly once per call.

Inside the op the noise is derived from the seed:

* Triton path: counter-based Philox (``tl.random.philox``) keyed by the seed
  (:func:`._gumbel_triton.gumbel_noise_philox`),
  with the counters ``(column, row, sample)``. Every noise value is a function
  of ``(seed, sample, row, column)`` only, independent of block sizes and of the
  launch grid.
* Torch reference path: a ``torch.Generator`` on the data's device is seeded
  with the seed and the noise is drawn chunk by chunk in a fixed order.

The two paths therefore give different (each deterministic, each correctly
distributed) draws for the same seed.

Gumbel noise is ``g = -log(-log(u))`` with ``u`` uniform, clamped to
``[U_MIN, U_MAX] = [2**-24, 1 - 2**-24]``: ``u = 0`` would give ``g = -inf`` (a
legal token that could then never be drawn) and ``u = 1`` would give
``g = +inf``. The clamp truncates the Gumbel distribution to about
``[-2.81, 16.6]``, changing each draw's law by at most ~6e-8 in probability.
"""
from __future__ import annotations

import threading

import torch

U_MIN = 2.0 ** -24
U_MAX = 1.0 - 2.0 ** -24

# Seeds are drawn below 2**62 so that they are non-negative int64 values.
_SEED_HIGH = 2 ** 62


def draw_seed(generator, device: torch.device) -> torch.Tensor:
    """Draw a seed from ``generator`` (None = default generator of ``device``).

    Returns an int64 tensor of shape [1] on ``device``; advances the generator.
    """
    return torch.randint(0, _SEED_HIGH, (1,), generator=generator, device=device, dtype=torch.int64)


_UNUSED_SEEDS = {}


def unused_seed(device: torch.device) -> torch.Tensor:
    """The seed argument of an op call that draws no noise (int64 [1] on ``device``, never read)."""
    seed = _UNUSED_SEEDS.get(device)
    if seed is None:
        seed = _UNUSED_SEEDS[device] = torch.zeros(1, dtype=torch.int64, device=device)
    return seed


_local = threading.local()


def seeded_generator(seed: torch.Tensor) -> torch.Generator:
    """A ``torch.Generator`` on ``seed``'s device, seeded with ``seed`` (int64 tensor [1]).

    One generator per thread and device is reseeded on every call (creating one costs more than
    the draws of a small op); the previous caller's draws are finished by then."""
    generators = getattr(_local, "generators", None)
    if generators is None:
        generators = _local.generators = {}
    generator = generators.get(seed.device)
    if generator is None:
        generator = generators[seed.device] = torch.Generator(device=seed.device)
    generator.manual_seed(int(seed.item()))
    return generator


def negated_gumbel_noise(shape, generator: torch.Generator) -> torch.Tensor:
    """``-g = log(-log(u))`` for standard Gumbel noise ``g`` (float32, ``shape``, on ``generator``'s device).

    ``u`` is clamped as documented. Returned negated because that saves a pass
    over the noise; callers subtract it. (``Tensor.exponential_`` would save
    another pass but is several times slower than ``torch.rand`` on CPU.)
    """
    u = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float32)
    return u.clamp_(U_MIN, U_MAX).log_().neg_().log_()


def gumbel_noise(shape, generator: torch.Generator) -> torch.Tensor:
    """Standard Gumbel noise ``g`` (float32, ``shape``, on ``generator``'s device), clamped as documented."""
    return negated_gumbel_noise(shape, generator).neg_()
