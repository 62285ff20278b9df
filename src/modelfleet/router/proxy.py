"""The router's HTTP front end: every scoring request passes through here.

Shape (after uvicorn's httptools protocol): ``ClientConnection`` holds what lives as long as a
client's TCP connection (transport, parser, read gate, the requests it sent and not yet
answered); ``Cycle`` holds what lives as long as one request (request id, body bytes, chosen
replica, upstream connection, flags). Decisions come from ``dispatch.Dispatch`` as action
values; this module only moves bytes, reads the clock (``loop.time()``) and runs timers.

A request's life:
1. headers parsed -> route, auth, size check; failures answer a precomputed response.
2. ``Cycle.begin`` asks the dispatcher for a replica, waiting in the service's FIFO when none
   has room; a replica that refuses the connection before the request is sent is reported
   and another one tried.
3. the request goes out on a pooled keep-alive connection, its body streamed with flow
   control both ways; the answer streams back unchanged but for hop-by-hop headers.
4. the slot is given back in ``Cycle._release`` only, once the replica answered or its
   connection closed; a 504 (scoring timeout) or a client that left does not free it early.

Foreign failures (socket errors, httptools errors) are translated here and nowhere else:
refused before sending -> retry elsewhere; lost or garbled after sending -> 502; too slow ->
504. A replica's own "busy" answer (503 + ``x-modelfleet-busy: 1``) puts the request back at
the head of the queue (its body is kept for that up to ``REPLAY_LIMIT``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import ssl as _ssl
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import httptools

from modelfleet.errors import ConfigError, error_body
from modelfleet.router.auth import AuthCheck, AuthResult
from modelfleet.router.dispatch import Action, Dispatch, Send
from modelfleet.router.upstream import Pool, UpstreamConn

__all__ = ["Router", "ServiceRoute", "Upstream"]

log = logging.getLogger("modelfleet.router")
_access = logging.getLogger("modelfleet.router.access")

REPLAY_LIMIT = 1024 * 1024  # body bytes kept so that a "busy" answer can be retried elsewhere
BUFFER_BEFORE_PAUSE = 64 * 1024  # body bytes held while waiting for a replica before pausing reads
SMALL_BODY_KEEPALIVE = 64 * 1024  # bodies up to this are read and dropped after an early error
LINGER_S = 5.0  # after an early error, read (and drop) the rest of the body this long before closing

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_SERVICE_PREFIX = b"/api/v1/service/"


@dataclass(frozen=True)
class ServiceRoute:
    """How the router serves one service. ``auth`` is any object with ``check`` (or None)."""

    name: str
    auth: AuthCheck | None = None
    max_concurrent: int = 1
    max_wait_s: float = 0.5
    timeout_s: float = 60.0
    max_body_bytes: int = 100 * 1024 * 1024

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ConfigError(
                f"service name must be 1-255 letters, digits, '.', '_' or '-', starting with a letter "
                f"or digit (got {self.name!r})"
            )
        if not isinstance(self.max_concurrent, int) or self.max_concurrent < 1:
            raise ConfigError(f"replica_max_concurrent_requests must be an integer >= 1 (got {self.max_concurrent!r})")
        if not self.max_wait_s >= 0:
            raise ConfigError(f"max_request_wait_time must be >= 0 seconds (got {self.max_wait_s!r})")
        if not self.timeout_s > 0:
            raise ConfigError(f"scoring_timeout_ms must be > 0 (got {self.timeout_s!r} s)")
        if not isinstance(self.max_body_bytes, int) or self.max_body_bytes < 0:
            raise ConfigError(f"max_body_bytes must be an integer >= 0 (got {self.max_body_bytes!r})")
        if self.auth is not None and not callable(getattr(self.auth, "check", None)):
            raise ConfigError(f"auth must have a check(header) method or be None (got {self.auth!r})")


@dataclass(frozen=True)
class Upstream:
    """One replica's address."""

    id: str
    host: str
    port: int


# -- precomputed answers ----------------------------------------------------------------

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Payload Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


class Canned:
    """A whole answer built once: head lines (without date/request ids) and JSON body."""

    __slots__ = ("status", "head", "body")

    def __init__(self, status: int, body: bytes, extra: Sequence[tuple[str, str]] = ()) -> None:
        self.status = status
        self.body = body
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])]
        lines.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        lines += [f"{k}: {v}\r\n".encode() for k, v in extra]
        self.head = b"".join(lines)


def _error(status: int, message: str, extra: Sequence[tuple[str, str]] = ()) -> Canned:
    return Canned(status, error_body(message), extra)


C_HEALTH = Canned(200, b'{"status": "Healthy"}')
C_404 = _error(
    404,
    "no such service or route; scoring URLs look like /api/v1/service/<name>/score, and "
    "`modelfleet service list` shows the deployed names",
)
C_405_ROOT = _error(405, "only GET is allowed on /", [("allow", "GET")])
C_400 = _error(400, "malformed HTTP request")
C_401_MISSING = _error(401, "missing", [("www-authenticate", "Bearer")])
C_401_INVALID = _error(401, "invalid", [("www-authenticate", "Bearer")])


