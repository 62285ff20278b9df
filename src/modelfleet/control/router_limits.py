"""The router's limits on what clients send, as `modelfleet cluster start` sets them: kept in the
workspace (like TLS), so that a daemon started later by a deploy uses them too.

Defaults, and why each, are in ``router.proxy.Router``'s docstring; checking the values is the
router's own (``Router.__init__`` names the field and the allowed range).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from modelfleet.errors import ConfigError
from modelfleet.store.registry import Store

SETTING = "router_limits"

__all__ = ["FLAGS", "RouterLimits", "load", "save"]


@dataclass(frozen=True)
class RouterLimits:
    max_header_bytes: int = 64 * 1024
    max_header_fields: int = 100
    header_timeout_s: float = 20.0
    keep_alive_timeout_s: float = 75.0
    send_timeout_s: float = 60.0

    def router_kwargs(self) -> dict[str, Any]:
        return asdict(self)


# CLI flag → field (`cluster start --router-max-header-bytes N ...`)
FLAGS = {f"router_{f.name}": f.name for f in fields(RouterLimits)}


def load(store: Store) -> RouterLimits:
    stored = store.get_setting(SETTING)
    if not stored:
        return RouterLimits()
    known = {f.name for f in fields(RouterLimits)}
    return RouterLimits(**{k: v for k, v in json.loads(stored).items() if k in known})


def save(store: Store, changes: dict[str, Any]) -> RouterLimits:
    """Store the current limits with ``changes`` applied; the router checks them first."""
    from modelfleet.router.proxy import Router

    limits = replace(load(store), **changes)
    try:
        Router(**limits.router_kwargs())  # its own checks: the field and the allowed range
    except ConfigError as exc:
        raise ConfigError(f"--router-{exc.message.replace('_', '-')}") from None
    store.set_setting(SETTING, json.dumps(asdict(limits)))
    return limits
