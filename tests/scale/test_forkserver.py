"""Issue 16: replicas forked from a fork server (the default way replicas start) behave as exec'd
ones: Ready, restarted after a crash, InitFailed with the reason, and nothing left after close.

The local target on its own with real replica processes; their parent is read from /proc.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from modelfleet.router.proxy import Router
from modelfleet.targets.base import GenerationSpec, Probe, ReplicaPlan, ReplicaState
from modelfleet.targets.forkserver import FORK_SERVER_ENV
from modelfleet.targets.local import LocalTarget, probe

SCRIPTS = Path(__file__).parent.parent / "e2e_scripts"


def _plan(script: str, service: str = "svc") -> ReplicaPlan:
    return ReplicaPlan(
        service=service,
        generation=1,
        python=sys.executable,
        app_root=SCRIPTS / script,
        entry_script=SCRIPTS / script / "score.py",
        environment={"GREETING": "hello"},
        max_concurrent=1,
        probe=Probe(period_s=0.5, timeout_s=2.0, failure_threshold=2, startup_deadline_s=30.0),
    )


async def _until(condition: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
    return value


def _parent(pid: int | None) -> int:
    assert pid is not None
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("PPid:")[1].split()[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_forked_replicas_serve_restart_fail_and_stop_like_execd_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FORK_SERVER_ENV, "1")

    async def scenario() -> None:
        target = LocalTarget(tmp_path / "runtime", Router(), unix_sockets=False)
        pids: set[int] = set()
        try:
            await target.apply(GenerationSpec(_plan("env_probe"), 2))
            ready = lambda: {r.state for r in target.replicas("svc")} == {ReplicaState.READY}  # noqa: E731
            await _until(ready)
            replicas = target.replicas("svc")
            servers = {_parent(r.pid) for r in replicas}
            assert len(servers) == 1 and servers != {os.getpid()}  # forked by one server, not by us
            (server,) = servers
            pids |= {server, *(r.pid for r in replicas if r.pid)}
            secret = {"x-modelfleet-replica-secret": target.replica_secret("svc")}
            for r in replicas:
                assert r.address is not None and await probe(r.address, 2.0)
                # a forked replica gets its service's secret too: nothing scores it without
                url = f"http://{r.address}/score"
                refused = await asyncio.to_thread(requests.post, url, json={}, timeout=30)
                assert refused.status_code == 403
                # the service's environment reaches score.py (/proc/PID/environ shows the server's)
                answer = await asyncio.to_thread(requests.post, url, json={}, headers=secret, timeout=30)
                assert answer.json()["greeting"] == "hello"
            log = Path(replicas[0].log_path or "").read_text()
            assert "init() completed" in log  # its stdout and stderr go to its own log

            victim = replicas[0]
            os.kill(victim.pid or 0, signal.SIGKILL)  # a crash: restarted, forked again
            await _until(lambda: victim.restarts == 1 and victim.state is ReplicaState.READY and victim.pid)
            assert _parent(victim.pid) == server
            pids.add(victim.pid or 0)

            await target.apply(GenerationSpec(_plan("failing_init", service="bad"), 1))
            (failed,) = await _until(lambda: [r for r in target.replicas("bad") if r.state is ReplicaState.INIT_FAILED])
            assert failed.detail == "init() raised before the replica was ready"
        finally:
            await target.close(0.0)
        await _until(lambda: not any(_alive(p) for p in pids), timeout=30)

    asyncio.run(scenario())