class ServiceState:
    """Everything the router keeps per service, from set_service to remove_service."""

    def __init__(self, route: ServiceRoute) -> None:
        self.route = route
        self.dispatch = Dispatch(route.name, route.max_concurrent, route.max_wait_s)
        # id -> (upstream, pool key, Host header); holds listed replicas and retiring ones
        # that still have requests in flight.
        self.addresses: dict[str, tuple[Upstream, tuple[str, int], bytes]] = {}
        # Queue timer: fires at the dispatcher's next_wakeup (deadlines, busy back-off).
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = float("inf")
        # Scoring timeout: requests on a replica, oldest first, with the time each was sent.
        # One timer per service, armed for the oldest, instead of one per request (a timer
        # handle costs ~2 us; an OrderedDict entry ~0.2 us). Sent order is deadline order.
        self.sending: OrderedDict[Cycle, float] = OrderedDict()
        self.deadline_timer: asyncio.TimerHandle | None = None
        self.drains: list[tuple[frozenset[str], asyncio.Future[None]]] = []
        self.removed = False
        self._build(route)

    def _build(self, r: ServiceRoute) -> None:
        n = r.name
        self.c405_score = _error(
            405, f"only GET and POST are allowed on /api/v1/service/{n}/score", [("allow", "GET, POST")]
        )
        self.c405_swagger = _error(405, f"only GET is allowed on /api/v1/service/{n}/swagger.json", [("allow", "GET")])
        self.c413 = _error(
            413,
            f"request body is larger than the {r.max_body_bytes} bytes service '{n}' accepts; send a "
            "smaller payload or raise the service's body limit",
        )
        self.c502 = _error(
            502,
            f"a replica of service '{n}' failed while handling the request; it is being checked, and "
            f"`modelfleet service logs -n {n}` shows its log",
        )
        self.c503 = _error(
            503,
            f"no replica of service '{n}' had capacity within max_request_wait_time "
            f"({round(r.max_wait_s * 1000)} ms); retry later, or raise autoscale_max_replicas or "
            "replica_max_concurrent_requests",
            [("retry-after", "1")],
        )
        self.c504 = _error(
            504,
            f"service '{n}' did not answer within scoring_timeout_ms ({round(r.timeout_s * 1000)} ms); "
            "raise scoring_timeout_ms or make run() faster",
        )

    def update(self, route: ServiceRoute) -> None:
        self.route = route
        self._build(route)


# -- header tables -------------------------------------------------------------------------

_H_FORWARD, _H_DROP, _H_AUTH, _H_LENGTH, _H_TE, _H_EXPECT, _H_MSID, _H_XID = range(8)
# Request headers not forwarded as they are (hop-by-hop, reframed, or router-owned).
_REQ_SPECIAL = {
    b"connection": _H_DROP,
    b"keep-alive": _H_DROP,
    b"proxy-connection": _H_DROP,
    b"te": _H_DROP,
    b"trailer": _H_DROP,
    b"upgrade": _H_DROP,
    b"host": _H_DROP,
    b"authorization": _H_AUTH,  # keys never reach the replica (or its logs)
    b"content-length": _H_LENGTH,
    b"transfer-encoding": _H_TE,
    b"expect": _H_EXPECT,
    b"x-ms-request-id": _H_MSID,
    b"x-request-id": _H_XID,
}
# Response headers not forwarded as they are.
_RESP_SKIP = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"transfer-encoding",
        b"x-ms-request-id",
        b"x-request-id",
    ]
)
_BUSY_HEADER = b"x-modelfleet-busy"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_status_lines: dict[tuple[int, bytes], bytes] = {}


def _status_line(status: int, reason: bytes) -> bytes:
    line = _status_lines.get((status, reason))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason or _REASONS.get(status, b""))
        if len(_status_lines) < 128:
            _status_lines[(status, reason)] = line
    return line


# -- per connection --------------------------------------------------------------------

_WAIT, _UPLOAD, _PIPE = 1, 2, 4  # why a client's socket is not read


class ReadGate:
    """Backpressure on the client socket: reads stop while any reason holds (waiting for a
    replica with a body buffered, replica's socket full, an earlier request unanswered)."""

    __slots__ = ("transport", "reasons")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.reasons = 0

    def pause(self, reason: int) -> None:
        if not self.reasons and not self.transport.is_closing():
            self.transport.pause_reading()
        self.reasons |= reason

    def resume(self, reason: int) -> None:
        if self.reasons & reason:
            self.reasons &= ~reason
            if not self.reasons and not self.transport.is_closing():
                self.transport.resume_reading()


