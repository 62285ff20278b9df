"""Telemetry without sockets: counters, the Prometheus exposition, log rotation and following,
the data collector's writer and reader, request timings. Real files under tmp_path."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from e2e_support import wait_until
from fs_support import read_only
from modelfleet.errors import ConfigError
from modelfleet.replica.config import parse_config
from modelfleet.telemetry import collect
from modelfleet.telemetry.collect import DataSink, ModelDataCollector
from modelfleet.telemetry.collected import export, partitions, read_records
from modelfleet.telemetry.counters import ServiceMetrics
from modelfleet.telemetry.logfiles import RotatingFile, chain, follow, tail
from modelfleet.telemetry.metrics import FleetCollector, ReplicaView, ServiceView, registry_for
from modelfleet.telemetry.replica_stats import StatsFile
from modelfleet.telemetry.tracing import LogExporter, Tracer, traces_endpoint

IDS = b"x-request-id: rid-%d\r\nx-ms-request-id: rid-%d\r\n"


# -- counters and exposition ------------------------------------------------------------------


def test_service_metrics_worked_example() -> None:
    m = ServiceMetrics()
    m.observe(200, 0.004)
    assert m.codes == {200: 1} and m.buckets[2] == 1 and sum(m.buckets) == 1
    m.observe(200, 100.0)  # past the last bound: the +Inf slot
    m.answered(401)
    m.auth_failed(missing=True)
    m.auth_failed(missing=False)
    assert m.buckets[-1] == 1 and m.count == 2 and m.codes == {200: 2, 401: 1}
    assert (m.auth_missing, m.auth_invalid) == (1, 1)


def test_exposition_names_labels_and_cumulative_buckets(tmp_path: Path) -> None:
    m = ServiceMetrics()
    for status, seconds in [(200, 0.004), (200, 0.004), (500, 0.3)]:
        m.observe(status, seconds)
    m.answered(401)
    m.auth_failed(missing=True)
    stats = tmp_path / "r0.stats.json"
    stats.write_text(json.dumps({"records": 7, "written": 5, "dropped": 2, "log_lines_dropped": 9}))
    view = ServiceView(
        name="svc", metrics=m, in_flight=1, queued=2, ready=2, limit=1, scale_events=3,
        replicas=[ReplicaView("svc-1-0", in_flight=1, restarts=4, stats_file=stats)],
    )  # fmt: skip
    unrouted = ServiceMetrics()
    unrouted.answered(404)
    text = generate_latest(registry_for(FleetCollector(lambda: [view], unrouted, lambda: 6))).decode()
    lines = set(text.splitlines())
    for expected in [
        'modelfleet_unrouted_requests_total{code="404"} 1.0',
        'modelfleet_requests_total{code="200",service="svc"} 2.0',
        'modelfleet_requests_total{code="401",service="svc"} 1.0',
        'modelfleet_requests_total{code="500",service="svc"} 1.0',
        'modelfleet_request_duration_seconds_bucket{le="0.0025",service="svc"} 0.0',
        'modelfleet_request_duration_seconds_bucket{le="0.005",service="svc"} 2.0',
        'modelfleet_request_duration_seconds_bucket{le="0.5",service="svc"} 3.0',
        'modelfleet_request_duration_seconds_bucket{le="+Inf",service="svc"} 3.0',
        'modelfleet_request_duration_seconds_count{service="svc"} 3.0',
        'modelfleet_requests_in_flight{service="svc"} 1.0',
        'modelfleet_requests_queued{service="svc"} 2.0',
        'modelfleet_replicas{service="svc"} 2.0',
        'modelfleet_utilization_ratio{service="svc"} 1.5',
        'modelfleet_scale_events_total{service="svc"} 3.0',
        'modelfleet_auth_failures_total{reason="missing",service="svc"} 1.0',
        'modelfleet_auth_failures_total{reason="invalid",service="svc"} 0.0',
        'modelfleet_replica_requests_in_flight{replica="svc-1-0",service="svc"} 1.0',
        'modelfleet_replica_restarts_total{replica="svc-1-0",service="svc"} 4.0',
        'modelfleet_data_records_total{replica="svc-1-0",service="svc"} 7.0',
        'modelfleet_data_records_written_total{replica="svc-1-0",service="svc"} 5.0',
        'modelfleet_data_records_dropped_total{replica="svc-1-0",service="svc"} 2.0',
        'modelfleet_log_lines_dropped_total{replica="svc-1-0",service="svc"} 9.0',
        "modelfleet_trace_dropped_total 6.0",
    ]:
        assert expected in lines, expected
    assert "# TYPE modelfleet_request_duration_seconds histogram" in lines


# -- log files ------------------------------------------------------------------------------


def test_rotation_worked_example(tmp_path: Path) -> None:
    path = tmp_path / "r.log"
    f = RotatingFile(path, max_bytes=100, backups=2)
    for n in (60, 30, 20):
        f.write(b"a" * (n - 1) + b"\n")
    assert [p.stat().st_size for p in chain(path)] == [90, 20]
    f.write(b"b" * 89 + b"\n")  # 20 + 90 > 100: rotate
    f.write(b"c" * 89 + b"\n")
    assert [p.name for p in chain(path)] == ["r.log.2", "r.log.1", "r.log"]
    assert path.read_bytes() == b"c" * 89 + b"\n"
    assert (tmp_path / "r.log.2").read_bytes() == b"a" * 19 + b"\n"  # the first 90 bytes are gone
    assert all(p.stat().st_size <= 100 for p in chain(path))
    f.close()


def test_a_full_disk_raises_unless_failures_are_counted(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    path = tmp_path / "r.log"
    path.symlink_to("/dev/full")  # every write: ENOSPC
    plain = RotatingFile(path, 1000, 2)
    with pytest.raises(OSError, match="No space left"):
        plain.write(b"one\n")
    counted = RotatingFile(path, 1000, 2, count_failures=True)
    assert counted.write(b"one\ntwo\n") == 8 and counted.write(b"three\n") == 6  # the caller goes on
    assert counted.counts() == {
        "log_lines_dropped": 3,
        "log_write_errors": 2,
        "log_last_error": f"writing {path}: No space left on device",
    }
    stats = StatsFile(tmp_path / "stats.json")
    stats.add(counted.counts)
    stats.write()
    assert json.loads((tmp_path / "stats.json").read_text())["log_lines_dropped"] == 3


def test_two_writers_on_one_file_rotate_once_and_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "r.log"
    a, b = RotatingFile(path, 1000, 50), RotatingFile(path, 1000, 50)
    for i in range(200):
        (a if i % 2 else b).write(f"line {i:04d}\n".encode())
    a.close()
    b.close()
    lines = "".join(p.read_text() for p in chain(path)).splitlines()
    assert sorted(lines) == [f"line {i:04d}" for i in range(200)]
    assert all(p.stat().st_size <= 1000 + 10 for p in chain(path))  # a writer's file may get one write more


def test_tail_reads_older_files_only_when_needed(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    f = RotatingFile(path, 30, 5)
    for i in range(10):
        f.write(f"line {i}\n".encode())
    f.close()
    assert tail(chain(path), 3) == ["line 7\n", "line 8\n", "line 9\n"]
    assert tail(chain(path), 100) == [f"line {i}\n" for i in range(10)]


def test_follow_streams_new_lines_across_rotation(tmp_path: Path) -> None:
    path = tmp_path / "f.log"
    f = RotatingFile(path, 64, 3)
    f.write(b"old line, not shown\n")
    seen: list[str] = []
    done = threading.Event()

    def reader() -> None:
        for _, line in follow(lambda: [path], interval_s=0.02, stop=done.is_set):
            seen.append(line)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        time.sleep(0.1)  # the follower's first poll marks where "new" begins
        expected = [f"new line {i:02d}\n" for i in range(12)]  # 12 x 12 bytes: two rotations
        for line in expected:
            f.write(line.encode())
        assert f.rotations >= 2
        wait_until(lambda: len(seen) >= len(expected), timeout=10)
        assert seen == expected
    finally:
        done.set()
        thread.join(5)
        f.close()


# -- model data collection ------------------------------------------------------------------


def sink(tmp_path: Path, **kw: object) -> DataSink:
    return DataSink(
        tmp_path / "data" / "svc", "svc-1-0", {"regressor": "3"}, stats_file=StatsFile(tmp_path / "s.json"), **kw
    )


def test_records_written_in_partitions_and_read_back(tmp_path: Path) -> None:
    s = sink(tmp_path)
    now = time.time()
    s.exchange(IDS % (1, 1), now, b'{"data": [[1, 2]]}', b"[3]")
    s.exchange(IDS % (2, 2), now + 0.001, b'  {"pretty":\n  true}  ', None)  # no prediction (run() failed)
    s.exchange(IDS % (3, 3), now + 0.002, b"plain text", b'{"cut": ')  # text, and JSON that is not
    s.record("regressor", "features", "rid-1", now + 0.003, [{"a": 1, "b": 2}])
    s.close()
    day = datetime.fromtimestamp(now, timezone.utc)
    folder = tmp_path / "data" / "svc" / "regressor" / "3" / "inputs" / day.strftime("%Y/%m/%d")
    assert (folder / "svc-1-0.jsonl").is_file()
    rows = read_records(tmp_path / "data" / "svc")
    assert [(r["designation"], r["request_id"], r["data"]) for r in rows] == [
        ("inputs", "rid-1", {"data": [[1, 2]]}),
        ("predictions", "rid-1", [3]),
        ("inputs", "rid-2", {"pretty": True}),
        ("inputs", "rid-3", "plain text"),
        ("predictions", "rid-3", '{"cut":'),  # verbatim, trailing space trimmed
        ("features", "rid-1", [{"a": 1, "b": 2}]),
    ]
    assert {(r["model"], r["version"]) for r in rows} == {("regressor", "3")}
    assert json.loads((tmp_path / "s.json").read_text())["written"] == 6
    only = read_records(tmp_path / "data" / "svc", designation="predictions")
    assert [r["request_id"] for r in only] == ["rid-1", "rid-3"]
    assert read_records(tmp_path / "data" / "svc", since=datetime.now(timezone.utc) + timedelta(hours=1)) == []
    parts = partitions(tmp_path / "data" / "svc")
    assert {(p["designation"], p["records"]) for p in parts} == {("inputs", 3), ("predictions", 2), ("features", 1)}


def test_a_line_cut_by_a_kill_is_skipped_and_the_next_writer_starts_fresh(tmp_path: Path) -> None:
    s = sink(tmp_path)
    s.exchange(IDS % (1, 1), time.time(), b"[1]", b"[2]")
    s.close()
    (target,) = (tmp_path / "data").rglob("inputs/**/*.jsonl")
    with open(target, "ab") as f:
        f.write(b'{"model": "regressor", "version": "3", "designation": "inputs", "request_id": "rid-9", "ti')
    assert [r["request_id"] for r in read_records(tmp_path / "data" / "svc")] == ["rid-1", "rid-1"]
    s2 = sink(tmp_path)  # the restarted replica appends to the same file
    s2.exchange(IDS % (2, 2), time.time(), b"[3]", None)
    s2.close()
    assert [r["request_id"] for r in read_records(tmp_path / "data" / "svc", designation="inputs")] == [
        "rid-1",
        "rid-2",
    ]


def test_full_buffer_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    s = sink(tmp_path, max_pending=3)
    started = time.perf_counter()
    for i in range(5):
        s.exchange(IDS % (i, i), time.time(), b"[1]", b"[2]")
    assert time.perf_counter() - started < 0.1
    assert (s.stats.records, s.stats.dropped) == (6, 4)
    s.close()
    assert len(read_records(tmp_path / "data" / "svc")) == 6


def test_full_disk_drops_and_counts(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    s = sink(tmp_path)
    now = time.time()
    day = datetime.fromtimestamp(now, timezone.utc).strftime("%Y/%m/%d")
    for designation in ("inputs", "predictions"):
        folder = tmp_path / "data" / "svc" / "regressor" / "3" / designation / day
        folder.mkdir(parents=True)
        (folder / "svc-1-0.jsonl").symlink_to("/dev/full")  # every write: ENOSPC
    s.exchange(IDS % (1, 1), now, b"[1]", b"[2]")
    s.close()
    stats = json.loads((tmp_path / "s.json").read_text())
    assert (stats["written"], stats["dropped"]) == (0, 2) and stats["write_errors"] == 2
    assert "No space left" in stats["last_error"]


def test_read_only_folder_drops_and_counts(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with read_only(tmp_path / "data"):
        s = sink(tmp_path)
        s.exchange(IDS % (1, 1), time.time(), b"[1]", b"[2]")
        s.close()
    assert (s.stats.written, s.stats.dropped) == (0, 2)


def test_collector_rows_and_v1_behaviour(tmp_path: Path) -> None:
    from modelfleet.telemetry import ModelDataCollector as public

    assert public is ModelDataCollector
    assert ModelDataCollector("m", designation="inputs").collect([[1]]) == {}  # not collecting: a no-op
    s = sink(tmp_path)
    collect.install_sink(s)
    try:
        inputs = ModelDataCollector("regressor", designation="inputs", feature_names=["a", "b"])
        assert not s.auto_inputs and s.auto_predictions  # the script collects inputs itself
        collect.set_request_ids(IDS % (7, 7))
        ctx = inputs.collect([[1, 2], [3, 4]])
        assert ctx["$aml_dc_correlation_id"] == "rid-7"
        ModelDataCollector("other", designation="scores").collect(5, user_correlation_id="mine")
        ModelDataCollector("regressor", designation="one", feature_names=["a", "b"]).collect((1, 2))
    finally:
        collect.install_sink(None)
    s.close()
    rows = read_records(tmp_path / "data" / "svc")
    assert [(r["model"], r["version"], r["designation"], r["request_id"], r["data"]) for r in rows] == [
        ("regressor", "3", "inputs", "rid-7", [{"a": 1, "b": 2}, {"a": 3, "b": 4}]),
        ("other", "0", "scores", "mine", 5),
        ("regressor", "3", "one", "rid-7", [{"a": 1, "b": 2}]),
    ]


def test_export_formats(tmp_path: Path) -> None:
    rows = [{"model": "m", "version": "1", "designation": "inputs", "request_id": "r", "time": "t", "data": {"x": [1]}}]
    out = io.BytesIO()
    export(rows, "jsonl", out)
    assert [json.loads(line) for line in out.getvalue().splitlines()] == rows
    export(rows, "csv", tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_text().splitlines() == [
        "model,version,designation,request_id,time,data",
        'm,1,inputs,r,t,"{""x"": [1]}"',
    ]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        with pytest.raises(ConfigError, match=r"modelfleet\[parquet\]"):
            export(rows, "parquet", tmp_path / "out.parquet")
    else:
        export(rows, "parquet", tmp_path / "out.parquet")
        assert pq.read_table(tmp_path / "out.parquet").to_pylist()[0]["data"] == '{"x": [1]}'
    with pytest.raises(ConfigError, match="jsonl, csv or parquet"):
        export(rows, "xml", io.BytesIO())


# -- request timings -------------------------------------------------------------------------


def test_tracer_writes_timings_to_the_service_log(tmp_path: Path) -> None:
    exporter = LogExporter(tmp_path / "services")
    tracer = Tracer(exporter, max_pending=2)
    t0 = time.perf_counter()
    tracer.add("svc", b"x-ms-request-id: a\r\nx-request-id: a\r\n", 200, t0, t0 + 0.002, t0 + 0.005)
    tracer.add("svc", b"x-ms-request-id: b\r\nx-request-id: b\r\n", 503, t0, 0.0, t0 + 0.5)  # never sent
    tracer.add("svc", b"x-ms-request-id: c\r\nx-request-id: c\r\n", 200, t0, t0, t0)
    assert tracer.dropped == 1
    tracer.flush()
    exporter.close()
    lines = [json.loads(x) for x in (tmp_path / "services" / "svc" / "logs" / "router.log").read_text().splitlines()]
    assert [(x["request_id"], x["status"], x["queue_ms"], x["replica_ms"], x["total_ms"]) for x in lines] == [
        ("a", 200, 2.0, 3.0, 5.0),
        ("b", 503, 500.0, 0.0, 500.0),
    ]
    assert traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318/"}) == "http://h:4318/v1/traces"
    assert traces_endpoint({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://h/t"}) == "http://h/t"
    assert traces_endpoint({}) is None


# -- replica settings -----------------------------------------------------------------------


def test_replica_telemetry_settings(tmp_path: Path) -> None:
    script = tmp_path / "score.py"
    script.write_text("def init(): pass\ndef run(d): return d\n")
    env = {
        "MODELFLEET_DATA_DIR": str(tmp_path / "d"),
        "MODELFLEET_MODELS": "a:1,b:2",
        "MODELFLEET_COLLECT_FLUSH_S": "0.5",
        "MODELFLEET_LOG_FILE": str(tmp_path / "r.log"),
        "MODELFLEET_LOG_MAX_BYTES": "4096",
    }
    config = parse_config(["--entry_script", str(script)], env, str(tmp_path))
    assert config.models == (("a", "1"), ("b", "2")) and config.collect_flush_s == 0.5
    assert config.log_max_bytes == 4096 and config.data_dir == str(tmp_path / "d")
    with pytest.raises(ConfigError, match="MODELFLEET_LOG_MAX_BYTES must be between 1024"):
        parse_config(["--entry_script", str(script)], {**env, "MODELFLEET_LOG_MAX_BYTES": "10"}, str(tmp_path))
    with pytest.raises(ConfigError, match="MODELFLEET_COLLECT_FLUSH_S must be a number"):
        parse_config(["--entry_script", str(script)], {**env, "MODELFLEET_COLLECT_FLUSH_S": "soon"}, str(tmp_path))
