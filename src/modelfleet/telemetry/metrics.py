"""The Prometheus endpoint: every metric's name, labels and help text, built on scrape.

Nothing here runs per request. The router counts into plain ints (``telemetry/counters.py``)
and keeps its gauges in the dispatcher; a scrape of ``GET /metrics`` calls ``collect()`` on
the daemon's event loop, the thread that owns those numbers, and turns them into metric
families. prometheus-client is used for the families and the text format only.

Metrics (``service`` label on all but the first; counters end in ``_total``):

=========================================  =========  =====================================
``modelfleet_unrouted_requests_total``     counter    answers outside any service (``code``)
``modelfleet_requests_total``              counter    answers by HTTP status (``code``)
``modelfleet_request_duration_seconds``    histogram  arrival to last byte, requests that
                                                      went to the dispatcher
``modelfleet_requests_in_flight``          gauge      on a replica now
``modelfleet_requests_queued``             gauge      waiting for a replica now
``modelfleet_replicas``                    gauge      replicas taking requests (Ready)
``modelfleet_utilization_ratio``           gauge      (in flight + queued) / (replicas x
                                                      replica_max_concurrent_requests)
``modelfleet_scale_events_total``          counter    replica count changes decided
``modelfleet_auth_failures_total``         counter    401s (``reason``: missing|invalid)
``modelfleet_router_dropped_total``        counter    requests dropped while queued, never
                                                      sent (``reason``: deadline|client_gone)
``modelfleet_replica_requests_in_flight``  gauge      per ``replica``
``modelfleet_replica_restarts_total``      counter    per ``replica``
``modelfleet_data_records_total``          counter    collected records accepted, per ``replica``
``modelfleet_data_records_written_total``  counter    ... written to the workspace
``modelfleet_data_records_dropped_total``  counter    ... dropped (buffer full, write failed)
``modelfleet_log_lines_dropped_total``     counter    replica log lines not written (disk
                                                      full), per ``replica``
``modelfleet_trace_dropped_total``         counter    request timings dropped (router-wide)
``modelfleet_replica_batch_size``          histogram  requests per run_batch() call, per
                                                      ``replica`` (dynamic batching only)
``modelfleet_replica_batch_calls_busy``    gauge      run_batch() calls running, per ``replica``
``modelfleet_replica_batch_deadline_``     counter    batched requests left out (504) at their
``expired_total``                                     x-request-timeout-ms, per ``replica``
``modelfleet_version_requests_total``      counter    an endpoint's version's answers by
                                                      HTTP status (``endpoint``, ``version``,
                                                      ``code``)
``modelfleet_version_request_duration_``   histogram  ... arrival to last byte
``seconds``                                           (``endpoint``, ``version``)
``modelfleet_mirror_copies_total``         counter    a mirror version's copies (``endpoint``,
                                                      ``version``, ``outcome``: sent|dropped|
                                                      agreed|disagreed|error)
``modelfleet_mirror_duration_seconds``     histogram  a copy's send to last byte
=========================================  =========  =====================================

An endpoint's version runs as the service ``<endpoint>:<version>``: its ``service`` series
carry that name, and the ``modelfleet_version_*`` families repeat its requests and latency
with ``endpoint`` and ``version`` labels of their own, so that a query can group or compare
versions (``sum by (version) (rate(modelfleet_version_requests_total{endpoint="fraud"}[5m]))``)
without parsing the service name. Mirrored copies are also requests of the mirror version.

Per-replica counters restart at 0 with the replica process, as any process's counters do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from modelfleet.telemetry.counters import LATENCY_BUCKETS, ServiceMetrics

__all__ = ["CONTENT_TYPE", "FleetCollector", "MetricsServer", "ReplicaView", "ServiceView", "registry_for"]

log = logging.getLogger("modelfleet.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class ReplicaView:
    """One replica as the metrics see it."""

    id: str
    in_flight: int = 0
    restarts: int = 0
    stats_file: Path | None = None  # the replica's collection counters (telemetry/collect.py)


@dataclass
class ServiceView:
    """One service's numbers at scrape time (the composition root fills it)."""

    name: str
    metrics: ServiceMetrics
    in_flight: int = 0
    queued: int = 0
    ready: int = 0
    limit: int = 1
    scale_events: int = 0
    replicas: list[ReplicaView] = field(default_factory=list)

    @property
    def utilization(self) -> float:
        capacity = self.ready * self.limit
        busy = self.in_flight + self.queued
        return busy / capacity if capacity else float(busy)  # none Ready: anything waiting counts whole


