"""A compute target that runs nothing: replicas are records, and the test says what they do.

``InMemoryTarget`` implements ``targets/base.ComputeTarget`` for the reconciler's and the
autoscaler's fast tests (no processes, sockets, clock or sleeps). Replicas it is asked for
appear at once as Starting; the test then moves them: ``make_ready``, ``fail_init``,
``crash`` and ``finish_draining`` (or ``auto_ready=True`` for replicas Ready as soon as they
are asked for). ``fail_next`` makes new replicas of a generation fail init();
``refuse_publish`` makes publish fail like an unreachable API.

It keeps the rules of the real targets (``base.ComputeTarget``'s docstring): removals drain
first (listed Draining until ``finish_draining``), only the serving generation's Ready
replicas are routed (``routed``), and every change calls the ``watch`` callback. Every call
is recorded in ``calls`` for tests that check what was asked.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from modelfleet.errors import TargetError
from modelfleet.targets.base import GenerationSpec, OnChange, ReplicaInfo, ReplicaPlan, ReplicaState, RouteEntry

__all__ = ["InMemoryTarget"]

_GONE = (ReplicaState.DRAINING, ReplicaState.STOPPED)


class InMemoryTarget:
    def __init__(self, *, auto_ready: bool = False) -> None:
        self.auto_ready = auto_ready
        self.calls: list[tuple[Any, ...]] = []
        self.routes: dict[str, RouteEntry] = {}
        self.plans: dict[tuple[str, int], ReplicaPlan] = {}
        self.fail_next: dict[tuple[str, int], str] = {}  # (service, generation) -> init() failure of new replicas
        self.refuse_publish = 0  # refuse this many publish calls with TargetError (an API error)
        self.closed = False
        self._replicas: dict[str, ReplicaInfo] = {}
        self._logs: dict[str, list[str]] = {}
        self._on_change: OnChange = lambda service: None

    def __repr__(self) -> str:
        states = ", ".join(f"{r.id}={r.state.value}" for r in self._replicas.values())
        return f"<InMemoryTarget {states}>"

    # -- ComputeTarget ---------------------------------------------------------------------

    def watch(self, on_change: OnChange) -> None:
        self._on_change = on_change

    def replicas(self, service: str) -> list[ReplicaInfo]:
        return [r for r in self._replicas.values() if r.service == service]

    async def apply(self, spec: GenerationSpec) -> None:
        plan = spec.plan
        self.calls.append(("apply", plan.service, plan.generation, spec.replicas))
        self.plans[(plan.service, plan.generation)] = plan
        self._scale(plan.service, plan.generation, spec.replicas, ())

    async def scale(self, service: str, generation: int, replicas: int, remove: Collection[str] = ()) -> None:
        self.calls.append(("scale", service, generation, replicas, tuple(remove)))
        self._scale(service, generation, replicas, remove)

    async def retire(self, service: str, generation: int, drain_s: float) -> None:
        self.calls.append(("retire", service, generation))
        self._drain(r for r in self._live(service) if r.generation == generation)
        self._on_change(service)

    def publish(self, route: RouteEntry) -> None:
        if self.refuse_publish > 0:
            self.refuse_publish -= 1
            raise TargetError(f"could not publish the route of {route.service} (refused by the test)")
        self.calls.append(("publish", route.service, route.serving_generation, route.failure))
        self.routes[route.service] = route

    def logs(self, service: str, replica_id: str | None = None, tail_lines: int = 5000) -> str:
        ids = [r.id for r in self.replicas(service) if replica_id in (None, r.id)]
        return "".join("".join(self._logs.get(i, [])[-tail_lines:]) for i in ids)

    async def delete(self, service: str, drain_s: float) -> None:
        self.calls.append(("delete", service))
        self.routes.pop(service, None)
        for rid in [r.id for r in self.replicas(service)]:
            del self._replicas[rid]

    def check_now(self, replica_id: str) -> None:
        self.calls.append(("check_now", replica_id))

    async def close(self, drain_s: float) -> None:
        self.closed = True
        self._replicas.clear()

    # -- what a test does to replicas ------------------------------------------------------

    def make_ready(self, ids: Iterable[str] | None = None) -> None:
        """Starting (or restarting) replicas answer their probe: Ready."""
        self._move(ids, (ReplicaState.STARTING, ReplicaState.UNHEALTHY), ReplicaState.READY)

    def fail_init(self, ids: Iterable[str], detail: str = "init() raised before the replica was ready") -> None:
        for rid in ids:
            r = self._replicas[rid]
            r.state, r.detail = ReplicaState.INIT_FAILED, detail
            self._on_change(r.service)

    def crash(self, replica_id: str, detail: str = "exited with status -9") -> None:
        """A Ready replica died: Unhealthy, then Starting again with one more restart."""
        r = self._replicas[replica_id]
        r.state, r.detail, r.restarts = ReplicaState.STARTING, detail, r.restarts + 1
        self._on_change(r.service)

    def finish_draining(self) -> None:
        """Every draining replica has finished its requests and stopped."""
        for r in [r for r in self._replicas.values() if r.state is ReplicaState.DRAINING]:
            del self._replicas[r.id]
            self._on_change(r.service)

    def write_log(self, replica_id: str, line: str) -> None:
        self._logs.setdefault(replica_id, []).append(line)

    def routed(self, service: str) -> list[str]:
        """The replicas a router would send new requests to (the rule of ``publish``)."""
        route = self.routes.get(service)
        if route is None:
            return []
        return [
            r.id
            for r in self._replicas.values()
            if r.service == service and r.generation == route.serving_generation and r.state is ReplicaState.READY
        ]

    def states(self, service: str) -> dict[str, str]:
        return {r.id: r.state.value for r in self.replicas(service)}

    # -- inside ----------------------------------------------------------------------------

    def _live(self, service: str) -> list[ReplicaInfo]:
        return [r for r in self.replicas(service) if r.state not in _GONE]

    def _scale(self, service: str, generation: int, replicas: int, remove: Collection[str]) -> None:
        mine = [r for r in self.replicas(service) if r.generation == generation]
        live = [r for r in mine if r.state not in _GONE]
        if replicas > len(live):
            used = {r.index for r in mine}
            free = (i for i in range(len(used) + replicas) if i not in used)
            failure = self.fail_next.get((service, generation))
            for index in [next(free) for _ in range(replicas - len(live))]:
                rid = f"{service}-{generation}-{index}"
                state = ReplicaState.READY if self.auto_ready else ReplicaState.STARTING
                info = ReplicaInfo(rid, service, generation, index, state, None, f"mem:{rid}", 0, None)
                if failure is not None:
                    info.state, info.detail = ReplicaState.INIT_FAILED, failure
                self._replicas[rid] = info
        elif replicas < len(live):
            named = set(remove)
            live.sort(key=lambda r: (r.id not in named, r.state is ReplicaState.READY, -r.index))
            self._drain(live[: len(live) - replicas])
        self._on_change(service)

    def _drain(self, victims: Iterable[ReplicaInfo]) -> None:
        for r in victims:
            r.state = ReplicaState.DRAINING

    def _move(self, ids: Iterable[str] | None, from_states: tuple[ReplicaState, ...], to: ReplicaState) -> None:
        chosen = list(self._replicas) if ids is None else list(ids)
        for rid in chosen:
            r = self._replicas[rid]
            if r.state in from_states:
                r.state, r.detail = to, None
                self._on_change(r.service)
