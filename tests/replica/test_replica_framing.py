"""Requests the parser cannot read after their headers (bad chunk framing) and request smuggling
attempts: one 400 with a JSON message that names the problem, then the connection closes, and
nothing smuggled behind them is ever answered."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from replica_scripts.harness import Server, start_replica
from replica_scripts.wire import connect, exchange, read_answer

HEAD = b"POST /score HTTP/1.1\r\nHost: replica\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: replica\r\n\r\n"


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_replica("plain_kinds.py", tmp_path_factory.mktemp("framing"))
    try:
        yield server
    finally:
        assert server.stop() == 0


CASES = [
    ("chunk size not hex", b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n", "chunk size"),
    ("chunk longer than declared", b"Transfer-Encoding: chunked\r\n\r\n2\r\nhixx\r\n0\r\n\r\n", "chunk data"),
    (
        "chunked after identity",
        b"Transfer-Encoding: chunked, identity\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        "Transfer-Encoding",
    ),
    (
        "Content-Length and Transfer-Encoding",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
        "Transfer-Encoding can't be present with Content-Length",
    ),
    (
        "Transfer-Encoding and Content-Length",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + SMUGGLED,
        "Content-Length",
    ),
    (
        "two Content-Lengths",
        b"Content-Length: 2\r\nContent-Length: 40\r\n\r\nhi" + SMUGGLED,
        "Duplicate Content-Length",
    ),
    ("negative Content-Length", b"Content-Length: -1\r\n\r\nhi", "Content-Length"),
]


@pytest.mark.parametrize(("name", "rest", "reason"), CASES, ids=[c[0] for c in CASES])
def test_unreadable_framing_is_one_400_naming_it_then_close(
    replica: Server, name: str, rest: bytes, reason: str
) -> None:
    answer = exchange(replica.port, HEAD + rest)
    assert (answer.status, answer.headers["content-type"], answer.closed) == (400, "application/json", True)
    message = answer.json()["message"]
    assert message.startswith("Invalid HTTP request: ") and reason in message, message


def test_a_bad_request_behind_a_good_one_is_answered_in_order(replica: Server) -> None:
    with connect(replica.port) as sock:
        good = HEAD + b"Content-Length: 4\r\n\r\ntext"
        sock.sendall(good + HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\nnot-a-size\r\n")
        first = read_answer(sock)
        assert (first.status, first.body, first.closed) == (200, b'"plain text"', False)
        second = read_answer(sock)
        assert (second.status, second.closed) == (400, True)
        assert "chunk" in second.json()["message"]
