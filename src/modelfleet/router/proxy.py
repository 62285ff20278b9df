"""The router's HTTP front end: every scoring request passes through here.

Shape (after uvicorn's httptools protocol): ``ClientConnection`` (this module) holds what
lives as long as a client's TCP connection (transport, parser, read gate, the requests it sent
and not yet answered); ``cycle.Cycle`` holds what lives as long as one request (its states,
WAITING -> ACTIVE -> STREAMING -> DONE or GONE, are drawn in cycle.py); ``routes`` holds
per-service state, the precomputed answers and the pure ``route()``; ``auth.authenticate``
checks credentials; ``ids`` makes request ids as azmlinfsrv does; ``upstream`` is the
keep-alive pool; ``ports`` what a cycle needs from this module (no import cycles). Decisions
come from ``dispatch.Dispatch`` as action values; the router only moves bytes, reads the
clocks (``loop.time()``; the injected ``clock`` and ``wall_clock`` once per tick) and runs
timers.

A request's life:
1. head parsed -> limits (431), request ids (431 past 100 characters), ``route()`` (404,
   405, 413), ``authenticate()`` (401); failures answer a precomputed response, in order
   with the requests pipelined before it (``advance`` begins them in a loop, never
   recursively).
2. ``Cycle.begin`` asks the dispatcher for a replica, waiting in the service's FIFO when none
   has room (a failed service answers 503 at once); a replica that refuses the connection
   before the request is sent is reported and another one tried.
3. the request goes out on a pooled keep-alive connection, its body streamed with flow
   control both ways; the answer streams back unchanged but for hop-by-hop headers, chunk by
   chunk as the replica sends it.
4. the slot is given back in ``Cycle._release`` only, once the replica answered or its
   connection closed; a 504 (scoring timeout) or a client that left does not free it early
   (a client that left a streamed answer cuts it, so the replica's generator ends).

Foreign failures (socket errors, httptools errors) are translated in this package and nowhere
else: refused before sending -> retry elsewhere; a pooled connection reset before any answer
byte -> sent again once on a new connection to the same replica (502 if it is gone); lost or
garbled after sending -> 502; too slow -> 504; a malformed request (bad framing, smuggling) ->
400 in its turn, then close. A replica's own "busy" answer (503 + ``x-modelfleet-busy: 1``)
puts the request back at the head of the queue (its body is kept for that up to
``cycle.REPLAY_LIMIT``). Header, keep-alive and send timeouts: see ``Router``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from email.utils import formatdate
from time import perf_counter
from typing import TYPE_CHECKING, Any

import httptools

from modelfleet.errors import ConfigError
from modelfleet.router.auth import AuthFailures, AuthResult, authenticate
from modelfleet.router.cycle import DONE, WAITING, Cycle
from modelfleet.router.dispatch import Action, Send
from modelfleet.router.ids import MSG_MSID, MSG_XID, IdsTooLong, RequestIds
from modelfleet.router.ports import DRAIN, PENALTY, PIPE, UPLOAD, WAIT, ReadGate
from modelfleet.router.routes import (
    C_400,
    C_400_SMUGGLING,
    C_401_INVALID,
    C_401_MISSING,
    C_408,
    H_AUTH,
    H_CLID,
    H_EXPECT,
    H_FORWARD,
    H_LENGTH,
    H_MSID,
    H_TE,
    H_XID,
    REQ_SPECIAL,
    Canned,
    ServiceRoute,
    ServiceState,
    Upstream,
    error_answer,
    route,
)
from modelfleet.router.upstream import Pool
from modelfleet.telemetry.counters import ServiceMetrics

if TYPE_CHECKING:
    from modelfleet.telemetry.tracing import Tracer

__all__ = ["ClientConnection", "Router", "ServiceRoute", "Upstream"]

log = logging.getLogger("modelfleet.router")
_access = logging.getLogger("modelfleet.router.access")

LINGER_S = 5.0  # after an early error, read (and drop) the rest of the body this long before closing


# -- per connection --------------------------------------------------------------------


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; the answer is already arranged."""


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
        self.broken = False  # refused (bad framing, headers too large): nothing more is parsed
        self.http11 = True
        self._advancing = False  # inside advance(): answers given meanwhile do not recurse
        # Timeouts (Router._sweep): ``seq`` counts request heads begun; the sweep adds up the
        # time it sees this connection owed nothing with ``seq`` unchanged (``quiet``). The
        # header timeout applies while a head is arriving (or none came yet), the keep-alive
        # timeout otherwise; neither runs while the router owes the client an answer. No clock
        # is read per request.
        self.seq = 0
        self.seen = -1
        self.quiet = 0.0
        # Send timeout (Router._sweep): ``drained`` counts resume_writing calls; a connection
        # paused for writing with no progress for send_timeout_s is cut.
        self.drained = 0
        self.drained_seen = -1
        self.stalled = 0.0
        # Requests refused 401 in a row; past the router's allowance each further one pauses
        # reading for a while (Router docstring: a flood of bad credentials).
        self.bad_auth = 0
        # Lives with the request being parsed (reset by on_message_begin).
        self._in_head = False
        self._head_raw = 0  # bytes of reads that fell wholly inside this head (httptools buffers them)
        self._read_len = 0  # bytes of the read being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._cycle: Cycle | None = None  # receives this request's body bytes
        self._starting = False  # a request became first in line during this read (see data_received)

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.gate = ReadGate(self.transport)
        self.router.connections.add(self)

    def peer_host(self) -> str:
        """The client's address; looked up only when needed (a failed auth), not per connection."""
        peer = self.transport.get_extra_info("peername")
        return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"

    def data_received(self, data: bytes) -> None:
        if self.broken:
            return  # the error answer is arranged; the rest is dropped unread
        self._read_len = len(data)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if isinstance(exc, httptools.HttpParserCallbackError):
                if self.broken:
                    return  # a callback refused the request (_Refused): answered in order
                log.exception("router bug while handling a request; closing the connection")
                self.transport.abort()
                return
            why = str(exc)  # llhttp's words for the two framings together, or twice
            smuggling = "can't be present with" in why or "Duplicate Content-Length" in why
            self.refuse(C_400_SMUGGLING if smuggling else C_400)
            return
        if self._in_head:
            if self._head_raw < 0:
                self._head_raw = 0  # this head began in this read
            else:
                # The whole read fell inside one request head: httptools buffers an unfinished
                # header line without calling back, so bound those bytes here.
                self._head_raw += len(data)
                if self._head_raw > self.router.max_header_bytes:
                    self.refuse(self.router.c431_size)
                    return
        if self._starting:
            # Begin only now, so a body that came in the same read goes out to the replica
            # in the same write as the head (one syscall, one packet).
            self._starting = False
            cycles = self.cycles
            if len(cycles) == 1 and cycles[0].state == WAITING:
                cycles[0].begin()  # an answer given at once goes on through answered() -> advance()
            else:
                self.advance()

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
        # The client is not reading its answers: stop reading its requests too, or a pipeline
        # of requests answered by the router itself would pile answers up in memory.
        self.write_paused = True
        self.gate.pause(DRAIN)
        if self.cycles and self.cycles[0].up is not None:
            self.cycles[0].up.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.drained += 1
        self.gate.resume(DRAIN)
        if self.cycles and self.cycles[0].up is not None:
            self.cycles[0].up.resume_reading()

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._cycle = None
        self._in_head = True
        self._head_raw = -1  # "began in the current read" (see data_received)
        self.seq += 1

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Sizes are checked once the head is complete (on_headers_complete); until then what
        # httptools hands over is bounded by the reads that carry it (see data_received).
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
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
        auth = ms_id = x_id = client_id = None
        length = -1
        chunked = expect = False
        special = REQ_SPECIAL
        headers = self._headers
        if len(headers) > router.max_header_fields:
            self.refuse(router.c431_count)
            raise _Refused
        # A head that came in one read no larger than the limit fits; one that spanned reads,
        # or came in a larger read, is measured.
        if (self._head_raw >= 0 or self._read_len > router.max_header_bytes) and len(url) + sum(
            len(n) + len(v) for n, v in headers
        ) > router.max_header_bytes:
            self.refuse(router.c431_size)
            raise _Refused
        for name, value in headers:
            kind = special.get(name.lower(), H_FORWARD)
            if kind == H_FORWARD:
                fields.append(name + b": " + value + b"\r\n")
            elif kind == H_AUTH:
                auth = value
            elif kind == H_LENGTH:
                length = int(value)  # httptools has validated it
            elif kind == H_TE:
                chunked = b"chunked" in value.lower()
            elif kind == H_EXPECT:
                expect = value.lower() == b"100-continue"
            elif kind == H_MSID:
                ms_id = value
            elif kind == H_XID:
                x_id = value
            elif kind == H_CLID:
                client_id = value
        if ms_id is None and x_id is None and client_id is None:
            ids: bytes | IdsTooLong = router.ids.fresh_lines()  # the common case
        else:
            ids = router.ids.lines(ms_id, x_id, client_id)

        if ids.__class__ is not bytes:
            svc = None
            canned: Canned | None = router.c431_ids[ids.message]  # type: ignore[union-attr]
            rids: bytes = ids.lines  # type: ignore[union-attr]
            target = b""
        else:
            rids = ids
            decision = route(method, path, length, router.services)
            svc = decision.service
            canned = decision.answer
            if decision.check_auth:
                result = authenticate(auth, svc.route.auth, router.wall_now)  # type: ignore[union-attr]
                if result is not AuthResult.OK:
                    canned = C_401_MISSING if result is AuthResult.MISSING else C_401_INVALID
                    router.auth_failures.record(self.peer_host(), result)
                    svc.metrics.auth_failed(result is AuthResult.MISSING)  # type: ignore[union-attr]
                    self.bad_auth += 1
                    if self.bad_auth > router.bad_auth_allowance:
                        self.slow_down()
                elif self.bad_auth:
                    self.bad_auth = 0
            target = b"" if canned is not None else decision.path if q < 0 else decision.path + url[q:]

        cycle = Cycle(self, svc, method, target, fields, rids, keep_alive, chunked, length, expect)
        cycle.canned = canned
        self._cycle = cycle
        self.cycles.append(cycle)
        if len(self.cycles) == 1:
            self._starting = True
        else:
            self.gate.pause(PIPE)  # answers go out in order; hold further reads meanwhile

    def on_body(self, body: bytes) -> None:
        if self._cycle is not None:
            self._cycle.body(body)

    def on_message_complete(self) -> None:
        cycle = self._cycle
        if cycle is not None:
            cycle.body_end()
        if self.closing and (cycle is None or cycle.state >= DONE):
            self.transport.close()

    def slow_down(self) -> None:
        """Read nothing more from this connection for the router's ``bad_auth_pause_s``: what
        this read already holds is still answered, in order (a pipelined burst goes on after
        the pause), and a client sending one request at a time gets one answer per pause."""
        if not self.gate.reasons & PENALTY:
            self.gate.pause(PENALTY)
            self.router.loop.call_later(self.router.bad_auth_pause_s, self.gate.resume, PENALTY)

    # -- refusing ------------------------------------------------------------------------

    def refuse(self, canned: Canned) -> None:
        """The request being parsed is malformed or over a limit: it gets ``canned`` after the
        answers owed before it, then the connection closes; nothing more is parsed."""
        if self.broken:
            return
        self.broken = True
        self._in_head = False
        self._starting = False
        cycle = self._cycle
        self._cycle = None
        if cycle is not None and cycle in self.cycles:
            cycle.refuse(canned)  # its head was fine, its body is not
        elif cycle is not None:
            # Answered already (e.g. 401 while its body still came): nothing owed, just close.
            if not self.cycles:
                self.transport.close()
            return
        else:
            rids = b"x-request-id: " + self.router.ids.new() + b"\r\n"
            bad = Cycle(self, None, b"-", b"", [], rids, False, False, 0, False)
            bad.canned = canned
            bad.body_done = True
            self.cycles.append(bad)
        self.advance()

    def expire(self) -> None:
        """The header or keep-alive timeout passed (Router._sweep)."""
        if self._in_head and not self.broken:
            self.refuse(C_408)  # part of a head came: say why before closing
        else:
            self.transport.close()

    # -- used by Cycle -----------------------------------------------------------------

    def advance(self) -> None:
        """Begin requests first in line, one after another. A request answered at once (by
        the router itself) comes back through ``answered``, which only pops it: the loop
        here begins the next, so a long pipeline of such requests never recurses."""
        if self._advancing:
            return
        self._advancing = True
        try:
            cycles = self.cycles
            while cycles:
                head = cycles[0]
                if head.state != WAITING:
                    break
                head.begin()
        finally:
            self._advancing = False

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
        svc = cycle.svc
        router = self.router
        if svc is None:
            router.unrouted.answered(cycle.status)  # GET /, unknown services
        elif cycle.started:  # went through the dispatcher: timed
            now = perf_counter()
            svc.metrics.observe(cycle.status, now - cycle.started)
            if svc.route.trace and router.tracer is not None:
                router.tracer.add(svc.route.name, cycle.rids, cycle.status, cycle.started, cycle.sent_at, now)
        else:
            svc.metrics.answered(cycle.status)
        if router.access_log:
            _access.info(
                "%s %s %d %s",
                cycle.method.decode("latin-1"),
                cycle.target.decode("latin-1") or "-",
                cycle.status,
                cycle.rids.split(b"\r\n", 1)[0].partition(b": ")[2].decode("latin-1"),
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
                self.gate.resume(WAIT | PIPE | UPLOAD)
                router.loop.call_later(LINGER_S, self.transport.close)
                if self.broken and self.transport.can_write_eof():
                    # Nothing more will be parsed: say so now (FIN); the client closes
                    # its side once it has read the answer, and eof_received closes ours.
                    self.transport.write_eof()
            return
        if cycles:
            self.advance()
        if len(cycles) <= 1:
            self.gate.resume(PIPE)


# -- the router --------------------------------------------------------------------------


class Router:
    """The front end: services, their replicas, and the HTTP server (see module docstring).

    Limits on what a client may send, with defaults chosen after the servers a v1 request
    met on its way (azureml-fe's nginx, then gunicorn in the image) and Envoy's:

    - ``max_header_bytes`` (64 KiB): request line and headers together. Envoy allows 60 KiB,
      nginx 4 x 8 KiB buffers; 64 KiB passes any real client (a JWT is ~1 KiB). Past it: 431.
    - ``max_header_fields`` (100): gunicorn's ``limit_request_fields`` (what azmlinfsrv runs
      under) and Envoy's default. Past it: 431.
    - ``header_timeout_s`` (20 s): a request head, once begun (or a new connection's first
      one), must be complete within it; Apache's ``RequestReadTimeout header=20`` and
      within nginx's 60 s ``client_header_timeout``, short enough that a slowloris client
      does not hold a connection for long. Past it: 408 and close.
    - ``keep_alive_timeout_s`` (75 s): an idle keep-alive connection is closed after it;
      nginx's ``keepalive_timeout`` default, and above the idle timeouts of common client
      pools (httpx 5 s, aiohttp 15 s), so the client closes first and never races us.
    - ``send_timeout_s`` (60 s): a client that takes none of its answer for this long is cut
      off (nginx's ``send_timeout``); until then what the router holds for it is bounded by the
      transport's high-water mark, as it stops reading the replica while the client is full.
      A streamed answer is then cut at the replica too (its generator ends, its slot is
      freed); one with a length is drained so the connection can be reused.

    A flood of bad credentials (issue 12: a keyed client of another service must keep its
    latency while one connection after another sends wrong keys as fast as the router answers):
    a connection whose last ``bad_auth_allowance`` (1,000) requests were all refused 401 is
    read only once per ``bad_auth_pause_s`` (50 ms) from then on, until a request on it passes
    authentication. A client with a wrong key still gets its answers, in order; a flood of
    401s costs the router at most 20 requests a second per connection instead of all its CPU.
    The allowance lets a pipelined burst of mistakes through at full speed.

    Timeouts are checked by one sweep per ``tick_s`` over the open connections (no timer
    per request); ``tick_s`` is at most 1 s and at most half of the shorter timeout.
    ``clock`` is the monotonic clock used for timeouts (default: the event loop's);
    ``wall_clock`` gives epoch seconds for token expiry, read once per tick (``wall_now``:
    tokens carry whole seconds and 30 s of skew, so a per-request read buys nothing).
    """

    def __init__(
        self,
        on_replica_failed: Callable[[str, str], Any] | None = None,
        *,
        access_log: bool = False,
        pool: Pool | None = None,
        max_header_bytes: int = 64 * 1024,
        max_header_fields: int = 100,
        header_timeout_s: float = 20.0,
        keep_alive_timeout_s: float = 75.0,
        send_timeout_s: float = 60.0,
        bad_auth_allowance: int = 1000,
        bad_auth_pause_s: float = 0.05,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(max_header_bytes, int) or max_header_bytes < 1024:
            raise ConfigError(f"max_header_bytes must be an integer >= 1024 (got {max_header_bytes!r})")
        if not isinstance(max_header_fields, int) or max_header_fields < 8:
            raise ConfigError(f"max_header_fields must be an integer >= 8 (got {max_header_fields!r})")
        timeouts = {
            "header_timeout_s": header_timeout_s,
            "keep_alive_timeout_s": keep_alive_timeout_s,
            "send_timeout_s": send_timeout_s,
        }
        for label, value in timeouts.items():
            if not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{label} must be a number of seconds > 0 (got {value!r})")
        if not isinstance(bad_auth_allowance, int) or bad_auth_allowance < 0:
            raise ConfigError(f"bad_auth_allowance must be an integer >= 0 (got {bad_auth_allowance!r})")
        if not isinstance(bad_auth_pause_s, (int, float)) or not 0 < bad_auth_pause_s <= 10:
            raise ConfigError(f"bad_auth_pause_s must be a number of seconds in (0, 10] (got {bad_auth_pause_s!r})")
        # Settings, fixed at construction.
        self.on_replica_failed = on_replica_failed
        self.bad_auth_allowance = bad_auth_allowance
        self.bad_auth_pause_s = float(bad_auth_pause_s)
        self.access_log = access_log and _access.isEnabledFor(logging.INFO)  # decided once
        self.max_header_bytes = max_header_bytes
        self.max_header_fields = max_header_fields
        self.header_timeout_s = float(header_timeout_s)
        self.keep_alive_timeout_s = float(keep_alive_timeout_s)
        self.send_timeout_s = float(send_timeout_s)
        self.tick_s = min(1.0, *(float(t) / 2 for t in timeouts.values()))
        self._clock = clock
        self._wall_clock = wall_clock
        self.wall_now = wall_clock()  # epoch seconds for token expiry, refreshed every tick
        self.clock: Callable[[], float] = clock or time.monotonic  # the loop's clock once started
        self.c431_size = error_answer(
            431, f"the request line and headers are larger than the router's limit of {max_header_bytes} bytes"
        )
        self.c431_count = error_answer(
            431, f"the request has more than the router's limit of {max_header_fields} header fields"
        )
        self.c431_ids = {m: error_answer(431, m) for m in (MSG_XID, MSG_MSID)}
        # Routing table and upstream connections; change through the methods below.
        self.services: dict[bytes, ServiceState] = {}
        self.pool = pool or Pool()
        # Running state: between start() and stop().
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.connections: set[ClientConnection] = set()
        self._servers: list[asyncio.AbstractServer] = []  # one per start(): TLS and plain HTTP
        self._tasks: set[asyncio.Task[None]] = set()  # connection attempts in progress
        self.stopping = False
        self._tick_handle: asyncio.TimerHandle | None = None
        self.date_line = b""
        self._date_at = 0.0
        self._swept_at = 0.0
        self.auth_failures = AuthFailures()  # 401s in total and per client address, for metrics
        self.unrouted = ServiceMetrics()  # answers outside any service (health, unknown names)
        self.tracer: Tracer | None = None  # set by the composition root; used for services with trace=True
        self.ids = RequestIds()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0, ssl: _ssl.SSLContext | None = None) -> int:
        """Listen; returns the bound port. Call again to listen on another port too (e.g. plain
        HTTP beside TLS); every listener serves the same services."""
        self.loop = asyncio.get_running_loop()
        if self._clock is None:
            self.clock = self.loop.time
        if self._tick_handle is None:
            self._swept_at = self.clock()
            self._tick()
        server = await self.loop.create_server(lambda: ClientConnection(self), host, port, ssl=ssl, backlog=2048)
        self._servers.append(server)
        bound: int = server.sockets[0].getsockname()[1]
        log.info("router listening on %s:%d%s", host, bound, " (TLS)" if ssl else "")
        return bound

    async def stop(self) -> None:
        """Stop listening, cut client connections, then replica connections; every slot is
        given back and nothing is reported as a replica failure."""
        self.stopping = True
        for server in self._servers:
            server.close()
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
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    def _tick(self) -> None:
        # The Date header is refreshed once a second, not formatted per answer.
        now = self.clock()
        self.wall_now = self._wall_clock()
        if now - self._date_at >= 1.0 or not self.date_line:
            self._date_at = now
            self.date_line = b"date: " + formatdate(usegmt=True).encode() + b"\r\n"
        self._sweep(now)
        self._tick_handle = self.loop.call_later(self.tick_s, self._tick)

    def _sweep(self, now: float) -> None:
        """Cut connections quiet for longer than their header or keep-alive timeout."""
        elapsed = now - self._swept_at
        self._swept_at = now
        expired = []
        stalled: list[ClientConnection] = []
        for conn in self.connections:
            if conn.write_paused:
                if conn.drained != conn.drained_seen:
                    conn.drained_seen = conn.drained
                    conn.stalled = 0.0
                else:
                    conn.stalled += elapsed
                    if conn.stalled >= self.send_timeout_s:
                        stalled.append(conn)
                        continue
            if conn.cycles or conn.seq != conn.seen:
                conn.seen = conn.seq
                conn.quiet = 0.0
                continue
            conn.quiet += elapsed
            head = conn._in_head or conn.seq == 0
            if conn.quiet >= (self.header_timeout_s if head else self.keep_alive_timeout_s):
                expired.append(conn)
        for conn in expired:
            if not conn.transport.is_closing():
                conn.expire()
        for conn in stalled:
            # Its answers cannot be delivered: the connection goes, and with it (client_gone)
            # the replica's answer: drained when it has a length, cut when it streams.
            log.info("client %s read nothing for %.0f s; closing its connection", conn.peer_host(), conn.stalled)
            conn.transport.abort()

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
        new = {u.id: (u, u.key, u.head_lines()) for u in ups}
        for rid, entry in svc.addresses.items():
            if rid not in new:
                if d.slot(rid) is not None:
                    new[rid] = entry  # still has requests in flight
                else:
                    self.pool.close_idle(entry[1])
        svc.addresses = new
        if ups and svc.failed is not None:
            self.set_service_failed(service, None)
        self.apply(svc, d.set_replicas([u.id for u in ups], self._now()))
        log.info("service %s: replicas %s (%r)", service, [u.id for u in ups], d)

    def set_service_failed(self, service: str, reason: str | None) -> None:
        """The service cannot serve (e.g. every replica failed init()): new and waiting requests
        get 503 saying so and why, without Retry-After. ``None`` clears it; so does
        ``set_replicas`` with at least one replica."""
        svc = self._service(service)
        if svc is None:
            return
        svc.set_failed(reason)
        if reason is None:
            log.info("service %s: no longer marked failed", service)
            return
        log.warning("service %s: marked failed (%s)", service, reason)
        if svc.timer is not None:
            svc.timer.cancel()
            svc.timer = None
            svc.timer_at = float("inf")
        for action in svc.dispatch.clear():
            action.req.reject()  # type: ignore[attr-defined]

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
                a.req.assign(a.replica)  # type: ignore[attr-defined]
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
