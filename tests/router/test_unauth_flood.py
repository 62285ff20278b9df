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
