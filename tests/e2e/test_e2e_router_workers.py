"""`modelfleet cluster start --router-workers 2`: two router processes on one port.

Real processes: the daemon, its router worker, the replicas; clients connect anew for each
request so that the kernel spreads them over both listeners (SO_REUSEPORT)."""

from __future__ import annotations

import json
import os
import signal
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e_support import SCRIPTS, SUM_BODY, cli, deploy, pid_alive, raw_exchange, stop_cluster, wait_until
from modelfleet import Environment, InferenceConfig, Webservice, Workspace


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    workspace = Workspace.create("workers", tmp_path / "ws")
    yield workspace
    stop_cluster(workspace)


def score(uri: str, key: str) -> int:
    path = uri.split("://", 1)[1].split("/", 1)[1]
    head = (f"POST /{path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(SUM_BODY)}\r\nConnection: close\r\n\r\n")  # fmt: skip
    status, _ = raw_exchange(uri, head.encode(), SUM_BODY.encode())
    return status


WRONG = 16  # refused requests, a connection each: 2**-16 that the worker gets none


def answered_ok(uri: str, key: str) -> bool:
    try:
        return score(uri, key) == 200
    except ConnectionError:
        return False


def workers(ws: Workspace) -> list[dict[str, Any]]:
    status = ws.cluster().status()
    assert status["router_workers"] is not None
    return list(status["router_workers"])


@pytest.mark.parametrize("slots", ["partitioned", "shared"])
def test_two_workers_share_the_port_restart_and_stop(ws: Workspace, slots: str) -> None:
    assert cli(ws, "cluster", "start", "--router-workers", "2", "--router-slots", slots).returncode == 0
    service = deploy(ws, "spread", "sum", num_replicas=2, replica_max_concurrent_requests=2, enable_app_insights=True)
    key = service.get_keys()[0]
    before = workers(ws)
    assert [w["index"] for w in before] == [0, 1] and before[1]["listening"]
    assert all(score(service.scoring_uri, key) == 200 for _ in range(60))
    assert all(score(service.scoring_uri, "wrong") == 401 for _ in range(WRONG))
    # each process answered some (the kernel spread the connections); the counts add up to one router's
    wait_until(lambda: sum(w["answered"] for w in workers(ws)) >= 60 + WRONG, timeout=15)
    counts = workers(ws)
    assert counts[0]["answered"] > 0 and counts[1]["answered"] > 0, counts
    codes = ws.cluster().status()["service_counts"]["spread"]["codes"]
    assert codes == {"200": 60, "401": WRONG} or codes == {200: 60, 401: WRONG}, codes
    # the 401s by client address too: the worker's cross in its report (about a second)
    expected = {"missing": 0, "invalid": WRONG, "by_client": {"127.0.0.1": WRONG}}
    wait_until(lambda: ws.cluster().status()["auth_failures"]["invalid"] >= WRONG, timeout=5)
    assert ws.cluster().status()["auth_failures"] == expected
    # and the request timings of the traced service (enable_app_insights): one line per request
    # scored, whichever process served it, in the service's router log (the daemon exports them)
    router_log = ws.store.runtime_dir / "services" / "spread" / "logs" / "router.log"
    timed = lambda: router_log.read_text().splitlines() if router_log.is_file() else []  # noqa: E731
    wait_until(lambda: len(timed()) >= 60, timeout=10)
    assert len({json.loads(line)["request_id"] for line in timed()}) == 60
    assert f"pid {counts[1]['pid']} (" in cli(ws, "cluster", "status").stdout
    stats = ws.cluster().status()["router"]["spread"]
    assert stats["limit"] == 2 and len(stats["replicas"]) == 2  # by replica, not by slot

    # a killed worker is started again; requests are answered meanwhile and after
    old = counts[1]["pid"]
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: not pid_alive(old), timeout=10)
    # a connection the kernel handed the dying worker in its last milliseconds is reset (as with
    # any server process that dies), and so, rarely, is one that reaches its replacement while it
    # starts (seen once in a CI run); the daemon's own listener answers meanwhile
    wait_until(lambda: answered_ok(service.scoring_uri, key), timeout=10)
    wait_until(lambda: (w := workers(ws)[1])["pid"] != old and w["listening"] and w["restarts"] == 1, timeout=20)
    assert all(score(service.scoring_uri, key) == 200 for _ in range(20))  # once it is up, every one
    answered = workers(ws)[1]["answered"]
    assert all(score(service.scoring_uri, key) == 200 for _ in range(60))
    wait_until(lambda: workers(ws)[1]["answered"] > answered, timeout=15)  # the new one has the table

    # cluster stop leaves no router process behind
    pids = [w["pid"] for w in workers(ws)]
    stop_cluster(ws)
    assert not any(pid_alive(p) for p in pids)


def _gauges(ws: Workspace, service: str) -> dict[str, float]:
    info = ws.cluster().info()
    assert info is not None
    text = httpx.get(f"http://127.0.0.1:{info['metrics_port']}/metrics", timeout=10).text
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels == {"service": service}
    }


def test_metrics_and_the_dashboard_count_replicas_of_every_router_process(ws: Workspace) -> None:
    """Three replicas at limit 1 dealt to two partitioned workers: the daemon's own router holds
    two of them, its worker the third; /metrics says 3 Ready (the dashboard's sampler reads the
    same combined figures)."""
    assert cli(ws, "cluster", "start", "--router-workers", "2").returncode == 0
    deploy(ws, "dealt", "sum", num_replicas=3, replica_max_concurrent_requests=1, auth_enabled=False)
    wait_until(lambda: _gauges(ws, "dealt").get("modelfleet_replicas") == 3, timeout=15)
    # utilization = (in flight + queued) / (3 replicas x 1): 0 while idle, and defined
    assert _gauges(ws, "dealt")["modelfleet_utilization_ratio"] == 0.0


