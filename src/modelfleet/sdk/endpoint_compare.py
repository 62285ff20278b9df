"""An endpoint's versions compared, safe rollouts requested, and the endpoint's events.

``endpoint.compare("blue", "green")``: each version's requests, errors (5xx answers), error
rate and p50/p99 latency in milliseconds, from the running cluster's router counters of each
version's service (the admin API's status, ``service_counts``). The window is the version's
life in the running router: since the cluster started or the version was published, whichever
is later (a restart starts the counts again). p50/p99 are estimated from the latency
histogram (``control/rollout.quantile``). Where one version mirrors the other and the router
reports mirror figures for it, ``agreement`` says how often their answers agreed.

``endpoint.update_version("green", rollout={...})`` writes a rollout request into the
endpoint's config and asks the daemon to sync the endpoint; the daemon runs it
(``control/rollouts.py``). Refused before anything is written: a bad spec (naming the field),
a share or default change in the same call, the default version, steps that do not fit the
other versions' shares, a stopped cluster, a rollout already running on the endpoint.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from modelfleet.control.rollout import Counts, check_steps, figures, parse_rollout
from modelfleet.errors import ClusterUnavailable, ConfigError, Conflict
from modelfleet.spec.names import version_service_name
from modelfleet.store.endpoints import ENDPOINT_KEY

if TYPE_CHECKING:
    from modelfleet.sdk.workspace_base import WorkspaceBase

__all__ = ["compare", "events", "request_rollout"]


def _status(workspace: WorkspaceBase, what: str) -> dict[str, Any]:
    cluster = workspace.cluster()
    if cluster.info() is None:
        raise ClusterUnavailable(
            f"{what} needs the running local cluster (its router's counters); start it with `modelfleet cluster start`"
        )
    return cluster.status()


def compare(workspace: WorkspaceBase, endpoint: str, versions: Mapping[str, Any], a: str, b: str) -> dict[str, Any]:
    for field, name in (("version a", a), ("version b", b)):
        if name not in versions:
            raise ConfigError(f"{field}: no version {name!r} (versions: {', '.join(sorted(versions))})")
    status = _status(workspace, "compare")
    counts = status.get("service_counts") or {}
    out: dict[str, Any] = {"endpoint": endpoint, "window": "since the cluster started or the version was published"}
    figures_by_version: dict[str, Any] = {}
    for name in (a, b):
        raw = counts.get(version_service_name(endpoint, name))
        seen = figures(Counts.from_json(raw)) if raw else figures(Counts({}, ()))
        figures_by_version[name] = {**seen.to_json(), "traffic_percentile": versions[name].get("traffic_percentile")}
    out["versions"] = figures_by_version
    out["agreement"] = _agreement(status, endpoint, a, b)
    return out


def _agreement(status: Mapping[str, Any], endpoint: str, a: str, b: str) -> dict[str, Any] | None:
    """How often a mirror's answers agreed with the primary's (same status and body hash), when
    one of the two versions is a mirror: the router's per-version figures under the endpoint
    (``router/versions.version_figures``); else None. ``compared`` counts the copies sent that
    ended (agreed + disagreed); ``dropped`` the ones never sent (no free slot)."""
    entry = (status.get("router") or {}).get(endpoint) or {}
    per_version = (entry.get("endpoint") or {}).get("versions") if isinstance(entry, Mapping) else None
    if not isinstance(per_version, Mapping):
        return None
    for mirror in (b, a):
        stats = per_version.get(mirror)
        m = stats.get("mirror") if isinstance(stats, Mapping) else None
        if isinstance(m, Mapping):
            agreed, disagreed = int(m.get("agreed", 0)), int(m.get("disagreed", 0))
            total = agreed + disagreed
            return {
                "mirror": mirror,
                "sent": int(m.get("sent", 0)),
                "dropped": int(m.get("dropped", 0)),
                "compared": total,
                "agreed": agreed,
                "agreement": agreed / total if total else None,
            }
    return None


def request_rollout(
    workspace: WorkspaceBase, endpoint: str, config: Mapping[str, Any], version: str, raw: Any
) -> dict[str, Any]:
    """Check the rollout and store its request; the new endpoint config (to be written and
    synced by the caller)."""
    spec = parse_rollout(raw)
    versions = config[ENDPOINT_KEY]["versions"]
    check_steps(versions, version, spec)
    status = _status(workspace, "a rollout (it runs in the cluster's daemon)")
    running = (status.get("rollouts") or {}).get(endpoint)
    if running is not None:
        raise Conflict(
            f"endpoint {endpoint} has a rollout running ({running}); wait for it to end (endpoint.get_events()) "
            "or cancel it by setting the version's share by hand"
        )
    rollout = {
        "id": uuid.uuid4().hex[:12],
        "version": version,
        "spec": spec.to_dict(),
        "before": {n: dict(v) for n, v in versions.items()},
        "status": "requested",
        "requested_at": time.time(),
    }
    return {**config, ENDPOINT_KEY: {**config[ENDPOINT_KEY], "rollout": rollout}}


def events(workspace: WorkspaceBase, endpoint: str) -> list[dict[str, Any]]:
    """The endpoint's rollout events, oldest first: time, event (started, step, hold, passed,
    rolled_back, cancelled, failed, completed), version, rollout id and the figures or reason."""
    # imported here: control.rollouts loads the router (and jwt); `service list` needs neither
    from modelfleet.control.rollouts import ROLLOUT_EVENT

    return workspace.store.list_events(endpoint, kind=ROLLOUT_EVENT)
