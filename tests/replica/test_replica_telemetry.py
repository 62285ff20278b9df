"""A real replica process with model data collection and a rotated log: what is recorded
after a graceful stop and across a SIGKILL, a folder it cannot write, and its log files."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from e2e_support import wait_until
from fs_support import read_only
from modelfleet.telemetry.collected import read_records
from modelfleet.telemetry.logfiles import chain
from replica_scripts.harness import Server, request, start_replica

FLUSH_S = 0.2  # MODELFLEET_COLLECT_FLUSH_S for these replicas


def collecting(tmp: Path, data: Path, replica_id: str = "svc-1-0", **env: str) -> Server:
    settings = {
        "MODELFLEET_DATA_DIR": str(data),
        "MODELFLEET_MODELS": "regressor:3",
        "MODELFLEET_REPLICA_ID": replica_id,
        "MODELFLEET_COLLECT_FLUSH_S": str(FLUSH_S),
        "MODELFLEET_STATS_FILE": str(tmp / f"{replica_id}.stats.json"),
        **env,
    }
    return start_replica("collecting.py", tmp, env=settings)


def score(server: Server, i: int, **extra: object) -> int:
    body = json.dumps({"data": [[i, 1]], **extra})
    answer = request(server.port, "POST", "/score", body, {"x-request-id": f"req-{i}"})  # type: ignore[arg-type]
    return answer.status


def stats(tmp: Path, replica_id: str = "svc-1-0") -> dict[str, int]:
    try:
        return json.loads((tmp / f"{replica_id}.stats.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def test_graceful_stop_keeps_every_record_with_its_input_and_output(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = collecting(tmp_path, data)
    try:
        assert [score(server, i) for i in range(20)] == [200] * 20
        assert score(server, 99, fail=True) == 500
        # GET /score hands run() the query string: recorded as the input too (run() fails on it)
        assert request(server.port, "GET", "/score?x=1", headers={"x-request-id": "req-get"}).status == 500
    finally:
        server.signal(signal.SIGTERM)
        assert server.proc.wait(15) == 0
        server.stop()
    rows = read_records(data)
    inputs = {r["request_id"]: r["data"] for r in rows if r["designation"] == "inputs"}
    predictions = {r["request_id"]: r["data"] for r in rows if r["designation"] == "predictions"}
    features = {r["request_id"]: r["data"] for r in rows if r["designation"] == "features"}
    assert inputs == {
        **{f"req-{i}": {"data": [[i, 1]]} for i in range(20)},
        "req-99": {"data": [[99, 1]], "fail": True},
        "req-get": "x=1",
    }
    assert predictions == {f"req-{i}": [i + 1] for i in range(20)}
    assert features == {f"req-{i}": [{"a": i, "b": 1}] for i in range(20)}
    assert {(r["model"], r["version"]) for r in rows} == {("regressor", "3")}
    assert stats(tmp_path)["written"] == len(rows) and stats(tmp_path)["dropped"] == 0


def test_sigkill_keeps_records_older_than_the_flush_interval(tmp_path: Path) -> None:
    """The promise (telemetry/collect.py): across a SIGKILL, every record of a request answered
    at least MODELFLEET_COLLECT_FLUSH_S before the kill survives; a newer one may be lost, and
    none is half-read."""
    data = tmp_path / "data"
    server = collecting(tmp_path, data)
    try:
        assert [score(server, i) for i in range(10)] == [200] * 10
        # Not waiting for a condition: the promise is a time bound, so the test lets exactly
        # that much time pass (plus scheduling slack) and then kills without warning.
        time.sleep(FLUSH_S * 2.5)
        assert [score(server, i) for i in range(10, 15)] == [200] * 5
        server.signal(signal.SIGKILL)
        assert server.proc.wait(10) == -signal.SIGKILL
    finally:
        server.stop()
    survived = {r["request_id"] for r in read_records(data) if r["designation"] == "predictions"}
    assert {f"req-{i}" for i in range(10)} <= survived <= {f"req-{i}" for i in range(15)}

    again = collecting(tmp_path, data)  # the same replica id: appends to the same files
    try:
        assert score(again, 20) == 200
    finally:
        again.signal(signal.SIGTERM)
        again.proc.wait(15)
        again.stop()
    rows = read_records(data, designation="predictions")
    assert {f"req-{i}" for i in range(10)} | {"req-20"} <= {r["request_id"] for r in rows}
    assert all(r["data"] == [int(r["request_id"][4:]) + 1] for r in rows)  # every record whole


@pytest.mark.parametrize("how", ["read-only", "full"])
def test_unwritable_data_folder_never_fails_scoring(tmp_path: Path, how: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    if how == "full":
        if not os.path.exists("/dev/full"):
            pytest.skip("needs /dev/full")
        # the replica's partition files for today all point at /dev/full: every write is ENOSPC
        day = time.strftime("%Y/%m/%d", time.gmtime())
        for designation in ("inputs", "predictions", "features"):
            folder = data / "regressor" / "3" / designation / day
            folder.mkdir(parents=True)
            (folder / "svc-1-0.jsonl").symlink_to("/dev/full")
    guard = read_only(data) if how == "read-only" else _nothing()
    with guard:
        server = collecting(tmp_path, data)
        try:
            assert [score(server, i) for i in range(10)] == [200] * 10
            wait_until(lambda: stats(tmp_path).get("dropped") == 30, timeout=10)
            assert stats(tmp_path)["written"] == 0 and stats(tmp_path)["write_errors"] >= 1
        finally:
            server.signal(signal.SIGTERM)
            assert server.proc.wait(15) == 0
            server.stop()
    assert "record(s) dropped so far (scoring goes on)" in server.output()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_log_rotates_at_the_limit_with_access_lines_and_no_secrets(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "replica-0.log"
    log.parent.mkdir()
    env = {"MODELFLEET_LOG_FILE": str(log), "MODELFLEET_LOG_MAX_BYTES": "4096", "MODELFLEET_LOG_BACKUPS": "3"}
    server = start_replica("collecting.py", tmp_path, args=["--access-log"], env=env)
    try:
        for i in range(60):
            body = json.dumps({"data": [[i, 1]], "say": f"printed-{i:03d} " + "x" * 100, "secret": "BODY-SECRET"})
            answer = request(
                server.port, "POST", "/score", body, {"x-request-id": f"req-{i}", "Authorization": "Bearer KEY-SECRET"}
            )
            assert answer.status == 200
        wait_until(lambda: '"request_id": "req-59"' in log.read_text(), timeout=10)  # access lines: once a second
    finally:
        server.signal(signal.SIGTERM)
        server.proc.wait(15)
        server.stop()
    files = chain(log)
    # ~7 KB printed by run() and ~11 KB of access lines: more than the four files hold
    assert [p.name for p in files] == ["replica-0.log.3", "replica-0.log.2", "replica-0.log.1", "replica-0.log"]
    assert all(p.stat().st_size <= 4096 for p in files)
    text = "".join(p.read_text() for p in files)
    assert "printed-059" in text and "printed-000" not in text  # the oldest went with the dropped file
    access = [json.loads(line) for line in text.splitlines() if '"modelfleet.replica.access"' in line]
    last = access[-1]
    assert (last["request_id"], last["route"], last["method"], last["status"]) == ("req-59", "/score", "POST", 200)
    assert last["duration_ms"] > 0
    assert "KEY-SECRET" not in text and "BODY-SECRET" not in text