def test_bad_worker_counts_name_the_flag_and_change_nothing(ws: Workspace) -> None:
    top = 4 * (os.cpu_count() or 1)
    bad = cli(ws, "cluster", "start", "--router-workers", "0", check=False)
    assert bad.returncode == 1
    assert bad.stderr == (
        f"error: --router-workers must be a count from 1 to {top} or a range LOW-HIGH within it "
        "(4 per core here; got 0)\n"
    )
    for wrong in (str(top + 1), "3-2", "two"):
        refused = cli(ws, "cluster", "start", "--router-workers", wrong, check=False)
        assert refused.returncode == 1 and f"--router-workers must be a count from 1 to {top}" in refused.stderr
    assert ws.cluster().info() is None  # nothing was started
    assert cli(ws, "cluster", "start").returncode == 0
    assert ws.cluster().status()["router_workers"] is None  # the default: the daemon's router alone
    assert "router processes" not in cli(ws, "cluster", "status").stdout
    running = cli(ws, "cluster", "start", "--router-workers", "2", check=False)
    assert running.returncode == 1 and "stop it with `modelfleet cluster stop`" in running.stderr


def test_workers_serve_tls_and_the_plain_http_port_too(ws: Workspace) -> None:
    flags = ("--router-workers", "2", "--tls-self-signed", "--http-port", "0")
    assert cli(ws, "cluster", "start", *flags).returncode == 0
    service = deploy(ws, "secure", "sum")
    headers = {"Authorization": f"Bearer {service.get_keys()[0]}", "Connection": "close"}
    info = json.loads(cli(ws, "cluster", "status", "-o", "json").stdout)
    context = ssl.create_default_context(cafile=info["tlsCertFile"])
    plain = f"http://127.0.0.1:{info['httpPort']}/api/v1/service/secure/score"
    with httpx.Client(verify=context) as tls_client, httpx.Client() as plain_client:
        for _ in range(30):  # a new connection each (Connection: close): the kernel spreads them
            assert tls_client.post(service.scoring_uri, content=SUM_BODY, headers=headers).json() == [55]
            assert plain_client.post(plain, content=SUM_BODY, headers=headers).json() == [55]
    wait_until(lambda: sum(w["answered"] for w in workers(ws)) >= 60, timeout=15)
    assert all(w["answered"] > 0 for w in workers(ws)), workers(ws)


def test_a_range_starts_at_its_low_end_on_the_shared_port(ws: Workspace) -> None:
    assert cli(ws, "cluster", "start", "--router-workers", "1-3").returncode == 0
    service = deploy(ws, "ranged", "sum")
    assert [w["index"] for w in workers(ws)] == [0]  # idle: the daemon's router alone
    assert all(score(service.scoring_uri, service.get_keys()[0]) == 200 for _ in range(5))
    wait_until(lambda: workers(ws)[0]["cpu"] is not None, timeout=10)  # the rule's figures are measured
    assert [w["index"] for w in workers(ws)] == [0]  # and a light load keeps it at one


def test_an_update_under_two_workers_fails_no_request(ws: Workspace) -> None:
    """Both routers drain the old replicas (the daemon waits for the worker's drain too)."""
    assert cli(ws, "cluster", "start", "--router-workers", "2").returncode == 0
    service = deploy(ws, "rolling", "slow", auth_enabled=False, replica_max_concurrent_requests=4)
    results: list[tuple[int, object]] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():  # a new connection each: both routers take some
            response = httpx.post(service.scoring_uri, content=json.dumps({"sleep": 0.02}), timeout=30)
            results.append((response.status_code, response.json().get("version")))

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(results) > 10)
        ic = InferenceConfig(
            entry_script="score.py", source_directory=SCRIPTS / "version_v2", environment=Environment("e2e")
        )
        service.update(inference_config=ic)
        service.wait_for_deployment(timeout_sec=60)
        count = len(results)
        wait_until(lambda: len(results) > count + 10)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert {status for status, _ in results} == {200}
    assert results[0][1] == 1 and results[-1][1] == 2
    # A worker reports its counts each second (REPORT_S), and the whole update can take less (a
    # forked replica is Ready in 50 ms): wait for its report rather than read the last one.
    wait_until(lambda: all(w["answered"] > 0 for w in workers(ws)), timeout=5)


def test_a_killed_daemon_takes_its_workers_with_it_and_a_restart_brings_them_back(ws: Workspace) -> None:
    assert cli(ws, "cluster", "start", "--router-workers", "2").returncode == 0
    service = deploy(ws, "orphans", "sum")
    before = workers(ws)
    os.kill(before[0]["pid"], signal.SIGKILL)
    wait_until(lambda: not pid_alive(before[1]["pid"]), timeout=15)  # its daemon's socket closed: it exits
    ws.cluster().ensure_running()  # as a deploy would: the stored count applies
    wait_until(lambda: len(workers(ws)) == 2 and workers(ws)[1]["listening"], timeout=30)
    wait_until(lambda: Webservice(ws, "orphans").state == "Healthy", timeout=30)
    assert score(service.scoring_uri, service.get_keys()[0]) == 200
