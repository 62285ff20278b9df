"""The router's answers to requests the wire layer refused, built once per router.

``wire.server`` decides that a head is over a limit or that the bytes are not HTTP; this
module says what the router answers then: 400 (naming request smuggling when that was it; a
protocol upgrade is refused too, the router speaks only HTTP/1.1), 431 for a head over
``max_header_bytes`` or with more than ``max_header_fields`` fields, and 431 for a request id
over 100 characters (``ids``). Each answer closes the connection after it.
"""

from __future__ import annotations

from modelfleet.router.ids import MSG_MSID, MSG_XID
from modelfleet.router.routes import C_400, C_400_SMUGGLING, Canned, error_answer
from modelfleet.wire.server import (
    FIELD_TOO_LARGE,
    HEAD_TOO_LARGE,
    LINE_TOO_LONG,
    SMUGGLING,
    TOO_MANY_FIELDS,
    HeadLimits,
)

__all__ = ["Refusals"]


class Refusals:
    """The head limits of a router's connections and the answers that refuse them."""

    __slots__ = ("limits", "head", "ids")

    def __init__(self, max_header_bytes: int, max_header_fields: int) -> None:
        # No per-field or request-line limit of the router's own: the whole head's covers both.
        self.limits = HeadLimits(head_bytes=max_header_bytes, fields=max_header_fields)
        size = error_answer(
            431, f"the request line and headers are larger than the router's limit of {max_header_bytes} bytes"
        )
        count = error_answer(431, f"the request has more than the router's limit of {max_header_fields} header fields")
        self.head = {TOO_MANY_FIELDS: count, FIELD_TOO_LARGE: size, HEAD_TOO_LARGE: size, LINE_TOO_LONG: size}
        self.ids = {m: error_answer(431, m) for m in (MSG_XID, MSG_MSID)}

    @staticmethod
    def parse(kind: int) -> Canned:
        """The answer to bytes the parser refused (``wire.server.classify``'s kind)."""
        return C_400_SMUGGLING if kind == SMUGGLING else C_400
