"""Request ids, as the v1 reference server (``azmlinfsrv``) gives them: pure, no I/O.

Rules, checked header by header against azmlinfsrv 1.5.1 (tests/router/test_request_ids.py):

- ``x-request-id``: the client's, else a new UUID4-shaped id.
- ``x-ms-request-id``: the client's, else its ``x-ms-client-request-id``, else the
  ``x-request-id`` above.
- ``x-ms-client-request-id``: the client's, else its ``x-ms-request-id``, else absent.
- an ``x-request-id`` over 100 characters: 431 with no id header; an ``x-ms-request-id`` or
  ``x-ms-client-request-id`` over 100 characters: 431 carrying only ``x-request-id``.

One deliberate difference: an empty value counts as absent (azmlinfsrv answers an empty
``x-request-id`` with no id headers at all, which leaves the answer untraceable).

The same lines go to the replica (which then computes the same three values) and back to the
client, so the replica's logs and the client's answer name the request alike.
"""

from __future__ import annotations

import itertools
import os

__all__ = ["MAX_ID_CHARS", "IdsTooLong", "RequestIds"]

MAX_ID_CHARS = 100  # azmlinfsrv's limit, in characters


class IdsTooLong:
    """An id over the limit: answer 431 with ``message``, carrying the header ``lines``."""

    __slots__ = ("message", "lines")

    def __init__(self, message: str, lines: bytes) -> None:
        self.message = message
        self.lines = lines


MSG_XID = "x-request-id must not exceed 100 characters"
MSG_MSID = "x-ms-request-id and x-ms-client-request-id must not exceed 100 characters"


def _too_long(value: bytes | None) -> bool:
    if value is None or len(value) <= MAX_ID_CHARS:
        return False  # the common case: ASCII ids are as long in bytes as in characters
    return len(value.decode("utf-8", "replace")) > MAX_ID_CHARS


class RequestIds:
    """Makes the id header lines of each request; ids it generates are UUID4-shaped, made of a
    random prefix per instance and a counter (no ``uuid4()`` call per request)."""

    def __init__(self) -> None:
        r = os.urandom(9).hex()
        self._prefix = f"{r[:8]}-{r[8:12]}-4{r[12:15]}-a{r[15:18]}-".encode()
        self._count = itertools.count(1)

    def new(self) -> bytes:
        return b"%s%012x" % (self._prefix, next(self._count))

    def fresh_lines(self) -> bytes:
        """The lines for a request that sent no id (the common case)."""
        new = b"%s%012x" % (self._prefix, next(self._count))
        return b"x-ms-request-id: " + new + b"\r\nx-request-id: " + new + b"\r\n"

    def lines(self, ms_id: bytes | None, x_id: bytes | None, client_id: bytes | None) -> bytes | IdsTooLong:
        """The request's id header lines (``x-ms-request-id`` first), or ``IdsTooLong``."""
        if ms_id is None and x_id is None and client_id is None:
            return self.fresh_lines()
        if not x_id:
            x_id = None
        if not ms_id:
            ms_id = None
        if not client_id:
            client_id = None
        if _too_long(x_id):
            return IdsTooLong(MSG_XID, b"")
        if _too_long(ms_id) or _too_long(client_id):
            return IdsTooLong(MSG_MSID, b"x-request-id: " + (x_id or self.new()) + b"\r\n")
        if x_id is None:
            x_id = self.new()
        if client_id is None:
            if ms_id is None:
                return b"x-ms-request-id: " + x_id + b"\r\nx-request-id: " + x_id + b"\r\n"
            client_id = ms_id
        elif ms_id is None:
            ms_id = client_id
        return b"x-ms-request-id: %s\r\nx-request-id: %s\r\nx-ms-client-request-id: %s\r\n" % (ms_id, x_id, client_id)
