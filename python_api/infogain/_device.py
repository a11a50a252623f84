"""Host-to-device transfers that do not synchronise the host with the GPU."""
from __future__ import annotations

from typing import Sequence

import torch


def host_ints_to_device(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """int64 tensor ``[len(values)]`` of host ints on ``device``, without a host synchronisation.

    A plain copy from pageable memory to CUDA waits for the stream to drain; staging the
    values in pinned memory lets the copy be queued (``non_blocking``) instead.
    """
    pinned = device.type == "cuda"
    return torch.tensor(list(values), dtype=torch.long, pin_memory=pinned).to(device, non_blocking=True)
