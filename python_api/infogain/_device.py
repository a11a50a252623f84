"""Device helpers: host-to-device transfers that do not synchronise the host with the GPU, and the
file-name tag of a GPU."""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def host_ints_to_device(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """int64 tensor ``[len(values)]`` of host ints on ``device``, without a host synchronisation.

    A plain copy from pageable memory to CUDA waits for the stream to drain; staging the
    values in pinned memory lets the copy be queued (``non_blocking``) instead.
    """
    if device.type == "cpu":
        return torch.tensor(list(values), dtype=torch.long)   # no staging, no copy to make
    pinned = device.type == "cuda"
    return torch.tensor(list(values), dtype=torch.long, pin_memory=pinned).to(device, non_blocking=True)


# GPUs whose results files are named by a short tag (``ops-h200.json``), most specific first.
GPU_TAGS = ("h200", "h100", "a100", "l40s", "a10g", "4090")


def gpu_tag(name: str) -> Optional[str]:
    """The short tag of a CUDA device name (``"NVIDIA H200"`` -> ``"h200"``), None for an unlisted GPU."""
    name = name.lower()
    return next((tag for tag in GPU_TAGS if tag in name), None)
