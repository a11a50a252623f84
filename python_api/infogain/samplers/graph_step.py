"""One Info-Gain decoding step as pure device work, so that it can be captured in a CUDA graph.

It shares the decision with the sampler's eager step (the pure :func:`.step.decide`). The eager
step (``_Run._step`` in :mod:`.run`) reads one small tensor back per step, and forwards only the kept
(distinct) candidates of the lookahead rows, a batch whose size is known only after that
read-back. :func:`device_step` does the same step with fixed shapes instead: it forwards all
N x B candidates (one window per candidate and row, against the shared cache) and lets only the
kept candidates of lookahead rows compete, which gives the sampler's decision (a dropped candidate
repeats the position set of a lower-index candidate, and ties go to the lower index). Nothing is
read back: the caller checks ``bad`` and the returned kinds whenever it synchronises anyway.

Capture: the only host-to-device copy inside is the model's candidate layout (from the host tuple
``cache_rows``), queued from pinned memory; for a fixed batch it holds the same values at every
step, so a replay reads the right layout even where torch's pinned-memory cache recycles the
captured buffer for the next step's identical layout. Capture it with
``torch.cuda.graph(..., capture_error_mode="relaxed")``: torch's pinned-memory cache may query CUDA
events while the capture runs.

Scope: cache ``dual`` (the block is the window), models of :mod:`infogain.models`, no EOS fill,
a step that is not the block's last (the driver's last-step fill needs no lookahead).
"""
from __future__ import annotations

import torch

from infogain_kernels import lookahead_objective

from ..stats import KIND_LOOKAHEAD
from .step import decide


def device_step(run, start: int, quota: torch.Tensor, max_quota: int) -> dict:
    """The device work of the eager step for every row of the block at ``start`` (see the module
    docstring). ``run``: the sampler's run state (:mod:`.run`) with its dual cache and block logits
    in place; only its public attributes are read.

    Returns tensors: ``kind`` int64 [B], ``block`` int64 [B, L] (the block's tokens after the
    step), ``commit`` bool [B, L], ``next_logits`` [B, L, V] (the block logits of the next step for
    lookahead rows, the current ones elsewhere) and ``bad`` bool [] (non-finite logits seen).
    """
    if run.mode != "dual":
        raise ValueError(f"device_step supports cache='dual', got {run.mode!r}")
    opts = run.opts
    logits = run.block_logits
    # Candidates are never deferred here: the step has no read-back to defer them behind.
    block_ids, entropy, kind, commit, decision, _ = decide(
        run.strategy, opts, logits, run.canvas[:, start:start + run.length], run.mask_id, quota, last=False,
        max_quota=max_quota, generator=run.generator, reused=run.reused)
    block = torch.where(commit, decision.tokens, block_ids)
    bad = ~torch.isfinite(entropy).all()
    candidates = decision.candidates
    if candidates is None:
        return dict(kind=kind, block=block, commit=commit, next_logits=logits, bad=bad)

    num_candidates, batch, length = candidates.commit.shape
    cand_block = torch.where(candidates.commit, candidates.tokens, block[None])          # [N, B, L]
    window = cand_block.reshape(num_candidates * batch, length)
    cache_rows = tuple(b for _ in range(num_candidates) for b in range(batch))          # host ints: no sync
    next_logits = run.calls.logits(run.model.forward_window(
        window, start=start, cache=run.calls.cache, mode=run.mode, attention_mask=run.model_attention,
        cache_rows=cache_rows, check_values=False))
    cost = candidates.cost.reshape(-1) if opts.variant == "info_gain" else None
    objective, _ = lookahead_objective(next_logits, window == run.mask_id, cost, variant=opts.variant,
                                       check_values=False)
    bad = bad | ~torch.isfinite(torch.where(candidates.keep.reshape(-1), objective, 0.0)).all()
    scores = torch.where(candidates.keep.reshape(-1), objective, float("-inf")).view(num_candidates, batch)
    best = scores.argmax(dim=0)                                                           # [B]
    rows = torch.arange(batch, device=best.device)
    lookahead = (kind == KIND_LOOKAHEAD)[:, None]
    winner_commit = candidates.commit[best, rows]
    block = torch.where(lookahead & winner_commit, cand_block[best, rows], block)
    commit = torch.where(lookahead, winner_commit, commit)
    winner_logits = next_logits.view(num_candidates, batch, length, -1)[best, rows]
    next_block_logits = torch.where(lookahead[..., None], winner_logits, logits)
    return dict(kind=kind, block=block, commit=commit, next_logits=next_block_logits, bad=bad)
