"""Multi-layer KV-cache block replacement for dual-cache decoding (C++/CUDA op).

In dual-cache mode only the current block is forwarded each step and its fresh K/V
must be written into every layer's cache at the block's positions; when a lookahead
winner is committed its block K/V can be copied from the candidate's slot instead
of being recomputed. :func:`kv_block_replace` does all layers at once: one kernel
launch on CUDA (no host synchronisation, safe inside CUDA-graph capture) and a
parallel strided memcpy on CPU. The op is ``torch.ops.infogain.kv_block_replace``
(C++, ``csrc/kv_block_replace.cpp``), with a Meta kernel for FakeTensor tracing.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

try:
    from . import _C  # noqa: F401  (loading the extension registers torch.ops.infogain.kv_block_replace)

    _IMPORT_ERROR: Optional[BaseException] = None
except ImportError as exc:  # pragma: no cover - only when the extension was not built
    _IMPORT_ERROR = exc

__all__ = ["kv_block_replace", "STATUS_BAD_DST_START", "STATUS_BAD_SRC_START", "STATUS_BAD_SRC_ROWS"]

# Bits of the ``status`` flag: which per-row offset tensor held an out-of-range entry.
STATUS_BAD_DST_START = 1
STATUS_BAD_SRC_START = 2
STATUS_BAD_SRC_ROWS = 4

_LAYOUTS = ("bhtd", "bthd")
RowOffset = Union[int, torch.Tensor]


def _split_offset(name: str, value: RowOffset) -> Tuple[Optional[torch.Tensor], int]:
    """(per-row tensor or None, scalar used when the tensor is None)."""
    if isinstance(value, torch.Tensor):
        return value, 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or an int32/int64 tensor of shape [B], got {type(value).__name__}")
    return None, value


def _check_tensor_list(name: str, tensors) -> None:
    if not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of tensors, got {type(tensors).__name__}")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(t).__name__}")


def kv_block_replace(
    caches: Sequence[torch.Tensor],
    blocks: Sequence[torch.Tensor],
    dst_start: RowOffset,
    *,
    src_start: RowOffset = 0,
    src_rows: Optional[torch.Tensor] = None,
    length: Optional[int] = None,
    layout: str = "bhtd",
    status: Optional[torch.Tensor] = None,
) -> None:
    """Copy a block of sequence positions from ``blocks[i]`` into ``caches[i]`` for every i, in place.

    For every layer pair i, cache row b and ``t in range(length)``::

        caches[i][b, :, dst_start[b] + t] = blocks[i][src_rows[b], :, src_start[b] + t]   # layout "bhtd"
        caches[i][b, dst_start[b] + t]    = blocks[i][src_rows[b], src_start[b] + t]      # layout "bthd"

    Args:
        caches: non-empty list of 4-D tensors, written in place. ``layout="bhtd"``: ``[B, H_i, T, D_i]``
            (LLaDA, SDAR, HF caches); ``"bthd"``: ``[B, T, H_i, D_i]`` (flash-attn). B and T are the same
            for every cache; heads H_i and head size D_i may differ between layers. dtype float32,
            bfloat16 or float16, the same for all. Any strides (views into larger buffers are fine) as
            long as the last (head-size) dimension is contiguous and no cache element is aliased
            (``expand()``-ed caches are refused). Caches must not share memory with each other
            (the same tensor twice or overlapping slices of one buffer raise ValueError;
            interleaved views such as the K and V halves of one ``[B, 2, H, T, D]`` buffer are fine).
            Typically ``[k_0, v_0, k_1, v_1, ...]``. A 3-D ``[B, T, H*D]`` cache (Dream) is passed as
            ``cache.unsqueeze(2)`` with ``layout="bthd"``.
        blocks: list of the same length; ``blocks[i]`` has the layout of ``caches[i]``, shape
            ``[B_src, H_i, S, D_i]`` (or ``[B_src, S, H_i, D_i]``), the same dtype and device, and the
            same B_src and S for every i. Blocks must not share memory with any cache.
        dst_start: first cache position written, per row: an int (every row), or an int32/int64
            tensor of shape [B] on the caches' device.
        src_start: first block position read, per row (int or tensor [B] as for ``dst_start``).
        src_rows: int32/int64 tensor [B] on the caches' device: cache row b receives block row
            ``src_rows[b]`` (repeats allowed, e.g. the winning lookahead candidate for every row).
            ``None`` means row b receives block row b (then B_src must equal B).
        length: number of positions copied, L >= 1; default S (the whole block, so ``src_start``
            must then be 0). Requires ``0 <= dst_start[b] <= T - L`` and ``0 <= src_start[b] <= S - L``.
        layout: ``"bhtd"`` or ``"bthd"``, for caches and blocks alike.
        status: optional int32 tensor with one element on the caches' device. See "Errors".

    Errors:
        Every shape, dtype, device and layout problem, and any out-of-range int offset, raises
        ``ValueError`` / ``TypeError`` naming the argument before anything is written. Offsets given
        as tensors are range-checked before anything is written too: on CPU the values are read and
        a bad entry raises ``ValueError``. On CUDA they are never read by the host (so the call does
        not synchronise and can be captured in a CUDA graph): the kernel checks all rows first and,
        if any entry is out of range, writes nothing at all and either sets ``status`` (when given)
        or triggers a device-side assertion (like torch's own indexing kernels; the CUDA context is
        then unusable). With ``status`` given, both devices behave the same: ``status`` receives
        0 when the copy was done, else a bitmask of :data:`STATUS_BAD_DST_START`,
        :data:`STATUS_BAD_SRC_START`, :data:`STATUS_BAD_SRC_ROWS`, and nothing is written and
        nothing raised. Pass ``status`` on CUDA when per-row offsets may be invalid.
    """
    if _IMPORT_ERROR is not None:
        raise RuntimeError(
            "kv_block_replace needs the compiled extension infogain_kernels._C; build it with "
            "`pip install --no-build-isolation .` or `python setup.py build_ext --inplace`"
        ) from _IMPORT_ERROR
    _check_tensor_list("caches", caches)
    _check_tensor_list("blocks", blocks)
    # The op itself needs at least one tensor to pick a device kernel.
    if len(caches) == 0:
        raise ValueError("caches must be a non-empty list of tensors")
    if len(caches) != len(blocks):
        raise ValueError(f"caches and blocks must have the same length, got {len(caches)} caches and {len(blocks)} blocks")
    dst_tensor, dst_scalar = _split_offset("dst_start", dst_start)
    src_tensor, src_scalar = _split_offset("src_start", src_start)
    if src_rows is not None and not isinstance(src_rows, torch.Tensor):
        raise TypeError(f"src_rows must be an int32/int64 tensor of shape [B] or None, got {type(src_rows).__name__}")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int)):
        raise TypeError(f"length must be an int or None, got {type(length).__name__}")
    if not isinstance(layout, str) or layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    if status is not None and not isinstance(status, torch.Tensor):
        raise TypeError(f"status must be an int32 tensor with one element or None, got {type(status).__name__}")
    torch.ops.infogain.kv_block_replace(
        list(caches),
        list(blocks),
        dst_tensor,
        src_tensor,
        src_rows,
        dst_start_scalar=dst_scalar,
        src_start_scalar=src_scalar,
        length=length,
        layout=layout,
        status=status,
    )
