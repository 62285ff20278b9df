"""Router worker processes: the local cluster's router on more than one core.

``modelfleet cluster start --router-workers N [--router-slots partitioned|shared]`` (kept in
the workspace like the router's limits; default 1: the router runs in the daemon alone, as it
always did). With N > 1 the daemon starts N-1 worker processes
(``python -m modelfleet.control.router_worker``, the daemon's own Python); the daemon's router
and every worker listen on the router port with SO_REUSEPORT, and the kernel spreads new
connections over them (the plain-HTTP port beside TLS too; the gRPC API stays in the daemon).

Each worker holds a ``router_fleet.FleetRouter`` equal to the daemon's: ``RouterWorkers`` takes
every table call the daemon's router gets (``FleetRouter.fanout``) as one line of JSON over a
Unix socket in the runtime's 0700 socket folder (``targets/sockets.py``) and sends it to every
worker; a worker that connects (a new one, or one restarted) first gets its settings and the
whole table (the last call of each kind per service, in order), then listens. The protocol,
one JSON object a line:

- daemon -> worker: ``config`` (slots, worker count, router limits), table calls (``op`` as
  the ``Router`` method: ``set_service``... with routes as plain data, keys as key material),
  ``listen`` (host, port, http port, TLS files), ``drain`` (with an ``id``), ``stop``.
- worker -> daemon: ``hello`` (index, pid), ``ready``, ``stats`` about every second (its
  ``stats()``, its counters since the last report), ``replica_failed``, ``drained``.

A worker that exits is started again after ``RESTART_DELAY_S`` (its clients' connections went
with it; new ones land on the others meanwhile); one that loses the daemon exits. ``stop``
(at cluster stop, after the services have drained) asks each to stop and waits for it, then
kills what is left after ``STOP_WAIT_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modelfleet.control.router_fleet import SLOT_MODES, FleetRouter, add_metrics
from modelfleet.errors import ConfigError

__all__ = ["SETTING", "RouterWorkers", "WorkerSettings", "load", "max_workers", "save"]

log = logging.getLogger("modelfleet.router.workers")

SETTING = "router_workers"
RESTART_DELAY_S = 0.5
STOP_WAIT_S = 5.0
READY_WAIT_S = 30.0
LINE_LIMIT = 64 * 1024 * 1024  # one message a line: a service's replica list, or a route


def max_workers(cores: int | None = None) -> int:
    """At most 4 router processes per core: past that they only take turns."""
    return 4 * max(1, cores if cores is not None else (os.cpu_count() or 1))


@dataclass(frozen=True)
class WorkerSettings:
    workers: int = 1
    # measured (bench/router_workers.py, the README's "Router workers"): shared slots collide on
    # the replicas (hundreds of busy answers in seconds at and over capacity), partitioned ones never
    slots: str = "partitioned"

    def __post_init__(self) -> None:
        top = max_workers()
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or not 1 <= self.workers <= top:
            raise ConfigError(
                f"--router-workers must be an integer from 1 to {top} (4 per core here; got {self.workers!r})"
            )
        if self.slots not in SLOT_MODES:
            raise ConfigError(f"--router-slots must be one of {', '.join(SLOT_MODES)} (got {self.slots!r})")


def load(store: Any) -> WorkerSettings:
    stored = store.get_setting(SETTING)
    if not stored:
        return WorkerSettings()
    data = json.loads(stored)
    try:
        return WorkerSettings(workers=int(data.get("workers", 1)), slots=str(data.get("slots", "partitioned")))
    except ConfigError:  # stored on a machine with more cores: as many as this one allows
        return WorkerSettings(workers=max_workers(), slots=str(data.get("slots", "partitioned")))


def save(store: Any, workers: int | None = None, slots: str | None = None) -> WorkerSettings:
    """Store the settings with these changes; a bad value is refused naming the flag."""
    current = load(store)
    settings = WorkerSettings(
        workers=current.workers if workers is None else workers, slots=current.slots if slots is None else slots
    )
    store.set_setting(SETTING, json.dumps(asdict(settings)))
    return settings


class _Link:
    """The daemon's end of one worker's connection."""

    def __init__(self, index: int, pid: int, writer: asyncio.StreamWriter) -> None:
        self.index = index
        self.pid = pid
        self.writer = writer
        self.pending: dict[int, asyncio.Future[bool]] = {}

    def send(self, msg: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")


class RouterWorkers:
    """The daemon's side: starts, feeds, watches and stops workers 1..N-1 of ``router``."""

    def __init__(
        self,
        router: FleetRouter,
        socket_path: Path,
        listen: dict[str, Any],
        limits: dict[str, Any],
        on_replica_failed: Any,
    ) -> None:
        self.router = router
        self.socket_path = socket_path
        self._config = {"op": "config", "workers": router.workers, "slots": router.slots, "limits": limits}
        self._listen = {"op": "listen", **listen}
        self._on_replica_failed = on_replica_failed
        self._journal: dict[tuple[str, str], dict[str, Any]] = {}
        self._links: dict[int, _Link] = {}
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._ready: dict[int, asyncio.Event] = {}
        self._stats: dict[int, dict[str, dict[str, Any]]] = {}
        self._answered: dict[int, int] = {}
        self._merged: dict[str, int] = {}  # service ("" outside any) -> answers added from workers
        self.restarts: dict[int, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._server: asyncio.AbstractServer | None = None
        self._seq = 0
        self._stopping = False
        router.fanout = self.broadcast
        router.remote_drain = self.drain
        router.remote_stats = lambda: list(self._stats.values())

    async def start(self) -> None:
        """Listen for workers, start them, and wait (up to ``READY_WAIT_S``) until each listens."""
        self.socket_path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, str(self.socket_path), limit=LINE_LIMIT)
        os.chmod(self.socket_path, 0o600)
        for index in range(1, self.router.workers):
            self._ready[index] = asyncio.Event()
            self.restarts[index] = 0
            self._tasks.append(asyncio.get_running_loop().create_task(self._supervise(index)))
        waits = [e.wait() for e in self._ready.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), READY_WAIT_S)
        except asyncio.TimeoutError:
            log.warning("router workers: not all listening after %.0f s; the daemon serves meanwhile", READY_WAIT_S)
        log.info(
            "router workers: %d processes share the router port (slots %s)", self.router.workers, self.router.slots
        )

    async def stop(self) -> None:
        """Ask each worker to stop (in order), wait for it, kill what is left after ``STOP_WAIT_S``."""
        self._stopping = True
        for task in self._tasks:  # no restart from here on
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in list(self._links.values()):
            link.send({"op": "stop"})
        for index in sorted(self._procs):
            proc = self._procs[index]
            try:
                await asyncio.wait_for(proc.wait(), STOP_WAIT_S)
            except asyncio.TimeoutError:
                log.warning("router worker %d (pid %d) did not stop; killing it", index, proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.socket_path.unlink(missing_ok=True)

    async def _supervise(self, index: int) -> None:
        while not self._stopping:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "modelfleet.control.router_worker",
                "--socket",
                str(self.socket_path),
                "--index",
                str(index),
                stdin=asyncio.subprocess.DEVNULL,
            )
            self._procs[index] = proc
            code = await proc.wait()
            if self._stopping:
                return
            self.restarts[index] += 1
            log.warning("router worker %d (pid %d) exited (%s); starting it again", index, proc.pid, code)
            await asyncio.sleep(RESTART_DELAY_S)

    # -- the table, to every worker --------------------------------------------------------

    def broadcast(self, msg: dict[str, Any]) -> None:
        op = msg["op"]
        service = msg["route"]["name"] if "route" in msg else msg["service"]
        if op == "remove_service":
            for key in [k for k in self._journal if k[0] == service]:
                del self._journal[key]
            self._merged.pop(service, None)
        elif op != "mark_healthy":
            key = (service, "route" if op in ("set_service", "set_endpoint") else op)
            self._journal.pop(key, None)  # last call of each kind, in the order they came
            self._journal[key] = msg
        for link in list(self._links.values()):
            link.send(msg)

    async def drain(self, service: str, replica_ids: list[str], timeout_s: float) -> bool:
        loop = asyncio.get_running_loop()
        futs = []
        for link in list(self._links.values()):
            self._seq += 1
            fut: asyncio.Future[bool] = loop.create_future()
            link.pending[self._seq] = fut
            link.send({"op": "drain", "id": self._seq, "service": service, "ids": replica_ids, "timeout_s": timeout_s})
            futs.append(fut)
        if not futs:
            return True
        try:
            return all(await asyncio.wait_for(asyncio.gather(*futs), timeout_s + 1.0))
        except asyncio.TimeoutError:
            return False

    # -- one worker's connection ---------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link: _Link | None = None
        try:
            hello = json.loads(await reader.readline() or b"null")
            if not isinstance(hello, dict) or hello.get("op") != "hello" or hello.get("index") not in self._ready:
                return
            link = _Link(int(hello["index"]), int(hello["pid"]), writer)
            # settings, the whole table, then listen: nothing awaits in between, so no call is missed
            link.send(self._config)
            for msg in self._journal.values():
                link.send(msg)
            link.send(self._listen)
            self._links[link.index] = link
            while line := await reader.readline():
                self._on_message(link, json.loads(line))
        except (ConnectionError, ValueError) as exc:
            log.warning("router worker connection: %s", exc)
        finally:
            if link is not None:
                if self._links.get(link.index) is link:
                    del self._links[link.index]
                self._stats.pop(link.index, None)
                self._ready[link.index].clear()
                for fut in link.pending.values():
                    if not fut.done():
                        fut.set_result(True)  # its connections, and requests, went with it
            writer.close()

    def _on_message(self, link: _Link, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "stats":
            self._stats[link.index] = msg["stats"]
            self._answered[link.index] = self._answered.get(link.index, 0)
            services = self.router.services
            for name, delta in msg["metrics"].items():
                svc = services.get(name.encode())
                if svc is not None:
                    added = add_metrics(svc.metrics, delta)
                    self._merged[name] = self._merged.get(name, 0) + added
                    self._answered[link.index] += added
            if msg.get("unrouted"):
                added = add_metrics(self.router.unrouted, msg["unrouted"])
                self._merged[""] = self._merged.get("", 0) + added
                self._answered[link.index] += added
        elif op == "ready":
            log.info("router worker %d (pid %d) listening", link.index, link.pid)
            self._ready[link.index].set()
        elif op == "replica_failed":
            self._on_replica_failed(msg["service"], msg["replica"])
        elif op == "drained":
            fut = link.pending.pop(int(msg["id"]), None)
            if fut is not None and not fut.done():
                fut.set_result(bool(msg["ok"]))
        else:
            log.warning("router worker %d sent an unknown message %r", link.index, op)

    def status(self) -> list[dict[str, Any]]:
        """Each router process: pid, answers it gave (for services still present), restarts."""
        own = sum(
            sum(s.metrics.codes.values()) - self._merged.get(s.route.name, 0) for s in self.router.services.values()
        )
        own += sum(self.router.unrouted.codes.values()) - self._merged.get("", 0)
        out: list[dict[str, Any]] = [{"index": 0, "pid": os.getpid(), "answered": own, "listening": True}]
        for index in sorted(self.restarts):
            proc = self._procs.get(index)
            out.append(
                {
                    "index": index,
                    "pid": proc.pid if proc is not None else None,
                    "answered": self._answered.get(index, 0),
                    "listening": self._ready[index].is_set(),
                    "restarts": self.restarts[index],
                }
            )
        return out
