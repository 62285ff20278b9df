"""Fuzzing the request parsing of the router and of the replica (``modelfleet serve``) with
hypothesis, for a bounded number of examples (issue 12).

Every input — random bytes, or a request whose line, headers, framing and body are drawn
from hostile choices (smuggling pairs, negative and huge lengths, bad chunk framing, CR/LF
in names, NULs, over-long lines) — must get well-formed HTTP answers or a clean close (or
nothing yet, when the input is an incomplete request the server may still wait for), and the
server must go on serving: after each example a valid request on a fresh connection is
answered 200.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httptools
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2e_support import SCRIPTS, SUM_BODY, deploy, stop_cluster, wait_until
from modelfleet import Workspace

EXAMPLES = int(os.environ.get("MODELFLEET_FUZZ_EXAMPLES", "120"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- what a hostile client sends -------------------------------------------------------------

methods = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"HEAD", b"PATCH", b"BREW", b"", b"G\x00T"])
versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.x", b"", b"http/1.1", b"HTTP/1.1 extra"])
header_names = st.one_of(
    st.sampled_from(
        [
            b"Content-Length",
            b"Transfer-Encoding",
            b"Host",
            b"Authorization",
            b"Connection",
            b"Expect",
            b"x-ms-request-id",
            b"x-request-id",
            b"Content-Type",
        ]
    ),
    st.binary(min_size=0, max_size=40),
)
header_values = st.one_of(
    st.sampled_from(
        [
            b"chunked",
            b"gzip, chunked",
            b"chunked, identity",
            b"-1",
            b"0",
            b"5",
            b"18446744073709551616",
            b"1000000000000",
            b"close",
            b"keep-alive",
            b"100-continue",
            b"Bearer x",
            b" 5",
            b"5 5",
            b"0x10",
        ]
    ),
    st.binary(min_size=0, max_size=200),
    st.builds(lambda n: b"a" * n, st.integers(0, 20000)),
)
chunk_bodies = st.lists(
    st.one_of(
        st.builds(lambda d: b"%x\r\n%s\r\n" % (len(d), d), st.binary(max_size=50)),
        st.sampled_from(
            [b"zz\r\nab\r\n", b"5\r\nab\r\n", b"-1\r\n\r\n", b"ffffffffffffffffff\r\n", b"0\r\n", b"3;x=y\r\nabc\r\n"]
        ),
    ),
    max_size=5,
).map(lambda parts: b"".join(parts) + b"0\r\n\r\n")


@st.composite
def requests(draw: st.DrawFn, path: bytes) -> bytes:
    target = draw(st.one_of(st.just(path), st.binary(max_size=60), st.just(b"/" + b"a" * 9000), st.just(b"/../../etc")))
    line = draw(methods) + b" " + target + b" " + draw(versions) + b"\r\n"
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=8))
    head = line + b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"
    body = draw(st.one_of(st.just(b""), st.just(SUM_BODY.encode()), chunk_bodies, st.binary(max_size=300)))
    return head + body


def hostile(path: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(requests(path), st.binary(min_size=1, max_size=500))


# -- what counts as a proper reaction ----------------------------------------------------------


class _Answers:
    """httptools callbacks: counts whole answers and notes the status of each."""

    def __init__(self) -> None:
        self.complete = 0

    def on_message_complete(self) -> None:
        self.complete += 1


def exchange(host: str, port: int, data: bytes) -> bytes:
    """Send ``data``; read until the server closes or stays quiet for 0.5 s."""
    received = b""
    with socket.create_connection((host, port), timeout=5) as sock:
        with contextlib.suppress(OSError):  # the server may close while we still send: fine
            sock.sendall(data)
        sock.settimeout(0.5)
        with contextlib.suppress(OSError):  # a reset after the answer is a close too
            while chunk := sock.recv(65536):
                received += chunk
    return received


def assert_well_formed(received: bytes, sent: bytes) -> None:
    if not received:
        return  # a clean close, or still waiting for the rest of an incomplete request
    assert received.startswith(b"HTTP/1.1 "), received[:200]
    if b"HEAD " in sent:
        # an answer to HEAD has its body's headers and no body, which a response parser
        # cannot be told: a whole head is what can be checked
        assert b"\r\n\r\n" in received, received[:300]
        return
    answers = _Answers()
    parser = httptools.HttpResponseParser(answers)
    parser.feed_data(received)  # raises HttpParserError on a malformed answer
    assert answers.complete >= 1, received[:300]


def still_serving(uri: str, headers: dict[str, str]) -> None:
    response = httpx.post(uri, content=SUM_BODY, headers=headers, timeout=10)
    assert response.status_code == 200 and response.json() == [55]


# -- the two servers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    ws = Workspace.create("fuzz", tmp_path_factory.mktemp("ws"))
    try:
        service = deploy(ws, "fuzzed", "sum")
        yield service.scoring_uri, {"Authorization": f"Bearer {service.get_keys()[0]}"}  # type: ignore[misc]
    finally:
        stop_cluster(ws)


@pytest.fixture(scope="module")
def replica() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelfleet", "serve", "--entry_script", str(SCRIPTS / "sum" / "score.py"),
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        uri = f"http://127.0.0.1:{port}/score"

        def up() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200
            return False

        wait_until(up, timeout=30, interval=0.1)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# A timeout raised inside hypothesis turns into a failure it then tries to shrink, without end:
# past the bound, the thread method ends the run with every stack instead.
BOUNDED = pytest.mark.timeout(400, method="thread")


@BOUNDED
@FUZZ
@given(data=st.data())
def test_router_answers_hostile_input_properly_and_keeps_serving(router: tuple[str, dict[str, str]], data) -> None:
    uri, headers = router
    parts = urlsplit(uri)
    sent = data.draw(hostile(parts.path.encode()))
    assert_well_formed(exchange(parts.hostname or "127.0.0.1", parts.port or 80, sent), sent)
    still_serving(uri, headers)


@BOUNDED
@FUZZ
@given(data=st.data())
def test_replica_answers_hostile_input_properly_and_keeps_serving(replica: str, data) -> None:
    parts = urlsplit(replica)
    sent = data.draw(hostile(b"/score"))
    started = time.monotonic()
    assert_well_formed(exchange(parts.hostname or "127.0.0.1", parts.port or 80, sent), sent)
    assert time.monotonic() - started < 30
    still_serving(replica, {})
