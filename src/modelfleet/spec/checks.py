"""Value checks shared by the spec types: each names the field, the allowed range and the value."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from modelfleet.errors import ConfigError

DEFAULT_MAX_BODY_BYTES = 100 * 1024 * 1024
COMPUTE_TYPES = ("aks", "kubernetes", "local")

# Kubernetes namespace (RFC 1123 label), as v1 documents it.
_NAMESPACE_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_PYTHON_VERSION_RE = re.compile(r"\d+(\.\d+){0,2}")


# --------------------------------------------------------------------------- value checks


def _kind(v: object) -> str:
    return f"{type(v).__name__} {v!r}"


def _int(name: str, v: object, lo: int, hi: int | None = None) -> int:
    # bool is an int subclass; True where a count belongs is a mistake, not 1.
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{name} must be an integer (got {_kind(v)})")
    if hi is not None and not lo <= v <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi} (got {v})")
    if v < lo:
        raise ConfigError(f"{name} must be at least {lo} (got {v})")
    return v


def _positive(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{name} must be a number (got {_kind(v)})")
    if not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{name} must be greater than 0 (got {v})")
    return float(v)


def _bool(name: str, v: object) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{name} must be true or false (got {_kind(v)})")
    return v


def _opt_str(name: str, v: object) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{name} must be a non-empty string or None (got {_kind(v)})")
    return v


def _str_map(name: str, v: object) -> dict[str, str]:
    if not isinstance(v, Mapping):
        raise ConfigError(f"{name} must be a dict of strings to strings (got {_kind(v)})")
    for k, val in v.items():
        if not isinstance(k, str) or not isinstance(val, str):
            raise ConfigError(f"{name} must map strings to strings (got {k!r}: {_kind(val)})")
    return dict(v)


def _str_tuple(name: str, v: object) -> tuple[str, ...]:
    if isinstance(v, str) or not isinstance(v, Iterable):
        raise ConfigError(f"{name} must be a list of strings (got {_kind(v)})")
    items = tuple(v)
    for item in items:
        if not isinstance(item, str) or not item.strip() or "\n" in item:
            raise ConfigError(f"{name} entries must be non-empty one-line strings (got {_kind(item)})")
    return items


def _check_keys(where: str, d: object, known: Iterable[str]) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where} must be an object (got {_kind(d)})")
    known = list(known)
    for key in d:
        if key not in known:
            raise ConfigError(f"unknown key {key!r} in {where}; known keys: {', '.join(known)}")
    return d
