"""Issue 16: how replicas start is a cluster setting, ``cluster start --replica-start fork|exec``.

The choice and its precedence as pure functions; then the local target with real replica
processes: a forked replica is held to its memory limit by the cgroup it joins itself, and a
replica whose interpreter has no working fork server is exec'd, with the reason in its log and
in the target's status; then the CLI: the flag stored, shown by ``cluster status``, refused
with the allowed values, and refused while a cluster runs with the other mode.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from e2e_support import (
    cli,
    deploy,
    pid_alive,
    root_daemon_with_nobody_replicas,
    stop_cluster,
    system_python,
    wait_until,
)
from modelfleet import Workspace
from modelfleet.errors import ConfigError
from modelfleet.router.proxy import Router
from modelfleet.targets import forkserver, isolation
from modelfleet.targets.base import GenerationSpec, Probe, ReplicaPlan, ReplicaState
from modelfleet.targets.forkserver import EXEC, FORK, FORK_SERVER_ENV, StartMode
from modelfleet.targets.local import LocalTarget

SCRIPTS = Path(__file__).parent.parent / "e2e_scripts"

# -- the choice, as plain data ---------------------------------------------------------------


def test_the_variable_overrides_the_setting_which_overrides_the_default() -> None:
    assert forkserver.choose(None, {}) == StartMode(forkserver.DEFAULT, "default")
    assert forkserver.choose("exec", {}) == StartMode(EXEC, "cluster start --replica-start")
    assert forkserver.choose("fork", {}) == StartMode(FORK, "cluster start --replica-start")
    for raw, mode in (("1", FORK), ("fork", FORK), ("FORK", FORK), ("0", EXEC), ("exec", EXEC)):
        assert forkserver.choose("fork" if mode == EXEC else "exec", {FORK_SERVER_ENV: raw}) == StartMode(
            mode, FORK_SERVER_ENV
        )
    assert forkserver.choose("exec", {FORK_SERVER_ENV: ""}).mode == EXEC  # empty: unset


def test_a_bad_value_names_the_flag_or_the_variable_and_the_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"^--replica-start must be one of fork, exec \(got 'spawn'\)$"):
        forkserver.parse_mode("spawn")
    with pytest.raises(ConfigError, match=r"^MODELFLEET_FORK_SERVER must be one of 1, 0, fork, exec \(got 'yes'\)$"):
        forkserver.choose(None, {FORK_SERVER_ENV: "yes"})
    with pytest.raises(ConfigError, match="--replica-start must be one of fork, exec"):
        forkserver.choose("vfork", {})  # a stored value is checked as the flag's


def test_fork_keeps_every_guarantee_or_the_replica_is_execd_with_the_reason() -> None:
    assert forkserver.exec_reason(FORK, None, None) is None
    assert forkserver.exec_reason(EXEC, None, None) == "--replica-start exec"
    other_user = forkserver.exec_reason(FORK, "nobody", None)
    assert other_user is not None and other_user.startswith("it runs as user nobody")
    failed = forkserver.exec_reason(FORK, None, "it ended")
    assert failed == "the fork server for its interpreter failed (it ended)"


# -- the local target, real replicas ---------------------------------------------------------


def _plan(script: str, service: str, python: str = sys.executable, **environment: str) -> ReplicaPlan:
    return ReplicaPlan(
        service=service,
        generation=1,
        python=python,
        app_root=SCRIPTS / script,
        entry_script=SCRIPTS / script / "score.py",
        environment={"GREETING": "hello", **environment},
        max_concurrent=1,
        probe=Probe(period_s=0.5, timeout_s=5.0, failure_threshold=3, startup_deadline_s=60.0),
    )


async def _until(condition: Callable[[], Any], timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
    return value


def _parent(pid: int | None) -> int:
    assert pid is not None
    return int(Path(f"/proc/{pid}/status").read_text().split("PPid:")[1].split()[0])


def _cgroup_available() -> bool:
    cgroup, _ = isolation.memory_cgroup("probe-fork-setting", 64 * 1024 * 1024)
    if cgroup is not None:
        cgroup.path.rmdir()
    return cgroup is not None


@pytest.mark.skipif(not _cgroup_available(), reason="no memory cgroup can be made here")
def test_a_forked_replica_joins_its_memory_cgroup_and_is_killed_past_its_limit(tmp_path: Path) -> None:
    async def scenario() -> None:
        target = LocalTarget(tmp_path / "rt", Router(), unix_sockets=False, replica_start=StartMode(FORK, "test"))
        limit = str(200 * 1024 * 1024)
        try:
            await target.apply(GenerationSpec(_plan("env_probe", "fits", **{isolation.MEMORY_LIMIT_ENV: limit}), 1))
            (replica,) = await _until(lambda: [r for r in target.replicas("fits") if r.state is ReplicaState.READY])
            assert _parent(replica.pid) != os.getpid()  # forked by a server, not exec'd by us
            memory = next(
                line for line in Path(f"/proc/{replica.pid}/cgroup").read_text().splitlines() if "memory" in line
            )
            assert f"/{replica.id}." in memory  # its own cgroup, as an exec'd replica's
            assert target.start_status() == {
                "mode": FORK, "source": "test", "forked": 1, "exec": 0, "exec_reasons": []
            }  # fmt: skip

            # init() touches 600 MB: the kernel kills it at 200, and the reason says so
            await target.apply(GenerationSpec(_plan("hog_init", "hog", **{isolation.MEMORY_LIMIT_ENV: limit}), 1))
            (failed,) = await _until(lambda: [r for r in target.replicas("hog") if r.state is ReplicaState.INIT_FAILED])
            assert failed.detail is not None and failed.detail.startswith("killed: out of memory"), failed.detail
        finally:
            await target.close(0.0)

    asyncio.run(scenario())


def _python_without_a_fork_server(folder: Path) -> Path:
    """An interpreter that runs everything but the fork server (say, a runtime copy without it)."""
    python = folder / "python"
    python.write_text(
        "#!/bin/sh\n"
        'case "$*" in *modelfleet.replica.forkserver*) echo "no fork server in this environment" >&2; exit 1;; esac\n'
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o700)
    return python


def test_an_interpreter_without_a_working_fork_server_gets_execd_replicas_and_says_why(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)  # out of reach of `nobody`: a root daemon runs its replicas as itself
    python = _python_without_a_fork_server(private)
    assert isolation.replica_identity(str(python))[0] is None

    async def scenario() -> None:
        runtime = tmp_path / "rt"
        target = LocalTarget(runtime, Router(), unix_sockets=False, replica_start=StartMode(FORK, "test"))
        try:
            await target.apply(GenerationSpec(_plan("env_probe", "svc", python=str(python)), 2))
            ready = await _until(
                lambda: (
                    (r := [r for r in target.replicas("svc") if r.state is ReplicaState.READY]) and len(r) == 2 and r
                )
            )
            for replica in target.replicas("svc"):
                assert _parent(replica.pid) == os.getpid()  # exec'd by the target itself
            status = target.start_status()
            assert (status["forked"], status["exec"]) == (0, 2)
            ((why, count),) = [(e["reason"], e["replicas"]) for e in status["exec_reasons"]]
            assert why.startswith("the fork server for its interpreter failed (before its first replica: "), why
            assert count == 2
            log = Path(ready[0].log_path or "").read_text()
            assert f"is exec'd, not forked: {why}" in log
            # tried once for that interpreter, not once per replica
            assert (runtime / "forkservers" / "forkserver.log").read_text().count("no fork server") == 1
        finally:
            await target.close(0.0)

    asyncio.run(scenario())


def test_a_forked_replica_gets_its_services_interpreter_variables_and_not_the_daemons_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PYTHONPATH is read as an interpreter starts: a service that sets it gets a server of its own
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "mf_tiny_a.py").write_text("VALUE = 'from the PYTHONPATH of the service'\n")
    # the daemon's folder is first on its fork server's sys.path (-m): a replica must not see it
    daemon_cwd = tmp_path / "cwd"
    daemon_cwd.mkdir()
    (daemon_cwd / "mf_tiny_b.py").write_text("VALUE = 'from the daemon folder'\n")
    monkeypatch.chdir(daemon_cwd)
    monkeypatch.delenv("PYTHONPATH", raising=False)

    async def scenario() -> None:
        target = LocalTarget(tmp_path / "rt", Router(), unix_sockets=False, replica_start=StartMode(FORK, "test"))
        try:
            await target.apply(GenerationSpec(_plan("env_probe", "plain"), 1))
            await target.apply(GenerationSpec(_plan("env_probe", "pathed", PYTHONPATH=str(extra)), 1))
            for service in ("plain", "pathed"):
                await _until(lambda s=service: [r for r in target.replicas(s) if r.state is ReplicaState.READY])
            answers = {}
            for service in ("plain", "pathed"):
                (replica,) = target.replicas(service)
                assert _parent(replica.pid) != os.getpid()  # forked
                headers = {"x-modelfleet-replica-secret": target.replica_secret(service)}
                url = f"http://{replica.address}/score"
                answer = await asyncio.to_thread(requests.post, url, json={}, headers=headers, timeout=30)
                answers[service] = answer.json()["modules"]
            assert answers["pathed"]["mf_tiny_a"] == "from the PYTHONPATH of the service"
            assert answers["plain"]["mf_tiny_a"] is None
            assert answers["plain"]["mf_tiny_b"] is None and answers["pathed"]["mf_tiny_b"] is None
            servers = {_parent(r.pid) for s in ("plain", "pathed") for r in target.replicas(s)}
            assert len(servers) == 2  # one server per interpreter and set of start-up variables
        finally:
            await target.close(0.0)

    asyncio.run(scenario())


def _signals(pid: int | None) -> tuple[str, str]:
    status = Path(f"/proc/{pid}/status").read_text()
    return status.split("SigIgn:")[1].split()[0], status.split("SigCgt:")[1].split()[0]


def test_a_forked_replica_ignores_and_catches_the_signals_an_execd_one_does(tmp_path: Path) -> None:
    # SIGPIPE left at its default would kill a forked replica writing to a client that went away
    async def scenario() -> None:
        forked = LocalTarget(tmp_path / "f", Router(), unix_sockets=False, replica_start=StartMode(FORK, "test"))
        execd = LocalTarget(tmp_path / "e", Router(), unix_sockets=False, replica_start=StartMode(EXEC, "test"))
        try:
            for target in (forked, execd):
                await target.apply(GenerationSpec(_plan("env_probe", "svc"), 1))
            ready = [
                await _until(lambda t=t: [r for r in t.replicas("svc") if r.state is ReplicaState.READY])
                for t in (forked, execd)
            ]
            (f,), (e,) = ready
            assert _parent(f.pid) != os.getpid() and _parent(e.pid) == os.getpid()
            assert _signals(f.pid) == _signals(e.pid)
        finally:
            await forked.close(0.0)
            await execd.close(0.0)

    asyncio.run(scenario())


@pytest.mark.parametrize("mode", [FORK, EXEC])
def test_a_replica_runs_its_scripts_atexit_functions_as_it_stops_forked_or_execd(tmp_path: Path, mode: str) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "score.py").write_text(
        "import atexit, os\n"
        "def _done():\n"
        "    open(os.environ['DONE_FILE'], 'a').write('atexit ran\\n')\n"
        "def init():\n"
        "    atexit.register(_done)\n"
        "def run(raw):\n"
        "    return 'ok'\n"
    )
    done = tmp_path / "done.txt"
    plan = dataclasses.replace(
        _plan("env_probe", "svc", DONE_FILE=str(done)), app_root=app, entry_script=app / "score.py"
    )

    async def scenario() -> None:
        target = LocalTarget(tmp_path / "rt", Router(), unix_sockets=False, replica_start=StartMode(mode, "test"))
        try:
            await target.apply(GenerationSpec(plan, 1))
            (replica,) = await _until(lambda: [r for r in target.replicas("svc") if r.state is ReplicaState.READY])
            assert (_parent(replica.pid) != os.getpid()) == (mode == FORK)
            headers = {"x-modelfleet-replica-secret": target.replica_secret("svc")}
            url = f"http://{replica.address}/score"
            answer = await asyncio.to_thread(requests.post, url, json={}, headers=headers, timeout=30)
            assert answer.status_code == 200
        finally:
            await target.close(0.0)
        assert done.read_text().splitlines() == ["atexit ran"]  # as an exec'd interpreter exits

    asyncio.run(scenario())


def test_proc_shows_a_forked_replicas_own_environment(tmp_path: Path) -> None:
    # a forked replica's /proc/PID/environ shows what an exec'd one's would (not its server's)
    async def scenario() -> None:
        target = LocalTarget(tmp_path / "rt", Router(), unix_sockets=False, replica_start=StartMode(FORK, "test"))
        try:
            await target.apply(GenerationSpec(_plan("env_probe", "svc"), 1))
            (replica,) = await _until(lambda: [r for r in target.replicas("svc") if r.state is ReplicaState.READY])
            assert _parent(replica.pid) != os.getpid()  # forked
            shown = [i for i in Path(f"/proc/{replica.pid}/environ").read_bytes().split(b"\0") if i]
            assert b"GREETING=hello" in shown
            assert f"MODELFLEET_REPLICA_SECRET={target.replica_secret('svc')}".encode() in shown
            assert not any(i.startswith(b"MODELFLEET_FORK_SERVER_ROOM=") for i in shown)
            server = Path(f"/proc/{_parent(replica.pid)}/environ").read_bytes()
            assert b"GREETING" not in server  # the server's own is left as it was
        finally:
            await target.close(0.0)

    asyncio.run(scenario())


def test_a_spawn_given_up_before_its_answer_kills_its_child_and_the_next_gets_its_own(tmp_path: Path) -> None:
    # A replica stopped while its fork was asked for (a redeploy right after a restart) used to
    # leave its child running untracked, and hand that child's pid to the next replica.
    argv = ["--entry_script", str(SCRIPTS / "env_probe" / "score.py"), "--host", "127.0.0.1", "--port", "0"]

    async def scenario() -> None:
        servers = forkserver.ForkServers(tmp_path / "fs")
        env = dict(os.environ)
        try:
            with open(tmp_path / "first.log", "ab") as first, open(tmp_path / "second.log", "ab") as second:
                asked = asyncio.create_task(servers.spawn(sys.executable, argv, env, tmp_path, first))
                # the server is still importing the runtime: the request waits for its answer
                await _until(lambda: any(s.pending for s in servers._servers.values()))
                asked.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await asked
                proc = await servers.spawn(sys.executable, argv, env, tmp_path, second)
            assert proc is not None
            (server,) = servers._servers.values()
            await _until(lambda: f"[{proc.pid}]" in (tmp_path / "second.log").read_text())  # it is the second
            # the first's child was killed: the server has one child left, the second
            await _until(lambda: _children(server.proc.pid) == {proc.pid}, timeout=30)
        finally:
            await servers.close()

    asyncio.run(scenario())


def test_a_spawn_that_finds_the_server_dead_before_its_first_fork_does_not_start_another(tmp_path: Path) -> None:
    # The replica tests above saw this one time in a few hundred: the second replica's spawn came
    # between the server's end and the first spawn's resuming to record it, and started a second
    # server for an interpreter whose first had already failed. That moment, held still: the
    # server is started as the first spawn starts it, and has ended before anyone looks.
    python = _python_without_a_fork_server(tmp_path)
    argv = ["--entry_script", str(SCRIPTS / "env_probe" / "score.py"), "--host", "127.0.0.1", "--port", "0"]

    async def scenario() -> None:
        servers = forkserver.ForkServers(tmp_path / "fs")
        try:
            started = await servers._server((str(python), ()))
            await started.reader  # it ended before its first fork; no spawn has said so yet
            with open(tmp_path / "replica.log", "ab") as log_file:
                assert await servers.spawn(str(python), argv, {}, tmp_path, log_file) is None  # exec it
            assert (tmp_path / "fs" / "forkserver.log").read_text().count("no fork server") == 1  # one start
            failed = servers.failed(str(python))
            assert failed is not None and failed.startswith("before its first replica: the fork server ended"), failed
        finally:
            await servers.close()

    asyncio.run(scenario())


def test_a_child_that_ends_before_its_spawn_resumes_is_still_handed_over_with_its_status(tmp_path: Path) -> None:
    # The server's answer (the child's pid) and the child's exit can be read in one go, before the
    # spawn waiting for that answer resumes: the spawn used to look the child up by pid then, and
    # found it gone (KeyError). Holding the event loop still between the request and the answer
    # makes that order certain: a child with a flag the replica refuses exits within it.
    refused = ["--no-such-flag"]

    async def scenario() -> None:
        servers = forkserver.ForkServers(tmp_path / "fs")
        env = dict(os.environ)
        try:
            with open(tmp_path / "first.log", "ab") as first, open(tmp_path / "second.log", "ab") as second:
                await servers.spawn(sys.executable, refused, env, tmp_path, first)  # the server up
                asked = asyncio.create_task(servers.spawn(sys.executable, refused, env, tmp_path, second))
                await asyncio.sleep(0)  # the task runs up to its wait for the answer: the request is sent
                assert any(s.pending for s in servers._servers.values())  # asked, not answered
                time.sleep(2.0)  # the loop held: the child forks, refuses the flag and exits meanwhile
                proc = await asyncio.wait_for(asked, 30)
            assert proc is not None
            assert await asyncio.wait_for(proc.wait(), 30) == 2  # argparse's exit status
            assert "--no-such-flag" in (tmp_path / "second.log").read_text()
        finally:
            await servers.close()

    asyncio.run(scenario())


def _children(parent: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


# -- the CLI ---------------------------------------------------------------------------------


def _status(ws: Workspace) -> dict[str, Any]:
    return json.loads(cli(ws, "cluster", "status", "-o", "json").stdout)


def test_cluster_start_stores_the_setting_shows_it_and_refuses_a_bad_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(FORK_SERVER_ENV, raising=False)  # the variable would override the flag
    ws = Workspace.create("forksetting", tmp_path / "ws")
    bad = cli(ws, "cluster", "start", "--replica-start", "spawn", check=False)
    assert bad.returncode != 0 and "--replica-start must be one of fork, exec (got 'spawn')" in bad.stderr
    assert ws.cluster().info() is None  # nothing started
    try:
        cli(ws, "cluster", "start", "--replica-start", "exec")
        deploy(ws, "summer", "sum")
        status = _status(ws)
        assert status["replicaStart"] == {  # -o json: v1's camelCase keys
            "mode": EXEC, "source": "cluster start --replica-start", "forked": 0, "exec": 1, "execReasons": []
        }  # fmt: skip
        (replica,) = status["services"]["summer"]["replicas"]
        assert _parent(replica["pid"]) == status["pid"]  # exec'd by the daemon
        text = cli(ws, "cluster", "status").stdout
        assert "replicas start by exec (cluster start --replica-start): 0 forked, 1 exec'd" in text
        # the other mode while it runs: refused, the running one kept
        running = cli(ws, "cluster", "start", "--replica-start", "fork", check=False)
        assert running.returncode != 0 and "cluster stop" in running.stderr
        stop_cluster(ws)

        cli(ws, "cluster", "start", "--replica-start", "fork")  # remembered: the service comes back forked
        wait_until(lambda: _status(ws)["replicaStart"]["forked"] == 1, timeout=60)
        status = _status(ws)
        assert status["replicaStart"]["mode"] == FORK
        (replica,) = status["services"]["summer"]["replicas"]
        server = _parent(replica["pid"])
        assert server != status["pid"] and _parent(server) == status["pid"]  # forked by the daemon's fork server
        stop_cluster(ws)  # `cluster stop`: the server goes with its replicas
        wait_until(lambda: not pid_alive(server), timeout=30)

        cli(ws, "cluster", "start")  # fork, remembered; then the daemon is killed
        wait_until(lambda: _status(ws)["replicaStart"]["forked"] == 1, timeout=60)
        status = _status(ws)
        (replica,) = status["services"]["summer"]["replicas"]
        server = _parent(replica["pid"])
        os.kill(status["pid"], signal.SIGKILL)
        wait_until(lambda: not any(pid_alive(p) for p in (status["pid"], server, replica["pid"])), timeout=30)
    finally:
        stop_cluster(ws)


@pytest.mark.skipif(
    os.geteuid() != 0 or system_python() is None, reason="needs root and a system python3 of this version"
)
def test_a_replica_that_runs_as_nobody_is_execd_and_status_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FORK_SERVER_ENV, "fork")  # the root daemon inherits it
    with root_daemon_with_nobody_replicas("forknobody") as workspace:
        deploy(workspace, "who", "sum")
        status = workspace.cluster().status()
        (replica,) = status["services"]["who"]["replicas"]
        assert _parent(replica["pid"]) == status["pid"]  # exec'd by the daemon, not forked
        start = status["replica_start"]
        assert (start["mode"], start["source"], start["forked"], start["exec"]) == (FORK, FORK_SERVER_ENV, 0, 1)
        ((reason, count),) = [(e["reason"], e["replicas"]) for e in start["exec_reasons"]]
        assert reason.startswith("it runs as user nobody") and count == 1
        log = (workspace.path / ".modelfleet" / "runtime" / "services" / "who" / "logs" / "replica-0.log").read_text()
        assert f"is exec'd, not forked: {reason}" in log
