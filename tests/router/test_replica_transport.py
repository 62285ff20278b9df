"""Defect 4 (issue 12), router part: replicas reached over a Unix domain socket, and the
per-cluster secret the router adds for replicas on TCP; clients' copies are never forwarded."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from modelfleet.errors import ConfigError
from modelfleet.router.proxy import ServiceRoute, Upstream
from replica_scripts.harness import SCRIPTS, Server, base_env
from router_upstream import RouterThread, UpstreamProcess

BODY = b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
SECRET = b"s3cret-for-this-cluster-0123456789"
REPLICA = [sys.executable, "-m", "modelfleet.replica", "--entry_script", str(SCRIPTS / "plain_sum.py")]


def unix_request(path: str, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(request)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        return got


@pytest.fixture
def unix_replica(tmp_path: Path) -> Iterator[str]:
    """A real replica (plain_sum.py) listening on a Unix socket in a private (0700) folder."""
    private = tmp_path / "cluster"
    private.mkdir(mode=0o700)
    path = str(private / "r0.sock")
    server = Server([*REPLICA, "--unix-socket", path], None, tmp_path, base_env(), tmp_path / "replica.log")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = unix_request(path, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                if answer.startswith(b"HTTP/1.1 200"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.proc.poll() is not None:
                raise RuntimeError(f"replica on {path} did not start:\n{server.output()}")
            time.sleep(0.1)
        yield path
    finally:
        server.stop()


def route(rt: RouterThread, ups: list[Upstream]) -> None:
    svc = ServiceRoute("svc")
    rt.call(lambda: rt.router.set_service(svc))
    rt.call(lambda: rt.router.set_replicas("svc", ups))


def test_replica_on_a_unix_socket_is_served_through_the_router(router: RouterThread, unix_replica: str) -> None:
    assert oct(os.stat(unix_replica).st_mode & 0o777) == "0o600"
    route(router, [Upstream("svc-0", "127.0.0.1", 0, unix_path=unix_replica)])
    with httpx.Client(timeout=10) as c:
        for _ in range(5):  # the pooled Unix connection is reused
            r = c.post(router.url("svc"), content=BODY)
            assert r.status_code == 200 and r.json() == [55]
    assert router.failed == []


def test_secret_is_added_and_clients_copies_are_dropped(
    router: RouterThread, upstreams: Callable[..., UpstreamProcess]
) -> None:
    up = upstreams()
    route(router, [Upstream("svc-0", "127.0.0.1", up.port, secret=SECRET)])
    forged = {"x-test-echo": "1", "x-modelfleet-replica-secret": "forged-by-the-client"}
    with httpx.Client(timeout=10) as c:
        seen = c.post(router.url("svc"), content=BODY, headers=forged).json()["headers"]
        assert seen["x-modelfleet-replica-secret"] == SECRET.decode()  # the router's, not the client's
        # Without a secret configured, a client's copy still never reaches the replica.
        route(router, [Upstream("svc-0", "127.0.0.1", up.port)])
        seen = c.post(router.url("svc"), content=BODY, headers=forged).json()["headers"]
        assert "x-modelfleet-replica-secret" not in seen


def test_real_replica_with_a_secret_refuses_direct_requests(router: RouterThread, tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    env = base_env({"MODELFLEET_REPLICA_SECRET": SECRET.decode()})
    server = Server([*REPLICA, "--port", "0", "--port-file", str(port_file)], None, tmp_path, env, tmp_path / "r.log")
    try:
        server.wait_ready(port_file, timeout=60)
        assert server.port is not None
        direct = f"http://127.0.0.1:{server.port}/score"
        assert httpx.post(direct, content=BODY).status_code == 403
        assert httpx.post(direct, content=BODY, headers={"x-modelfleet-replica-secret": "nope"}).status_code == 403
        route(router, [Upstream("svc-0", "127.0.0.1", server.port, secret=SECRET)])
        r = httpx.post(router.url("svc"), content=BODY, timeout=10)
        assert r.status_code == 200 and r.json() == [55]
    finally:
        server.stop()


def test_upstream_fields_are_validated() -> None:
    with pytest.raises(ConfigError, match="secret"):
        Upstream("r", "127.0.0.1", 1, secret=b"short")
    with pytest.raises(ConfigError, match="secret"):
        Upstream("r", "127.0.0.1", 1, secret=b"has a space in it, which is not allowed")
    with pytest.raises(ConfigError, match="unix_path"):
        Upstream("r", "127.0.0.1", 1, unix_path="")
    assert Upstream("r", "h", 1, unix_path="/x/r.sock").key == ("/x/r.sock", -1)
