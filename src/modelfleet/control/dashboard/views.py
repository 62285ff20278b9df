"""What the dashboard's JSON endpoints answer, built from the live cluster and the workspace.

The ``Sampler`` runs once a second on the daemon's event loop (the thread that owns the
router's counters, so no lock is needed) and appends one ``Sample`` per routed service to
its ``History`` (``ring.py``). The page's figures come from those rings; the service list,
states, configuration and events come from the workspace (read in a thread, since SQLite
blocks), the replicas from the reconciler.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from modelfleet import envs
from modelfleet.control.dashboard.ring import History, Sample, percentile, summarize
from modelfleet.control.environments import settings_for, usage
from modelfleet.control.reconcile import Reconciler
from modelfleet.router.proxy import Router
from modelfleet.router.versions import EndpointState, version_figures
from modelfleet.spec.names import VERSION_SEPARATOR
from modelfleet.store.registry import Store
from modelfleet.targets.local import stats_path
from modelfleet.telemetry.counters import LATENCY_BUCKETS

__all__ = ["Sampler", "environments", "models", "overview", "service_detail"]

log = logging.getLogger("modelfleet.dashboard")

MINUTE = 60.0


class Sampler:
    """Per-service histories, fed from the router's counters once a second."""

    def __init__(self, router: Router, reconciler: Reconciler) -> None:
        self.router = router
        self.reconciler = reconciler
        self.histories: dict[str, History] = {}

    def __repr__(self) -> str:
        return f"<Sampler services={sorted(self.histories)}>"

    def tick(self, now: float) -> None:
        """Take one sample of every routed service (``now``: epoch seconds)."""
        seen = set()
        every = self.router.gauges()  # all router processes' figures (router workers)
        controllers = self.reconciler.controllers
        histories = self.histories
        for svc in list(self.router.services.values()):
            name = svc.route.name
            gauges = every.get(name)
            if gauges is None:
                continue
            seen.add(name)
            in_flight, queued, limit, ready = gauges
            controller = controllers.get(name)
            history = histories.get(name)
            if history is None:
                history = histories[name] = History()
            history.record(
                now,
                svc.metrics.codes,
                svc.metrics.buckets,
                in_flight=in_flight,
                queued=queued,
                ready=ready,
                desired=controller.replica_count if controller is not None else ready,
                limit=limit,
            )
        if len(seen) != len(histories):
            for gone in [n for n in histories if n not in seen]:
                del histories[gone]

    async def run(self, clock: Any) -> None:
        """Sample every second until cancelled (``clock``: ``time.time``)."""
        while True:
            try:
                self.tick(clock())
            except Exception:  # the dashboard must never take the daemon down
                log.exception("dashboard sample failed")
            await asyncio.sleep(1.0)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _last_minute(history: History | None, now: float) -> dict[str, Any]:
    samples = history.since(now - MINUTE) if history is not None else []
    s = summarize(samples, LATENCY_BUCKETS, MINUTE)
    return {
        "requests_per_s": round(s.requests_per_s, 3),
        "error_rate": None if s.error_rate is None else round(s.error_rate, 4),
        "p50_ms": _ms(s.p50_s),
        "p99_ms": _ms(s.p99_s),
        "utilization": round(s.utilization, 4),
    }


def _scaling(config: dict[str, Any]) -> dict[str, Any]:
    deploy = config.get("deploy", {})
    autoscale = deploy.get("autoscale", {})
    return {
        "autoscale": bool(autoscale.get("enabled")),
        "min_replicas": autoscale.get("min_replicas"),
        "max_replicas": autoscale.get("max_replicas"),
        "target_utilization": autoscale.get("target_utilization"),
        "num_replicas": deploy.get("num_replicas"),
    }


def _row(sampler: Sampler, record: Any, now: float) -> dict[str, Any]:
    history = sampler.histories.get(record.name)
    last: Sample | None = history.last if history is not None else None
    controller = sampler.reconciler.controllers.get(record.name)
    endpoint, sep, version = record.name.partition(VERSION_SEPARATOR)
    return {
        "name": record.name,
        "endpoint": endpoint if sep else None,  # an endpoint's version runs as "<endpoint>:<version>"
        "version": version if sep else None,
        "state": record.state,
        "detail": record.detail,
        "ready": last.ready if last is not None else 0,
        "desired": controller.replica_count if controller is not None else 0,
        "in_flight": last.in_flight if last is not None else 0,
        "queued": last.queued if last is not None else 0,
        "utilization_now": round(last.utilization, 4) if last is not None else 0.0,
        "last_minute": _last_minute(history, now),
        **_scaling(record.config),
    }


