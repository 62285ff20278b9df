"""Defect 3 (issue 12), router side: limits on request heads (431), a header timeout that cuts
a slowloris client off while others are served, and a keep-alive idle timeout."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest

from modelfleet.errors import ConfigError
from modelfleet.router.proxy import Router
from modelfleet.router.timeouts import ConnectionTimeouts
from router_upstream import Answers, RouterThread, UpstreamProcess, serve_on

BODY = b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
HEAD = b"POST /api/v1/service/svc/score HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n" % len(BODY)


def exchange(port: int, data: bytes, timeout: float = 10) -> tuple[list[tuple[int, dict[bytes, bytes], bytes]], bool]:
    """Send ``data``; read until the server closes or ``timeout``. Returns answers and whether closed."""
    answers = Answers()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with contextlib.suppress(OSError):  # the router may close before reading all of a refused head
            s.sendall(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                return answers.done, True
            if not chunk:
                return answers.done, True
            answers.feed(chunk)
    return answers.done, False


def served(rt: RouterThread) -> int:
    with httpx.Client(timeout=10) as c:
        return c.post(rt.url("svc"), content=BODY).status_code


@pytest.mark.parametrize(
    ("head", "what"),
    [
        (b"x-big: " + b"a" * 70_000 + b"\r\n", "larger than the router's limit of 65536 bytes"),
        (b"".join(b"x-h%d: v\r\n" % i for i in range(101)), "more than the router's limit of 100 header fields"),
    ],
    ids=["70KB-header", "101-headers"],
)
def test_heads_over_the_limits_get_431_then_close(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess], head: bytes, what: str
) -> None:
    up = upstreams()
    serve_on(router, "svc", [up.port])
    answers, closed = exchange(router.port, HEAD + head + b"\r\n" + BODY)
    assert [a[0] for a in answers] == [431]
    assert what in json.loads(answers[0][2])["message"]
    assert answers[0][1][b"content-type"] == b"application/json"
    assert closed
    assert up.stats()["requests"] == 0  # never reached the replica
    # Just under the limits passes.
    ok = b"".join(b"x-h%d: v\r\n" % i for i in range(90)) + b"x-big: " + b"a" * 60_000 + b"\r\n"
    answers, _ = exchange(router.port, HEAD + ok + b"connection: close\r\n\r\n" + BODY)
    assert [a[0] for a in answers] == [200]
    assert served(router) == 200


def test_an_unfinished_header_line_is_bounded_too(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    # httptools buffers a header line until it ends, without calling back: the router counts
    # the bytes of reads that fall inside a head, so a never-ending line is refused as well.
    serve_on(router, "svc", [upstreams().port])
    answers, closed = exchange(router.port, HEAD + b"x-endless: " + b"a" * 300_000, timeout=10)
    assert [a[0] for a in answers] == [431]
    assert closed
    assert served(router) == 200


def test_slowloris_is_cut_off_after_the_header_timeout_while_others_are_served(
    make_router: Callable[..., RouterThread], upstreams: Callable[..., UpstreamProcess]
) -> None:
    rt = make_router(header_timeout_s=2.0)
    serve_on(rt, "svc", [upstreams().port])
    result: dict[str, object] = {}

    def slowloris() -> None:
        t0 = time.monotonic()
        got = b""
        with socket.create_connection(("127.0.0.1", rt.port), timeout=30) as s:
            try:
                for byte in HEAD:  # one byte every 0.25 s: the head would take ~25 s
                    s.sendall(bytes([byte]))
                    time.sleep(0.25)
            except OSError:
                pass
            try:
                while chunk := s.recv(4096):
                    got += chunk
            except OSError:
                pass
        result["took"] = time.monotonic() - t0
        result["got"] = got

    t = threading.Thread(target=slowloris)
    t.start()
    statuses = []
    while t.is_alive() and len(statuses) < 200:
        statuses.append(served(rt))  # others are served meanwhile
        time.sleep(0.05)
    t.join(60)
    assert not t.is_alive()
    assert set(statuses) == {200} and len(statuses) >= 5
    assert 1.5 <= result["took"] <= 10, result  # type: ignore[operator]
    assert result["got"].startswith(b"HTTP/1.1 408 Request Timeout")  # type: ignore[attr-defined]


def test_idle_keep_alive_connections_are_closed_busy_ones_are_not(
    make_router: Callable[..., RouterThread], upstreams: Callable[..., UpstreamProcess]
) -> None:
    rt = make_router(keep_alive_timeout_s=1.5)
    serve_on(rt, "svc", [upstreams().port])
    request = HEAD + b"\r\n" + BODY
    with socket.create_connection(("127.0.0.1", rt.port), timeout=10) as busy:
        answers = Answers()
        for _ in range(8):  # 4 s of requests every 0.5 s on one connection: never idle 1.5 s
            busy.sendall(request)
            n = len(answers.done)
            while len(answers.done) == n:
                answers.feed(busy.recv(65536))
            time.sleep(0.5)
        assert [a[0] for a in answers.done] == [200] * 8
        busy.sendall(request)
        answers.feed(busy.recv(65536))
        t0 = time.monotonic()
        assert busy.recv(65536) == b""  # then idle: closed by the router
        assert 0.5 <= time.monotonic() - t0 <= 6
    # A connection that never sends anything is cut at the header timeout (default 20 s > 1.5 s
    # here: it falls under the keep-alive figure only once it has sent a request).
    assert served(rt) == 200


def test_limits_are_validated() -> None:
    with pytest.raises(ConfigError, match="max_header_bytes"):
        Router(max_header_bytes=10)
    with pytest.raises(ConfigError, match="max_header_fields"):
        Router(max_header_fields=0)
    with pytest.raises(ConfigError, match="header_timeout_s"):
        Router(header_timeout_s=0)
    with pytest.raises(ConfigError, match="keep_alive_timeout_s"):
        Router(keep_alive_timeout_s=-1)
    with pytest.raises(ConfigError, match="send_timeout_s"):
        Router(send_timeout_s=float("nan"))


@dataclass
class Conn:
    """A connection as the timeout sweep sees it (plain data; ``client.ClientConnection``'s fields)."""

    write_paused: bool = False
    drained: int = 0
    drained_seen: int = -1
    stalled: float = 0.0
    cycles: list[object] = field(default_factory=list)
    seq: int = 0
    seen: int = -1
    quiet: float = 0.0
    in_head: bool = False


def test_the_sweep_applies_each_timeout_to_the_connections_it_fits() -> None:
    t = ConnectionTimeouts(header_timeout_s=2, keep_alive_timeout_s=5, send_timeout_s=3)
    assert t.tick_s == 1.0
    assert ConnectionTimeouts(0.5, 5, 3).tick_s == 0.25  # half the shortest
    fresh = Conn()  # never sent a byte: the header timeout
    owed = Conn(cycles=[object()], seq=1)  # an answer is owed: no timeout runs
    idle = Conn(seq=1)  # answered, nothing new: the keep-alive timeout
    heading = Conn(seq=2, in_head=True)  # a head begun: the header timeout
    paused = Conn(write_paused=True, seq=1, cycles=[object()])
    conns = [fresh, owed, idle, heading, paused]
    assert t.sweep(conns, 1.0) == ([], [])  # first sight: seq counted, nothing expires
    assert t.sweep(conns, 1.0) == ([], [])
    assert t.sweep(conns, 1.5) == ([fresh, heading], [])  # quiet 2.5 s >= 2 s (fresh: from the first sweep)
    heading.seq = 3  # another head begun: its quiet time starts again
    assert t.sweep([heading, idle], 1.0) == ([], [])
    assert t.sweep([heading, idle, paused], 2.0) == ([heading, idle], [paused])  # idle 5.5 s, paused 4.5 s
    paused.drained += 1  # the client read something: the send timeout starts again
    assert t.sweep([paused], 10.0) == ([], [])  # progress seen: stalled counts from this sweep
    assert t.sweep([paused], 2.9) == ([], [])
    assert t.sweep([paused], 0.1) == ([], [paused])
    assert owed.quiet == 0.0 and t.sweep([owed], 100.0) == ([], [])
