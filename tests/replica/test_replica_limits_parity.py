"""Header limits, long request ids and smuggling attempts: the replica refuses what azmlinfsrv
(gunicorn) refuses, with the same status, and accepts what it accepts.

The bodies differ on purpose: gunicorn answers its refusals with an HTML page, the replica with
the v1 JSON error shape (``{"message": ...}``). Skipped when the reference is not installed
(see ``replica_scripts.harness.reference_server``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from replica_scripts.harness import Server, reference_server, start_reference, start_replica
from replica_scripts.wire import exchange, get

pytestmark = pytest.mark.skipif(reference_server() is None, reason="azmlinfsrv (the v1 reference server) not found")

SCORE = b"POST /score HTTP/1.1\r\nHost: replica\r\n"

# (name, raw request, status both must answer, whether it is a refusal that closes the connection)
CASES: list[tuple[str, bytes, int, bool]] = [
    ("field of 8190 bytes", get(headers=[("X-Big", "a" * 8181)]), 200, False),
    ("field of 8191 bytes", get(headers=[("X-Big", "a" * 8182)]), 431, True),
    ("field of 200 KB", get(headers=[("X-Big", "a" * 200_000)]), 431, True),
    ("100 fields", get(headers=[(f"X-H{i}", "v") for i in range(99)]), 200, False),
    ("101 fields", get(headers=[(f"X-H{i}", "v") for i in range(100)]), 431, True),
    ("5000 fields", get(headers=[(f"X-H{i}", "v") for i in range(4999)]), 431, True),
    ("request line of 4094 bytes", get("/" + "a" * (4094 - 14)), 404, False),
    ("request line of 4095 bytes", get("/" + "a" * (4095 - 14)), 414, True),
    ("x-request-id of 100", get(headers=[("x-request-id", "r" * 100)]), 200, False),
    ("x-request-id of 101", get(headers=[("x-request-id", "r" * 101)]), 431, False),
    ("x-ms-request-id of 101", get(headers=[("x-ms-request-id", "m" * 101)]), 431, False),
    ("x-ms-client-request-id of 101", get(headers=[("x-ms-client-request-id", "c" * 101)]), 431, False),
    (
        "Content-Length and Transfer-Encoding",
        SCORE + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        400,
        True,
    ),
    ("two Content-Lengths", SCORE + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nhi", 400, True),
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    tmp: Path = tmp_path_factory.mktemp("limits-parity")
    reference = start_reference("plain_sum.py", tmp)
    ours = start_replica("plain_sum.py", tmp)
    try:
        reference.wait_ready(timeout=60)
        yield reference, ours
    finally:
        reference.stop()
        assert ours.stop() == 0


@pytest.mark.parametrize(("name", "raw", "status", "refusal"), CASES, ids=[c[0] for c in CASES])
def test_same_status_as_the_reference(
    pair: tuple[Server, Server], name: str, raw: bytes, status: int, refusal: bool
) -> None:
    reference, ours = pair
    expected = exchange(reference.port, raw)
    actual = exchange(ours.port, raw)
    assert (expected.status, actual.status) == (status, status)
    if refusal:
        assert expected.closed and actual.closed
    if status >= 400:
        assert actual.headers["content-type"] == "application/json"
        assert actual.json()["message"]


ID_NAMES = ("x-request-id", "x-ms-request-id", "x-ms-client-request-id")
ID_VALUES = (None, "given", "x" * 100, "y" * 101)


def _ids(answer_headers: dict[str, str], sent: dict[str, str]) -> dict[str, str | None]:
    """The id headers of an answer; a value the client did not send shows as <generated>."""
    out: dict[str, str | None] = {}
    for name in ID_NAMES:
        value = answer_headers.get(name)
        out[name] = value if value is None or value in sent.values() else "<generated>"
    return out


def test_every_combination_of_request_ids_answers_as_the_reference(pair: tuple[Server, Server]) -> None:
    reference, ours = pair
    checked = 0
    for a in ID_VALUES:
        for b in ID_VALUES:
            for c in ID_VALUES:
                sent = {n: f"{v}-{i}" for i, (n, v) in enumerate(zip(ID_NAMES, (a, b, c), strict=True)) if v}
                raw = get(headers=list(sent.items()))
                expected = exchange(reference.port, raw, see_close=False)
                actual = exchange(ours.port, raw, see_close=False)
                assert (actual.status, _ids(actual.headers, sent)) == (
                    expected.status,
                    _ids(expected.headers, sent),
                ), sent
                if expected.status == 431:
                    assert actual.json() == expected.json()
                checked += 1
    assert checked == 64
