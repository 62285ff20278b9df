"""Who can reach a replica: on a Unix domain socket (mode 0600, no TCP port at all), or on TCP
with the router's secret required on every request but the liveness probe."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from replica_scripts.harness import SCRIPTS, Server, base_env, request, start_replica
from replica_scripts.wire import get, read_answer

SECRET = "s3cret-for-this-cluster"
HEADER = "x-modelfleet-replica-secret"


def _start_on_socket(path: Path, tmp: Path, script: str = "plain_sum.py") -> Server:
    argv = [sys.executable, "-m", "modelfleet.replica", "--entry_script", str(SCRIPTS / script)]
    server = Server([*argv, "--unix-socket", str(path)], None, tmp, base_env(), tmp / f"uds-{time.monotonic_ns()}.log")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"replica exited with {server.proc.returncode}:\n{server.output()}")
        # A stale socket file may be there before the replica's own: ask it.
        if path.exists() and stat.S_ISSOCK(path.lstat().st_mode) and _live(path):
            return server
        time.sleep(0.05)
    raise RuntimeError(f"no socket at {path}:\n{server.output()}")


def _live(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(2)
        try:
            sock.connect(str(path))
            sock.sendall(get())
            return read_answer(sock).status == 200
        except OSError:
            return False


def _tcp_listening_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix domain sockets here")
def test_a_replica_on_a_unix_socket_has_no_tcp_port(tmp_path: Path) -> None:
    path = tmp_path / "replica.sock"
    server = _start_on_socket(path, tmp_path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), timeout=10) as client:
            assert client.get("http://replica/").text == "Healthy"
            scored = client.post("http://replica/score", content='{"data": [[1, 2, 3]]}')
            assert (scored.status_code, scored.json()) == (200, [6])
        assert not _socket_inodes(server.proc.pid) & _tcp_listening_inodes()
        assert f"Listening on unix:{path}" in server.output()
    finally:
        assert server.stop() == 0
    assert not path.exists()  # removed on a clean stop


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix domain sockets here")
def test_a_stale_socket_is_replaced_and_any_other_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "replica.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # what a SIGKILLed replica leaves behind
    stale.close()
    server = _start_on_socket(path, tmp_path)
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), timeout=10) as client:
            assert client.get("http://replica/").status_code == 200
    finally:
        assert server.stop() == 0

    regular = tmp_path / "not-a-socket"
    regular.write_text("keep me")
    argv = [sys.executable, "-m", "modelfleet.replica", "--entry_script", str(SCRIPTS / "plain_sum.py")]
    done = subprocess.run(
        [*argv, "--unix-socket", str(regular)], env=base_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "exists and is not a socket" in done.stderr
    assert regular.read_text() == "keep me"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("secret")
    server = start_replica("echo_env.py", tmp, env={"MODELFLEET_REPLICA_SECRET": SECRET})
    try:
        yield server
    finally:
        assert server.stop() == 0


def test_without_the_secret_only_liveness_answers(guarded: Server) -> None:
    assert request(guarded.port, "GET", "/").status == 200  # probes carry no secret
    for method, path, headers in (
        ("POST", "/score", {}),
        ("POST", "/score", {HEADER: "wrong"}),
        ("POST", "/score", {HEADER: SECRET[:-1]}),
        ("GET", "/score", {}),
        ("GET", "/swagger.json", {}),
        ("OPTIONS", "/", {}),
        ("GET", "/nope", {}),
    ):
        answer = request(guarded.port, method, path, "x" if method == "POST" else None, headers)
        assert answer.status == 403, (method, path, headers)
        assert answer.content_type == "application/json"
        assert HEADER in json.loads(answer.body)["message"]


def test_with_the_secret_the_script_never_sees_it(guarded: Server) -> None:
    answer = request(guarded.port, "POST", "/score", "x", {HEADER: SECRET, "X-Other": "1"})
    assert answer.status == 200
    seen = json.loads(answer.body)
    assert HEADER not in seen["headers"] and "x-other" in seen["headers"]
    assert seen["secret_in_environment"] is False
    assert SECRET not in guarded.output()
    assert request(guarded.port, "GET", "/swagger.json", headers={HEADER: SECRET}).status == 200


def test_the_secret_setting_is_checked_and_never_printed(tmp_path: Path) -> None:
    from modelfleet.errors import ConfigError
    from modelfleet.replica.config import parse_config

    script = ["--entry_script", str(SCRIPTS / "plain_sum.py")]
    config = parse_config(script, {"MODELFLEET_REPLICA_SECRET": SECRET}, str(tmp_path))
    assert config.secret == SECRET and SECRET not in repr(config)
    with pytest.raises(ConfigError, match="MODELFLEET_REPLICA_SECRET is set but empty"):
        parse_config(script, {"MODELFLEET_REPLICA_SECRET": ""}, str(tmp_path))


def test_an_address_in_use_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [sys.executable, "-m", "modelfleet.replica", "--entry_script", str(SCRIPTS / "plain_sum.py")]
        done = subprocess.run([*argv, "--port", str(port)], env=base_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}:" in done.stderr
    assert "Traceback" not in done.stderr
