"""End to end: scale to zero (issue 17) with a real daemon, router, replicas and workspace.

Idle for ``scale_to_zero_after_seconds`` -> 0 replicas (Healthy, "scaled to zero"); then a
burst of 20 requests is held in the router while one replica starts, and every one is answered
200 by that one replica; the scale events record 1 -> 0 and 0 -> 1. A request that cannot wait
(no max_request_wait_time, 1 ms of cold_start_wait_ms) gets 503 with Retry-After, and still brings a
replica back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from e2e_support import deploy, stop_cluster, wait_until
from modelfleet import Workspace

ZERO = {
    "num_replicas": None,
    "autoscale_enabled": True,
    "autoscale_min_replicas": 1,
    "autoscale_max_replicas": 1,  # "after one cold start": the burst may not start a second
    "scale_to_zero_after_seconds": 2,
    "auth_enabled": False,
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = Workspace.create("zero", tmp_path_factory.mktemp("ws"))
    yield workspace
    stop_cluster(workspace)


def replica_count(ws: Workspace, name: str) -> int:
    return len(ws.cluster().status()["services"][name]["replicas"])


def test_idle_to_zero_then_a_burst_is_held_and_served_by_one_cold_start(ws: Workspace) -> None:
    service = deploy(ws, "napper", "counting", max_request_wait_time=500, cold_start_wait_ms=30000, **ZERO)
    assert replica_count(ws, "napper") == 1
    wait_until(lambda: replica_count(ws, "napper") == 0, timeout=30)
    wait_until(lambda: (service.state, service.error) == ("Healthy", "scaled to zero"), timeout=10)
    # and the router has let the last replica go (its view can trail the target's on a busy machine)
    wait_until(lambda: not ws.cluster().status()["router"]["napper"]["replicas"], timeout=10)

    results: list[tuple[int, dict[str, int] | str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(20)

    def call() -> None:
        # The client is made before the barrier, so that most arrive while no replica exists and
        # are held by cold_start_wait_ms. A forked replica can be listed within 50 ms, and one
        # arriving after that waits max_request_wait_time (500 ms) only, as it should: run()
        # returns at once, so that 20 of them fit in it (at 0.05 s each, some got 503).
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            r = client.post(service.scoring_uri, json={"sleep": 0})
        with lock:
            results.append((r.status_code, r.json() if r.status_code == 200 else r.text))

    t0 = time.monotonic()
    threads = [threading.Thread(target=call) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    took = time.monotonic() - t0
    print(f"\n20 requests held through one cold start: all answered in {took:.2f} s")
    assert len(results) == 20
    assert [status for status, _ in results] == [200] * 20, [r for r in results if r[0] != 200]
    pids = {body["pid"] for _, body in results}  # type: ignore[index]
    assert len(pids) == 1, pids  # one replica served them all
    assert max(body["calls"] for _, body in results) == 20  # type: ignore[index]
    assert replica_count(ws, "napper") == 1

    moves = [(e["from"], e["to"]) for e in service.get_scale_events()]
    assert moves[:2] == [(1, 0), (0, 1)], moves
    events = service.get_scale_events()
    assert "scale_to_zero_after_seconds=2" in events[0]["reason"]
    assert "while scaled to zero" in events[1]["reason"]


def test_a_request_that_cannot_wait_gets_503_with_retry_after_and_wakes_the_service(ws: Workspace) -> None:
    service = deploy(ws, "sleeper", "counting", max_request_wait_time=0, cold_start_wait_ms=1, **ZERO)
    wait_until(lambda: replica_count(ws, "sleeper") == 0, timeout=30)
    r = httpx.post(service.scoring_uri, json={"sleep": 0}, timeout=30)
    assert r.status_code == 503 and r.headers.get("retry-after") == "1", (r.status_code, r.text)
    assert "is scaled to zero and no replica was Ready within" in r.json()["message"]
    assert "(1 ms)" in r.json()["message"]
    # the refused request still counts as an arrival: one replica comes back for what follows
    wait_until(lambda: replica_count(ws, "sleeper") == 1, timeout=15)
    wait_until(lambda: httpx.post(service.scoring_uri, json={"sleep": 0}, timeout=30).status_code == 200, timeout=30)
