"""Shared helpers for the end-to-end tests: a workspace with a running local cluster."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import modelfleet
from modelfleet import AksWebservice, Environment, InferenceConfig, Model, Webservice, Workspace

SCRIPTS = Path(__file__).parent / "e2e_scripts"
SUM_BODY = json.dumps({"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]})


def deploy(
    ws: Workspace,
    name: str,
    script: str,
    models: list[Model] | None = None,
    wait: bool = True,
    **settings: Any,
) -> Webservice:
    settings.setdefault("num_replicas", 1)
    ic = InferenceConfig(entry_script="score.py", source_directory=SCRIPTS / script, environment=Environment("e2e"))
    dc = AksWebservice.deploy_configuration(**settings)
    service = Model.deploy(ws, name, models or [], ic, dc, overwrite=True)
    if wait:
        service.wait_for_deployment(timeout_sec=60)
    return service


def register_json_model(ws: Workspace, tmp: Path, name: str, weight: float) -> Model:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps({"weight": weight}))
    return Model.register(ws, model_path=path, model_name=name)


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped meanwhile: reading its stat says ESRCH
        return False


def cluster_pids(ws: Workspace) -> list[int]:
    """The daemon's pid and every replica's, while the cluster runs."""
    cluster = ws.cluster()
    info = cluster.info()
    if info is None:
        return []
    pids = [int(info["pid"])]
    for service in cluster.status()["services"].values():
        pids += [r["pid"] for r in service["replicas"] if r["pid"]]
    return pids


def stop_cluster(ws: Workspace) -> None:
    """Stop the cluster and check that it left no process behind."""
    pids = cluster_pids(ws)
    ws.cluster().stop()
    wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=30)


def raw_exchange(uri: str, head: bytes, body: bytes = b"", timeout: float = 10.0) -> tuple[int, bytes]:
    """Send hand-made request bytes (e.g. a Content-Length no client library would send) and
    return the status code and the body of the answer."""
    parts = urlsplit(uri)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        header_block, _, rest = data.partition(b"\r\n\r\n")
        status = int(header_block.split(b" ", 2)[1])
        length = 0
        for line in header_block.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return status, rest


def cli(ws: Workspace, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``modelfleet -w <ws> ARGS`` as a user would; with ``check``, it must succeed."""
    result = subprocess.run(
        [sys.executable, "-m", "modelfleet", "-w", str(ws.path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def system_python() -> str | None:
    """An interpreter outside /root (which ``nobody`` cannot enter) of this Python version, or None."""
    candidate = Path("/usr/bin/python3")
    if not candidate.exists():
        return None
    version = subprocess.run([str(candidate), "-c", "import sys; print(sys.version_info[:2])"], capture_output=True)
    return str(candidate) if version.stdout.decode().strip() == str(tuple(sys.version_info[:2])) else None


@contextlib.contextmanager
def root_daemon_with_nobody_replicas(name: str) -> Iterator[Workspace]:
    """A workspace whose cluster daemon runs as root on ``system_python()`` in a folder every
    user may enter (pytest's own tmp folder is 0700), so its replicas run as ``nobody``;
    stopped and removed at the end. Needs root and ``system_python()``."""
    top = Path(tempfile.mkdtemp(prefix=f"mf-{name}-"))
    os.chmod(top, 0o755)
    workspace = Workspace.create(name, top / "ws")
    paths = [str(Path(modelfleet.__file__).parents[1]), *(p for p in sys.path if p.endswith("site-packages"))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    argv = [str(system_python()), "-m", "modelfleet.control.daemon", "--detach", "--workspace", str(workspace.path)]
    argv += ["--log-file", str(workspace.path / ".modelfleet" / "runtime" / "daemon.log")]
    try:
        # the detached daemon keeps whatever output it was given open: give it none
        subprocess.run(argv, env=env, check=True, timeout=60, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        yield workspace
    finally:
        stop_cluster(workspace)
        shutil.rmtree(top, ignore_errors=True)
