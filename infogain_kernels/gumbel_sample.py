"""Gumbel-max token sampling in one pass over the logits.

:func:`gumbel_sample` draws ``num_samples`` independent tokens per row from
``softmax(logits / temperature)`` and returns, for each draw, the *untempered*
probability ``softmax(logits)[token]`` (the confidence the samplers rank
positions by). The kernel walks the vocabulary once per row, keeping for every
sample the running arg-max of ``logits + temperature * g`` (Gumbel noise ``g``;
same arg-max as ``logits / temperature + g``, but without overflow for tiny
temperatures) and the online max / sum-exp of the untempered logits.

Registered as ``torch.ops.infogain.gumbel_sample``. Randomness: see
:mod:`infogain_kernels._random`.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from . import _random
from ._backend import call_op, capturing_cuda_graph, device_guard, use_triton
from ._random import triton
from ._validation import (check_bool, check_generator, check_logits, check_mask, check_positive_int,
                          check_same_device)

# Work-space budget (elements) of the reference path: noise/key tiles are
# [samples, rows, columns] and never grow past this, whatever V and the row count.
_REFERENCE_TILE_ELEMENTS = 1 << 20
# Largest [BLOCK_S, BLOCK_V] tile one Triton program holds (registers on GPU,
# numpy arrays under the interpreter).
_TRITON_TILE_ELEMENTS = 8192
_TRITON_MAX_BLOCK_S = 16


def gumbel_sample(logits: torch.Tensor, num_samples: int, temperature: float, *,
                  mask: Optional[torch.Tensor] = None,
                  generator: Optional[torch.Generator] = None,
                  check_values: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draw ``num_samples`` tokens per row from ``softmax(logits / temperature)`` (Gumbel-max).

    Args:
        logits: ``[..., V]`` float32, bfloat16 or float16; any strides (views such
            as slices, transposes or ``expand`` are read in place, not copied).
            ``-inf`` entries are legal and are never drawn.
        num_samples: S >= 1 independent draws per row.
        temperature: finite, >= 0. ``0`` means arg-max: every sample is the
            arg-max token of the row, the lowest index among equal maxima.
        mask: optional bool tensor of shape ``logits.shape[:-1]``. Rows where it
            is False are not read; their outputs are ``token = -1`` and
            ``prob = 0.0``.
        generator: ``torch.Generator`` on the logits' device type, or None for
            the default generator. Exactly one seed is drawn from it per call, so
            the same generator state gives the same draw on the same device and
            backend; the CUDA (Triton) and CPU (reference) paths give different,
            equally distributed draws.
        check_values: when True (default), raise for a read row that contains
            NaN or is entirely ``-inf``. That check costs one host
            synchronisation; pass False to fold it into your own read-back (such
            a row is then flagged by ``token = -1`` and ``prob = NaN``, e.g. test
            ``torch.isnan(probs[0]).any()`` on the device).

    Returns:
        ``(tokens, probs)``, both of shape ``[S, *logits.shape[:-1]]`` on the
        logits' device: ``tokens`` int64 in ``[0, V)``, ``probs`` float32 with
        ``probs[s] = softmax(logits.float())[tokens[s]]`` (untempered).

    Raises:
        TypeError / ValueError naming the argument for a wrong type, dtype,
        shape or device, ``num_samples < 1``, a negative / NaN / infinite
        temperature, and (with ``check_values=True``) for a read row that
        contains NaN or is entirely ``-inf``. While a CUDA graph is being
        captured that data check cannot run, and
        ``torch.ops.infogain.gumbel_sample`` never does it; such a row then
        yields ``token = -1`` and ``prob = NaN``.

    Accumulation is float32 for every input dtype; Gumbel noise is float32.
    """
    check_logits("logits", logits)
    num_samples = check_positive_int("num_samples", num_samples)
    temperature = _random.check_temperature("temperature", temperature)
    check_mask("mask", mask, logits.shape[:-1])
    check_same_device(logits=logits, mask=mask)
    check_generator("generator", generator, logits.device)
    check_values = check_bool("check_values", check_values)
    seed = _random.draw_seed(generator, logits.device)
    tokens, probs = call_op(torch.ops.infogain.gumbel_sample, _gumbel_sample_impl,
                            logits, num_samples, temperature, mask, seed)
    if check_values:
        _raise_on_invalid_rows(logits, probs)
    return tokens, probs


