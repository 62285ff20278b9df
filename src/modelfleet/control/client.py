"""The SDK's and CLI's side of the admin API, and starting the daemon on demand.

``ensure_running`` finds the workspace's daemon from ``runtime/cluster.json`` (checking
that its pid is alive and its admin API answers) and otherwise starts one, detached, with
its output in ``runtime/daemon.log`` (rotated by size by the daemon: ``daemon.log.1`` ...
``.5``). Two callers racing to start it are safe: the daemon
holds an exclusive lock, so the second one exits at once and both callers find the first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import modelfleet
from modelfleet.control.paths import DAEMON_PROTOCOL, RuntimePaths
from modelfleet.errors import ClusterUnavailable, Conflict, ModelfleetError, NotFound

_START_TIMEOUT_S = 30.0
_ANY_VERSION = ("/v1/status", "/v1/shutdown")  # what any daemon answers: look, and stop


class ClusterClient:
    def __init__(self, workspace_root: Path, runtime_dir: Path) -> None:
        self.workspace_root = workspace_root
        self.paths = RuntimePaths(runtime_dir)

    # -- finding and starting the daemon --------------------------------------------------

    def info(self) -> dict[str, Any] | None:
        """The running daemon's cluster.json, or None when no live daemon answers."""
        try:
            info: dict[str, Any] = json.loads(self.paths.cluster_json.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if not _pid_alive(int(info.get("pid", 0))):
            return None
        try:
            self._call("GET", "/v1/status", info=info, timeout=5.0)
        except (ClusterUnavailable, OSError):
            return None
        return info

    def ensure_running(
        self, port: int | None = None, host: str = "127.0.0.1", grpc_port: int | None = None
    ) -> dict[str, Any]:
        info = self.info()
        if info is not None and mismatch(info) is None:
            return info
        if info is not None:
            # an upgrade: the daemon (and its router) came from another modelfleet; replicas die
            # with it and the new one restores every service with the same keys and URIs
            print(f"{mismatch(info)}: restarting it (services come back with the same keys and URIs)", file=sys.stderr)
            self.stop()
        self.paths.root.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "modelfleet.control.daemon", "--detach"]
        argv += ["--workspace", str(self.workspace_root), "--host", host]
        argv += ["--log-file", str(self.paths.daemon_log)]  # the daemon rotates it by size
        if port is not None:
            argv += ["--port", str(port)]
        if grpc_port is not None:
            argv += ["--grpc-port", str(grpc_port)]
        with open(self.paths.daemon_log, "ab") as log_file:
            # the daemon forks itself into the background; this returns once it serves or has failed
            started = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                close_fds=True,
                timeout=_START_TIMEOUT_S,
                check=False,
            )
        if started.returncode != 0:
            raise ClusterUnavailable(f"the local cluster failed to start: {_last_error(self.paths.daemon_log)}")
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            info = self.info()
            if info is not None:
                return info
            time.sleep(0.05)
        raise ClusterUnavailable(
            f"the local cluster did not start within {_START_TIMEOUT_S:.0f} s; see {self.paths.daemon_log}"
        )

    def stop(self, timeout: float = 60.0) -> bool:
        """Ask the daemon to stop and wait until it has; False when none was running."""
        info = self.info()
        if info is None:
            return False
        self._call("POST", "/v1/shutdown", info=info)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _pid_alive(int(info["pid"])):
                return True
            time.sleep(0.05)
        raise ClusterUnavailable(f"the local cluster (pid {info['pid']}) did not stop within {timeout:.0f} s")

    # -- admin calls ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/v1/status")

    def sync(self, service: str) -> None:
        self._call("POST", f"/v1/services/{service}/sync")

    def delete(self, service: str) -> None:
        self._call("DELETE", f"/v1/services/{service}")

    def _call(
        self, method: str, path: str, *, info: dict[str, Any] | None = None, timeout: float = 600.0
    ) -> dict[str, Any]:
        if info is None:
            info = self.info()
            if info is None:
                raise ClusterUnavailable("the local cluster is not running; start it with `modelfleet cluster start`")
            different = mismatch(info)
            if different is not None and path not in _ANY_VERSION:
                raise ClusterUnavailable(
                    f"{different}; restart it: `modelfleet cluster stop` then `modelfleet cluster start` "
                    "(services come back with the same keys and URIs)"
                )
        token = self.paths.admin_token.read_text().strip()
        request = urllib.request.Request(
            f"http://127.0.0.1:{info['admin_port']}{path}",
            method=method,
            headers={"Authorization": f"Bearer {token}", "Content-Length": "0"},
        )
        for attempt in range(_BUSY_RETRIES + 1):
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    answer: dict[str, Any] = json.loads(response.read() or b"{}")
                    return answer
            except urllib.error.HTTPError as exc:
                message = _message(exc.read()) or str(exc)
                if exc.code == 503 and exc.headers.get("Retry-After") and attempt < _BUSY_RETRIES:
                    time.sleep(1.0)  # every connection of the admin API is taken (control/admin.py)
                    continue
                if exc.code == 404:
                    raise NotFound(message) from None
                if exc.code == 409:
                    raise Conflict(message) from None
                raise ModelfleetError(message) from None
            except (urllib.error.URLError, ConnectionError) as exc:
                raise ClusterUnavailable(f"the local cluster's admin API did not answer: {exc}") from None
        raise AssertionError("unreachable: the last attempt returns or raises")


# a 503 with Retry-After (the admin API's connections are all taken) is tried again, once a
# second, this many times: a burst of calls from a team's scripts waits instead of failing
_BUSY_RETRIES = 10


def mismatch(info: dict[str, Any]) -> str | None:
    """Why the daemon described by ``info`` (its cluster.json) is not this modelfleet's, or None.
    Daemons from before this check wrote no version: they count as different."""
    theirs, protocol = info.get("modelfleet"), info.get("protocol")
    if theirs == modelfleet.__version__ and protocol == DAEMON_PROTOCOL:
        return None
    return (
        f"the running cluster daemon (pid {info.get('pid')}) is modelfleet {theirs or 'older than 0.1.0'} "
        f"(admin protocol {protocol or 0}); this is modelfleet {modelfleet.__version__} (protocol {DAEMON_PROTOCOL})"
    )


def _last_error(log_path: Path) -> str:
    """The daemon log's last error line, with the log's path for the rest."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"see {log_path}"
    errors = [line for line in lines if " ERROR " in line or "Error" in line]
    return f"{errors[-1].strip() if errors else 'no error line'} (see {log_path})"


def _message(body: bytes) -> str | None:
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) is not alive for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
