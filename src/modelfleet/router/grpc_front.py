"""The Open Inference Protocol's gRPC API (``inference.GRPCInferenceService``) on a port of
its own, in the router's process.

Each call becomes the REST request it stands for (``oip/grpc_codec.py``), sent to the
router's own HTTP listener over a keep-alive loopback connection, and the answer is turned
back. So a gRPC call passes the same key/token check, body limit, queue, per-replica limit,
deadline and metrics as the REST call, with no second copy of any of them; the cost is one
loopback hop, measured in ``bench/v2_protocol.py``. Credentials come from the
``authorization`` metadata (``Bearer <key or token>``); a gRPC deadline becomes the
``x-request-timeout-ms`` header, so a call whose deadline passes while queued is never sent
to a replica.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any
from urllib.parse import quote

# The router's process forks replicas (fork and exec); gRPC's fork handlers are for children
# that go on using gRPC, which these never do, and only warn here. Read when grpc is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402

from modelfleet.oip.grpc_codec import GrpcInputError, infer_request_body, infer_response, status_for
from modelfleet.oip.grpc_messages import SERVICE, messages
from modelfleet.router.upstream import Pool, UpstreamConn

__all__ = ["GrpcFront"]

log = logging.getLogger("modelfleet.router.grpc")

Context = grpc.aio.ServicerContext[Any, Any]
_FORWARDED_METADATA = ("authorization", "x-request-id", "x-ms-request-id", "x-ms-client-request-id")


class _Answer:
    """One HTTP answer read off an ``UpstreamConn`` (its ``Exchange``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.done: asyncio.Future[bool] = loop.create_future()
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.parts: list[bytes] = []

    def up_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers = headers

    def up_body(self, data: bytes) -> None:
        self.parts.append(data)

    def up_flush(self) -> None:
        pass

    def up_end(self, keep_alive: bool) -> None:
        if not self.done.done():
            self.done.set_result(keep_alive)

    def up_lost(self, exc: BaseException | None) -> None:
        if not self.done.done():
            self.done.set_exception(OSError(f"the router closed the loopback connection ({exc})"))

    def up_pause_writing(self) -> None:
        pass

    def up_resume_writing(self) -> None:
        pass

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class GrpcFront:
    """The gRPC server. ``router_key``: where the router's HTTP listener is, as the upstream
    pool names addresses: (host, port), or (Unix socket path, -1)."""

    def __init__(self, router_key: tuple[str, int], server_version: str) -> None:
        self.router_key = router_key
        self.server_version = server_version
        self._pool = Pool(max_idle_per_replica=256)
        self._server: grpc.aio.Server | None = None
        self._messages = messages()

    def __repr__(self) -> str:
        return f"<GrpcFront to {self.router_key}>"

    async def start(self, host: str = "127.0.0.1", port: int = 0, tls: tuple[bytes, bytes] | None = None) -> int:
        """Serve on ``host:port`` (0: a free port); returns the port. ``tls``: (certificate
        chain PEM, private key PEM): TLS only, as the router's HTTP port serves it."""
        m = self._messages
        calls = {
            "ServerLive": (self._server_live, "ServerLiveRequest", "ServerLiveResponse"),
            "ServerReady": (self._server_ready, "ServerReadyRequest", "ServerReadyResponse"),
            "ServerMetadata": (self._server_metadata, "ServerMetadataRequest", "ServerMetadataResponse"),
            "ModelReady": (self._model_ready, "ModelReadyRequest", "ModelReadyResponse"),
            "ModelMetadata": (self._model_metadata, "ModelMetadataRequest", "ModelMetadataResponse"),
            "ModelInfer": (self._model_infer, "ModelInferRequest", "ModelInferResponse"),
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=m[request].FromString, response_serializer=m[response].SerializeToString
            )
            for name, (fn, request, response) in calls.items()
        }
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        if tls is None:
            bound: int = server.add_insecure_port(f"{host}:{port}")
        else:
            credentials = grpc.ssl_server_credentials([(tls[1], tls[0])])
            bound = server.add_secure_port(f"{host}:{port}", credentials)
        if bound == 0:
            raise OSError(f"the gRPC port {host}:{port} cannot be bound (in use?)")
        await server.start()
        self._server = server
        return bound

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        self._pool.close_all()

    # -- the calls ------------------------------------------------------------------------

    async def _server_live(self, request: Any, context: Context) -> Any:
        answer = await self._http(b"GET", "/v2/health/live", context)
        return self._messages["ServerLiveResponse"](live=answer.status == 200)

    async def _server_ready(self, request: Any, context: Context) -> Any:
        answer = await self._http(b"GET", "/v2/health/ready", context)
        return self._messages["ServerReadyResponse"](ready=answer.status == 200)

    async def _server_metadata(self, request: Any, context: Context) -> Any:
        answer = await self._http(b"GET", "/v2", context)
        doc = await self._json(answer, context)
        return self._messages["ServerMetadataResponse"](
            name=doc.get("name", ""), version=doc.get("version", ""), extensions=doc.get("extensions", [])
        )

    async def _model_ready(self, request: Any, context: Context) -> Any:
        answer = await self._http(b"GET", _model_path(request.name, request.version, "/ready"), context)
        if answer.status in (401, 404):
            await self._abort(answer, context)
        return self._messages["ModelReadyResponse"](ready=answer.status == 200)

    async def _model_metadata(self, request: Any, context: Context) -> Any:
        answer = await self._http(b"GET", _model_path(request.name, request.version, ""), context)
        doc = await self._json(answer, context)
        response = self._messages["ModelMetadataResponse"](
            name=doc.get("name", ""), versions=doc.get("versions", []), platform=doc.get("platform", "")
        )
        for side in ("inputs", "outputs"):
            for tensor in doc.get(side, []):
                getattr(response, side).add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        return response

    async def _model_infer(self, request: Any, context: Context) -> Any:
        try:
            body, header_length = infer_request_body(request)
        except GrpcInputError as ex:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(ex))
        path = _model_path(request.model_name, request.model_version, "/infer")
        extra = [
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", b"%d" % header_length),
        ]
        answer = await self._http(b"POST", path, context, body, extra)
        if answer.status != 200:
            await self._abort(answer, context)
        length = answer.header(b"inference-header-content-length")
        return infer_response(
            b"".join(answer.parts), int(length) if length else None, self._messages["ModelInferResponse"]
        )

    # -- HTTP to the router ---------------------------------------------------------------

    async def _http(
        self,
        method: bytes,
        path: str,
        context: Context,
        body: bytes = b"",
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> _Answer:
        lines = [method + b" " + path.encode() + b" HTTP/1.1\r\nhost: grpc\r\n"]
        for key, value in context.invocation_metadata() or ():
            if key in _FORWARDED_METADATA and isinstance(value, str):
                lines.append(f"{key}: {value}\r\n".encode("latin-1", "replace"))
        remaining = context.time_remaining()
        if remaining is not None:
            if remaining <= 0:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline had passed")
            lines.append(b"x-request-timeout-ms: %d\r\n" % max(1, int(remaining * 1000)))
        for name, data in extra or ():
            lines.append(name + b": " + data + b"\r\n")
        lines.append(b"content-length: %d\r\n\r\n" % len(body))
        lines.append(body)
        conn = self._pool.take(self.router_key, time.monotonic())
        try:
            if conn is None:
                conn = await self._pool.connect(self.router_key)
            answer = await self._send(conn, lines)
        except OSError as ex:
            log.warning("gRPC call %s %s: the router's HTTP listener could not be reached: %s", method, path, ex)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the router could not take the call; retry")
        return answer

    async def _send(self, conn: UpstreamConn, lines: list[bytes]) -> _Answer:
        answer = _Answer(asyncio.get_running_loop())
        conn.attach(answer)
        try:
            conn.writelines(lines)
            keep_alive = await answer.done
        except BaseException:
            conn.detach()
            conn.close()  # cancelled (the caller went away) or lost: the connection's state is unknown
            raise
        conn.detach()
        if keep_alive and answer.status != 401:  # a refused key's penalty stays with its connection
            self._pool.put(conn, time.monotonic())
        else:
            conn.close()
        return answer

    async def _json(self, answer: _Answer, context: Context) -> dict[str, Any]:
        if answer.status != 200:
            await self._abort(answer, context)
        doc = json.loads(b"".join(answer.parts))
        return doc if isinstance(doc, dict) else {}

    async def _abort(self, answer: _Answer, context: Context) -> None:
        try:
            doc = json.loads(b"".join(answer.parts))
            message = str(doc.get("error") or doc.get("message") or doc)
        except ValueError:
            message = b"".join(answer.parts).decode("utf-8", "replace")[:500]
        await context.abort(grpc.StatusCode[status_for(answer.status)], message)


def _model_path(name: str, version: str, tail: str) -> str:
    path = "/v2/models/" + quote(name, safe="")
    if version:
        path += "/versions/" + quote(version, safe="")
    return path + tail
