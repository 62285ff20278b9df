"""Request timings of services deployed with ``enable_app_insights=True``.

The router calls ``Tracer.add`` when it has answered such a request: one bounded-deque append
of numbers it already holds (its ``perf_counter`` stamps), nothing formatted. A thread wakes
every ``interval_s``, takes what is pending and hands it to the exporter:

- ``OtlpExporter`` when an OTLP endpoint is configured (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` in the daemon's environment) and the optional
  packages are installed (``pip install 'modelfleet[otel]'``): one span ``score <service>``
  per request, with child spans ``queue`` and ``replica``, exported over OTLP/HTTP;
- otherwise ``LogExporter``: one JSON line per request in the service's log folder
  (``runtime/services/<name>/logs/router.log``, rotated like the replica logs), read by
  ``service.get_logs()`` and ``modelfleet service logs``.

Each timing: ``queue`` = arrival at the dispatcher to the request written to a replica (the
last one, after a "busy" retry), ``replica`` = written to answered, ``total`` = arrival to
answered. When more than ``max_pending`` timings wait, new ones are dropped and counted
(``dropped``); the router never waits for the exporter.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from modelfleet.telemetry.logfiles import DEFAULT_BACKUPS, DEFAULT_MAX_BYTES, RotatingFile

__all__ = ["LogExporter", "OtlpExporter", "Timing", "Tracer", "make_exporter", "traces_endpoint"]

log = logging.getLogger("modelfleet.tracing")


@dataclass(frozen=True)
class Timing:
    service: str
    request_id: str
    status: int
    start: float  # epoch seconds
    queue_s: float
    replica_s: float
    total_s: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": datetime.fromtimestamp(self.start, timezone.utc).isoformat(timespec="microseconds"),
            "kind": "request",
            "service": self.service,
            "request_id": self.request_id,
            "status": self.status,
            "queue_ms": round(self.queue_s * 1000, 3),
            "replica_ms": round(self.replica_s * 1000, 3),
            "total_ms": round(self.total_s * 1000, 3),
        }


Exporter = Callable[[Sequence[Timing]], None]


class Tracer:
    def __init__(self, exporter: Exporter, *, interval_s: float = 1.0, max_pending: int = 10_000) -> None:
        self.exporter = exporter
        self.interval_s = interval_s
        self.max_pending = max_pending
        self.dropped = 0
        self.exported = 0
        self._pending: deque[tuple[str, bytes, int, float, float, float]] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Tracer pending={len(self._pending)} exported={self.exported} dropped={self.dropped}>"

    def add(self, service: str, rids: bytes, status: int, started: float, sent: float, ended: float) -> None:
        """Hot path (event loop): the stamps are ``time.perf_counter()`` values."""
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            return
        self._pending.append((service, rids, status, started, sent, ended))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tracer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Export what is pending and stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        offset = time.time() - time.perf_counter()  # perf_counter stamps -> epoch seconds
        batch = []
        with contextlib.suppress(IndexError):
            for _ in range(len(pending)):
                service, rids, status, started, sent, ended = pending.popleft()
                sent = sent or ended  # never written to a replica (e.g. 503 after queueing)
                batch.append(
                    Timing(service, _request_id(rids), status, started + offset, sent - started, ended - sent,
                           ended - started)
                )  # fmt: skip
        try:
            self.exporter(batch)
            self.exported += len(batch)
        except Exception:  # an exporter failure loses this batch, never the router
            self.dropped += len(batch)
            log.exception("exporting %d request timings failed", len(batch))


def _request_id(rids: bytes) -> str:
    # rids is the router's header block: b"x-ms-request-id: <id>\r\nx-request-id: <id>\r\n"
    first = rids.split(b"\r\n", 1)[0]
    return first.partition(b": ")[2].decode("latin-1")


class LogExporter:
    """JSON lines in ``<services_dir>/<service>/logs/router.log``, rotated by size."""

    def __init__(self, services_dir: Path, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS) -> None:
        self.services_dir = services_dir
        self.max_bytes = max_bytes
        self.backups = backups
        self._files: dict[str, RotatingFile] = {}

    def __call__(self, timings: Sequence[Timing]) -> None:
        by_service: dict[str, list[str]] = {}
        for t in timings:
            by_service.setdefault(t.service, []).append(json.dumps(t.as_dict()) + "\n")
        for service, lines in by_service.items():
            f = self._files.get(service)
            if f is None:
                folder = self.services_dir / service / "logs"
                folder.mkdir(parents=True, exist_ok=True)
                f = self._files[service] = RotatingFile(folder / "router.log", self.max_bytes, self.backups)
            f.write("".join(lines).encode())

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


class OtlpExporter:
    """Spans over OTLP/HTTP (opentelemetry-sdk and its OTLP exporter, imported here only)."""

    def __init__(self, endpoint: str, service_name: str = "modelfleet-router") -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[import-not-found,unused-ignore]
        from opentelemetry.sdk.resources import Resource  # type: ignore[import-not-found,unused-ignore]
        from opentelemetry.sdk.trace import TracerProvider  # type: ignore[import-not-found,unused-ignore]
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # type: ignore[import-not-found,unused-ignore]

        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self.tracer = self.provider.get_tracer("modelfleet.router")

    def __call__(self, timings: Sequence[Timing]) -> None:
        from opentelemetry import trace  # type: ignore[import-not-found,unused-ignore]

        for t in timings:
            start = int(t.start * 1e9)
            queued = start + int(t.queue_s * 1e9)
            end = start + int(t.total_s * 1e9)
            attrs: dict[str, str | int | float] = {
                "modelfleet.service": t.service,
                "modelfleet.request_id": t.request_id,
                "http.response.status_code": t.status,
                "modelfleet.queue_ms": round(t.queue_s * 1000, 3),
                "modelfleet.replica_ms": round(t.replica_s * 1000, 3),
            }
            span = self.tracer.start_span(f"score {t.service}", start_time=start, attributes=attrs)
            ctx = trace.set_span_in_context(span)
            self.tracer.start_span("queue", context=ctx, start_time=start).end(end_time=queued)
            self.tracer.start_span("replica", context=ctx, start_time=queued).end(end_time=end)
            span.end(end_time=end)

    def close(self) -> None:
        self.provider.shutdown()


def traces_endpoint(environ: Mapping[str, str]) -> str | None:
    """The OTLP/HTTP traces URL the standard OpenTelemetry variables name, if any."""
    full = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if full:
        return full
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return base.rstrip("/") + "/v1/traces" if base else None


def make_exporter(endpoint: str | None, services_dir: Path) -> LogExporter | OtlpExporter:
    """OTLP to the traces URL ``endpoint`` when set and OpenTelemetry is installed; else the
    service logs."""
    if endpoint:
        try:
            return OtlpExporter(endpoint)
        except ImportError:
            log.warning(
                "OTLP endpoint %s is configured but OpenTelemetry is not installed "
                "(pip install 'modelfleet[otel]'); request timings go to the service logs",
                endpoint,
            )
    return LogExporter(services_dir)
