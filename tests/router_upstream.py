"""A stand-in replica for the router's tests and benchmark, plus the harness that runs them.

Run as a script it is an HTTP/1.1 keep-alive server (asyncio + httptools, uvloop when present)
that prints ``PORT <n>`` once listening. What it does for a request is chosen by headers, so
that the router forwards the instruction like any other header:

- default: ``[55]`` (application/json), as the trivial benchmark model answers
- ``x-test-sleep-ms: N``: answer after N ms (the loop keeps serving others meanwhile)
- ``x-test-busy: 1``: answer 503 with ``x-modelfleet-busy: 1`` at once
- ``x-test-close: 1``: close the connection without answering
- ``x-test-garbage: 1``: answer bytes that are not HTTP
- ``x-test-exit: 1``: the process exits at once
- ``x-test-echo: 1``: answer JSON with the method, path, body length and request headers
- ``x-test-chunked: 1``: send the answer with chunked transfer encoding
- ``x-test-size: N``: answer N bytes (``0123456789`` repeated) instead of ``[55]``
- ``x-test-stall-ms: N``: stop reading the socket for N ms once the headers are in

``GET /stats`` (straight to the upstream) answers ``{"requests", "concurrent", "max_concurrent",
"connections", "busy"}``; ``POST /reset`` zeroes the counters. ``--limit N`` makes it answer
busy beyond N concurrent requests, as the real replica does; ``--sleep-ms N`` sets a default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import httptools

ANSWER = b"[55]"


class Server:
    def __init__(self, limit: int, sleep_ms: int) -> None:
        self.limit = limit
        self.sleep_ms = sleep_ms
        self.requests = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self.connections = 0
        self.busy = 0

    def stats(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "concurrent": self.concurrent,
            "max_concurrent": self.max_concurrent,
            "connections": self.connections,
            "busy": self.busy,
        }


class Conn(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body = 0
        self.queue: list[tuple[bytes, dict[str, str], int, bool]] = []
        self.busy = False  # answering one request: answers go out in order

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections += 1

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        if self.headers.get("x-test-exit") == "1":
            os._exit(0)
        stall = int(self.headers.get("x-test-stall-ms", 0))
        if stall and self.transport is not None:
            # Let the sender's buffers fill: exercises the router's upload backpressure.
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(stall / 1000, self.transport.resume_reading)

    def on_body(self, body: bytes) -> None:
        self.body += len(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        self.queue.append((method, self.headers, self.body, self.parser.should_keep_alive()))
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self.serve())

    async def serve(self) -> None:
        while self.queue:
            await self.handle(*self.queue.pop(0))
        self.busy = False

    async def handle(self, method: bytes, headers: dict[str, str], body: int, keep_alive: bool) -> None:
        t = self.transport
        assert t is not None
        s = self.server
        path = self.url.decode()
        if path == "/stats":
            return self.send(200, json.dumps(s.stats()).encode(), {}, keep_alive)
        if path == "/reset":
            s.requests = s.max_concurrent = s.busy = 0
            return self.send(200, b"{}", {}, keep_alive)
        if headers.get("x-test-close") == "1":
            t.close()
            return None
        if headers.get("x-test-garbage") == "1":
            t.write(b"THIS IS NOT HTTP\r\n\r\n")
            return None
        if headers.get("x-test-busy") == "1" or s.concurrent >= s.limit:
            s.busy += 1
            return self.send(503, b'{"message": "busy"}', {"x-modelfleet-busy": "1"}, keep_alive)
        s.requests += 1
        s.concurrent += 1
        s.max_concurrent = max(s.max_concurrent, s.concurrent)
        try:
            sleep_ms = int(headers.get("x-test-sleep-ms", s.sleep_ms))
            if sleep_ms:
                await asyncio.sleep(sleep_ms / 1000)
            if "x-test-size" in headers:
                n = int(headers["x-test-size"])
                answer = (b"0123456789" * (n // 10 + 1))[:n]
            elif headers.get("x-test-echo") == "1":
                out = {"method": method.decode(), "path": path, "body": body, "headers": headers}
                answer = json.dumps(out).encode()
            else:
                answer = ANSWER
        finally:
            s.concurrent -= 1
        extra = {"x-test-served-by": str(os.getpid())}
        if headers.get("x-test-chunked") == "1":
            extra["transfer-encoding"] = "chunked"
        self.send(200, answer, extra, keep_alive)
        return None

    def send(self, status: int, body: bytes, extra: dict[str, str], keep_alive: bool) -> None:
        t = self.transport
        assert t is not None
        if t.is_closing():
            return
        reason = {200: "OK", 503: "Service Unavailable"}[status]
        lines = [f"HTTP/1.1 {status} {reason}", "content-type: application/json"]
        lines += [f"{k}: {v}" for k, v in extra.items()]
        if extra.get("transfer-encoding") == "chunked":
            half = len(body) // 2
            payload = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:])
            if half == 0:
                payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        else:
            lines.append(f"content-length: {len(body)}")
            payload = body
        if not keep_alive:
            lines.append("connection: close")
        t.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        if not keep_alive:
            t.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--limit", type=int, default=1_000_000)
    ap.add_argument("--sleep-ms", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def serve() -> None:
        server = Server(args.limit, args.sleep_ms)
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(lambda: Conn(server), args.host, args.port, backlog=2048)
        print("PORT", srv.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


# -- harness used by the tests and the benchmark ------------------------------------------


class UpstreamProcess:
    """A running stand-in upstream (its own process; stop() ends it by pid)."""

    def __init__(self, *args: str, taskset: str | None = None) -> None:
        cmd = [sys.executable, __file__, *args]
        if taskset:
            cmd = ["taskset", "-c", taskset, *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"stand-in upstream did not start (said {line!r})")
        self.port = int(line.split()[1])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=5) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class RouterThread:
    """A Router running in its own event loop on a background thread, driven from tests."""

    def __init__(self, ssl: Any = None, **router_kwargs: Any) -> None:
        try:
            import uvloop

            self.loop = uvloop.new_event_loop()
        except ImportError:
            self.loop = asyncio.new_event_loop()
        self.failed: list[tuple[str, str]] = []
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        from modelfleet.router.proxy import Router

        router_kwargs.setdefault("on_replica_failed", lambda s, r: self.failed.append((s, r)))
        self.router: Router = self.call(lambda: Router(**router_kwargs))
        self.port: int = self.run(self.router.start(ssl=ssl))

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any], timeout: float = 30) -> Any:
        async def wrapper() -> Any:
            return fn()

        return self.run(wrapper(), timeout)

    def stats(self) -> dict[str, dict[str, Any]]:
        return self.call(self.router.stats)  # type: ignore[no-any-return]

    def url(self, service: str, route: str = "score") -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/service/{service}/{route}"

    def wait_idle(self, timeout: float = 10) -> dict[str, dict[str, Any]]:
        """Poll until every service has nothing in flight or queued; return the last stats."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats()
            if all(s["in_flight"] == 0 and s["queued"] == 0 for s in st.values()):
                return st
            if time.monotonic() > deadline:
                return st
            time.sleep(0.01)

    def close(self) -> None:
        try:
            self.run(self.router.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def wait_for(cond: Callable[[], Any], timeout: float = 10, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


if __name__ == "__main__":
    main()


# -- helpers for the router tests (tests/router/) -----------------------------------------


def assert_idle(rt: RouterThread) -> None:
    """Every service and replica of ``rt`` is back to nothing in flight and nothing queued."""
    st = rt.wait_idle()
    for name, s in st.items():
        assert s["in_flight"] == 0 and s["queued"] == 0, (name, s)
        assert all(r["in_flight"] == 0 for r in s["replicas"].values()), (name, s)


def serve_on(rt: RouterThread, name: str, ports: list[int], **route: Any) -> None:
    """Give ``rt`` a service ``name`` whose replicas listen on ``ports`` (127.0.0.1)."""
    from modelfleet.router.proxy import ServiceRoute, Upstream

    svc = ServiceRoute(name, **route)
    rt.call(lambda: rt.router.set_service(svc))
    ups = [Upstream(f"{name}-{i}", "127.0.0.1", p) for i, p in enumerate(ports)]
    rt.call(lambda: rt.router.set_replicas(name, ups))


class Answers:
    """Parses a stream of HTTP/1.1 answers (httptools) into (status, headers, body) tuples."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[tuple[int, dict[bytes, bytes], bytes]] = []
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []

    def feed(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self._headers = {}
        self._body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self._headers, b"".join(self._body)))


def pipeline(port: int, requests: list[bytes], timeout: float = 60) -> tuple[Answers, bool]:
    """Send ``requests`` back to back on one connection (from a thread) while reading the
    answers; returns them and whether the server closed the connection."""
    import socket

    answers = Answers()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        sender = threading.Thread(target=lambda: s.sendall(b"".join(requests)), daemon=True)
        sender.start()
        closed = False
        deadline = time.monotonic() + timeout
        while len(answers.done) < len(requests) and time.monotonic() < deadline:
            try:
                chunk = s.recv(1 << 16)
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            answers.feed(chunk)
        sender.join(timeout)
    return answers, closed
