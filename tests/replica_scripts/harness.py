"""Helpers for the replica tests: start real replica (or azmlinfsrv) processes and talk HTTP.

Imported by tests/replica/test_replica_*.py as ``replica_scripts.harness``; no test lives here.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent


def reference_server() -> str | None:
    """Path of azmlinfsrv: $MODELFLEET_REFERENCE_SERVER, else /tmp/azref/bin/azmlinfsrv, else None."""
    for candidate in (os.environ.get("MODELFLEET_REFERENCE_SERVER"), "/tmp/azref/bin/azmlinfsrv"):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = body.encode() if isinstance(body, str) else body
        conn.request(method, path, body=data, headers=dict(headers or {}))
        resp = conn.getresponse()
        merged: dict[str, str] = {}
        for name, value in resp.getheaders():
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        return Answer(resp.status, merged, resp.read())
    finally:
        conn.close()


class Server:
    """A server process (ours or the reference) on 127.0.0.1:port, stopped by its own pid."""

    def __init__(self, argv: Sequence[str], port: int | None, cwd: Path, env: Mapping[str, str], log: Path):
        self.port = port
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(argv), cwd=cwd, env=dict(env), stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text(errors="replace")

    def wait_ready(self, port_file: Path | None = None, timeout: float = 30.0) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            if port_file is not None and self.port is None and port_file.exists():
                text = port_file.read_text().strip()
                self.port = int(text) if text else None
            if self.port is not None:
                try:
                    if request(self.port, "GET", "/", timeout=2).status == 200:
                        return self
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.output()}")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            # The reference runs gunicorn with a worker child: signal the whole session group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log_file.close()
        return self.proc.returncode


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZUREML_", "AML_", "SCORING_", "WORKER_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def start_replica(
    script: str | Path,
    tmp: Path,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    wait: bool = True,
) -> Server:
    """``python -m modelfleet.replica`` on a free port (``--port 0 --port-file``), ready to serve."""
    port_file = tmp / f"port-{time.monotonic_ns()}"
    argv = [sys.executable, "-m", "modelfleet.replica", "--entry_script", str(SCRIPTS / script)]
    argv += ["--port", "0", "--port-file", str(port_file), *args]
    server = Server(
        argv, None, cwd or tmp, base_env(env), tmp / f"replica-{Path(script).stem}-{time.monotonic_ns()}.log"
    )
    if wait:
        server.wait_ready(port_file)
    return server


def start_reference(script: str, tmp: Path, env: Mapping[str, str] | None = None) -> Server:
    """azmlinfsrv for the same script (not waited for: call ``wait_ready()``)."""
    binary = reference_server()
    assert binary is not None
    port = free_port()
    argv = [binary, "--entry_script", str(SCRIPTS / script), "--port", str(port)]
    log = tmp / f"reference-{Path(script).stem}-{time.monotonic_ns()}.log"
    return Server(argv, port, tmp, base_env(env), log)
