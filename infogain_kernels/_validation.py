"""Argument checks shared by every op. Each raises with the argument's name."""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_tensor(name: str, t, *, dtypes: Optional[Iterable[torch.dtype]] = None, min_dim: int = 0,
                 ndim: Optional[int] = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"{name} must have dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {tuple(t.shape)}")
    return t


def check_logits(name: str, logits) -> torch.Tensor:
    """Floating logits with a non-empty last (vocabulary) axis."""
    check_tensor(name, logits, dtypes=FLOAT_DTYPES, min_dim=1)
    if logits.shape[-1] < 1:
        raise ValueError(f"{name} must have a non-empty last dimension (vocabulary), got shape {tuple(logits.shape)}")
    return logits


def check_same_device(**tensors) -> None:
    items = [(k, v) for k, v in tensors.items() if isinstance(v, torch.Tensor)]
    if not items:
        return
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")


def check_mask(name: str, mask, shape) -> Optional[torch.Tensor]:
    if mask is None:
        return None
    check_tensor(name, mask, dtypes=(torch.bool,))
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(mask.shape)}")
    return mask


def check_nonnegative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


def check_temperature(name: str, value) -> float:
    """A finite temperature >= 0 (TypeError for non-numbers, ValueError for negative, NaN or inf)."""
    value = check_nonnegative(name, value)
    if math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_top_p(name: str, value) -> float:
    """A number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return float(value)


def check_int(name: str, value, minimum: int) -> int:
    """A plain ``int`` (not a bool) that is at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_positive_int(name: str, value) -> int:
    return check_int(name, value, 1)


def check_generator(name: str, generator, device: torch.device) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(f"{name} is a {generator.device.type} generator but the tensors are on {device}")


def check_bool(name: str, value) -> bool:
    """A plain ``bool`` flag (TypeError for anything else, e.g. a tensor whose truth value would sync)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def bad_row_problem(row: torch.Tensor) -> str:
    """Why a logits row has no softmax distribution, as a phrase with the row as subject:
    "contains NaN", "contains +inf" or "is entirely -inf" ("" when it has one). Error paths only:
    it reads the row back to the host."""
    if bool(torch.isnan(row).any()):
        return "contains NaN"
    if bool((row == float("inf")).any()):
        return "contains +inf"
    if bool((row == float("-inf")).all()):
        return "is entirely -inf"
    return ""
