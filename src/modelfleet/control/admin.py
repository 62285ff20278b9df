"""The daemon's loopback admin API: how the SDK and CLI ask the control plane to act.

Bound to 127.0.0.1 only and protected by a random token kept in a file only the owner can
read. Calls are rare (deploy, update, delete, status), so a small threaded stdlib server is
enough; each handler hands its work to the daemon's event loop and waits for the result.

    GET    /v1/status                 cluster, services, replicas and router counters
    GET    /v1/openapi.json           this API as an OpenAPI 3.0 document (control/admin_openapi.py)
    POST   /v1/services/<name>/sync   the stored service changed: reconcile it now
    DELETE /v1/services/<name>        drain and stop its replicas, then forget it
    POST   /v1/shutdown               stop the daemon gracefully

Hostile or broken clients (anyone on this machine can connect) cost a bounded amount:
the token is checked before any body is read (401, then the connection closes); a body
over ``MAX_BODY_BYTES`` is refused from its Content-Length alone (413), and a negative,
malformed or chunked length gets 400; every read on the socket (request line, headers,
body, the idle time between keep-alive requests) times out after ``IO_TIMEOUT_S``; the
standard library already answers 431 to a header line over 64 KiB or more than 100 headers.
At most ``MAX_CONNECTIONS`` connections are served at once (each holds a thread): one past
that is answered 503 with ``Retry-After`` and closed without reading, so a flood of idle
connections costs the daemon a bounded number of threads for at most ``IO_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from modelfleet.control.admin_openapi import OPENAPI
from modelfleet.errors import ModelfleetError
from modelfleet.spec.names import validate_service_name

log = logging.getLogger("modelfleet.admin")

_SERVICE_PATH = re.compile(r"/v1/services/([^/]*)(/sync)?")

# No admin call sends a body today (every client request says Content-Length: 0); 4 MiB leaves
# room for a future call carrying a service's whole config (1,000 model references are about
# 100 KB) while keeping what one connection can make a daemon thread hold small.
MAX_BODY_BYTES = 4 * 1024 * 1024
_DIGITS = re.compile(r"^[0-9]{1,18}$")
# Calls are local and small: a client that has not sent its request line, headers or body
# within this time is gone or hostile. Holds for idle keep-alive connections too.
IO_TIMEOUT_S = 10.0
# The SDK and CLI hold one connection per call; 32 is far above what a team's scripts use at once
# and a thread each is cheap at that count.
MAX_CONNECTIONS = 32
_LINGER_S = 1.0
_LINGER_BYTES = 1024 * 1024


class AdminHandlers:
    """What the admin API can do; the daemon supplies the implementations."""

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        sync: Callable[[str], Awaitable[None] | None],
        delete: Callable[[str], Awaitable[None]],
        shutdown: Callable[[], None],
    ) -> None:
        self.status = status
        self.sync = sync
        self.delete = delete
        self.shutdown = shutdown


class _BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them (see module docstring)."""

    daemon_threads = True
    _BUSY = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
    )

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int) -> None:
        super().__init__(address, handler)
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            limit = self.max_connections
            body = json.dumps({"error": f"the admin API serves at most {limit} connections at once; retry"})
            with contextlib.suppress(OSError):
                request.sendall(self._BUSY % (len(body), body.encode()))
                # read what the client already sent (without waiting for more): closing with
                # unread bytes would reset the connection and could lose the 503 on its way
                request.setblocking(False)
                while request.recv(65536):
                    pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread was started to release it
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class AdminServer:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        token: str,
        handlers: AdminHandlers,
        *,
        io_timeout_s: float = IO_TIMEOUT_S,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._loop = loop
        self._max_body_bytes = max_body_bytes
        self._token = token.encode()
        self._handlers = handlers
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = io_timeout_s  # socket timeout for every read (StreamRequestHandler)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                log.debug("admin %s", format % args)

            def do_GET(self) -> None:
                server._handle(self, "GET")

            def do_POST(self) -> None:
                server._handle(self, "POST")

            def do_DELETE(self) -> None:
                server._handle(self, "DELETE")

            def __getattr__(self, name: str) -> Any:
                # any other method (PUT, TRACE, QUERY, ...) gets the API's 405 with Allow, in
                # JSON, not the standard library's 501 page
                if name.startswith("do_"):
                    return lambda: server._handle(self, name[3:])
                raise AttributeError(name)

        self._httpd = _BoundedHTTPServer(("127.0.0.1", 0), Handler, max_connections)
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="admin-api", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _on_loop(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=600)

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        presented = (request.headers.get("Authorization") or "").removeprefix("Bearer ").encode()
        if not hmac.compare_digest(presented, self._token):
            # the path is the client's: quoted and cut short, so it cannot forge or flood log lines
            log.warning("admin %s %.200r: token missing or invalid", method, request.path)
            _refuse(request, 401, "admin token missing or invalid")
            return
        refusal = _read_body(request, self._max_body_bytes)
        if refusal is not None:
            _refuse(request, *refusal)
            return
        allowed = _allowed_methods(request.path)
        if allowed is None:
            _reply(request, 404, {"message": f"no admin route {request.path!r}"})
            return
        if method not in allowed:
            message = f"{method} is not allowed on {request.path} (allowed: {', '.join(allowed)})"
            _reply(request, 405, {"message": message}, headers={"Allow": ", ".join(allowed)})
            return
        try:
            status, body = self._route(method, request.path)
        except ModelfleetError as exc:
            status, body = exc.http_status, {"message": exc.message}
        except Exception as exc:  # the admin API must answer, whatever went wrong
            log.exception("admin %s %s failed", method, request.path)
            status, body = 500, {"message": f"{type(exc).__name__}: {exc}"}
        _reply(request, status, body)

    def _route(self, method: str, path: str) -> tuple[int, dict[str, Any]]:
        """Answer a call whose path and method ``_allowed_methods`` accepted."""
        handlers = self._handlers
        if path == "/v1/status":
            return 200, self._on_loop(handlers.status)
        if path == "/v1/openapi.json":
            return 200, OPENAPI
        if path == "/v1/shutdown":
            self._loop.call_soon_threadsafe(handlers.shutdown)
            return 202, {"message": "shutting down"}
        match = _SERVICE_PATH.fullmatch(path)
        assert match is not None
        name, sync = validate_service_name(match.group(1)), match.group(2)  # a bad name: 400 with the rule
        if sync:
            self._on_loop(lambda: handlers.sync(name))
            return 202, {"message": f"service {name} reconciling"}
        self._on_loop(lambda: handlers.delete(name))
        return 200, {"message": f"service {name} deleted"}


