"""Drop-in fused ``generate`` for LLaDA's official ``generate.py`` (ML-GSAI/LLaDA).

Same signature, arguments and return value as the official function; each step's softmax / gather /
arg-max / per-row top-k runs on the fused ops instead of a softmax over ``[B, P + G, V]``::

    import generate                      # LLaDA's generate.py
    from infogain.compat import llada
    llada.patch(generate)                # or call llada.generate(model, prompt, ...) directly

Temperature 0: the same tokens as the original, bit for bit, with either remasking mode: the
confidence the original computes in the logits' dtype is certified from the fused float32 value and
recomputed with the original's expression wherever a decision depends on rounding or ties (see
:mod:`._common`). Temperature > 0: the same distribution, drawn by ``step_stats``' inverse-CDF
sampler instead of float64 Gumbel noise (a different random stream).

Differences kept on purpose: ``cfg_scale > 0`` without an ``attention_mask`` runs (the original
fails on an undefined name there), and a bad length or step count raises ValueError instead of
failing an ``assert``.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F

from infogain_kernels import step_stats

from ._common import Certified, check_remasking, check_temperature, check_tensor, patch_module, select_transfer

# Token ids the official options refer to (LLaDA-8B's EOS and end-of-turn tokens).
EOS_TOKEN_ID = 126081
EOT_TOKEN_ID = 126348


def _schedule(block_mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """int64 [B, steps]: the row's masked count split evenly, the remainder one each to the first steps."""
    count = block_mask_index.sum(dim=1, keepdim=True)
    extra = torch.arange(steps, device=count.device)[None, :] < (count % steps)
    return count // steps + extra.to(torch.int64)