async def overview(sampler: Sampler, store: Store, now: float) -> dict[str, Any]:
    """Every service with its state, replicas and last-minute figures."""
    records = await asyncio.to_thread(store.list_services)
    # sorted by name, a version (``fraud:blue``) comes right after its endpoint (``fraud``)
    return {"time": now, "services": [_row(sampler, r, now) for r in sorted(records, key=lambda r: r.name)]}


def series(samples: list[Sample]) -> dict[str, list[Any]]:
    """Column arrays for the charts (uPlot's data layout: one array per series)."""
    return {
        "time": [s.time for s in samples],
        "ok": [s.ok for s in samples],
        "client_errors": [s.client_errors for s in samples],
        "server_errors": [s.server_errors for s in samples],
        "unavailable": [s.unavailable for s in samples],
        "p50_ms": [_ms(percentile(s.buckets, LATENCY_BUCKETS, 0.5)) for s in samples],
        "p99_ms": [_ms(percentile(s.buckets, LATENCY_BUCKETS, 0.99)) for s in samples],
        "ready": [s.ready for s in samples],
        "desired": [s.desired for s in samples],
        "queued": [s.queued for s in samples],
        "in_flight": [s.in_flight for s in samples],
    }


async def service_detail(sampler: Sampler, store: Store, name: str, now: float, since: float) -> dict[str, Any]:
    """One service: its row, chart series and scale events after ``since``, replicas,
    configuration (no keys) and collected-data counts. Raises NotFound for an unknown name."""
    record = await asyncio.to_thread(store.get_service, name)
    events = await asyncio.to_thread(store.list_events, name, "scale", since)
    history = sampler.histories.get(name)
    controller = sampler.reconciler.controllers.get(name)
    replicas = controller.replicas() if controller is not None else []
    run_dir = Path(store.runtime_dir) / "services" / name / "run"
    collected = await asyncio.to_thread(_collected, [stats_path(run_dir, r.id) for r in replicas])
    deploy = dict(record.config.get("deploy", {}))
    front = sampler.router.services.get(name.encode())
    endpoint = front.endpoint if front is not None else None
    return {
        **_row(sampler, record, now),
        # an endpoint: its versions' figures since the router set them (router/versions.py)
        "versions": version_figures(endpoint)["versions"] if isinstance(endpoint, EndpointState) else None,
        "series": series(history.since(since) if history is not None else []),
        "scale_events": [{k: e.get(k) for k in ("time", "from", "to", "reason", "utilization")} for e in events],
        "replicas": [{**r.as_dict(), "collected": c} for r, c in zip(replicas, collected, strict=True)],
        "config": {
            "deploy": deploy,
            "models": record.config.get("models", []),
            "generation": record.generation,
            "serving_generation": record.serving_generation,
        },
    }


def _collected(paths: list[Path]) -> list[dict[str, int]]:
    """Each replica's model data collection counters (``telemetry/collect.py``'s stats file)."""
    out = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        out.append({k: int(data.get(k, 0)) for k in ("records", "written", "dropped")})
    return out


def environments(store: Store) -> list[dict[str, Any]]:
    """The workspace's cached environments with their hash, packages and users (blocking)."""
    used = usage(store)
    rows = []
    for env in envs.list_cached(settings_for(store).workspace_cache, "workspace"):
        meta = env.metadata
        rows.append(
            {
                "hash": env.hash,
                "name": env.name,
                "python": meta.get("python"),
                "packages": list(meta.get("installed", [])),
                "requirements": meta.get("canonical", {}).get("requirements", []),
                "used_by": sorted(used.get(env.hash, [])),
            }
        )
    return rows


def models(store: Store) -> list[dict[str, Any]]:
    """Registered models, every version (blocking)."""
    return [
        {
            "name": m.name,
            "version": m.version,
            "tags": m.tags,
            "description": m.description,
            "created_time": m.created_time,
            "files": len(m.files),
        }
        for m in store.list_models()
    ]
