"""Defect 6 (issue 12), router parts: a request malformed after its head gets a 400 with a JSON
body, then the connection closes; request smuggling (Content-Length with Transfer-Encoding, two
Content-Lengths) gets the same; a pooled connection reset before any answer byte is retried once
on a new connection instead of answering 502."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from modelfleet.router.proxy import Upstream
from router_upstream import Answers, RouterThread, UpstreamProcess, assert_idle, serve_on

BODY = b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
SCORE = b"POST /api/v1/service/svc/score HTTP/1.1\r\nhost: x\r\n"


def exchange(port: int, data: bytes, timeout: float = 10) -> tuple[list[tuple[int, dict[bytes, bytes], bytes]], bool]:
    answers = Answers()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        try:
            while chunk := s.recv(65536):
                answers.feed(chunk)
        except (ConnectionResetError, TimeoutError):
            return answers.done, False
    return answers.done, True


def message(answer: tuple[int, dict[bytes, bytes], bytes]) -> str:
    assert answer[1][b"content-type"] == b"application/json"
    return str(json.loads(answer[2])["message"])


SMUGGLING = {
    "CL-then-TE": b"content-length: 4\r\ntransfer-encoding: chunked\r\n\r\n4\r\n[55]\r\n0\r\n\r\n",
    "TE-then-CL": b"transfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n4\r\n[55]\r\n0\r\n\r\n",
    "two-different-CLs": b"content-length: 4\r\ncontent-length: 40\r\n\r\n[55]",
    "two-equal-CLs": b"content-length: 4\r\ncontent-length: 4\r\n\r\n[55]",
}


@pytest.mark.parametrize("tail", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_smuggling_attempts_get_400_and_close(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess], tail: bytes
) -> None:
    up = upstreams()
    serve_on(router, "svc", [up.port])
    # Alone, and behind a slow request on the same connection (answered first, in order).
    answers, closed = exchange(router.port, SCORE + tail)
    assert [a[0] for a in answers] == [400] and closed
    assert "request smuggling" in message(answers[0])
    slow = SCORE + b"x-test-sleep-ms: 200\r\ncontent-length: %d\r\n\r\n" % len(BODY) + BODY
    answers, closed = exchange(router.port, slow + SCORE + tail + slow)
    assert [a[0] for a in answers] == [200, 400] and closed
    assert up.stats()["requests"] == 1  # only the slow one reached the replica


BAD_BODIES = {
    "bad-chunk-size": b"transfer-encoding: chunked\r\n\r\n4\r\n[55]\r\nzz\r\n",
    "chunk-longer-than-said": b"transfer-encoding: chunked\r\n\r\n2\r\n[55]\r\n0\r\n\r\n",
    "TE-identity": b"transfer-encoding: identity\r\n\r\n[55]",
}


@pytest.mark.parametrize("tail", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_parse_error_after_the_head_gets_400_then_close(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess], tail: bytes
) -> None:
    up = upstreams()
    serve_on(router, "svc", [up.port])
    answers, closed = exchange(router.port, SCORE + b"x-test-echo: 1\r\n" + tail)
    assert [a[0] for a in answers] == [400] and closed
    assert message(answers[0]) == "malformed HTTP request"
    slow = SCORE + b"x-test-sleep-ms: 200\r\ncontent-length: %d\r\n\r\n" % len(BODY) + BODY
    answers, closed = exchange(router.port, slow + SCORE + tail)
    assert [a[0] for a in answers] == [200, 400] and closed
    assert_idle(router)
    assert up.stats()["requests"] == 1  # the malformed request was never scored
    assert httpx.post(router.url("svc"), content=BODY).status_code == 200


def test_a_protocol_upgrade_gets_400_and_never_reaches_the_replica(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    # httptools reports the upgrade after the request's head and end: the request is refused
    # in its turn, not forwarded (the router speaks only HTTP/1.1).
    up = upstreams()
    serve_on(router, "svc", [up.port])
    upgrade = b"GET /api/v1/service/svc/score HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n"
    answers, closed = exchange(router.port, upgrade)
    assert [a[0] for a in answers] == [400] and closed
    assert message(answers[0]) == "malformed HTTP request"
    slow = SCORE + b"x-test-sleep-ms: 200\r\ncontent-length: %d\r\n\r\n" % len(BODY) + BODY
    answers, closed = exchange(router.port, slow + upgrade)
    assert [a[0] for a in answers] == [200, 400] and closed
    assert_idle(router)
    assert up.stats()["requests"] == 1  # only the slow one reached the replica


class ResettingUpstream:
    """An HTTP server on 127.0.0.1 whose first connection answers one request, then, when the
    next request arrives on it, resets (SO_LINGER 0) without reading it: what a replica killed
    while the router's pooled connection sat idle looks like. Later connections answer."""

    def __init__(self, *, dies: bool = False) -> None:
        self.dies = dies  # stop listening as it resets: a replica process that was killed
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.scored = 0
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._conn, args=(conn, self.connections == 1), daemon=True).start()

    def _answer_one(self, conn: socket.socket) -> bool:
        answers = Requests()
        while not answers.done:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            answers.parser.feed_data(chunk)
        self.scored += 1
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 4\r\n\r\n[55]")
        return True

    def _conn(self, conn: socket.socket, reset_second: bool) -> None:
        with conn:
            if not self._answer_one(conn):
                return
            if reset_second:
                select.select([conn], [], [], 10)  # the next request arrived: unread, reset
                if self.dies:
                    self.close()
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            while self._answer_one(conn):
                pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self.sock.close()


