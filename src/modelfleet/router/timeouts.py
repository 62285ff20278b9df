"""The router's connection timeouts: one sweep per tick over the open connections.

No timer and no clock read per request: each connection counts what happens on it (``seq``,
request heads begun; ``drained``, writes the client took) and the sweep, given the time
since the last one, adds up how long each connection has gone without progress:

- header timeout: a head begun (or a new connection's first) not complete in time -> 408;
- keep-alive timeout: a connection that owes nothing and sends nothing -> closed;
- send timeout: a client whose connection stays paused for writing -> cut.

Neither of the first two runs while the router owes the client an answer. The values and
why they are what they are: ``proxy.Router``'s docstring.
"""

from __future__ import annotations

from collections.abc import Iterable, Sized
from typing import Protocol, TypeVar

from modelfleet.errors import ConfigError

__all__ = ["ConnectionTimeouts", "Swept"]


class Swept(Protocol):
    """What the sweep reads and keeps on a connection (``client.ClientConnection``)."""

    drained_seen: int
    stalled: float  # seconds paused for writing with ``drained`` unchanged
    seen: int
    quiet: float  # seconds owing nothing with ``seq`` unchanged

    @property
    def write_paused(self) -> bool: ...
    @property
    def drained(self) -> int: ...  # resume_writing calls
    @property
    def cycles(self) -> Sized: ...  # requests not answered yet
    @property
    def seq(self) -> int: ...  # request heads begun
    @property
    def in_head(self) -> bool: ...


C = TypeVar("C", bound=Swept)


class ConnectionTimeouts:
    """The three timeouts, checked once; ``tick_s`` is how often to sweep (at most 1 s and at
    most half of the shortest timeout)."""

    __slots__ = ("header_s", "keep_alive_s", "send_s", "tick_s")

    def __init__(self, header_timeout_s: float, keep_alive_timeout_s: float, send_timeout_s: float) -> None:
        timeouts = {
            "header_timeout_s": header_timeout_s,
            "keep_alive_timeout_s": keep_alive_timeout_s,
            "send_timeout_s": send_timeout_s,
        }
        for label, value in timeouts.items():
            if not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{label} must be a number of seconds > 0 (got {value!r})")
        self.header_s = float(header_timeout_s)
        self.keep_alive_s = float(keep_alive_timeout_s)
        self.send_s = float(send_timeout_s)
        self.tick_s = min(1.0, *(float(t) / 2 for t in timeouts.values()))

    def sweep(self, connections: Iterable[C], elapsed: float) -> tuple[list[C], list[C]]:
        """``elapsed`` seconds passed since the last sweep: the connections whose header or
        keep-alive timeout passed (``expired``), and those whose send timeout passed
        (``stalled``)."""
        expired: list[C] = []
        stalled: list[C] = []
        for conn in connections:
            if conn.write_paused:
                if conn.drained != conn.drained_seen:
                    conn.drained_seen = conn.drained
                    conn.stalled = 0.0
                else:
                    conn.stalled += elapsed
                    if conn.stalled >= self.send_s:
                        stalled.append(conn)
                        continue
            if conn.cycles or conn.seq != conn.seen:
                conn.seen = conn.seq
                conn.quiet = 0.0
                continue
            conn.quiet += elapsed
            head = conn.in_head or conn.seq == 0
            if conn.quiet >= (self.header_s if head else self.keep_alive_s):
                expired.append(conn)
        return expired, stalled