def _allowed_methods(path: str) -> tuple[str, ...] | None:
    """The methods a path takes; None when no route has that path (404)."""
    fixed = {"/v1/status": ("GET",), "/v1/openapi.json": ("GET",), "/v1/shutdown": ("POST",)}
    if path in fixed:
        return fixed[path]
    match = _SERVICE_PATH.fullmatch(path)
    if match is None:
        return None
    return ("POST",) if match.group(2) else ("DELETE",)


def _read_body(request: BaseHTTPRequestHandler, limit: int) -> tuple[int, str] | None:
    """Read and drop the request's body (no route takes one); (status, message) to refuse it."""
    if request.headers.get("Transfer-Encoding") is not None:
        return 400, "the admin API takes no Transfer-Encoding; send the body with a Content-Length"
    raw = request.headers.get_all("Content-Length") or []
    if not raw:
        return None
    if len(set(raw)) != 1 or not _DIGITS.match(raw[0].strip()):
        return 400, f"Content-Length must be one non-negative integer (got {', '.join(raw)!r})"
    length = int(raw[0])
    if length > limit:
        return 413, f"request body of {length} bytes is over the admin API's limit of {limit} bytes"
    while length > 0:  # bounded by the limit above; each read by the socket timeout
        chunk = request.rfile.read(min(length, 65536))
        if not chunk:
            return 400, "the connection closed before the whole body arrived"
        length -= len(chunk)
    return None


def _refuse(request: BaseHTTPRequestHandler, status: int, message: str) -> None:
    """Answer and close: what is left of the body is never read, so the connection cannot be reused."""
    request.close_connection = True
    _reply(request, status, {"message": message}, close=True)
    # Closing with unread bytes queued makes the kernel send a reset, which can destroy the answer
    # before the client reads it; so half-close, then drop what still arrives (bounded) first.
    with contextlib.suppress(OSError):
        request.wfile.flush()
        request.connection.shutdown(socket.SHUT_WR)
        request.connection.settimeout(_LINGER_S)
        deadline = time.monotonic() + _LINGER_S
        drained = 0
        while drained < _LINGER_BYTES and time.monotonic() < deadline:
            chunk = request.connection.recv(65536)
            if not chunk:
                break
            drained += len(chunk)


def _reply(
    request: BaseHTTPRequestHandler,
    status: int,
    body: dict[str, Any],
    close: bool = False,
    headers: dict[str, str] | None = None,
) -> None:
    data = json.dumps(body).encode()
    request.send_response(status)
    request.send_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.send_header(name, value)
    if close:
        request.send_header("Connection", "close")
    request.send_header("Content-Length", str(len(data)))
    request.end_headers()
    if request.command != "HEAD":  # a HEAD answer has the headers of its body, not the body
        request.wfile.write(data)
