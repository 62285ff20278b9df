"""The daemon's admin API against hostile or broken clients: token first, bounded bodies,
timeouts, and a daemon.log that rotates. Real sockets; the last test runs a real daemon."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e_support import pid_alive, wait_until
from modelfleet.control.admin import MAX_BODY_BYTES, AdminHandlers, AdminServer
from modelfleet.control.client import ClusterClient
from modelfleet.control.paths import RuntimePaths
from modelfleet.store.registry import Store

TOKEN = "t" * 43
IO_TIMEOUT_S = 3.0  # the server's read timeout in these tests (10 s in the daemon)


@contextlib.contextmanager
def running_admin(**settings: Any) -> Iterator[AdminServer]:
    """An admin API on its own loop whose status call answers {"ok": true}."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def delete(name: str) -> None:
        return None

    handlers = AdminHandlers(lambda: {"ok": True}, lambda name: None, delete, lambda: None)
    server = AdminServer(loop, TOKEN, handlers, **settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture
def admin() -> Iterator[AdminServer]:
    with running_admin(io_timeout_s=IO_TIMEOUT_S) as server:
        yield server


def _exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes; return the answer's status, headers and body (the answer must come within ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without an answer (got {buf!r})"
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(body) < int(headers.get("content-length", "0")):
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split()[1]), headers, body


def _request(method: str, path: str, extra: str = "", token: str | None = TOKEN) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}{extra}\r\n".encode()


def _still_serves(port: int) -> None:
    status, _, body = _exchange(port, _request("GET", "/v1/status", "Content-Length: 0\r\n"))
    assert status == 200 and json.loads(body) == {"ok": True}


def test_token_is_checked_before_any_body_is_read(admin: AdminServer) -> None:
    # A promised body that never comes: before the fix the daemon waited for it first.
    started = time.monotonic()
    status, headers, body = _exchange(admin.port, _request("POST", "/v1/shutdown", "Content-Length: 500000\r\n", None))
    assert status == 401 and "token" in json.loads(body)["message"]
    assert headers["connection"] == "close"  # the unread body makes the connection unusable
    assert time.monotonic() - started < IO_TIMEOUT_S - 0.5  # at once, not after the read timeout
    status, _, _ = _exchange(admin.port, _request("GET", "/v1/status", "Content-Length: 0\r\n", "wrong"))
    assert status == 401
    _still_serves(admin.port)


@pytest.mark.parametrize("length", ["-1", "abc", "1e3", "+5", " ", "99999999999999999999999"])
def test_a_negative_or_malformed_length_is_400(admin: AdminServer, length: str) -> None:
    # Content-Length: -1 used to hang a daemon thread (read(-1) waits for the end of the stream).
    status, _, body = _exchange(admin.port, _request("POST", "/v1/services/svc/sync", f"Content-Length: {length}\r\n"))
    assert status == 400 and "Content-Length must be one non-negative integer" in json.loads(body)["message"]
    _still_serves(admin.port)


def test_two_different_lengths_and_chunked_bodies_are_400(admin: AdminServer) -> None:
    two = "Content-Length: 1\r\nContent-Length: 2\r\n"
    assert _exchange(admin.port, _request("POST", "/v1/services/svc/sync", two) + b"xy")[0] == 400
    chunked = "Transfer-Encoding: chunked\r\n"
    status, _, body = _exchange(admin.port, _request("POST", "/v1/services/svc/sync", chunked) + b"1\r\nx\r\n0\r\n\r\n")
    assert status == 400 and "Transfer-Encoding" in json.loads(body)["message"]
    _still_serves(admin.port)


def test_a_body_over_the_limit_is_413_from_its_length_alone(admin: AdminServer) -> None:
    # 10**12 used to be read into memory (MemoryError, no answer).
    for length in (MAX_BODY_BYTES + 1, 10**12):
        status, headers, body = _exchange(
            admin.port, _request("POST", "/v1/services/svc/sync", f"Content-Length: {length}\r\n")
        )
        assert status == 413 and f"limit of {MAX_BODY_BYTES} bytes" in json.loads(body)["message"]
        assert headers["connection"] == "close"
    _still_serves(admin.port)


def test_a_body_within_the_limit_is_read_and_the_call_answered(admin: AdminServer) -> None:
    with socket.create_connection(("127.0.0.1", admin.port), timeout=5) as sock:
        body = b"x" * 100_000
        sock.sendall(_request("POST", "/v1/services/svc/sync", f"Content-Length: {len(body)}\r\n") + body)
        sock.sendall(_request("GET", "/v1/status", "Content-Length: 0\r\n"))  # same connection: the body was consumed
        data = b""
        while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 202") and b"HTTP/1.1 200" in data


