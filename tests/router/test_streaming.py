"""Streaming through the router (issue 12): chunks reach the client as the replica produces
them; a streaming replica counts as busy until the stream ends; a client that stops reading
is cut off after the send timeout and frees the replica's slot (defect 2), on a streamed and
on a plain answer."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from replica_scripts.harness import Server
from router_upstream import RouterThread, UpstreamProcess, assert_idle, serve_on, wait_for

BODY = b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}'


def test_chunks_arrive_as_produced_and_the_replica_is_busy_until_the_end(
    router: RouterThread, replicas: Callable[..., Server]
) -> None:
    replica = replicas("streaming.py")
    assert replica.port is not None
    serve_on(router, "svc", [replica.port])
    arrivals = []
    busy = []
    with httpx.Client(timeout=30) as c, c.stream("POST", router.url("svc") + "?n=4&gap=0.4", content=b"x") as r:
        assert r.status_code == 200 and r.headers["transfer-encoding"] == "chunked"
        for line in r.iter_lines():
            arrivals.append(time.monotonic())
            busy.append(router.stats()["svc"]["in_flight"])
            assert line.startswith("chunk ")
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert len(arrivals) == 4
    assert all(0.25 <= g <= 1.5 for g in gaps), gaps  # one by one, not all at the end
    assert busy[:3] == [1, 1, 1]  # the slot is held while the replica streams
    assert_idle(router)


def _stop_reading(port: int, path: str) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    s.connect(("127.0.0.1", port))
    s.sendall(b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (path.encode(), len(BODY), BODY))
    assert s.recv(1024).startswith(b"HTTP/1.1 200 OK")
    return s  # and reads nothing more


def _cut_off(s: socket.socket, timeout: float) -> float:
    """Seconds until the router cut this client off (it drains what the kernel holds)."""
    t0 = time.monotonic()
    s.settimeout(timeout)
    time.sleep(0.5 + timeout / 2)  # not reading meanwhile
    try:
        while s.recv(1 << 20):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return float("inf")  # still connected: never cut off
    return time.monotonic() - t0


def test_a_client_that_stops_reading_a_stream_is_cut_off_and_frees_the_slot(
    make_router: Callable[..., RouterThread], replicas: Callable[..., Server], tmp_path: Path
) -> None:
    rt = make_router(send_timeout_s=1.5)
    replica = replicas("streaming.py")
    assert replica.port is not None
    serve_on(rt, "svc", [replica.port])
    marker = tmp_path / "closed"
    s = _stop_reading(rt.port, f"/api/v1/service/svc/score?n=100000&size=65536&marker={marker}")
    with s:
        wait_for(lambda: rt.call(lambda: any(c.write_paused for c in rt.router.connections)), what="write pause")
        assert rt.stats()["svc"]["in_flight"] == 1
        assert _cut_off(s, 8) < 8
    wait_for(lambda: rt.stats()["svc"]["in_flight"] == 0, timeout=10, what="the slot to be freed")
    wait_for(marker.exists, timeout=15, what="the replica to end the generator")
    with httpx.Client(timeout=10) as c:
        assert c.post(rt.url("svc") + "?n=2", content=b"x").status_code == 200


def test_a_client_that_stops_reading_a_plain_answer_is_cut_off_and_frees_the_slot(
    make_router: Callable[..., RouterThread], upstreams: Callable[..., UpstreamProcess]
) -> None:
    rt = make_router(send_timeout_s=1.5)
    up = upstreams()
    serve_on(rt, "svc", [up.port])
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    s.connect(("127.0.0.1", rt.port))
    # The stand-in answers 50 MB with a content-length.
    head = b"GET /api/v1/service/svc/score HTTP/1.1\r\nhost: x\r\nx-test-size: 50000000\r\n\r\n"
    with s:
        s.sendall(head)
        assert s.recv(1024).startswith(b"HTTP/1.1 200 OK")
        wait_for(lambda: rt.call(lambda: any(c.write_paused for c in rt.router.connections)), what="write pause")
        assert rt.stats()["svc"]["in_flight"] == 1
        assert _cut_off(s, 8) < 8
    wait_for(lambda: rt.stats()["svc"]["in_flight"] == 0, timeout=10, what="the slot to be freed")
    with httpx.Client(timeout=10) as c:
        assert c.post(rt.url("svc"), content=BODY).status_code == 200


def test_a_client_that_leaves_mid_stream_ends_the_generator_and_frees_the_slot(
    router: RouterThread, replicas: Callable[..., Server], tmp_path: Path
) -> None:
    replica = replicas("streaming.py")
    assert replica.port is not None
    serve_on(router, "svc", [replica.port])
    marker = tmp_path / "closed"
    url = router.url("svc") + f"?n=1000&gap=0.05&marker={marker}"
    with httpx.Client(timeout=30) as c, c.stream("POST", url, content=b"x") as r:
        lines = r.iter_lines()
        assert next(lines).startswith("chunk 0")
        assert next(lines).startswith("chunk 1")
        assert router.stats()["svc"]["in_flight"] == 1
    # The client closed its connection after two of 1,000 chunks (50 s of stream).
    wait_for(marker.exists, timeout=15, what="the replica to end the generator")
    wait_for(lambda: router.stats()["svc"]["in_flight"] == 0, timeout=10, what="the slot to be freed")
    with httpx.Client(timeout=10) as c:
        assert c.post(router.url("svc") + "?n=2", content=b"x").status_code == 200
