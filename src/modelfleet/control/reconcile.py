"""Desired services (the workspace) against actual replicas (the compute target).

One ``ServiceController`` per service runs on the daemon's event loop. Each pass it reads
the service from the store and, when the stored generation is newer than the one serving,
rolls it out:

1. write the generation's app folder (models, snapshot) and start its replicas;
2. if any replica fails init(): stop the new ones. With nothing serving yet the service
   ends ``Failed``; otherwise the old generation keeps serving and the failure is recorded;
3. otherwise point the router at the new replicas, mark the service ``Healthy``, then drain
   the old ones (the router stops assigning, waits for in-flight to reach 0 within the
   scoring timeout) and only then stop their processes.

So an update never leaves a moment with no Ready replica behind the router, and a failed
update never takes the service down. Between roll-outs the controller keeps the state
(``Healthy`` when every replica of the serving generation is Ready, ``Unhealthy`` when
some are not) and the router's replica set in step with the target's supervision.

``scale_to`` (called by ``control/autoscaler.py``) changes the serving generation's replica
count between roll-outs. Up: new replicas start at the lowest free indexes and join the
router one by one as each turns Ready. Down: the drain order of every removal (logged step
by step): the router stops assigning to the replica, its in-flight requests finish (at most
the scoring timeout), SIGTERM, then SIGKILL after the grace period; so no request fails.
A roll-out keeps the current count (clamped to the new min/max) when autoscaling is on,
and ``num_replicas`` when it is off. Roll-outs and scaling take turns (one lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from modelfleet.control.credentials import signing_public_key
from modelfleet.control.environments import resolve_for_service
from modelfleet.control.layout import prepare_app, remove_generation
from modelfleet.errors import ModelfleetError, NotFound
from modelfleet.router.auth import KeyAuth, TokenAuth
from modelfleet.router.proxy import Router, ServiceRoute, Upstream
from modelfleet.spec import DeploySpec, EnvironmentSpec
from modelfleet.store.registry import ServiceRecord, Store
from modelfleet.targets.base import Probe, ReplicaInfo, ReplicaPlan, ReplicaState
from modelfleet.targets.local import LocalTarget

log = logging.getLogger("modelfleet.control")

HEALTHY, UNHEALTHY, TRANSITIONING, FAILED = "Healthy", "Unhealthy", "Transitioning", "Failed"
_STOP_GRACE_S = 10.0
_RESYNC_S = 1.0


class ServiceController:
    def __init__(self, name: str, store: Store, target: LocalTarget, router: Router) -> None:
        self.name = name
        self._store = store
        self._target = target
        self._router = router
        self._wake = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        # generation state: which generation serves, which one failed (not retried until changed)
        self.serving_generation: int | None = None
        self._failed_generation: int | None = None
        self._desired_replicas = 0
        self._route: ServiceRoute | None = None
        self._auth: KeyAuth | TokenAuth | None = None
        self._last_state: tuple[str, str | None] | None = None
        # scaling (see scale_to): the latest spec and plan, the lock shared with roll-outs,
        # replica indexes still starting, replicas being drained, and the drain tasks
        self.spec: DeploySpec | None = None
        self._serving_plan: ReplicaPlan | None = None
        self._lock = asyncio.Lock()
        self._starting: set[int] = set()
        self._removing: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._scale_note: str | None = None
        self.scale_events = 0  # recorded since the daemon started (metrics)

    def __repr__(self) -> str:
        return f"<ServiceController {self.name} serving={self.serving_generation} replicas={self._desired_replicas}>"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"controller {self.name}")

    def wake(self) -> None:
        self._wake.set()

    async def close(self, *, stop_replicas: bool = True) -> None:
        self._closed = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._background):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._router.remove_service(self.name)
        if stop_replicas:
            await asyncio.gather(*(self._target.stop(r.id, _STOP_GRACE_S) for r in self.replicas()))

    def replicas(self) -> list[ReplicaInfo]:
        return self._target.replicas(self.name)

    # -- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closed:
            try:
                await self._sync_once()
            except NotFound:
                return  # deleted behind our back; the reconciler drops us
            except Exception:
                log.exception("service %s: reconcile pass failed", self.name)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _RESYNC_S)

    async def _sync_once(self) -> None:
        record = await asyncio.to_thread(self._store.get_service, self.name)
        spec = DeploySpec.from_dict(record.config["deploy"])
        self.spec = spec
        self._apply_route(record, spec)
        generation = record.generation
        if generation != self.serving_generation and generation != self._failed_generation:
            async with self._lock:
                await self._roll_out(record, spec)
        await self._publish_state()

    def refresh_route(self) -> None:
        """Apply the stored keys and limits to the router now, so a regenerated key is refused
        from the moment ``regen_key`` returns (a short SQLite read on the loop; admin calls are rare)."""
        with contextlib.suppress(NotFound):
            record = self._store.get_service(self.name)
            self._apply_route(record, DeploySpec.from_dict(record.config["deploy"]))

    def _apply_route(self, record: ServiceRecord, spec: DeploySpec) -> None:
        if spec.auth_enabled:
            if isinstance(self._auth, KeyAuth):
                self._auth.set_keys(record.primary_key or "", record.secondary_key or "")
            else:
                self._auth = KeyAuth(record.primary_key or "", record.secondary_key or "")
        elif spec.token_auth_enabled:
            if not isinstance(self._auth, TokenAuth):
                # the public half of the workspace's signing key; JWT times are wall-clock
                self._auth = TokenAuth(signing_public_key(self._store.root), self.name, clock=time.time)
        else:
            self._auth = None
        route = ServiceRoute(
            name=self.name,
            auth=self._auth,
            max_concurrent=spec.replica_max_concurrent_requests,
            max_wait_s=spec.max_request_wait_time / 1000.0,
            timeout_s=spec.scoring_timeout_ms / 1000.0,
            max_body_bytes=spec.max_body_bytes,
            trace=spec.enable_app_insights,
        )
        if route != self._route:
            self._router.set_service(route)
            self._route = route

    async def _roll_out(self, record: ServiceRecord, spec: DeploySpec) -> None:
        generation = record.generation
        log.info("service %s: rolling out generation %d", self.name, generation)
        await self._set_state(
            TRANSITIONING if self.serving_generation is None else HEALTHY,
            None if self.serving_generation is None else f"updating to generation {generation}",
        )
        try:
            plan = await asyncio.to_thread(self._plan, record, spec)
        except ModelfleetError as exc:
            await self._fail(generation, str(exc))
            return
        count = spec.initial_replicas()
        if spec.autoscale.enabled and self.serving_generation is not None:
            # an update keeps the autoscaled count, within the (maybe new) min and max
            scale = spec.autoscale
            count = min(max(self._desired_replicas, scale.min_replicas), scale.max_replicas)
        started = await asyncio.gather(*(self._target.start(plan, i) for i in range(count)))
        failed = [r for r in started if r.state is not ReplicaState.READY]
        if failed:
            await asyncio.gather(*(self._target.stop(r.id, _STOP_GRACE_S) for r in started))
            why = failed[0].detail or "replica failed to start"
            await self._fail(generation, f"{why}; see service.get_logs() or `modelfleet service logs -n {self.name}`")
            return
        old = [r for r in self.replicas() if r.generation != generation]
        self.serving_generation = generation
        self._serving_plan = plan
        self._desired_replicas = count
        self._failed_generation = None
        self._publish_replicas()
        await asyncio.to_thread(self._store.set_service_state, self.name, HEALTHY, None, serving_generation=generation)
        self._last_state = (HEALTHY, None)
        await asyncio.to_thread(
            self._store.add_event,
            self.name,
            "deployment",
            {"generation": generation, "outcome": "succeeded", "replicas": count},
        )
        if old:
            await self._retire(old, spec)

    async def _retire(self, old: list[ReplicaInfo], spec: DeploySpec) -> None:
        ids = [r.id for r in old]
        log.info("service %s: draining %d old replicas", self.name, len(ids))
        await self._router.drain(self.name, ids, spec.scoring_timeout_ms / 1000.0)
        await asyncio.gather(*(self._target.stop(rid, _STOP_GRACE_S) for rid in ids))
        for generation in {r.generation for r in old}:
            await asyncio.to_thread(remove_generation, self._store.runtime_dir, self.name, generation)

    async def _fail(self, generation: int, message: str) -> None:
        self._failed_generation = generation
        outcome = {"generation": generation, "outcome": "failed", "message": message}
        await asyncio.to_thread(self._store.add_event, self.name, "deployment", outcome)
        if self.serving_generation is None:
            await self._set_state(FAILED, message)
        else:
            detail = (
                f"update to generation {generation} failed: {message}; "
                f"still serving generation {self.serving_generation}"
            )
            await self._set_state(HEALTHY, detail)
        log.error("service %s: generation %d failed: %s", self.name, generation, message)

    def _plan(self, record: ServiceRecord, spec: DeploySpec) -> ReplicaPlan:
        layout = prepare_app(self._store, self.name, record.generation, record.config)
        env_spec = EnvironmentSpec.from_dict(record.config.get("environment") or {"name": "default"})
        resolved, isolation = resolve_for_service(self._store, self.name, record.generation, env_spec)
        probe = Probe(
            period_s=float(spec.liveness.period_seconds),
            timeout_s=float(spec.liveness.timeout_seconds),
            failure_threshold=spec.liveness.failure_threshold,
            startup_deadline_s=float(spec.liveness.initial_delay_seconds),
        )
        return ReplicaPlan(
            service=self.name,
            generation=record.generation,
            python=resolved.python,
            app_root=layout.app_root,
            entry_script=layout.entry_script,
            environment={**isolation, **layout.environment},
            max_concurrent=spec.replica_max_concurrent_requests,
            probe=probe,
        )

    # -- scaling (called by control/autoscaler.py) -----------------------------------------

    @property
    def replica_count(self) -> int:
        """The replicas the serving generation has or is starting (draining ones excluded)."""
        return self._desired_replicas

    @property
    def scaling(self) -> bool:
        """A roll-out or a scale-up holds the replica set; a decision now would be stale."""
        return self._lock.locked()

    async def scale_to(self, count: int, reason: str, utilization: float | None) -> int:
        """Change the serving generation's replica count to ``count``; records a scale event.

        Returns the count reached: lower than asked when new replicas failed to start (a
        second event says why). Removals return at once; their drains run in the background.
        """
        async with self._lock:
            current = self._desired_replicas
            if self.serving_generation is None or self._serving_plan is None or count == current:
                return current
            await self._record_scale(current, count, reason, utilization)
            if count > current:
                return await self._scale_up(self._serving_plan, current, count)
            self._scale_down(current - count)
            return count

    async def _scale_up(self, plan: ReplicaPlan, current: int, count: int) -> int:
        used = {r.index for r in self.replicas()}
        indexes = [i for i in range(len(used) + count) if i not in used][: count - current]
        self._desired_replicas = count
        self._starting.update(indexes)
        log.info("service %s: scaling %d -> %d, starting replicas %s", self.name, current, count, indexes)
        try:
            started = await asyncio.gather(*(self._target.start(plan, i) for i in indexes))
        finally:
            self._starting.difference_update(indexes)
        failed = [r for r in started if r.state is not ReplicaState.READY]
        if failed:
            await asyncio.gather(*(self._target.stop(r.id, _STOP_GRACE_S) for r in failed))
            self._desired_replicas = count - len(failed)
            why = failed[0].detail or "replica failed to start"
            await self._record_scale(
                count, self._desired_replicas, f"{len(failed)} new replica(s) failed to start: {why}", None
            )
        return self._desired_replicas

    def _scale_down(self, how_many: int) -> None:
        candidates = [
            r for r in self.replicas() if r.generation == self.serving_generation and r.id not in self._removing
        ]
        # not-Ready replicas go first (they serve nothing), then the highest indexes
        candidates.sort(key=lambda r: (r.state is ReplicaState.READY, -r.index))
        victims = [r.id for r in candidates[:how_many]]
        self._desired_replicas -= len(victims)
        self._removing.update(victims)
        # step 1 of the drain order: the router assigns nothing new to them from here on
        self._publish_replicas()
        task = asyncio.create_task(self._remove(victims), name=f"scale down {self.name}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _remove(self, ids: list[str]) -> None:
        spec = self.spec
        timeout_s = spec.scoring_timeout_ms / 1000.0 if spec else 60.0
        try:
            # step 2: wait for their in-flight requests (router.drain logs the counts)
            drained = await self._router.drain(self.name, ids, timeout_s)
            # steps 3 and 4: SIGTERM, then SIGKILL after the grace period (targets/local.py)
            log.info("service %s: stopping %s (drained: %s)", self.name, ids, drained)
            await asyncio.gather(*(self._target.stop(rid, _STOP_GRACE_S) for rid in ids))
            log.info("service %s: removed %s; %d replicas", self.name, ids, self._desired_replicas)
        finally:
            self._removing.difference_update(ids)

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
        last = self._last_state
        if note is not None and last is not None and last[0] == HEALTHY:
            await self._set_state(HEALTHY, note)
        elif note is None and last is not None and last == (HEALTHY, self._scale_note):
            await self._set_state(HEALTHY, None)
        self._scale_note = note

    # -- keeping the router and the stored state in step ----------------------------------

    def on_replica_change(self) -> None:
        self._publish_replicas()
        self.wake()

    def _publish_replicas(self) -> None:
        ready = [
            Upstream(id=r.id, host="127.0.0.1", port=r.port)
            for r in self.replicas()
            if r.generation == self.serving_generation
            and r.state is ReplicaState.READY
            and r.port
            and r.id not in self._removing
        ]
        self._router.set_replicas(self.name, ready)

    async def _publish_state(self) -> None:
        if self.serving_generation is None:
            return
        serving = [
            r
            for r in self.replicas()
            if r.generation == self.serving_generation and r.id not in self._removing and r.index not in self._starting
        ]
        ready = sum(r.state is ReplicaState.READY for r in serving)
        if ready == len(serving) and serving:
            if self._last_state and self._last_state[0] == UNHEALTHY:
                await self._set_state(HEALTHY, None)
        else:
            await self._set_state(UNHEALTHY, f"{ready} of {len(serving)} replicas ready")

    async def _set_state(self, state: str, detail: str | None) -> None:
        if self._last_state == (state, detail):
            return
        self._last_state = (state, detail)
        await asyncio.to_thread(self._store.set_service_state, self.name, state, detail)

    def status(self) -> dict[str, Any]:
        return {
            "serving_generation": self.serving_generation,
            "replicas": [r.as_dict() for r in self.replicas()],
        }


class Reconciler:
    """All services of one workspace: controllers created, woken and removed on request."""

    def __init__(self, store: Store, runtime_dir: Path, router: Router) -> None:
        self._store = store
        self._router = router
        self._runtime_dir = runtime_dir
        self.target = LocalTarget(runtime_dir, on_change=self._on_replica_change)
        self.controllers: dict[str, ServiceController] = {}

    def _on_replica_change(self, service: str) -> None:
        controller = self.controllers.get(service)
        if controller is not None:
            controller.on_replica_change()

    def on_replica_failed(self, service: str, replica_id: str) -> None:
        """The router saw ``replica_id`` fail mid-request: probe it now."""
        self._target_check(replica_id)

    def _target_check(self, replica_id: str) -> None:
        self.target.check_now(replica_id)

    async def restore(self) -> None:
        """Bring back every service recorded in the workspace (daemon start)."""
        records = await asyncio.to_thread(self._store.list_services)
        for record in records:
            if record.state == FAILED and record.serving_generation is None:
                continue  # stays Failed until updated; retrying would fail the same way
            self.sync(record.name)

    def sync(self, name: str) -> None:
        controller = self.controllers.get(name)
        if controller is None:
            controller = ServiceController(name, self._store, self.target, self._router)
            self.controllers[name] = controller
            controller.start()
        else:
            controller.refresh_route()
            controller.wake()

    async def delete(self, name: str) -> None:
        controller = self.controllers.pop(name, None)
        if controller is not None:
            await controller.close()
        with contextlib.suppress(NotFound):
            await asyncio.to_thread(self._store.delete_service, name)
        await asyncio.to_thread(shutil.rmtree, self._runtime_dir / "services" / name, True)

    async def shutdown(self) -> None:
        controllers = list(self.controllers.values())
        self.controllers.clear()
        await asyncio.gather(*(c.close() for c in controllers))
        await self.target.stop_all(_STOP_GRACE_S)

    def status(self) -> dict[str, Any]:
        return {name: c.status() for name, c in self.controllers.items()}
