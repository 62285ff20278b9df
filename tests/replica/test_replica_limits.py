"""The replica's connection limits and timeouts, against a real process on a real socket:
header size and count (431), request line (414), the whole head, a slowloris client (408 and
closed while others are served), a stalled body, idle keep-alive connections, and the
settings that change them."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfleet.errors import ConfigError
from modelfleet.replica.config import parse_config
from replica_scripts.harness import SCRIPTS, Server, request, start_replica
from replica_scripts.wire import connect, established_connections, exchange, get, read_answer


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("limits")
    server = start_replica("plain_sum.py", tmp, args=["--header-timeout", "1", "--keep-alive", "1"])
    try:
        yield server
    finally:
        assert server.stop() == 0


def test_a_header_field_over_8190_bytes_is_431_with_json(replica: Server) -> None:
    answer = exchange(replica.port, get(headers=[("X-Big", "a" * 9000)]))
    assert (answer.status, answer.headers["content-type"], answer.closed) == (431, "application/json", True)
    assert "8190 bytes" in answer.json()["message"]
    # 8190 bytes in all ("name: value\r\n"), as gunicorn counts, is still accepted.
    assert exchange(replica.port, get(headers=[("X-Big", "a" * (8190 - 9))])).status == 200


def test_more_than_100_header_fields_is_431(replica: Server) -> None:
    # get() adds Host: 99 more make 100, the most accepted.
    assert exchange(replica.port, get(headers=[(f"X-H{i}", "v") for i in range(99)])).status == 200
    answer = exchange(replica.port, get(headers=[(f"X-H{i}", "v") for i in range(100)]))
    assert (answer.status, answer.closed) == (431, True)
    assert "more than 100 header fields" in answer.json()["message"]


def test_a_request_line_over_4094_bytes_is_414(replica: Server) -> None:
    answer = exchange(replica.port, get("/" + "a" * 5000))
    assert (answer.status, answer.closed) == (414, True)
    assert "4094 bytes" in answer.json()["message"]


def test_megabytes_of_header_are_refused_as_they_arrive(replica: Server) -> None:
    # One header line sent in 64 KiB pieces, 8 MiB in all: refused once the head passes its bound.
    pieces = [b"GET / HTTP/1.1\r\nHost: replica\r\nX-Big: ", *([b"a" * 65536] * 128)]
    answer = exchange(replica.port, pieces)
    assert (answer.status, answer.closed) == (431, True)
    assert request(replica.port, "GET", "/").status == 200


def test_a_slowloris_client_is_cut_off_while_others_are_served(replica: Server) -> None:
    head = get(headers=[("X-Slow", "x" * 40)])
    result: dict[str, object] = {}

    def slowloris() -> None:
        sock = connect(replica.port, timeout=15)
        started = time.monotonic()
        try:
            for byte in head[:-2]:  # never finishes the head
                sock.send(bytes([byte]))
                time.sleep(0.1)
        except OSError:
            pass  # cut off while sending: the answer is waiting
        try:
            answer = read_answer(sock)
            result.update(status=answer.status, closed=answer.closed, message=answer.json()["message"])
        finally:
            result["after"] = time.monotonic() - started
            sock.close()

    thread = threading.Thread(target=slowloris)
    thread.start()
    served = 0
    while thread.is_alive() and served < 200:
        assert request(replica.port, "POST", "/score", '{"data": [[1, 2]]}', timeout=5).status == 200
        served += 1
        time.sleep(0.05)
    thread.join(20)
    assert result["status"] == 408 and result["closed"] is True
    assert "MODELFLEET_HEADER_TIMEOUT_S" in str(result["message"])
    assert 0.9 < float(result["after"]) < 8  # type: ignore[arg-type]  # timeout 1 s, checked once a second
    assert served >= 5  # others were answered meanwhile


def test_a_stalled_body_is_cut_off(replica: Server) -> None:
    with connect(replica.port) as sock:
        sock.sendall(b'POST /score HTTP/1.1\r\nHost: replica\r\nContent-Length: 100\r\n\r\n{"da')
        started = time.monotonic()
        answer = read_answer(sock)
        assert (answer.status, answer.closed) == (408, True)
        assert 0.9 < time.monotonic() - started < 8
        assert "body stalled" in answer.json()["message"]


def test_an_idle_keep_alive_connection_is_closed(replica: Server) -> None:
    with connect(replica.port) as sock:
        # Active: a request every 0.1 s for 2 s keeps the connection (keep-alive 1 s).
        for _ in range(20):
            sock.sendall(get())
            answer = read_answer(sock)
            assert (answer.status, answer.closed) == (200, False)
            time.sleep(0.1)
        started = time.monotonic()
        sock.settimeout(10)
        assert sock.recv(1) == b""  # then idle: closed by the replica
        assert 0.9 < time.monotonic() - started < 8


def test_limits_come_from_flags_then_environment(tmp_path: Path) -> None:
    script = str(SCRIPTS / "plain_sum.py")
    config = parse_config(["--entry_script", script], {}, str(tmp_path))
    assert (config.limit_request_line, config.limit_request_fields, config.limit_request_field_size) == (
        4094,
        100,
        8190,
    )
    assert (config.header_timeout_s, config.keep_alive_timeout_s) == (20.0, 5.0)
    environ = {
        "MODELFLEET_LIMIT_REQUEST_LINE": "1000",
        "MODELFLEET_LIMIT_REQUEST_FIELDS": "20",
        "MODELFLEET_LIMIT_REQUEST_FIELD_SIZE": "512",
        "MODELFLEET_HEADER_TIMEOUT_S": "2.5",
        "MODELFLEET_KEEP_ALIVE_S": "7",
    }
    config = parse_config(["--entry_script", script], environ, str(tmp_path))
    assert (config.limit_request_line, config.limit_request_fields, config.limit_request_field_size) == (
        1000,
        20,
        512,
    )
    assert (config.header_timeout_s, config.keep_alive_timeout_s) == (2.5, 7.0)
    flags = ["--limit-request-fields", "30", "--header-timeout", "4", "--keep-alive", "9"]
    config = parse_config(["--entry_script", script, *flags], environ, str(tmp_path))
    assert (config.limit_request_fields, config.header_timeout_s, config.keep_alive_timeout_s) == (30, 4.0, 9.0)
    with pytest.raises(ConfigError, match="limit_request_fields must be between 1 and 32768"):
        parse_config(["--entry_script", script, "--limit-request-fields", "0"], {}, str(tmp_path))
    with pytest.raises(ConfigError, match="header_timeout must be a number"):
        parse_config(["--entry_script", script], {"MODELFLEET_HEADER_TIMEOUT_S": "soon"}, str(tmp_path))


def test_configured_limits_apply(tmp_path: Path) -> None:
    server = start_replica(
        "plain_sum.py", tmp_path, args=["--limit-request-fields", "5"], env={"MODELFLEET_LIMIT_REQUEST_LINE": "200"}
    )
    try:
        assert exchange(server.port, get(headers=[(f"X-{i}", "v") for i in range(4)])).status == 200
        assert exchange(server.port, get(headers=[(f"X-{i}", "v") for i in range(5)])).status == 431
        assert exchange(server.port, get("/" + "a" * 150)).status == 404
        assert exchange(server.port, get("/" + "a" * 200)).status == 414
    finally:
        assert server.stop() == 0


def test_a_client_that_never_reads_its_answer_is_dropped(tmp_path: Path) -> None:
    server = start_replica("plain_kinds.py", tmp_path, args=["--send-timeout", "1", "--keep-alive", "1"])
    try:
        with connect(server.port) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            body = b"x" * (8 * 1024 * 1024)  # the answer echoes it: 8 MiB that the client never reads
            sock.sendall(b"POST /score HTTP/1.1\r\nHost: r\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            started = time.monotonic()
            assert request(server.port, "GET", "/").status == 200  # others are served meanwhile
            deadline = started + 15
            while established_connections(server.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert established_connections(server.proc.pid) == 0, "the replica still holds the connection"
            assert time.monotonic() - started > 0.9
    finally:
        assert server.stop() == 0
