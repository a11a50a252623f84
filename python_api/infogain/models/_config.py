"""Reading config.json fields with errors that name the field.

A bad field is a ``ValueError`` (a bad file, not a bad call), also where the package's argument
checks would raise ``TypeError``.
"""
from __future__ import annotations

from typing import Any

from infogain_kernels._validation import check_int

_MISSING = object()


def _field(config: dict, name: str, default: Any):
    """The field ``name``, else ``default``; a field without a default is required."""
    value = config.get(name, default)
    if value is _MISSING:
        raise ValueError(f"config.json is missing the field {name!r}")
    return value


def _config_int(name: str, value, minimum: int) -> int:
    """``value`` of the config field ``name`` checked by the package's int check."""
    try:
        return check_int(f"config field {name!r}", value, minimum)
    except TypeError as exc:
        raise ValueError(f"{exc} ({value!r})") from None


def get_int(config: dict, name: str, default: Any = _MISSING) -> int:
    """The positive int field ``name`` (``default`` when absent; without one, it is required)."""
    value = _field(config, name, default)
    return _config_int(name, value, 1)


def get_float(config: dict, name: str, default: Any = _MISSING) -> float:
    value = _field(config, name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"config field {name!r} must be a positive number, got {value!r}")
    return float(value)


def get_bool(config: dict, name: str, default: Any = _MISSING) -> bool:
    value = _field(config, name, default)
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
    """The non-negative int field ``name``, or None when absent or null."""
    value = config.get(name)
    if value is None:
        return None
    if isinstance(value, list):  # some configs list several EOS ids; the first is the main one
        value = value[0] if value else None
        if value is None:
            return None
    return _config_int(name, value, 0)


def check_head_geometry(hidden: int, heads: int, kv_heads: int, head_dim: int) -> None:
    if heads % kv_heads:
        raise ValueError(f"the number of attention heads ({heads}) must be a multiple of the KV heads ({kv_heads})")
    if head_dim % 2:
        raise ValueError(f"the head dimension must be even for rotary embeddings, got {head_dim}")
