"""Desired services (the workspace) against observed replicas (any compute target).

One ``ServiceController`` per service. Each pass (``reconcile``) it reads the service from
the store, plans a new generation when the stored one changed (app folder, environment: the
``Planner``), publishes the service's route (keys, limits, serving generation), asks the pure
``control/decisions.decide`` what to do about the replicas the target reports, and carries
the actions out through the target (``targets/base.ComputeTarget``). The rules (roll-out,
failed update, scaling, state) live in ``decisions.py``'s docstring; this module only moves
between the store, that function and the target. It knows no process, port or pod.

Passes run when the target reports a replica change, when the admin API says the service
changed, when the autoscaler scales (``scale_to``) and every second otherwise (every
``idle_resync_s`` while the service is steady: its last pass carried nothing out and all its
replicas were Ready), one at a time (a lock). A roll-out keeps the current count (clamped to the new min/max) when
autoscaling is on, and ``num_replicas`` when it is off; a failed update keeps the count the
serving generation had.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from modelfleet.control.decisions import (
    FAILED,
    HEALTHY,
    TRANSITIONING,
    Action,
    Decision,
    Desired,
    Fail,
    Memory,
    Replace,
    Scale,
    Start,
    StartFailed,
    Stop,
    decide,
)
from modelfleet.control.endpoints import endpoint_entry, stale_versions, version_services, write_endpoint_state
from modelfleet.control.environments import resolve_for_service
from modelfleet.control.layout import limits_note, prepare_app, remove_generation
from modelfleet.control.room import Capacity, Holding, holdings, machine_capacity, refusal
from modelfleet.errors import ModelfleetError, NotFound
from modelfleet.spec import DeploySpec, EnvironmentSpec
from modelfleet.store.endpoints import endpoint_of, is_endpoint_config
from modelfleet.store.registry import ServiceRecord, Store
from modelfleet.targets.base import (
    ComputeTarget,
    GenerationSpec,
    Probe,
    ReplicaInfo,
    ReplicaPlan,
    ReplicaState,
    RouteEntry,
)

__all__ = ["FAILED", "HEALTHY", "Planner", "Reconciler", "ServiceController", "plan_generation"]

log = logging.getLogger("modelfleet.control")

# A controller looks at its replicas every second even when nothing woke it (a missed wake
# costs at most that). Its stored record is read again only when the record changed
# (``Reconciler._watch_records``), since one read per service per second took a whole core
# at 1,000 services.
_RESYNC_S = 1.0
# A steady service's unprompted pass changes nothing: every replica change wakes its controller
# (``ComputeTarget.watch``), so the pass every second is only a net for a missed wake. The local
# target, which reports every change from the daemon's own loop, looks at a steady service every
# 10 s (``LOCAL_IDLE_RESYNC_S``, control/daemon.py): 1,000 steady services made 1,000 passes a
# second, the larger part of an idle daemon's CPU and, beside the router, of its CPU per request.
LOCAL_IDLE_RESYNC_S = 10.0
COMPUTE_TARGET_KEY = "compute_target"  # in a service's stored config: the compute target it runs on
_GONE = (ReplicaState.DRAINING, ReplicaState.STOPPED)

Planner = Callable[[Store, ServiceRecord, DeploySpec], ReplicaPlan]
"""Builds a generation's template (blocking; run in a thread). Raises ModelfleetError when it cannot."""
RoomCheck = Callable[[str, DeploySpec, int], "str | None"]
"""Why a generation of ``count`` replicas of a spec does not fit on the machine, or None."""


def plan_generation(store: Store, record: ServiceRecord, spec: DeploySpec) -> ReplicaPlan:
    """The real planner: lay out the generation's app folder and resolve its environment."""
    layout = prepare_app(store, record.name, record.generation, record.config)
    env_spec = EnvironmentSpec.from_dict(record.config.get("environment") or {"name": "default"})
    resolved, isolation = resolve_for_service(store, record.name, record.generation, env_spec)
    probe = Probe(
        period_s=float(spec.liveness.period_seconds),
        timeout_s=float(spec.liveness.timeout_seconds),
        failure_threshold=spec.liveness.failure_threshold,
        startup_deadline_s=float(spec.liveness.initial_delay_seconds),
    )
    return ReplicaPlan(
        service=record.name,
        generation=record.generation,
        python=resolved.python,
        app_root=layout.app_root,
        entry_script=layout.entry_script,
        environment={**isolation, **layout.environment},
        max_concurrent=spec.replica_max_concurrent_requests,
        probe=probe,
    )


