"""Request ids as azmlinfsrv answers them (and the CORS request headers, found in the same pass).

- ``x-request-id``: the client's, else a generated UUID; echoed.
- ``x-ms-request-id``: the client's (then it is the client id too), else the client id, else
  the request id (v1 compatibility).
- ``x-ms-client-request-id``: echoed when given (or taken from ``x-ms-request-id``).
- ``TraceId``: echoed when given.
- An id over 100 characters is a 431 with v1's message.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable

from modelfleet.replica.responses import Reply, header_line, json_reply

HEADER_LIMIT = 100  # longest request id the reference accepts

# What scan() finds, by position.
REQUEST_ID, LEGACY_ID, CLIENT_ID, TRACE_ID, ORIGIN, ACR_METHOD, ACR_HEADERS = range(7)
_INTERESTING = {
    b"x-request-id": REQUEST_ID,
    b"x-ms-request-id": LEGACY_ID,
    b"x-ms-client-request-id": CLIENT_ID,
    b"traceid": TRACE_ID,
    b"origin": ORIGIN,
    b"access-control-request-method": ACR_METHOD,
    b"access-control-request-headers": ACR_HEADERS,
}
_XID_TOO_LONG = json_reply(431, f"x-request-id must not exceed {HEADER_LIMIT} characters")
_MSID_TOO_LONG = json_reply(
    431, f"x-ms-request-id and x-ms-client-request-id must not exceed {HEADER_LIMIT} characters"
)


class RequestIds:
    """Request ids for requests that bring none: UUID-shaped, a random per-process prefix and a
    counter (a tenth of uuid4's cost; unique within the process, random across processes)."""

    def __init__(self) -> None:
        h = uuid.uuid4().hex
        self.prefix = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) % 4]}{h[17:20]}-"
        self.counter = itertools.count(int(h[20:], 16) & 0xFFFFFFFF)

    def __repr__(self) -> str:
        return f"<RequestIds prefix={self.prefix}>"

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFFFFFFFFFF:012x}"


def scan(headers: list[tuple[bytes, bytes]]) -> list[str | None]:
    """The first value of each header this module cares about, by position (``REQUEST_ID``...)."""
    found: list[str | None] = [None] * 7
    for name, value in headers:
        slot = _INTERESTING.get(name.lower())
        if slot is not None and found[slot] is None:
            found[slot] = value.decode("latin-1")
    return found


def answer_ids(found: list[str | None], new_id: Callable[[], str]) -> tuple[bytes, Reply | None]:
    """The id header lines of the answer, and the 431 to send instead when an id is too long."""
    request_id, legacy, client = found[REQUEST_ID], found[LEGACY_ID] or "", found[CLIENT_ID] or ""
    trace_id = found[TRACE_ID]
    if request_id is None:
        request_id = new_id()
    if len(request_id) > HEADER_LIMIT:
        return b"", _XID_TOO_LONG
    ids = [header_line("x-request-id", request_id)] if request_id else []
    if legacy:
        # x-ms-request-id is both the old request id and the client's id (v1 compatibility).
        if not client:
            client = legacy
    else:
        legacy = client or request_id
    if len(legacy) > HEADER_LIMIT or len(client) > HEADER_LIMIT:
        return b"".join(ids), _MSID_TOO_LONG
    if legacy:
        ids.append(header_line("x-ms-request-id", legacy))
    if client:
        ids.append(header_line("x-ms-client-request-id", client))
    if trace_id is not None:
        ids.append(header_line("TraceId", trace_id))
    return b"".join(ids), None


def request_id_of(headers: list[tuple[bytes, bytes]], ids: bytes) -> str:
    """The request's id for log lines: the client's x-request-id, else the one answered."""
    for name, value in headers:
        if name.lower() == b"x-request-id":
            return value.decode("latin-1")
    marker = b"x-request-id: "
    start = ids.find(marker)
    if start >= 0:
        return ids[start + len(marker) : ids.find(b"\r\n", start)].decode("latin-1")
    return "-"
