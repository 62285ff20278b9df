"""How answers mark their end (``wire.framing``): the decision table, the Connection line, and
the chunked encoding, read back by httptools' own response parser."""

from __future__ import annotations

import httptools
import pytest

from modelfleet.wire.framing import (
    CHUNKED,
    CONTINUE,
    LAST_CHUNK,
    LENGTH,
    LOWER,
    NO_BODY,
    TITLE,
    UNTIL_CLOSE,
    body_framing,
    chunk,
    chunk_size,
    connection,
)


@pytest.mark.parametrize(
    ("status", "has_length", "http11", "framing"),
    [
        (200, True, True, LENGTH),
        (200, True, False, LENGTH),
        (200, False, True, CHUNKED),
        (200, False, False, UNTIL_CLOSE),
        (500, False, True, CHUNKED),
        (204, False, True, NO_BODY),
        (304, False, False, NO_BODY),
        (101, False, True, NO_BODY),
        (204, True, True, NO_BODY),
    ],
)
def test_body_framing(status: int, has_length: bool, http11: bool, framing: int) -> None:
    assert body_framing(status, has_length, http11) == framing


def test_the_connection_line() -> None:
    assert connection(TITLE, close=True) == b"Connection: close\r\n"
    assert connection(LOWER, close=True, http10_keep_alive=True) == b"connection: close\r\n"
    assert connection(TITLE, close=False, http10_keep_alive=True) == b"Connection: keep-alive\r\n"
    assert connection(LOWER, close=False) == b""  # HTTP/1.1's default: nothing to say


def test_each_casing_names_the_same_headers() -> None:
    for a, b in ((TITLE.length, LOWER.length), (TITLE.chunked, LOWER.chunked), (TITLE.close, LOWER.close)):
        assert a.lower() == b and a != b
    assert TITLE.content_length(42) == b"Content-Length: 42\r\n"
    assert LOWER.content_length(0) == b"content-length: 0\r\n"


class Answer:
    """What httptools' response parser reads from bytes."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


def read(data: bytes) -> Answer:
    answer = Answer()
    httptools.HttpResponseParser(answer).feed_data(data)
    return answer


def test_chunks_read_back_as_the_body() -> None:
    pieces = [b"a", b"b" * 15, b"c" * 16, b"d" * 4096, b"\r\n0\r\n\r\n"]  # the last one looks like an end
    head = b"HTTP/1.1 200 OK\r\n" + TITLE.chunked + b"\r\n"
    answer = read(head + b"".join(chunk(p) for p in pieces) + LAST_CHUNK)
    assert answer.done and answer.body == b"".join(pieces)
    # The size line alone, for writers that send the data without copying it.
    answer = read(head + chunk_size(3) + b"xyz\r\n" + LAST_CHUNK)
    assert answer.done and answer.body == b"xyz"
    assert chunk(b"x" * 255).startswith(b"ff\r\n")


def test_a_length_framed_answer_reads_back() -> None:
    body = b'{"message": "hi"}'
    answer = read(b"HTTP/1.1 200 OK\r\n" + LOWER.content_length(len(body)) + LOWER.close + b"\r\n" + body)
    assert answer.done and answer.body == body
    assert (b"connection", b"close") in answer.headers


def test_continue_is_an_interim_answer() -> None:
    assert CONTINUE == b"HTTP/1.1 100 Continue\r\n\r\n"
    answer = read(CONTINUE)
    assert answer.done and answer.body == b""
