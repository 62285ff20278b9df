"""Faults on real processes (issue 12): a replica killed mid-request or frozen, the daemon
killed under traffic, the workspace database locked, a full disk under logs and collected
data, and a cluster stopped under load. Each says what a user is promised when it happens."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e_support import SUM_BODY, cli, deploy, pid_alive, stop_cluster, wait_until
from modelfleet import Webservice, Workspace


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    workspace = Workspace.create("faults", tmp_path / "ws")
    yield workspace
    stop_cluster(workspace)


def replica_pids(ws: Workspace, name: str) -> list[int]:
    return [r["pid"] for r in ws.cluster().status()["services"][name]["replicas"] if r["pid"]]


def ready_pids(ws: Workspace, name: str) -> set[int]:
    return {r["pid"] for r in ws.cluster().status()["services"][name]["replicas"] if r["state"] == "Ready"}


def auth(service: Webservice) -> dict[str, str]:
    return {"Authorization": f"Bearer {service.get_keys()[0]}", "Content-Type": "application/json"}


class Traffic:
    """Scores a service in a loop on its own thread and keeps every outcome."""

    def __init__(self, uri: str, headers: dict[str, str], body: str = SUM_BODY) -> None:
        self.outcomes: list[int | str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(uri, headers, body), daemon=True)

    def _loop(self, uri: str, headers: dict[str, str], body: str) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    self.outcomes.append(client.post(uri, content=body, headers=headers).status_code)
                except httpx.HTTPError as exc:
                    self.outcomes.append(type(exc).__name__)
                time.sleep(0.01)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def test_replica_killed_mid_request_is_502_for_that_client_only_and_comes_back(ws: Workspace) -> None:
    victim = deploy(ws, "victim", "slow")
    bystander = deploy(ws, "bystander", "sum")
    (old_pid,) = replica_pids(ws, "victim")
    answer: list[int] = []
    slow = threading.Thread(
        target=lambda: answer.append(
            httpx.post(victim.scoring_uri, content='{"sleep": 10}', headers=auth(victim), timeout=30).status_code
        )
    )
    with Traffic(bystander.scoring_uri, auth(bystander)) as others:
        slow.start()
        wait_until(lambda: ws.cluster().status()["router"]["victim"]["in_flight"] == 1, timeout=10)
        os.kill(old_pid, signal.SIGKILL)
        slow.join(30)
        # POST /score is not idempotent: the client is told, never silently retried
        assert answer == [502]
        wait_until(lambda: ready_pids(ws, "victim") - {old_pid}, timeout=60)
    assert others.outcomes and set(others.outcomes) == {200}, others.outcomes
    after = httpx.post(victim.scoring_uri, content='{"sleep": 0}', headers=auth(victim), timeout=30)
    assert after.status_code == 200


def test_daemon_killed_under_traffic_restores_services_keys_tokens_and_uris(ws: Workspace) -> None:
    keyed = deploy(ws, "keyed", "sum")
    tokened = deploy(ws, "tokened", "sum", auth_enabled=False, token_auth_enabled=True)
    keys, uris = keyed.get_keys(), (keyed.scoring_uri, tokened.scoring_uri)
    token, _ = tokened.get_token()
    daemon_pid = int(ws.cluster().info()["pid"])  # type: ignore[index]
    with Traffic(keyed.scoring_uri, auth(keyed)) as traffic:
        wait_until(lambda: traffic.outcomes.count(200) >= 5, timeout=10)
        os.kill(daemon_pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(daemon_pid), timeout=10)
        wait_until(lambda: len(traffic.outcomes) > traffic.outcomes.index(200) + 10, timeout=10)
    # while it is down, the CLI says so in one line and says how to start it
    down = cli(ws, "service", "run", "-n", "keyed", "-d", SUM_BODY, check=False)
    assert down.returncode == 1
    assert down.stderr.count("\n") == 1 and "modelfleet cluster start" in down.stderr, down.stderr

    ws.cluster().ensure_running()
    for name in ("keyed", "tokened"):
        wait_until(lambda name=name: Webservice(ws, name).state == "Healthy", timeout=60)
    again = Webservice(ws, "keyed")
    assert again.get_keys() == keys
    assert (again.scoring_uri, Webservice(ws, "tokened").scoring_uri) == uris
    with httpx.Client(timeout=30) as client:
        ok = client.post(uris[0], content=SUM_BODY, headers={"Authorization": f"Bearer {keys[1]}"})
        assert ok.status_code == 200 and ok.json() == [55]
        # a token issued before the crash is still valid: the signing key came back too
        ok = client.post(uris[1], content=SUM_BODY, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json() == [55]


def test_frozen_replica_is_marked_unhealthy_and_replaced_while_traffic_moves_away(ws: Workspace) -> None:
    service = deploy(
        ws, "frozen", "sum", num_replicas=2, period_seconds=1, timeout_seconds=1, failure_threshold=2,
        scoring_timeout_ms=3000,
    )  # fmt: skip
    stopped = replica_pids(ws, "frozen")[0]
    os.kill(stopped, signal.SIGSTOP)
    try:
        wait_until(lambda: len(ready_pids(ws, "frozen") - {stopped}) == 2, timeout=60)
        assert not pid_alive(stopped)  # the frozen process was ended, not left behind
    finally:
        if pid_alive(stopped):
            os.kill(stopped, signal.SIGKILL)
    with httpx.Client(timeout=30) as client:
        outcomes = [client.post(service.scoring_uri, content=SUM_BODY, headers=auth(service)).status_code
                    for _ in range(40)]  # fmt: skip
    assert set(outcomes) == {200}, outcomes


def test_locked_workspace_database_cli_waits_a_bounded_time_then_says_so(ws: Workspace, tmp_path: Path) -> None:
    model_file = tmp_path / "m.json"
    model_file.write_text("{}")
    locker = sqlite3.connect(ws.path / ".modelfleet" / "metadata.db", timeout=1)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        result = cli(ws, "model", "register", "-n", "m", "-p", str(model_file), check=False)
        waited = time.monotonic() - started
    finally:
        locker.rollback()
        locker.close()
    assert result.returncode == 1, result.stdout
    assert result.stderr.count("\n") == 1 and "locked" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert waited < 90
    # once the other writer is gone, the same command works and nothing was half-written
    assert cli(ws, "model", "register", "-n", "m", "-p", str(model_file)).returncode == 0
    listed = json.loads(cli(ws, "model", "list", "-o", "json").stdout)
    assert [(m["name"], m["version"]) for m in listed] == [("m", 1)]


def _fill(folder: Path) -> None:
    """Fill the file system under ``folder`` until the kernel says it is full."""
    with open(folder / "filler", "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()


def _counted(ws: Workspace, metric: str) -> float:
    info = ws.cluster().info()
    assert info is not None
    text = httpx.get(f"http://127.0.0.1:{info['metrics_port']}/metrics").text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples if s.name == metric)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")
def test_full_disk_under_logs_and_collected_data_scoring_goes_on_and_drops_are_counted(ws: Workspace) -> None:
    meta = ws.path / ".modelfleet"
    folders = [meta / "runtime" / "services" / "tight" / "logs", meta / "data" / "tight"]
    for folder in folders:
        folder.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(folder)], check=True)
    try:
        service = deploy(ws, "tight", "telemetry", collect_model_data=True)
        for folder in folders:
            _fill(folder)
        with httpx.Client(timeout=30) as client:
            # each request prints a line to the replica's log, and every 10th raises (a traceback)
            outcomes = [
                client.post(
                    service.scoring_uri,
                    content=json.dumps({"i": i, "say": f"line {i}", "fail": i % 10 == 9}),
                    headers=auth(service),
                ).status_code
                for i in range(300)
            ]
        assert outcomes == [500 if i % 10 == 9 else 200 for i in range(300)]
        wait_until(lambda: _counted(ws, "modelfleet_data_records_dropped_total") > 0, timeout=30)
        # 300 printed lines and 30 tracebacks, none written: the log counts at least one per request
        wait_until(lambda: _counted(ws, "modelfleet_log_lines_dropped_total") >= 300, timeout=30)
        assert Webservice(ws, "tight").state == "Healthy"
    finally:
        stop_cluster(ws)
        for folder in folders:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def test_cluster_stop_under_load_finishes_in_flight_requests(ws: Workspace) -> None:
    service = deploy(ws, "draining", "slow", num_replicas=2)
    answers: list[int | str] = []

    def slow_request() -> None:
        try:
            r = httpx.post(service.scoring_uri, content='{"sleep": 2}', headers=auth(service), timeout=30)
            answers.append(r.status_code)
        except httpx.HTTPError as exc:
            answers.append(type(exc).__name__)

    threads = [threading.Thread(target=slow_request) for _ in range(2)]
    for t in threads:
        t.start()
    wait_until(lambda: ws.cluster().status()["router"]["draining"]["in_flight"] == 2, timeout=10)
    stop_cluster(ws)
    for t in threads:
        t.join(30)
    assert answers == [200, 200]
