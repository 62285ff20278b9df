"""A service's tags, properties and description, and v1's ``Webservice.list`` filters.

These are metadata: changing them must not touch running replicas. A change of the stored
config bumps the service's generation, which the control plane answers by replacing every
replica; so metadata changes are recorded as ``metadata`` events of the service instead (the
newest one wins, and they go with the service when it is deleted). A service with no such
event has the values it was deployed with (its deploy settings).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelfleet.errors import ConfigError
from modelfleet.spec import DeploySpec
from modelfleet.store.registry import ServiceRecord, Store

METADATA_EVENT = "metadata"
METADATA_SETTINGS = ("tags", "properties", "description")


@dataclass(frozen=True)
class Metadata:
    tags: dict[str, str] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)
    description: str | None = None


def current(store: Store, record: ServiceRecord) -> Metadata:
    events = store.list_events(record.name, kind=METADATA_EVENT)
    return _from(events[-1] if events else None, record)


def current_of_all(
    store: Store, records: Iterable[ServiceRecord], specs: Mapping[str, DeploySpec] | None = None
) -> dict[str, Metadata]:
    """``current`` of many services, with one query; ``specs``: their deploy specs by name where
    the caller has parsed them already (``service list`` parses each once)."""
    latest = store.latest_events(METADATA_EVENT)
    return {r.name: _from(latest.get(r.name), r, (specs or {}).get(r.name)) for r in records}


def _from(latest: Mapping[str, Any] | None, record: ServiceRecord, spec: DeploySpec | None = None) -> Metadata:
    if latest is not None:
        return Metadata(dict(latest["tags"]), dict(latest["properties"]), latest["description"])
    if spec is None:
        spec = DeploySpec.from_dict(record.config["deploy"])
    return Metadata(dict(spec.tags or {}), dict(spec.properties or {}), spec.description)


def save(store: Store, name: str, meta: Metadata) -> None:
    store.add_event(
        name, METADATA_EVENT, {"tags": meta.tags, "properties": meta.properties, "description": meta.description}
    )


def key_list(keys: Any, what: str) -> list[str]:
    if isinstance(keys, str) or not isinstance(keys, Iterable):
        raise ConfigError(f"{what} takes a list of keys (got {keys!r}); e.g. remove_tags(['stage'])")
    out = list(keys)
    for key in out:
        if not isinstance(key, str):
            raise ConfigError(f"{what} takes a list of string keys (got {key!r})")
    return out


Condition = tuple[str, str | None]


def conditions(items: Sequence[Any] | None, what: str) -> list[Condition]:
    """v1's filter form: each item is ``"key"`` (the key is present) or ``["key", "value"]``."""
    if items is None:
        return []
    if isinstance(items, str | Mapping) or not isinstance(items, Sequence):
        raise ConfigError(
            f'{what} must be a list whose items are "key" or ["key", "value"] (got {items!r}); '
            f'for example {what}=["stage", ["team", "vision"]]'
        )
    out: list[Condition] = []
    for item in items:
        if isinstance(item, str):
            out.append((item, None))
        elif isinstance(item, list | tuple) and len(item) == 2 and all(isinstance(x, str) for x in item):
            out.append((item[0], item[1]))
        else:
            raise ConfigError(
                f'each {what} filter must be "key" or ["key", "value"] (got {item!r}); '
                f'for example {what}=["stage", ["team", "vision"]]'
            )
    return out


def matches(values: Mapping[str, str], conds: list[Condition]) -> bool:
    """Every condition holds (v1 combined them with AND)."""
    return all(key in values and (want is None or values[key] == want) for key, want in conds)
