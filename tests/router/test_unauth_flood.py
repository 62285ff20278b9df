"""Hostile input (issue 12): a flood of unauthenticated requests on one service is answered
401 and counted, and an authenticated client of another service behind the same router is
served throughout. Real sockets and a real router; the latency side of this (the keyed
client's p99 within 2x its quiet value) is measured by ``bench/unauth_flood.py``, not here:
timings are not asserted in the test suite."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import httpx
import pytest

from modelfleet.router.auth import KeyAuth
from router_upstream import Answers, RouterThread, UpstreamProcess, assert_idle, pipeline, serve_on

PIPELINES = 4
PIPELINED = 2_500  # per connection
ONE_SHOT = 300  # connections that each send one request and close
KEY = "the-served-key"


def _unauthenticated(i: int, close: bool = False) -> bytes:
    connection = b"connection: close\r\n" if close else b""
    return (
        b"POST /api/v1/service/guarded/score HTTP/1.1\r\nhost: x\r\nauthorization: Bearer guess-%d\r\n"
        b"content-length: 2\r\n%s\r\n{}" % (i, connection)
    )


def _one_shot(port: int, i: int) -> int:
    answers = Answers()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(_unauthenticated(i, close=True))
        while not answers.done and (chunk := s.recv(65536)):
            answers.feed(chunk)
    return answers.done[0][0]


def test_a_flood_of_401s_is_counted_and_another_services_client_is_served(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    serve_on(router, "guarded", [upstreams().port], auth=KeyAuth("guarded-key", "guarded-key-2"))
    serve_on(router, "served", [upstreams().port], auth=KeyAuth(KEY, "served-key-2"))
    flood_statuses: list[int] = []
    closed: list[bool] = []
    lock = threading.Lock()

    def pipelined(n: int) -> None:
        answers, was_closed = pipeline(router.port, [_unauthenticated(n * PIPELINED + i) for i in range(PIPELINED)])
        with lock:
            flood_statuses.extend(a[0] for a in answers.done)
            closed.append(was_closed)

    def one_shots() -> None:
        statuses = [_one_shot(router.port, i) for i in range(ONE_SHOT)]
        with lock:
            flood_statuses.extend(statuses)

    flood = [threading.Thread(target=pipelined, args=(n,)) for n in range(PIPELINES)]
    flood.append(threading.Thread(target=one_shots))
    for t in flood:
        t.start()
    served: list[int] = []
    with httpx.Client(timeout=30) as client:
        while any(t.is_alive() for t in flood) or len(served) < 50:
            r = client.post(router.url("served"), content=b"{}", headers={"authorization": f"Bearer {KEY}"})
            served.append(r.status_code)
    for t in flood:
        t.join(60)

    total = PIPELINES * PIPELINED + ONE_SHOT
    assert len(flood_statuses) == total and set(flood_statuses) == {401}
    assert closed == [False] * PIPELINES  # a keep-alive connection stays open across its 401s
    assert set(served) == {200}, f"the keyed client got {sorted(set(served))} during the flood"
    invalid = router.call(lambda: router.router.services[b"guarded"].metrics.auth_invalid)
    assert invalid == total
    assert router.call(lambda: router.router.services[b"served"].metrics.auth_invalid) == 0
    assert_idle(router)


def _ask(sock: socket.socket, key: str) -> int:
    """One request on a keep-alive connection; its status."""
    sock.sendall(
        b"POST /api/v1/service/guarded/score HTTP/1.1\r\nhost: x\r\nauthorization: Bearer %s\r\n"
        b"content-length: 2\r\n\r\n{}" % key.encode()
    )
    answers = Answers()
    while not answers.done and (chunk := sock.recv(65536)):
        answers.feed(chunk)
    return answers.done[0][0]


def test_a_connection_past_its_allowance_of_401s_is_read_once_a_pause_until_a_key_passes(
    make_router: Callable[..., RouterThread], upstreams: Callable[..., UpstreamProcess]
) -> None:
    pause_s = 1.5
    router = make_router(bad_auth_allowance=5, bad_auth_pause_s=pause_s)
    serve_on(router, "guarded", [upstreams().port], auth=KeyAuth("good-key", "good-key-2"))

    def penalized() -> list[int]:
        from modelfleet.router.ports import PENALTY

        return router.call(lambda: sorted(c.bad_auth for c in router.router.connections if c.gate.reasons & PENALTY))

    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as flooding:
        assert [_ask(flooding, "wrong") for _ in range(5)] == [401] * 5
        assert penalized() == []  # within the allowance: nothing slowed
        assert _ask(flooding, "wrong") == 401  # the 6th: answered, then reads pause
        assert penalized() == [6]
        # the paused connection's next request waits out the pause; another client does not wait
        flooding.sendall(
            b"POST /api/v1/service/guarded/score HTTP/1.1\r\nhost: x\r\nauthorization: Bearer good-key\r\n"
            b"content-length: 2\r\n\r\n{}"
        )
        with httpx.Client(timeout=10) as other:
            r = other.post(router.url("guarded"), content=b"{}", headers={"authorization": "Bearer good-key"})
            assert r.status_code == 200
        flooding.settimeout(pause_s / 3)
        with pytest.raises(TimeoutError):
            flooding.recv(65536)  # nothing read, so nothing answered, while the pause lasts
        flooding.settimeout(10)
        answers = Answers()
        while not answers.done and (chunk := flooding.recv(65536)):
            answers.feed(chunk)
        assert answers.done[0][0] == 200  # read after the pause, and a key that passes ends the streak
        assert router.call(lambda: [c.bad_auth for c in router.router.connections]) in ([0], [0, 0])
        assert _ask(flooding, "wrong") == 401 and penalized() == []  # a fresh allowance