def _gumbel_sample_impl(logits: torch.Tensor, num_samples: int, temperature: float,
                      mask: Optional[torch.Tensor], seed: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Custom op behind :func:`gumbel_sample`; ``seed`` is an int64 tensor [1] on the logits' device."""
    if use_triton(logits):
        with device_guard(logits):
            tokens, probs = _gumbel_sample_triton(logits, num_samples, temperature, mask, seed)
    else:
        tokens, probs = _gumbel_sample_reference(logits, num_samples, temperature, mask, seed)
    return tokens, probs


_gumbel_sample_op = torch.library.custom_op("infogain::gumbel_sample", _gumbel_sample_impl, mutates_args=())


@_gumbel_sample_op.register_fake
def _(logits, num_samples, temperature, mask, seed):
    out_shape = (num_samples, *logits.shape[:-1])
    return (logits.new_empty(out_shape, dtype=torch.int64), logits.new_empty(out_shape, dtype=torch.float32))


def _raise_on_invalid_rows(logits: torch.Tensor, probs: torch.Tensor) -> None:
    """Both paths mark a read row with NaN or no finite logit by ``prob = NaN``; turn that into an error.

    The op's one host synchronisation (skipped while a CUDA graph is being captured)."""
    if probs.numel() == 0 or capturing_cuda_graph(logits.device):
        return
    bad = torch.isnan(probs[0])
    if not bool(bad.any()):
        return
    # Error path only: look at the first bad row to say what is wrong with it.
    where = tuple(int(i) for i in bad.nonzero()[0])
    row = logits[where]
    problem = "contains NaN" if bool(torch.isnan(row).any()) else "is entirely -inf (no token can be drawn)"
    raise ValueError(f"logits row {where} {problem}")


def _gumbel_sample_reference(logits, num_samples, temperature, mask, seed):
    """The specification, in torch: row blocks x vocabulary chunks, never a float32 copy of all logits."""
    lead_shape = logits.shape[:-1]
    vocab = logits.shape[-1]
    num_rows = math.prod(lead_shape)
    device = logits.device
    tokens = torch.full((num_samples, num_rows), -1, dtype=torch.int64, device=device)
    probs = torch.zeros((num_samples, num_rows), dtype=torch.float32, device=device)
    if mask is None:
        active_rows = torch.arange(num_rows, device=device)
    else:
        active_rows = mask.reshape(-1).nonzero().squeeze(1)
    generator = _random.seeded_generator(seed)
    columns_per_chunk = min(vocab, max(1, _REFERENCE_TILE_ELEMENTS // num_samples))
    rows_per_block = max(1, _REFERENCE_TILE_ELEMENTS // (num_samples * columns_per_chunk))

    for rows in active_rows.split(rows_per_block):
        # Advanced indexing on the original view reads only these rows, whatever its strides.
        row_index = torch.unravel_index(rows, lead_shape) if lead_shape else ()
        n = rows.numel()
        running_max = torch.full((n,), -math.inf, device=device)
        running_sum = torch.zeros((n,), device=device)
        best_key = torch.full((num_samples, n), -math.inf, device=device)
        best_token = torch.full((num_samples, n), -1, dtype=torch.int64, device=device)
        best_logit = torch.full((num_samples, n), -math.inf, device=device)
        for start in range(0, vocab, columns_per_chunk):
            stop = min(start + columns_per_chunk, vocab)
            x = logits[(*row_index, slice(start, stop))].float().reshape(n, stop - start)

            # max() and maximum() propagate NaN, so a row with NaN ends with a NaN running_max.
            new_max = torch.maximum(running_max, x.max(dim=1).values)
            # While a row has seen only -inf, shift by 0 instead of -inf to avoid inf - inf = NaN.
            shift = torch.where(torch.isinf(new_max) & (new_max < 0), torch.zeros_like(new_max), new_max)
            running_sum = running_sum * torch.exp(running_max - shift) + torch.exp(x - shift[:, None]).sum(dim=1)
            running_max = new_max

            if temperature == 0:
                key = x.expand(num_samples, n, stop - start)
            else:
                # -inf + finite noise stays -inf, so suppressed tokens are never drawn.
                key = torch.add(x, _random.negated_gumbel_noise((num_samples, n, stop - start), generator),
                                alpha=-temperature)
            chunk_token = key.argmax(dim=2)  # first (lowest) index among equal maxima
            chunk_key = key.gather(2, chunk_token[..., None]).squeeze(2)
            # Strictly greater: earlier chunks hold lower indices and win ties.
            better = chunk_key > best_key
            best_key = torch.where(better, chunk_key, best_key)
            best_token = torch.where(better, chunk_token + start, best_token)
            best_logit = torch.where(better, x.gather(1, chunk_token.T).T, best_logit)

        prob = torch.exp(best_logit - running_max) / running_sum
        invalid = torch.isnan(running_max) | torch.isinf(running_max)
        tokens[:, rows] = torch.where(invalid, -1, best_token)
        probs[:, rows] = torch.where(invalid, math.nan, prob)

    out_shape = (num_samples, *lead_shape)
    return tokens.reshape(out_shape), probs.reshape(out_shape)


def _row_offsets(t: torch.Tensor) -> torch.Tensor:
    """Element offset of each row's first element for any strided ``t`` [..., V] (int64 [rows])."""
    offsets = torch.zeros((), dtype=torch.int64, device=t.device)
    for size, stride in zip(t.shape[:-1], t.stride()[:-1]):
        offsets = offsets[..., None] + torch.arange(size, device=t.device, dtype=torch.int64) * stride
    return offsets.reshape(-1)


def _triton_tile(vocab: int, num_samples: int):
    """(BLOCK_S, BLOCK_V) of the Triton launch."""
    block_s = min(_random.next_power_of_2(num_samples), _TRITON_MAX_BLOCK_S)
    return block_s, min(_random.next_power_of_2(vocab), max(16, _TRITON_TILE_ELEMENTS // block_s))


def _gumbel_sample_triton(logits, num_samples, temperature, mask, seed):
    lead_shape = logits.shape[:-1]
    vocab = logits.shape[-1]
    num_rows = math.prod(lead_shape)
    tokens = torch.empty((num_samples, num_rows), dtype=torch.int64, device=logits.device)
    probs = torch.empty((num_samples, num_rows), dtype=torch.float32, device=logits.device)
    if num_rows > 0:
        block_s, block_v = _triton_tile(vocab, num_samples)
        mask_flat = mask.reshape(-1) if mask is not None else seed  # placeholder pointer when unused
        grid = (num_rows, triton.cdiv(num_samples, block_s))
        _gumbel_sample_kernel[grid](
            logits, _row_offsets(logits), logits.stride(-1), mask_flat, seed, tokens, probs,
            num_rows, vocab, num_samples, temperature,
            HAS_MASK=mask is not None, GREEDY=temperature == 0, BLOCK_S=block_s, BLOCK_V=block_v,
        )
    out_shape = (num_samples, *lead_shape)
    return tokens.reshape(out_shape), probs.reshape(out_shape)


if triton is not None:
    import triton.language as tl

    @triton.jit
    def _gumbel_sample_kernel(logits_ptr, row_offsets_ptr, stride_v, mask_ptr, seed_ptr, tokens_ptr, probs_ptr,
                              num_rows, vocab, num_samples, temperature,
                              HAS_MASK: tl.constexpr, GREEDY: tl.constexpr,
                              BLOCK_S: tl.constexpr, BLOCK_V: tl.constexpr):
        # One program per (row, block of samples): the row is read once for all its samples.
        row = tl.program_id(0)
        samples = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
        out_offsets = samples.to(tl.int64) * num_rows + row
        sample_in_range = samples < num_samples

        active = True
        if HAS_MASK:
            active = tl.load(mask_ptr + row) != 0

        token = tl.full([BLOCK_S], -1, dtype=tl.int64)
        prob = tl.zeros([BLOCK_S], dtype=tl.float32)
        if active:
            row_ptr = logits_ptr + tl.load(row_offsets_ptr + row)
            seed = tl.load(seed_ptr)
            running_max = -float("inf")
            running_sum = 0.0
            nan_count = 0
            best_key = tl.full([BLOCK_S], -float("inf"), dtype=tl.float32)
            best_token = tl.full([BLOCK_S], -1, dtype=tl.int32)
            best_logit = tl.full([BLOCK_S], -float("inf"), dtype=tl.float32)
            for start in range(0, vocab, BLOCK_V):
                columns = start + tl.arange(0, BLOCK_V)
                x = tl.load(row_ptr + columns.to(tl.int64) * stride_v, mask=columns < vocab,
                            other=-float("inf")).to(tl.float32)
                nan_count += tl.sum((x != x).to(tl.int32), axis=0)

                new_max = tl.maximum(running_max, tl.max(x, axis=0))
                # While a row has seen only -inf, shift by 0 instead of -inf to avoid inf - inf = NaN.
                shift = tl.where(new_max == -float("inf"), 0.0, new_max)
                running_sum = running_sum * tl.exp(running_max - shift) + tl.sum(tl.exp(x - shift), axis=0)
                running_max = new_max

                if GREEDY:
                    key = tl.broadcast_to(x[None, :], (BLOCK_S, BLOCK_V))
                else:
                    noise = _random.gumbel_noise_philox(
                        seed,
                        tl.broadcast_to(columns[None, :], (BLOCK_S, BLOCK_V)),
                        tl.full((BLOCK_S, BLOCK_V), 0, tl.int32) + row,
                        tl.broadcast_to(samples[:, None], (BLOCK_S, BLOCK_V)))
                    # -inf + finite noise stays -inf, so suppressed tokens are never drawn.
                    key = x[None, :] + temperature * noise
                chunk_key = tl.max(key, axis=1)
                chunk_arg = tl.argmax(key, axis=1, tie_break_left=True)
                picked = tl.arange(0, BLOCK_V)[None, :] == chunk_arg[:, None]
                chunk_logit = tl.max(tl.where(picked, x[None, :], -float("inf")), axis=1)
                # Strictly greater: earlier chunks hold lower indices and win ties.
                better = chunk_key > best_key
                best_key = tl.where(better, chunk_key, best_key)
                best_token = tl.where(better, chunk_arg + start, best_token)
                best_logit = tl.where(better, chunk_logit, best_logit)

            invalid = (nan_count > 0) | (running_max == -float("inf"))
            token = tl.where(invalid, -1, best_token.to(tl.int64))
            prob = tl.where(invalid, float("nan"), tl.exp(best_logit - running_max) / running_sum)
        tl.store(tokens_ptr + out_offsets, token, mask=sample_in_range)
        tl.store(probs_ptr + out_offsets, prob, mask=sample_in_range)


def aot_configs():
    """Launch configurations of :func:`_gumbel_sample_triton` at the models' vocabularies (1 and 8
    draws, greedy or not, with or without a row mask), for the compile lane."""
    from . import _aot

    configs = []
    for dtype in _aot.DTYPES:
        for vocab in _aot.MODEL_VOCABS.values():
            for num_samples, greedy, has_mask in ((s, g, m) for s in (1, 8) for g in (False, True) for m in (False, True)):
                block_s, block_v = _triton_tile(vocab, num_samples)
                args = dict(logits_ptr="*" + dtype, row_offsets_ptr="*i64", stride_v=1,
                            mask_ptr="*i1" if has_mask else "*i64", seed_ptr="*i64", tokens_ptr="*i64",
                            probs_ptr="*fp32", num_rows=256, vocab=vocab, num_samples=num_samples,
                            temperature=0.0 if greedy else 1.0, HAS_MASK=has_mask, GREEDY=greedy,
                            BLOCK_S=block_s, BLOCK_V=block_v)
                configs.append(_aot.launch_config(
                    f"gumbel_sample {dtype} V={vocab} S={num_samples} greedy={int(greedy)} mask={int(has_mask)}",
                    _gumbel_sample_kernel, args, num_warps=4, elements_per_iteration=block_v))
    return configs
