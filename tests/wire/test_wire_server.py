"""The server side of the wire layer (``wire.server``): bytes in, the head it reads or the
refusal it decides out. ``Recorder`` is the smallest server on top of ``ServerProtocol``: it
keeps what the base hands it, as the router's and the replica's connections do."""

from __future__ import annotations

import httptools
import pytest

from modelfleet.wire.server import (
    FIELD_TOO_LARGE,
    HEAD_TOO_LARGE,
    LINE_TOO_LONG,
    MALFORMED,
    SMUGGLING,
    TOO_MANY_FIELDS,
    UPGRADE,
    HeadLimits,
    Refused,
    ServerProtocol,
    classify,
    parser_reason,
)


class Recorder(ServerProtocol):
    def __init__(self, limits: HeadLimits) -> None:
        super().__init__(limits)
        self.heads: list[tuple[bytes, bytes, list[tuple[bytes, bytes]]]] = []
        self.bodies: list[bytes] = []
        self.complete = 0
        self.refusals: list[int] = []
        self.failures: list[tuple[int, str]] = []
        self.bugs: list[Exception] = []
        self.raise_in_body = False

    def refuse_head(self, kind: int) -> None:
        self.refused = True
        self.refusals.append(kind)

    def parse_failed(self, kind: int, exc: Exception) -> None:
        self.refused = True
        self.failures.append((kind, parser_reason(exc)))

    def callback_failed(self, exc: Exception) -> None:
        self.refused = True
        self.bugs.append(exc)

    def on_headers_complete(self) -> None:
        if not self.head_fits():
            raise Refused
        self.heads.append((self.parser.get_method(), self.url, list(self.headers)))

    def on_body(self, body: bytes) -> None:
        if self.raise_in_body:
            raise KeyError("a bug in a callback")
        self.bodies.append(body)

    def on_message_complete(self) -> None:
        self.complete += 1


LIMITS = HeadLimits(head_bytes=1024, fields=4, field_size=100, line=200)


def head(*fields: bytes, target: bytes = b"/score") -> bytes:
    return b"POST " + target + b" HTTP/1.1\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


def test_a_head_within_the_limits_is_read_with_its_body() -> None:
    r = Recorder(LIMITS)
    assert r.feed(head(b"Host: x", b"Content-Length: 2", target=b"/score?a=1") + b"hi")
    assert r.heads == [(b"POST", b"/score?a=1", [(b"Host", b"x"), (b"Content-Length", b"2")])]
    assert r.bodies == [b"hi"] and r.complete == 1
    assert not r.refused and not r.in_head


def test_pipelined_requests_each_get_a_fresh_head() -> None:
    r = Recorder(LIMITS)
    assert r.feed(head(b"A: 1", b"Content-Length: 0") + head(b"B: 2", b"Content-Length: 0", target=b"/b"))
    assert [(h[1], h[2][0]) for h in r.heads] == [(b"/score", (b"A", b"1")), (b"/b", (b"B", b"2"))]
    assert r.complete == 2 and r.seq == 2  # heads begun


def test_exactly_the_field_limit_passes_one_more_is_refused() -> None:
    r = Recorder(LIMITS)
    assert r.feed(head(b"A: 1", b"B: 2", b"C: 3", b"Content-Length: 0"))
    assert r.complete == 1 and r.refusals == []
    r = Recorder(LIMITS)
    assert not r.feed(head(b"A: 1", b"B: 2", b"C: 3", b"D: 4", b"Content-Length: 0"))
    assert r.refusals == [TOO_MANY_FIELDS] and r.heads == []
    assert not r.feed(head(b"Content-Length: 0"))  # nothing more is parsed once refused
    assert r.heads == []


def test_a_field_over_its_size_is_refused_as_gunicorn_counts_it() -> None:
    # "name: value\r\n" counts len(name) + len(value) + 4: 100 bytes fit, 101 do not.
    ok = b"X: " + b"a" * (100 - 4 - 1)
    r = Recorder(LIMITS)
    assert r.feed(head(ok, b"Content-Length: 0")) and r.refusals == []
    r = Recorder(LIMITS)
    assert not r.feed(head(ok + b"a", b"Content-Length: 0"))
    assert r.refusals == [FIELD_TOO_LARGE]


def test_a_request_line_over_its_limit_is_refused_from_the_url() -> None:
    # "POST <url> HTTP/1.1" counts len(method) + len(url) + 10 against line=200.
    r = Recorder(LIMITS)
    assert r.feed(head(b"Content-Length: 0", target=b"/" + b"a" * (200 - 4 - 10 - 1)))
    assert r.refusals == []
    r = Recorder(LIMITS)
    assert not r.feed(head(b"Content-Length: 0", target=b"/" + b"a" * (200 - 4 - 10)))
    assert r.refusals == [LINE_TOO_LONG]


