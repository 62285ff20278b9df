"""A service's route (``targets/base.RouteEntry``) as the objects the in-cluster router reads.

Pure. ``publish`` writes two objects per service; the router (``discovery.py``) reads them:

    ConfigMap S-route   route.json: serving generation, auth kind, limits, failure (no keys);
                        token-key.pem: the workspace's public key when tokens are used
                        (labels: managed-by modelfleet, the service, component "route")
    Secret    S-keys    primaryKey, secondaryKey (read by name: the router's Role lists it);
                        replicaSecret, which the router sends the service's pods
                        (``Upstream.secret``) and which ``publish`` carries over unchanged

The router watches the route ConfigMaps by label (RBAC may grant list/watch on ConfigMaps)
and reads each service's Secret by name, since RBAC can grant ``get`` on named Secrets but
cannot filter a list by label.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from modelfleet.errors import TargetError
from modelfleet.targets.base import RouteEntry
from modelfleet.targets.kubernetes.manifests import (
    COMPONENT_LABEL,
    MANAGED_BY,
    REPLICA_SECRET_KEY,
    SERVICE_LABEL,
    replica_secret_digest,
    secret_name,
    valid_replica_secret,
)

ROUTE_COMPONENT = "route"
ROUTE_KEY = "route.json"
TOKEN_KEY = "token-key.pem"
ROUTE_SELECTOR = ",".join(f"{k}={v}" for k, v in {**MANAGED_BY, COMPONENT_LABEL: ROUTE_COMPONENT}.items())

_SECRET_FIELDS = ("primary_key", "secondary_key")


def route_config_map_name(service: str) -> str:
    return f"{service}-route"


def route_labels(service: str) -> dict[str, str]:
    return {**MANAGED_BY, SERVICE_LABEL: service, COMPONENT_LABEL: ROUTE_COMPONENT}


def route_config_map(
    route: RouteEntry, namespace: str, token_key_pem: str | None = None, replica_secret: str | None = None
) -> dict[str, Any]:
    """The ConfigMap that carries everything of ``route`` but its keys."""
    data = {k: v for k, v in asdict(route).items() if k not in _SECRET_FIELDS}
    # A new key changes only the Secret, which the router cannot watch (RBAC: get by name);
    # a digest of the keys here makes the ConfigMap change too, so the router reads them again.
    data["keys_version"] = _keys_version(route, replica_secret)
    out = {ROUTE_KEY: json.dumps(data, sort_keys=True)}
    if token_key_pem and route.auth == "token":
        out[TOKEN_KEY] = token_key_pem
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": route_config_map_name(route.service),
            "namespace": namespace,
            "labels": route_labels(route.service),
        },
        "data": out,
    }


def keys_secret(route: RouteEntry, namespace: str, replica_secret: str | None = None) -> dict[str, Any]:
    """The service's Secret (the name and labels ``manifests.py`` gives it) with its keys and,
    given one, the secret its pods require (which must be the one they started with)."""
    keys = {"primaryKey": route.primary_key or "", "secondaryKey": route.secondary_key or ""}
    if replica_secret is not None:
        keys[REPLICA_SECRET_KEY] = replica_secret
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name(route.service),
            "namespace": namespace,
            "labels": {**MANAGED_BY, SERVICE_LABEL: route.service, COMPONENT_LABEL: "replica"},
        },
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()},
    }


def route_from(config_map: Mapping[str, Any], secret: Mapping[str, Any] | None) -> RouteEntry:
    """The route the two objects describe; ``secret`` may be None for a service without keys."""
    name = config_map.get("metadata", {}).get("name", "?")
    try:
        data = json.loads((config_map.get("data") or {})[ROUTE_KEY])
        data.pop("keys_version", None)
        keys: dict[str, Any] = {
            field: base64.b64decode(((secret or {}).get("data") or {}).get(key, "")).decode() or None
            for field, key in zip(_SECRET_FIELDS, ("primaryKey", "secondaryKey"), strict=True)
        }
        return RouteEntry(**data, **keys)
    except (KeyError, TypeError, ValueError) as exc:
        raise TargetError(f"ConfigMap {name}: {ROUTE_KEY} is missing or malformed ({exc})") from exc


def replica_secret_of(secret: Mapping[str, Any] | None) -> str | None:
    """The replica secret in a Secret as the API returns it (``data``, base64), or None when it
    has none; a value the replicas could not have been given is an error."""
    raw = ((secret or {}).get("data") or {}).get(REPLICA_SECRET_KEY)
    if raw is None:
        return None
    try:
        value = base64.b64decode(raw).decode("ascii")
    except (ValueError, UnicodeDecodeError) as exc:
        raise TargetError(f"Secret {REPLICA_SECRET_KEY} is not base64 ASCII ({exc})") from exc
    if not valid_replica_secret(value):
        raise TargetError(f"Secret {REPLICA_SECRET_KEY} must be 16-512 characters of visible ASCII")
    return value


def _keys_version(route: RouteEntry, replica_secret: str | None = None) -> str:
    keys = f"{route.primary_key or ''}\0{route.secondary_key or ''}".encode()
    if replica_secret is not None:  # a digest of a digest: nothing of the secret shows here
        keys += b"\0" + replica_secret_digest(replica_secret).encode()
    return hashlib.sha256(b"modelfleet-keys-version\0" + keys).hexdigest()[:16]


def token_key_of(config_map: Mapping[str, Any]) -> str | None:
    return (config_map.get("data") or {}).get(TOKEN_KEY)
