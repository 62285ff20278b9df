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
  ``stats()``, its counters, 401s by address and request timings since the last report:
  ``router_fleet``), ``replica_failed``, ``drained``.

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
import re
import sys
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelfleet.control.router_fleet import SLOT_MODES, FleetRouter, add_metrics, add_traces
from modelfleet.errors import ConfigError
from modelfleet.targets.kubernetes.router_scale import LoadProbe, RouterScaleState

__all__ = [
    "SETTING",
    "RouterWorkers",
    "WorkerScale",
    "WorkerScaleState",
    "WorkerSettings",
    "decide_workers",
    "load",
    "max_workers",
    "parse_workers",
    "save",
]

log = logging.getLogger("modelfleet.router.workers")

SETTING = "router_workers"
RESTART_DELAY_S = 0.5
STOP_WAIT_S = 5.0
READY_WAIT_S = 30.0
RETIRE_WAIT_S = 40.0  # a retiring worker's requests get router_worker.RETIRE_S to finish
PROBE_S = 0.25  # how often the daemon's own loop lag is sampled
LINE_LIMIT = 64 * 1024 * 1024  # one message a line: a service's replica list, or a route


def max_workers(cores: int | None = None) -> int:
    """At most 4 router processes per core: past that they only take turns."""
    return 4 * max(1, cores if cores is not None else (os.cpu_count() or 1))


@dataclass(frozen=True)
class WorkerSettings:
    """``workers`` router processes; with ``most`` (> 0) their count follows the routing time
    between ``workers`` and ``most`` (``--router-workers LOW-HIGH``: ``scale_settings``)."""

    workers: int = 1
    most: int = 0
    # measured (bench/router_workers.py, the README's "Router workers"): shared slots collide on
    # the replicas (hundreds of busy answers in seconds at and over capacity), partitioned ones never
    slots: str = "partitioned"

    def __post_init__(self) -> None:
        top = max_workers()
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.workers, self.most))
        if not ints or not 1 <= self.workers <= top or not (self.most == 0 or self.workers <= self.most <= top):
            shown = f"{self.workers}-{self.most}" if self.most else f"{self.workers}"
            raise ConfigError(
                f"--router-workers must be a count from 1 to {top} or a range LOW-HIGH within it "
                f"(4 per core here; got {shown})"
            )
        if self.slots not in SLOT_MODES:
            raise ConfigError(f"--router-slots must be one of {', '.join(SLOT_MODES)} (got {self.slots!r})")

    @property
    def high(self) -> int:
        """The most router processes there may be."""
        return self.most or self.workers

    def scale_settings(self) -> WorkerScale | None:
        """The rule over this range (``decide_workers``); ``None`` for a fixed count."""
        if not self.most or self.most == self.workers:
            return None
        return WorkerScale(low=self.workers, high=self.most)


@dataclass(frozen=True)
class WorkerScale:
    """How the router process count follows the routing time (``decide_workers``).

    ``out_cpu``: a process's routing CPU seconds per second (its loop runs on one core, so 1.0
    is a full one), on average over ``window_s``, above which one more process is started;
    ``in_cpu``: the same load spread over one process fewer would stay under it, so one retires;
    nothing for ``cooldown_s`` after a change (the kernel spreads only new connections: the
    load needs that long to move). The Kubernetes router pods go out on loop lag
    (``router_scale``); a local router's loop keeps turning when saturated (its lag stays a few
    ms at 100 % of a core here), so its CPU is the signal."""

    low: int
    high: int
    out_cpu: float = 0.6
    in_cpu: float = 0.25
    window_s: float = 10.0
    cooldown_s: float = 20.0


@dataclass
class WorkerScaleState:
    samples: deque[tuple[float, float]] = field(default_factory=deque)  # (time, mean CPU s/s a process)
    quiet_until: float = 0.0


