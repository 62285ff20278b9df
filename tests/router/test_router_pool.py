"""Tier 1: the router's keep-alive pool decides what to reuse with ``now`` passed in (no
sockets, no sleeps): newest connection first, and none idle past ``max_idle_s``."""

from __future__ import annotations

import asyncio
from typing import Any

from modelfleet.router.upstream import Pool, UpstreamConn

KEY = ("127.0.0.1", 5001)


class Transport(asyncio.Transport):
    """A transport that only records being closed."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def connections(pool: Pool, n: int) -> list[tuple[UpstreamConn, Transport]]:
    out = []
    for _ in range(n):
        conn, t = UpstreamConn(pool, KEY), Transport()
        conn.connection_made(t)
        out.append((conn, t))
    return out


def test_newest_idle_connection_is_reused() -> None:
    pool = Pool(max_idle_s=1.5)
    (a, _), (b, _) = connections(pool, 2)
    pool.put(a, 0.5)
    pool.put(b, 1.0)
    took = pool.take(KEY, 1.9)
    assert took is b and b.reused  # most recently used first
    assert pool.take(KEY, 1.9) is a  # idle 1.4 s: still fresh
    assert pool.take(KEY, 1.9) is None


def test_connections_idle_past_the_limit_are_closed_not_reused() -> None:
    pool = Pool(max_idle_s=1.5)
    (a, ta), (b, tb) = connections(pool, 2)
    pool.put(a, 0.0)
    pool.put(b, 1.0)
    # At 2.6 s the newest has been idle 1.6 s: it and every older one are closed, none reused
    # (a server may be closing them right now: the stale keep-alive race).
    assert pool.take(KEY, 2.6) is None
    assert ta.closed and tb.closed
    assert pool.idle_count(KEY) == 0
    assert pool.take(KEY, 2.6) is None


def test_limit_is_inclusive_of_the_boundary() -> None:
    pool = Pool(max_idle_s=1.5)
    [(a, ta)] = connections(pool, 1)
    pool.put(a, 10.0)
    assert pool.take(KEY, 11.5) is a and not ta.closed
