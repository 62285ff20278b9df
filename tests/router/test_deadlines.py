"""Tier 2: callers' deadlines (issue 18) through a real router and a real replica process.

A replica whose run() takes 0.3 s at concurrency 1 and 20 requests sent at once with
``x-request-timeout-ms: 1000``: those queued past their deadline get 504 at that moment and are
never sent; the replica's own count shows it ran at most 5. Also: a client that leaves while
queued is dropped (never sent, counted), and a malformed header is a 400 naming it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from modelfleet.telemetry.metrics import FleetCollector, ServiceView, registry_for
from replica_scripts.harness import Server, start_replica
from router_upstream import RouterThread, serve_on, wait_for

SCRIPT = Path(__file__).resolve().parent / "deadline_counting.py"


def counting_replica(tmp_path: Path) -> tuple[Server, Path]:
    count = tmp_path / "runs.txt"
    count.write_text("")
    server = start_replica(SCRIPT, tmp_path, env={"COUNT_FILE": str(count)})
    return server, count


def runs(count: Path) -> list[str]:
    return count.read_text().split()


def dropped(rt: RouterThread, name: str) -> dict[str, int]:
    return rt.call(lambda: dict(rt.router.services[name.encode()].metrics.dropped))  # type: ignore[no-any-return]


def test_queued_requests_past_their_deadline_get_504_then_and_are_never_sent(
    tmp_path: Path, make_router: Callable[..., RouterThread]
) -> None:
    server, count = counting_replica(tmp_path)
    try:
        rt = make_router()
        assert server.port is not None
        serve_on(rt, "slow", [server.port], max_concurrent=1, max_wait_s=30.0, timeout_s=60.0)
        url = rt.url("slow")
        results: list[tuple[int, float, str]] = []
        lock = threading.Lock()
        start = threading.Barrier(20)

        def call() -> None:
            with httpx.Client(timeout=30) as client:
                start.wait()
                t0 = time.monotonic()
                r = client.post(url, content=b'"x"', headers={"x-request-timeout-ms": "1000"})
                with lock:
                    results.append((r.status_code, time.monotonic() - t0, r.text))

        threads = [threading.Thread(target=call) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(results) == 20
        ok = [r for r in results if r[0] == 200]
        expired = [r for r in results if r[0] == 504 and "queued" in r[2]]
        late = [r for r in results if r[0] == 504 and "queued" not in r[2]]  # on the replica at its deadline
        assert len(ok) + len(expired) + len(late) == 20, results
        assert 1 <= len(ok) <= 4 and len(expired) >= 15, results
        worst = max(abs(seconds - 1.0) for _, seconds, _ in expired + late)
        print(
            f"\n{len(ok)} answered, {len(late)} timed out on the replica, {len(expired)} expired in the queue; "
            f"504s came {worst * 1000:.0f} ms at most from the 1,000 ms deadline"
        )
        for _, seconds, _ in expired + late:
            assert 0.95 <= seconds <= 1.25, results  # generous: a loaded 2-core machine
        body = json.loads(expired[0][2])
        assert "deadline" in body["message"] and "not sent" in body["message"]
        rt.wait_idle()
        seen = runs(count)
        assert len(seen) == len(ok) + len(late) <= 5, seen
        # The replica was told what was left of each deadline: under 1,000 ms, falling.
        left = [int(v) for v in seen]
        assert all(0 < v <= 1000 for v in left) and left == sorted(left, reverse=True), left
        assert dropped(rt, "slow") == {"deadline": len(expired)}
        # ... and Prometheus says so.
        svc = rt.call(lambda: rt.router.services[b"slow"])
        text = registry_for(FleetCollector(lambda: [ServiceView("slow", svc.metrics)], rt.router.unrouted))
        from prometheus_client import generate_latest

        out = generate_latest(text).decode()
        assert f'modelfleet_router_dropped_total{{reason="deadline",service="slow"}} {float(len(expired))}' in out
        assert 'modelfleet_router_dropped_total{reason="client_gone",service="slow"} 0.0' in out
    finally:
        server.stop()


def test_a_queued_request_whose_client_leaves_is_never_sent(
    tmp_path: Path, make_router: Callable[..., RouterThread]
) -> None:
    server, count = counting_replica(tmp_path)
    try:
        rt = make_router()
        assert server.port is not None
        serve_on(rt, "slow", [server.port], max_concurrent=1, max_wait_s=30.0, timeout_s=60.0)
        first = threading.Thread(target=lambda: httpx.post(rt.url("slow"), content=b'"x"', timeout=30))
        first.start()
        wait_for(lambda: rt.stats()["slow"]["in_flight"] == 1, what="the first request on the replica")
        # The second waits behind it; its client leaves before its turn.
        with socket.create_connection(("127.0.0.1", rt.port)) as s:
            s.sendall(b'POST /api/v1/service/slow/score HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\n"y"')
            wait_for(lambda: rt.stats()["slow"]["queued"] == 1, what="the second request queued")
        wait_for(lambda: rt.stats()["slow"]["queued"] == 0, what="the queue emptied by the client leaving")
        assert dropped(rt, "slow") == {"client_gone": 1}
        first.join(30)
        rt.wait_idle()
        time.sleep(0.4)  # a request wrongly sent would have run by now
        assert len(runs(count)) == 1
    finally:
        server.stop()


def test_a_malformed_deadline_header_is_a_400_naming_it(make_router: Callable[..., RouterThread]) -> None:
    rt = make_router()
    serve_on(rt, "svc", [1])  # never reached: the header is refused first
    for value in ("0", "-5", "abc", "1.5", "99999999999", ""):
        r = httpx.post(rt.url("svc"), content=b"{}", headers={"x-request-timeout-ms": value}, timeout=10)
        assert r.status_code == 400, (value, r.text)
        message = r.json()["message"]
        assert "x-request-timeout-ms" in message and "from 1 to 2147483647" in message, message
    assert rt.stats()["svc"]["in_flight"] == 0