def decide_workers(count: int, scale: WorkerScale, state: WorkerScaleState, now: float) -> tuple[int, str]:
    """The new router process count and why ("" when it stays), from ``state``'s samples."""
    while state.samples and state.samples[0][0] < now - scale.window_s - 1.0:
        state.samples.popleft()
    if now < state.quiet_until or not state.samples or state.samples[0][0] > now - scale.window_s:
        return count, ""  # cooling down, or the window is not full yet
    values = [c for t, c in state.samples if t >= now - scale.window_s]
    cpu = sum(values) / len(values)
    if cpu > scale.out_cpu and count < scale.high:
        new, why = count + 1, f"routing CPU {cpu:.2f} s/s a process > {scale.out_cpu:g} for {scale.window_s:g} s"
    elif count > scale.low and cpu * count / (count - 1) < scale.in_cpu:
        new, why = count - 1, f"routing CPU {cpu:.2f} s/s a process: {count - 1} would stay under {scale.in_cpu:g}"
    else:
        return count, ""
    state.quiet_until = now + scale.cooldown_s
    state.samples.clear()  # the next window measures the new count
    return new, why


def parse_workers(text: str) -> tuple[int, int]:
    """``--router-workers N`` or ``LOW-HIGH`` as (workers, most); bad text names the flag."""
    m = re.fullmatch(r"(\d{1,4})(?:-(\d{1,4}))?", text.strip())
    if m is None:
        top = max_workers()
        raise ConfigError(
            f"--router-workers must be a count from 1 to {top} or a range LOW-HIGH within it "
            f"(4 per core here; got {text})"
        )
    return int(m[1]), int(m[2] or 0)


def load(store: Any) -> WorkerSettings:
    stored = store.get_setting(SETTING)
    if not stored:
        return WorkerSettings()
    data = json.loads(stored)
    slots = str(data.get("slots", "partitioned"))
    workers, most = int(data.get("workers", 1)), int(data.get("most", 0))
    try:
        return WorkerSettings(workers=workers, most=most, slots=slots)
    except ConfigError:  # stored on a machine with more cores: as many as this one allows
        top = max_workers()
        return WorkerSettings(workers=min(workers, top), most=min(most, top), slots=slots)