def test_without_a_line_or_field_limit_the_whole_head_limit_covers_both() -> None:
    limits = HeadLimits(head_bytes=1024, fields=3)
    # Fields are counted, never measured one by one...
    r = Recorder(limits)
    assert not r.feed(head(b"A: 1", b"B: 2", b"C: 3", b"D: 4"))
    assert r.refusals == [TOO_MANY_FIELDS]
    # ...a field over the whole head's limit is over that limit,
    r = Recorder(limits)
    assert not r.feed(head(b"X: " + b"a" * 1024))
    assert r.refusals == [HEAD_TOO_LARGE]
    # ...and one that fits alone is measured with the URL once the head is complete: in a
    # read larger than the limit,
    r = Recorder(limits)
    assert not r.feed(head(b"X: " + b"a" * 1021))  # 6 bytes of URL + 1022 > 1024
    assert r.refusals == [HEAD_TOO_LARGE] and r.heads == []
    # ...or spread over reads, each smaller than the limit.
    data = head(b"X: " + b"a" * 500, b"Content-Length: 0", target=b"/" + b"b" * 600)
    r = Recorder(limits)
    assert r.feed(data[:300])
    assert not r.feed(data[300:])
    assert r.refusals == [HEAD_TOO_LARGE] and r.heads == []
    # The same head within the limit passes, spread over reads too.
    data = head(b"X: " + b"a" * 300, b"Content-Length: 0", target=b"/" + b"b" * 600)
    r = Recorder(limits)
    assert r.feed(data[:300]) and r.feed(data[300:])
    assert r.refusals == [] and len(r.heads) == 1


def test_an_unfinished_header_line_is_bounded_while_it_arrives() -> None:
    # httptools calls back only once a header line is complete: reads wholly inside one head
    # are added up, and the head is refused before it ends.
    r = Recorder(HeadLimits(head_bytes=1024, fields=100))
    assert r.feed(b"GET / HTTP/1.1\r\nX-Slow: ")
    reads = 1
    while r.feed(b"a" * 100):
        reads += 1
        assert reads < 100
    assert reads == 11  # 10 reads of 100 bytes fit in 1024; the 11th does not
    assert r.refusals == [HEAD_TOO_LARGE]
    assert r.in_head and r.heads == []


def test_the_read_a_head_begins_in_is_not_counted_against_it() -> None:
    # A large body followed, in the same read, by the start of the next head (pipelining):
    # the body's bytes are not the head's.
    r = Recorder(HeadLimits(head_bytes=1024, fields=100))
    body = b"x" * 5000
    assert r.feed(head(b"Content-Length: %d" % len(body)) + body + b"GET /next HTTP/1.1\r\nHo")
    assert r.refusals == [] and r.in_head
    assert r.feed(b"st: x\r\n\r\n")
    assert [h[1] for h in r.heads] == [b"/score", b"/next"] and r.refusals == []


@pytest.mark.parametrize(
    ("data", "kind", "reason"),
    [
        (head(b"Content-Length: 3", b"Transfer-Encoding: chunked") + b"0\r\n\r\n", SMUGGLING, "can't be present"),
        (head(b"Content-Length: 3", b"Content-Length: 4") + b"abcd", SMUGGLING, "Duplicate Content-Length"),
        (head(b"Transfer-Encoding: chunked") + b"zz\r\nabc\r\n", MALFORMED, "chunk size"),
        (b"\x00\x01garbage\r\n\r\n", MALFORMED, "method"),
        (b"GET / HTTP/9.x\r\n\r\n", MALFORMED, "version"),
        (b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", UPGRADE, ""),
    ],
)
def test_parser_failures_are_sorted(data: bytes, kind: int, reason: str) -> None:
    r = Recorder(LIMITS)
    assert not r.feed(data)
    assert [k for k, _ in r.failures] == [kind]
    assert reason in r.failures[0][1]


def test_classify_reads_llhttps_words() -> None:
    assert classify(httptools.HttpParserError("Transfer-Encoding can't be present with Content-Length")) == SMUGGLING
    assert classify(httptools.HttpParserError("Duplicate Content-Length")) == SMUGGLING
    assert classify(httptools.HttpParserError("Invalid method encountered")) == MALFORMED
    assert classify(httptools.HttpParserUpgrade(10)) == UPGRADE
    assert parser_reason(httptools.HttpParserError("  Invalid method  ")) == "Invalid method"
    assert parser_reason(httptools.HttpParserError("")) == "HttpParserError"


def test_a_bug_in_a_callback_is_not_taken_for_bad_input() -> None:
    r = Recorder(LIMITS)
    r.raise_in_body = True
    assert not r.feed(head(b"Content-Length: 2") + b"hi")
    assert r.failures == [] and r.refusals == []
    assert len(r.bugs) == 1 and isinstance(r.bugs[0], httptools.HttpParserCallbackError)


@pytest.mark.parametrize(
    "kwargs",
    [{"head_bytes": 0, "fields": 4}, {"head_bytes": 1024, "fields": -1}, {"head_bytes": 1024, "fields": 4, "line": 0}],
)
def test_limits_must_be_positive_integers(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="HeadLimits .* must be an integer >= 1"):
        HeadLimits(**kwargs)
