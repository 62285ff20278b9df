"""Tier 2: the local target on its own, with real replica processes (no daemon, no store).

What it promises the reconciler (``targets/base.ComputeTarget``): replicas it is asked for
become Ready (or InitFailed, with the reason), removals are listed Draining until their
process is gone, and ``close`` leaves nothing running. And, on Unix sockets (issue 12,
defect 4): a replica has no TCP port, its socket is 0600 in a 0700 folder, and a folder too
deep for a socket path gives way to a short private one in /tmp that ``close`` removes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from e2e_support import SCRIPTS, pid_alive
from modelfleet.router.proxy import Router
from modelfleet.targets.base import GenerationSpec, Probe, ReplicaInfo, ReplicaPlan, ReplicaState
from modelfleet.targets.forkserver import EXEC, FORK, StartMode
from modelfleet.targets.local import LocalTarget, probe, unix_sockets_supported
from modelfleet.targets.sockets import SocketFolder

needs_sockets = pytest.mark.skipif(
    not unix_sockets_supported(), reason="the router or the replica runtime cannot use Unix sockets yet"
)


def plan(script: str, generation: int = 1) -> ReplicaPlan:
    return ReplicaPlan(
        service="svc",
        generation=generation,
        python=sys.executable,
        app_root=SCRIPTS / script,
        entry_script=SCRIPTS / script / "score.py",
        environment={},
        max_concurrent=1,
        probe=Probe(period_s=0.5, timeout_s=2.0, failure_threshold=2, startup_deadline_s=30.0),
    )


async def until(condition: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.05)
    return value


def states(target: LocalTarget) -> dict[str, ReplicaState]:
    return {r.id: r.state for r in target.replicas("svc")}


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


@pytest.mark.parametrize("sockets", [False, pytest.param(True, marks=needs_sockets)], ids=["tcp", "unix"])
def test_replicas_start_ready_drain_on_scale_down_and_stop_on_close(tmp_path: Path, sockets: bool) -> None:
    async def scenario() -> None:
        changes: list[str] = []
        target = LocalTarget(tmp_path / "runtime", Router(), unix_sockets=sockets)
        target.watch(changes.append)
        await target.apply(GenerationSpec(plan("sum"), 2))
        assert set(states(target).values()) == {ReplicaState.STARTING}  # apply does not wait
        await until(lambda: set(states(target).values()) == {ReplicaState.READY})
        assert changes and set(changes) == {"svc"}
        replicas = target.replicas("svc")
        for r in replicas:
            assert r.address is not None and r.pid is not None
            assert r.address.startswith("/") == sockets
            assert await probe(r.address, 2.0)

        await target.scale("svc", 1, 1, remove=["svc-1-0"])
        assert states(target)["svc-1-0"] is ReplicaState.DRAINING
        await until(lambda: list(states(target)) == ["svc-1-1"])
        victim = next(r for r in replicas if r.id == "svc-1-0")
        assert victim.pid is not None and not pid_alive(victim.pid)

        await target.close(0.0)
        assert target.replicas("svc") == []
        assert not any(pid_alive(r.pid) for r in replicas if r.pid)

    run(scenario)


def test_a_replica_whose_init_raises_is_init_failed_and_not_restarted(tmp_path: Path) -> None:
    async def scenario() -> None:
        target = LocalTarget(tmp_path / "runtime", Router(), unix_sockets=False)
        await target.apply(GenerationSpec(plan("failing_init"), 1))
        [r] = await until(lambda: [r for r in target.replicas("svc") if r.state is ReplicaState.INIT_FAILED])
        assert r.detail == "init() raised before the replica was ready" and r.restarts == 0
        assert "model file is corrupt" in target.logs("svc")
        await target.close(0.0)

    run(scenario)


@needs_sockets
def test_a_replica_has_no_tcp_port_and_a_private_socket(tmp_path: Path) -> None:
    async def scenario() -> None:
        deep = tmp_path / ("x" * 60) / "runtime"  # too deep for a 107-byte socket path
        target = LocalTarget(deep, Router())
        await target.apply(GenerationSpec(plan("sum"), 1))
        [r] = await until(lambda: [r for r in target.replicas("svc") if r.state is ReplicaState.READY])
        assert isinstance(r, ReplicaInfo) and r.address is not None and r.pid is not None
        path = Path(r.address)
        assert len(os.fsencode(path)) <= 107
        assert path.parent.parent == Path(tempfile.gettempdir()) and path.parent.name.startswith("mf-")
        assert private(path.parent, r.pid)
        assert stat.S_ISSOCK(path.lstat().st_mode) and stat.S_IMODE(path.lstat().st_mode) == 0o600
        assert _listening_tcp_ports(r.pid) == []
        await target.close(0.0)
        assert not path.parent.exists()  # the short folder goes with the target

    run(scenario)


def test_a_short_socket_folder_left_by_a_killed_daemon_is_removed(tmp_path: Path) -> None:
    runtime = tmp_path / ("x" * 80) / "runtime"
    runtime.mkdir(parents=True)
    left = Path(tempfile.mkdtemp(prefix="mf-"))
    (runtime / "socket-dir").write_text(str(left))
    not_ours = tmp_path / "keep"
    not_ours.mkdir()

    sockets = SocketFolder(runtime)
    path = sockets.path_for("svc-1-0")
    assert not left.exists() and path.parent != left and path.parent.exists()
    assert len(os.fsencode(path)) <= 107 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    sockets.remove()
    assert not path.parent.exists()
    # a record that names anything but a folder of ours is never followed
    (runtime / "socket-dir").write_text(str(not_ours))
    SocketFolder(runtime).remove()
    assert not_ours.exists()


def test_a_shallow_workspace_keeps_its_sockets_in_its_own_folder(tmp_path: Path) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="ws-"))  # short enough for any replica id
    try:
        path = SocketFolder(runtime).path_for("svc-1-0")
        assert path == runtime / "sockets" / "svc-1-0.sock"
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        shutil.rmtree(runtime)


def private(folder: Path, replica_pid: int) -> bool:
    """0700, or 0730 where the replica runs as another user (a root daemon's replicas run as
    nobody, targets/isolation.py) and the group is that user's own: nobody else may enter."""
    st = folder.stat()
    mode = stat.S_IMODE(st.st_mode)
    if mode == 0o700:
        return True
    with open(f"/proc/{replica_pid}/status") as f:
        gid = next(int(line.split()[1]) for line in f if line.startswith("Gid:"))
    return mode == 0o730 and st.st_gid == gid != os.getgid()


