"""The local compute target: replica processes on this machine, supervised, behind the
router that runs in the same process (the daemon).

It implements ``targets/base.ComputeTarget``: the reconciler says how many replicas of which
generation; this module starts and stops processes to match, keeps the router's replica set in
step with what is Ready (``targets/routing.py``), and reports every change through the
``watch`` callback.

Each replica is ``<environment python> -m modelfleet.replica`` started in the service
generation's app folder with the v1 environment variables. It listens on a Unix domain socket
in the cluster's private socket folder (mode 0700; the socket itself 0600), so no other local
user can reach a replica around the router's keys, limits and logs (``targets/sockets.py``:
where the folder is, and the short one in /tmp used where a socket path would pass 107
bytes). Where the router or the replica runtime cannot use Unix sockets, replicas listen on
127.0.0.1 with port 0 and write the port they got to a file.

Each service has a secret of its own (``replica_secret``): its replicas get it in
``MODELFLEET_REPLICA_SECRET`` and refuse every request but ``GET /`` that lacks it, and the
router sends it to them (``Upstream.secret``). A root daemon runs every service's replicas as
``nobody`` (``targets/isolation.py``), so a replica of one service can open another's socket;
without that service's secret it is answered 403, and it cannot read that secret from the
other replica's ``/proc`` (it is not dumpable). A daemon run by an ordinary user runs every
replica as that user, who owns the workspace and its keys anyway: there the services are not
walled off from each other, only from other users. The secret is random and kept in memory
only: replicas never outlive the daemon (PR_SET_PDEATHSIG, below; the fork server's replicas
die with their server, and it with the daemon), so a restarted daemon starts every replica
again with a new one, and nothing is written to disk that could leak it.

Life of one replica (one supervising task each):

1. launch: start the process, wait until ``GET /`` on its socket answers 200, at most
   ``startup_deadline_s`` (v1's initial_delay_seconds). An exit before that is INIT_FAILED
   on the first launch (the reconciler fails the deployment) and a crash loop later on.
2. watch: every ``period_s`` probe ``GET /`` with ``timeout_s``; ``failure_threshold``
   failures in a row, or the process exiting, end the watch. While the replica's service has
   answered no request since its last probe, and that probe passed, it is probed every
   ``IDLE_PROBE_PERIODS`` periods instead (v1's 10 s: every 30 s): a thousand idle services
   made a hundred probes a second, a third of an idle daemon's CPU. A request that fails on
   the replica has it probed at once, whatever the period (``check_now``).
3. restart with exponential backoff (1 s doubling to 30 s), counting restarts.

Removing a replica (scale down, retire, delete) follows one order, each step logged: the
router stops assigning to it (it is listed Draining), its in-flight requests finish (at most
the drain time), SIGTERM, then SIGKILL after the grace period.

Logs: the replica's stdout and stderr go to ``<service>/logs/replica-<index>.log``; the replica
itself rotates that file by size (``--access-log`` adds its one JSON line per request).
Replicas get SIGKILL from the kernel if the daemon dies (PR_SET_PDEATHSIG), so a killed
daemon never leaves orphans serving stale code.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from modelfleet.replica.config import SECRET_ENV, ReplicaConfig
from modelfleet.router.proxy import Router, Upstream
from modelfleet.targets import forkserver, isolation
from modelfleet.targets.base import (
    GenerationSpec,
    OnChange,
    ReplicaInfo,
    ReplicaPlan,
    ReplicaState,
    RouteEntry,
)
from modelfleet.targets.forkserver import ForkedProcess, ForkServers
from modelfleet.targets.gpus import GPUS_ENV, GpuPool, gpu_count
from modelfleet.targets.routing import RouterTable
from modelfleet.targets.sockets import SocketFolder
from modelfleet.telemetry.logfiles import chain, tail

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

log = logging.getLogger("modelfleet.targets.local")

INIT_FAILED_EXIT = 3  # the replica's exit status when init() raised
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL after this long
_MAX_BACKOFF_S = 30.0
_TASK_STOP_S = 5.0
_PR_SET_PDEATHSIG = 1
IDLE_PROBE_PERIODS = 3  # an idle service's passing replica: probed every this many periods


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def unix_sockets_supported() -> bool:
    """The replica runtime listens on a Unix socket (``--unix-socket``) and the router can
    reach one (``Upstream.unix_path``)."""
    replica_fields = {f.name for f in dataclasses.fields(ReplicaConfig)}
    return "unix_socket" in replica_fields and "unix_path" in {f.name for f in dataclasses.fields(Upstream)}


_PROBE_REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


async def probe(address: str, timeout_s: float) -> bool:
    """One liveness probe: ``GET /`` on ``address`` (a socket path or host:port) answered 200
    within ``timeout_s``."""
    if sys.version_info >= (3, 11):
        # one timer in this task, no task of its own (a third of a probe's CPU): asyncio.timeout
        # passes on a cancellation from outside even when it comes as the time runs out
        try:
            async with asyncio.timeout(timeout_s):
                return await _get_root(address)
        except Exception:  # refused, reset, timed out: not answering (a cancellation passes)
            return False
    # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
    # arrives as the inner call finishes, which would leave a stopping replica's task running.
    attempt = asyncio.ensure_future(_get_root(address))
    try:
        done, _ = await asyncio.wait({attempt}, timeout=timeout_s)
    finally:
        attempt.cancel()
    if not done or attempt.cancelled() or attempt.exception() is not None:
        return False
    return attempt.result()


async def _get_root(address: str) -> bool:
    """``GET /`` on a bare non-blocking socket: no stream reader, writer or protocol per probe
    (a thousand replicas probed every ``period_s`` cost the daemon a third less CPU so)."""
    loop = asyncio.get_running_loop()
    where: str | tuple[str, int] = address
    if address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        host, port = address.rsplit(":", 1)
        sock, where = socket.socket(socket.AF_INET, socket.SOCK_STREAM), (host, int(port))
    with sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, where)
        await loop.sock_sendall(sock, _PROBE_REQUEST)
        head = b""
        while b"\n" not in head and len(head) < 64:  # the status line (its first bytes suffice)
            chunk = await loop.sock_recv(sock, 64)
            if not chunk:
                break
            head += chunk
    return head.split(b" ", 2)[1:2] == [b"200"]


@dataclass
class _Replica:
    info: ReplicaInfo
    plan: ReplicaPlan
    run_dir: Path
    socket_path: Path | None  # None: TCP on 127.0.0.1 (a runtime without --unix-socket)
    proc: asyncio.subprocess.Process | ForkedProcess | None = None
    task: asyncio.Task[None] | None = None
    stopping: bool = False  # being stopped now: the supervisor ends
    draining: bool = False  # being removed: no restart, no new requests
    stop_task: asyncio.Task[None] | None = None  # the one stop, once begun
    ever_ready: bool = False
    forked: bool = False  # its last launch: forked from a fork server (targets/forkserver.py), or exec'd
    exec_reason: str | None = None  # why that launch was exec'd, when fork is the cluster's setting
    gpus: tuple[int, ...] | None = None  # its devices, from the first launch until it stops
    check_now: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def port_file(self) -> Path:
        return self.run_dir / f"{self.info.id}.port"

    @property
    def live(self) -> bool:
        return not (self.draining or self.stopping)


class LocalTarget:
    """Starts, watches, restarts and stops replica processes; keeps ``router`` in step."""

    def __init__(
        self,
        runtime_dir: Path,
        router: Router,
        token_key: Callable[[], EllipticCurvePublicKey] | None = None,
        *,
        unix_sockets: bool | None = None,
        gpus: int | None = None,
        replica_start: forkserver.StartMode | None = None,
    ) -> None:
        self._runtime_dir = runtime_dir
        self._table = RouterTable(router, token_key)
        self._on_change: OnChange = lambda service: None
        self._replicas: dict[str, _Replica] = {}
        # The same replicas by service: every per-service question is asked once a second per
        # service, so a scan of all replicas would cost O(services²) at 1,000 services.
        self._by_service: dict[str, dict[str, _Replica]] = {}
        self._plans: dict[tuple[str, int], ReplicaPlan] = {}
        self._drains: set[asyncio.Task[None]] = set()
        self._unix = unix_sockets_supported() if unix_sockets is None else unix_sockets
        self._sockets = SocketFolder(runtime_dir)
        self._gpus = GpuPool(gpu_count() if gpus is None else gpus)
        # fork or exec (`cluster start --replica-start`; without one, MODELFLEET_FORK_SERVER or the default)
        self.start_mode = replica_start or forkserver.choose(None, os.environ)
        self._forks = ForkServers(runtime_dir / "forkservers") if self.start_mode.mode == forkserver.FORK else None
        self._exec_reasons_logged: set[str] = set()
        self._secrets: dict[str, str] = {}  # service -> its replicas' secret (see the module's doc)

    def __repr__(self) -> str:
        states = ", ".join(f"{r.info.id}={r.info.state.value}" for r in self._replicas.values())
        return f"<LocalTarget {states}>"

    # -- ComputeTarget ---------------------------------------------------------------------

    def watch(self, on_change: OnChange) -> None:
        self._on_change = on_change

    def replicas(self, service: str) -> list[ReplicaInfo]:
        return [r.info for r in self._of(service)]

    async def apply(self, spec: GenerationSpec) -> None:
        plan = spec.plan
        self._plans[(plan.service, plan.generation)] = plan
        await self.scale(plan.service, plan.generation, spec.replicas)

    async def scale(self, service: str, generation: int, replicas: int, remove: Collection[str] = ()) -> None:
        mine = [r for r in self._of(service) if r.info.generation == generation]
        live = [r for r in mine if r.live]
        if replicas > len(live):
            plan = self._plans.get((service, generation))
            if plan is None:
                raise KeyError(f"generation {generation} of service {service} was never applied")
            used = {r.info.index for r in mine}  # draining ones keep their ids until gone
            free = (i for i in range(len(used) + replicas) if i not in used)
            indexes = [next(free) for _ in range(replicas - len(live))]
            log.info("service %s: starting replicas %s of generation %d", service, indexes, generation)
            for index in indexes:
                self._start(plan, index)
        elif replicas < len(live):
            named = set(remove)
            # named first, then not-Ready ones (they serve nothing), then the highest indexes
            live.sort(key=lambda r: (r.info.id not in named, r.info.state is ReplicaState.READY, -r.info.index))
            self._drain(service, live[: len(live) - replicas], self._table.drain_s(service))

    async def retire(self, service: str, generation: int, drain_s: float) -> None:
        victims = [r for r in self._of(service) if r.info.generation == generation and r.live]
        if victims:
            self._drain(service, victims, drain_s)
        self._plans.pop((service, generation), None)

    def publish(self, route: RouteEntry) -> None:
        self._table.publish(route, self.replica_secret(route.service).encode())
        self._table.router.set_cold_wait(route.service, route.cold_wait_s)  # scale to zero's hold
        self._sync_router(route.service)

    def replica_secret(self, service: str) -> str:
        """The secret the service's replicas require of every request but ``GET /``, made on
        first use: 32 random bytes as urlsafe text (43 visible ASCII bytes), never the same for
        two services. In memory only, for the daemon's life (see the module's doc)."""
        secret = self._secrets.get(service)
        if secret is None:
            secret = self._secrets[service] = secrets.token_urlsafe(32)
        return secret

    def start_status(self) -> dict[str, object]:
        """How replicas start (``cluster status``): the mode, what set it, and how many of the
        live replicas were forked or exec'd, with why those were exec'd."""
        reasons: dict[str, int] = {}
        forked = 0
        for r in self._replicas.values():
            if r.proc is None:
                continue
            forked += r.forked
            if not r.forked and r.exec_reason is not None:
                reasons[r.exec_reason] = reasons.get(r.exec_reason, 0) + 1
        started = sum(r.proc is not None for r in self._replicas.values())
        return {
            "mode": self.start_mode.mode,
            "source": self.start_mode.source,
            "forked": forked,
            "exec": started - forked,
            "exec_reasons": [{"reason": why, "replicas": n} for why, n in reasons.items()],
        }

    def logs(self, service: str, replica_id: str | None = None, tail_lines: int = 5000) -> str:
        infos = [i for i in self.replicas(service) if replica_id in (None, i.id)]
        paths = sorted({i.log_path for i in infos if i.log_path is not None})
        return "".join("".join(tail(chain(p), tail_lines)) for p in paths)

    async def delete(self, service: str, drain_s: float) -> None:
        self._table.remove(service)  # new requests 404, waiting ones 503
        for key in [k for k in self._plans if k[0] == service]:
            del self._plans[key]
        await asyncio.gather(*(self._stop(r, STOP_GRACE_S) for r in self._of(service)))
        if not self._by_service.get(service):
            self._secrets.pop(service, None)  # a service deployed again under this name gets a new one

    def check_now(self, replica_id: str) -> None:
        replica = self._replicas.get(replica_id)
        if replica is not None:
            replica.check_now.set()

    def private_socket(self, name: str) -> Path:
        """A Unix socket path in the replicas' 0700 socket folder (short enough for any workspace
        depth), for a listener of the daemon's own: the router's, that its gRPC API calls."""
        return self._sockets.path_for(name)

    async def close(self, drain_s: float) -> None:
        drains = list(self._drains)
        for task in drains:
            task.cancel()  # their replicas are stopped below, without waiting for a drain
        await asyncio.gather(*(self._stop(r, STOP_GRACE_S) for r in list(self._replicas.values())))
        await asyncio.gather(*drains, return_exceptions=True)
        if self._forks is not None:
            await self._forks.close()
        self._sockets.remove()

    def _of(self, service: str) -> list[_Replica]:
        """The service's replicas (a copy: callers start and stop replicas while they iterate)."""
        return list(self._by_service.get(service, {}).values())

    # -- the router's replica set ------------------------------------------------------------

    def _sync_router(self, service: str) -> None:
        """Hand the router the Ready, live replicas of the serving generation, when they changed."""
        self._table.sync(service, (r.info for r in self._of(service) if r.live))

    def _changed(self, service: str) -> None:
        self._sync_router(service)
        self._on_change(service)

    # -- starting, draining and stopping ---------------------------------------------------

    def _start(self, plan: ReplicaPlan, index: int) -> None:
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
            address=None,
            restarts=0,
            log_path=service_dir / "logs" / f"replica-{index}.log",
        )
        socket_path = self._sockets.path_for(replica_id) if self._unix else None
        replica = _Replica(info=info, plan=plan, run_dir=service_dir / "run", socket_path=socket_path)
        self._replicas[replica_id] = replica
        self._by_service.setdefault(plan.service, {})[replica_id] = replica
        replica.task = asyncio.create_task(self._supervise(replica), name=f"supervise {replica_id}")

    def _drain(self, service: str, victims: list[_Replica], drain_s: float) -> None:
        for r in victims:
            r.draining = True
            r.info.state = ReplicaState.DRAINING
        self._sync_router(service)  # step 1: the router assigns nothing new to them
        task = asyncio.create_task(self._remove(service, victims, drain_s), name=f"drain {service}")
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)
        self._on_change(service)

    async def _remove(self, service: str, victims: list[_Replica], drain_s: float) -> None:
        ids = [r.info.id for r in victims]
        # step 2: wait for their in-flight requests (router.drain logs the counts)
        drained = await self._table.router.drain(service, ids, drain_s)
        # steps 3 and 4: SIGTERM, then SIGKILL after the grace period
        log.info("service %s: stopping %s (drained: %s)", service, ids, drained)
        await asyncio.gather(*(self._stop(r, STOP_GRACE_S) for r in victims))
        log.info("service %s: removed %s", service, ids)
        self._on_change(service)

    async def _stop(self, replica: _Replica, grace_s: float) -> None:
        """Stop the replica's process; it stays listed until the process is gone. Several
        callers (a drain, a delete, close) share one stop, which a cancelled caller does not
        interrupt, so no process is left unreaped."""
        if replica.stop_task is None:
            replica.stop_task = asyncio.create_task(self._stop_now(replica, grace_s), name=f"stop {replica.info.id}")
        await asyncio.shield(replica.stop_task)

    async def _stop_now(self, replica: _Replica, grace_s: float) -> None:
        info = replica.info
        replica.stopping = True
        replica.check_now.set()  # wake its watch so it sees `stopping`
        if not replica.draining:
            info.state = ReplicaState.STOPPED
        self._sync_router(info.service)
        if replica.task is not None:
            replica.task.cancel()
            # bounded: the task also checks `stopping`, so it ends even if a cancel is lost
            await asyncio.wait({replica.task}, timeout=_TASK_STOP_S)
        await _terminate(replica.proc, grace_s)
        if replica.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                replica.socket_path.unlink()
        if replica.gpus:
            self._gpus.give(replica.gpus)
            replica.gpus = None
        if self._replicas.get(info.id) is replica:
            del self._replicas[info.id]
            ours = self._by_service[info.service]
            del ours[info.id]
            if not ours:
                del self._by_service[info.service]
        log.info("replica %s stopped", info.id)

    # -- supervision ---------------------------------------------------------------------

    def _set(self, replica: _Replica, state: ReplicaState, detail: str | None = None) -> None:
        if not replica.live:
            return  # Draining or Stopped stays so
        replica.info.state = state
        replica.info.detail = detail
        self._changed(replica.info.service)

    async def _supervise(self, replica: _Replica) -> None:
        backoff = 1.0
        info = replica.info
        while replica.live:
            ready = await self._launch(replica)
            if not ready:
                if not replica.ever_ready:
                    await _terminate(replica.proc, 1.0)
                    self._set(replica, ReplicaState.INIT_FAILED, info.detail)
                    return
            else:
                replica.ever_ready = True
                backoff = 1.0
                self._set(replica, ReplicaState.READY)
                reason = await self._watch(replica)
                if replica.stopping:
                    return
                if replica.draining:  # it died while draining: nothing to restart
                    await _terminate(replica.proc, 1.0)
                    return
                self._set(replica, ReplicaState.UNHEALTHY, reason)
                log.warning("replica %s %s; restarting in %.0f s", info.id, reason, backoff)
            await _terminate(replica.proc, 2.0)
            info.restarts += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def _argv(self, replica: _Replica) -> list[str]:
        plan = replica.plan
        argv = [
            plan.python, "-m", "modelfleet.replica",
            "--entry_script", str(plan.entry_script),
            "--max-concurrent", str(plan.max_concurrent),
            "--access-log",
        ]  # fmt: skip
        if replica.socket_path is not None:
            argv += ["--unix-socket", str(replica.socket_path)]
        else:
            argv += ["--host", "127.0.0.1", "--port", "0", "--port-file", str(replica.port_file)]
        if "AZUREML_MODEL_DIR" in plan.environment:
            argv += ["--model_dir", plan.environment["AZUREML_MODEL_DIR"]]
        return argv

    async def _launch(self, replica: _Replica) -> bool:
        plan, info = replica.plan, replica.info
        if info.state is not ReplicaState.STARTING:
            self._set(replica, ReplicaState.STARTING, info.detail)
        info.address = None
        for stale in (replica.port_file, replica.socket_path):
            if stale is not None:
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
        if not plan.app_root.is_dir():  # removed from the workspace's cache meanwhile
            info.detail = f"could not start: its app folder {plan.app_root} is missing"
            return False
        env = dict(os.environ)
        env.update(plan.environment)
        if self._gpus.count:
            devices = self._devices(replica)
            if devices is None:
                return False
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
        env["PYTHONUNBUFFERED"] = "1"
        # Telemetry (replica/config.py): the replica appends to its log itself and rotates it at
        # MODELFLEET_LOG_MAX_BYTES (an environment variable of the service may change it);
        # the id names its collected-data files; the stats file feeds the daemon's metrics.
        assert info.log_path is not None
        env["MODELFLEET_LOG_FILE"] = str(info.log_path)
        env["MODELFLEET_REPLICA_ID"] = info.id
        env["MODELFLEET_STATS_FILE"] = str(stats_path(replica.run_dir, info.id))
        # Set last, so no variable of the service's can replace it; exec'd and forked replicas
        # alike read it from their environment (the fork server's children get ``env`` whole).
        env[SECRET_ENV] = self.replica_secret(plan.service)
        with open(info.log_path, "ab") as log_file:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            log_file.write(f"--- {stamp} replica {info.id} starting (generation {info.generation})\n".encode())
            log_file.flush()
            # its memory cgroup and its user (targets/isolation.py), then _die_with_parent
            options = isolation.spawn_options(
                plan, info.id, info.log_path, replica.run_dir, replica.socket_path, then=_die_with_parent, env=env
            )
            argv = self._argv(replica)
            replica.proc, replica.forked = None, False
            why = self._exec_reason(plan)
            if why is None and self._forks is not None:
                # the memory cgroup spawn_options made: the forked child joins it itself
                spawned = isolation._spawned.get(info.id)
                procs = spawned.cgroup.path / "cgroup.procs" if spawned and spawned.cgroup else None
                replica.proc = await self._forks.spawn(plan.python, argv[3:], env, plan.app_root, log_file, procs)
                replica.forked = replica.proc is not None
                if not replica.forked:  # its server failed: as it started (for good), or later (this once)
                    why = self._exec_reason(plan) or "its fork server ended as it was asked (the next one starts anew)"
            replica.exec_reason = why if self._forks is not None else None
            if replica.proc is None:
                if why is not None and self._forks is not None:
                    self._say_exec(info.id, why, log_file)
                try:
                    replica.proc = await asyncio.create_subprocess_exec(
                        *argv,
                        cwd=plan.app_root,
                        env=env,
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=asyncio.subprocess.STDOUT,
                        **options,
                    )
                except OSError as exc:  # its Python or folder went meanwhile: said, not a dead supervisor
                    info.detail = f"could not start: {exc}"
                    return False
        info.pid = replica.proc.pid
        deadline = time.monotonic() + plan.probe.startup_deadline_s
        while time.monotonic() < deadline and replica.live:
            if replica.proc.returncode is not None:
                code = replica.proc.returncode
                info.detail = (
                    isolation.exit_reason(info.id, code)
                    or ("init() raised" if code == INIT_FAILED_EXIT else f"exited with status {code}")
                ) + " before the replica was ready"
                return False
            address = _listening_address(replica)
            if address is not None and await probe(address, plan.probe.timeout_s):
                info.address = address
                info.detail = None
                return True
            await asyncio.sleep(0.05)
        info.detail = f"not ready within {plan.probe.startup_deadline_s:.0f} s (initial_delay_seconds)"
        return False

    def _exec_reason(self, plan: ReplicaPlan) -> str | None:
        """Why this replica is exec'd rather than forked (None: forked; forkserver.exec_reason)."""
        identity = isolation.replica_identity(plan.python)[0]
        failed = self._forks.failed(plan.python) if self._forks is not None else None
        return forkserver.exec_reason(self.start_mode.mode, identity.user if identity else None, failed)

    def _say_exec(self, replica_id: str, why: str, log_file: IO[bytes]) -> None:
        """Fork is the setting, yet this replica is exec'd: its log says why, the daemon's once a reason."""
        log_file.write(f"--- replica {replica_id} is exec'd, not forked: {why}\n".encode())
        log_file.flush()
        if why not in self._exec_reasons_logged:
            self._exec_reasons_logged.add(why)
            log.info("replicas are exec'd, not forked, where %s (replica %s is the first)", why, replica_id)

    def _devices(self, replica: _Replica) -> tuple[int, ...] | None:
        """The replica's GPUs (taken at its first launch); None, with the reason in its detail,
        when too few are free (the room check counts them, but an update's new replicas wait
        for none: the old generation's devices come free only after the new one is Ready)."""
        if replica.gpus is None:
            wanted = int(replica.plan.environment.get(GPUS_ENV) or 0)
            replica.gpus = self._gpus.take(wanted)
            if replica.gpus is None:
                replica.info.detail = (
                    f"asks for {wanted} GPUs and {self._gpus.free} of this machine's {self._gpus.count} are free"
                )
                return None
        return replica.gpus

    async def _watch(self, replica: _Replica) -> str:
        proc, probe_spec, address = replica.proc, replica.plan.probe, replica.info.address
        assert proc is not None and address is not None
        failures = 0
        exited = asyncio.ensure_future(proc.wait())
        replica.check_now.clear()
        # kept across periods until it fires: not a task made and cancelled per probe
        woken = asyncio.ensure_future(replica.check_now.wait())
        skipped, answered = 0, self._answered(replica.info.service)
        try:
            while not replica.stopping:
                done, _ = await asyncio.wait(
                    {exited, woken}, timeout=probe_spec.period_s, return_when="FIRST_COMPLETED"
                )
                nudged = woken in done  # check_now: the router saw it fail mid-request
                if nudged:
                    replica.check_now.clear()
                    woken = asyncio.ensure_future(replica.check_now.wait())
                if exited in done:
                    return isolation.exit_reason(replica.info.id, proc.returncode) or (
                        f"exited with status {proc.returncode}"
                    )
                quiet = not nudged and failures == 0 and skipped < IDLE_PROBE_PERIODS - 1
                if quiet and self._answered(replica.info.service) == answered:  # idle since the last probe
                    skipped += 1
                    continue
                skipped, answered = 0, self._answered(replica.info.service)
                if await probe(address, probe_spec.timeout_s):
                    failures = 0
                    if nudged and replica.live:
                        # the router saw it fail mid-request, yet it answers: let it serve again
                        self._table.router.mark_healthy(replica.info.service, replica.info.id)
                    continue
                failures += 1
                if failures >= probe_spec.failure_threshold:
                    return f"failed {failures} liveness probes in a row"
            return "stopping"
        finally:
            exited.cancel()
            woken.cancel()

    def _answered(self, service: str) -> int | None:
        """Requests the router has answered for ``service`` (None: it routes none)."""
        routed = self._table.router.services.get(service.encode())
        return None if routed is None else routed.metrics.count


def stats_path(run_dir: Path, replica_id: str) -> Path:
    """Where a replica writes its telemetry counters (``<service>/run/<id>.stats.json``)."""
    return run_dir / f"{replica_id}.stats.json"


def _listening_address(replica: _Replica) -> str | None:
    if replica.socket_path is not None:
        if not replica.socket_path.exists():
            return None
        os.chmod(replica.socket_path, 0o600)  # the folder is 0700 already; the socket too, whatever the umask
        return str(replica.socket_path)
    try:
        text = replica.port_file.read_text().strip()
    except FileNotFoundError:
        return None
    return f"127.0.0.1:{text}" if text.isdigit() else None


async def _terminate(proc: asyncio.subprocess.Process | ForkedProcess | None, grace_s: float) -> None:
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
