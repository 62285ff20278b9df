"""Keep-alive connections from the router to replicas (httpcore's pool/connection split).

``UpstreamConn`` is one TCP connection to one replica. It parses responses with httptools and
hands every event to the ``Exchange`` currently attached (one request at a time: no
pipelining towards replicas), including flow-control events of its own transport. When no
exchange is attached the connection sits idle in the ``Pool``; if the replica closes it or
sends anything then, it is dropped from the pool at once, so a later request does not pick
a dead connection.

``Pool`` keeps idle connections per (host, port) and opens new ones; the caller translates
``OSError`` from ``connect`` (connection refused, timeout) into "try another replica".
"""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol

import httptools

__all__ = ["Exchange", "Pool", "UpstreamConn"]


class Exchange(Protocol):
    """What an ``UpstreamConn`` reports to while a request is on it (``proxy.Cycle``)."""

    def up_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None: ...

    def up_body(self, data: bytes) -> None: ...
    def up_flush(self) -> None: ...
    def up_end(self, keep_alive: bool) -> None: ...
    def up_lost(self, exc: BaseException | None) -> None: ...
    def up_pause_writing(self) -> None: ...
    def up_resume_writing(self) -> None: ...


class BadAnswer(Exception):
    """The replica sent bytes that are not an HTTP/1.1 response."""


class UpstreamConn(asyncio.Protocol):
    def __init__(self, pool: Pool, key: tuple[str, int]) -> None:
        # Lives with the connection.
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False  # served a request before (for logs: stale keep-alive vs refusal)
        self.read_paused = False  # paused because the client could not take the answer fast enough
        self.idle_since = 0.0  # when it was last put back in the pool (the pool's clock)
        self.answer_began = False  # a byte of the current exchange's answer has arrived
        # Lives with one request/response on it.
        self.exchange: Exchange | None = None
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_message = False

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:
            # Nothing was asked: a replica talking out of turn is not trusted with the next one.
            self.close()
            return
        ex = self.exchange
        self.answer_began = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.close()
            self._lost(BadAnswer(str(exc)))
            return
        if ex is self.exchange:
            ex.up_flush()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.exchange is not None and self._in_message and self.parser.get_status_code() and not self._framed():
            # A response without Content-Length or chunking ends when the connection does.
            ex = self.exchange
            self._in_message = False
            ex.up_end(False)
            return
        self._lost(exc)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.up_pause_writing()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.up_resume_writing()

    def _framed(self) -> bool:
        """The answer being read says where it ends (Content-Length or chunked)."""
        for name, value in self._headers:
            n = name.lower()
            if n == b"content-length" or (n == b"transfer-encoding" and b"chunked" in value.lower()):
                return True
        return False

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reason = b""
        self._headers = []
        self._in_message = True

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        # The framing headers are looked at only if the connection closes mid-answer
        # (``_framed``): scanning them here for every answer cost about 1 µs.
        ex = self.exchange
        if ex is not None:
            ex.up_head(self.parser.get_status_code(), self._reason, self._headers)

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            ex.up_body(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        ex = self.exchange
        if ex is not None:
            ex.up_end(self.parser.should_keep_alive())

    # -- used by the router ------------------------------------------------------------

    def attach(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.answer_began = False

    def detach(self) -> None:
        self.exchange = None

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        assert self.transport is not None
        self.transport.writelines(parts)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def _lost(self, exc: BaseException | None) -> None:
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            ex.up_lost(exc)


class Pool:
    """Idle keep-alive connections per replica address; opens new ones on demand.

    A connection idle for more than ``max_idle_s`` is closed instead of reused. Servers close
    idle connections on their own schedule (gunicorn after 2 s, uvicorn 5 s, the modelfleet
    replica 300 s); one that closes just as a request goes out on it loses that request
    with no answer byte, which the router can only answer with 502 (replaying a scoring
    request that may have run is not safe). Reusing only connections idle for less than
    the shortest common server timeout closes that race; a new loopback connection costs
    about 0.1 ms, and only to a service that gets less than one request per ``max_idle_s``.
    """

    def __init__(
        self, *, max_idle_per_replica: int = 64, connect_timeout_s: float = 5.0, max_idle_s: float = 1.5
    ) -> None:
        self._idle: dict[tuple[str, int], list[UpstreamConn]] = {}
        self.max_idle = max_idle_per_replica
        self.connect_timeout_s = connect_timeout_s
        self.max_idle_s = max_idle_s
        self._all: set[UpstreamConn] = set()  # every open connection, for stop()

    def take(self, key: tuple[str, int], now: float) -> UpstreamConn | None:
        """An idle connection to ``key`` or ``None``; the caller owns it until ``put``/``close``.
        ``now`` is the caller's monotonic clock, the one it passed to ``put``."""
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()  # the most recently used: the others are older still
            if now - conn.idle_since > self.max_idle_s:
                for stale in (conn, *idle):
                    stale.close()
                idle.clear()
                return None
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    async def connect(self, key: tuple[str, int]) -> UpstreamConn:
        """A new connection to ``key`` (host, port), or to the Unix socket ``key[0]`` when the
        port is -1; raises ``OSError`` when refused or too slow."""
        loop = asyncio.get_running_loop()
        unix = key[1] < 0
        try:
            if unix:
                connecting = loop.create_unix_connection(lambda: UpstreamConn(self, key), key[0])
            else:
                connecting = loop.create_connection(lambda: UpstreamConn(self, key), key[0], key[1])
            _, conn = await asyncio.wait_for(connecting, self.connect_timeout_s)
        except asyncio.TimeoutError as exc:
            where = key[0] if unix else f"{key[0]}:{key[1]}"
            raise OSError(f"connect to {where} timed out after {self.connect_timeout_s} s") from exc
        sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        if sock is not None and not unix:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._all.add(conn)
        return conn

    def put(self, conn: UpstreamConn, now: float) -> None:
        """Give back a connection whose last response completed and may be reused."""
        conn.exchange = None
        conn.idle_since = now
        if conn.closed:
            return
        conn.resume_reading()  # an idle connection must be read, to notice when it closes
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle:
            conn.close()
            return
        idle.append(conn)

    def forget(self, conn: UpstreamConn) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def close_idle(self, key: tuple[str, int]) -> None:
        for conn in self._idle.pop(key, []):
            conn.close()

    def close_all(self) -> None:
        self._idle.clear()
        for conn in list(self._all):
            conn.abort()

    def idle_count(self, key: tuple[str, int]) -> int:
        return len(self._idle.get(key, ()))