class ClientConnection(asyncio.Protocol):
    def __init__(self, router: Router) -> None:
        # Lives with the router.
        self.router = router
        # Lives with the connection.
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.gate: ReadGate = None  # type: ignore[assignment]
        self.write_paused = False
        self.cycles: deque[Cycle] = deque()  # received, not answered yet; [0] is being served
        self.closing = False  # an answer said "connection: close"; drop further requests
        self.http11 = True
        # Lives with the request being parsed (reset by on_message_begin).
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._cycle: Cycle | None = None  # receives this request's body bytes
        self._starting: Cycle | None = None  # begins once this read is parsed (see data_received)

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.gate = ReadGate(self.transport)
        self.router.connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
            # Begin only now, so a body that came in the same read goes out to the replica
            # in the same write as the head (one syscall, one packet).
            cycle = self._starting
            if cycle is not None:
                self._starting = None
                cycle.begin()
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if isinstance(exc, httptools.HttpParserCallbackError):
                log.exception("router bug while handling a request; closing the connection")
                self.transport.abort()
                return
            if not self.cycles and not self.closing:
                self.closing = True
                self.transport.write(
                    b"".join((C_400.head, self.router.date_line, b"connection: close\r\n\r\n", C_400.body))
                )
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # a client that stops sending has gone: answer nothing more

    def connection_lost(self, exc: Exception | None) -> None:
        self.router.connections.discard(self)
        cycles = self.cycles
        while cycles:
            cycles.popleft().client_gone()
        if self._cycle is not None:
            self._cycle.client_gone()
            self._cycle = None

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.cycles and self.cycles[0].up is not None:
            self.cycles[0].up.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.cycles and self.cycles[0].up is not None:
            self.cycles[0].up.resume_reading()

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._cycle = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.closing:
            return
        router = self.router
        parser = self.parser
        method: bytes = parser.get_method()
        url = self._url
        q = url.find(b"?")
        path = url if q < 0 else url[:q]
        self.http11 = parser.get_http_version() == "1.1"
        keep_alive = parser.should_keep_alive()

        fields: list[bytes] = []
        auth = ms_id = x_id = None
        length = -1
        chunked = expect = False
        special = _REQ_SPECIAL
        for name, value in self._headers:
            kind = special.get(name.lower(), _H_FORWARD)
            if kind == _H_FORWARD:
                fields.append(name + b": " + value + b"\r\n")
            elif kind == _H_AUTH:
                auth = value
            elif kind == _H_LENGTH:
                length = int(value)  # httptools has validated it
            elif kind == _H_TE:
                chunked = b"chunked" in value.lower()
            elif kind == _H_EXPECT:
                expect = value.lower() == b"100-continue"
            elif kind == _H_MSID:
                ms_id = value
            elif kind == _H_XID:
                x_id = value
        rids = router.request_id_lines(ms_id, x_id)

        canned: Canned | None = None
        svc: ServiceState | None = None
        target = b""
        if path.startswith(_SERVICE_PREFIX):
            rest = path[16:]
            cut = rest.find(b"/")
            svc = router.services.get(rest[:cut]) if cut > 0 else None
            if svc is None:
                canned = C_404
            else:
                tail = rest[cut:]
                if tail == b"/score":
                    if method != b"POST" and method != b"GET":
                        canned = svc.c405_score
                    elif svc.route.auth is not None:
                        result = svc.route.auth.check(auth)
                        if result is not AuthResult.OK:
                            canned = C_401_MISSING if result is AuthResult.MISSING else C_401_INVALID
                elif tail == b"/swagger.json":
                    if method != b"GET":
                        canned = svc.c405_swagger
                else:
                    canned = C_404
                if canned is None:
                    if length > svc.route.max_body_bytes:
                        canned = svc.c413
                    else:
                        target = tail if q < 0 else tail + url[q:]
        elif path == b"/":
            canned = C_HEALTH if method == b"GET" else C_405_ROOT
        else:
            canned = C_404

        cycle = Cycle(self, svc, method, target, fields, rids, keep_alive, chunked, length, expect)
        cycle.canned = canned
        self._cycle = cycle
        self.cycles.append(cycle)
        if len(self.cycles) == 1:
            self._starting = cycle
        else:
            self.gate.pause(_PIPE)  # answers go out in order; hold further reads meanwhile

    def on_body(self, body: bytes) -> None:
        if self._cycle is not None:
            self._cycle.body(body)

    def on_message_complete(self) -> None:
        cycle = self._cycle
        if cycle is not None:
            cycle.body_end()
        if self.closing and (cycle is None or cycle.answered):
            self.transport.close()

    # -- used by Cycle -----------------------------------------------------------------

    def write_canned(self, canned: Canned, rids: bytes, close: bool) -> None:
        self.transport.write(
            b"".join(
                (
                    canned.head,
                    self.router.date_line,
                    rids,
                    b"connection: close\r\n\r\n" if close else b"\r\n",
                    canned.body,
                )
            )
        )

    def answered(self, cycle: Cycle) -> None:
        """``cycle``'s answer is fully written: go on with the next request or close."""
        if self.router.access_log:
            _access.info(
                "%s %s %d %s",
                cycle.method.decode("latin-1"),
                cycle.target.decode("latin-1") or "-",
                cycle.status,
                cycle.rids.split(b"\r\n", 1)[0][17:].decode("latin-1"),
            )
        cycles = self.cycles
        if cycles and cycles[0] is cycle:
            cycles.popleft()
        if cycle.close_after:
            self.closing = True
            if cycle.body_done:
                self.transport.close()
            else:
                # Keep reading (and dropping) the body a little, so the client is not reset
                # before it reads the answer; on_message_complete or the timer closes.
                self.gate.resume(_WAIT | _PIPE | _UPLOAD)
                asyncio.get_running_loop().call_later(LINGER_S, self.transport.close)
            return
        if cycles:
            cycles[0].begin()
        if len(cycles) <= 1:
            self.gate.resume(_PIPE)


