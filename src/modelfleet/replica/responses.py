"""Response bytes for the replica: canned answers built once, and run() results encoded as v1 does.

Everything the v1 server answers is reproduced here byte for byte where clients can see it:
status, Content-Type, JSON body (``json.dumps`` with its default separators, so a string that
run() returns is encoded a second time, as v1 does), and the ``x-ms-*`` headers. The pieces
that vary per request (request ids, Date, Connection) are added by ``server.py``.

``encode_result`` runs on the worker thread, so that serialising a large result never blocks
the event loop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any

JSON = b"application/json"
HTML = b"text/html; charset=utf-8"

MSG_NOT_FOUND = (
    "The requested URL was not found on the server. If you entered the URL manually please check your "
    "spelling and try again."
)
MSG_NOT_ALLOWED = "The method is not allowed for the requested URL."
MSG_RUN_FAILED = "An unexpected error occurred in scoring script. Check the logs for more info."
MSG_INTERNAL = "An unexpected internal error occurred. Check the logs for more info."

# Headers run() may not set: the server owns framing and connection handling.
_HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


def status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode("latin-1"))


_STATUS_LINES = {s.value: status_line(s.value) for s in HTTPStatus}


def get_status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else status_line(status)


def header_line(name: str, value: str) -> bytes:
    # Values come from run() too; refuse CR/LF so a script cannot split the response.
    if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
        raise ValueError(f"header {name!r} contains a line break")
    return f"{name}: {value}\r\n".encode("latin-1", "replace")


def json_message(message: str) -> bytes:
    return json.dumps({"message": message}).encode()


class Reply:
    """A response without the per-request parts: status, header block and body."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: bytes, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"<Reply {self.status} {len(self.body)} bytes>"


class StreamedReply(Reply):
    """A response whose body is produced while it is sent: ``chunks`` yields bytes (run on a
    worker thread: it is the script's generator), ``close()`` ends it early (its ``finally``
    runs). ``body`` is empty; the header block has no framing header (the server adds it)."""

    __slots__ = ("chunks", "close")

    def __init__(self, status: int, headers: bytes, chunks: Iterator[bytes], close: Callable[[], None]) -> None:
        super().__init__(status, headers, b"")
        self.chunks = chunks
        self.close = close

    def __repr__(self) -> str:
        return f"<StreamedReply {self.status}>"


def json_reply(status: int, message: str, run_failed: bool = False, extra: bytes = b"") -> Reply:
    """The v1 error shape: ``{"message": ...}`` as application/json with x-ms-run-function-failed."""
    flag = b"True" if run_failed else b"False"
    headers = b"Content-Type: application/json\r\nx-ms-run-function-failed: " + flag + b"\r\n" + extra
    return Reply(status, headers, json_message(message))


def _fn_ms(elapsed_ms: float) -> bytes:
    return b"x-ms-run-fn-exec-ms: %.3f\r\n" % elapsed_ms


def encode_result(result: Any, elapsed_ms: float) -> Reply:
    """run()'s return value as the v1 server sends it.

    An AMLResponse (or anything shaped like a Flask/werkzeug Response) keeps its own status,
    headers and body (a ``StreamedReply`` when the response is streamed); any other value is
    sent as ``json.dumps(value)``. Raises TypeError or ValueError when the value cannot be
    encoded (the caller answers 500).
    """
    kind = type(result)
    if kind is list or kind is dict or kind is str or kind is int or kind is float:
        body = json.dumps(result).encode()
        head = b"Content-Type: application/json\r\nx-ms-run-function-failed: False\r\n" + _fn_ms(elapsed_ms)
        return Reply(200, head, body)
    if _is_response(result):
        return _encode_response(result, elapsed_ms)
    # v1 wraps the value in AMLResponse(value, json_str=True), which sends None as {}.
    body = b"{}" if result is None else json.dumps(result).encode()
    head = b"Content-Type: application/json\r\nx-ms-run-function-failed: False\r\n" + _fn_ms(elapsed_ms)
    return Reply(200, head, body)


