"""The local compute target: replica processes on this machine, supervised.

Each replica is ``<environment python> -m modelfleet.replica`` started in the service
generation's app folder with the v1 environment variables. The replica binds port 0 and
writes the port it got to a file, so two replicas never race for a port.

Life of one replica (one supervising task each):

1. launch: start the process, wait until the port file appears and ``GET /`` answers 200,
   at most ``startup_deadline_s`` (v1's initial_delay_seconds). An exit before that is
   INIT_FAILED on the first launch (the deployment fails) and a crash loop later on.
2. watch: every ``period_s`` probe ``GET /`` with ``timeout_s``; ``failure_threshold``
   failures in a row, or the process exiting, end the watch.
3. restart with exponential backoff (1 s doubling to 30 s), counting restarts.

Logs: the replica's stdout and stderr go to ``<service>/logs/replica-<index>.log``; the replica
itself rotates that file by size (``--access-log`` adds its one JSON line per request).

Stopping (after the router drained the replica): SIGTERM, SIGKILL after the grace period.
Replicas get SIGKILL from the kernel if the daemon dies (PR_SET_PDEATHSIG), so a killed
daemon never leaves orphans serving stale code.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modelfleet.targets.base import ReplicaInfo, ReplicaPlan, ReplicaState

log = logging.getLogger("modelfleet.targets.local")

INIT_FAILED_EXIT = 3  # the replica's exit status when init() raised
_MAX_BACKOFF_S = 30.0
_TASK_STOP_S = 5.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


async def probe(port: int, timeout_s: float) -> bool:
    """One liveness probe: ``GET /`` on 127.0.0.1:port answered 200 within ``timeout_s``."""
    # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
    # arrives as the inner call finishes, which would leave a stopping replica's task running.
    attempt = asyncio.ensure_future(_get_root(port))
    try:
        done, _ = await asyncio.wait({attempt}, timeout=timeout_s)
    finally:
        attempt.cancel()
    if not done or attempt.cancelled() or attempt.exception() is not None:
        return False
    return attempt.result()


async def _get_root(port: int) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        status_line = await reader.readline()
        return status_line.split(b" ", 2)[1:2] == [b"200"]
    finally:
        writer.close()


@dataclass
class _Replica:
    info: ReplicaInfo
    plan: ReplicaPlan
    port_file: Path
    proc: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    stopping: bool = False
    ever_ready: bool = False
    first_outcome: asyncio.Future[ReplicaInfo] | None = None
    check_now: asyncio.Event = field(default_factory=asyncio.Event)


class LocalTarget:
    """Starts, watches, restarts and stops replica processes.

    ``on_change(service)`` is called (on the event loop) whenever a replica of that service
    becomes Ready or stops being Ready, so the owner can update the router's replica set.
    """

    def __init__(self, runtime_dir: Path, on_change: Callable[[str], None]) -> None:
        self._runtime_dir = runtime_dir
        self._on_change = on_change
        self._replicas: dict[str, _Replica] = {}

    def __repr__(self) -> str:
        states = ", ".join(f"{r.info.id}={r.info.state.value}" for r in self._replicas.values())
        return f"<LocalTarget {states}>"

    # -- what the reconciler calls -------------------------------------------------------

    async def start(self, plan: ReplicaPlan, index: int) -> ReplicaInfo:
        replica_id = f"{plan.service}-{plan.generation}-{index}"
        service_dir = self._runtime_dir / "services" / plan.service
        (service_dir / "logs").mkdir(parents=True, exist_ok=True)
        (service_dir / "run").mkdir(parents=True, exist_ok=True)
        info = ReplicaInfo(
            id=replica_id,
            service=plan.service,
            generation=plan.generation,
            index=index,
            state=ReplicaState.STARTING,
            pid=None,
            port=None,
            restarts=0,
            log_path=service_dir / "logs" / f"replica-{index}.log",
        )
        replica = _Replica(info=info, plan=plan, port_file=service_dir / "run" / f"{replica_id}.port")
        replica.first_outcome = asyncio.get_running_loop().create_future()
        self._replicas[replica_id] = replica
        replica.task = asyncio.create_task(self._supervise(replica), name=f"supervise {replica_id}")
        return await asyncio.shield(replica.first_outcome)

    async def stop(self, replica_id: str, grace_s: float) -> None:
        replica = self._replicas.pop(replica_id, None)
        if replica is None:
            return
        replica.stopping = True
        replica.check_now.set()  # wake its watch so it sees `stopping`
        was_ready = replica.info.state is ReplicaState.READY
        replica.info.state = ReplicaState.STOPPED
        if was_ready:
            self._on_change(replica.info.service)
        if replica.task is not None:
            replica.task.cancel()
            # bounded: the task also checks `stopping`, so it ends even if a cancel is lost
            await asyncio.wait({replica.task}, timeout=_TASK_STOP_S)
        await _terminate(replica.proc, grace_s)
        log.info("replica %s stopped", replica_id)

    def replicas(self, service: str) -> list[ReplicaInfo]:
        return [r.info for r in self._replicas.values() if r.info.service == service]

    def check_now(self, replica_id: str) -> None:
        """Probe this replica at once (the router saw it fail mid-request)."""
        replica = self._replicas.get(replica_id)
        if replica is not None:
            replica.check_now.set()

    async def stop_all(self, grace_s: float) -> None:
        await asyncio.gather(*(self.stop(rid, grace_s) for rid in list(self._replicas)))

    # -- supervision ---------------------------------------------------------------------

    async def _supervise(self, replica: _Replica) -> None:
        backoff = 1.0
        info = replica.info
        while not replica.stopping:
            ready = await self._launch(replica)
            if not ready:
                if not replica.ever_ready:
                    info.state = ReplicaState.INIT_FAILED
                    _resolve(replica, info)
                    await _terminate(replica.proc, 1.0)
                    return
            else:
                replica.ever_ready = True
                backoff = 1.0
                info.state = ReplicaState.READY
                _resolve(replica, info)
                self._on_change(info.service)
                reason = await self._watch(replica)
                if replica.stopping:
                    return
                info.state = ReplicaState.UNHEALTHY
                info.detail = reason
                self._on_change(info.service)
                log.warning("replica %s %s; restarting in %.0f s", info.id, reason, backoff)
            await _terminate(replica.proc, 2.0)
            info.restarts += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    async def _launch(self, replica: _Replica) -> bool:
        plan, info = replica.plan, replica.info
        info.state = ReplicaState.STARTING
        info.port = None
        with contextlib.suppress(FileNotFoundError):
            replica.port_file.unlink()
        env = dict(os.environ)
        env.update(plan.environment)
        env["PYTHONUNBUFFERED"] = "1"
        # Telemetry (replica/config.py): the replica appends to its log itself and rotates it at
        # MODELFLEET_LOG_MAX_BYTES (an environment variable of the service may change it);
        # the id names its collected-data files; the stats file feeds the daemon's metrics.
        env["MODELFLEET_LOG_FILE"] = str(info.log_path)
        env["MODELFLEET_REPLICA_ID"] = info.id
        env["MODELFLEET_STATS_FILE"] = str(stats_path(replica.port_file.parent, info.id))
        argv = [
            plan.python, "-m", "modelfleet.replica",
            "--entry_script", str(plan.entry_script),
            "--host", "127.0.0.1", "--port", "0",
            "--port-file", str(replica.port_file),
            "--max-concurrent", str(plan.max_concurrent),
            "--access-log",
        ]  # fmt: skip
        if "AZUREML_MODEL_DIR" in plan.environment:
            argv += ["--model_dir", plan.environment["AZUREML_MODEL_DIR"]]
        with open(info.log_path, "ab") as log_file:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            log_file.write(f"--- {stamp} replica {info.id} starting (generation {info.generation})\n".encode())
            log_file.flush()
            replica.proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=plan.app_root,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        info.pid = replica.proc.pid
        deadline = time.monotonic() + plan.probe.startup_deadline_s
        while time.monotonic() < deadline and not replica.stopping:
            if replica.proc.returncode is not None:
                code = replica.proc.returncode
                info.detail = (
                    "init() raised" if code == INIT_FAILED_EXIT else f"exited with status {code}"
                ) + " before the replica was ready"
                return False
            if info.port is None:
                info.port = _read_port(replica.port_file)
            if info.port is not None and await probe(info.port, plan.probe.timeout_s):
                info.detail = None
                return True
            await asyncio.sleep(0.05)
        info.detail = f"not ready within {plan.probe.startup_deadline_s:.0f} s (initial_delay_seconds)"
        return False

    async def _watch(self, replica: _Replica) -> str:
        proc, probe_spec, port = replica.proc, replica.plan.probe, replica.info.port
        assert proc is not None and port is not None
        failures = 0
        exited = asyncio.ensure_future(proc.wait())
        try:
            while not replica.stopping:
                replica.check_now.clear()
                woken = asyncio.ensure_future(replica.check_now.wait())
                done, _ = await asyncio.wait(
                    {exited, woken}, timeout=probe_spec.period_s, return_when="FIRST_COMPLETED"
                )
                woken.cancel()
                if exited in done:
                    return f"exited with status {proc.returncode}"
                if await probe(port, probe_spec.timeout_s):
                    failures = 0
                    continue
                failures += 1
                if failures >= probe_spec.failure_threshold:
                    return f"failed {failures} liveness probes in a row"
            return "stopping"
        finally:
            exited.cancel()


def stats_path(run_dir: Path, replica_id: str) -> Path:
    """Where a replica writes its telemetry counters (``<service>/run/<id>.stats.json``)."""
    return run_dir / f"{replica_id}.stats.json"


def _resolve(replica: _Replica, info: ReplicaInfo) -> None:
    if replica.first_outcome is not None and not replica.first_outcome.done():
        replica.first_outcome.set_result(info)


def _read_port(port_file: Path) -> int | None:
    try:
        text = port_file.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


async def _terminate(proc: asyncio.subprocess.Process | None, grace_s: float) -> None:
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    exited = asyncio.ensure_future(proc.wait())
    done, _ = await asyncio.wait({exited}, timeout=grace_s)
    if not done:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await exited


def current_python() -> str:
    return sys.executable
