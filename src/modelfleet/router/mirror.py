"""Mirroring: a copy of some of an endpoint's requests goes to a *mirror* version, its answer
discarded.

A version with ``mirror_percentile`` P > 0 (``store/endpoints.py``: never the default, no
traffic share) gets a copy of P % of the requests that the endpoint's other versions serve
(method, path and query, the headers as forwarded to the primary, the body), sent once the
primary's whole answer came from its replica. Its answer is read and dropped; its status,
latency and a hash of its body are recorded and compared with the primary's (agree: the same
status and the same body hash). The rules, in order:

1. ``wants_copy(percent, draw)``: a request is copied when its draw (``random()``, in
   ``[0, 1)``) is below ``percent / 100``, decided when its version is picked
   (``versions.EndpointState.copies``); never for a request served by a mirror (pinned to it
   with ``azureml-model-deployment``): a mirror is never mirrored, nor is a copy.
2. A copy is sent only when the mirror has a slot free *right now* and nobody waits for one
   (``Dispatch.take_free``); otherwise it is counted ``dropped`` and never sent. It holds that
   slot until its answer ends, like any request, so the mirror's own concurrency bounds it.
3. No complete body to copy (more than ``cycle.REPLAY_LIMIT`` bytes, or the replica answered
   before the client finished sending it): ``dropped``.
4. The primary's answer goes to its client unchanged and first: the copy leaves after the
   primary's last byte, and nothing it does (slow, 5xx, reset, timeout) reaches the primary's
   client or its slot. A copy is cut at the mirror's scoring timeout (an error).

The counts live on the mirror version's ``ServiceMetrics.mirror`` (``telemetry/counters``:
sent, dropped, agreed, disagreed, errors, latency); a copy sent is also one of the mirror
version's own requests (its series and ``Router.stats()`` figures count it).

A request with no mirror configured pays one attribute check (``EndpointState.mirrors``, in
``client.py``); a copied one is a ``MirrorCycle``, which hashes the primary's answer body.
"""

from __future__ import annotations

import asyncio
import logging
from hashlib import blake2b
from time import perf_counter

from modelfleet.router.cycle import Cycle
from modelfleet.router.ports import RouterPort
from modelfleet.router.routes import ServiceState
from modelfleet.router.upstream import UpstreamConn
from modelfleet.telemetry.counters import MirrorCounters
from modelfleet.wire.framing import LOWER

__all__ = ["MIRROR_HEADER", "Mirror", "MirrorCycle", "counters_of", "wants_copy"]

log = logging.getLogger("modelfleet.router")

MIRROR_HEADER = b"x-modelfleet-mirror"  # on a copy, so the mirror's replica and logs can tell
_MIRROR_LINE = MIRROR_HEADER + b": 1\r\n"
_LENGTH = LOWER.length
_PIN = b"azureml-model-deployment: "  # versions.PIN_HEADER's line, last of a request's id lines


def wants_copy(percent: float, draw: float) -> bool:
    """Rule 1: ``draw`` in ``[0, 1)``; ``percent`` 0-100 (100 copies every request, 0 none)."""
    return draw * 100.0 < percent


def counters_of(svc: ServiceState) -> MirrorCounters:
    m = svc.metrics.mirror
    if m is None:
        m = svc.metrics.mirror = MirrorCounters()
    return m


def _digest() -> blake2b:
    return blake2b(digest_size=16)


class MirrorCycle(Cycle):
    """A request whose primary answer is also hashed, and copied to ``targets`` (mirror
    versions' services) once that answer is complete."""

    __slots__ = ("model_key", "targets", "copy", "digest", "p_status")
    model_key: bytes  # set only when the request names a model (dispatch.py rule 8)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.targets: tuple[ServiceState, ...] = ()
        self.copy: bytes | None = None
        self.digest = _digest()
        self.p_status = 0

    def up_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        if self.copy is None and self.body_done and self.kept:
            self.copy = b"".join(self.chunks)  # Cycle.up_head drops the kept body
        self.p_status = status
        self.digest = _digest()  # a "busy" answer's body before it does not count
        super().up_head(status, reason, headers)

    def up_body(self, data: bytes) -> None:
        self.digest.update(data)
        super().up_body(data)

    def up_end(self, keep_alive: bool) -> None:
        busy = self.busy_seen  # put back in the queue (or answered 503 by the router): no copy
        super().up_end(keep_alive)
        if not busy:
            self.send_copies()

    def send_copies(self) -> None:
        primary = self.digest.digest()
        for target in self.targets:
            counters = counters_of(target)
            if self.copy is None:
                counters.dropped += 1  # rule 3
                continue
            Mirror(self.router, target, counters, self, primary).start()


