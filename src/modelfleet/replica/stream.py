"""Sending a streamed answer: the worker thread produces chunks, the event loop writes them.

A ``@rawhttp`` run() that returns ``AMLResponse(generator)`` (or a streamed Flask response) is
answered while the generator runs. The generator is the script's code, so it runs on the worker
thread that ran run(); each chunk it yields is framed (HTTP/1.1 chunked transfer encoding, or
the raw bytes for an HTTP/1.0 client, whose connection then closes) and handed to the loop,
which writes it at once: nothing is buffered to the end.

Back-pressure. ``send`` blocks the worker while the transport is paused (the client reads
slower than the script writes) or while more than ``MAX_QUEUED`` bytes are handed over but not
yet written; memory per stream is therefore bounded by the transport's high-water mark plus
that plus one chunk. A client that takes nothing for ``send_timeout_s`` is given up on: the
connection is closed and the generator ended, so it cannot hold the replica's slot.

A client that goes away (its connection is lost, or it closes its side) makes the next ``send``
return False; the caller then closes the generator, whose ``finally`` runs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Protocol

from modelfleet.wire.framing import LAST_CHUNK, chunk

MAX_QUEUED = 256 * 1024  # bytes handed to the loop and not yet given to the transport


class StreamTarget(Protocol):
    """What a stream writes to: the connection, on the loop thread."""

    writable: bool  # False while the transport is paused (read from the worker; a plain flag)

    def write_stream(self, data: bytes) -> None: ...

    def abort_stream(self) -> None: ...


class ChunkSender:
    """One streamed answer, from the worker thread's side (``send``, ``end``, ``abort``) and the
    loop's (``wake``, ``lost``)."""

    def __init__(
        self, target: StreamTarget, loop: asyncio.AbstractEventLoop, chunked: bool, send_timeout_s: float
    ) -> None:
        self.target = target
        self.loop = loop
        self.chunked = chunked
        self.send_timeout_s = send_timeout_s
        self.cond = threading.Condition()
        self.queued = 0  # guarded by cond
        self.gone = False  # the client went away or was given up on; guarded by cond
        self.timed_out = False  # given up on: it took nothing for send_timeout_s
        self.sent = 0  # chunks sent (worker thread only)

    def __repr__(self) -> str:
        return f"<ChunkSender sent={self.sent} queued={self.queued} gone={self.gone}>"

    # ---- worker thread
    def start(self, head: bytes, first: bytes | None) -> bool:
        """Send the status line and headers, with the first chunk when there is one."""
        return self._put(head + (self._frame(first) if first else b""))

    def send(self, data: bytes) -> bool:
        """Send one chunk; False when the client is gone (stop producing)."""
        if not data:
            return not self.gone  # an empty chunk would end a chunked body
        self.sent += 1
        return self._put(self._frame(data))

    def end(self) -> None:
        """The generator is exhausted: send the last chunk (HTTP/1.0: the close ends the body)."""
        if self.chunked:
            self._put(LAST_CHUNK)

    def abort(self) -> None:
        """End the answer early (the script raised mid-stream): close the connection without the
        last chunk, so the client sees an incomplete body rather than a complete wrong one."""
        with self.cond:
            self.gone = True
        self.loop.call_soon_threadsafe(self.target.abort_stream)

    def _frame(self, data: bytes) -> bytes:
        return chunk(data) if self.chunked else data

    def _put(self, data: bytes) -> bool:
        with self.cond:
            deadline = time.monotonic() + self.send_timeout_s
            while not self.gone and (not self.target.writable or self.queued > MAX_QUEUED):
                left = deadline - time.monotonic()
                if left <= 0:  # the client takes nothing: give up on it
                    self.gone = self.timed_out = True
                    self.loop.call_soon_threadsafe(self.target.abort_stream)
                    break
                self.cond.wait(min(left, 1.0))
            if self.gone:
                return False
            self.queued += len(data)
        self.loop.call_soon_threadsafe(self._write, data)
        return True

    # ---- loop thread
    def _write(self, data: bytes) -> None:
        with self.cond:
            self.queued -= len(data)
            self.cond.notify_all()
        self.target.write_stream(data)  # a no-op once the connection is closed

    def wake(self) -> None:
        """The transport can take more (resume_writing)."""
        with self.cond:
            self.cond.notify_all()

    def lost(self) -> None:
        """The client went away."""
        with self.cond:
            self.gone = True
            self.cond.notify_all()
