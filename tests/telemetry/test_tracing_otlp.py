"""Request timings exported over OTLP/HTTP to a real (local) receiver, when the optional
OpenTelemetry packages are installed (``modelfleet[otel]``); skipped otherwise."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

from e2e_support import wait_until  # noqa: E402
from http_support import QuietHandler, serving
from modelfleet.telemetry.tracing import OtlpExporter, Tracer, make_exporter  # noqa: E402


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[ExportTraceServiceRequest]]]:
    got: list[ExportTraceServiceRequest] = []

    class Handler(QuietHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/v1/traces":
                message = ExportTraceServiceRequest()
                message.ParseFromString(body)
                got.append(message)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with serving(Handler) as port:
        yield f"http://127.0.0.1:{port}/v1/traces", got


def test_timings_become_a_span_with_queue_and_replica_children(
    receiver: tuple[str, list[ExportTraceServiceRequest]], tmp_path: Path
) -> None:
    url, got = receiver
    exporter = make_exporter(url, tmp_path)
    assert isinstance(exporter, OtlpExporter)
    assert not list(tmp_path.iterdir())  # nothing goes to the service logs
    tracer = Tracer(exporter)
    t0 = time.perf_counter()
    tracer.add("svc", b"x-ms-request-id: r1\r\nx-request-id: r1\r\n", 200, t0, t0 + 0.002, t0 + 0.005)
    tracer.flush()
    exporter.close()  # flushes the batch processor
    wait_until(lambda: got, timeout=10)
    spans = {s.name: s for m in got for rs in m.resource_spans for ss in rs.scope_spans for s in ss.spans}
    assert set(spans) == {"score svc", "queue", "replica"}
    root, queue, replica = spans["score svc"], spans["queue"], spans["replica"]
    assert queue.parent_span_id == root.span_id and replica.parent_span_id == root.span_id
    assert queue.trace_id == root.trace_id == replica.trace_id
    assert (queue.end_time_unix_nano - queue.start_time_unix_nano) == pytest.approx(2_000_000, abs=2_000)
    assert (replica.end_time_unix_nano - replica.start_time_unix_nano) == pytest.approx(3_000_000, abs=2_000)
    assert root.end_time_unix_nano - root.start_time_unix_nano == pytest.approx(5_000_000, abs=2_000)
    attrs = {a.key: a.value for a in root.attributes}
    assert attrs["modelfleet.request_id"].string_value == "r1"
    assert attrs["http.response.status_code"].int_value == 200
