"""What a request's ``Cycle`` needs from the connection and the router it lives in, and what
a ``client.ClientConnection`` needs from the router, as protocols, so that ``cycle`` and
``client`` import neither ``proxy`` nor anything above them (the modules of this package import
one another one way only: routes/dispatch/upstream/auth/ids <- refusals/ports <- cycle <-
client <- proxy). Also the client socket's read gate, shared by the cycles of one connection.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from modelfleet.router.auth import AuthFailures
from modelfleet.router.dispatch import Action
from modelfleet.router.ids import RequestIds
from modelfleet.router.refusals import Refusals
from modelfleet.router.routes import Canned, ServiceState
from modelfleet.router.upstream import Pool
from modelfleet.telemetry.counters import ServiceMetrics

if TYPE_CHECKING:
    from modelfleet.telemetry.tracing import Tracer

__all__ = ["DRAIN", "PENALTY", "PIPE", "UPLOAD", "WAIT", "ClientPort", "FrontPort", "ReadGate", "RouterPort"]

WAIT, UPLOAD, PIPE, DRAIN, PENALTY = 1, 2, 4, 8, 16  # why a client's socket is not read


class ReadGate:
    """Backpressure on the client socket: reads stop while any reason holds (waiting for a
    replica with a body buffered, replica's socket full, an earlier request unanswered, the
    client not reading its answers, a flood of bad credentials being slowed down)."""

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


class RouterPort(Protocol):
    """The router as a cycle sees it (``proxy.Router``)."""

    loop: asyncio.AbstractEventLoop
    pool: Pool
    stopping: bool

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...
    def arm(self, svc: ServiceState) -> None: ...
    def arm_deadline(self, svc: ServiceState, when: float) -> None: ...
    def apply(self, svc: ServiceState, actions: Sequence[Action]) -> None: ...
    def replica_failed(self, svc: ServiceState, replica_id: str, why: str) -> None: ...
    def check_drains(self, svc: ServiceState) -> None: ...


class FrontPort(RouterPort, Protocol):
    """The router as a client connection sees it (``proxy.Router``): settings read per
    request, the routing table, the clocks' last readings, and where answers are counted."""

    refusals: Refusals
    bad_auth_allowance: int
    bad_auth_pause_s: float
    access_log: bool
    services: dict[bytes, ServiceState]
    ids: RequestIds
    wall_now: float  # epoch seconds, refreshed every tick
    date_line: bytes  # "date: ...", refreshed every second
    auth_failures: AuthFailures
    unrouted: ServiceMetrics
    tracer: Tracer | None
    connections: set[Any]


class ClientPort(Protocol):
    """A client connection as a cycle sees it (``client.ClientConnection``). ``cycles`` holds
    the connection's cycles in arrival order ([0] is being served)."""

    @property
    def router(self) -> RouterPort: ...

    transport: asyncio.Transport
    gate: ReadGate
    cycles: deque[Any]
    write_paused: bool
    http11: bool

    def answered(self, cycle: Any) -> None: ...
    def write_canned(self, canned: Canned, rids: bytes, close: bool) -> None: ...


Clock = Callable[[], float]
