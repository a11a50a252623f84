"""``token_stats``: entropy, top-1 and top-2 probabilities and the argmax of softmax rows, in one pass.

This module also holds the torch reference for the row pass (:func:`row_stats_reference`), which is
the specification every kernel of the entropy family is tested against; ``lookahead_objective``
reuses it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ._backend import call_op, capturing_cuda_graph, device_guard, use_triton
from ._validation import check_bool, check_logits, check_mask, check_same_device

# Fill values for positions that the mask skips.
SKIPPED_ENTROPY = 0.0
SKIPPED_PROB = 0.0
SKIPPED_ID = -1

# The reference converts at most this many logits to float32 at a time (4 MB), so it never holds
# a float32 copy of a whole [rows, V] tensor; a chunk is always at least one row.
_REFERENCE_CHUNK_ELEMENTS = 1 << 20

def _chunk_stats(rows: torch.Tensor, with_top: bool):
    """Stats of ``rows`` [n, V] (any float dtype) in float32; see :func:`row_stats_reference`."""
    # softmax is max-shifted (exp(x - m) / sum exp(x - m)) and converts to float32 on the fly; entr
    # is -p log p with entr(0) = 0, so -inf logits contribute exactly 0 and no 0 * -inf appears.
    # NaN in a row, or a row of only -inf (0 / 0), makes its probabilities and entropy NaN.
    probs = torch.softmax(rows, dim=-1, dtype=torch.float32)
    entropy = torch.special.entr(probs).sum(-1)
    if not with_top:
        return entropy, None, None, None
    # Ranked on the logits (exact in any dtype; argmax returns the first of equal maxima), as the
    # kernel does: probabilities of logits closer than an ulp could round equal.
    top1_id = torch.argmax(rows, dim=-1, keepdim=True)
    top1_prob = probs.gather(-1, top1_id).squeeze(-1)
    # The second-largest probability: hide one occurrence of the maximum, take the max of the rest.
    probs.scatter_(-1, top1_id, 0.0)
    top2_prob = probs.amax(-1)
    return entropy, top1_prob, top1_id.squeeze(-1), top2_prob


def row_stats_reference(logits: torch.Tensor, keep: Optional[torch.Tensor], *, with_top: bool = True):
    """Torch reference of the row pass over ``logits`` [..., V] (fp32/bf16/fp16, any strides).

    For each position p with ``keep[p]`` True (every position when ``keep`` is None), in float32:

    * ``entropy[p] = -sum q log q`` with ``q = softmax(x)`` (max-shifted, float32), -inf logits
      contributing 0. The kernels compute the same quantity with the online form
      ``log z - s / z``, ``z = sum exp(x - m)``, ``s = sum exp(x - m) (x - m)``,
    * ``top1_prob[p]`` / ``top1_id[p]``: the largest probability and its lowest index,
    * ``top2_prob[p]``: the second-largest probability (0 when V == 1; equals top1_prob on a tie).

    A non-finite ``entropy`` flags a row that contains NaN or is all -inf (see
    :func:`raise_on_bad_rows`).
    Positions with ``keep`` False get entropy 0, probabilities 0, id -1 and are never read.
    Returns flat tensors of length ``prod(logits.shape[:-1])`` (top fields None unless ``with_top``).
    Rows are gathered and converted to float32 a chunk of about 2**20 logits at a time, so no
    float32 (or any) copy of the whole tensor is made, and a chunk stays cache-sized.
    """
    n_cols = logits.shape[-1]
    lead_shape = logits.shape[:-1]
    n_rows = lead_shape.numel()
    device = logits.device
    entropy = torch.full((n_rows,), SKIPPED_ENTROPY, dtype=torch.float32, device=device)
    top1_prob = top1_id = top2_prob = None
    if with_top:
        top1_prob = torch.full((n_rows,), SKIPPED_PROB, dtype=torch.float32, device=device)
        top1_id = torch.full((n_rows,), SKIPPED_ID, dtype=torch.int64, device=device)
        top2_prob = torch.full((n_rows,), SKIPPED_PROB, dtype=torch.float32, device=device)
    if keep is None:
        selected = torch.arange(n_rows, device=device)
    else:
        selected = keep.reshape(-1).nonzero().squeeze(-1)
    rows_per_chunk = max(1, _REFERENCE_CHUNK_ELEMENTS // max(n_cols, 1))
    for chunk in selected.split(rows_per_chunk):
        # Indexing with one index tensor per leading dimension gathers just these rows, whatever
        # the strides (reshape(-1, V) would copy a non-collapsible tensor whole).
        rows = logits[torch.unravel_index(chunk, lead_shape)] if lead_shape else logits.unsqueeze(0)
        stats = _chunk_stats(rows, with_top)
        entropy[chunk] = stats[0]
        if with_top:
            top1_prob[chunk] = stats[1]
            top1_id[chunk] = stats[2]
            top2_prob[chunk] = stats[3]
    return entropy, top1_prob, top1_id, top2_prob


def raise_on_bad_rows(name: str, logits: torch.Tensor, entropy: torch.Tensor, prefix: Tuple[int, ...] = ()) -> None:
    """Raise ValueError naming the first row of ``logits`` whose ``entropy`` (flat, from the row
    pass) flags a NaN or an all -inf row; ``prefix`` is prepended to the reported position (for a
    sub-tensor of the caller's argument). This check is the op's one host synchronisation."""
    if capturing_cuda_graph(entropy.device):
        return  # a host sync would break the capture; flagged rows keep their non-finite entropy
    bad = ~torch.isfinite(entropy)
    if not bool(bad.any()):
        return
    first = int(bad.nonzero()[0, 0])
    lead_shape = logits.shape[:-1]
    position = tuple(int(i) for i in torch.unravel_index(torch.tensor(first), lead_shape)) if lead_shape else ()
    # Error path only: look at the row itself to say which of the two it is.
    row = logits[position]
    position = tuple(prefix) + position
    if bool(torch.isnan(row).any()):
        raise ValueError(f"{name} contains NaN in the row at position {position}")
    raise ValueError(f"{name} has a row with every entry -inf at position {position}")


def _token_stats_impl(logits: torch.Tensor, mask: Optional[torch.Tensor]
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    lead_shape = logits.shape[:-1]
    if use_triton(logits):
        from ._entropy_triton import launch_row_stats

        with device_guard(logits):
            stats = launch_row_stats(logits, mask, with_top=True)
    else:
        stats = row_stats_reference(logits, mask, with_top=True)
    return tuple(t.view(lead_shape) for t in stats)


_token_stats_op = torch.library.custom_op("infogain::token_stats", _token_stats_impl, mutates_args=())


@_token_stats_op.register_fake
def _token_stats_fake(logits, mask):
    lead_shape = logits.shape[:-1]
    entropy = logits.new_empty(lead_shape, dtype=torch.float32)
    return entropy, torch.empty_like(entropy), logits.new_empty(lead_shape, dtype=torch.int64), \
        torch.empty_like(entropy)


def token_stats(logits: torch.Tensor, mask: Optional[torch.Tensor] = None, *, check_values: bool = True
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entropy and top-1/top-2 statistics of ``softmax(logits, -1)`` for every position, in one read.

    Args:
        logits: [..., V] float32, bfloat16 or float16, any leading shape and strides (views are read
            in place). ``-inf`` entries are legal (suppressed tokens).
        mask: optional bool tensor of shape ``logits.shape[:-1]``. Positions where it is False are
            not read at all and get the fill values below.
        check_values: when True (default), raise for a read row that contains NaN or has every
            entry -inf. That check costs one host synchronisation; pass False to fold it into your
            own read-back (a bad row is then flagged by a non-finite ``entropy``, e.g. test
            ``~torch.isfinite(entropy).any()`` on the device).

    Returns:
        ``(entropy, top1_prob, top1_id, top2_prob)``, each of shape ``logits.shape[:-1]``:
        float32 entropy (nats), float32 largest probability, int64 index of the largest probability
        (the lowest index among equal maxima), float32 second-largest probability (0 when V == 1,
        equal to ``top1_prob`` when the maximum is tied). Skipped positions: entropy 0, probabilities
        0, id -1. All arithmetic is float32 whatever the input dtype.

    Raises:
        TypeError / ValueError naming the argument for a bad dtype, rank, device or mask shape;
        ValueError when a read row contains NaN or has every entry -inf (only with
        ``check_values=True``). That check costs one host synchronisation. It is skipped while a
        CUDA graph is being captured, and ``torch.ops.infogain.token_stats`` never does it; such
        rows then come back with a non-finite entropy (and undefined top-1/top-2 fields).

    CUDA tensors run a Triton kernel (one program per row, online max / sum form), CPU tensors the
    torch reference; ``INFOGAIN_BACKEND`` / ``use_backend`` force one.
    """
    check_logits("logits", logits)
    check_mask("mask", mask, logits.shape[:-1])
    check_same_device(logits=logits, mask=mask)
    check_values = check_bool("check_values", check_values)
    entropy, top1_prob, top1_id, top2_prob = call_op(torch.ops.infogain.token_stats, _token_stats_impl, logits, mask)
    if check_values:
        raise_on_bad_rows("logits", logits, entropy.reshape(-1))
    return entropy, top1_prob, top1_id, top2_prob