def _exact_confidence(logits: torch.Tensor, x0: torch.Tensor):
    """The original's ``softmax(logits)[x0]`` in the logits' dtype, at the given positions."""
    def exact(rows_b: torch.Tensor, rows_l: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(logits[rows_b, rows_l], dim=-1)
        return probs.gather(-1, x0[rows_b, rows_l, None]).squeeze(-1)
    return exact


def _fused_stats(logits: torch.Tensor, eligible: torch.Tensor, temperature: float):
    readable = logits if logits.dtype != torch.float64 else logits.float()
    return step_stats(readable, eligible, num_samples=1 if temperature > 0 else 0, temperature=temperature,
                      check_values=False)


def _step(logits, temperature, remasking, eligible, counts, confidence_eos_eot_inf):
    """x0 (int64 [B, L], valid where ``eligible``) and the transfer mask of one official step."""
    stats = _fused_stats(logits, eligible, temperature)
    x0 = stats.tokens[..., 0] if temperature > 0 else stats.top1_id
    bad = eligible & ~torch.isfinite(stats.entropy)
    if temperature == 0 and bool(bad.any()):
        x0 = x0.clone()
        x0[bad] = logits[bad].argmax(-1)
    neg_inf = torch.tensor(-math.inf, dtype=torch.float64, device=logits.device)
    if confidence_eos_eot_inf:
        # The official chained assignment hits the logits themselves at T = 0 (the noisy logits are
        # the same tensor there) but only the end-of-turn column at T > 0, after x0 was drawn.
        if temperature == 0:
            logits[:, :, EOS_TOKEN_ID] = -math.inf
        logits[:, :, EOT_TOKEN_ID] = -math.inf
    if remasking == "random":
        x0_p = torch.rand((x0.shape[0], x0.shape[1]), device=x0.device)
        approx = torch.where(eligible, x0_p.to(torch.float64), neg_inf)
        conf = Certified(approx, torch.ones_like(eligible), eligible, None, torch.float64)
        return x0, select_transfer(conf, counts, None, certify=False)
    if confidence_eos_eot_inf:
        # p = exp(l[x0] - m') / z' over the modified row: m' and 1 / z' from one more fused pass.
        after = _fused_stats(logits, eligible, 0.0)
        top = logits.gather(-1, after.top1_id.clamp(min=0)[..., None]).squeeze(-1).to(torch.float64)
        chosen = logits.gather(-1, x0.clamp(min=0)[..., None]).squeeze(-1).to(torch.float64)
        probs = torch.exp(chosen - top) * after.top1_prob.to(torch.float64)
        bad = bad | (eligible & ~torch.isfinite(after.entropy))
    else:
        probs = (stats.token_probs[..., 0] if temperature > 0 else stats.top1_prob).to(torch.float64)
    approx = torch.where(eligible, probs, neg_inf)
    exact_fn = _exact_confidence(logits, x0)
    known = ~eligible
    if temperature == 0 and bool(bad.any()):
        approx[bad] = exact_fn(*bad.nonzero(as_tuple=True)).to(torch.float64)
        known = known | bad
    conf = Certified(approx, known, eligible, exact_fn, logits.dtype)
    return x0, select_transfer(conf, counts, None, certify=temperature == 0)


@torch.no_grad()
def generate(model, prompt, attention_mask=None, steps=128, gen_length=128, block_length=128, temperature=0.,
             cfg_scale=0., remasking='low_confidence', mask_id=126336, logits_eos_inf=False,
             confidence_eos_eot_inf=False):
    """LLaDA's official semi-autoregressive low-confidence / random remasking decoder, fused.

    Args:
        model: called as ``model(x, attention_mask=...)`` returning an object with ``.logits``
            [B, T, V]; must have ``.device``.
        prompt: [B, P] int64 token ids (left-padded for a batch).
        attention_mask: None or [B, P] (extended with ones over the generated part).
        steps, gen_length, block_length: ``gen_length % block_length == 0`` and ``steps`` a multiple
            of the number of blocks; each block gets ``steps / num_blocks`` steps and its masks are
            spread evenly over them (remainder to the first steps).
        temperature: finite T >= 0; cfg_scale >= 0 (unsupervised classifier-free guidance with the
            prompt masked); remasking ``'low_confidence'`` or ``'random'``; mask_id: the mask token.
        logits_eos_inf: set the EOS logit (:data:`EOS_TOKEN_ID`) to ``-inf`` before choosing tokens.
        confidence_eos_eot_inf: as the official option, exclude EOS and end-of-turn
            (:data:`EOT_TOKEN_ID`) from the confidence softmax (at T > 0 only end-of-turn, as the
            official chained assignment does).

    Returns:
        int64 [B, P + gen_length]: the prompt followed by the generated tokens.
    """
    check_tensor("prompt", prompt, ndim=2, dtypes=(torch.int64, torch.int32))
    for name, value in (("steps", steps), ("gen_length", gen_length), ("block_length", block_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if gen_length % block_length:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(f"steps ({steps}) must be a multiple of the number of blocks ({num_blocks})")
    temperature = check_temperature(temperature)
    if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, (int, float)) or not cfg_scale >= 0:
        raise ValueError(f"cfg_scale must be a number >= 0, got {cfg_scale!r}")
    check_remasking(remasking)
    if attention_mask is not None:
        check_tensor("attention_mask", attention_mask, ndim=2)
        if tuple(attention_mask.shape) != tuple(prompt.shape):
            raise ValueError(f"attention_mask must have the prompt's shape {tuple(prompt.shape)}, "
                             f"got {tuple(attention_mask.shape)}")
    batch, prompt_len = prompt.shape
    x = torch.full((batch, prompt_len + gen_length), mask_id, dtype=torch.long).to(model.device)
    x[:, :prompt_len] = prompt.clone()
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones((batch, gen_length), dtype=attention_mask.dtype,
                                                               device=model.device)], dim=-1)
    prompt_index = x != mask_id
    steps_per_block = steps // num_blocks
    for num_block in range(num_blocks):
        start = prompt_len + num_block * block_length
        end = start + block_length
        counts = _schedule(x[:, start:end] == mask_id, steps_per_block)
        for i in range(steps_per_block):
            mask_index = x == mask_id
            if cfg_scale > 0.:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                both_mask = None if attention_mask is None else torch.cat([attention_mask, attention_mask], dim=0)
                logits = model(torch.cat([x, un_x], dim=0), attention_mask=both_mask).logits
                logits, un_logits = torch.chunk(logits, 2, dim=0)
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = model(x, attention_mask=attention_mask).logits
            if logits_eos_inf:
                logits[:, :, EOS_TOKEN_ID] = -torch.inf
            eligible = mask_index.clone()
            eligible[:, end:] = False
            x0, transfer = _step(logits, temperature, remasking, eligible, counts[:, i], confidence_eos_eot_inf)
            x[transfer] = x0[transfer]
    return x


def patch(module) -> Tuple[str, ...]:
    """Swap ``generate`` of an imported LLaDA ``generate`` module for the fused one. Returns the names
    now pointing at the fused versions; idempotent; TypeError (nothing replaced) when the signature
    is not the known one."""
    return patch_module(module, {"generate": generate}, required=("generate",))
