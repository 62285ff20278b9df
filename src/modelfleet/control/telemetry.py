"""The daemon's observability, composed: the Prometheus endpoint and the request tracer.

``ClusterTelemetry`` wires ``telemetry/metrics.py`` to the live router, reconciler and
replica stats files, and gives the router its ``Tracer`` (``telemetry/tracing.py``). The
metrics endpoint serves on the daemon's event loop (the router's), so reading the router's
counters needs no lock; it binds 127.0.0.1 unless ``cluster start --metrics-host`` says
otherwise, and asks for no credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from modelfleet.control.reconcile import Reconciler
from modelfleet.router.proxy import Router
from modelfleet.targets.local import stats_path
from modelfleet.telemetry.metrics import FleetCollector, MetricsServer, ReplicaView, ServiceView, registry_for
from modelfleet.telemetry.tracing import Tracer, make_exporter

__all__ = ["METRICS_PORT_SETTING", "ClusterTelemetry"]

METRICS_PORT_SETTING = "metrics_port"


class ClusterTelemetry:
    def __init__(self, router: Router, reconciler: Reconciler, runtime_dir: Path, otlp_endpoint: str | None) -> None:
        self.router = router
        self.reconciler = reconciler
        self.services_dir = runtime_dir / "services"
        self.exporter = make_exporter(otlp_endpoint, self.services_dir)
        self.tracer = Tracer(self.exporter)
        router.tracer = self.tracer
        collector = FleetCollector(self.views, router.unrouted, lambda: self.tracer.dropped)
        self.server = MetricsServer(registry_for(collector))

    def __repr__(self) -> str:
        return f"<ClusterTelemetry metrics_port={self.server.port} {self.tracer!r}>"

    async def start(self, host: str, port: int) -> int:
        """Start the tracer's thread and the metrics endpoint; returns the bound port."""
        self.tracer.start()
        return await self.server.start(host, port)

    async def stop(self) -> None:
        await self.server.stop()
        await asyncio.to_thread(self.tracer.stop)
        self.exporter.close()

    def replica_reports(self, service: str) -> list[dict[str, Any]]:
        """The stats files of the service's Ready replicas, those that have one (the
        autoscaler's view of a batching service: router/autoscale.batch_counts)."""
        # router.stats(), not the daemon's own dispatch: with router workers it is every
        # process's view, by replica (a partitioned worker's dispatch holds slots "<id>#<k>")
        stats = self.router.stats().get(service)
        if stats is None:
            return []
        run_dir = self.services_dir / service / "run"
        out = []
        for replica_id, replica in stats["replicas"].items():
            if replica["ready"]:
                with contextlib.suppress(OSError, ValueError):
                    data = json.loads(stats_path(run_dir, replica_id).read_text())
                    if isinstance(data, dict):
                        out.append(data)
        return out

    def views(self) -> list[ServiceView]:
        """Every routed service's numbers, now (runs on the event loop, on scrape)."""
        out = []
        every = self.router.stats()  # all router processes' figures, by replica (replica_reports)
        for svc in list(self.router.services.values()):
            name = svc.route.name
            stats = every.get(name)
            if stats is None:
                continue
            by_replica = stats["replicas"]
            controller = self.reconciler.controllers.get(name)
            infos = controller.replicas() if controller is not None else []
            run_dir = self.services_dir / name / "run"
            replicas = [
                ReplicaView(
                    id=r.id,
                    in_flight=by_replica[r.id]["in_flight"] if r.id in by_replica else 0,
                    restarts=r.restarts,
                    stats_file=stats_path(run_dir, r.id),
                )
                for r in infos
            ]
            out.append(
                ServiceView(
                    name=name,
                    metrics=svc.metrics,
                    in_flight=stats["in_flight"],
                    queued=stats["queued"],
                    ready=sum(1 for r in by_replica.values() if r["ready"]),
                    limit=stats["limit"],
                    scale_events=controller.scale_events if controller is not None else 0,
                    replicas=replicas,
                )
            )
        return out
