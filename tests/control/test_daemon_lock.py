"""The daemon's lock: one daemon per workspace, and a start right after a daemon was killed
waits for the dead one's lock instead of taking it for a live daemon (``daemon.take_lock``).

A daemon SIGKILLed with a thousand replicas holds its lock for seconds while the kernel tears it
down; a CLI command meanwhile started a daemon that saw the lock held, said "another daemon
already runs" and left, and the CLI then waited 30 s for a daemon that never came. Here the
test process holds the lock as the dying daemon would, and lets it go a second later."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from e2e_support import stop_cluster, wait_until
from modelfleet import Workspace


def _daemon(ws: Workspace, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "modelfleet.control.daemon", "--workspace", str(ws.path), "--no-dashboard"]
    return subprocess.Popen([*argv, "--log-file", str(log)], stdin=subprocess.DEVNULL)


def test_a_start_waits_for_a_dying_daemons_lock_and_then_serves(tmp_path: Path) -> None:
    ws = Workspace.create("lock", tmp_path / "ws")
    paths = ws.cluster().paths
    paths.root.mkdir(parents=True, exist_ok=True)
    held = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)  # the killed daemon's, not yet torn down
    proc = _daemon(ws, tmp_path / "daemon.log")
    try:
        time.sleep(1.0)
        assert proc.poll() is None, "the new daemon gave up while the old one's lock was still held"
        os.close(held)  # the kernel is done with the old daemon
        info = wait_until(ws.cluster().info, timeout=30)
        assert info["pid"] == proc.pid
    finally:
        stop_cluster(ws)
        proc.wait(timeout=30)


def test_a_second_daemon_leaves_at_once_while_one_serves(tmp_path: Path) -> None:
    ws = Workspace.create("lock", tmp_path / "ws")
    first = ws.cluster().ensure_running()
    try:
        started = time.monotonic()
        second = _daemon(ws, tmp_path / "second.log")
        assert second.wait(timeout=10) == 0
        assert time.monotonic() - started < 8  # it saw a daemon answer: no 15 s wait for the lock
        assert "another daemon already runs" in (tmp_path / "second.log").read_text()
        assert ws.cluster().info()["pid"] == first["pid"]  # type: ignore[index]
    finally:
        stop_cluster(ws)
