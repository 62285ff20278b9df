"""The daemon's loopback admin API: how the SDK and CLI ask the control plane to act.

Bound to 127.0.0.1 only and protected by a random token kept in a file only the owner can
read. Calls are rare (deploy, update, delete, status), so a small threaded stdlib server is
enough; each handler hands its work to the daemon's event loop and waits for the result.

    GET    /v1/status                 cluster, services, replicas and router counters
    POST   /v1/services/<name>/sync   the stored service changed: reconcile it now
    DELETE /v1/services/<name>        drain and stop its replicas, then forget it
    POST   /v1/shutdown               stop the daemon gracefully
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import threading
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from modelfleet.errors import ModelfleetError
from modelfleet.spec.names import validate_service_name

log = logging.getLogger("modelfleet.admin")

_SERVICE_PATH = re.compile(r"/v1/services/([^/]*)(/sync)?")


class AdminHandlers:
    """What the admin API can do; the daemon supplies the implementations."""

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        sync: Callable[[str], None],
        delete: Callable[[str], Awaitable[None]],
        shutdown: Callable[[], None],
    ) -> None:
        self.status = status
        self.sync = sync
        self.delete = delete
        self.shutdown = shutdown


class AdminServer:
    def __init__(self, loop: asyncio.AbstractEventLoop, token: str, handlers: AdminHandlers) -> None:
        self._loop = loop
        self._token = token.encode()
        self._handlers = handlers
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                log.debug("admin %s", format % args)

            def do_GET(self) -> None:
                server._handle(self, "GET")

            def do_POST(self) -> None:
                server._handle(self, "POST")

            def do_DELETE(self) -> None:
                server._handle(self, "DELETE")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
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
        length = int(request.headers.get("Content-Length") or 0)
        if length:
            request.rfile.read(length)
        presented = (request.headers.get("Authorization") or "").removeprefix("Bearer ").encode()
        if not hmac.compare_digest(presented, self._token):
            _reply(request, 401, {"message": "admin token missing or invalid"})
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
        handlers = self._handlers
        if path == "/v1/status" and method == "GET":
            return 200, self._on_loop(handlers.status)
        if path == "/v1/shutdown" and method == "POST":
            self._loop.call_soon_threadsafe(handlers.shutdown)
            return 202, {"message": "shutting down"}
        match = _SERVICE_PATH.fullmatch(path)
        if match:
            name, sync = validate_service_name(match.group(1)), match.group(2)  # a bad name: 400 with the rule
            if sync and method == "POST":
                self._on_loop(lambda: handlers.sync(name))
                return 202, {"message": f"service {name} reconciling"}
            if not sync and method == "DELETE":
                self._on_loop(lambda: handlers.delete(name))
                return 200, {"message": f"service {name} deleted"}
        return 404, {"message": f"no admin route {method} {path}"}


def _reply(request: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    request.send_response(status)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(data)))
    request.end_headers()
    request.wfile.write(data)
