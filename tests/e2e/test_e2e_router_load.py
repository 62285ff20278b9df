"""End to end: the router's limits under load, through a real deployment.

Real daemon, router and replica processes (the local cluster) and a replica whose run()
counts how many calls run at once (tests/e2e_scripts/counting). Each test checks what a client
sees and, through the daemon's status, that the router's in-flight and queue gauges come back
to 0 (no slot leaked). The stand-in-upstream tests (test_router_limits.py) cover the same rules
in more detail; these prove them with the real replica server in the path.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from e2e_support import deploy, stop_cluster, wait_until
from modelfleet import Webservice, Workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = Workspace.create("e2e-load", tmp_path_factory.mktemp("ws"))
    try:
        yield workspace
    finally:
        stop_cluster(workspace)


def headers(service: Webservice) -> dict[str, str]:
    return {"Authorization": f"Bearer {service.get_keys()[0]}", "Content-Type": "application/json"}


def gauges(ws: Workspace, name: str) -> dict[str, Any]:
    stats: dict[str, Any] = ws.cluster().status()["router"][name]
    return stats


def assert_idle(ws: Workspace, name: str) -> None:
    """Teardown invariant: nothing in flight, nothing queued, on any replica."""

    def idle() -> bool:
        s = gauges(ws, name)
        return s["in_flight"] == 0 and s["queued"] == 0 and all(r["in_flight"] == 0 for r in s["replicas"].values())

    wait_until(idle, timeout=15)


def score_async(service: Webservice, body: dict[str, Any], out: list[Any], timeout: float = 20.0) -> threading.Thread:
    """POST in a thread; appends (status, seconds taken, headers, body) to ``out``."""

    def go() -> None:
        start = time.monotonic()
        r = httpx.post(service.scoring_uri or "", content=json.dumps(body), headers=headers(service), timeout=timeout)
        out.append((r.status_code, time.monotonic() - start, r.headers, r.content))

    t = threading.Thread(target=go)
    t.start()
    return t


def test_per_replica_limit_holds_under_50_clients(ws: Workspace) -> None:
    limit = 2
    svc = deploy(
        ws,
        "counter",
        "counting",
        num_replicas=2,
        autoscale_enabled=False,
        replica_max_concurrent_requests=limit,
        max_request_wait_time=20000,
    )
    answers: list[dict[str, Any]] = []
    failures: list[Any] = []
    router_max = [0]
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(headers=headers(svc), timeout=30) as c:
            for _ in range(4):
                r = c.post(svc.scoring_uri or "", content=b'{"sleep": 0.01}')
                if r.status_code == 200:
                    answers.append(r.json())
                else:
                    failures.append((r.status_code, r.text))

    def watch_router() -> None:
        # The router's own view of each replica, sampled while the load runs.
        while not stop.is_set():
            for r in gauges(ws, "counter")["replicas"].values():
                router_max[0] = max(router_max[0], r["in_flight"])

    watcher = threading.Thread(target=watch_router)
    watcher.start()
    clients = [threading.Thread(target=client) for _ in range(50)]
    try:
        for t in clients:
            t.start()
        for t in clients:
            t.join(60)
    finally:
        stop.set()
        watcher.join(10)
    assert not failures, failures[:3]
    assert len(answers) == 200
    per_pid: dict[int, int] = {}
    for a in answers:
        per_pid[a["pid"]] = max(per_pid.get(a["pid"], 0), a["max"])
    assert len(per_pid) == 2, per_pid  # both replicas took work
    assert max(per_pid.values()) <= limit, per_pid  # run() never saw more than the limit at once
    assert max(per_pid.values()) == limit, per_pid  # ... and the limit was reached (the test bites)
    assert router_max[0] <= limit
    assert_idle(ws, "counter")


@pytest.fixture(scope="module")
def slow(ws: Workspace) -> Webservice:
    """One replica at limit 1: a 300 ms wait, a 1 s scoring timeout."""
    return deploy(
        ws,
        "slow",
        "counting",
        num_replicas=1,
        autoscale_enabled=False,
        max_request_wait_time=300,
        scoring_timeout_ms=1000,
    )


def occupy(ws: Workspace, svc: Webservice, seconds: float, out: list[Any]) -> threading.Thread:
    """Put one request of ``seconds`` on the only replica and wait until the router shows it."""
    t = score_async(svc, {"sleep": seconds}, out)
    wait_until(lambda: gauges(ws, svc.name)["in_flight"] == 1, timeout=10, interval=0.01)
    return t


def test_queue_overflow_gives_503_within_the_wait_bound(ws: Workspace, slow: Webservice) -> None:
    first: list[Any] = []
    holder = occupy(ws, slow, 0.9, first)
    waiting: list[Any] = []
    threads = [score_async(slow, {"sleep": 0}, waiting) for _ in range(3)]
    for t in threads:
        t.join(10)
    holder.join(10)
    assert [a[0] for a in waiting] == [503, 503, 503], waiting
    for _, took, hdrs, body in waiting:
        assert hdrs["retry-after"] == "1"
        assert "max_request_wait_time" in json.loads(body)["message"]
        assert 0.3 <= took < 0.3 + 0.5, took  # the 300 ms bound plus a small margin
    assert first[0][0] == 200
    assert_idle(ws, "slow")


def test_slow_run_gives_504_and_never_overlaps_the_next_request(ws: Workspace, slow: Webservice) -> None:
    out: list[Any] = []
    t = score_async(slow, {"sleep": 1.6}, out)
    t.join(10)
    [(status, took, _, body)] = out
    assert status == 504, body
    assert 1.0 <= took < 1.5, took
    assert "scoring_timeout_ms" in json.loads(body)["message"]
    # run() is still sleeping. The router holds the slot until the replica answers (its own
    # timeout answer comes at the same deadline), and the replica keeps its own slot until
    # run() returns, answering "busy" meanwhile: a request sent now waits, or is refused with
    # 503 once its wait is over, but never runs beside the first.
    during: list[Any] = []
    score_async(slow, {"sleep": 0}, during).join(10)
    assert during[0][0] in (200, 503), during
    if during[0][0] == 200:
        assert json.loads(during[0][3])["max"] == 1
    assert_idle(ws, "slow")
    after: list[Any] = []
    wait_until(lambda: score_async(slow, {"sleep": 0}, after).join(10) or after[-1][0] == 200, timeout=10)
    assert json.loads(after[-1][3])["max"] == 1  # the calls never overlapped


def test_killed_replica_gives_502_never_a_hang(ws: Workspace) -> None:
    svc = deploy(ws, "victim", "counting", num_replicas=1, autoscale_enabled=False, scoring_timeout_ms=30000)
    out: list[Any] = []
    t = occupy(ws, svc, 20, out)
    [replica] = ws.cluster().status()["services"]["victim"]["replicas"]
    os.kill(replica["pid"], signal.SIGKILL)
    t.join(10)
    assert not t.is_alive(), "the client is still waiting after its replica was killed"
    [(status, took, _, body)] = out
    assert status == 502, body
    assert "failed while handling the request" in json.loads(body)["message"]
    assert_idle(ws, "victim")

    def serves_again() -> bool:
        r = httpx.post(svc.scoring_uri or "", content=b"{}", headers=headers(svc), timeout=10)
        return r.status_code == 200

    wait_until(serves_again, timeout=30, interval=0.2)  # restarted, probed, marked healthy


def test_clients_that_leave_while_queued_leave_no_slot(ws: Workspace) -> None:
    svc = deploy(ws, "leavers", "counting", num_replicas=1, autoscale_enabled=False, max_request_wait_time=20000)
    out: list[Any] = []
    holder = occupy(ws, svc, 1.0, out)
    uri = urlsplit(svc.scoring_uri or "")
    body = b'{"sleep": 0}'
    head = (
        f"POST {uri.path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {svc.get_keys()[0]}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    socks = []
    try:
        for _ in range(5):
            s = socket.create_connection((uri.hostname, uri.port), timeout=5)
            s.sendall(head + body)
            socks.append(s)
        wait_until(lambda: gauges(ws, "leavers")["queued"] == 5, timeout=10, interval=0.01)
    finally:
        for s in socks:
            s.close()
    wait_until(lambda: gauges(ws, "leavers")["queued"] == 0, timeout=5, interval=0.01)
    assert gauges(ws, "leavers")["in_flight"] == 1  # only the holder; nobody left was sent on
    holder.join(10)
    assert out[0][0] == 200
    assert json.loads(out[0][3])["calls"] == 1  # none of the leavers reached run()
    assert_idle(ws, "leavers")
