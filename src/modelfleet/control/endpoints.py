"""An endpoint's route and versions, as the reconciler keeps them (``store/endpoints.py``).

An endpoint has no replicas of its own: each of its versions is a service (``<endpoint>:<version>``)
that the reconciler runs like any other. Syncing an endpoint publishes its route (auth, keys,
body limit, each version's share: ``targets/endpoints.EndpointEntry``) and syncs its versions'
services; a version no longer listed is deleted (drained, then stopped). The router re-weighs
by itself as the versions' replicas become Ready or fail (``router/versions.py``). The
endpoint's stored state follows its versions' (``write_endpoint_state``), so that every reader
of the workspace (``service list``, the dashboard) sees what ``AksEndpoint.state`` says.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from modelfleet.errors import NotFound
from modelfleet.spec.names import VERSION_SEPARATOR, version_service_name
from modelfleet.store.endpoints import ENDPOINT_KEY, default_version, endpoint_state, is_endpoint_config
from modelfleet.store.registry import ServiceRecord, Store
from modelfleet.targets.base import RouteEntry
from modelfleet.targets.endpoints import EndpointEntry, VersionShare

__all__ = ["endpoint_entry", "stale_versions", "version_services", "write_endpoint_state"]


def version_services(record: ServiceRecord) -> list[str]:
    """The internal service names of the endpoint's versions."""
    return [version_service_name(record.name, v) for v in record.config[ENDPOINT_KEY]["versions"]]


def endpoint_entry(record: ServiceRecord, route: RouteEntry) -> EndpointEntry:
    """The endpoint's line in the router's table: ``route`` (its auth, keys and limits, as a
    service's) with its versions."""
    versions = tuple(
        VersionShare(
            name=name,
            service=version_service_name(record.name, name),
            traffic_percentile=float(v.get("traffic_percentile", 0.0)),
            is_default=bool(v.get("is_default")),
            mirror_percentile=float(v.get("mirror_percentile", 0.0)),
        )
        for name, v in sorted(record.config[ENDPOINT_KEY]["versions"].items())
    )
    fields = {f.name: getattr(route, f.name) for f in dataclasses.fields(route)}
    return EndpointEntry(**fields, versions=versions)


def stale_versions(running: Iterable[str], record: ServiceRecord) -> list[str]:
    """Of the services ``running``, the endpoint's versions it no longer lists."""
    prefix = record.name + VERSION_SEPARATOR
    keep = set(version_services(record))
    return [name for name in running if name.startswith(prefix) and name not in keep]


def write_endpoint_state(store: Store, endpoint: str) -> None:
    """Store the endpoint's state as its versions' states make it (``store/endpoints.py``);
    blocking (run in a thread). Nothing when the endpoint or a version is gone meanwhile."""
    try:
        record = store.get_service(endpoint)
        if not is_endpoint_config(record.config):
            return
        versions = record.config[ENDPOINT_KEY]["versions"]
        states = {v: store.get_service(version_service_name(endpoint, v)).state for v in versions}
    except NotFound:
        return
    state = endpoint_state(states, default_version(versions))
    detail = ", ".join(f"{v} {s}" for v, s in sorted(states.items()))
    if (record.state, record.detail) != (state, detail):
        store.set_service_state(endpoint, state, detail)
