"""Reading config.json fields with errors that name the field."""
from __future__ import annotations

from typing import Any

_MISSING = object()


def get_int(config: dict, name: str, default: Any = _MISSING, *, minimum: int = 1) -> int:
    value = config.get(name, default)
    if value is _MISSING:
        raise ValueError(f"config.json is missing the field {name!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"config field {name!r} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"config field {name!r} must be >= {minimum}, got {value}")
    return value


def get_float(config: dict, name: str, default: Any = _MISSING) -> float:
    value = config.get(name, default)
    if value is _MISSING:
        raise ValueError(f"config.json is missing the field {name!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"config field {name!r} must be a positive number, got {value!r}")
    return float(value)


def get_bool(config: dict, name: str, default: Any = _MISSING) -> bool:
    value = config.get(name, default)
    if value is _MISSING:
        raise ValueError(f"config.json is missing the field {name!r}")
    if not isinstance(value, bool):
        raise ValueError(f"config field {name!r} must be true or false, got {value!r}")
    return value


def require(config: dict, name: str, allowed, default: Any = _MISSING) -> None:
    """Reject configs whose ``name`` selects a variant this package does not implement."""
    value = config.get(name, default)
    if value is _MISSING:
        return
    if value not in allowed:
        raise ValueError(f"config field {name!r}={value!r} is not supported (supported: {list(allowed)})")


def optional_int(config: dict, name: str):
    value = config.get(name)
    if value is None:
        return None
    if isinstance(value, list):  # some configs list several EOS ids; the first is the main one
        value = value[0] if value else None
        if value is None:
            return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"config field {name!r} must be a non-negative integer, got {value!r}")
    return value


def check_head_geometry(hidden: int, heads: int, kv_heads: int, head_dim: int) -> None:
    if heads % kv_heads:
        raise ValueError(f"the number of attention heads ({heads}) must be a multiple of the KV heads ({kv_heads})")
    if head_dim % 2:
        raise ValueError(f"the head dimension must be even for rotary embeddings, got {head_dim}")