class FleetCollector(Collector):
    """Builds every family from ``services()`` (fresh views per scrape) and the router-wide
    ``unrouted`` counters."""

    def __init__(
        self,
        services: Callable[[], Iterable[ServiceView]],
        unrouted: ServiceMetrics,
        trace_dropped: Callable[[], int] = lambda: 0,
    ) -> None:
        self._services = services
        self._unrouted = unrouted
        self._trace_dropped = trace_dropped

    def collect(self) -> Iterator[Metric]:
        unrouted = CounterMetricFamily(
            "modelfleet_unrouted_requests",
            "Answers to requests outside any service (health, unknown names)",
            labels=["code"],
        )
        for code, n in sorted(self._unrouted.codes.items()):
            unrouted.add_metric([str(code)], n)
        yield unrouted

        S = ["service"]
        requests = CounterMetricFamily("modelfleet_requests", "Answers by HTTP status code", labels=["service", "code"])
        duration = HistogramMetricFamily(
            "modelfleet_request_duration_seconds",
            "Time from arrival at the router to the answer's last byte (requests given to a replica or queued)",
            labels=S,
        )
        in_flight = GaugeMetricFamily("modelfleet_requests_in_flight", "Requests on a replica now", labels=S)
        queued = GaugeMetricFamily("modelfleet_requests_queued", "Requests waiting for a replica now", labels=S)
        replicas = GaugeMetricFamily("modelfleet_replicas", "Replicas taking requests (Ready)", labels=S)
        utilization = GaugeMetricFamily(
            "modelfleet_utilization_ratio",
            "(in flight + queued) / (replicas x replica_max_concurrent_requests); 1.0 is full",
            labels=S,
        )
        scale = CounterMetricFamily("modelfleet_scale_events", "Replica count changes decided", labels=S)
        auth = CounterMetricFamily(
            "modelfleet_auth_failures", "Requests refused with 401", labels=["service", "reason"]
        )
        r_flight = GaugeMetricFamily(
            "modelfleet_replica_requests_in_flight", "Requests on this replica now", labels=["service", "replica"]
        )
        r_restarts = CounterMetricFamily(
            "modelfleet_replica_restarts", "Times this replica was restarted", labels=["service", "replica"]
        )
        data = {
            kind: CounterMetricFamily(f"modelfleet_data_records{suffix}", text, labels=["service", "replica"])
            for kind, suffix, text in (
                ("records", "", "Collected model data records accepted"),
                ("written", "_written", "Collected model data records written to the workspace"),
                ("dropped", "_dropped", "Collected model data records dropped (buffer full or write failed)"),
            )
        }
        log_dropped = CounterMetricFamily(
            "modelfleet_log_lines_dropped",
            "Replica log lines that could not be written (disk full)",
            labels=["service", "replica"],
        )
        dropped = CounterMetricFamily(
            "modelfleet_router_dropped",
            "Requests dropped while queued in the router, never sent to a replica (reason: deadline, client_gone)",
            labels=["service", "reason"],
        )
        labels = ["service", "replica"]
        batch_size = HistogramMetricFamily(
            "modelfleet_replica_batch_size", "Requests per run_batch() call (dynamic batching)", labels=labels
        )
        batch_busy = GaugeMetricFamily(
            "modelfleet_replica_batch_calls_busy", "run_batch() calls running on this replica now", labels=labels
        )
        batch_expired = CounterMetricFamily(
            "modelfleet_replica_batch_deadline_expired",
            "Batched requests left out of their batch (504): x-request-timeout-ms passed first",
            labels=labels,
        )
        EV = ["endpoint", "version"]
        v_requests = CounterMetricFamily(
            "modelfleet_version_requests", "Answers by an endpoint's version, by HTTP status", labels=[*EV, "code"]
        )
        v_duration = HistogramMetricFamily(
            "modelfleet_version_request_duration_seconds",
            "An endpoint's version: time from arrival at the router to the answer's last byte",
            labels=EV,
        )
        copies = CounterMetricFamily(
            "modelfleet_mirror_copies",
            "A mirror version's copies of requests (sent, dropped: no free slot; agreed, disagreed with "
            "the primary's status and body; error: 5xx or no answer)",
            labels=[*EV, "outcome"],
        )
        copy_duration = HistogramMetricFamily(
            "modelfleet_mirror_duration_seconds",
            "A mirrored copy: from sending it to its answer's last byte",
            labels=EV,
        )
        for view in self._services():
            name = view.name
            m = view.metrics
            endpoint, sep, version = name.partition(":")
            for code, n in sorted(m.codes.items()):
                requests.add_metric([name, str(code)], n)
                if sep:
                    v_requests.add_metric([endpoint, version, str(code)], n)
            buckets = _cumulative(m.buckets)
            duration.add_metric([name], buckets, m.seconds)
            if sep:
                v_duration.add_metric([endpoint, version], buckets, m.seconds)
                mc = m.mirror
                if mc is not None:
                    for outcome, n in (
                        ("sent", mc.sent),
                        ("dropped", mc.dropped),
                        ("agreed", mc.agreed),
                        ("disagreed", mc.disagreed),
                        ("error", mc.errors),
                    ):
                        copies.add_metric([endpoint, version, outcome], n)
                    copy_duration.add_metric([endpoint, version], _cumulative(mc.buckets), mc.seconds)
            in_flight.add_metric([name], view.in_flight)
            queued.add_metric([name], view.queued)
            replicas.add_metric([name], view.ready)
            utilization.add_metric([name], round(view.utilization, 6))
            scale.add_metric([name], view.scale_events)
            auth.add_metric([name, "missing"], m.auth_missing)
            auth.add_metric([name, "invalid"], m.auth_invalid)
            for reason, n in sorted({"deadline": 0, "client_gone": 0, **m.dropped}.items()):
                dropped.add_metric([name, reason], n)
            for r in view.replicas:
                r_flight.add_metric([name, r.id], r.in_flight)
                r_restarts.add_metric([name, r.id], r.restarts)
                stats = _read_stats(r.stats_file)
                if stats is not None:
                    for kind, family in data.items():
                        family.add_metric([name, r.id], int(stats.get(kind, 0)))
                    log_dropped.add_metric([name, r.id], int(stats.get("log_lines_dropped", 0)))
                    if "batch_size_buckets" in stats:  # a batching replica (replica/batching.py)
                        batch_size.add_metric([name, r.id], *_batch_buckets(stats))
                        batch_busy.add_metric([name, r.id], int(stats.get("batch_calls_busy", 0)))
                        batch_expired.add_metric([name, r.id], int(stats.get("batch_deadline_expired", 0)))
        yield from (requests, duration, in_flight, queued, replicas, utilization, scale, auth, dropped)
        yield from (v_requests, v_duration, copies, copy_duration)
        yield from (r_flight, r_restarts)
        yield from data.values()
        yield log_dropped
        yield from (batch_size, batch_busy, batch_expired)
        yield CounterMetricFamily(
            "modelfleet_trace_dropped", "Request timings dropped before export", value=self._trace_dropped()
        )


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    """Per-bound counts of LATENCY_BUCKETS (+Inf last, not cumulative) as Prometheus buckets."""
    total = 0
    out: list[tuple[str, float]] = []
    for bound, n in zip([*LATENCY_BUCKETS, float("inf")], counts, strict=True):
        total += n
        out.append(("+Inf" if bound == float("inf") else _bound(bound), total))
    return out