def is_steady(decision: Decision, observed: list[ReplicaInfo]) -> bool:
    """A pass that leaves nothing to do until something changes: no action, every replica Ready."""
    return not decision.actions and all(r.state is ReplicaState.READY for r in observed)


def route_for(record: ServiceRecord, spec: DeploySpec, memory: Memory, generation: int | None) -> RouteEntry:
    auth: Literal["key", "token"] | None = "key" if spec.auth_enabled else "token" if spec.token_auth_enabled else None
    failure = memory.failure if memory.serving is None and memory.failed == generation else None
    return RouteEntry(
        service=record.name,
        serving_generation=memory.serving,
        auth=auth,
        primary_key=record.primary_key if auth == "key" else None,
        secondary_key=record.secondary_key if auth == "key" else None,
        max_concurrent=spec.admitted_per_replica(),  # x max_batch_size when batching (replica/batching.py)
        max_wait_s=spec.max_request_wait_time / 1000.0,
        timeout_s=spec.scoring_timeout_ms / 1000.0,
        max_body_bytes=spec.max_body_bytes,
        trace=spec.enable_app_insights,
        failure=failure,
        # scale to zero: with no replica, a request waits cold_start_wait_ms more for one
        cold_wait_s=spec.cold_start_wait_ms / 1000.0 if spec.scale_to_zero_after_seconds is not None else 0.0,
    )


