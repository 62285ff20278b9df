"""Tier 2: the router's limits and failure handling over real sockets — per-replica
concurrency, the wait queue (503), scoring timeout (504), replicas that die, say busy or
refuse, replica swaps under traffic and drains. Teardown checks the gauges are back at 0."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import httpx

from modelfleet.router.proxy import ServiceRoute, Upstream
from router_upstream import RouterThread, UpstreamProcess, wait_for

BODY = b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}'


def serve(rt: RouterThread, name: str, ups: list[UpstreamProcess], **kw: object) -> list[Upstream]:
    route = ServiceRoute(name, **kw)  # type: ignore[arg-type]
    rt.call(lambda: rt.router.set_service(route))
    replicas = [Upstream(f"{name}-{i}", "127.0.0.1", u.port) for i, u in enumerate(ups)]
    set_replicas(rt, name, replicas)
    return replicas


def set_replicas(rt: RouterThread, name: str, replicas: list[Upstream]) -> None:
    rt.call(lambda: rt.router.set_replicas(name, replicas))


class Background:
    """Run a request in a thread; .result() waits for it (status, seconds, headers)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout: float = 30) -> None:
        self.out: tuple[int, float, httpx.Headers] | BaseException | None = None
        self.t0 = time.monotonic()

        def go() -> None:
            try:
                r = httpx.post(url, content=BODY, headers=headers or {}, timeout=timeout)
                self.out = (r.status_code, time.monotonic() - self.t0, r.headers)
            except BaseException as exc:
                self.out = exc

        self.thread = threading.Thread(target=go)
        self.thread.start()

    def result(self, timeout: float = 30) -> tuple[int, float, httpx.Headers]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "request did not finish"
        if isinstance(self.out, BaseException):
            raise self.out
        assert self.out is not None
        return self.out


def in_flight(rt: RouterThread, name: str) -> int:
    return rt.stats()[name]["in_flight"]  # type: ignore[no-any-return]


def test_concurrency_limit_holds_under_50_clients(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    ups = [upstreams("--sleep-ms", "10"), upstreams("--sleep-ms", "10")]
    serve(router, "svc", ups, max_concurrent=2, max_wait_s=20)
    codes: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=30) as c:
            for _ in range(4):
                r = c.post(router.url("svc"), content=BODY)
                with lock:
                    codes.append(r.status_code)

    threads = [threading.Thread(target=client) for _ in range(50)]
    for t in threads:
        t.start()
    peak = 0
    while any(t.is_alive() for t in threads):
        st = router.stats()["svc"]
        peak = max(peak, st["in_flight"])
        assert all(r["in_flight"] <= 2 for r in st["replicas"].values()), st
        time.sleep(0.005)
    for t in threads:
        t.join()
    assert codes == [200] * 200
    stats = [u.stats() for u in ups]
    assert [s["max_concurrent"] for s in stats] == [2, 2]  # reached, never passed
    assert sum(s["requests"] for s in stats) == 200
    assert all(s["busy"] == 0 for s in stats)
    assert peak >= 3  # the test did load both replicas


def test_503_within_the_wait_bound(router: RouterThread, upstreams: Callable[..., UpstreamProcess]) -> None:
    up = upstreams()
    serve(router, "svc", [up], max_wait_s=0.3)
    slow = Background(router.url("svc"), {"x-test-sleep-ms": "1500"})
    wait_for(lambda: in_flight(router, "svc") == 1, what="the slow request to be in flight")
    t0 = time.monotonic()
    r = httpx.post(router.url("svc"), content=BODY, timeout=10)
    took = time.monotonic() - t0
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert "max_request_wait_time (300 ms)" in r.json()["message"]
    assert 0.28 <= took <= 0.3 + 0.25, took
    assert slow.result()[0] == 200


