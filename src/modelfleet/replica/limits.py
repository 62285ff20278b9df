"""The limits one connection is held to, and the answers that refuse it, built once.

Sizes are gunicorn's (azmlinfsrv runs on gunicorn), so the replica accepts what v1 accepted
and refuses the rest with gunicorn's status: 414 for a request line over
``limit_request_line``, 431 for more than ``limit_request_fields`` header fields or one over
``limit_request_field_size`` bytes. Unlike gunicorn's HTML pages, each refusal has the v1
JSON error shape and names the setting to change. The whole head is bounded too (fields x
(field size + 2) + line + 4, gunicorn's buffer bound, about 800 KiB by default) while it
arrives, since httptools buffers a header until it is complete.

Timeouts: a head not complete ``header_timeout_s`` after its first byte, or a body with no byte
for that long, is answered 408 and the connection closed; an idle keep-alive connection is
closed after ``keep_alive_s``; a connection whose client has read nothing of what is sent to
it for ``send_timeout_s`` (its transport stays paused) is dropped with what is buffered for it.
``protocol.HttpProtocol.expire`` applies them once a second.

A request the parser cannot read (bad chunk framing, Content-Length with Transfer-Encoding, two
Content-Lengths: request smuggling) gets 400 with the parser's reason, then the connection closes.
"""

from __future__ import annotations

from modelfleet.replica.config import ReplicaConfig
from modelfleet.replica.responses import Reply, json_message
from modelfleet.wire.server import (
    FIELD_TOO_LARGE,
    HEAD_TOO_LARGE,
    LINE_TOO_LONG,
    TOO_MANY_FIELDS,
    HeadLimits,
    parser_reason,
)

_JSON = b"Content-Type: application/json\r\n"


def refusal(status: int, message: str) -> Reply:
    """A refusal decided while parsing; the connection closes after it."""
    return Reply(status, _JSON, json_message(message))


class Limits:
    """The configured limits and timeouts of every connection, with their refusals."""

    def __init__(self, config: ReplicaConfig) -> None:
        self.request_line = config.limit_request_line
        self.fields = config.limit_request_fields
        self.field_size = config.limit_request_field_size
        self.header_timeout_s = config.header_timeout_s
        self.keep_alive_s = config.keep_alive_timeout_s
        self.send_timeout_s = config.send_timeout_s
        self.max_head_bytes = self.fields * (self.field_size + 2) + self.request_line + 4
        self.head = HeadLimits(
            head_bytes=self.max_head_bytes, fields=self.fields, field_size=self.field_size, line=self.request_line
        )

        self.line_too_long = refusal(
            414,
            f"request line is over the limit of {self.request_line} bytes "
            "(--limit-request-line, MODELFLEET_LIMIT_REQUEST_LINE); send long inputs in the body",
        )
        self.too_many_fields = refusal(
            431,
            f"request has more than {self.fields} header fields "
            "(--limit-request-fields, MODELFLEET_LIMIT_REQUEST_FIELDS)",
        )
        self.field_too_large = refusal(
            431,
            f"a request header field is over the limit of {self.field_size} bytes "
            "(--limit-request-field-size, MODELFLEET_LIMIT_REQUEST_FIELD_SIZE)",
        )
        self.head_too_large = refusal(
            431,
            f"request headers are over the limit of {self.max_head_bytes} bytes in all "
            "(limit-request-fields x limit-request-field-size)",
        )
        self.head_timeout = refusal(
            408,
            f"request headers were not received within {self.header_timeout_s:g} s "
            "(--header-timeout, MODELFLEET_HEADER_TIMEOUT_S); the connection is closed",
        )
        self.body_timeout = refusal(
            408,
            f"request body stalled: no byte for {self.header_timeout_s:g} s "
            "(--header-timeout, MODELFLEET_HEADER_TIMEOUT_S); the connection is closed",
        )

        # wire.server's refusal kinds -> the answers above
        self.head_refusals = {
            LINE_TOO_LONG: self.line_too_long,
            TOO_MANY_FIELDS: self.too_many_fields,
            FIELD_TOO_LARGE: self.field_too_large,
            HEAD_TOO_LARGE: self.head_too_large,
        }

    def parse_error(self, ex: Exception) -> Reply:
        """400 naming what the parser refused (its reasons are fixed strings, never input)."""
        return refusal(400, f"Invalid HTTP request: {parser_reason(ex)}")
