"""Raw-socket helpers for the replica's wire tests: send exact bytes, read one answer, see the close.

Imported as ``replica_scripts.wire``; no test lives here.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    closed: bool  # the server closed the connection after this answer

    def json(self) -> Any:
        return json.loads(self.body)


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


class _Raw(io.RawIOBase):
    """Reads the socket with recv: unlike ``makefile``, it takes no reference that would keep
    the socket open after ``close()`` (the server would wait on a connection the test left)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = weakref.ref(sock)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        sock = self._sock()
        return sock.recv_into(buffer) if sock is not None else 0


class _Reader:
    """One buffered reader per socket, which http.client may not close: answers pipelined on one
    connection arrive in one read, and the second must not be lost with the first's buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self._file = io.BufferedReader(_Raw(sock))

    def makefile(self, mode: str) -> _Reader:
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def close(self) -> None:
        pass


_READERS: weakref.WeakKeyDictionary[socket.socket, _Reader] = weakref.WeakKeyDictionary()


def read_answer(sock: socket.socket, see_close: bool = True) -> RawAnswer:
    """Read one HTTP answer from ``sock`` and (``see_close``) whether the server closed the
    connection after it; ``closed`` is False when not looked at."""
    reader = _READERS.get(sock)
    if reader is None:
        reader = _READERS[sock] = _Reader(sock)
    resp = http.client.HTTPResponse(reader)  # type: ignore[arg-type]  # only makefile() is used
    resp.begin()
    body = resp.read()
    headers = {k.lower(): v for k, v in resp.getheaders()}
    closed = False
    if resp.will_close and see_close:
        try:
            closed = reader.read(1) == b""
        except ConnectionResetError:
            closed = True
    return RawAnswer(resp.status, headers, body, closed)


def exchange(port: int, data: bytes | Iterable[bytes], timeout: float = 10.0, see_close: bool = True) -> RawAnswer:
    """Send ``data`` (in pieces when given several; a refused send stops early) and read the answer."""
    with connect(port, timeout) as sock:
        for piece in [data] if isinstance(data, bytes) else data:
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and stopped reading: its answer is still there
        return read_answer(sock, see_close)


def get(path: str = "/", headers: Iterable[tuple[str, str]] = (), method: str = "GET") -> bytes:
    """A request head with ``Host`` and the given header fields."""
    lines = [f"{method} {path} HTTP/1.1", "Host: replica", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def established_connections(pid: int) -> int:
    """How many established TCP connections process ``pid`` holds (Linux /proc)."""
    import os

    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                count += fields[3] == "01" and fields[9] in inodes  # 01: ESTABLISHED
    return count
