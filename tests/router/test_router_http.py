"""Tier 2: the router over real sockets with stand-in upstream processes — routes, auth,
limits on size, request ids, framing. Every test's teardown checks the gauges are back at 0."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from modelfleet.errors import ConfigError
from modelfleet.router.auth import AuthResult, KeyAuth
from modelfleet.router.proxy import ServiceRoute, Upstream
from router_upstream import RouterThread, UpstreamProcess, wait_for

PRIMARY, SECONDARY = "primary-key-123", "secondary-key-456"
BODY = b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}'


def serve(rt: RouterThread, name: str, ups: list[UpstreamProcess], **kw: object) -> ServiceRoute:
    route = ServiceRoute(name, **kw)  # type: ignore[arg-type]
    rt.call(lambda: rt.router.set_service(route))
    replicas = [Upstream(f"{name}-{i}", "127.0.0.1", u.port) for i, u in enumerate(ups)]
    rt.call(lambda: rt.router.set_replicas(name, replicas))
    return route


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def raw_exchange(port: int, data: bytes, *, until: bytes = b"\r\n\r\n", timeout: float = 10) -> bytes:
    """Send raw bytes, read until ``until`` has been seen and the stated body arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return got
            got += chunk
            if got.count(until) and _complete(got):
                return got


def _complete(got: bytes) -> bool:
    head, _, body = got.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return True


def test_score_is_proxied_with_either_key(router: RouterThread, upstreams: Callable[..., UpstreamProcess]) -> None:
    up = upstreams()
    serve(router, "svc", [up], auth=KeyAuth(PRIMARY, SECONDARY))
    with httpx.Client() as c:
        for key in (PRIMARY, SECONDARY):
            r = c.post(router.url("svc"), content=BODY, headers=bearer(key))
            assert r.status_code == 200
            assert r.json() == [55]
            assert r.headers["content-type"] == "application/json"
            assert r.headers["x-ms-request-id"] == r.headers["x-request-id"]
        # The key goes no further than the router.
        r = c.post(router.url("svc"), content=BODY, headers={**bearer(PRIMARY), "x-test-echo": "1"})
        assert "authorization" not in r.json()["headers"]
        assert r.json()["body"] == len(BODY)
    # Keep-alive pool: the router used one connection for all three (the other is this call's).
    assert up.stats()["connections"] == 2