class Requests:
    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.done = False

    def on_message_complete(self) -> None:
        self.done = True


@pytest.fixture
def resetting() -> Iterator[ResettingUpstream]:
    up = ResettingUpstream()
    try:
        yield up
    finally:
        up.close()


def test_pooled_connection_reset_before_answering_is_retried_once(
    router: RouterThread, resetting: ResettingUpstream
) -> None:
    serve_on(router, "svc", [resetting.port])
    with httpx.Client(timeout=10) as c:
        assert c.post(router.url("svc"), content=BODY).status_code == 200
        r = c.post(router.url("svc"), content=BODY)  # goes out on the pooled connection: reset
        assert r.status_code == 200 and r.json() == [55]
    assert resetting.scored == 2 and resetting.connections == 2
    assert router.failed == []  # a stale pooled connection is not a replica failure
    assert_idle(router)


def test_replica_that_read_the_request_then_died_is_not_replayed(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    a, b = upstreams(), upstreams()
    serve_on(router, "svc", [a.port, b.port], max_wait_s=2)
    with httpx.Client(timeout=10) as c:
        for _ in range(4):  # both pooled connections are now reused ones
            assert c.post(router.url("svc"), content=BODY).status_code == 200
        r = c.post(router.url("svc"), content=BODY, headers={"x-test-close": "1"})
        assert r.status_code == 502  # it may have run: never sent twice
    assert a.stats()["requests"] + b.stats()["requests"] == 4


def test_replica_gone_after_the_reset_gives_502_and_the_request_goes_nowhere_else(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    dying = ResettingUpstream(dies=True)
    other = upstreams()
    try:
        serve_on(router, "svc", [dying.port])
        with httpx.Client(timeout=10) as c:
            assert c.post(router.url("svc"), content=BODY).status_code == 200
            router.call(
                lambda: router.router.set_replicas(
                    "svc", [Upstream("svc-0", "127.0.0.1", dying.port), Upstream("svc-1", "127.0.0.1", other.port)]
                )
            )
            # Replicas take turns: within four requests one meets the reset pooled connection.
            statuses = [c.post(router.url("svc"), content=BODY).status_code for _ in range(4)]
        assert sorted(statuses) == [200, 200, 200, 502]
        assert other.stats()["requests"] == 3  # the 502's request was not replayed on svc-1
        assert dying.scored == 1
        assert router.failed == [("svc", "svc-0")]
    finally:
        dying.close()