def test_no_ready_replica_waits_then_503_and_a_new_replica_serves_waiters(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    router.call(lambda: router.router.set_service(ServiceRoute("svc", max_wait_s=0.2)))
    t0 = time.monotonic()
    r = httpx.post(router.url("svc"), content=BODY)
    assert r.status_code == 503 and 0.18 <= time.monotonic() - t0 <= 0.5
    # Scale from zero: a request waiting when the first replica appears is served by it.
    router.call(lambda: router.router.set_service(ServiceRoute("svc", max_wait_s=5)))
    waiting = Background(router.url("svc"))
    wait_for(lambda: router.stats()["svc"]["queued"] == 1, what="the request to queue")
    up = upstreams()
    set_replicas(router, "svc", [Upstream("svc-0", "127.0.0.1", up.port)])
    assert waiting.result()[0] == 200


def test_504_and_the_slot_stays_held_until_the_replica_answers(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    up = upstreams()
    serve(router, "svc", [up], timeout_s=0.3, max_wait_s=10)
    slow = Background(router.url("svc"), {"x-test-sleep-ms": "1200"})
    wait_for(lambda: in_flight(router, "svc") == 1, what="the slow request to be in flight")
    nxt = Background(router.url("svc"))
    status, took, headers = slow.result()
    assert status == 504 and 0.25 <= took <= 0.3 + 0.4, took
    assert headers["x-request-id"]
    assert in_flight(router, "svc") == 1  # answered 504, yet the replica still works on it
    status, took, _ = nxt.result()
    assert status == 200
    assert nxt.t0 + took >= slow.t0 + 1.2  # it had to wait for the replica to finish
    assert up.stats()["max_concurrent"] == 1  # never handed a second request meanwhile


def test_replica_that_dies_mid_request_gives_502_and_is_reported(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    a, b = upstreams(), upstreams()
    serve(router, "svc", [a, b], max_wait_s=2)
    with httpx.Client(timeout=10) as c:
        r = c.post(router.url("svc"), content=BODY, headers={"x-test-close": "1"})
        assert r.status_code == 502
        assert "modelfleet service logs -n svc" in r.json()["message"]
        assert len(router.failed) == 1
        bad = router.failed[0][1]
        assert router.stats()["svc"]["replicas"][bad]["ready"] is False
        served = {c.post(router.url("svc"), content=BODY).headers["x-test-served-by"] for _ in range(6)}
        good = b if bad == "svc-0" else a
        assert served == {str(good.pid)}  # the failed replica gets no new requests
        router.call(lambda: router.router.mark_healthy("svc", bad))
        served = {c.post(router.url("svc"), content=BODY).headers["x-test-served-by"] for _ in range(6)}
        assert served == {str(a.pid), str(b.pid)}
        # An answer that is not HTTP: 502, reported like a crash.
        router.call(lambda: router.router.mark_healthy("svc", bad))
        r = c.post(router.url("svc"), content=BODY, headers={"x-test-garbage": "1"})
        assert r.status_code == 502 and len(router.failed) == 2
        router.call(lambda: router.router.mark_healthy("svc", router.failed[1][1]))
        # A replica process that exits mid-request: 502 (not a hang), then the other serves.
        r = c.post(router.url("svc"), content=BODY, headers={"x-test-exit": "1"})
        assert r.status_code == 502
        for _ in range(4):
            assert c.post(router.url("svc"), content=BODY).status_code == 200
        assert len(router.failed) == 3


def test_refused_connection_is_retried_on_another_replica(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead_port = s.getsockname()[1]
    s.close()
    up = upstreams()
    route = ServiceRoute("svc", max_wait_s=1)
    router.call(lambda: router.router.set_service(route))
    set_replicas(router, "svc", [Upstream("dead", "127.0.0.1", dead_port), Upstream("live", "127.0.0.1", up.port)])
    with httpx.Client() as c:
        assert [c.post(router.url("svc"), content=BODY).status_code for _ in range(4)] == [200] * 4
    assert router.failed == [("svc", "dead")]
    # Only dead replicas: the request waits out max_wait_s and gets 503, never a hang.
    set_replicas(router, "svc", [Upstream("dead", "127.0.0.1", dead_port)])
    assert httpx.post(router.url("svc"), content=BODY).status_code == 503


def test_busy_answer_is_retried_never_passed_through(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    # Each replica allows one request at a time; the test fills one directly, as a second
    # router sharing the replica would.
    a, b = upstreams("--limit", "1"), upstreams("--limit", "1")
    serve(router, "svc", [a, b], max_wait_s=3)
    hog = Background(f"http://127.0.0.1:{a.port}/score", {"x-test-sleep-ms": "800"})
    wait_for(lambda: a.stats()["concurrent"] == 1, what="replica a to be busy")
    with httpx.Client() as c:
        for _ in range(4):  # some go to a first, hear "busy", and end on b
            r = c.post(router.url("svc"), content=BODY)
            assert r.status_code == 200 and r.headers["x-test-served-by"] == str(b.pid)
    assert a.stats()["busy"] >= 1
    assert hog.result()[0] == 200
    # Only a, busy for 600 ms: requeued until a is free, within the wait.
    set_replicas(router, "svc", [Upstream("svc-0", "127.0.0.1", a.port)])
    hog = Background(f"http://127.0.0.1:{a.port}/score", {"x-test-sleep-ms": "600"})
    wait_for(lambda: a.stats()["concurrent"] == 1, what="replica a to be busy")
    r = httpx.post(router.url("svc"), content=BODY, timeout=10)
    assert r.status_code == 200 and r.json() == [55]
    assert time.monotonic() - hog.t0 >= 0.6
    hog.result()
    # Busy past the wait: the client gets the router's 503, not the replica's busy answer.
    router.call(lambda: router.router.set_service(ServiceRoute("svc", max_wait_s=0.2)))
    hog = Background(f"http://127.0.0.1:{a.port}/score", {"x-test-sleep-ms": "800"})
    wait_for(lambda: a.stats()["concurrent"] == 1, what="replica a to be busy")
    r = httpx.post(router.url("svc"), content=BODY, timeout=10)
    assert r.status_code == 503 and "x-modelfleet-busy" not in r.headers
    assert "max_request_wait_time" in r.json()["message"]
    hog.result()
    assert router.failed == []  # busy is not failure


def test_client_that_leaves_while_queued_is_dropped(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    up = upstreams()
    serve(router, "svc", [up], max_wait_s=30)
    slow = Background(router.url("svc"), {"x-test-sleep-ms": "700"})
    wait_for(lambda: in_flight(router, "svc") == 1, what="the slow request to be in flight")
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", router.port))
        s.sendall(
            b"POST /api/v1/service/svc/score HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)
        )
        wait_for(lambda: router.stats()["svc"]["queued"] == 1, what="the request to queue")
        s.close()
        wait_for(lambda: router.stats()["svc"]["queued"] == 0, timeout=2, what="the queued request to leave")
    assert in_flight(router, "svc") == 1  # the slow one, untouched
    assert slow.result()[0] == 200
    assert up.stats()["requests"] == 1  # nobody left scored the abandoned ones


def test_replica_swap_under_continuous_traffic_loses_nothing(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    a, b = upstreams("--sleep-ms", "5"), upstreams("--sleep-ms", "5")
    ra, rb = Upstream("a", "127.0.0.1", a.port), Upstream("b", "127.0.0.1", b.port)
    router.call(lambda: router.router.set_service(ServiceRoute("svc", max_concurrent=2, max_wait_s=5)))
    set_replicas(router, "svc", [ra])
    stop = threading.Event()
    codes: list[int] = []

    def client() -> None:
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                codes.append(c.post(router.url("svc"), content=BODY).status_code)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for replicas in ([rb], [ra, rb], [ra], [rb], [ra]):
            n = len(codes)
            set_replicas(router, "svc", replicas)
            wait_for(lambda n=n: len(codes) >= n + 20, what="traffic after the swap")  # type: ignore[misc]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(codes) >= 100 and set(codes) == {200}
    assert a.stats()["requests"] > 0 and b.stats()["requests"] > 0
    assert router.failed == []


def test_drain_waits_for_in_flight(router: RouterThread, upstreams: Callable[..., UpstreamProcess]) -> None:
    a, b = upstreams(), upstreams()
    serve(router, "svc", [a, b], max_wait_s=5)
    slow = Background(router.url("svc"), {"x-test-sleep-ms": "600", "x-test-echo": "1"})
    wait_for(lambda: in_flight(router, "svc") == 1, what="the slow request to be in flight")
    busy = next(r for r, v in router.stats()["svc"]["replicas"].items() if v["in_flight"])
    idle = "svc-1" if busy == "svc-0" else "svc-0"
    assert router.run(router.router.drain("svc", [idle], 5)) is True  # nothing to wait for
    t0 = time.monotonic()
    assert router.run(router.router.drain("svc", [busy], 5)) is True
    assert slow.result()[0] == 200
    assert time.monotonic() - t0 >= 0.4  # it did wait for the request
    assert router.stats()["svc"]["replicas"] == {}  # both retired, gone once idle
    # Drain that runs out of time says so.
    serve(router, "svc", [a], max_wait_s=5)
    slow = Background(router.url("svc"), {"x-test-sleep-ms": "500"})
    wait_for(lambda: in_flight(router, "svc") == 1, what="the slow request to be in flight")
    assert router.run(router.router.drain("svc", ["svc-0"], 0.1)) is False
    assert slow.result()[0] == 200


def test_remove_service_answers_waiters_and_new_requests(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    up = upstreams()
    serve(router, "svc", [up], max_wait_s=10)
    slow = Background(router.url("svc"), {"x-test-sleep-ms": "500"})
    wait_for(lambda: in_flight(router, "svc") == 1, what="the slow request to be in flight")
    waiting = Background(router.url("svc"))
    wait_for(lambda: router.stats()["svc"]["queued"] == 1, what="the request to queue")
    router.call(lambda: router.router.remove_service("svc"))
    assert waiting.result()[0] == 503
    assert httpx.post(router.url("svc"), content=BODY).status_code == 404
    assert slow.result()[0] == 200  # in flight: finished normally