def test_auth_failures_say_only_missing_or_invalid(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    up = upstreams()
    auth = KeyAuth(PRIMARY, SECONDARY)
    serve(router, "svc", [up], auth=auth)
    cases = [
        ({}, "missing"),
        ({"authorization": ""}, "missing"),
        ({"authorization": f"Basic {PRIMARY}"}, "invalid"),
        ({"authorization": "Bearer"}, "invalid"),
        (bearer("wrong"), "invalid"),
        (bearer(PRIMARY + "x"), "invalid"),
    ]
    with httpx.Client() as c:
        for headers, word in cases:
            r = c.post(router.url("svc"), content=BODY, headers=headers)
            assert r.status_code == 401, headers
            assert r.json() == {"message": word}
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.headers["x-request-id"]
        r = c.get(router.url("svc") + "?a=1")
        assert r.status_code == 401
        # Key regeneration takes effect at once, without restarting anything.
        router.call(lambda: auth.set_keys("new-primary", SECONDARY))
        assert c.post(router.url("svc"), content=BODY, headers=bearer(PRIMARY)).status_code == 401
        assert c.post(router.url("svc"), content=BODY, headers=bearer("new-primary")).status_code == 200
        assert c.post(router.url("svc"), content=BODY, headers=bearer(SECONDARY)).status_code == 200
    assert up.stats()["requests"] == 2  # no 401 reached the replica


def test_key_auth_unit() -> None:
    a = KeyAuth(PRIMARY)
    assert a.check(None) is AuthResult.MISSING
    assert a.check(b"bearer " + PRIMARY.encode()) is AuthResult.OK
    assert a.check(b"Bearer " + SECONDARY.encode()) is AuthResult.INVALID
    assert PRIMARY not in repr(a)
    empty = KeyAuth("", None)  # keys not set yet: nobody gets in
    assert empty.check(b"Bearer ") is AuthResult.INVALID
    assert empty.check(b"Bearer x") is AuthResult.INVALID
    with pytest.raises(ConfigError, match="may not contain spaces"):
        KeyAuth("a b")


def test_swagger_needs_no_key_and_query_strings_pass(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    up = upstreams()
    serve(router, "svc", [up], auth=KeyAuth(PRIMARY))
    with httpx.Client() as c:
        r = c.get(router.url("svc", "swagger.json") + "?version=3", headers={"x-test-echo": "1"})
        assert r.status_code == 200
        assert r.json()["path"] == "/swagger.json?version=3"
        r = c.get(router.url("svc") + "?x=1&y=two", headers={**bearer(PRIMARY), "x-test-echo": "1"})
        assert r.status_code == 200
        assert (r.json()["method"], r.json()["path"]) == ("GET", "/score?x=1&y=two")
        r = c.get(f"http://127.0.0.1:{router.port}/")
        assert r.status_code == 200 and r.json() == {"status": "Healthy"}


def test_404_and_405(router: RouterThread, upstreams: Callable[..., UpstreamProcess]) -> None:
    up = upstreams()
    serve(router, "svc", [up])
    base = f"http://127.0.0.1:{router.port}"
    with httpx.Client() as c:
        for path in ("/api/v1/service/nope/score", "/api/v1/service/svc/other", "/api/v1/service//score",
                     "/api/v1/service/svc", "/elsewhere", "/api/v1/service/svc/score/"):  # fmt: skip
            r = c.post(base + path, content=BODY)
            assert r.status_code == 404, path
            assert "modelfleet service list" in r.json()["message"]
        r = c.put(router.url("svc"), content=BODY)
        assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
        assert "svc" in r.json()["message"]
        r = c.post(router.url("svc", "swagger.json"), content=BODY)
        assert r.status_code == 405 and r.headers["allow"] == "GET"
        r = c.delete(base + "/")
        assert r.status_code == 405 and r.headers["allow"] == "GET"
        assert c.post(router.url("svc"), content=BODY).status_code == 200  # connection still good
    assert up.stats()["requests"] == 1


def test_413_by_content_length_before_the_body_is_sent(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    up = upstreams()
    serve(router, "svc", [up], max_body_bytes=1000)
    head = (
        b"POST /api/v1/service/svc/score HTTP/1.1\r\nhost: x\r\ncontent-length: 1001\r\nx-ms-request-id: big-1\r\n\r\n"
    )
    got = raw_exchange(router.port, head)  # the body is never sent: the answer comes anyway
    assert got.startswith(b"HTTP/1.1 413 ")
    assert b"x-ms-request-id: big-1\r\n" in got
    assert json.loads(got.partition(b"\r\n\r\n")[2])["message"].startswith("request body is larger than the 1000")
    with httpx.Client() as c:
        assert c.post(router.url("svc"), content=b"x" * 1000).status_code == 200
        assert c.post(router.url("svc"), content=b"x" * 1001).status_code == 413
    assert up.stats()["requests"] == 1


def test_413_by_counting_a_chunked_body(router: RouterThread, upstreams: Callable[..., UpstreamProcess]) -> None:
    up = upstreams()
    serve(router, "svc", [up], max_body_bytes=100_000)

    def chunks(n: int) -> Iterator[bytes]:
        for _ in range(n):
            yield b"y" * 10_000

    with httpx.Client() as c:
        r = c.post(router.url("svc"), content=chunks(30))
        assert r.status_code == 413
        r = c.post(router.url("svc"), content=chunks(10), headers={"x-test-echo": "1"})
        assert r.status_code == 200 and r.json()["body"] == 100_000
    assert up.stats()["requests"] == 1  # the replica never scored the oversized one


def test_10mb_bodies_pass_both_framings(router: RouterThread, upstreams: Callable[..., UpstreamProcess]) -> None:
    up = upstreams()
    serve(router, "svc", [up])
    big = b"z" * (10 * 1024 * 1024)
    with httpx.Client(timeout=30) as c:
        r = c.post(router.url("svc"), content=big, headers={"x-test-echo": "1"})
        assert r.status_code == 200 and r.json()["body"] == len(big)

        def gen() -> Iterator[bytes]:
            view = memoryview(big)
            for i in range(0, len(big), 256 * 1024):
                yield bytes(view[i : i + 256 * 1024])

        r = c.post(router.url("svc"), content=gen(), headers={"x-test-echo": "1"})
        assert r.status_code == 200 and r.json()["body"] == len(big)
        # A replica that stops reading for a while: the upload waits, nothing is lost.
        r = c.post(router.url("svc"), content=big, headers={"x-test-echo": "1", "x-test-stall-ms": "300"})
        assert r.status_code == 200 and r.json()["body"] == len(big)


def test_big_answer_streams_to_a_slow_reader(router: RouterThread, upstreams: Callable[..., UpstreamProcess]) -> None:
    # 20 MB back through a client that reads 16 KB at a time with a small socket buffer:
    # the router must pause reading the replica and resume, not buffer or stall.
    up = upstreams()
    serve(router, "svc", [up])
    size = 20 * 1024 * 1024
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        s.settimeout(20)
        s.connect(("127.0.0.1", router.port))
        s.sendall(b"GET /api/v1/service/svc/score HTTP/1.1\r\nhost: x\r\nx-test-size: %d\r\n\r\n" % size)
        got = bytearray()
        while b"\r\n\r\n" not in got or len(got) - got.index(b"\r\n\r\n") - 4 < size:
            chunk = s.recv(16 * 1024)
            assert chunk, "connection closed early"
            got += chunk
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: %d" % size in head
    assert len(body) == size and body[:20] == b"01234567890123456789" and body[-4:] == b"6789"[:4]


def test_client_leaving_mid_answer_frees_the_slot(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    up = upstreams()
    serve(router, "svc", [up])
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        s.connect(("127.0.0.1", router.port))
        s.sendall(b"GET /api/v1/service/svc/score HTTP/1.1\r\nhost: x\r\nx-test-size: 50000000\r\n\r\n")
        assert s.recv(16 * 1024).startswith(b"HTTP/1.1 200 OK")
        # This client reads nothing more: the router stops reading the replica's answer.
        wait_for(
            lambda: router.call(lambda: any(c.write_paused for c in router.router.connections)),
            what="the router to pause writing to this client",
        )
    # The rest of the answer is drained from the replica and the slot given back.
    wait_for(lambda: router.stats()["svc"]["in_flight"] == 0, what="the slot to be freed")
    with httpx.Client() as c:
        assert c.post(router.url("svc"), content=BODY).status_code == 200


def test_router_imports_nothing_from_the_control_side() -> None:
    code = (
        "import sys, modelfleet.router.proxy, modelfleet.router.dispatch, modelfleet.router.auth\n"
        "bad = [m for m in ('sqlalchemy', 'kubernetes', 'pydantic', 'click', 'rich', 'modelfleet.sdk',"
        " 'modelfleet.store', 'modelfleet.control', 'modelfleet.targets', 'modelfleet.envs')"
        " if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_request_ids_honoured_passed_and_generated(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    up = upstreams()
    serve(router, "svc", [up])
    echo = {"x-test-echo": "1"}
    with httpx.Client() as c:
        r = c.post(router.url("svc"), content=BODY, headers={**echo, "x-ms-request-id": "abc-1"})
        # As azmlinfsrv: the legacy id is echoed, x-request-id is a fresh UUID.
        assert r.headers["x-ms-request-id"] == r.headers["x-ms-client-request-id"] == "abc-1"
        assert len(r.headers["x-request-id"]) == 36
        assert r.json()["headers"]["x-ms-request-id"] == "abc-1"
        assert r.json()["headers"]["x-request-id"] == r.headers["x-request-id"]
        r = c.post(router.url("svc"), content=BODY, headers={**echo, "x-request-id": "def-2"})
        assert r.headers["x-ms-request-id"] == r.headers["x-request-id"] == "def-2"
        r = c.post(router.url("svc"), content=BODY, headers={**echo, "x-request-id": "b", "x-ms-request-id": "a"})
        assert (r.headers["x-ms-request-id"], r.headers["x-request-id"]) == ("a", "b")
        assert r.headers.get_list("x-request-id") == ["b"]  # the replica's copy is not doubled
        ids = {c.post(router.url("svc"), content=BODY).headers["x-ms-request-id"] for _ in range(20)}
        assert len(ids) == 20 and all(len(i) == 36 for i in ids)
        r = c.put(router.url("svc"), headers={"x-ms-request-id": "on-errors-too"})
        assert r.status_code == 405 and r.headers["x-ms-request-id"] == "on-errors-too"


def test_chunked_answer_is_reframed_and_pipelined_requests_answer_in_order(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    up = upstreams()
    serve(router, "svc", [up])
    with httpx.Client() as c:
        r = c.post(router.url("svc"), content=BODY, headers={"x-test-chunked": "1"})
        assert r.status_code == 200 and r.json() == [55]
        assert r.headers["transfer-encoding"] == "chunked"
    one = b"POST /api/v1/service/svc/score HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\nx-request-id: %s\r\n"
    data = (
        one % (len(BODY), b"p1") + b"x-test-sleep-ms: 100\r\n\r\n" + BODY
        + b"GET /nope HTTP/1.1\r\nhost: x\r\nx-request-id: p2\r\n\r\n"
        + one % (len(BODY), b"p3") + b"connection: close\r\n\r\n" + BODY
    )  # fmt: skip
    got = raw_exchange(router.port, data, until=b"x-request-id: p3")
    order = re.findall(rb"HTTP/1\.1 (\d+)|\nx-request-id: (\w+)", got)
    assert [a or b for a, b in order] == [b"200", b"p1", b"404", b"p2", b"200", b"p3"]


def test_tls(upstreams: Callable[..., UpstreamProcess], tmp_path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    up = upstreams()
    rt = RouterThread(ssl=ctx)
    try:
        serve(rt, "svc", [up], auth=KeyAuth(PRIMARY))
        client_ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        with httpx.Client(verify=client_ctx) as c:
            url = f"https://127.0.0.1:{rt.port}/api/v1/service/svc/score"
            r = c.post(url, content=BODY, headers=bearer(PRIMARY))
            assert r.status_code == 200 and r.json() == [55]
            assert c.post(url, content=BODY).status_code == 401
        assert rt.wait_idle()["svc"]["in_flight"] == 0
    finally:
        rt.close()


def test_malformed_request_gets_400(router: RouterThread) -> None:
    got = raw_exchange(router.port, b"THIS IS NOT HTTP\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 400 ")


def test_service_route_is_validated() -> None:
    with pytest.raises(ConfigError, match="service name"):
        ServiceRoute("a/b")
    with pytest.raises(ConfigError, match="replica_max_concurrent_requests"):
        ServiceRoute("svc", max_concurrent=0)
    with pytest.raises(ConfigError, match="max_request_wait_time"):
        ServiceRoute("svc", max_wait_s=-1)
    with pytest.raises(ConfigError, match="scoring_timeout_ms"):
        ServiceRoute("svc", timeout_s=0)
    with pytest.raises(ConfigError, match="auth"):
        ServiceRoute("svc", auth="secret")  # type: ignore[arg-type]


def test_no_key_or_authorization_in_logs(
    upstreams: Callable[..., UpstreamProcess], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    up = upstreams()
    dead = upstreams()
    rt = RouterThread(access_log=True)
    try:
        serve(rt, "svc", [up, dead], auth=KeyAuth(PRIMARY, SECONDARY))
        with httpx.Client() as c:
            for key in (PRIMARY, SECONDARY, "wrong-key-789"):
                c.post(rt.url("svc"), content=BODY, headers=bearer(key))
            dead.stop()
            for _ in range(3):  # one of these meets the dead replica: a warning is logged
                assert c.post(rt.url("svc"), content=BODY, headers=bearer(PRIMARY)).status_code in (200, 502)
        wait_for(lambda: rt.failed, what="the dead replica to be reported")
        rt.wait_idle()
    finally:
        rt.close()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "svc-1" in text and "POST /score 200" in text  # the logs are there...
    for secret in (PRIMARY, SECONDARY, "wrong-key-789", "uthorization"):
        assert secret not in text  # ...but never a key or the header