def _is_response(value: Any) -> bool:
    return hasattr(value, "status_code") and hasattr(value, "headers") and callable(getattr(value, "get_data", None))


def _header_pairs(headers: Any) -> Iterable[tuple[str, str]]:
    items = headers.items() if hasattr(headers, "items") else headers
    for key, value in items:
        yield str(key), str(value)


def _encode_response(response: Any, elapsed_ms: float) -> Reply:
    status = int(response.status_code)
    streamed = bool(getattr(response, "is_streamed", False))
    body = b"" if streamed else response.get_data()
    if isinstance(body, str):
        body = body.encode("utf-8")
    lines = []
    failed_seen = False
    for name, value in _header_pairs(response.headers):
        low = name.lower()
        if low in _HOP_HEADERS:
            continue
        if low == "x-ms-run-function-failed":
            # v1 marks every 5xx that run() returns as a run() failure.
            failed_seen = True
            value = "True" if status >= 500 else value
        lines.append(header_line(name, value))
    if status >= 500 and not failed_seen:
        lines.append(b"x-ms-run-function-failed: True\r\n")
    lines.append(_fn_ms(elapsed_ms))
    if streamed:
        return StreamedReply(status, b"".join(lines), _chunks(response), _closer(response))
    return Reply(status, b"".join(lines), bytes(body))


def _chunks(response: Any) -> Iterator[bytes]:
    """The pieces of a streamed response as bytes (werkzeug's ``iter_encoded`` when it has one)."""
    encoded = getattr(response, "iter_encoded", None)
    if callable(encoded):
        return iter(encoded())
    return (item.encode("utf-8") if isinstance(item, str) else bytes(item) for item in response.response)


def _closer(response: Any) -> Callable[[], None]:
    close = getattr(response, "close", None)
    return close if callable(close) else lambda: None


class Cors:
    """CORS headers as flask-cors adds them for the reference's routes (AML_CORS_ORIGINS).

    An origin entry with regex characters is a pattern; "*" allows any origin. With an Origin
    header: a match is echoed. Without one: "*" when allowed, else the first listed origin (as
    flask-cors' always_send does). A preflight (OPTIONS with Access-Control-Request-Method GET or
    POST) also gets Allow-Methods "GET, POST" and the requested headers echoed.
    """

    _REGEX_CHARS = set("*\\]?$^[]()")

    def __init__(self, origins: tuple[str, ...]) -> None:
        self.origins = origins
        self.wildcard = "*" in origins
        self.patterns = [re.compile(".*" if o == "*" else o, re.IGNORECASE) for o in origins if self._is_regex(o)]
        self.literals = sorted(o for o in origins if not self._is_regex(o))
        self.vary = len(origins) > 1 or bool(self.patterns)

    def _is_regex(self, origin: str) -> bool:
        return not self._REGEX_CHARS.isdisjoint(origin)

    def headers(self, origin: str | None, method: str, acr_method: str | None, acr_headers: str | None) -> bytes:
        if origin:
            low = origin.lower()
            if (
                self.wildcard
                or low in (o.lower() for o in self.literals)
                or any(p.match(origin) for p in self.patterns)
            ):
                allowed = origin
            else:
                return b""
        elif self.wildcard:
            allowed = "*"
        elif self.literals:
            allowed = self.literals[0]
        else:
            return b""
        out = [header_line("Access-Control-Allow-Origin", allowed)]
        if method == "OPTIONS" and acr_method and acr_method.upper() in ("GET", "POST"):
            if acr_headers:
                out.append(header_line("Access-Control-Allow-Headers", acr_headers))
            out.append(b"Access-Control-Allow-Methods: GET, POST\r\n")
        if self.vary and allowed != "*":
            out.append(b"Vary: Origin\r\n")
        return b"".join(out)