def save(store: Any, settings: WorkerSettings) -> None:
    store.set_setting(SETTING, json.dumps(asdict(settings)))


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
        scale: WorkerScale | None = None,
    ) -> None:
        self.router = router
        self.socket_path = socket_path
        self._limits = limits
        self.scale = scale  # None: a fixed count; else the count follows the routing time
        self._load = WorkerScaleState()  # the processes' mean CPU, a sample a second
        self._own_load = RouterScaleState()  # the daemon's own lag and CPU, a sample every PROBE_S
        self._retiring: set[int] = set()
        self._own_cpu: float | None = None  # the daemon's CPU s/s over the last second (with a range)
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
        self._tasks: dict[int, asyncio.Task[None]] = {}  # worker -> its supervisor
        self._scaler: asyncio.Task[None] | None = None
        self._lag: dict[int, tuple[float, float]] = {}  # worker -> (lag ms, CPU) last reported
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
            self._spawn(index)
        waits = [e.wait() for e in self._ready.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), READY_WAIT_S)
        except asyncio.TimeoutError:
            log.warning("router workers: not all listening after %.0f s; the daemon serves meanwhile", READY_WAIT_S)
        log.info(
            "router workers: %d processes share the router port (slots %s)", self.router.workers, self.router.slots
        )
        if self.scale is not None:
            self._scaler = asyncio.get_running_loop().create_task(self._follow_load(self.scale))

    def _spawn(self, index: int) -> None:
        self._ready[index] = asyncio.Event()
        self.restarts[index] = 0
        self._tasks[index] = asyncio.get_running_loop().create_task(self._supervise(index))

    async def stop(self) -> None:
        """Ask each worker to stop (in order), wait for it, kill what is left after ``STOP_WAIT_S``."""
        self._stopping = True
        tasks = [*self._tasks.values(), *([self._scaler] if self._scaler is not None else [])]
        for task in tasks:  # no restart, no resize from here on
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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
            if self._stopping or index in self._retiring:
                return
            self.restarts[index] += 1
            log.warning("router worker %d (pid %d) exited (%s); starting it again", index, proc.pid, code)
            await asyncio.sleep(RESTART_DELAY_S)

    # -- the table, to every worker --------------------------------------------------------

    def broadcast(self, msg: dict[str, Any]) -> None:
        op = msg["op"]
        service = msg["route"]["name"] if "route" in msg else msg.get("service", "")
        if op == "workers":
            pass  # a worker that connects gets the count with its config
        elif op == "remove_service":
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
            link.send(
                {"op": "config", "workers": self.router.workers, "slots": self.router.slots, "limits": self._limits}
            )
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
                self._lag.pop(link.index, None)
                if link.index in self._ready:
                    self._ready[link.index].clear()
                for fut in link.pending.values():
                    if not fut.done():
                        fut.set_result(True)  # its connections, and requests, went with it
            writer.close()

    def _on_message(self, link: _Link, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "stats":
            self._stats[link.index] = msg["stats"]
            if msg.get("lag_ms") is not None and msg.get("cpu") is not None:
                self._lag[link.index] = (float(msg["lag_ms"]), float(msg["cpu"]))
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
            if msg.get("auth"):
                self.router.auth_failures.merge(msg["auth"])
            add_traces(self.router.tracer, msg.get("traces") or (), int(msg.get("trace_dropped") or 0))
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

    # -- the count following the routing time -------------------------------------------

    async def _follow_load(self, scale: WorkerScale) -> None:
        """Every second: the router processes' mean CPU seconds per second (the workers' as
        they report it, the daemon's own including its control plane's), then
        ``decide_workers``; a new count is applied here."""
        probe = LoadProbe()
        loop = asyncio.get_running_loop()
        while True:
            for _ in range(round(1.0 / PROBE_S)):
                probe.expect(PROBE_S)
                await asyncio.sleep(PROBE_S)
                probe.sample(self._own_load)
            own = [s[2] for s in self._own_load.samples]
            self._own_load.samples.clear()
            figures = [cpu for _, cpu in self._lag.values()]
            if own:
                self._own_cpu = sum(own) / len(own)
                figures.append(self._own_cpu)
            if not figures:
                continue
            now = loop.time()
            self._load.samples.append((now, sum(figures) / len(figures)))
            count, why = decide_workers(self.router.workers, scale, self._load, now)
            if count != self.router.workers:
                log.info("router workers: %d -> %d (%s)", self.router.workers, count, why)
                await self.resize(count)

    async def resize(self, count: int) -> None:
        """Grow to ``count`` router processes (slots dealt again, then the new ones started), or
        shrink (the last ones retire: no new connection, their requests finish; then the slots
        are dealt again)."""
        current = self.router.workers
        if count > current:
            self.router.set_workers(count)  # every worker deals again; the new ones get the count
            for index in range(current, count):
                self._retiring.discard(index)
                self._spawn(index)
            return
        for index in range(current - 1, count - 1, -1):
            self._retiring.add(index)
            link = self._links.get(index)
            if link is not None:
                link.send({"op": "retire"})
            proc = self._procs.get(index)
            if proc is not None:
                try:
                    await asyncio.wait_for(proc.wait(), RETIRE_WAIT_S)
                except asyncio.TimeoutError:
                    log.warning("router worker %d (pid %d) did not retire; killing it", index, proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            task = self._tasks.pop(index, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            for table in (self._procs, self._ready, self.restarts, self._stats, self._lag):
                table.pop(index, None)
        self.router.set_workers(count)

    def status(self) -> list[dict[str, Any]]:
        """Each router process: pid, answers it gave (for services still present), restarts, and
        (with a range) its CPU seconds per second over the last second, as the scaling rule sees it."""
        own = sum(
            sum(s.metrics.codes.values()) - self._merged.get(s.route.name, 0) for s in self.router.services.values()
        )
        own += sum(self.router.unrouted.codes.values()) - self._merged.get("", 0)
        out: list[dict[str, Any]] = [
            {"index": 0, "pid": os.getpid(), "answered": own, "listening": True, "cpu": self._own_cpu}
        ]
        for index in sorted(self.restarts):
            proc = self._procs.get(index)
            out.append(
                {
                    "index": index,
                    "pid": proc.pid if proc is not None else None,
                    "answered": self._answered.get(index, 0),
                    "listening": self._ready[index].is_set(),
                    "restarts": self.restarts[index],
                    "cpu": self._lag[index][1] if index in self._lag else None,
                }
            )
        return out