def _listening_tcp_ports(pid: int) -> list[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    ports = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_an_idle_services_replica_is_probed_every_idle_probe_periods(tmp_path: Path) -> None:
    """A thousand idle services made a hundred probes a second (v1's 10 s period): while a
    service answers no request, its passing replica is probed every IDLE_PROBE_PERIODS periods;
    still probed, and a frozen one is still found (tests/e2e/test_faults.py)."""

    async def scenario() -> None:
        target = LocalTarget(tmp_path / "runtime", Router(), unix_sockets=False)
        await target.apply(GenerationSpec(plan("sum"), 1))  # period 0.5 s; the router routes nothing
        [r] = await until(lambda: [r for r in target.replicas("svc") if r.state is ReplicaState.READY])
        assert r.log_path is not None
        await asyncio.sleep(6.0)
        await target.close(0.0)
        probes = sum('"route": "/"' in line for line in r.log_path.read_text().splitlines())
        # 12 at one a period; one every 3 periods is 4 (the launch's probe, not logged or logged, aside)
        assert 2 <= probes <= 7, f"{probes} probes in 6 s at a 0.5 s period"

    run(scenario)


@pytest.mark.parametrize("start", [FORK, EXEC])
def test_a_replica_that_cannot_be_started_is_init_failed_naming_why(tmp_path: Path, start: str) -> None:
    """Its app folder is gone (removed from the workspace cache meanwhile): InitFailed, naming
    the folder, whether forked or exec'd (an exec'd one's supervisor used to die with the
    exception, leaving the replica Starting for ever)."""

    async def scenario() -> None:
        target = LocalTarget(tmp_path / "runtime", Router(), unix_sockets=False, replica_start=StartMode(start, "test"))
        app = tmp_path / "gone"
        gone = ReplicaPlan(**{**plan("sum").__dict__, "app_root": app, "entry_script": app / "score.py"})
        await target.apply(GenerationSpec(gone, 1))
        [r] = await until(lambda: [r for r in target.replicas("svc") if r.state is ReplicaState.INIT_FAILED], 10)
        assert r.detail is not None and "could not start" in r.detail and str(app) in r.detail, r.detail
        await target.close(0.0)

    run(scenario)