class ServiceController:
    def __init__(
        self,
        name: str,
        store: Store,
        target: ComputeTarget,
        planner: Planner = plan_generation,
        room: RoomCheck | None = None,
        idle_resync_s: float = _RESYNC_S,
    ) -> None:
        self.name = name
        self._idle_resync_s = max(idle_resync_s, _RESYNC_S)
        self._steady = False  # the last pass carried nothing out and every replica was Ready
        self.passes = 0  # passes run since the daemon started
        self._room = room  # None: the target's own scheduler decides (Kubernetes)
        self._claimed = 0  # replicas a generation being planned asked for (held from its check on)
        self._held_spec: DeploySpec | None = None  # the spec of the last generation that fitted
        self._store = store
        self._target = target
        self._planner = planner
        self._wake = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one pass at a time
        # desired state as last read, and what decide() is told about it
        self.spec: DeploySpec | None = None
        self._record: ServiceRecord | None = None
        self._record_stale = True  # read the stored record on the next pass
        self._generation: int | None = None  # the stored generation last planned
        self._desired_replicas = 0
        self._before_update = 0  # the serving count when an update began (kept if it fails)
        self._plans: dict[int, ReplicaPlan] = {}
        self._memory = Memory()
        # what was last handed out, so unchanged values are not written again
        self._route: RouteEntry | None = None
        self._last_state: tuple[str, str | None] | None = None  # the state to show
        self._written: tuple[str, str | None] | None = None  # the state last written to the store
        self._writing = asyncio.Lock()  # writes in order, each the latest (a pass and a note may overlap)
        self._scale_note: str | None = None
        self.scale_events = 0  # recorded since the daemon started (metrics)
        self.start_failures = 0  # scale-ups whose new replicas failed (the autoscaler backs off)

    def __repr__(self) -> str:
        return f"<ServiceController {self.name} serving={self.serving_generation} replicas={self._desired_replicas}>"

    @property
    def serving_generation(self) -> int | None:
        return self._memory.serving

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"controller {self.name}")

    def wake(self) -> None:
        self._wake.set()

    @property
    def record_stamp(self) -> float | None:
        """The ``updated_time`` of the record this controller last read."""
        return None if self._record is None else self._record.updated_time

    def record_changed(self) -> None:
        """The stored record moved since it was read: read it on the next pass, now."""
        self._record_stale = True
        self._wake.set()

    async def close(self) -> None:
        """Stop reconciling; the replicas are left to the caller (``Reconciler``)."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def replicas(self) -> list[ReplicaInfo]:
        return self._target.replicas(self.name)

    def holding(self) -> Holding | None:
        """The machine's room this service holds (``control/room.py``: replicas it runs, should
        run or was asked to run, at the spec of its last generation that fitted; a refused
        update changes nothing)."""
        if self._held_spec is None:
            return None
        running = sum(1 for r in self.replicas() if r.state != ReplicaState.STOPPED)
        return Holding.of(self.name, self._held_spec, max(running, self._desired_replicas, self._claimed))

    # -- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            self._wake.clear()  # before the pass: a change reported during it runs another
            try:
                reread, self._record_stale = self._record_stale, False  # a change meanwhile marks it again
                await self.reconcile(reread)
            except NotFound:
                return  # deleted behind our back
            except Exception:
                self._record_stale = True  # the pass may have failed before its read
                log.exception("service %s: reconcile pass failed", self.name)
            # a timer that sets the event, not wait_for: that made and cancelled a task per pass,
            # a third of an idle daemon's time at 1,000 services
            timer = loop.call_later(self._idle_resync_s if self._steady else _RESYNC_S, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()

    async def reconcile(self, reread: bool = True) -> Decision:
        """One pass: read, plan, decide, act. Returns the decision (tests look at it).
        ``reread=False`` keeps the record last read (the loop's passes when it has not moved)."""
        self._steady = False  # until this pass ends quietly (one that raises is not steady)
        async with self._lock:
            self.passes += 1
            if reread or self._record is None or self.spec is None:
                record = await asyncio.to_thread(self._store.get_service, self.name)
                self._record, self.spec = record, DeploySpec.from_dict(record.config["deploy"])
            record, spec = self._record, self.spec
            if record.generation != self._generation:
                await self._plan(record, spec)
            self._publish_route()
            observed = self.replicas()
            decision = decide(Desired(record.generation, self._desired_replicas), self._memory, observed)
            for action in decision.actions:
                await self._carry_out(action, spec)
            await self._show(decision.state, decision.detail)
            await self._forget_gone_generations()
            self._steady = is_steady(decision, observed)
            return decision

    async def _plan(self, record: ServiceRecord, spec: DeploySpec) -> None:
        generation = record.generation
        self._generation = generation
        log.info("service %s: rolling out generation %d", self.name, generation)
        # said before planning (which may take a while): a state stored by an earlier daemon
        # must not read Healthy while nothing serves
        if self.serving_generation is None:
            await self._show(TRANSITIONING, None)
        else:
            await self._show(HEALTHY, f"updating to generation {generation}")
        self._before_update = self._desired_replicas
        count = spec.initial_replicas()
        if spec.autoscale.enabled and self.serving_generation is not None:
            # an update keeps the autoscaled count, within the (maybe new) min and max
            scale = spec.autoscale
            count = min(max(self._desired_replicas, scale.min_replicas), scale.max_replicas)
        # checked and claimed with no await between: two deploys at once cannot both take the last room
        why = self._room(self.name, spec, count) if self._room is not None else None
        if why is not None:
            await self._carry_out(Fail(generation, why), spec)
            return
        self._claimed, self._held_spec = count, spec
        try:
            plan = await asyncio.to_thread(self._planner, self._store, record, spec)
        except ModelfleetError as exc:
            self._claimed = 0
            await self._carry_out(Fail(generation, str(exc)), spec)
            return
        self._plans[generation] = plan
        self._desired_replicas, self._claimed = count, 0

    async def replan(self) -> bool:
        """Plan the stored generation again, as the planner sees its inputs now (a Kubernetes
        target's upload settings changed). A plan equal to the one in force changes nothing;
        another is applied at the generation's count unless that generation failed, and the
        target rolls its replicas to it (a Deployment: to its new template). Returns whether
        the plan changed."""
        async with self._lock:
            generation, record, spec = self._generation, self._record, self.spec
            old = self._plans.get(generation) if generation is not None else None
            if generation is None or old is None or record is None or spec is None:
                return False
            plan = await asyncio.to_thread(self._planner, self._store, record, spec)
            if plan == old:
                return False
            self._plans[generation] = plan
            if generation != self._memory.failed:
                await self._target.apply(GenerationSpec(plan, self._desired_replicas))
            return True

    async def _carry_out(self, action: Action, spec: DeploySpec) -> None:
        drain_s = spec.scoring_timeout_ms / 1000.0
        if isinstance(action, Start):
            log.info("service %s: generation %d to %d replicas", self.name, action.generation, action.replicas)
            await self._target.apply(GenerationSpec(self._plans[action.generation], action.replicas))
        elif isinstance(action, Replace):
            await self._replace(action, drain_s)
        elif isinstance(action, Scale):
            await self._target.scale(self.name, action.generation, action.replicas, action.remove)
        elif isinstance(action, Stop):
            log.info("service %s: stopping generation %d", self.name, action.generation)
            await self._target.retire(self.name, action.generation, drain_s)
        elif isinstance(action, Fail):
            await self._fail(action)
        elif isinstance(action, StartFailed):
            old, self._desired_replicas = self._desired_replicas, action.replicas
            self.start_failures += 1
            await self._record_scale(old, action.replicas, action.reason, None)

    async def _replace(self, action: Replace, drain_s: float) -> None:
        before, self._memory = self._memory, Memory(serving=action.new)
        try:
            self._publish_route()  # the router sends to the new generation from here on
        except Exception:
            self._memory = before  # not switched: the next pass tries again
            raise
        self._last_state = (HEALTHY, None)
        await self._write_state(serving_generation=action.new)
        outcome = {"generation": action.new, "outcome": "succeeded", "replicas": self._desired_replicas}
        await asyncio.to_thread(self._store.add_event, self.name, "deployment", outcome)
        for generation in action.old:
            log.info("service %s: draining generation %d", self.name, generation)
            await self._target.retire(self.name, generation, drain_s)

    async def _fail(self, action: Fail) -> None:
        serving = self._memory.serving
        self._memory = Memory(serving=serving, failed=action.generation, failure=action.reason)
        if serving is not None:
            self._desired_replicas = self._before_update
        if serving is None:
            # the state before the outcome: a caller that sees the outcome (wait_for_deployment)
            # then reads Failed, never a Transitioning left over
            await self._show(FAILED, action.reason)
        outcome = {"generation": action.generation, "outcome": "failed", "message": action.reason}
        await asyncio.to_thread(self._store.add_event, self.name, "deployment", outcome)
        self._publish_route()  # with nothing serving, the router says the service failed
        log.error("service %s: generation %d failed: %s", self.name, action.generation, action.reason)

    async def _forget_gone_generations(self) -> None:
        """Remove the app folders of generations that have no replica left."""
        present = {r.generation for r in self.replicas()}
        keep = {self._generation, self._memory.serving}
        for generation in [g for g in self._plans if g not in present and g not in keep]:
            del self._plans[generation]
            await asyncio.to_thread(remove_generation, self._store.runtime_dir, self.name, generation)

    # -- the route and the stored state ----------------------------------------------------

    def refresh_route(self) -> None:
        """Apply the stored keys and limits to the router now, so a regenerated key is refused
        from the moment ``regen_key`` returns (a short SQLite read on the loop; admin calls are rare)."""
        with contextlib.suppress(NotFound):
            self._record = self._store.get_service(self.name)
            self.spec = DeploySpec.from_dict(self._record.config["deploy"])
            self._publish_route()

    def _publish_route(self) -> None:
        if self._record is None or self.spec is None:
            return
        route = route_for(self._record, self.spec, self._memory, self._generation)
        if route != self._route:  # keys take part in the comparison, so a new key is published
            self._target.publish(route)
            self._route = route

    async def _show(self, state: str, detail: str | None) -> None:
        if state == HEALTHY and detail is None:
            detail = self._scale_note or (limits_note(self.spec) if self.spec is not None else None)
        if self._last_state == (state, detail):
            return
        self._last_state = (state, detail)
        await self._write_state()

    async def _write_state(self, serving_generation: int | None = None) -> None:
        async with self._writing:
            latest = self._last_state
            if latest is None or (latest == self._written and serving_generation is None):
                return
            await asyncio.to_thread(
                self._store.set_service_state, self.name, *latest, serving_generation=serving_generation
            )
            self._written = latest
            endpoint = endpoint_of(self.name)
            if endpoint is not None:  # a version: its endpoint's state follows (control/endpoints.py)
                await asyncio.to_thread(write_endpoint_state, self._store, endpoint)

    # -- scaling (called by control/autoscaler.py) -----------------------------------------

    @property
    def replica_count(self) -> int:
        """The replicas the serving generation should have (draining ones excluded)."""
        return self._desired_replicas

    @property
    def scaling(self) -> bool:
        """A roll-out, a pass or a scale-up is in progress; a decision now would be stale."""
        gen, memory = self._generation, self._memory
        if gen is None or gen not in (memory.serving, memory.failed) or self._lock.locked():
            return True
        serving = [r for r in self.replicas() if r.generation == memory.serving and r.state not in _GONE]
        return any(r.new for r in serving) or len(serving) != self._desired_replicas

    async def scale_to(self, count: int, reason: str, utilization: float | None) -> int:
        """Set the serving generation's replica count to ``count``, record a scale event and
        carry it out now. Removals return at once; their drains run in the target."""
        current = self._desired_replicas
        if self.serving_generation is None or count == current:
            return current
        await self._record_scale(current, count, reason, utilization)
        self._desired_replicas = count
        await self.reconcile()
        return self._desired_replicas

    async def _record_scale(self, old: int, new: int, reason: str, utilization: float | None) -> None:
        data = {
            "from": old,
            "to": new,
            "reason": reason,
            "utilization": None if utilization is None else round(utilization, 3),
        }
        log.info("service %s: scale %d -> %d: %s", self.name, old, new, reason)
        self.scale_events += 1
        await asyncio.to_thread(self._store.add_event, self.name, "scale", data)

    async def note_scaling(self, note: str | None, event: tuple[int, str, float | None] | None = None) -> None:
        """Show ``note`` (e.g. "the machine cannot fit another replica") in the state detail
        while the service is Healthy, or clear it with None; ``event`` = (wanted, reason,
        utilization) also records a scale event that keeps the count."""
        if event is not None:
            wanted, reason, utilization = event
            await self._record_scale(self._desired_replicas, self._desired_replicas, reason, utilization)
            log.warning("service %s: wanted %d replicas: %s", self.name, wanted, reason)
        if note == self._scale_note:
            return
        previous, self._scale_note = self._scale_note, note
        last = self._last_state
        if last is not None and last[0] == HEALTHY and last[1] == previous:
            await self._show(HEALTHY, None)  # shows the new note, or none

    def status(self) -> dict[str, Any]:
        return {
            "serving_generation": self.serving_generation,
            "replicas": [r.as_dict() for r in self.replicas()],
        }


class Reconciler:
    """All services of one workspace on one compute target: controllers created, woken and removed."""

    def __init__(
        self,
        store: Store,
        target: ComputeTarget,
        planner: Planner = plan_generation,
        compute_target: str | None = None,
        capacity: Capacity | None = None,
        cluster: str | None = None,
        idle_resync_s: float = _RESYNC_S,
    ) -> None:
        self._store = store
        # how often a steady service is looked at unprompted (``LOCAL_IDLE_RESYNC_S``)
        self.idle_resync_s = idle_resync_s
        # The local cluster checks every deploy and update against this machine's room
        # (``control/room.py``); another target's scheduler places its own replicas.
        self.capacity = capacity if capacity is not None or compute_target is not None else machine_capacity()
        self._planner = planner
        self.target = target
        # Which services are this reconciler's: those whose config names this compute target
        # (None: the local cluster's, which name none); others are left to their target's.
        self.compute_target = compute_target
        # The local cluster's id (store/clusters.py): in a shared workspace it runs only the local
        # services that record it as their owner, never a teammate's. None: every local service.
        self.cluster = cluster
        self.controllers: dict[str, ServiceController] = {}
        self._deleting: set[asyncio.Task[None]] = set()  # versions an endpoint no longer lists
        self._watching: asyncio.Task[None] | None = None  # _watch_records, from the first sync on
        target.watch(self._on_replica_change)

    def owns(self, record: ServiceRecord) -> bool:
        if (record.config.get(COMPUTE_TARGET_KEY) or None) != self.compute_target:
            return False
        if self.compute_target is not None or self.cluster is None or not self._store.shared:
            return True  # a folder workspace has one local cluster: every local service is its
        return record.cluster == self.cluster

    def _adopt(self, record: ServiceRecord) -> ServiceRecord:
        """A local service with no recorded owner (deployed before owners were recorded) becomes
        this cluster's when it ran here before (its runtime folder is here), or, in a folder
        workspace, always; the first claim wins. Others stay unowned: run by no daemon until
        deployed again (``Model.deploy(..., overwrite=True)`` records the deployer's cluster)."""
        if record.cluster is not None or self.cluster is None or self.compute_target is not None:
            return record
        if record.config.get(COMPUTE_TARGET_KEY):
            return record
        ran_here = (Path(self._store.runtime_dir) / "services" / record.name).is_dir()
        if self._store.shared and not ran_here:
            return record
        owner = self._store.claim_service(record.name, self.cluster)
        log.info("service %s: no owner recorded; now owned by %s", record.name, owner)
        return dataclasses.replace(record, cluster=owner)

    def _on_replica_change(self, service: str) -> None:
        controller = self.controllers.get(service)
        if controller is not None:
            controller.wake()

    def on_replica_failed(self, service: str, replica_id: str) -> None:
        """The router saw ``replica_id`` fail mid-request: have the target probe it now."""
        self.target.check_now(replica_id)

    async def restore(self) -> None:
        """Bring back every service of this compute target recorded in the workspace (daemon
        start); for the local cluster of a shared workspace, only those it owns (``owns``)."""
        records = await asyncio.to_thread(self._store.list_services)
        for record in records:
            if is_endpoint_config(record.config):  # its versions are services of their own
                if self.owns(record):
                    self.sync_endpoint(record)
                continue
            if record.state == FAILED and record.serving_generation is None:
                continue  # stays Failed until updated; retrying would fail the same way
            with contextlib.suppress(NotFound):
                record = await asyncio.to_thread(self._adopt, record)
            if self.owns(record):
                self.sync(record.name)

    def sync(self, name: str) -> None:
        controller = self.controllers.get(name)
        if controller is None:
            with contextlib.suppress(NotFound):  # a short SQLite read, as refresh_route's
                record = self._store.get_service(name)
                if not self.owns(record):
                    return
                if is_endpoint_config(record.config):
                    self.sync_endpoint(record)
                    return
            room = self._refusal if self.capacity is not None else None
            controller = ServiceController(name, self._store, self.target, self._planner, room, self.idle_resync_s)
            self.controllers[name] = controller
            controller.start()
            if self._watching is None:
                self._watching = asyncio.create_task(self._watch_records(), name="service records")
        else:
            controller.refresh_route()
            controller.wake()

    def _refusal(self, service: str, spec: DeploySpec, replicas: int) -> str | None:
        assert self.capacity is not None
        return refusal(self.capacity, service, spec, replicas, holdings(self.controllers.values(), exclude=service))

    def sync_endpoint(self, record: ServiceRecord) -> None:
        """An endpoint (``control/endpoints.py``): its route published, its versions' services
        synced, versions it no longer lists deleted."""
        spec = DeploySpec.from_dict(record.config["deploy"])
        self.target.publish(endpoint_entry(record, route_for(record, spec, Memory(), None)))
        for service in version_services(record):
            self.sync(service)
        for service in stale_versions(list(self.controllers), record):
            task = asyncio.create_task(self.delete(service), name=f"delete {service}")
            self._deleting.add(task)
            task.add_done_callback(self._deleting.discard)
        state = asyncio.create_task(asyncio.to_thread(write_endpoint_state, self._store, record.name))
        self._deleting.add(state)  # kept until done, as the deletions are
        state.add_done_callback(self._deleting.discard)

    async def delete(self, name: str) -> None:
        record: ServiceRecord | None = None
        with contextlib.suppress(NotFound):  # refused before anything stops: another cluster runs it
            record = await asyncio.to_thread(self._store.get_service, name)
            refusal = self._store.foreign_refusal(record, "deleted")
            if refusal is not None and self.compute_target is None:
                raise refusal
        if record is not None and is_endpoint_config(record.config):  # its versions first
            await asyncio.gather(*(self.delete(service) for service in version_services(record)))
        controller = self.controllers.pop(name, None)
        drain_s = 0.0
        if controller is not None:
            await controller.close()
            drain_s = controller.spec.scoring_timeout_ms / 1000.0 if controller.spec else 0.0
        await self.target.delete(name, drain_s)
        with contextlib.suppress(NotFound):
            await asyncio.to_thread(self._store.delete_service, name)
        await asyncio.to_thread(shutil.rmtree, Path(self._store.runtime_dir) / "services" / name, True)

    async def _watch_records(self) -> None:
        """Once a second, the services' count and summed ``updated_time`` (one row), and when
        that moved, every service's ``updated_time``: a controller whose record moved (an update
        through another process or machine, a deletion) reads it again. Changes made through
        the admin API reach their controller at once (``sync``)."""
        last_summary: tuple[int, float | None] | None = None
        while True:
            await asyncio.sleep(_RESYNC_S)
            try:
                # every change moves a service's updated_time, so the count and the sum of them
                # move too: while they stay, nothing changed and the full list is not read
                summary = await asyncio.to_thread(self._store.service_stamps_summary)
                if summary == last_summary:
                    continue
                stamps = await asyncio.to_thread(self._store.service_stamps)
                last_summary = summary
            except Exception:
                log.exception("reading the services' change times failed; trying again")
                continue
            for name, controller in list(self.controllers.items()):
                seen = controller.record_stamp
                if seen is not None and stamps.get(name) != seen:
                    controller.record_changed()

    async def shutdown(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching
            self._watching = None
        controllers = list(self.controllers.values())
        self.controllers.clear()
        await asyncio.gather(*(c.close() for c in controllers))
        await self.target.close(0.0)

    def status(self) -> dict[str, Any]:
        return {name: c.status() for name, c in self.controllers.items()}
