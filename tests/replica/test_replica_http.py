"""The replica as a real process on a real socket: routes, run() styles, errors, limits, ids."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from replica_scripts.harness import SCRIPTS, Server, base_env, request, start_replica

BENCH_BODY = '{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
RUN_FAILED = {"message": "An unexpected error occurred in scoring script. Check the logs for more info."}


@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("replica")


@pytest.fixture(scope="module")
def plain(tmp_module: Path):
    server = start_replica("plain_kinds.py", tmp_module)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def slow(tmp_module: Path):
    server = start_replica("slow.py", tmp_module, args=["--max-concurrent", "1"], env={"SCORING_TIMEOUT_MS": "700"})
    try:
        yield server
    finally:
        server.stop()


def _poll(condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached within {timeout}s")


def test_trivial_model_sums(tmp_path: Path) -> None:
    server = start_replica("plain_sum.py", tmp_path)
    try:
        answer = request(server.port, "POST", "/score", BENCH_BODY)
        assert (answer.status, answer.content_type, answer.body) == (200, "application/json", b"[55]")
        assert answer.headers["x-ms-run-function-failed"] == "False"
        assert float(answer.headers["x-ms-run-fn-exec-ms"]) >= 0
    finally:
        assert server.stop() == 0


def test_liveness_and_unknown_routes(plain: Server) -> None:
    live = request(plain.port, "GET", "/")
    assert (live.status, live.content_type, live.body) == (200, "text/html; charset=utf-8", b"Healthy")
    missing = request(plain.port, "GET", "/nope")
    assert missing.status == 404 and json.loads(missing.body)["message"].startswith("The requested URL was not found")
    wrong = request(plain.port, "PUT", "/score")
    assert wrong.status == 405
    assert json.loads(wrong.body) == {"message": "The method is not allowed for the requested URL."}
    options = request(plain.port, "OPTIONS", "/")
    assert options.status == 200 and options.headers["allow"] == "GET, HEAD, OPTIONS"


def test_plain_run_gets_the_body_as_text(plain: Server) -> None:
    answer = request(plain.port, "POST", "/score", "héllo")
    assert answer.status == 200
    assert json.loads(answer.body) == {"raw": "héllo", "length": 5}
    bad = request(plain.port, "POST", "/score", b"\xff")
    assert bad.status == 400 and json.loads(bad.body)["message"].startswith("Input cannot be decoded as UTF-8")


def test_get_score_hands_the_query_string_to_run(plain: Server) -> None:
    answer = request(plain.port, "GET", "/score?a=1&b=%5B1,2%5D&c=x&a=2&d=null")
    assert answer.status == 200
    raw = json.loads(answer.body)["raw"]
    assert raw == '{"a": [1, 2], "b": [1, 2], "c": "x", "d": null}'
    empty = request(plain.port, "GET", "/score")
    assert json.loads(empty.body)["raw"] == "{}"


def test_json_dumps_result_is_encoded_twice(plain: Server) -> None:
    answer = request(plain.port, "POST", "/score", "dumps")
    assert answer.status == 200 and answer.content_type == "application/json"
    assert answer.body == b'"{\\"result\\": [1, 2, 3]}"'
    assert json.loads(json.loads(answer.body)) == {"result": [1, 2, 3]}
    assert request(plain.port, "POST", "/score", "none").body == b"{}"  # v1 sends None as {}
    assert request(plain.port, "POST", "/score", "text").body == b'"plain text"'


def test_run_raising_is_a_500_and_the_replica_stays_up(plain: Server) -> None:
    answer = request(plain.port, "POST", "/score", "boom", headers={"x-request-id": "req-boom-1"})
    assert answer.status == 500
    assert json.loads(answer.body) == RUN_FAILED
    assert b"secret detail" not in answer.body
    assert answer.headers["x-ms-run-function-failed"] == "True"
    assert answer.headers["x-request-id"] == "req-boom-1"
    log = _poll(lambda: "req-boom-1" in plain.output() and plain.output(), what="logged traceback")
    assert "ValueError: the secret detail that must not reach the client" in log
    assert "Traceback" in log
    again = request(plain.port, "POST", "/score", "fine")
    assert again.status == 200


def test_unserialisable_result_is_a_500(plain: Server) -> None:
    answer = request(plain.port, "POST", "/score", "set")
    assert answer.status == 500
    assert json.loads(answer.body) == {
        "message": "An unexpected internal error occurred. Check the logs for more info."
    }
    assert answer.headers["x-ms-run-function-failed"] == "False"


def test_request_ids_are_returned_or_generated(plain: Server) -> None:
    given = request(plain.port, "POST", "/score", "x", headers={"x-request-id": "abc", "x-ms-request-id": "def"})
    assert given.headers["x-request-id"] == "abc"
    assert given.headers["x-ms-request-id"] == "def"
    assert given.headers["x-ms-client-request-id"] == "def"
    generated = request(plain.port, "POST", "/score", "x")
    rid = generated.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", rid)
    assert generated.headers["x-ms-request-id"] == rid
    assert request(plain.port, "POST", "/score", "x").headers["x-request-id"] != rid
    too_long = request(plain.port, "POST", "/score", "x", headers={"x-request-id": "x" * 101})
    assert too_long.status == 431
    assert json.loads(too_long.body) == {"message": "x-request-id must not exceed 100 characters"}


def test_ten_megabyte_body(plain: Server) -> None:
    body = "len:" + "a" * (10 * 1024 * 1024)
    answer = request(plain.port, "POST", "/score", body)
    assert answer.status == 200 and json.loads(answer.body) == len(body)
    # A 10 MB answer too: more than the socket takes at once from the worker thread.
    echoed = request(plain.port, "POST", "/score", body[4:])
    assert echoed.status == 200 and json.loads(echoed.body) == {"raw": body[4:], "length": len(body) - 4}


def _raw_exchange(port: int, data: bytes, expect_responses: int, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + timeout
        while received.count(b"HTTP/1.1 ") < expect_responses and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def test_declared_body_over_the_limit_is_413_before_reading_it(plain: Server) -> None:
    head = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 104857601\r\n\r\n"
    received = _raw_exchange(plain.port, head + b"abc", 1)
    assert received.startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close" in received
    assert b'"message": "request body is larger than' in received


def test_streamed_body_over_the_limit_is_413_while_reading(plain: Server) -> None:
    chunk = b"a" * (1024 * 1024)
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    with socket.create_connection(("127.0.0.1", plain.port), timeout=20) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        sent = 0
        try:
            while sent <= 101:  # one chunk past 100 MB; the server answers once it has counted it
                sock.sendall(frame)
                sent += 1
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = b""
        while b"\r\n\r\n" not in received:
            data = sock.recv(65536)
            if not data:
                break
            received += data
    assert received.startswith(b"HTTP/1.1 413 "), received[:200]
    assert request(plain.port, "GET", "/").status == 200


def test_keep_alive_and_pipelining_answer_in_order(plain: Server) -> None:
    one = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nx-request-id: r1\r\n\r\none"
    two = b"GET / HTTP/1.1\r\nHost: x\r\nx-request-id: r2\r\n\r\n"
    three = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nx-request-id: r3\r\n\r\nthree"
    received = _raw_exchange(plain.port, one + two + three, 3)
    assert received.count(b"HTTP/1.1 200 OK") == 3
    order = [m.group(1) for m in re.finditer(rb"x-request-id: (r\d)", received)]
    assert order == [b"r1", b"r2", b"r3"]
    assert received.index(b'"raw": "one"') < received.index(b"Healthy") < received.index(b'"raw": "three"')


def test_input_schema_valid_and_invalid(tmp_path: Path) -> None:
    server = start_replica("schema_sum.py", tmp_path)
    try:
        ok = request(
            server.port, "POST", "/score", '{"data": [[1, 2, 3]], "scale": 2}', {"Content-Type": "application/json"}
        )
        assert (ok.status, ok.body) == (200, b"[12]")
        missing = request(server.port, "POST", "/score", '{"scale": 2}', {"Content-Type": "application/json"})
        assert missing.status == 400
        assert json.loads(missing.body) == {"message": "A value is not provided for the 'data' parameter."}
        not_dict = request(server.port, "POST", "/score", "[1]", {"Content-Type": "application/json"})
        assert (not_dict.status, json.loads(not_dict.body)) == (
            400,
            {"message": "POST body should be a JSON dictionary."},
        )
        no_type = request(server.port, "POST", "/score", '{"data": [[1]]}')
        assert no_type.status == 415
        via_get = request(server.port, "GET", "/score?data=[[1,2]]&scale=3")
        assert (via_get.status, via_get.body) == (200, b"[9]")
        swagger = json.loads(request(server.port, "GET", "/swagger.json").body)
        assert swagger["swagger"] == "2.0"
        assert swagger["definitions"]["ServiceInput"]["example"] == {
            "data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]],
            "scale": 1.0,
        }
        openapi = json.loads(request(server.port, "GET", "/swagger.json?version=3").body)
        assert openapi["openapi"] == "3.0.3"
        assert openapi["components"]["schemas"]["ServiceOutput"]["example"] == [55.0]
        assert json.loads(request(server.port, "GET", "/swagger.json?version=3.1").body)["openapi"] == "3.1.0"
        bad = request(server.port, "GET", "/swagger.json?version=4")
        assert bad.status == 404
        assert json.loads(bad.body) == {"message": "Swagger version [4] is not valid. Supported versions: [2, 3, 3.1]."}
    finally:
        server.stop()


def test_swagger_without_schema(plain: Server) -> None:
    doc = json.loads(request(plain.port, "GET", "/swagger.json").body)
    assert doc["definitions"]["ServiceInput"] == {"type": "object", "example": {}}
    assert list(doc["paths"]) == ["/", "/score", "/swagger.json"]


def test_rawhttp_custom_status_and_headers(tmp_path: Path) -> None:
    server = start_replica("rawhttp_status.py", tmp_path)
    try:
        teapot = request(server.port, "POST", "/score", "teapot")
        assert (teapot.status, teapot.content_type, teapot.body) == (
            418,
            "text/html; charset=utf-8",
            b"short and stout",
        )
        assert teapot.headers["x-custom"] == "a, b"
        made = request(server.port, "POST", "/score", "json")
        assert (made.status, made.content_type, json.loads(made.body)) == (201, "application/json", {"made": "json"})
        failed = request(server.port, "POST", "/score", "fail")
        assert failed.status == 503 and failed.headers["x-ms-run-function-failed"] == "True"
        echoed = request(server.port, "POST", "/score", '{"a": 1}', {"Content-Type": "application/json"})
        assert json.loads(echoed.body) == {"json": {"a": 1}, "content_type": "application/json", "length": 8}
        got = json.loads(request(server.port, "GET", "/score?x=1&y=2&x=3").body)
        assert got == {
            "method": "GET",
            "args": {"x": "1", "y": "2"},
            "path": "/score",
            "full_path": "/score?x=1&y=2&x=3",
        }
    finally:
        server.stop()


def test_request_headers_parameter(tmp_path: Path) -> None:
    server = start_replica("headers_param.py", tmp_path)
    try:
        answer = request(server.port, "POST", "/score", "x", {"X-Custom": "hi"})
        assert json.loads(answer.body) == {"data": "x", "custom": "hi"}
    finally:
        server.stop()


def test_init_raising_exits_3_with_the_traceback(tmp_path: Path) -> None:
    script = SCRIPTS / "init_fails.py"
    argv = [sys.executable, "-m", "modelfleet.replica", "--entry_script", str(script), "--port", "0"]
    argv += ["--port-file", str(tmp_path / "port")]
    done = subprocess.run(argv, cwd=tmp_path, env=base_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert "Traceback" in done.stderr and "RuntimeError: model file is missing" in done.stderr
    assert not (tmp_path / "port").exists()  # it never bound: the supervisor reads "init failed"


def test_contradicting_decorators_are_refused_at_load(tmp_path: Path) -> None:
    server = start_replica("both_decorators.py", tmp_path, wait=False)
    try:
        assert server.proc.wait(30) == 3
        assert "decorated with both @rawhttp and @input_schema; keep one" in server.output()
    finally:
        server.stop()


def test_two_model_layout_and_get_model_path(tmp_path: Path) -> None:
    app = tmp_path / "app"
    models = app / "azureml-models"
    (models / "first" / "1").mkdir(parents=True)
    (models / "first" / "1" / "model.pkl").write_bytes(b"1")
    (models / "first" / "2").mkdir()
    (models / "first" / "2" / "model.pkl").write_bytes(b"2")
    (models / "second" / "3").mkdir(parents=True)
    (models / "second" / "3" / "a.txt").write_text("a")
    (models / "second" / "3" / "b.txt").write_text("b")
    env = {"AML_APP_ROOT": str(app), "AZUREML_MODEL_DIR": str(models)}
    server = start_replica("model_paths.py", tmp_path, env=env, cwd=app)
    try:

        def path_of(body: str) -> str:
            answer = request(server.port, "POST", "/score", body)
            assert answer.status == 200, server.output()
            return json.loads(answer.body)["path"]

        assert path_of("first") == str(models / "first" / "2" / "model.pkl")
        assert path_of("first:1") == str(models / "first" / "1" / "model.pkl")
        assert path_of("second") == str(models / "second" / "3")
        assert request(server.port, "POST", "/score", "third").status == 500
        assert "Model third not found" in _poll(lambda: "third" in server.output() and server.output())
    finally:
        server.stop()
    # One model: AZUREML_MODEL_DIR is its version folder (set through --model_dir here).
    single = start_replica("model_paths.py", tmp_path, args=["--model_dir", str(models / "first" / "2")], cwd=app)
    try:
        answer = json.loads(request(single.port, "POST", "/score", "first:1").body)
        assert answer == {"path": str(models / "first" / "1" / "model.pkl"), "model_dir": str(models / "first" / "2")}
    finally:
        single.stop()


def _start_slow_request(server: Server, tmp: Path, seconds: float) -> tuple[threading.Thread, list[int]]:
    """Send one slow request in a thread and return once run() has started it."""
    marker = tmp / f"running-{time.monotonic_ns()}"
    results: list[int] = []
    body = f"sleep:{seconds}:{marker}"
    thread = threading.Thread(target=lambda: results.append(request(server.port, "POST", "/score", body).status))
    thread.start()
    _poll(marker.exists, what="run() started")
    return thread, results


def test_busy_answer_with_max_concurrent(slow: Server, tmp_path: Path) -> None:
    thread, results = _start_slow_request(slow, tmp_path, 0.4)
    try:
        busy = request(slow.port, "POST", "/score", "sleep:0")
        assert busy.status == 503
        assert busy.headers["x-modelfleet-busy"] == "1"
        assert json.loads(busy.body)["message"].startswith("replica busy")
        live = request(slow.port, "GET", "/")  # liveness answers while run() is busy
        assert live.status == 200
    finally:
        thread.join(10)
    assert results == [200]
    # The slot is free as soon as the answer is out: back-to-back requests never see "busy".
    assert [request(slow.port, "POST", "/score", "sleep:0").status for _ in range(50)] == [200] * 50


def test_scoring_timeout_answers_500_and_frees_the_worker(slow: Server) -> None:
    started = time.monotonic()
    answer = request(slow.port, "POST", "/score", "spin:30")
    assert time.monotonic() - started < 10
    assert answer.status == 500
    assert json.loads(answer.body) == {"message": "Scoring timeout after 700 ms"}
    assert answer.headers["x-ms-run-function-failed"] == "True"
    # The spinning run() was interrupted, so the single worker serves the next request.
    after = _poll(
        lambda: (a := request(slow.port, "POST", "/score", "sleep:0")).status == 200 and a, what="free worker"
    )
    assert after.body == b'"done"'


def test_sigterm_finishes_in_flight_requests_then_exits_0(tmp_path: Path) -> None:
    server = start_replica("slow.py", tmp_path)
    thread, results = _start_slow_request(server, tmp_path, 0.5)
    try:
        server.signal(signal.SIGTERM)
        assert server.proc.wait(10) == 0
    finally:
        thread.join(10)
        server.stop()
    assert results == [200]
    assert "Stopping: finishing 1 in-flight request(s)" in server.output()


def test_cors_origins(tmp_path: Path) -> None:
    server = start_replica("plain_sum.py", tmp_path, env={"AML_CORS_ORIGINS": "http://a.com, http://b.com"})
    try:
        allowed = request(server.port, "POST", "/score", BENCH_BODY, {"Origin": "http://a.com"})
        assert allowed.headers["access-control-allow-origin"] == "http://a.com"
        assert allowed.headers["vary"] == "Origin"
        other = request(server.port, "POST", "/score", BENCH_BODY, {"Origin": "http://evil.com"})
        assert "access-control-allow-origin" not in other.headers
        preflight = request(
            server.port, "OPTIONS", "/score", None, {"Origin": "http://b.com", "Access-Control-Request-Method": "POST"}
        )
        assert preflight.status == 200
        assert preflight.headers["access-control-allow-methods"] == "GET, POST"
    finally:
        server.stop()


def test_python_m_without_entry_script_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "modelfleet.replica"],
        cwd=tmp_path,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "entry_script is required" in proc.stderr


def test_expect_100_continue_and_http10_keep_alive(plain: Server) -> None:
    with socket.create_connection(("127.0.0.1", plain.port), timeout=10) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nExpect: 100-continue\r\n\r\n")
        interim = sock.recv(1024)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"len:12")
        final = b""
        while not final.endswith(b"6"):
            final += sock.recv(1024)
        assert final.startswith(b"HTTP/1.1 200 OK")
    received = _raw_exchange(plain.port, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n", 2)
    first, second = received.split(b"Healthy")[:2]
    assert b"Connection: keep-alive" in first and b"Connection: close" in second


def test_worker_count_runs_requests_side_by_side(tmp_path: Path) -> None:
    server = start_replica("slow.py", tmp_path, args=["--worker_count", "2"])
    try:
        one, first = _start_slow_request(server, tmp_path, 1.0)
        two, second = _start_slow_request(server, tmp_path, 0.1)  # returns once it runs: beside the first
        two.join(10)
        assert second == [200] and first == []  # the second finished while the first still runs
        one.join(10)
        assert first == [200]
    finally:
        server.stop()


def test_source_directory_from_the_environment(tmp_path: Path) -> None:
    """Started as the local supervisor does: app root as cwd, script named by the v1 variables."""
    app = SCRIPTS  # holds app_src/
    env = {"AML_APP_ROOT": str(app), "AZUREML_SOURCE_DIRECTORY": "app_src", "AZUREML_ENTRY_SCRIPT": "score.py"}
    port_file = tmp_path / "port"
    argv = [sys.executable, "-m", "modelfleet.replica", "--port", "0", "--port-file", str(port_file)]
    server = Server(argv, None, app, base_env(env), tmp_path / "replica.log").wait_ready(port_file)
    try:
        answer = request(server.port, "POST", "/score", "21")
        assert (answer.status, answer.body) == (200, b"42")
    finally:
        server.stop()
