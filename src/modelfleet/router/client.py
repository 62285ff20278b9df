"""A client's connection to the router: every scoring request passes through here.

Shape (after uvicorn's httptools protocol): ``ClientConnection`` holds what lives as long as a
client's TCP connection (transport, read gate, the requests it sent and not yet answered); its
parser, the request head being read and the head's limits are the wire layer's
(``wire.server.ServerProtocol``, shared with the replica), and the router's words for what that
layer refuses are ``refusals``'. ``cycle.Cycle`` holds what lives as long as one request (its
states, WAITING -> ACTIVE -> STREAMING -> DONE or GONE, are drawn in cycle.py); ``routes`` holds
per-service state, the precomputed answers and the pure ``route()``; ``auth.authenticate``
checks credentials; ``ids`` makes request ids as azmlinfsrv does; ``ports`` is what this
module needs of the router (``proxy.Router``: the service table, timers and timeouts).

A request's life:
1. head parsed -> limits (431, ``wire.server``), request ids (431 past 100 characters),
   ``route()`` (404, 405, 413), ``authenticate()`` (401); failures answer a precomputed
   response, in order with the requests pipelined before it (``advance`` begins them in a
   loop, never recursively).
2. ``Cycle.begin`` asks the dispatcher for a replica, waiting in the service's FIFO when none
   has room (a failed service answers 503 at once); a replica that refuses the connection
   before the request is sent is reported and another one tried.
3. the request goes out on a pooled keep-alive connection (``upstream``), its body streamed
   with flow control both ways; the answer streams back unchanged but for hop-by-hop headers,
   chunk by chunk as the replica sends it.
4. the slot is given back in ``Cycle._release`` only, once the replica answered or its
   connection closed; a 504 (scoring timeout) or a client that left does not free it early
   (a client that left a streamed answer cuts it, so the replica's generator ends).

Foreign failures (socket errors, httptools errors) are translated in this package and nowhere
else: refused before sending -> retry elsewhere; a pooled connection reset before any answer
byte -> sent again once on a new connection to the same replica (502 if it is gone); lost or
garbled after sending -> 502; too slow -> 504; a malformed request (bad framing, smuggling) ->
400 in its turn, then close. A replica's own "busy" answer (503 + ``x-modelfleet-busy: 1``)
puts the request back at the head of the queue (its body is kept for that up to
``cycle.REPLAY_LIMIT``). Header, keep-alive and send timeouts: see ``proxy.Router``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from time import perf_counter

from modelfleet.router.affinity import model_key
from modelfleet.router.auth import AuthResult, authenticate
from modelfleet.router.cycle import DONE, WAITING, Cycle, bad_deadline, parse_deadline_ms
from modelfleet.router.ids import IdsTooLong
from modelfleet.router.mirror import MirrorCycle
from modelfleet.router.ports import DRAIN, PENALTY, PIPE, UPLOAD, WAIT, FrontPort, ReadGate
from modelfleet.router.routes import (
    C_401_INVALID,
    C_401_MISSING,
    C_408,
    H_AUTH,
    H_CLID,
    H_CONN,
    H_DEADLINE,
    H_DROP,
    H_EXPECT,
    H_FORWARD,
    H_LENGTH,
    H_MODEL,
    H_MODEL_VERSION,
    H_MSID,
    H_PIN,
    H_SESSION,
    H_TE,
    H_XID,
    REQ_SPECIAL,
    Canned,
    ServiceState,
    route,
)
from modelfleet.router.versions import EndpointState
from modelfleet.wire.framing import LOWER
from modelfleet.wire.server import Refused, ServerProtocol

__all__ = ["LINGER_S", "ClientConnection", "ModelCycle"]

log = logging.getLogger("modelfleet.router")
_access = logging.getLogger("modelfleet.router.access")

_CLOSE_END = LOWER.close + b"\r\n"  # the last line of a head that closes the connection
LINGER_S = 5.0  # after an early error, read (and drop) the rest of the body this long before closing


class ModelCycle(Cycle):
    """A request that names a model (``x-ms-model`` or ``/models/<model>/score``): the
    dispatcher routes it by ``model_key`` (dispatch.py rule 8, affinity.py). Other requests are
    plain ``Cycle``s and pay nothing for this."""

    __slots__ = ("model_key",)
    model_key: bytes


class ClientConnection(ServerProtocol):
    """One client's TCP connection (its parser and the head being read: ``ServerProtocol``)."""

    # A connection whose requests another router already authenticated (the Kubernetes router
    # pods' peer port: targets/kubernetes/forward.py, which checks its own proof first).
    trusted = False

    def __init__(self, router: FrontPort) -> None:
        super().__init__(router.refusals.limits)
        # Lives with the router.
        self.router = router
        # Lives with the connection.
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.gate: ReadGate = None  # type: ignore[assignment]
        self.write_paused = False
        self.cycles: deque[Cycle] = deque()  # received, not answered yet; [0] is being served
        self.closing = False  # an answer said "connection: close"; drop further requests
        self.http11 = True
        self._advancing = False  # inside advance(): answers given meanwhile do not recurse
        # Timeouts (timeouts.ConnectionTimeouts.sweep): ServerProtocol's ``seq`` counts request
        # heads begun; the sweep adds up the time it sees this connection owed nothing with
        # ``seq`` unchanged (``quiet``). The header timeout applies while a head is arriving (or
        # none came yet), the keep-alive timeout otherwise; neither runs while the router owes
        # the client an answer. No clock is read per request.
        self.seen = -1
        self.quiet = 0.0
        # Send timeout (the same sweep): ``drained`` counts resume_writing calls; a connection
        # paused for writing with no progress for send_timeout_s is cut.
        self.drained = 0
        self.drained_seen = -1
        self.stalled = 0.0
        # Requests refused 401 in a row; past the router's allowance each further one pauses
        # reading for a while (Router docstring: a flood of bad credentials).
        self.bad_auth = 0
        # Lives with the request being parsed: ServerProtocol's url, headers, and ``current``,
        # its Cycle (which receives its body bytes).
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
        if self.refused:
            return  # the error answer is arranged; the rest is dropped unread
        if not self.feed(data):
            return  # refused (answered in order) or aborted
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
        if self.current is not None:
            self.current.client_gone()
            self.current = None

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

    # -- what the wire layer refused ---------------------------------------------------

    def refuse_head(self, kind: int) -> None:
        if self.closing:
            self.refused = True  # an answer said "connection: close": nothing more is answered
            return
        self.refuse(self.router.refusals.head[kind])

    def parse_failed(self, kind: int, exc: Exception) -> None:
        self.refuse(self.router.refusals.parse(kind))

    def callback_failed(self, exc: Exception) -> None:
        log.exception("router bug while handling a request; closing the connection")
        self.transport.abort()

    # -- httptools callbacks (on_message_begin, on_url, on_header: ServerProtocol's) -----

    def on_headers_complete(self) -> None:
        if self.closing:
            self.in_head = False
            return
        if not self.head_fits():
            raise Refused
        router = self.router
        parser = self.parser
        method: bytes = parser.get_method()
        url = self.url
        q = url.find(b"?")
        path = url if q < 0 else url[:q]
        keep_alive = parser.should_keep_alive()

        fields: list[bytes] = []
        copies: tuple[ServiceState, ...] = ()
        auth = ms_id = x_id = client_id = deadline_raw = pin = session = model = model_version = None
        deadline = 0.0
        length = -1
        chunked = expect = conn_said = False
        special = REQ_SPECIAL
        for name, value in self.headers:
            kind = special.get(name.lower(), H_FORWARD)
            if kind == H_FORWARD:
                fields.append(name + b": " + value + b"\r\n")
            elif kind == H_DROP:
                pass  # (Host, every request's) before the longer chain below
            elif kind == H_AUTH:
                auth = value
            elif kind == H_LENGTH:
                length = int(value)  # httptools has validated it
            elif kind == H_CONN:
                conn_said = True
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
            elif kind == H_DEADLINE:
                deadline_raw = value
            elif kind == H_PIN:
                pin = value  # an endpoint's version (versions.py); never forwarded as sent
            elif kind == H_SESSION:
                session = value
                fields.append(name + b": " + value + b"\r\n")
            elif kind == H_MODEL:
                model = value  # sent on below, once (the URL's model wins)
            elif kind == H_MODEL_VERSION:
                model_version = value
                fields.append(name + b": " + value + b"\r\n")
        # Kept alive with no Connection header can only be HTTP/1.1 (llhttp accepts 0.9, 1.0,
        # 1.1 and 2.0, and keeps 1.0 alive only when asked); otherwise the parser says (the
        # call formats a string: most requests skip it).
        self.http11 = (keep_alive and not conn_said) or parser.get_http_version() == "1.1"
        if ms_id is None and x_id is None and client_id is None:
            ids: bytes | IdsTooLong = router.ids.fresh_lines()  # the common case
        else:
            ids = router.ids.lines(ms_id, x_id, client_id)

        if ids.__class__ is not bytes:
            svc = None
            canned: Canned | None = router.refusals.ids[ids.message]  # type: ignore[union-attr]
            rids: bytes = ids.lines  # type: ignore[union-attr]
            target = b""
        else:
            rids = ids
            decision = route(method, path, length, router.services)
            svc = decision.service
            canned = decision.answer
            if decision.model is not None:
                model = decision.model
            if decision.check_auth and not self.trusted:
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
            if svc is not None and svc.endpoint is not None and canned is None:
                # an endpoint: its version serves (versions.py); the answer names it
                endpoint: EndpointState = svc.endpoint  # type: ignore[assignment]
                version, canned, line = endpoint.pick(pin, session)
                rids += line
                if version is not None:
                    svc = version
                    if endpoint.mirrors:  # mirror.py: which mirrors get a copy
                        copies = endpoint.copies(version)
            if deadline_raw is not None and svc is not None and canned is None:
                ms = parse_deadline_ms(deadline_raw)
                if ms is None:
                    canned = bad_deadline(deadline_raw)
                else:  # counted from now, the head's arrival; at most the scoring timeout
                    deadline = router.loop.time() + min(ms / 1000.0, svc.route.timeout_s)
            target = b"" if canned is not None else decision.path if q < 0 else decision.path + url[q:]

        if copies and canned is None:  # copied to mirrors (mirror.py), maybe routed by the model too
            if model:
                fields.append(b"x-ms-model: " + model + b"\r\n")
            mirrored = MirrorCycle(self, svc, method, target, fields, rids, keep_alive, chunked, length, expect)
            mirrored.targets = copies
            if model:
                mirrored.model_key = model_key(model, model_version)
            cycle: Cycle = mirrored
        elif not model or canned is not None:
            cycle = Cycle(self, svc, method, target, fields, rids, keep_alive, chunked, length, expect)
        else:  # routed by the model (affinity.py); the replica reads the name from x-ms-model
            fields.append(b"x-ms-model: " + model + b"\r\n")
            cycle = ModelCycle(self, svc, method, target, fields, rids, keep_alive, chunked, length, expect)
            cycle.model_key = model_key(model, model_version)
        cycle.canned = canned
        if deadline_raw is not None and canned is None:
            cycle.deadline = deadline
        self.current = cycle
        self.cycles.append(cycle)
        if len(self.cycles) == 1:
            self._starting = True
        else:
            self.gate.pause(PIPE)  # answers go out in order; hold further reads meanwhile

    def on_body(self, body: bytes) -> None:
        cycle: Cycle | None = self.current
        if cycle is not None:
            cycle.body(body)

    def on_message_complete(self) -> None:
        cycle: Cycle | None = self.current
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
        if self.refused:
            return
        self.refused = True
        self.in_head = False
        self._starting = False
        cycle: Cycle | None = self.current
        self.current = None
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
        """The header or keep-alive timeout passed (``timeouts.ConnectionTimeouts.sweep``)."""
        if self.in_head and not self.refused:
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
                    _CLOSE_END if close else b"\r\n",
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
                if self.refused and self.transport.can_write_eof():
                    # Nothing more will be parsed: say so now (FIN); the client closes
                    # its side once it has read the answer, and eof_received closes ours.
                    self.transport.write_eof()
            return
        if cycles:
            self.advance()
        if len(cycles) <= 1 and self.gate.reasons & PIPE:
            self.gate.resume(PIPE)
