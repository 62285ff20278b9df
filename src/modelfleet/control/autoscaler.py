"""The autoscale loop: samples the router, asks ``router/autoscale.py``, scales the controller.

Runs on the daemon's event loop (the daemon starts and stops it); it knows the router only by
its counters (``stats``, a function) and the compute target not at all, only the services'
controllers (``Scalable``: the reconciler's, or whatever runs beside a router elsewhere).
``tick(now)`` is one pass with the time given, so tests step it. Every ``refresh_seconds ÷
10`` for each service with autoscaling on and a serving generation, it reads the router's
counters (in flight, queued, Ready replicas, per-replica limit), adds the machine's room,
calls the pure ``decide`` and, when the count should change, has the service's controller
``scale_to`` it (one scaling operation per service at a time; sampling goes on meanwhile).
The controller records each change as a scale event and logs it. With autoscaling off the
loop leaves the service alone, so ``num_replicas`` is held.

A batching service (``max_batch_size`` > 1) is sampled in calls of ``run_batch`` rather than
requests (``router/autoscale.batch_counts``), from what its Ready replicas report
(``replica_reports``: their stats files, written about once a second).

The machine's room is ``control/room.py``'s accounting, the same every deploy and update is
checked against (a documented rule, like a Kubernetes node's allocatable): replicas reserve
what they request, and a replica fits when the ``cpu_cores`` (``memory_gb``, ``gpu_cores``) of
every replica on this cluster plus its own stay within what the machine has, read once when
the daemon starts. The daemon and router reserve nothing. When a rise does not fit,
the count goes as far as fits, the service's state detail says why (it stays Healthy), and
one scale event records it (``from`` == ``to`` when nothing fitted); the loop does not start
replicas that cannot fit, and says nothing more until the room changes back.

Scale to zero (``scale_to_zero_after_seconds``): the router's ``idle_s`` (seconds since a
request last arrived) goes into the decision, whose rules for 1 → 0 and 0 → 1 are in
``router/autoscale.py``. The signal is the router's counters, nothing local: a router that
reports ``queued`` and ``idle_s`` for a service at zero gets a replica started by whatever
samples it (this loop here; the Kubernetes router's scaler could read the same counts).

Cost at scale: which services autoscale is looked up among all of them once a second
(``MEMBERSHIP_S``, or when one comes or goes), not at every tick, and samples fall on a grid of
``refresh_seconds ÷ 10`` so that services with the same refresh share one read of the router's
counters; 1,000 services with autoscaling off cost one scan a second.

A rise whose new replicas fail to start (init() raised, say) is not retried for
``FAILED_START_BACKOFF_S`` from the first sample that sees it: the controller records why in a
scale event and counts it (``start_failures``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelfleet.control.room import Capacity, Holding, holdings, machine_capacity, used_by
from modelfleet.control.room import room_for as _room_for
from modelfleet.router.autoscale import Counts, Decision, ScaleSettings, ScaleState, batch_counts, decide
from modelfleet.spec import DeploySpec
from modelfleet.targets.base import ReplicaInfo

__all__ = ["FAILED_START_BACKOFF_S", "Autoscaler", "Capacity", "machine_capacity"]

log = logging.getLogger("modelfleet.autoscaler")

SAMPLES_PER_REFRESH = 10
MEMBERSHIP_S = 1.0  # how often the services with autoscaling on are looked for among all
FAILED_START_BACKOFF_S = 30.0


class Scalable(Protocol):
    """What the loop needs of one service (``control/reconcile.Scalable`` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def spec(self) -> DeploySpec | None: ...
    @property
    def serving_generation(self) -> int | None: ...
    @property
    def replica_count(self) -> int: ...
    @property
    def scaling(self) -> bool: ...
    @property
    def start_failures(self) -> int: ...
    def replicas(self) -> list[ReplicaInfo]: ...
    def holding(self) -> Holding | None: ...
    async def scale_to(self, count: int, reason: str, utilization: float | None) -> int: ...
    async def note_scaling(self, note: str | None, event: tuple[int, str, float | None] | None = None) -> None: ...


class Services(Protocol):
    """The services to scale, by name (``control/reconcile.Reconciler`` is one)."""

    @property
    def controllers(self) -> Mapping[str, Scalable]: ...


@dataclass
class _Tracked:
    """The loop's memory of one service."""

    state: ScaleState = field(default_factory=ScaleState)
    next_sample: float = 0.0
    task: asyncio.Task[int] | None = None  # the scaling operation in progress
    backoff_until: float = 0.0  # no rise before this (new replicas failed to start)
    start_failures: int = 0  # the controller's count when last sampled
    blocked: bool = False  # the last rise was cut by the machine's room
    last: Decision | None = None


class Autoscaler:
    def __init__(
        self,
        reconciler: Services,
        stats: Callable[[], dict[str, dict[str, Any]]],
        capacity: Capacity,
        tick_s: float = 0.05,
        replica_reports: Callable[[str], list[dict[str, Any]]] | None = None,
    ) -> None:
        self._reconciler = reconciler
        self._stats = stats  # the router's counters per service (``Router.stats``)
        self._replica_reports = replica_reports  # a service's Ready replicas' own counters (batching)
        self.capacity = capacity
        self._tick_s = tick_s
        self._tracked: dict[str, _Tracked] = {}
        self._members: list[str] = []  # services with autoscaling on and a serving generation
        self._members_due = float("-inf")  # when to look for them again
        self._members_of = 0  # how many services there were then
        self._task: asyncio.Task[None] | None = None
        self._notes: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<Autoscaler services={sorted(self._tracked)} capacity={self.capacity}>"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="autoscaler")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *(tr.task for tr in self._tracked.values()), *self._notes) if t]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def settled(self) -> None:
        """Wait for the scaling operations in progress (tests step ``tick`` and then this)."""
        tasks = [t for t in (*(tr.task for tr in self._tracked.values()), *self._notes) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.tick(loop.time())
            except Exception:
                log.exception("autoscaler pass failed")
            await asyncio.sleep(self._tick_s)

    # -- one pass --------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        controllers = self._reconciler.controllers
        if now >= self._members_due or len(controllers) != self._members_of:
            self._find_members(controllers, now)
        stats: dict[str, dict[str, Any]] | None = None
        for name in self._members:
            controller = controllers.get(name)
            spec = controller.spec if controller is not None else None
            if controller is None or spec is None or not spec.autoscale.enabled:
                self._tracked.pop(name, None)  # gone or turned off since the last look: out at the next
                continue
            tracked = self._tracked.setdefault(name, _Tracked(start_failures=controller.start_failures))
            if now < tracked.next_sample:
                continue
            settings = ScaleSettings.from_spec(spec.autoscale, spec.scale_to_zero_after_seconds)
            period = settings.refresh_s / SAMPLES_PER_REFRESH
            tracked.next_sample = (math.floor(now / period) + 1) * period  # on the grid: one stats() for many
            if stats is None:
                stats = self._stats()
            service_stats = stats.get(name)
            if service_stats is not None:
                self._sample(controller, spec, settings, tracked, service_stats, now)

    def _find_members(self, controllers: Mapping[str, Scalable], now: float) -> None:
        members = [
            name
            for name, c in controllers.items()
            if (spec := c.spec) is not None and spec.autoscale.enabled and c.serving_generation is not None
        ]
        keep = set(members)
        for name in [n for n in self._tracked if n not in keep]:
            del self._tracked[name]
        self._members = members
        self._members_due = now + MEMBERSHIP_S
        self._members_of = len(controllers)

    def _sample(
        self,
        controller: Scalable,
        spec: DeploySpec,
        settings: ScaleSettings,
        tracked: _Tracked,
        stats: dict[str, Any],
        now: float,
    ) -> None:
        room = self._room(controller, spec)
        counts = Counts(
            in_flight=stats["in_flight"],
            queued=stats["queued"],
            # only replicas the router may send to count as capacity (Ready, not draining)
            ready=sum(1 for r in stats["replicas"].values() if r["ready"]),
            current=controller.replica_count,
            limit=stats["limit"],
            room=room,
            idle_s=stats.get("idle_s"),
        )
        if spec.max_batch_size > 1 and self._replica_reports is not None:
            counts = batch_counts(counts, self._replica_reports(controller.name), spec.max_batch_size)
        decision, tracked.state = decide(counts, settings, tracked.state, now)
        tracked.last = decision
        if controller.start_failures != tracked.start_failures:
            tracked.start_failures = controller.start_failures
            tracked.backoff_until = now + FAILED_START_BACKOFF_S
        if (tracked.task is not None and not tracked.task.done()) or controller.scaling:
            return  # one operation at a time; the samples still count
        desired, current = decision.desired, counts.current
        if desired > current and now < tracked.backoff_until:
            return
        reason = decision.reason
        if decision.limited_by == "capacity":
            why = self._capacity_reason(decision, spec, room, current)
            reason = f"{reason}; {why}"
            if not tracked.blocked:
                tracked.blocked = True
                note = f"autoscaler: {why}"
                event = None if desired != current else (decision.wanted, reason, decision.utilization)
                self._spawn_note(controller.note_scaling(note, event))
        elif tracked.blocked and decision.wanted <= current + room:
            tracked.blocked = False
            self._spawn_note(controller.note_scaling(None))
        if desired != current:
            tracked.task = asyncio.create_task(
                self._scale(controller, desired, reason, decision.utilization),
                name=f"scale {controller.name}",
            )

    async def _scale(self, controller: Scalable, desired: int, reason: str, utilization: float | None) -> int:
        try:
            return await controller.scale_to(desired, reason, utilization)
        except Exception:
            log.exception("service %s: scaling to %d failed", controller.name, desired)
            return controller.replica_count

    def _spawn_note(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._notes.add(task)
        task.add_done_callback(self._notes.discard)

    # -- the machine's room ----------------------------------------------------------------

    def _requested(self) -> tuple[float, float]:
        """CPU cores and memory GB requested by every replica of the cluster (``control/room.py``)."""
        used = used_by(holdings(self._reconciler.controllers.values()))
        return used.cpus, used.memory_gb

    def _room(self, controller: Scalable, spec: DeploySpec) -> int:
        return _room_for(self.capacity, used_by(holdings(self._reconciler.controllers.values())), spec)

    def _capacity_reason(self, decision: Decision, spec: DeploySpec, room: int, current: int) -> str:
        cpus, memory = self._requested()
        cap = self.capacity
        return (
            f"wanted {decision.wanted} replicas but this machine fits only {current + room}: the cluster's replicas "
            f"request {cpus:g} of {cap.cpus:g} CPUs and {memory:.1f} of {cap.memory_gb:.1f} GB, and each "
            f"replica of this service asks for cpu_cores={spec.cpu_cores:g} and memory_gb={spec.memory_gb:g}; "
            "lower them or autoscale_max_replicas, or free the machine"
        )

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, tracked in self._tracked.items():
            d = tracked.last
            out[name] = (
                None
                if d is None
                else {
                    "desired": d.desired,
                    "wanted": d.wanted,
                    "utilization": d.utilization,
                    "mean_busy": d.mean_busy,
                    "limited_by": d.limited_by,
                }
            )
        return out
