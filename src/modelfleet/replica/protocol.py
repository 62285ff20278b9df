"""One HTTP/1.1 connection: pipelining, flow control, response writing.

Written the way uvicorn's httptools protocol is. The parser, the request head being read and
its limits are the wire layer's (``wire.server.ServerProtocol``, which the router's connections
share); the answers' framing lines are ``wire.framing``'s. State here is grouped by lifetime:
the connection (transport, the queue of pipelined requests, flow-control flags, the write lock
and duplicated socket) and the request being parsed (its body so far); a finished request
becomes a ``Request``, which lives until it is answered.

Ordering. Requests on a connection are answered strictly in arrival order: while one is being
answered (``busy``) later ones wait in ``pending``, and reading pauses when that queue is long,
so pipelining is safe. Refusals decided while parsing (400 malformed, 413 too large) are queued
as plain replies and close the connection when their turn comes.

Writing from a worker. When run() finishes, the worker thread writes the response itself
(``send_from_worker``) instead of waking the event loop to do it, which takes a thread switch
off every /score response (about a quarter of the request's time for a trivial model). It is
safe because, while a request is busy, nothing else writes to its connection: the worker
claims the request under ``wlock`` (the timeout answer claims it the same way, so exactly one of
them answers), writes only when the transport's own buffer is empty (so bytes never interleave),
and writes to a ``dup`` of the socket that is closed under the same lock (so the fd number is
never reused under it). Whatever the socket does not take at once is handed to the transport.
The loop then does the bookkeeping (next request, keep-alive, in-flight count) as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote

from modelfleet.replica.entry import Call
from modelfleet.replica.responses import Reply, get_status_line
from modelfleet.replica.shared import Shared
from modelfleet.wire.framing import CONTINUE, TITLE, connection
from modelfleet.wire.server import UPGRADE, Refused, ServerProtocol

if TYPE_CHECKING:
    from modelfleet.replica.stream import ChunkSender
    from modelfleet.replica.workers import Job

# Answers one parsed request on a connection (app.App.handle).
Handler = Callable[["HttpProtocol", "Request"], None]

PIPELINE_HIGH_WATER = 32  # pause reading when this many requests wait on one connection
LINGER_S = 5.0  # after a 413/400, keep reading (and dropping) this long so the client sees the answer


class Request(Call):
    """One parsed request (the ``Call`` the entry core sees) and what answering it needs."""

    __slots__ = (
        "conn",
        "keep_alive",
        "http10",
        "head",
        "ids",
        "cors",
        "job",
        "timer",
        "claimed",
        "sent",
        "released",
        "t0",
        "chunked",
    )

    def __init__(
        self,
        conn: HttpProtocol,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        keep_alive: bool,
        http10: bool = False,
        chunked: bool = True,
    ) -> None:
        path, _, query = target.partition(b"?")
        self.conn = conn
        self.method = method
        self.path = unquote(path.decode("latin-1")) if b"%" in path else path.decode("latin-1")
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.http10 = http10
        self.head = method == "HEAD"
        self.ids = b""  # request-id response headers, set by App
        self.cors = b""  # CORS response headers, set by App
        self.job: Job | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.claimed = False  # someone (worker or timeout) is answering; guarded by conn.wlock
        self.sent: bytes | None = None  # set when a worker wrote the answer: what the socket left over
        self.released = False  # its concurrency slot was given back; guarded by App.slots
        self.t0 = time.perf_counter()  # parsed; the access line's duration counts from here
        self.chunked = chunked  # HTTP/1.1: a streamed answer may use chunked transfer encoding

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}>"


class HttpProtocol(ServerProtocol):
    """One client connection."""

    def __init__(self, shared: Shared, handle: Handler) -> None:
        super().__init__(shared.limits.head)  # the parser and the head being read
        # -- connection lifetime
        self.shared = shared
        self.handle = handle  # answers a parsed request (app.App.handle)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[Request | Reply] = deque()
        self.busy = False  # the head request is being answered
        self.closed = False
        self.writable = True  # transport flow control
        self.paused_since = 0.0  # when writing paused (the client stopped reading)
        self.reading_paused = False
        self.eof = False
        self.idle_since = time.monotonic()
        self.wlock = threading.Lock()  # guards wfd and Request.claimed (see module docstring)
        self.wfd = -1
        self.stream: ChunkSender | None = None  # the streamed answer being sent (stream.py)
        # -- the request being parsed (its head: ServerProtocol's url and headers)
        self.body: list[bytes] = []
        self.size = 0
        # Timeouts (checked by ``expire`` once a second): when the head being read began (0 when
        # no head is being read), and when bytes last arrived.
        self.head_since = 0.0
        self.in_body = False
        self.last_read = self.idle_since

    def __repr__(self) -> str:
        return f"<HttpProtocol busy={self.busy} pending={len(self.pending)} closed={self.closed}>"

    # ---- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.shared.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and self.shared.direct_write:
            try:
                self.wfd = os.dup(sock.fileno())
            except OSError:
                self.wfd = -1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.stream is not None:
            self.stream.lost()
        self.pending.clear()
        self._drop_wfd()
        self.shared.connections.discard(self)

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.stream is not None:
            # A client that closes its side mid-stream has gone away (as uvicorn reads it): the
            # transport closes and the generator is ended.
            self.stream.lost()
            return None
        if self.refused:
            self.close()
            return None
        # Keep the socket open to answer what was already received.
        return True if (self.busy or self.pending) else None

    def pause_writing(self) -> None:
        self.writable = False
        self.paused_since = time.monotonic()

    def resume_writing(self) -> None:
        self.writable = True
        if self.stream is not None:
            self.stream.wake()
        self.next()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        self.last_read = time.monotonic()
        self.feed(data)
        self.next()

    # ---- what the wire layer refused
    def refuse_head(self, kind: int) -> None:
        self._refuse(self.shared.limits.head_refusals[kind])

    def parse_failed(self, kind: int, exc: Exception) -> None:
        if kind == UPGRADE:
            return  # no protocol upgrades here; the request itself is answered normally
        if not self.refused:
            self._refuse(self.shared.limits.parse_error(exc))

    def callback_failed(self, exc: Exception) -> None:
        self._refuse(self.shared.limits.parse_error(exc))

    # ---- httptools callbacks (on_url, on_header: ServerProtocol's)
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.body = []
        self.size = 0
        self.head_since = self.last_read

    def on_headers_complete(self) -> None:
        self.head_since = 0.0
        self.in_body = True
        if self.refused:
            return
        if not self.head_fits():
            raise Refused
        declared = 0
        expect_continue = False
        for name, value in self.headers:
            size = len(name)
            if size == 14 and name.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
            elif size == 6 and name.lower() == b"expect":
                expect_continue = value.lower() == b"100-continue"
        # A declared body over the limit is refused before any of it is read.
        if declared > self.shared.max_body_bytes:
            self._refuse(self.shared.too_large)
        elif expect_continue and not self.busy and not self.pending and self.transport is not None:
            # curl and others wait (a second) for this before sending a large body. Only when
            # nothing else is being answered on this connection, so responses stay in order.
            self.transport.write(CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self.refused:
            return
        self.size += len(body)
        if self.size > self.shared.max_body_bytes:  # chunked bodies are counted as they come
            self._refuse(self.shared.too_large)
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.in_body = False
        if self.refused:
            return
        parser = self.parser
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body = []
        method = parser.get_method().decode("latin-1")
        keep_alive = parser.should_keep_alive()
        version = parser.get_http_version()
        http10 = keep_alive and version == "1.0"
        self.pending.append(Request(self, method, self.url, self.headers, body, keep_alive, http10, version != "1.0"))
        if len(self.pending) > PIPELINE_HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def _refuse(self, reply: Reply) -> None:
        self.body = []
        self.refused = True
        self.pending.append(reply)

    # ---- answering, on the loop
    def next(self) -> None:
        """Answer queued requests in order until one has to wait for a worker."""
        while not self.busy and self.pending and self.writable and not self.closed:
            item = self.pending.popleft()
            if isinstance(item, Reply):
                self._write_final(item)
                return
            self.busy = True
            self.handle(self, item)
        if self.reading_paused and len(self.pending) <= PIPELINE_HIGH_WATER // 2 and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        if not self.busy and not self.pending:
            self.idle_since = time.monotonic()
            if self.eof or (self.shared.stopping and not self.closed):
                self.close()

    def render(self, req: Request, reply: Reply, ids: bool = True) -> bytes:
        """The response bytes for ``req`` (safe on any thread: reads only immutable state)."""
        shared = self.shared
        parts = [get_status_line(reply.status), reply.headers]
        if ids:
            parts += (shared.server_header, req.ids, req.cors)
        parts += (TITLE.length % len(reply.body), shared.date)
        parts.append(connection(TITLE, not req.keep_alive or shared.stopping, req.http10))
        parts.append(b"\r\n")
        if not req.head:
            parts.append(reply.body)
        return b"".join(parts)

    def render_stream_head(self, req: Request, reply: Reply) -> bytes:
        """Status line and headers of a streamed answer (any thread, as ``render``): chunked for
        HTTP/1.1; for HTTP/1.0 the body ends when the connection closes."""
        shared = self.shared
        parts = [get_status_line(reply.status), reply.headers, shared.server_header, req.ids, req.cors]
        if req.chunked:
            parts.append(TITLE.chunked)
        parts.append(shared.date)
        parts.append(connection(TITLE, not req.keep_alive or shared.stopping))
        parts.append(b"\r\n")
        return b"".join(parts)

    def write_stream(self, data: bytes) -> None:
        """A piece of the streamed answer (loop thread; see stream.py)."""
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def abort_stream(self) -> None:
        """The streamed answer cannot finish: close without its last chunk (loop thread)."""
        self.close()

    def respond(self, req: Request, reply: Reply, ids: bool = True) -> None:
        """Write the reply for ``req`` (the head of the queue) from the loop."""
        self.busy = False
        if self.closed or self.transport is None:
            return
        self.transport.write(self.render(req, reply, ids))
        self._after_response(req, reply)

    def finish_sent(self, req: Request, reply: Reply) -> None:
        """Bookkeeping for a response a worker already wrote (``req.sent`` is what was left)."""
        self.busy = False
        self.stream = None
        if self.closed or self.transport is None:
            return
        if req.sent:
            self.transport.write(req.sent)
        self._after_response(req, reply)

    def _after_response(self, req: Request, reply: Reply) -> None:
        access = self.shared.access
        if access is not None:
            access.add(req.method, req.path, reply.status, req.t0, req.ids)
        if not req.keep_alive or self.shared.stopping:
            self.close()

    def claim(self, req: Request) -> bool:
        """Take the right to answer ``req``; False when a worker already took it."""
        with self.wlock:
            if req.claimed:
                return False
            req.claimed = True
            return True

    # ---- answering, on a worker thread
    def send_from_worker(self, req: Request, reply: Reply) -> None:
        """Write the answer directly if we may (see module docstring); sets ``req.sent``."""
        with self.wlock:
            if req.claimed or self.wfd < 0 or self.closed or self.transport is None:
                return
            # The buffer only shrinks while the request is busy, so a 0 read here stays true.
            try:
                if self.transport.get_write_buffer_size():
                    return
            except RuntimeError:  # a transport that cannot tell from this thread: let the loop write
                return
            req.claimed = True
            data = self.render(req, reply)
            try:
                written = os.write(self.wfd, data)
            except BlockingIOError:
                written = 0
            except OSError:
                written = len(data)  # the peer is gone; connection_lost will follow
            req.sent = data[written:]

    # ---- closing
    def _write_final(self, reply: Reply) -> None:
        """Answer a request refused while parsing (400, 413), then stop reading and close.

        The client may still be sending its body; closing at once could reset the connection
        before it reads our answer, so we half-close and drop input for a while first.
        """
        assert self.transport is not None
        self.pending.clear()
        shared = self.shared
        head = get_status_line(reply.status) + reply.headers + shared.server_header
        head += TITLE.length % len(reply.body) + shared.date + TITLE.close + b"\r\n"
        self.transport.write(head + reply.body)
        self.refused = True
        with contextlib.suppress(OSError, RuntimeError):
            if self.transport.can_write_eof():
                self.transport.write_eof()
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        if shared.loop is not None:
            shared.loop.call_later(LINGER_S, self.close)

    def _drop_wfd(self) -> None:
        with self.wlock:
            if self.wfd >= 0:
                os.close(self.wfd)
                self.wfd = -1

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            # Close our duplicate first: while it is open the peer would not see the close.
            self._drop_wfd()
            self.transport.close()

    def expire(self, now: float) -> None:
        """Apply the send, header, body and keep-alive timeouts (called once a second)."""
        limits = self.shared.limits
        if not self.writable and now - self.paused_since > limits.send_timeout_s:
            # The client takes nothing of what is sent to it (closing would wait for it forever):
            # drop the connection and what is buffered for it.
            if self.transport is not None:
                self.transport.abort()
            return
        if self.closed or self.refused:
            return
        if self.head_since:
            if now - self.head_since > limits.header_timeout_s:
                self._refuse(limits.head_timeout)
                self.next()
        elif self.in_body:
            if now - self.last_read > limits.header_timeout_s:
                self._refuse(limits.body_timeout)
                self.next()
        elif not self.busy and not self.pending and now - self.idle_since > limits.keep_alive_s:
            self.close()

    def close_if_idle(self, now: float, idle_limit: float) -> None:
        if not self.busy and not self.pending and (self.shared.stopping or now - self.idle_since > idle_limit):
            self.close()
