"""One request's life in the router, from its parsed head to its last answer byte.

``Cycle`` holds what lives as long as one request (request id, body bytes, chosen replica,
upstream connection, flags). The client socket's backpressure (``ReadGate``) and what a cycle
needs from its connection and router are in ``ports``. The connection
(``client.ClientConnection``) creates a cycle once a
request's headers are parsed and feeds it the body; the upstream connection
(``upstream.UpstreamConn``) feeds it the replica's answer through the ``up_*`` methods.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter

from modelfleet.router.dispatch import Reject, Send
from modelfleet.router.ports import DRAIN, PIPE, UPLOAD, WAIT, ClientPort, ReadGate
from modelfleet.router.routes import (
    BUSY_HEADER,
    C_404,
    RESP_SKIP,
    Canned,
    ServiceState,
    error_answer,
    status_line,
)
from modelfleet.router.upstream import UpstreamConn
from modelfleet.wire.framing import CHUNKED, CONTINUE, LAST_CHUNK, LOWER, UNTIL_CLOSE, body_framing, chunk_size

__all__ = [
    "C_504_DEADLINE",
    "C_504_QUEUED",
    "DEADLINE_MAX_MS",
    "Cycle",
    "ReadGate",
    "DRAIN",
    "PIPE",
    "UPLOAD",
    "WAIT",
    "bad_deadline",
    "cold_503",
    "parse_deadline_ms",
]  # the gate's names, re-exported

log = logging.getLogger("modelfleet.router")

REPLAY_LIMIT = 1024 * 1024  # body bytes kept so that a "busy" answer can be retried elsewhere
BUFFER_BEFORE_PAUSE = 64 * 1024  # body bytes held while waiting for a replica before pausing reads
SMALL_BODY_KEEPALIVE = 64 * 1024  # bodies up to this are read and dropped after an early error
# -- the caller's deadline ---------------------------------------------------------------
#
# A request may carry ``x-request-timeout-ms: N``: the caller gives up after N ms. Its deadline
# is the moment its head was parsed plus min(N, the service's scoring_timeout_ms). Queued past
# it, the request is answered 504 (C_504_QUEUED) at that moment and never sent; sent before
# it, the replica is told what is left (``x-request-timeout-ms: <remaining>``) and the router
# answers 504 (C_504_DEADLINE) if the replica has not answered by then.
DEADLINE_MAX_MS = 2**31 - 1
DEADLINE_LINE = b"x-request-timeout-ms: %d\r\n"
C_504_QUEUED = error_answer(
    504,
    "the caller's deadline (x-request-timeout-ms, or the service's scoring_timeout_ms if smaller) "
    "passed while the request was queued for a replica; it was not sent to one",
)
C_504_DEADLINE = error_answer(
    504,
    "the caller's deadline (x-request-timeout-ms) passed before the replica answered",
)


def parse_deadline_ms(value: bytes) -> int | None:
    """The header's value as milliseconds, or ``None`` when it is not a whole number from 1
    to ``DEADLINE_MAX_MS``."""
    v = value.strip()
    if not v.isdigit() or len(v) > 10:
        return None
    ms = int(v)
    return ms if 1 <= ms <= DEADLINE_MAX_MS else None


def cold_503(service: str, waited_s: float) -> Canned:
    """The 503 for a request a service at zero held as long as it may while its replica starts
    (built on that rare path, not per request)."""
    return error_answer(
        503,
        f"service '{service}' is scaled to zero and no replica was Ready within max_request_wait_time + "
        f"cold_start_wait_ms ({round(waited_s * 1000)} ms); one is starting: retry shortly, or raise "
        "cold_start_wait_ms",
        [("retry-after", "1")],
    )


def bad_deadline(value: bytes) -> Canned:
    """The 400 for a malformed ``x-request-timeout-ms`` (built per bad request, not per request)."""
    shown = value[:40].decode("latin-1")
    return error_answer(
        400,
        f"x-request-timeout-ms must be a whole number of milliseconds from 1 to {DEADLINE_MAX_MS} (got {shown!r})",
    )


# The router's framing lines (wire.framing, lower case), bound once for the hot path.
_TE_CHUNKED = LOWER.chunked
_LENGTH = LOWER.length
_CLOSE = LOWER.close


# -- the lifecycle of one request, as its client sees it ---------------------------------
#
#   WAITING ──begin──> ACTIVE ──replica's head forwarded──> STREAMING ──last byte──> DONE
#      │                 │  └──────── router's own answer (401/404/413/502/503/504) ──> DONE
#      └─ answered before its turn began (body too large) ─────────────────────────> DONE
#   any state but DONE ──client left, or the stream was cut──> GONE
#
# WAITING: parsed, behind earlier requests on its connection. ACTIVE: first in line; queued
# for a slot, connecting, or on a replica, and the client has no byte of its answer yet.
# STREAMING: the replica's answer head went out, its body follows. DONE and GONE are final.
# Which replica slot it holds is ``assigned`` (given back in ``_release`` only), orthogonal
# to these states: a 504 is DONE while the slot stays held until the replica answers.
WAITING, ACTIVE, STREAMING, DONE, GONE = range(5)
STATE_NAMES = ("WAITING", "ACTIVE", "STREAMING", "DONE", "GONE")
_NEXT: tuple[frozenset[int], ...] = (
    frozenset((ACTIVE, DONE, GONE)),  # from WAITING
    frozenset((STREAMING, DONE, GONE)),  # from ACTIVE
    frozenset((DONE, GONE)),  # from STREAMING
    frozenset(),  # DONE
    frozenset(),  # GONE
)


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
        "state", "resp_chunked", "close_after", "head_out",
        "started", "sent_at", "replayed", "deadline", "dl_timer",
    )  # fmt: skip

    def __init__(
        self,
        conn: ClientPort,
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
        # Telemetry stamps (perf_counter: uvloop's loop.time() is cached per iteration, 1 ms steps).
        self.started = 0.0  # when it reached the dispatcher; 0: answered by the router itself
        self.sent_at = 0.0  # when it was last written to a replica (tracing: queue vs replica time)
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
        self.state = WAITING  # see the diagram above; changed by _to() only
        self.resp_chunked = False
        self.close_after = not keep_alive
        self.head_out: bytes | None = None  # answer head not yet written (goes with the body)
        self.replayed = False  # sent again once on a fresh connection (see up_lost)
        # The caller's deadline (loop time; 0.0: none) and its timer while on a replica.
        self.deadline = 0.0
        self.dl_timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        state = STATE_NAMES[self.state]
        return f"<Cycle {self.method.decode()} {self.target.decode()} {state} replica={self.assigned}>"

    def _to(self, state: int) -> None:
        """A state change, checked against the table; a move the diagram does not have is a
        bug. The three moves of every scored request (WAITING -> ACTIVE in begin, ACTIVE ->
        STREAMING in up_head, STREAMING -> DONE in up_end) assign directly, each right after
        the check that makes it legal: a call costs ~2% of the router's CPU per request."""
        if state not in _NEXT[self.state]:
            raise RuntimeError(f"{self!r}: no transition {STATE_NAMES[self.state]} -> {STATE_NAMES[state]}")
        self.state = state

    @property
    def answered(self) -> bool:
        """The client has its whole answer, or will get none."""
        return self.state >= DONE

    # -- client side -------------------------------------------------------------------

    def begin(self) -> None:
        """Now first in line on its connection: answer, or ask the dispatcher for a replica."""
        if self.state != WAITING:  # begun already, or answered (too large) / gone before its turn
            return
        self.state = ACTIVE  # WAITING -> ACTIVE (checked just above; hot path: no _to call)
        if self.canned is not None:
            self.answer(self.canned)
            return
        svc = self.svc
        assert svc is not None
        if svc.removed:
            self.answer(C_404)
            return
        if svc.c503_failed is not None:
            self.answer(svc.c503_failed)
            return
        if self.expect and not self.body_done:
            self.conn.transport.write(CONTINUE)
        now = self.arrived = self.router.loop.time()
        self.started = perf_counter()
        d = svc.dispatch
        action = d.arrive(self, now, self.deadline or None)
        if action is None:  # queued
            # A plain request queued at the tail (no caller's deadline, no model: nothing in
            # dispatch's next_wakeup but its queue deadline, now + max_wait_s or later) needs
            # no new timer when one is due by then; otherwise the router works it out.
            if self.deadline or self.__class__ is not Cycle or svc.timer is None or svc.timer_at > now + d.max_wait_s:
                self.router.arm(svc)
        elif action.__class__ is Send:
            self.assign(action.replica)
        elif action.__class__ is Reject:
            self.reject()
        else:
            self.expired()

    def body(self, data: bytes) -> None:
        n = len(data)
        self.body_bytes += n
        if self.state >= DONE:
            return  # answered early: drop the rest of the body
        svc = self.svc
        if svc is not None and self.body_bytes > svc.route.max_body_bytes and self.canned is None:
            self.too_large()
            return
        up = self.up
        if up is not None:
            if self.chunked:
                up.writelines([chunk_size(n), data, b"\r\n"])
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
                self.conn.gate.pause(WAIT)

    def body_end(self) -> None:
        self.body_done = True
        if self.state >= DONE:
            return
        up = self.up
        if up is not None and not self.body_sent:
            if self.chunked:
                up.write(LAST_CHUNK)
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

    def refuse(self, canned: Canned) -> None:
        """Its body turned out malformed (bad chunk framing...): no replica may score it; the
        client gets ``canned`` in its turn, then the connection closes."""
        self.canned = canned
        self.close_after = True
        self.chunks = []
        self.kept = False
        if self.state >= DONE:
            return
        if self.up is not None and not self.body_sent:
            self.aborting = True  # the replica never sees a complete request
            self.up.abort()
        elif self.svc is not None and self.assigned is None:
            self.svc.dispatch.cancel(self)
        if self.state == ACTIVE and self.conn.cycles and self.conn.cycles[0] is self:
            self.answer(canned)

    def client_gone(self) -> None:
        if self.state >= DONE:
            return
        streaming = self.state == STREAMING
        self._to(GONE)
        svc = self.svc
        if svc is not None and self.assigned is None:
            if svc.dispatch.cancel(self):  # queued: leave the queue now, never sent
                svc.metrics.drop("client_gone")
        elif self.up is not None and not self.body_sent:
            self.aborting = True  # a half-sent request can't be scored: let the replica go
            self.up.abort()
        elif self.up is not None and streaming and self.resp_chunked:
            self.aborting = True  # a stream may never end: cut it, the replica ends its generator
            self.up.abort()
        elif self.up is not None:
            self.up.resume_reading()  # nobody reads the answer now: drain it, never stall
        # A request fully sent stays on its replica until it answers (the slot stays held);
        # one still connecting is let go by _connect.

    def answer(self, canned: Canned) -> None:
        """Answer with a precomputed response (first in line only)."""
        if self.state >= DONE:
            return
        self._to(DONE)
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
        """Dispatch said: no capacity before the deadline (or the service failed meanwhile)."""
        svc = self.svc
        assert svc is not None
        d = svc.dispatch
        if svc.c503_failed is None and d.cold_wait_s and d.cold:
            self.answer(cold_503(svc.route.name, d.max_wait_s + d.cold_wait_s))
            return
        self.answer(svc.c503_failed or svc.c503)

    def expired(self) -> None:
        """The caller's deadline passed before the request was sent: 504 now, never sent."""
        svc = self.svc
        assert svc is not None
        svc.metrics.drop("deadline")
        self.answer(C_504_QUEUED)

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
        conn = self.router.pool.take(addr[1], self.router.loop.time())
        if conn is not None:
            self._send(conn, addr[2])
        else:
            self.router.spawn(self._connect(addr[1], addr[2]))

    async def _connect(self, key: tuple[str, int], host: bytes) -> None:
        try:
            conn = await self.router.pool.connect(key)
        except OSError as exc:
            if self.replayed:
                # The replica is gone, perhaps because of this very request (it may have read
                # part of it): it goes to no other replica. Reported, answered 502.
                svc = self.svc
                assert svc is not None
                if not self.router.stopping:
                    self.router.replica_failed(svc, self.assigned or "?", f"gone after a reset ({exc})")
                self._release()
                if self.state < DONE:
                    self.answer(svc.c502)
                return
            self._release(refused=f"connect failed: {exc}")  # nothing sent: another replica
            return
        except asyncio.CancelledError:
            self._release()  # router stopping
            raise
        if self.state >= DONE or self.canned is not None:  # the client left, or the body was refused
            self.router.pool.put(conn, self.router.loop.time())
            self._release()
            if self.state < DONE and self.conn.cycles and self.conn.cycles[0] is self:
                self.answer(self.canned)
            return
        if self.deadline and self.router.loop.time() >= self.deadline:  # passed while connecting
            self.router.pool.put(conn, self.router.loop.time())
            self._release()
            self.expired()
            return
        self._send(conn, host)

    def _send(self, up: UpstreamConn, host: bytes) -> None:
        """Write the request (head and the body so far) on ``up``; the rest streams in body()."""
        try:
            svc = self.svc
            assert svc is not None
            loop = self.router.loop
            self.up = up
            self.body_sent = False
            self.busy_seen = False
            self.aborting = False
            up.exchange = self  # up.attach(self), inline
            up.answer_began = False
            if self.chunked:
                framing = _TE_CHUNKED
            elif self.length >= 0:
                framing = _LENGTH % self.length
            elif self.method == b"POST":
                framing = _LENGTH % 0
            else:
                framing = b""
            parts = [self.method, b" ", self.target, b" HTTP/1.1\r\n", host]  # host: the replica's head lines
            parts += self.fields
            if self.deadline:
                left = self.deadline - loop.time()
                parts.append(DEADLINE_LINE % max(1, int(left * 1000)))
            parts += (self.rids, framing, b"\r\n")
            if self.chunks:
                if self.chunked:
                    for c in self.chunks:
                        parts += (chunk_size(len(c)), c, b"\r\n")
                else:
                    parts += self.chunks
                self.buffered = 0
                if not self.kept:
                    self.chunks = []
            if self.body_done:
                if self.chunked:
                    parts.append(LAST_CHUNK)
                self.body_sent = True
            up.transport.write(b"".join(parts))  # type: ignore[union-attr]  # (taken or just connected: open)
            client = self.conn
            if client.gate.reasons & WAIT:
                client.gate.resume(WAIT)
            if client.write_paused:
                up.pause_reading()
            self.sent_at = perf_counter()
            if self.deadline:
                # Its deadline comes before the scoring timeout would (it is at most arrival +
                # scoring_timeout_ms): a timer of its own instead of the service's sent-order one.
                self.dl_timer = loop.call_at(self.deadline, self.deadline_passed)
            else:
                now = loop.time()
                svc.sending[self] = now  # the scoring timeout runs from here (Router._on_deadline)
                if svc.deadline_timer is None:
                    self.router.arm_deadline(svc, now + svc.route.timeout_s)
        except Exception:
            # A bug or a transport in a state we did not expect: the slot must not leak.
            log.exception("router bug while sending a request to replica %s; answering 502", self.assigned)
            self.aborting = True
            self._end_exchange()
            up.abort()
            self._release()
            if self.state < DONE and self.svc is not None:
                self.close_after = True
                self.answer(self.svc.c502)

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

    def deadline_passed(self) -> None:
        """The caller's deadline passed while the replica works on the request: 504 now; the
        slot stays held until the replica answers (as with the scoring timeout)."""
        self.dl_timer = None
        self.answer(C_504_DEADLINE)
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
        if self.state >= DONE or router.stopping:
            actions = d.finish(replica, now)
        elif busy:
            actions = d.busy(replica, self, now, self.arrived, self.deadline or None)
        elif refused is not None:
            actions = d.refused(replica, self, now, self.arrived, self.deadline or None)
        else:
            actions = d.finish(replica, now)
        router.apply(svc, actions)
        if svc.drains:
            router.check_drains(svc)

    def _end_exchange(self) -> None:
        if self.svc is not None:
            self.svc.sending.pop(self, None)
        if self.dl_timer is not None:
            self.dl_timer.cancel()
            self.dl_timer = None
        up = self.up
        if up is not None:
            if up.exchange is self:
                up.detach()
            self.up = None
            gate = self.conn.gate
            if gate.reasons & UPLOAD:
                gate.resume(UPLOAD)

    # -- upstream events (called by UpstreamConn) ---------------------------------------

    def up_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        if status == 503:
            for name, value in headers:
                if name.lower() == BUSY_HEADER and value.strip() == b"1":
                    self.busy_seen = True
                    return  # its body is dropped; up_end decides what next
        svc = self.svc
        assert svc is not None
        sent = svc.sending.pop(self, None)
        self.chunks = []
        self.kept = False
        if self.dl_timer is not None:
            self.dl_timer.cancel()
            self.dl_timer = None
            if self.state < DONE and self.router.loop.time() >= self.deadline:
                self.deadline_passed()  # late: the timer was due but had not run yet
                return
        if self.state >= DONE:
            return  # 504 already sent, or the client left: the answer is read and dropped
        if sent is not None and self.router.loop.time() - sent >= svc.route.timeout_s:
            # Late: the deadline passed but its timer had not run yet (the loop runs I/O
            # callbacks before due timers). A replica with the same scoring timeout answers
            # its own "timeout" now; the client gets the router's 504 either way.
            self.timed_out()
            return
        self.state = STREAMING  # ACTIVE -> STREAMING (up_head runs only for a request sent: ACTIVE)
        self.status = status
        conn = self.conn
        out = [status_line(status, reason)]
        has_length = False
        skip = RESP_SKIP
        for name, value in headers:
            n = name.lower()
            if n in skip:
                continue
            if n == b"content-length":
                has_length = True
            out += (name, b": ", value, b"\r\n")  # one join below (no bytes per line)
        out.append(self.rids)
        if not has_length:
            framing = body_framing(status, False, conn.http11)
            if framing == CHUNKED:
                out.append(_TE_CHUNKED)
                self.resp_chunked = True
            elif framing == UNTIL_CLOSE:
                self.close_after = True
        if self.close_after:
            out.append(_CLOSE)
        out.append(b"\r\n")
        # Written with the first body bytes, or by up_flush at the end of this read.
        self.head_out = b"".join(out)

    def up_body(self, data: bytes) -> None:
        if self.state == STREAMING:
            head = self.head_out or b""
            self.head_out = None
            if self.resp_chunked:
                self.conn.transport.writelines([head, chunk_size(len(data)), data, b"\r\n"])
            elif head:
                self.conn.transport.writelines([head, data])
            else:
                self.conn.transport.write(data)

    def up_flush(self) -> None:
        """End of one read from the replica: the head must not wait for more."""
        if self.head_out is not None:
            head, self.head_out = self.head_out, None
            if self.state == STREAMING:
                self.conn.transport.write(head)

    def up_end(self, keep_alive: bool) -> None:
        up = self.up
        assert up is not None
        reusable = keep_alive and self.body_sent
        self._end_exchange()
        if reusable:
            self.router.pool.put(up, self.router.loop.time())
        else:
            up.close()
        if self.busy_seen:
            if self.kept and self.state < DONE:
                self._release(busy=True)  # back to the head of the queue, elsewhere or later
                return
            self._release()
            # The body is too big to replay (or nobody waits for it): our own 503.
            self.answer(self.svc.c503)  # type: ignore[union-attr]
            return
        self._release()
        if self.state == STREAMING:
            head = self.head_out or b""
            self.head_out = None
            if self.resp_chunked:
                self.conn.transport.write(head + LAST_CHUNK)
            elif head:
                self.conn.transport.write(head)
            self._close_if_body_left()
            self.state = DONE  # STREAMING -> DONE (checked above; hot path: no _to call)
            self.conn.answered(self)

    def up_lost(self, exc: BaseException | None) -> None:
        if self.up is None:
            return
        svc = self.svc
        assert svc is not None
        if self._replayable(exc):
            # A pooled connection reset before any byte of answer: the replica closed it (the
            # keep-alive race) or died with the request unread (a socket closed with unread
            # data answers RST; one that read it all and then died closes with FIN, which is
            # not retried). Send it again, once, on a new connection to the same replica; if
            # that is refused the replica is gone and the client gets 502 (see _connect).
            assert self.assigned is not None
            addr = svc.addresses.get(self.assigned)
            if addr is not None:
                self.replayed = True
                log.info(
                    "service %s: pooled connection to replica %s was reset before answering (%s); "
                    "sending the request again on a new connection",
                    svc.route.name,
                    self.assigned,
                    exc,
                )
                self._end_exchange()
                self.router.spawn(self._connect(addr[1], addr[2]))
                return
        failed = not self.aborting and not self.router.stopping
        if failed:  # reported before the slot is freed, so no waiter is sent there meanwhile
            why = f"connection lost mid-request: {exc or 'closed by the replica'}"
            if self.up.reused:  # the keep-alive race (replica closed an idle connection) looks so
                why += " (on a reused keep-alive connection)"
            self.router.replica_failed(svc, self.assigned or "?", why)
        self._release()
        if not failed:
            return
        if self.state == STREAMING:
            # Head already forwarded: the only honest signal left is a cut connection.
            self._to(GONE)
            self.conn.transport.abort()
        else:
            self.answer(svc.c502)

    def _replayable(self, exc: BaseException | None) -> bool:
        up = self.up
        return (
            isinstance(exc, (ConnectionResetError, BrokenPipeError))
            and up is not None
            and up.reused
            and not up.answer_began
            and not self.replayed
            and not self.aborting
            and self.state < DONE
            and not self.busy_seen
            and self.kept  # the body so far is held (the rest, if any, follows on the new connection)
            and not self.router.stopping
        )

    def up_pause_writing(self) -> None:
        self.conn.gate.pause(UPLOAD)

    def up_resume_writing(self) -> None:
        self.conn.gate.resume(UPLOAD)