@pytest.mark.parametrize(
    "partial",
    [
        b"GET /v1/sta",
        b"GET /v1/status HTTP/1.1\r\nHost: x\r\n",
        _request("POST", "/v1/services/svc/sync", "Content-Length: 10\r\n") + b"abc",
    ],
    ids=["request-line", "headers", "body"],
)
def test_a_slow_client_is_cut_off_and_others_are_served(admin: AdminServer, partial: bytes) -> None:
    with socket.create_connection(("127.0.0.1", admin.port), timeout=10) as slow:
        slow.sendall(partial)
        started = time.monotonic()
        _still_serves(admin.port)  # meanwhile
        rest = b""
        while chunk := slow.recv(65536):  # the server closes (maybe after a 408/400): recv returns b""
            rest += chunk
        waited = time.monotonic() - started
    assert waited < IO_TIMEOUT_S + 10, f"still connected after {waited:.1f} s"  # generous: the machine is shared
    assert b" 200 " not in rest


def test_idle_keep_alive_connections_are_closed(admin: AdminServer) -> None:
    with socket.create_connection(("127.0.0.1", admin.port), timeout=10) as sock:
        sock.sendall(_request("GET", "/v1/status", "Content-Length: 0\r\n"))
        started = time.monotonic()
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200") and time.monotonic() - started < IO_TIMEOUT_S + 10


# -- a real daemon: its log rotates, and it answers the hostile lengths ------------------------


def test_connections_past_the_limit_get_503_and_the_api_serves_again_when_they_go(tmp_path: Path) -> None:
    with running_admin(io_timeout_s=30, max_connections=4) as server:
        threads_before = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
        try:
            # four idle connections hold every slot (each would be cut off only after 30 s)
            wait_until(lambda: threading.active_count() == threads_before + 4, timeout=5)
            for _ in range(20):
                status, headers, body = _exchange(server.port, _request("GET", "/v1/status", "Content-Length: 0\r\n"))
                assert status == 503 and headers["retry-after"] == "1" and b"at most 4 connections" in body
            assert threading.active_count() == threads_before + 4  # no thread per refused connection
            # the SDK's client waits out a 503 (once a second) instead of failing the call
            runtime = tmp_path / "runtime"
            runtime.mkdir()
            (runtime / "admin.token").write_text(TOKEN)
            answers: list[dict[str, object]] = []
            client = threading.Thread(
                target=lambda: answers.append(
                    ClusterClient(tmp_path, runtime)._call("GET", "/v1/status", info={"admin_port": server.port})
                )
            )
            client.start()
            time.sleep(1.5)
            assert answers == []  # refused, waiting to try again
            idle.pop().close()
            client.join(10)
            assert answers == [{"ok": True}]
            _still_serves(server.port)
        finally:
            for sock in idle:
                sock.close()


def test_daemon_log_rotates_by_size_and_the_daemon_refuses_bad_lengths(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "ws", "ws")
    store.close()
    paths = RuntimePaths(tmp_path / "ws" / ".modelfleet" / "runtime")
    argv = [sys.executable, "-m", "modelfleet.control.daemon", "--detach", "--workspace", str(tmp_path / "ws")]
    argv += ["--log-file", str(paths.daemon_log), "--log-max-bytes", "4096", "--log-backups", "2"]
    subprocess.run(argv, check=True, timeout=60, stdin=subprocess.DEVNULL, capture_output=True)
    client = ClusterClient(tmp_path / "ws", paths.root)
    info = wait_until(client.info, timeout=30)
    try:
        port = int(info["admin_port"])
        token = paths.admin_token.read_text().strip()
        for length in ("-1", str(10**12)):
            status, _, _ = _exchange(
                port, _request("POST", "/v1/services/svc/sync", f"Content-Length: {length}\r\n", token)
            )
            assert status in (400, 413)
        for _ in range(200):  # each refused call is one warning line of about 90 bytes: 18 KB in all
            assert _exchange(port, _request("GET", "/v1/status", "Content-Length: 0\r\n", "nope"))[0] == 401
        logs = sorted(p.name for p in paths.root.glob("daemon.log*"))
        assert logs == ["daemon.log", "daemon.log.1", "daemon.log.2"]  # bounded: 1 + 2 backups
        for name in logs:
            assert (paths.root / name).stat().st_size <= 4096 + 512
        assert "token missing or invalid" in (paths.root / "daemon.log").read_text()
        assert client.status()["services"] == {}  # still serving
    finally:
        pid = int(info["pid"])
        client.stop()
        wait_until(lambda: not pid_alive(pid), timeout=30)