# -- per request -----------------------------------------------------------------------


class Cycle:
    """One request and its answer.

    No task per request: the common path (a slot free, an idle pooled connection) runs to the
    replica inside the parser callbacks, and the answer comes back in the upstream's. Only
    opening a new connection is a coroutine (``_connect``). The slot is given back in one
    place, ``_release``, once the replica answered or its connection closed (``up_end``,
    ``up_lost``), or when nothing was sent on it (connect refused, client left meanwhile).
    Measured with bench/router_overhead.py, dropping the task and its two futures saved about
    a third of the router's CPU per request compared with uvicorn's task-per-request shape.
    """

    __slots__ = (
        "conn", "router", "svc", "method", "target", "fields", "rids", "chunked", "length",
        "expect", "arrived", "canned", "status",
        "chunks", "buffered", "kept", "body_bytes", "body_done",
        "assigned", "up", "body_sent", "busy_seen", "aborting",
        "answered", "streaming", "resp_chunked", "gone", "close_after", "head_out",
    )  # fmt: skip

    def __init__(
        self,
        conn: ClientConnection,
        svc: ServiceState | None,
        method: bytes,
        target: bytes,
        fields: list[bytes],
        rids: bytes,
        keep_alive: bool,
        chunked: bool,
        length: int,
        expect: bool,
    ) -> None:
        # Fixed when the headers are parsed.
        self.conn = conn
        self.router = conn.router
        self.svc = svc
        self.method = method
        self.target = target  # replica path + query
        self.fields = fields  # forwarded request header lines
        self.rids = rids  # request-id header lines, sent both ways
        self.chunked = chunked
        self.length = length  # -1: no Content-Length
        self.expect = expect
        self.arrived = 0.0  # when it reached the dispatcher (its queue deadline counts from here)
        self.canned: Canned | None = None  # answered by the router itself
        self.status = 0
        # Request body from the client.
        self.chunks: list[bytes] = []  # not yet sent, or kept for a replay
        self.buffered = 0  # bytes in chunks not yet sent
        self.kept = True  # chunks hold the whole body so far (a "busy" answer can be retried)
        self.body_bytes = 0
        self.body_done = False
        # Replica and upstream exchange.
        self.assigned: str | None = None  # replica whose slot this request holds
        self.up: UpstreamConn | None = None  # connection the request is on
        self.body_sent = False  # whole body written to self.up
        self.busy_seen = False  # the replica answered "busy"
        self.aborting = False  # we cut the upstream connection on purpose: not a replica fault
        # Answer to the client.
        self.answered = False  # the client has its whole answer, or will get none
        self.streaming = False  # replica's head sent to the client; body follows
        self.resp_chunked = False
        self.gone = False
        self.close_after = not keep_alive
        self.head_out: bytes | None = None  # answer head not yet written (goes with the body)

    def __repr__(self) -> str:
        return f"<Cycle {self.method.decode()} {self.target.decode()} replica={self.assigned}>"

    # -- client side -------------------------------------------------------------------

    def begin(self) -> None:
        """Now first in line on its connection: answer, or ask the dispatcher for a replica."""
        if self.answered:  # too large, or the client left, before it began
            return
        if self.canned is not None:
            self.answer(self.canned)
            return
        svc = self.svc
        assert svc is not None
        if svc.removed:
            self.answer(C_404)
            return
        if self.expect and not self.body_done:
            self.conn.transport.write(_CONTINUE)
        now = self.arrived = self.router.loop.time()
        action = svc.dispatch.arrive(self, now)
        if action is None:
            self.router.arm(svc)  # queued
        elif action.__class__ is Send:
            self.assign(action.replica)  # type: ignore[union-attr]
        else:
            self.reject()

    def body(self, data: bytes) -> None:
        n = len(data)
        self.body_bytes += n
        if self.answered:
            return  # answered early: drop the rest of the body
        svc = self.svc
        if svc is not None and self.body_bytes > svc.route.max_body_bytes and self.canned is None:
            self.too_large()
            return
        up = self.up
        if up is not None:
            if self.chunked:
                up.writelines([b"%x\r\n" % n, data, b"\r\n"])
            else:
                up.write(data)
            if self.kept:
                self.chunks.append(data)
                if self.body_bytes > REPLAY_LIMIT:
                    self.kept = False
                    self.chunks = []
        elif self.canned is None:
            self.chunks.append(data)
            self.buffered += n
            if self.body_bytes > REPLAY_LIMIT:
                self.kept = False
            if self.buffered > BUFFER_BEFORE_PAUSE:
                self.conn.gate.pause(_WAIT)

    def body_end(self) -> None:
        self.body_done = True
        if self.answered:
            return
        up = self.up
        if up is not None and not self.body_sent:
            if self.chunked:
                up.write(b"0\r\n\r\n")
            self.body_sent = True

    def too_large(self) -> None:
        """The body passed max_body_bytes while arriving: no replica may score it."""
        assert self.svc is not None
        self.canned = self.svc.c413
        self.chunks = []
        if self.up is not None:
            # Cut the replica's connection mid-body: it never sees a complete request.
            self.aborting = True
            self.up.abort()
        elif self.assigned is None:
            self.svc.dispatch.cancel(self)
        if self.conn.cycles and self.conn.cycles[0] is self:
            self.answer(self.canned)

    def client_gone(self) -> None:
        self.gone = True
        self.streaming = False
        if self.answered:
            return
        self.answered = True
        svc = self.svc
        if svc is not None and self.assigned is None:
            svc.dispatch.cancel(self)  # queued: leave the queue now, not at the deadline
        elif self.up is not None and not self.body_sent:
            self.aborting = True  # a half-sent request can't be scored: let the replica go
            self.up.abort()
        elif self.up is not None:
            self.up.resume_reading()  # nobody reads the answer now: drain it, never stall
        # A request fully sent stays on its replica until it answers (the slot stays held);
        # one still connecting is let go by _connect.

    def answer(self, canned: Canned) -> None:
        """Answer with a precomputed response (first in line only)."""
        if self.answered:
            return
        self.answered = True
        self.status = canned.status
        if self.up is not None:
            self.up.resume_reading()  # the replica's answer (504 case) is drained, never stalls
        self._close_if_body_left()
        self.conn.write_canned(canned, self.rids, self.close_after)
        self.conn.answered(self)

    def _close_if_body_left(self) -> None:
        # Answered before the whole body came: a small rest is read and dropped and the
        # connection kept; a big or unknown one is not worth reading, close after the answer.
        if not self.body_done and (self.chunked or self.length - self.body_bytes > SMALL_BODY_KEEPALIVE):
            self.close_after = True

    def reject(self) -> None:
        """Dispatch said: no capacity before the deadline."""
        assert self.svc is not None
        self.answer(self.svc.c503)

    # -- replica side ------------------------------------------------------------------

    def assign(self, replica: str) -> None:
        """Dispatch gave this request a slot on ``replica``: send it there."""
        self.assigned = replica
        svc = self.svc
        assert svc is not None
        addr = svc.addresses.get(replica)
        if addr is None:  # listed in dispatch but no address: nothing sent, try another
            self._release(refused=f"no address known for replica {replica!r}")
            return
        conn = self.router.pool.take(addr[1])
        if conn is not None:
            self._send(conn, addr[2])
        else:
            self.router.spawn(self._connect(addr[1], addr[2]))

    async def _connect(self, key: tuple[str, int], host: bytes) -> None:
        try:
            conn = await self.router.pool.connect(key)
        except OSError as exc:
            self._release(refused=f"connect failed: {exc}")  # nothing sent: another replica
            return
        except asyncio.CancelledError:
            self._release()  # router stopping
            raise
        if self.answered:  # the client left (or the body grew too large) meanwhile
            self.router.pool.put(conn)
            self._release()
            return
        self._send(conn, host)

    def _send(self, up: UpstreamConn, host: bytes) -> None:
        """Write the request (head and the body so far) on ``up``; the rest streams in body()."""
        svc = self.svc
        assert svc is not None
        loop = self.router.loop
        self.up = up
        self.body_sent = False
        self.busy_seen = False
        self.aborting = False
        up.attach(self)
        if self.chunked:
            framing = b"transfer-encoding: chunked\r\n"
        elif self.length >= 0:
            framing = b"content-length: %d\r\n" % self.length
        elif self.method == b"POST":
            framing = b"content-length: 0\r\n"
        else:
            framing = b""
        parts = [self.method, b" ", self.target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
        parts += self.fields
        parts += (self.rids, framing, b"\r\n")
        if self.chunks:
            if self.chunked:
                for c in self.chunks:
                    parts += (b"%x\r\n" % len(c), c, b"\r\n")
            else:
                parts += self.chunks
            self.buffered = 0
            if not self.kept:
                self.chunks = []
        if self.body_done:
            if self.chunked:
                parts.append(b"0\r\n\r\n")
            self.body_sent = True
        up.write(b"".join(parts))
        client = self.conn
        if client.gate.reasons & _WAIT:
            client.gate.resume(_WAIT)
        if client.write_paused:
            up.pause_reading()
        now = loop.time()
        svc.sending[self] = now  # the scoring timeout runs from here (Router._on_deadline)
        if svc.deadline_timer is None:
            self.router.arm_deadline(svc, now + svc.route.timeout_s)

    def timed_out(self) -> None:
        svc = self.svc
        assert svc is not None
        log.warning(
            "service %s: replica %s did not answer within %.3f s; answering 504, its slot stays held until it answers",
            svc.route.name,
            self.assigned,
            svc.route.timeout_s,
        )
        self.answer(svc.c504)
        if not self.body_sent and self.up is not None:
            self.aborting = True  # the replica has no complete request to work on: cut it
            self.up.abort()

    def _release(self, *, busy: bool = False, refused: str | None = None) -> None:
        """The one place a slot is given back (exactly once per assignment).

        ``busy``: the replica said so; the request goes back to the head of the queue.
        ``refused``: nothing was sent; the replica is reported and another one tried."""
        replica = self.assigned
        if replica is None:
            return
        self.assigned = None
        self._end_exchange()
        router = self.router
        svc = self.svc
        assert svc is not None
        d = svc.dispatch
        now = router.loop.time()
        if refused is not None and not router.stopping:
            router.replica_failed(svc, replica, refused)
        if self.answered or router.stopping:
            actions = d.finish(replica, now)
        elif busy:
            actions = d.busy(replica, self, now, self.arrived)
        elif refused is not None:
            actions = d.refused(replica, self, now, self.arrived)
        else:
            actions = d.finish(replica, now)
        router.apply(svc, actions)
        if svc.drains:
            router.check_drains(svc)

    def _end_exchange(self) -> None:
        if self.svc is not None:
            self.svc.sending.pop(self, None)
        up = self.up
        if up is not None:
            if up.exchange is self:
                up.detach()
            self.up = None
            self.conn.gate.resume(_UPLOAD)

    # -- upstream events (called by UpstreamConn) ---------------------------------------

    def up_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], chunked: bool) -> None:
        if status == 503:
            for name, value in headers:
                if name.lower() == _BUSY_HEADER and value.strip() == b"1":
                    self.busy_seen = True
                    return  # its body is dropped; up_end decides what next
        self.svc.sending.pop(self, None)  # type: ignore[union-attr]  # answered in time
        self.chunks = []
        self.kept = False
        if self.answered:
            return  # 504 already sent, or the client left: the answer is read and dropped
        self.streaming = True
        self.status = status
        conn = self.conn
        out = [_status_line(status, reason)]
        has_length = False
        skip = _RESP_SKIP
        for name, value in headers:
            n = name.lower()
            if n in skip:
                continue
            if n == b"content-length":
                has_length = True
            out.append(name + b": " + value + b"\r\n")
        out.append(self.rids)
        if not has_length and status >= 200 and status != 204 and status != 304:
            if conn.http11:
                out.append(b"transfer-encoding: chunked\r\n")
                self.resp_chunked = True
            else:
                self.close_after = True
        if self.close_after:
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        # Written with the first body bytes, or by up_flush at the end of this read.
        self.head_out = b"".join(out)

    def up_body(self, data: bytes) -> None:
        if self.streaming:
            head = self.head_out or b""
            self.head_out = None
            if self.resp_chunked:
                self.conn.transport.writelines([head, b"%x\r\n" % len(data), data, b"\r\n"])
            elif head:
                self.conn.transport.writelines([head, data])
            else:
                self.conn.transport.write(data)

    def up_flush(self) -> None:
        """End of one read from the replica: the head must not wait for more."""
        if self.head_out is not None:
            head, self.head_out = self.head_out, None
            if self.streaming:
                self.conn.transport.write(head)

    def up_end(self, keep_alive: bool) -> None:
        up = self.up
        assert up is not None
        reusable = keep_alive and self.body_sent
        self._end_exchange()
        if reusable:
            self.router.pool.put(up)
        else:
            up.close()
        if self.busy_seen:
            if self.kept and not self.answered:
                self._release(busy=True)  # back to the head of the queue, elsewhere or later
                return
            self._release()
            # The body is too big to replay (or nobody waits for it): our own 503.
            self.answer(self.svc.c503)  # type: ignore[union-attr]
            return
        self._release()
        if self.streaming:
            self.streaming = False
            head = self.head_out or b""
            self.head_out = None
            if self.resp_chunked:
                self.conn.transport.write(head + b"0\r\n\r\n")
            elif head:
                self.conn.transport.write(head)
            self._close_if_body_left()
            self.answered = True
            self.conn.answered(self)

    def up_lost(self, exc: BaseException | None) -> None:
        if self.up is None:
            return
        svc = self.svc
        assert svc is not None
        failed = not self.aborting and not self.router.stopping
        if failed:  # reported before the slot is freed, so no waiter is sent there meanwhile
            why = f"connection lost mid-request: {exc or 'closed by the replica'}"
            if self.up.reused:  # the keep-alive race (replica closed an idle connection) looks so
                why += " (on a reused keep-alive connection)"
            self.router.replica_failed(svc, self.assigned or "?", why)
        self._release()
        if not failed:
            return
        if self.streaming:
            # Head already forwarded: the only honest signal left is a cut connection.
            self.streaming = False
            self.answered = True
            self.conn.transport.abort()
        else:
            self.answer(svc.c502)

    def up_pause_writing(self) -> None:
        self.conn.gate.pause(_UPLOAD)

    def up_resume_writing(self) -> None:
        self.conn.gate.resume(_UPLOAD)


