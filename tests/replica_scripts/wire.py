"""Raw-socket helpers for the replica's wire tests: send exact bytes, read one answer, see the close.

Imported as ``replica_scripts.wire``; no test lives here.
"""

from __future__ import annotations

import http.client
import json
import socket
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


def read_answer(sock: socket.socket) -> RawAnswer:
    """Read one HTTP answer from ``sock`` and whether the server closed the connection after it."""
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    body = resp.read()
    headers = {k.lower(): v for k, v in resp.getheaders()}
    closed = False
    if resp.will_close:
        try:
            closed = sock.recv(1) == b""
        except ConnectionResetError:
            closed = True
    return RawAnswer(resp.status, headers, body, closed)


def exchange(port: int, data: bytes | Iterable[bytes], timeout: float = 10.0) -> RawAnswer:
    """Send ``data`` (in pieces when given several; a refused send stops early) and read the answer."""
    with connect(port, timeout) as sock:
        for piece in [data] if isinstance(data, bytes) else data:
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and stopped reading: its answer is still there
        return read_answer(sock)


def get(path: str = "/", headers: Iterable[tuple[str, str]] = (), method: str = "GET") -> bytes:
    """A request head with ``Host`` and the given header fields."""
    lines = [f"{method} {path} HTTP/1.1", "Host: replica", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