class Mirror:
    """One copy on its way to a mirror version (an ``upstream.Exchange``)."""

    __slots__ = (
        "router", "svc", "counters", "request", "p_status", "p_digest",
        "replica", "up", "status", "digest", "started", "timer", "ended",
    )  # fmt: skip

    def __init__(
        self, router: RouterPort, svc: ServiceState, counters: MirrorCounters, primary: MirrorCycle, p_digest: bytes
    ) -> None:
        self.router = router
        self.svc = svc
        self.counters = counters
        self.p_status = primary.p_status
        self.p_digest = p_digest
        body = primary.copy or b""
        rids = primary.rids
        cut = rids.rfind(_PIN)  # the answer header line naming the primary's version: the copy names its own
        if cut >= 0:
            rids = rids[:cut] + _PIN + svc.route.name.partition(":")[2].encode() + b"\r\n"
        self.request = [
            primary.method,
            b" ",
            primary.target,
            b" HTTP/1.1\r\n",
            b"",  # the mirror replica's host line, set when sent
            *primary.fields,
            rids,
            _MIRROR_LINE,
            _LENGTH % len(body),
            b"\r\n",
            body,
        ]
        self.replica: str | None = None
        self.up: UpstreamConn | None = None
        self.status = 0
        self.digest = _digest()
        self.started = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.ended = False

    def start(self) -> None:
        """Rule 2: a free slot now, or dropped."""
        svc = self.svc
        router = self.router
        now = router.loop.time()
        send = None if svc.removed or svc.failed is not None else svc.dispatch.take_free(self, now)
        if send is None:
            self.counters.dropped += 1
            return
        self.counters.sent += 1
        self.started = perf_counter()
        self.replica = send.replica
        addr = svc.addresses.get(send.replica)
        if addr is None:
            self._finish()
            return
        self.timer = router.loop.call_later(svc.route.timeout_s, self._timed_out)
        conn = router.pool.take(addr[1], now)
        if conn is not None:
            self._send(conn, addr[2])
        else:
            router.spawn(self._connect(addr[1], addr[2]))

    async def _connect(self, key: tuple[str, int], host: bytes) -> None:
        try:
            conn = await self.router.pool.connect(key)
        except OSError:
            self._finish()
            return
        except asyncio.CancelledError:
            self._finish()
            raise
        if self.ended:  # timed out while connecting
            self.router.pool.put(conn, self.router.loop.time())
            return
        self._send(conn, host)

    def _send(self, up: UpstreamConn, host: bytes) -> None:
        self.up = up
        up.attach(self)
        self.request[4] = host
        up.write(b"".join(self.request))
        self.request = []

    def _timed_out(self) -> None:
        self.timer = None
        up, self.up = self.up, None
        if up is not None:
            up.detach()
            up.abort()
        self.status = 0
        self._finish()

    def _finish(self) -> None:
        """The copy ended (answered, lost, refused or timed out): its slot goes back, its
        outcome is counted. Exactly once."""
        if self.ended:
            return
        self.ended = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        seconds = perf_counter() - self.started
        status = self.status
        agreed = status == self.p_status and self.digest.digest() == self.p_digest
        self.counters.record(status, agreed, seconds)
        svc = self.svc
        svc.metrics.observe(status or 502, seconds)
        router = self.router
        if self.replica is not None:
            router.apply(svc, svc.dispatch.finish(self.replica, router.loop.time()))
            if svc.drains:
                router.check_drains(svc)

    # -- upstream events ---------------------------------------------------------------

    def up_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.digest = _digest()

    def up_body(self, data: bytes) -> None:
        self.digest.update(data)

    def up_flush(self) -> None:
        pass

    def up_end(self, keep_alive: bool) -> None:
        up, self.up = self.up, None
        if up is not None:
            up.detach()
            if keep_alive:
                self.router.pool.put(up, self.router.loop.time())
            else:
                up.close()
        self._finish()

    def up_lost(self, exc: BaseException | None) -> None:
        self.up = None
        self.status = 0
        self._finish()

    def up_pause_writing(self) -> None:
        pass

    def up_resume_writing(self) -> None:
        pass
