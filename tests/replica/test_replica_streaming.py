"""Streamed answers: a @rawhttp run() returning AMLResponse(generator) reaches a real HTTP client
chunk by chunk as the generator produces them, the scoring timeout bounds the first byte, the
replica counts as busy until the stream ends, and a client that goes away ends the generator."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from replica_scripts.harness import Server, reference_server, request, start_reference, start_replica
from replica_scripts.wire import connect

BUSY = {"x-modelfleet-busy": "1"}


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("streaming")
    server = start_replica("streaming.py", tmp, args=["--max-concurrent", "1"], env={"SCORING_TIMEOUT_MS": "1500"})
    try:
        yield server
    finally:
        assert server.stop() == 0


def _lines_with_arrival(port: int, query: str) -> tuple[httpx.Response, list[tuple[float, str]]]:
    """GET /score?query, streamed: each line of the answer with the time (epoch s) it arrived."""
    arrived: list[tuple[float, str]] = []
    with httpx.Client(timeout=30) as client, client.stream("GET", f"http://127.0.0.1:{port}/score?{query}") as resp:
        buffer = ""
        for text in resp.iter_text():
            buffer += text
            while "\n" in buffer:
                line, buffer = buffer.split("\n", 1)
                arrived.append((time.time(), line))
    return resp, arrived


def _poll(condition, timeout: float = 10.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_chunks_arrive_as_they_are_produced(replica: Server) -> None:
    resp, arrived = _lines_with_arrival(replica.port, "n=5&gap=0.4")
    assert resp.status_code == 200
    assert resp.headers["transfer-encoding"] == "chunked"
    assert (resp.headers["content-type"], resp.headers["x-stream"]) == ("text/plain", "yes")
    assert "content-length" not in resp.headers
    _assert_streamed(arrived, 5, gap=0.4)


def test_the_scoring_timeout_bounds_the_first_byte_only(replica: Server, tmp_path: Path) -> None:
    marker = tmp_path / "timed-out"
    started = time.monotonic()
    late = request(replica.port, "GET", f"/score?n=2&first=3&marker={marker}")
    assert late.status == 500 and late.headers["x-ms-run-function-failed"] == "True"
    assert late.body == b'{"message": "Scoring timeout after 1500 ms"}'
    assert 1.2 < time.monotonic() - started < 2.9  # answered at the timeout, before the first chunk
    assert _poll(marker.exists)  # the interrupted generator was ended
    # Later chunks may take longer than the timeout in all: 3 x 0.8 s.
    resp, arrived = _lines_with_arrival(replica.port, "n=4&gap=0.8")
    assert resp.status_code == 200 and len(arrived) == 4


def test_the_replica_is_busy_until_the_stream_ends(replica: Server) -> None:
    with httpx.Client(timeout=30) as client:
        with client.stream("GET", f"http://127.0.0.1:{replica.port}/score?n=4&gap=0.5") as resp:
            chunks = resp.iter_text()
            assert next(chunks).startswith("chunk 0")
            # The stream is running: the replica's only slot is taken.
            busy = request(replica.port, "GET", "/score?n=1")
            assert busy.status == 503 and busy.headers["x-modelfleet-busy"] == "1"
            assert "chunk 3" in "".join(chunks)
        assert _poll(lambda: request(replica.port, "GET", "/score?n=1").status == 200, timeout=5)


def test_a_client_that_goes_away_ends_the_generator(replica: Server, tmp_path: Path) -> None:
    marker = tmp_path / "closed"
    with connect(replica.port) as sock:
        sock.sendall(f"GET /score?n=1000&gap=0.1&marker={marker} HTTP/1.1\r\nHost: replica\r\n\r\n".encode())
        assert b"chunk 0" in sock.recv(4096)
        assert not marker.exists()
    assert _poll(marker.exists, timeout=5), "the generator's finally did not run"
    # ... and its slot is free again (the replica allows one request at a time).
    assert _poll(lambda: request(replica.port, "GET", "/score?n=1").status == 200, timeout=5)


def test_a_generator_failing_mid_stream_cuts_the_body_short(replica: Server) -> None:
    got = ""
    url = f"http://127.0.0.1:{replica.port}/score?n=5&fail=2"
    # No last chunk: the client sees an incomplete body.
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.Client(timeout=30) as client,
        client.stream("GET", url) as resp,
    ):
        assert resp.status_code == 200
        for text in resp.iter_text():
            got += text
    assert "chunk 1" in got and "chunk 2" not in got
    # Failing before the first chunk is an ordinary run() failure.
    early = request(replica.port, "GET", "/score?n=5&fail=0")
    assert early.status == 500 and early.headers["x-ms-run-function-failed"] == "True"
    assert request(replica.port, "GET", "/score?n=1").status == 200


def test_an_http10_client_gets_the_raw_body_then_the_close(replica: Server) -> None:
    with connect(replica.port) as sock:
        sock.sendall(b"GET /score?n=3&gap=0.1 HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Transfer-Encoding" not in head
    assert b"Connection: close" in head
    assert [line.split(b" at ")[0] for line in body.splitlines()] == [b"chunk 0", b"chunk 1", b"chunk 2"]


def test_head_sends_the_head_only(replica: Server) -> None:
    with connect(replica.port) as sock:
        sock.sendall(b"HEAD /score?n=3 HTTP/1.1\r\nHost: replica\r\n\r\n")
        head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")  # no chunk follows
        assert b"Content-Type: text/plain\r\n" in head
        sock.sendall(b"GET /score?n=1 HTTP/1.1\r\nHost: replica\r\n\r\n")  # same connection, slot free
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK")


def test_a_client_that_never_reads_is_cut_off_and_frees_the_slot(tmp_path: Path) -> None:
    server = start_replica("streaming.py", tmp_path, args=["--max-concurrent", "1", "--send-timeout", "1"])
    marker = tmp_path / "never-read"
    try:
        with connect(server.port) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            # 64 KiB chunks without pause, 64 MiB in all, and the client reads none of it.
            sock.sendall(f"GET /score?n=1000&size=65536&marker={marker} HTTP/1.1\r\nHost: r\r\n\r\n".encode())
            assert _poll(marker.exists, timeout=15), "the generator was not ended"
            assert _poll(lambda: request(server.port, "GET", "/score?n=1").status == 200, timeout=5)
        assert "took none of the streamed answer for 1 s" in server.output()
    finally:
        assert server.stop() == 0


def _assert_streamed(arrived: list[tuple[float, str]], count: int, gap: float) -> None:
    """Each chunk reached the client soon after the script produced it (each line carries its
    production time), and not all at the end: the arrivals are spread as the production was."""
    assert [line.split(" at ")[0] for _, line in arrived] == [f"chunk {i}" for i in range(count)]
    delays = [when - float(line.split(" at ")[1]) for when, line in arrived]
    assert all(-0.05 < delay < 1.0 for delay in delays), delays  # generous: the machine is shared
    assert arrived[-1][0] - arrived[0][0] > (count - 1) * gap * 0.6


def test_a_streamed_werkzeug_response_streams_too(tmp_path: Path) -> None:
    pytest.importorskip("werkzeug")
    server = start_replica("werkzeug_stream.py", tmp_path)
    try:
        resp, arrived = _lines_with_arrival(server.port, "n=3&gap=0.4")
        assert (resp.status_code, resp.headers["transfer-encoding"]) == (207, "chunked")
        assert resp.headers["content-type"].startswith("text/event-stream")
        _assert_streamed(arrived, 3, gap=0.4)
    finally:
        assert server.stop() == 0


@pytest.mark.skipif(reference_server() is None, reason="azmlinfsrv (the v1 reference server) not found")
def test_azmlinfsrv_streams_the_same_script_the_same_way(tmp_path: Path) -> None:
    reference = start_reference("streaming.py", tmp_path)
    ours = start_replica("streaming.py", tmp_path)
    try:
        reference.wait_ready(timeout=60)
        for server in (reference, ours):
            resp, arrived = _lines_with_arrival(server.port, "n=4&gap=0.4")
            assert (resp.status_code, resp.headers["transfer-encoding"]) == (200, "chunked")
            assert (resp.headers["content-type"], resp.headers["x-stream"]) == ("text/plain", "yes")
            assert resp.headers["x-ms-run-function-failed"] == "False"
            _assert_streamed(arrived, 4, gap=0.4)
    finally:
        reference.stop()
        assert ours.stop() == 0
