"""The in-cluster router's autoscaler: the router's own counts -> ``router/autoscale.decide`` ->
PATCH ``deployments/<service>-g<N>/scale``, by the one router pod that holds the Lease.

Every router pod routes; only the holder of the Lease ``modelfleet-router`` (coordination.k8s.io,
15 s, renewed every 5 s; taken over once it expired) scales, so two router pods never fight
over a count. Each pod samples its own counts four times a second; the holder's are a share
of the traffic when several pods route (the other pods' counts are not added: a known limit,
see the report of issue 14).

Per service with autoscaling on (the serving generation's ``settings.json`` in its ConfigMap
``S-g<N>-config``): ``Counts`` from the router's stats (in flight, queued, Ready replicas of
the serving generation, per-replica limit) and the Deployment's ``spec.replicas`` as the
current count (read once per refresh period). A new count is patched through the scale
subresource (the router's Role grants ``patch`` on ``deployments/scale`` and nothing else that
writes a Deployment); the workspace's controller adopts it (``control/k8s_controller.py``)
and records the scale event.

The holder also sizes the router Deployment itself (``router_scale.py``: out on routing time,
in on CPU), from its own pod's loop lag and CPU, sampled on this loop's timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from modelfleet.errors import ConfigError
from modelfleet.router.autoscale import Counts, ScaleSettings, ScaleState, decide
from modelfleet.router.proxy import Router
from modelfleet.spec import DeploySpec
from modelfleet.targets.kubernetes import router_scale
from modelfleet.targets.kubernetes.manifests import ROUTER_LEASE, ROUTER_NAME
from modelfleet.targets.kubernetes.target import deployment_name, generation_config_name

__all__ = ["Lease", "Scaler"]

log = logging.getLogger("modelfleet.router.scaler")

SAMPLE_S = 0.25
LEASE_S = 15
RENEW_S = 5.0
ROUTER_READ_S = 2.0  # how often the holder reads the router Deployment's size and settings


class Lease:
    """Leader election over one Lease object, as client-go's leaderelection does it: take it
    when it is free or expired, renew it while held; a conflicting write (409) means another
    pod got there first."""

    def __init__(
        self, api: client.ApiClient, namespace: str, identity: str, name: str = ROUTER_LEASE, duration_s: int = LEASE_S
    ) -> None:
        self.coord = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.identity = identity
        self.name = name
        self.duration_s = duration_s
        self.held = False

    def tick(self) -> bool:
        now = datetime.datetime.now(datetime.timezone.utc)
        spec = client.V1LeaseSpec(
            holder_identity=self.identity, lease_duration_seconds=self.duration_s, renew_time=now, acquire_time=now
        )
        try:
            lease = self.coord.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = client.V1Lease(metadata=client.V1ObjectMeta(name=self.name), spec=spec)
            self.held = _try(lambda: self.coord.create_namespaced_lease(self.namespace, body))
            return self.held
        current = lease.spec
        mine = current.holder_identity == self.identity
        renewed = current.renew_time or current.acquire_time
        duration = current.lease_duration_seconds or self.duration_s
        expired = renewed is None or renewed + datetime.timedelta(seconds=duration) < now
        if not (mine or expired):
            self.held = False
            return False
        if mine and current.acquire_time is not None:
            spec.acquire_time = current.acquire_time
        lease.spec = spec  # lease.metadata keeps its resourceVersion: a concurrent writer gets 409
        self.held = _try(lambda: self.coord.replace_namespaced_lease(self.name, self.namespace, lease))
        return self.held


def _try(call: Any) -> bool:
    try:
        call()
        return True
    except ApiException as exc:
        if exc.status in (404, 409):
            return False
        raise


@dataclass
class _Service:
    generation: int
    settings: ScaleSettings | None  # None: autoscaling off
    limit: int
    state: ScaleState = field(default_factory=ScaleState)
    current: int | None = None
    read_at: float = 0.0


class Scaler:
    """Runs on the router's loop; API calls go to a thread."""

    def __init__(self, api: client.ApiClient, namespace: str, router: Router, identity: str) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.namespace = namespace
        self.router = router
        self.lease = Lease(api, namespace, identity)
        self._services: dict[str, _Service] = {}
        self._task: asyncio.Task[None] | None = None
        self._renewed_at = -RENEW_S
        self.probe = router_scale.LoadProbe()
        self._router_load = router_scale.RouterScaleState()
        self._router: tuple[int, router_scale.RouterScaleSettings | None] | None = None
        self._router_read_at = -ROUTER_READ_S

    def start(self, serving: Any) -> None:
        """``serving(service) -> (generation, ready replicas) | None``, from discovery."""
        self._serving = serving
        self._task = asyncio.create_task(self._run(), name="router autoscaler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self._step(time.monotonic())
            except Exception:
                log.exception("autoscaler step failed")
            self.probe.expect(SAMPLE_S)
            await asyncio.sleep(SAMPLE_S)
            self.probe.sample(self._router_load)

    async def _step(self, now: float) -> None:
        if now - self._renewed_at >= RENEW_S:
            self._renewed_at = now
            was = self.lease.held
            try:
                held = await asyncio.to_thread(self.lease.tick)
            except Exception as exc:
                held = self.lease.held = False
                log.warning("lease %s not renewed: %s", ROUTER_LEASE, exc)
            if held != was:
                log.info("lease %s %s by %s", ROUTER_LEASE, "held" if held else "not held", self.lease.identity)
        if self.lease.held:
            await self._scale_router(now)
        stats = self.router.stats()
        for name in [n for n in self._services if n not in stats]:
            del self._services[name]
        for name, st in stats.items():
            serving = self._serving(name)
            if serving is None:
                continue
            generation, ready = serving
            svc = self._services.get(name)
            if svc is None or svc.generation != generation:
                svc = await asyncio.to_thread(self._load, name, generation)
                self._services[name] = svc
            if svc.settings is None:
                continue
            if svc.current is None or now - svc.read_at >= svc.settings.refresh_s:
                svc.current = await asyncio.to_thread(self._current, name, generation)
                svc.read_at = now
            if svc.current is None:
                continue
            counts = Counts(st["in_flight"], st["queued"], ready, svc.current, svc.limit)
            decision, svc.state = decide(counts, svc.settings, svc.state, now)
            if decision.desired != svc.current and self.lease.held:
                await self._scale(name, generation, svc, decision.desired, decision.reason, now)

    async def _scale_router(self, now: float) -> None:
        if now - self._router_read_at >= ROUTER_READ_S:
            self._router_read_at = now
            self._router = await asyncio.to_thread(self._read_router)
        if self._router is None:
            return
        replicas, settings = self._router
        if settings is None:
            return
        desired, reason = router_scale.decide(replicas, settings, self._router_load, now)
        if desired == replicas:
            return
        body = {"spec": {"replicas": desired}}
        try:
            await asyncio.to_thread(self.apps.patch_namespaced_deployment_scale, ROUTER_NAME, self.namespace, body)
        except ApiException as exc:
            log.warning("router: scale to %d refused (%s %s)", desired, exc.status, exc.reason)
            return
        log.info("router: scaled %s %d -> %d: %s", ROUTER_NAME, replicas, desired, reason)
        self._router = (desired, settings)

    def _read_router(self) -> tuple[int, router_scale.RouterScaleSettings | None] | None:
        try:
            dep = self.apps.read_namespaced_deployment(ROUTER_NAME, self.namespace)
        except ApiException as exc:
            if exc.status != 404:  # 404: a router run beside the cluster, with no Deployment
                log.warning("router: Deployment %s not readable (%s %s)", ROUTER_NAME, exc.status, exc.reason)
            return None
        try:
            settings = router_scale.RouterScaleSettings.from_annotations(dep.metadata.annotations)
        except ConfigError as exc:
            log.warning("router: not scaling itself: %s", exc.message)
            settings = None
        return int(dep.spec.replicas or 0), settings

    def _load(self, service: str, generation: int) -> _Service:
        try:
            cm = self.core.read_namespaced_config_map(generation_config_name(service, generation), self.namespace)
            spec = DeploySpec.from_dict(json.loads((cm.data or {})["settings.json"]))
        except Exception as exc:
            log.warning("service %s: no autoscale settings for generation %d (%s)", service, generation, exc)
            return _Service(generation, None, 1)
        settings = ScaleSettings.from_spec(spec.autoscale) if spec.autoscale.enabled else None
        # x max_batch_size when batching: the router's limit per replica (its pods report no busy calls yet)
        return _Service(generation, settings, spec.admitted_per_replica())

    def _current(self, service: str, generation: int) -> int | None:
        try:
            return int(
                self.apps.read_namespaced_deployment(deployment_name(service, generation), self.namespace).spec.replicas
            )
        except ApiException as exc:
            log.warning("service %s: Deployment not readable (%s %s)", service, exc.status, exc.reason)
            return None

    async def _scale(self, service: str, generation: int, svc: _Service, desired: int, reason: str, now: float) -> None:
        name = deployment_name(service, generation)
        body = {"spec": {"replicas": desired}}
        start = time.monotonic()
        try:
            await asyncio.to_thread(self.apps.patch_namespaced_deployment_scale, name, self.namespace, body)
        except ApiException as exc:
            log.warning("service %s: scale to %d refused (%s %s)", service, desired, exc.status, exc.reason)
            return
        log.info(
            "service %s: scaled %s %d -> %d (decision to deployments/scale patched: %.0f ms): %s",
            service,
            name,
            svc.current,
            desired,
            (time.monotonic() - start) * 1000,
            reason,
        )
        svc.current, svc.read_at = desired, now