def _bound(value: float) -> str:
    return repr(float(value))


def _batch_buckets(stats: dict[str, Any]) -> tuple[list[tuple[str, float]], float]:
    """A replica's batch-size counts per bucket (its stats file) as cumulative Prometheus buckets."""
    bounds = [*stats.get("batch_size_bounds", []), float("inf")]
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, n in zip(bounds, stats["batch_size_buckets"], strict=False):
        cumulative += int(n)
        buckets.append(("+Inf" if bound == float("inf") else _bound(bound), cumulative))
    return buckets, float(stats.get("batch_size_sum", 0))


def _read_stats(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def registry_for(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


class MetricsServer:
    """``GET /metrics`` in Prometheus text format on the event loop that owns the numbers.

    Plain HTTP/1.1, one request per connection; no credentials (bind it to loopback, the
    default, or put it behind your own proxy). Other paths: 404."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._handle, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path = (head.split(b"\r\n", 1)[0].split(b" ") + [b"", b""])[:2]
            if path.split(b"?", 1)[0] != b"/metrics":
                status, ctype, body = b"404 Not Found", b"application/json", b'{"message": "try GET /metrics"}'
            elif method not in (b"GET", b"HEAD"):
                status, ctype, body = b"405 Method Not Allowed", b"application/json", b'{"message": "GET only"}'
            else:
                status, ctype, body = b"200 OK", CONTENT_TYPE.encode(), generate_latest(self.registry)
            writer.write(
                b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                % (status, ctype, len(body))
            )
            if method != b"HEAD":
                writer.write(body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            pass
        except Exception:
            log.exception("metrics scrape failed")
        finally:
            writer.close()