# -- the router --------------------------------------------------------------------------


class Router:
    """The front end: services, their replicas, and the HTTP server (see module docstring)."""

    def __init__(
        self,
        on_replica_failed: Callable[[str, str], Any] | None = None,
        *,
        access_log: bool = False,
        pool: Pool | None = None,
    ) -> None:
        # Settings, fixed at construction.
        self.on_replica_failed = on_replica_failed
        self.access_log = access_log and _access.isEnabledFor(logging.INFO)  # decided once
        # Routing table and upstream connections; change through the methods below.
        self.services: dict[bytes, ServiceState] = {}
        self.pool = pool or Pool()
        # Running state: between start() and stop().
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.connections: set[ClientConnection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # connection attempts in progress
        self.stopping = False
        self._tick_handle: asyncio.TimerHandle | None = None
        self.date_line = b""
        # Request ids: a random prefix per router and a counter, shaped like a UUID4.
        r = os.urandom(9).hex()
        self._rid_prefix = f"{r[:8]}-{r[8:12]}-4{r[12:15]}-a{r[15:18]}-".encode()
        self._rid_count = itertools.count(1)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0, ssl: _ssl.SSLContext | None = None) -> int:
        """Listen; returns the bound port."""
        self.loop = asyncio.get_running_loop()
        self._tick()
        self._server = await self.loop.create_server(lambda: ClientConnection(self), host, port, ssl=ssl, backlog=2048)
        bound: int = self._server.sockets[0].getsockname()[1]
        log.info("router listening on %s:%d%s", host, bound, " (TLS)" if ssl else "")
        return bound

    async def stop(self) -> None:
        """Stop listening, cut client connections, then replica connections; every slot is
        given back and nothing is reported as a replica failure."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.transport.abort()
        await asyncio.sleep(0)  # connection_lost runs: queued requests leave their queues
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.pool.close_all()
        await asyncio.sleep(0)  # upstream connection_lost runs: the remaining slots are freed
        for svc in self.services.values():
            for handle in (svc.timer, svc.deadline_timer):
                if handle is not None:
                    handle.cancel()
            svc.timer = svc.deadline_timer = None
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _tick(self) -> None:
        # The Date header is refreshed once a second, not formatted per answer.
        self.date_line = b"date: " + formatdate(usegmt=True).encode() + b"\r\n"
        self._tick_handle = self.loop.call_later(1.0, self._tick)

    def spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- routing table -----------------------------------------------------------------

    def set_service(self, route: ServiceRoute) -> None:
        """Create or update a service in place; requests in flight are not disturbed."""
        key = route.name.encode()
        svc = self.services.get(key)
        if svc is None:
            self.services[key] = ServiceState(route)
            log.info("service %s: added (max_concurrent=%d)", route.name, route.max_concurrent)
            return
        svc.update(route)
        self.apply(svc, svc.dispatch.configure(route.max_concurrent, route.max_wait_s, self._now()))
        if svc.sending:  # a new scoring timeout applies to requests already sent, too
            first = next(iter(svc.sending.values()))
            self.arm_deadline(svc, first + route.timeout_s)

    def set_replicas(self, service: str, upstreams: Iterable[Upstream]) -> None:
        """The replicas that may receive new requests; others finish what they have.
        Ignored (and logged) for a service the router does not have, e.g. one just removed."""
        svc = self._service(service)
        if svc is None:
            return
        ups = list(upstreams)
        d = svc.dispatch
        new = {u.id: (u, (u.host, u.port), f"{u.host}:{u.port}".encode()) for u in ups}
        for rid, entry in svc.addresses.items():
            if rid not in new:
                if d.slot(rid) is not None:
                    new[rid] = entry  # still has requests in flight
                else:
                    self.pool.close_idle(entry[1])
        svc.addresses = new
        self.apply(svc, d.set_replicas([u.id for u in ups], self._now()))
        log.info("service %s: replicas %s (%r)", service, [u.id for u in ups], d)

    def mark_healthy(self, service: str, replica_id: str) -> None:
        """A failed replica passed its probe: it may take new requests again."""
        svc = self._service(service)
        if svc is None:
            return
        self.apply(svc, svc.dispatch.mark_healthy(replica_id, self._now()))

    async def drain(self, service: str, replica_ids: Iterable[str], timeout_s: float) -> bool:
        """Stop assigning to ``replica_ids`` and wait until none has a request in flight.
        Returns False when ``timeout_s`` passed first."""
        svc = self.services.get(service.encode())
        if svc is None:
            return True
        ids = frozenset(replica_ids)
        d = svc.dispatch
        d.retire(ids)
        if d.idle(ids):
            log.info("service %s: drained %s (nothing in flight)", service, sorted(ids))
            return True
        in_flight = sum(s.in_flight for s in d.slots() if s.id in ids)
        log.info("service %s: draining %s, %d in flight", service, sorted(ids), in_flight)
        fut: asyncio.Future[None] = self.loop.create_future()
        entry = (ids, fut)
        svc.drains.append(entry)
        try:
            await asyncio.wait_for(fut, timeout_s)
            log.info("service %s: drained %s", service, sorted(ids))
            return True
        except asyncio.TimeoutError:
            log.warning("service %s: drain of %s timed out after %.1f s (%r)", service, sorted(ids), timeout_s, d)
            return False
        finally:
            if entry in svc.drains:
                svc.drains.remove(entry)

    def remove_service(self, service: str) -> None:
        """New requests get 404; waiting ones 503; requests in flight finish."""
        svc = self.services.pop(service.encode(), None)
        if svc is None:
            return
        svc.removed = True
        if svc.timer is not None:
            svc.timer.cancel()
            svc.timer = None
        # svc.deadline_timer stays: requests in flight still have their scoring timeout.
        for req in svc.dispatch.clear():
            req.req.reject()  # type: ignore[attr-defined]
        for _, fut in svc.drains:
            if not fut.done():
                fut.set_result(None)
        log.info("service %s: removed", service)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per service: in_flight, queued, limit and each replica's in_flight and readiness."""
        out: dict[str, dict[str, Any]] = {}
        for svc in self.services.values():
            d = svc.dispatch
            out[svc.route.name] = {
                "in_flight": d.in_flight,
                "queued": d.queued,
                "limit": d.limit,
                "replicas": {s.id: {"in_flight": s.in_flight, "ready": s.listed and not s.failed} for s in d.slots()},
                "dispatch": repr(d),
            }
        return out

    # -- used by cycles ----------------------------------------------------------------

    def _now(self) -> float:
        return self.loop.time() if self.loop is not None else 0.0

    def _service(self, service: str) -> ServiceState | None:
        svc = self.services.get(service.encode())
        if svc is None:
            log.info("router has no service named %r (removed, or set_service not called yet)", service)
        return svc

    def apply(self, svc: ServiceState, actions: Sequence[Action]) -> None:
        """Carry out dispatch actions, then make sure a timer covers the queue."""
        for a in actions:
            if a.__class__ is Send:
                a.req.assign(a.replica)  # type: ignore[attr-defined,union-attr]
            else:
                a.req.reject()  # type: ignore[attr-defined]
        if svc.dispatch.queued:
            self.arm(svc)

    def arm(self, svc: ServiceState) -> None:
        when = svc.dispatch.next_wakeup()
        if when is None or (svc.timer is not None and svc.timer_at <= when):
            return
        if svc.timer is not None:
            svc.timer.cancel()
        svc.timer_at = when
        svc.timer = self.loop.call_at(when, self._on_timer, svc, when)

    def _on_timer(self, svc: ServiceState, when: float) -> None:
        svc.timer = None
        svc.timer_at = float("inf")
        if svc.removed:
            return
        # Timers may fire a hair early (uvloop rounds to ms); the timer stands for `when`.
        self.apply(svc, svc.dispatch.expire(max(self.loop.time(), when)))

    def arm_deadline(self, svc: ServiceState, when: float) -> None:
        if svc.deadline_timer is not None:
            svc.deadline_timer.cancel()
        svc.deadline_timer = self.loop.call_at(when, self._on_deadline, svc, when)

    def _on_deadline(self, svc: ServiceState, when: float) -> None:
        """Answer 504 for every request sent more than timeout_s ago; re-arm for the next."""
        svc.deadline_timer = None
        now = max(self.loop.time(), when)
        timeout = svc.route.timeout_s
        sending = svc.sending
        while sending:
            cycle, sent = next(iter(sending.items()))
            if sent + timeout > now:
                self.arm_deadline(svc, sent + timeout)
                return
            del sending[cycle]
            cycle.timed_out()

    def check_drains(self, svc: ServiceState) -> None:
        for ids, fut in svc.drains:
            if not fut.done() and svc.dispatch.idle(ids):
                fut.set_result(None)

    def replica_failed(self, svc: ServiceState, replica_id: str, why: str) -> None:
        svc.dispatch.fail(replica_id)
        addr = svc.addresses.get(replica_id)
        if addr is not None:
            self.pool.close_idle(addr[1])
        log.warning(
            "service %s: replica %s failed (%s); no new requests go to it until it is marked healthy",
            svc.route.name,
            replica_id,
            why,
        )
        cb = self.on_replica_failed
        if cb is not None:
            try:
                cb(svc.route.name, replica_id)
            except Exception:
                log.exception("on_replica_failed callback raised (service %s)", svc.route.name)

    def request_id_lines(self, ms_id: bytes | None, x_id: bytes | None) -> bytes:
        """Header lines carrying the request's ids: the client's, or a new one."""
        if ms_id is not None and len(ms_id) > 256:
            ms_id = None
        if x_id is not None and len(x_id) > 256:
            x_id = None
        if ms_id is None:
            if x_id is None:
                x_id = b"%s%012x" % (self._rid_prefix, next(self._rid_count))
            ms_id = x_id
        elif x_id is None:
            x_id = ms_id
        return b"x-ms-request-id: " + ms_id + b"\r\nx-request-id: " + x_id + b"\r\n"
