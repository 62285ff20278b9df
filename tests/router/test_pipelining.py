"""Defect 1 (issue 12): long pipelines on one keep-alive connection, answered in order, with
every replica slot given back; real sockets, a real replica for the scored kind."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from modelfleet.router.auth import KeyAuth
from replica_scripts.harness import Server
from router_upstream import RouterThread, UpstreamProcess, assert_idle, pipeline, serve_on

N = 10_000
BODY = b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
KEY = "pipeline-key"


def _requests(path: bytes, extra: bytes = b"", body: bytes = b"") -> list[bytes]:
    head = b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n%s" % (path, len(body), extra)
    return [head + b"x-request-id: r%d\r\n\r\n" % i + body for i in range(N)]


def _check_in_order(answers: list[tuple[int, dict[bytes, bytes], bytes]], status: int) -> None:
    assert len(answers) == N, f"{len(answers)} of {N} answered"
    assert [a[1][b"x-request-id"] for a in answers] == [b"r%d" % i for i in range(N)]
    assert {a[0] for a in answers} == {status}


def _another_client_is_served(router: RouterThread) -> None:
    with httpx.Client(timeout=10) as c:
        r = c.post(router.url("svc"), content=BODY, headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text


def test_10000_pipelined_401s_answered_in_order(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    serve_on(router, "svc", [upstreams().port], auth=KeyAuth(KEY, "other-key"))
    answers, closed = pipeline(router.port, _requests(b"/api/v1/service/svc/score", b"authorization: Bearer no\r\n"))
    _check_in_order(answers.done, 401)
    assert not closed
    assert_idle(router)
    _another_client_is_served(router)


def test_10000_pipelined_404s_answered_in_order(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    serve_on(router, "svc", [upstreams().port], auth=KeyAuth(KEY, "other-key"))
    answers, closed = pipeline(router.port, _requests(b"/api/v1/service/nope/score"))
    _check_in_order(answers.done, 404)
    assert not closed
    _another_client_is_served(router)


def test_10000_pipelined_scores_through_a_real_replica(router: RouterThread, replicas: Callable[..., Server]) -> None:
    replica = replicas("plain_sum.py")
    assert replica.port is not None
    serve_on(router, "svc", [replica.port], auth=KeyAuth(KEY, "other-key"), max_wait_s=30)
    requests = _requests(b"/api/v1/service/svc/score", f"authorization: Bearer {KEY}\r\n".encode(), BODY)
    answers, closed = pipeline(router.port, requests, timeout=120)
    _check_in_order(answers.done, 200)
    assert {a[2] for a in answers.done} == {b"[55]"}
    assert not closed
    assert_idle(router)
    _another_client_is_served(router)


def test_client_that_leaves_mid_pipeline_frees_every_slot(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    up = upstreams()
    serve_on(router, "svc", [up.port], auth=KeyAuth(KEY, "other-key"), max_wait_s=30)
    import socket

    slow = f"authorization: Bearer {KEY}\r\nx-test-sleep-ms: 200\r\n".encode()
    with socket.create_connection(("127.0.0.1", router.port)) as s:
        s.sendall(b"".join(_requests(b"/api/v1/service/svc/score", slow, BODY)[:500]))
        assert s.recv(100)  # the first answer came: the pipeline is being served
    assert_idle(router)
    assert up.stats()["requests"] < 50  # the rest were dropped with the client, not scored
    _another_client_is_served(router)
