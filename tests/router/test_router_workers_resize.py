"""Router workers grow and shrink (``RouterWorkers.resize``, what ``--router-workers LOW-HIGH``
applies as ``decide_workers`` says): real worker processes on a real port, a stand-in replica (tests/router_upstream.py)
that counts busy answers; the rule that decides the count, with plain samples."""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from modelfleet.control.router_fleet import FleetRouter
from modelfleet.control.router_workers import (
    RouterWorkers,
    WorkerScaleState,
    WorkerSettings,
    decide_workers,
    parse_workers,
)
from modelfleet.errors import ConfigError
from modelfleet.router.auth import KeyAuth
from modelfleet.router.proxy import ServiceRoute, Upstream
from router_upstream import UpstreamProcess

KEY = "resize-test-key-1"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def score(port: int) -> int:
    """One request on a new connection (the kernel picks the listener)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/api/v1/service/svc/score", body=b"{}", headers={"Authorization": f"Bearer {KEY}"})
        return conn.getresponse().status
    finally:
        conn.close()


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_the_fleet_grows_and_shrinks_serving_throughout(
    tmp_path: Path, upstreams: Callable[..., UpstreamProcess]
) -> None:
    replica = upstreams("--limit", "2")  # answers busy past 2 at once, as a replica does

    async def main() -> None:
        router = FleetRouter(workers=1, slots="partitioned")
        port = await router.start("127.0.0.1", 0, reuse_port=True)
        listen = {"host": "127.0.0.1", "port": port, "http_port": None, "cert_file": "", "key_file": ""}
        fleet = RouterWorkers(router, tmp_path / "workers.sock", listen, {}, lambda service, rid: None)
        await fleet.start()
        pids: list[int] = []
        try:
            router.set_service(ServiceRoute(name="svc", auth=KeyAuth(KEY), max_concurrent=2))
            router.set_replicas("svc", [Upstream("svc-1-0", "127.0.0.1", replica.port)])
            d = router.services[b"svc"].dispatch
            assert [s.id for s in d.slots()] == ["svc-1-0"] and d.limit == 2  # alone: the replica at its limit

            await fleet.resize(2)
            await until(lambda: all(w["listening"] for w in fleet.status()))
            d = router.services[b"svc"].dispatch
            assert router.workers == 2 and [s.id for s in d.slots() if s.listed] == ["svc-1-0#0"] and d.limit == 1
            statuses = [await asyncio.to_thread(score, port) for _ in range(40)]
            assert statuses == [200] * 40
            await until(lambda: all(w["answered"] > 0 for w in fleet.status()))  # both took connections
            added = fleet.status()[1]["pid"]
            pids.append(added)

            await fleet.resize(1)
            assert not alive(added) and [w["index"] for w in fleet.status()] == [0]
            d = router.services[b"svc"].dispatch
            assert router.workers == 1 and [s.id for s in d.slots() if s.listed] == ["svc-1-0"] and d.limit == 2
            statuses = [await asyncio.to_thread(score, port) for _ in range(10)]
            assert statuses == [200] * 10
            assert replica.stats()["busy"] == 0  # the slots never added up to more than the limit
        finally:
            await fleet.stop()
            await router.stop()
        assert not any(alive(p) for p in pids)
        assert not (tmp_path / "workers.sock").exists()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_range_parses_and_is_checked() -> None:
    assert parse_workers("3") == (3, 0) and parse_workers("1-4") == (1, 4)
    top = 4 * (os.cpu_count() or 1)
    for bad in ("0", "3-2", f"1-{top + 1}", "x", "1-", "-2", "2-3-4"):
        with pytest.raises(ConfigError, match=rf"^--router-workers must be a count from 1 to {top} or a range"):
            WorkerSettings(*parse_workers(bad))
    assert WorkerSettings(2).scale_settings() is None and WorkerSettings(2, 2).scale_settings() is None
    assert WorkerSettings(2, 2).high == 2 and WorkerSettings(1, 3).high == 3


def test_the_count_follows_the_routing_time_within_the_range() -> None:
    scale = WorkerSettings(1, 3).scale_settings()
    assert scale is not None and (scale.low, scale.high, scale.out_cpu, scale.in_cpu) == (1, 3, 0.6, 0.25)
    state = WorkerScaleState()

    def feed(start: int, stop: int, cpu: float) -> None:
        state.samples.extend((float(t), cpu) for t in range(start, stop))

    feed(0, 5, 0.9)
    assert decide_workers(1, scale, state, 4.0) == (1, "")  # the 10 s window is not full yet
    feed(5, 11, 0.9)
    count, why = decide_workers(1, scale, state, 10.0)
    assert count == 2 and why == "routing CPU 0.90 s/s a process > 0.6 for 10 s"
    feed(11, 29, 0.9)
    assert decide_workers(2, scale, state, 28.0) == (2, "")  # cooling down until 30
    feed(29, 41, 0.7)
    assert decide_workers(2, scale, state, 40.0)[0] == 3
    feed(51, 62, 0.95)
    assert decide_workers(3, scale, state, 61.0) == (3, "")  # the top of the range
    state = WorkerScaleState()
    feed(0, 11, 0.2)  # 3 at 0.2 would be 2 at 0.3: stays (hysteresis against the way out)
    assert decide_workers(3, scale, state, 10.0) == (3, "")
    state = WorkerScaleState()
    feed(0, 11, 0.1)  # 2 at 0.1 would be 1 at 0.2: one retires
    assert decide_workers(2, scale, state, 10.0)[0] == 1
    state = WorkerScaleState()
    feed(0, 11, 0.0)
    assert decide_workers(1, scale, state, 10.0) == (1, "")  # never under the range


def test_the_daemon_does_not_join_another_listener_on_its_port() -> None:
    """With SO_REUSEPORT a bind joins a listener of the same user's on that port; the daemon's
    router (worker 0) refuses a port someone listens on, as a plain bind would; a worker joins."""
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("127.0.0.1", 0))
    other.listen()
    port = other.getsockname()[1]

    async def main() -> None:
        daemon = FleetRouter(workers=2, index=0)
        with pytest.raises(OSError, match="in use"):
            await daemon.start("127.0.0.1", port, reuse_port=True)
        worker = FleetRouter(workers=2, index=1)
        assert await worker.start("127.0.0.1", port, reuse_port=True) == port
        await worker.stop()
        free = FleetRouter(workers=2, index=0)
        bound = await free.start("127.0.0.1", 0, reuse_port=True)  # a port of its own
        assert bound != port
        await free.stop()

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        other.close()
