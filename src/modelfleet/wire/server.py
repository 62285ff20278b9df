"""The server side of HTTP/1.1 on httptools: one request head at a time, held to limits.

``ServerProtocol`` is the base of both servers' connections (``router.client.ClientConnection``,
``replica.protocol.HttpProtocol``). It owns the parser and the head being read (URL, header
list), holds the head to ``HeadLimits`` and sorts the parser's failures; the subclass answers.

Limits. A request line longer than ``line``, more than ``fields`` header fields, or one field
(``name: value\\r\\n``) longer than ``field_size`` is refused in the parser callback that sees
it (without a ``field_size``, as the router has none, a field costs only the count). The whole
head (URL and fields) is bounded by ``head_bytes`` twice: while it arrives (httptools buffers
an unfinished header line without calling back, so reads that fall wholly inside one head are
added up) and once complete (``head_fits``: measured only when the head
spanned reads or came in a read larger than the limit, so a head in one small read costs
nothing). A refusal calls the subclass's ``refuse_head(kind)`` and stops the parser; nothing
more is parsed on that connection (``refused``).

Parse errors (``classify``): request smuggling (Content-Length with Transfer-Encoding, two
Content-Lengths: llhttp's own words), a protocol upgrade (never spoken here), and anything
else malformed; the subclass decides the answer (``parse_failed``). An exception raised by a
subclass's callback is ``callback_failed``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httptools

__all__ = [
    "FIELD_TOO_LARGE",
    "HEAD_TOO_LARGE",
    "LINE_TOO_LONG",
    "MALFORMED",
    "SMUGGLING",
    "TOO_MANY_FIELDS",
    "UPGRADE",
    "HeadLimits",
    "Refused",
    "ServerProtocol",
    "classify",
    "parser_reason",
]

# Why a request is refused before it is handled; each server words its own answer.
MALFORMED, SMUGGLING, UPGRADE, LINE_TOO_LONG, TOO_MANY_FIELDS, FIELD_TOO_LARGE, HEAD_TOO_LARGE = range(7)


def classify(exc: Exception) -> int:
    """``SMUGGLING``, ``UPGRADE`` or ``MALFORMED`` for an exception from ``feed_data``."""
    if isinstance(exc, httptools.HttpParserUpgrade):
        return UPGRADE
    why = str(exc)  # llhttp's words for the two framings together, or twice
    if "can't be present with" in why or "Duplicate Content-Length" in why:
        return SMUGGLING
    return MALFORMED


def parser_reason(exc: Exception) -> str:
    """What the parser said (fixed strings of llhttp's, never the input)."""
    return str(exc).strip() or type(exc).__name__


class Refused(Exception):
    """Raised inside a parser callback to stop parsing; the refusal is already arranged."""


class HeadLimits:
    """The sizes a request head is held to (``None``: no limit of that kind of its own; the
    whole head's covers it)."""

    __slots__ = ("line", "fields", "field_size", "head_bytes", "url_budget")

    def __init__(self, *, head_bytes: int, fields: int, field_size: int | None = None, line: int | None = None) -> None:
        sizes = {"head_bytes": head_bytes, "fields": fields, "field_size": field_size, "line": line}
        for label, value in sizes.items():
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"HeadLimits {label} must be an integer >= 1 or None (got {value!r})")
        self.head_bytes = head_bytes
        self.fields = fields
        self.field_size = field_size
        self.line = line if line is not None else sys.maxsize
        # The URL length past which the request line may be too long (the longest method is
        # about 20 bytes): below it on_url needs no arithmetic.
        self.url_budget = max(0, line - 30) if line is not None else sys.maxsize

    def __repr__(self) -> str:
        return f"<HeadLimits head_bytes={self.head_bytes} fields={self.fields} field_size={self.field_size}>"


