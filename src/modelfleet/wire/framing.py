"""How an answer says where its body ends, and the chunked encoding, for both servers.

An answer with a known length carries Content-Length; one without (a stream, or a replica's
answer forwarded as it comes) is chunked for an HTTP/1.1 client and ends with the connection
for an HTTP/1.0 one; 1xx, 204 and 304 answers have no body (RFC 9112 section 6.3). The
``Connection`` line says whether the connection stays open: ``close`` when it will not, and
``keep-alive`` only to an HTTP/1.0 client that asked for it (for 1.1 it is the default).

Header names are case-insensitive; each server keeps the casing its clients have always seen:
the replica gunicorn's (``TITLE``: v1 parity), the router lower case (``LOWER``).
"""

from __future__ import annotations

__all__ = [
    "CHUNKED",
    "CONTINUE",
    "LAST_CHUNK",
    "LENGTH",
    "LOWER",
    "NO_BODY",
    "TITLE",
    "UNTIL_CLOSE",
    "Casing",
    "body_framing",
    "chunk",
    "chunk_size",
    "connection",
]

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"

# How the body of an answer ends (``body_framing``).
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = range(4)


class Casing:
    """The framing header lines in one casing."""

    __slots__ = ("length", "chunked", "close", "keep_alive")

    def __init__(self, length: bytes, chunked: bytes, close: bytes, keep_alive: bytes) -> None:
        self.length = length  # a %d format
        self.chunked = chunked
        self.close = close
        self.keep_alive = keep_alive

    def content_length(self, n: int) -> bytes:
        return self.length % n


TITLE = Casing(
    b"Content-Length: %d\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive\r\n",
)
LOWER = Casing(
    b"content-length: %d\r\n",
    b"transfer-encoding: chunked\r\n",
    b"connection: close\r\n",
    b"connection: keep-alive\r\n",
)


def body_framing(status: int, has_length: bool, http11: bool) -> int:
    """``NO_BODY``, ``LENGTH``, ``CHUNKED`` or ``UNTIL_CLOSE`` for an answer to a client
    speaking HTTP/1.1 (``http11``) or 1.0; ``UNTIL_CLOSE`` means the connection must close."""
    if status < 200 or status == 204 or status == 304:
        return NO_BODY
    if has_length:
        return LENGTH
    return CHUNKED if http11 else UNTIL_CLOSE


def connection(casing: Casing, close: bool, http10_keep_alive: bool = False) -> bytes:
    """The ``Connection`` line of an answer (empty when the default holds)."""
    if close:
        return casing.close
    return casing.keep_alive if http10_keep_alive else b""


def chunk_size(n: int) -> bytes:
    """The size line before ``n`` bytes of chunked body (the data and CRLF follow)."""
    return b"%x\r\n" % n


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk; never call with b"" (an empty chunk ends the body: LAST_CHUNK)."""
    return b"%x\r\n%b\r\n" % (len(data), data)