class ServerProtocol(asyncio.Protocol):
    """A client connection's parser and the request head being read (see module docstring).

    Subclasses define ``on_headers_complete`` (calling ``head_fits`` first), ``on_body`` and
    ``on_message_complete``, and the three answers below; they call ``feed`` for each read.
    """

    def __init__(self, limits: HeadLimits) -> None:
        self.limits = limits
        self.refused = False  # a refusal is arranged: nothing more is parsed
        self.seq = 0  # request heads begun on this connection (the router's timeouts watch it)
        # The limits read per callback, bound here (one attribute lookup on the hot path).
        self._url_budget = limits.url_budget
        self._max_fields = limits.fields
        self._max_field = limits.field_size or 0
        if limits.field_size is None:
            # Fields are only counted (the whole head's limit bounds each of them): bound
            # before the parser looks its callbacks up.
            self.on_header = self._count_header  # type: ignore[method-assign]
        self.parser = httptools.HttpRequestParser(self)
        # The head being read (reset by on_message_begin). ``current`` is what the subclass made
        # of it (the router's Cycle), kept until the next head begins: a failure the parser
        # reports after the message (an upgrade) still belongs to it.
        self.current: Any = None
        self.in_head = False
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self._head_raw = 0  # bytes of reads that fell wholly inside this head; -1: began in this read
        self._read_len = 0  # bytes of the read being parsed

    # -- what the subclass answers -----------------------------------------------------

    def refuse_head(self, kind: int) -> None:
        """The head is over a limit (``LINE_TOO_LONG``, ``TOO_MANY_FIELDS``,
        ``FIELD_TOO_LARGE``, ``HEAD_TOO_LARGE``): arrange the answer and set ``refused``."""
        raise NotImplementedError

    def parse_failed(self, kind: int, exc: Exception) -> None:
        """The parser refused the input (``MALFORMED``, ``SMUGGLING``) or met an upgrade."""
        raise NotImplementedError

    def callback_failed(self, exc: Exception) -> None:
        """A callback of the subclass raised (not ``Refused``)."""
        raise NotImplementedError

    # -- reading -----------------------------------------------------------------------

    def feed(self, data: bytes) -> bool:
        """Parse one read; False when parsing stopped on a refusal or an error."""
        self._read_len = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not self.refused:
                self.callback_failed(exc)
            return False
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.parse_failed(classify(exc), exc)
            return False
        if self.in_head:
            if self._head_raw < 0:
                self._head_raw = 0  # this head began in this read
            else:
                # The whole read fell inside one request head: httptools buffers an unfinished
                # header line without calling back, so bound those bytes here.
                self._head_raw += len(data)
                if self._head_raw > self.limits.head_bytes:
                    self.refuse_head(HEAD_TOO_LARGE)
                    return False
        return True

    def head_fits(self) -> bool:
        """Call first in ``on_headers_complete``: the head is over, and within the limit?"""
        self.in_head = False
        limit = self.limits.head_bytes
        # A head that came in one read no larger than the limit fits; one that spanned reads,
        # or came in a larger read, is measured.
        if (self._head_raw >= 0 or self._read_len > limit) and len(self.url) + sum(
            len(n) + len(v) for n, v in self.headers
        ) > limit:
            self.refuse_head(HEAD_TOO_LARGE)
            return False
        return True

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.current = None
        self.in_head = True
        self._head_raw = -1
        self.seq += 1

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self._url_budget:
            line = len(self.parser.get_method()) + len(self.url) + 10  # "METHOD URL HTTP/1.1"
            if line > self.limits.line:
                self.refuse_head(LINE_TOO_LONG)
                raise Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        if len(headers) >= self._max_fields:
            self.refuse_head(TOO_MANY_FIELDS)
            raise Refused
        if len(name) + len(value) + 4 > self._max_field:  # "name: value\r\n", as gunicorn counts
            self.refuse_head(FIELD_TOO_LARGE)
            raise Refused
        headers.append((name, value))

    def _count_header(self, name: bytes, value: bytes) -> None:
        """``on_header`` without a per-field limit."""
        headers = self.headers
        if len(headers) >= self._max_fields:
            self.refuse_head(TOO_MANY_FIELDS)
            raise Refused
        headers.append((name, value))
