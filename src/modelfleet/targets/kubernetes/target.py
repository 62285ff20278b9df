"""The Kubernetes compute target: ``targets/base.ComputeTarget`` over the official client.

Each call maps onto API objects as ``base.ComputeTarget``'s docstring says, in one namespace:

    apply(spec)      ConfigMap S-g<N>-config (the generation's settings and file layout) and
                     Deployment S-g<N> (pods labelled with the service and the generation),
                     created, or patched to the spec when they exist (applying twice changes
                     nothing); pods come from ``manifests.service_objects``
    scale(...)       pods named in ``remove`` get a low ``pod-deletion-cost``, then
                     PATCH deployments/S-g<N>/scale
    retire(...)      DELETE Deployment S-g<N> and its ConfigMap (pods go Terminating: DRAINING)
    replicas(S)      pods by label, from a watch kept in a thread (``pods.replicas_of``)
    publish(route)   ConfigMap S-route and Secret S-keys (``routes.py``), read by the router
    replica_secret   Secret S-keys' replicaSecret, read (or made, once) before a Deployment or
                     the keys are written, and kept: every generation's pods and the router
                     get the same one, so an update never meets a pod with another
    logs(S)          pods/log of the replica container
    delete(S)        every Deployment, ConfigMap (S-route too) and Secret labelled with the service

``ApiException`` becomes ``TargetError`` at one boundary (``api.py``). The blocking
client runs in a thread for the async calls; ``publish`` writes at once (two small requests)
because the reconciler expects a published key to be in force when it returns.

What runs the pods is the cluster's business (a kubelet; in this repository's tests, the node
stand-in in ``tests/k8s``). A generation's pod template is a ``KubernetesPlan``: the
reconciler's ``ReplicaPlan`` plus the ``manifests.ServiceSource`` it was made from.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import functools
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from modelfleet.errors import ConfigError, TargetError
from modelfleet.targets.base import GenerationSpec, OnChange, ReplicaInfo, ReplicaPlan, RouteEntry
from modelfleet.targets.kubernetes import manifests as m
from modelfleet.targets.kubernetes.api import api_error, call, delete_if_present, upsert
from modelfleet.targets.kubernetes.pods import GENERATION_LABEL, is_ready, replicas_of
from modelfleet.targets.kubernetes.routes import keys_secret, replica_secret_of, route_config_map

__all__ = ["DELETION_COST", "KubernetesPlan", "KubernetesTarget", "deployment_name", "generation_objects"]

log = logging.getLogger("modelfleet.targets.kubernetes")

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
REPLICA_SELECTOR = f"{m.COMPONENT_LABEL}=replica,app.kubernetes.io/managed-by=modelfleet"
_WATCH_TIMEOUT_S = 60
# A stopped watch ends at its next event or timeout; its thread is a daemon, so stopping
# waits only briefly for it rather than up to a minute (a pod's SIGTERM must end it fast).
_STOP_WAIT_S = 2.0


@dataclass(frozen=True)
class KubernetesPlan(ReplicaPlan):
    """A generation's template for this target: ``source`` is what its pods are made from."""

    source: m.ServiceSource | None = None


def deployment_name(service: str, generation: int) -> str:
    return f"{service}-g{generation}"


def generation_config_name(service: str, generation: int) -> str:
    return f"{deployment_name(service, generation)}-config"


def generation_objects(src: m.ServiceSource, generation: int, replicas: int) -> list[dict[str, Any]]:
    """The ConfigMap and Deployment of one generation: ``manifests.service_objects``' pair,
    renamed per generation and labelled with it, so that two generations run side by side
    during a roll-out and the router can tell their pods apart. The Secret is ``publish``'s."""
    _, config, deployment = copy.deepcopy(m.service_objects(src))
    name, config_name = deployment_name(src.name, generation), generation_config_name(src.name, generation)
    gen = {GENERATION_LABEL: str(generation)}
    config["metadata"]["name"] = config_name
    config["metadata"]["labels"].update(gen)
    deployment["metadata"]["name"] = name
    deployment["metadata"]["labels"].update(gen)
    spec = deployment["spec"]
    spec["replicas"] = replicas
    spec["selector"]["matchLabels"].update(gen)
    spec["template"]["metadata"]["labels"].update(gen)
    for volume in spec["template"]["spec"]["volumes"]:
        if "configMap" in volume:
            volume["configMap"]["name"] = config_name
    return [config, deployment]


class KubernetesTarget:
    """Services as Deployments in ``namespace`` of the cluster ``api`` talks to."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str = "default",
        token_key_pem: Callable[[], str] | None = None,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self._token_key_pem = token_key_pem
        self._on_change: OnChange = lambda service: None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The pod cache, filled by the watch thread; read by replicas() on the event loop.
        self._lock = threading.Lock()
        self._pods: dict[str, dict[str, Any]] = {}  # by uid
        self._ever_ready: set[str] = set()
        self._version: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        # Replica counts this target asked for, by Deployment: a different spec.replicas seen
        # on a Deployment was set by someone else (the router's autoscaler): ``on_scaled``.
        self.on_scaled: Callable[[str, int, int], None] | None = None
        self._asked: dict[str, int] = {}
        self._deployments_watch: watch.Watch | None = None
        self._deployments_thread: threading.Thread | None = None
        self._replica_secrets: dict[str, str] = {}  # service -> Secret S-keys' replicaSecret, as read or made
        self._replica_secrets_lock = threading.Lock()  # apply (a thread) and publish (the loop) both ask

    def __repr__(self) -> str:
        return f"<KubernetesTarget namespace={self.namespace} pods={len(self._pods)}>"

    # -- the pod cache ---------------------------------------------------------------------

    def start(self) -> None:
        """List the pods and keep following them (idempotent; the first call of any method
        does it). Listing first means ``replicas`` is current as soon as this returns."""
        if self._thread is not None:
            return
        self._relist()
        self._thread = threading.Thread(target=self._follow, name=f"k8s-pods-{self.namespace}", daemon=True)
        self._thread.start()
        follow = self._follow_deployments
        self._deployments_thread = threading.Thread(
            target=follow, name=f"k8s-deployments-{self.namespace}", daemon=True
        )
        self._deployments_thread.start()

    def _follow_deployments(self) -> None:
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    listed = self.apps.list_namespaced_deployment(self.namespace, label_selector=REPLICA_SELECTOR)
                    version = listed.metadata.resource_version
                self._deployments_watch = watch.Watch()
                for event in self._deployments_watch.stream(
                    self.apps.list_namespaced_deployment,
                    self.namespace,
                    label_selector=REPLICA_SELECTOR,
                    resource_version=version,
                    timeout_seconds=_WATCH_TIMEOUT_S,
                ):
                    if self._stop.is_set():
                        return
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        raise ApiException(status=410)
                    version = obj.metadata.resource_version or version
                    if event["type"] == "MODIFIED":
                        self._seen_count(obj)
            except Exception as exc:
                if self._stop.is_set():
                    return
                if not (isinstance(exc, ApiException) and exc.status == 410):
                    log.warning("deployment watch in %s restarts after: %s", self.namespace, exc)
                    self._stop.wait(0.5)
                version = None

    def _seen_count(self, deployment: Any) -> None:
        name, replicas = deployment.metadata.name, deployment.spec.replicas
        labels = deployment.metadata.labels or {}
        asked = self._asked.get(name)
        if asked is None or replicas is None or replicas == asked or self.on_scaled is None:
            return
        self._asked[name] = replicas
        service, generation = labels.get(m.SERVICE_LABEL), labels.get(GENERATION_LABEL)
        loop = self._loop
        if service and generation and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.on_scaled, service, int(generation), int(replicas))

    def _relist(self) -> None:
        listed = call(
            "list pods", lambda: self.core.list_namespaced_pod(self.namespace, label_selector=REPLICA_SELECTOR)
        )
        pods = {p["metadata"]["uid"]: p for p in (self.api.sanitize_for_serialization(i) for i in listed.items)}
        with self._lock:
            before = {uid: _service_of(p) for uid, p in self._pods.items()}
            self._pods = pods
            self._ever_ready.update(uid for uid, p in pods.items() if is_ready(p))
            self._version = listed.metadata.resource_version
        for service in {*before.values(), *(_service_of(p) for p in pods.values())}:
            self._changed(service)

    def _follow(self) -> None:
        # Resumes from the last resourceVersion, so nothing falls between two watches;
        # 410 Gone (too old) starts over from a fresh list.
        while not self._stop.is_set():
            self._watch = watch.Watch()
            try:
                for event in self._watch.stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    label_selector=REPLICA_SELECTOR,
                    resource_version=self._version,
                    timeout_seconds=_WATCH_TIMEOUT_S,
                ):
                    if self._stop.is_set():
                        return
                    self._on_event(event["type"], self.api.sanitize_for_serialization(event["object"]))
            except Exception as exc:
                if self._stop.is_set():
                    return
                if isinstance(exc, ApiException) and exc.status == 410:
                    with contextlib.suppress(TargetError):
                        self._relist()
                    continue
                log.warning("pod watch in %s restarts after: %s", self.namespace, exc)
                self._stop.wait(0.5)
                # the API server may be unreachable still (a connection error, not a TargetError):
                # the thread must live on and try again, not die with it
                with contextlib.suppress(Exception):
                    self._relist()

    def _on_event(self, kind: str, pod: dict[str, Any]) -> None:
        if kind == "ERROR":
            raise ApiException(status=pod.get("code", 500), reason=pod.get("message"))
        uid = pod["metadata"]["uid"]
        with self._lock:
            self._version = pod["metadata"].get("resourceVersion") or self._version
            if kind == "DELETED":
                self._pods.pop(uid, None)
                self._ever_ready.discard(uid)
            else:
                self._pods[uid] = pod
                if is_ready(pod):
                    self._ever_ready.add(uid)
        self._changed(_service_of(pod))

    def _changed(self, service: str | None) -> None:
        if service is None:
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._on_change, service)

    # -- ComputeTarget ---------------------------------------------------------------------

    def watch(self, on_change: OnChange) -> None:
        self._on_change = on_change
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()

    def replicas(self, service: str) -> list[ReplicaInfo]:
        self.start()
        with self._lock:
            pods = [p for p in self._pods.values() if _service_of(p) == service]
            ever_ready = set(self._ever_ready)
        return replicas_of(pods, ever_ready)

    async def apply(self, spec: GenerationSpec) -> None:
        plan = spec.plan
        if not isinstance(plan, KubernetesPlan) or plan.source is None:
            raise TargetError(f"service {plan.service}: the Kubernetes target needs a KubernetesPlan with its source")
        if plan.source.effective_namespace != self.namespace:
            raise ConfigError(
                f"service {plan.service}: namespace {plan.source.effective_namespace!r} is not the compute "
                f"target's namespace {self.namespace!r}; leave namespace out or attach a target for it"
            )
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._apply, plan.source, plan.generation, spec.replicas)

    def _apply(self, src: m.ServiceSource, generation: int, replicas: int) -> None:
        self.start()
        # The Secret's replicaSecret exists before any pod that refers to it is made.
        src = replace(src, replica_secret=self.replica_secret(src.name))
        config, deployment = generation_objects(src, generation, replicas)
        ns = self.namespace
        upsert(
            f"ConfigMap {config['metadata']['name']}",
            lambda: self.core.create_namespaced_config_map(ns, config),
            lambda: self.core.replace_namespaced_config_map(config["metadata"]["name"], ns, config),
        )
        name = deployment["metadata"]["name"]
        self._asked[name] = replicas
        # The pod template is replaced whole ($patch: replace, a strategic merge directive): a
        # container, env var, volume or annotation it no longer has (the "ship" sidecar, once
        # the upload credential is removed) goes; a merge would keep it. An equal template
        # rolls nothing (the same pod-template-hash).
        patch = copy.deepcopy(deployment)
        patch["spec"]["template"]["$patch"] = "replace"
        upsert(
            f"Deployment {name}",
            lambda: self.apps.create_namespaced_deployment(ns, deployment),
            lambda: self.apps.patch_namespaced_deployment(name, ns, patch),
        )
        log.info("deployment %s/%s applied with %d replicas", ns, name, replicas)

    async def scale(self, service: str, generation: int, replicas: int, remove: Collection[str] = ()) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._scale, service, generation, replicas, tuple(remove))

    def _scale(self, service: str, generation: int, replicas: int, remove: tuple[str, ...]) -> None:
        ns, name = self.namespace, deployment_name(service, generation)
        # Honoured where PodDeletionCost is on (1.22+ by default); otherwise the ReplicaSet
        # still removes not-Ready pods first, then the newest.
        cheapest = {"metadata": {"annotations": {DELETION_COST: "-1000"}}}
        for pod in remove:
            with contextlib.suppress(TargetError):
                call(f"annotate pod {pod}", functools.partial(self.core.patch_namespaced_pod, pod, ns, cheapest))
        self._asked[name] = replicas
        call(
            f"scale Deployment {name}",
            lambda: self.apps.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": replicas}}),
        )
        log.info("deployment %s/%s scaled to %d", ns, name, replicas)

    async def retire(self, service: str, generation: int, drain_s: float) -> None:
        await asyncio.to_thread(self._retire, service, generation)

    def _retire(self, service: str, generation: int) -> None:
        ns = self.namespace
        name = deployment_name(service, generation)
        delete_if_present(f"Deployment {name}", lambda: self.apps.delete_namespaced_deployment(name, ns, **_BACKGROUND))
        config = generation_config_name(service, generation)
        delete_if_present(f"ConfigMap {config}", lambda: self.core.delete_namespaced_config_map(config, ns))

    def replica_secret(self, service: str) -> str:
        """The secret ``service``'s pods require (Secret S-keys, ``replicaSecret``): the one the
        Secret holds, else a new one written there (the Secret made if need be). Read once per
        service and kept, so that every later write of the Secret carries the same value."""
        with self._replica_secrets_lock:
            known = self._replica_secrets.get(service)
            if known is None:
                known = self._replica_secrets[service] = self._read_or_make_replica_secret(service)
            return known

    def _read_or_make_replica_secret(self, service: str) -> str:
        ns, name = self.namespace, m.secret_name(service)
        what = f"Secret {name}"
        for _ in range(3):  # another writer may create the Secret between our read and create
            try:
                found = self.api.sanitize_for_serialization(self.core.read_namespaced_secret(name, ns))
            except ApiException as exc:
                if exc.status != 404:
                    raise api_error(what, exc) from exc
                found = None
            except OSError as exc:
                raise TargetError(f"Kubernetes API: {what} failed: cannot reach the API server ({exc})") from exc
            value = replica_secret_of(found)
            if value is not None:
                break
            value = m.new_replica_secret()
            if found is not None:  # a Secret from before replica secrets: the value is added to it
                patch = {"data": {m.REPLICA_SECRET_KEY: base64.b64encode(value.encode()).decode()}}
                call(what, functools.partial(self.core.patch_namespaced_secret, name, ns, patch))
                break
            body = keys_secret(RouteEntry(service, None, None), ns, value)
            try:
                self.core.create_namespaced_secret(ns, body)
                break
            except ApiException as exc:
                if exc.status != 409:
                    raise api_error(what, exc) from exc
            except OSError as exc:
                raise TargetError(f"Kubernetes API: {what} failed: cannot reach the API server ({exc})") from exc
        else:
            raise TargetError(f"Kubernetes API: {what} failed: created and deleted by someone else meanwhile")
        return value

    def publish(self, route: RouteEntry) -> None:
        ns = self.namespace
        pem = self._token_key_pem() if self._token_key_pem is not None and route.auth == "token" else None
        replica_secret = self.replica_secret(route.service)
        config = route_config_map(route, ns, pem, replica_secret)
        secret = keys_secret(route, ns, replica_secret)
        # The keys first: a router that sees the new route reads keys that are already there.
        upsert(
            f"Secret {secret['metadata']['name']}",
            lambda: self.core.create_namespaced_secret(ns, secret),
            lambda: self.core.replace_namespaced_secret(secret["metadata"]["name"], ns, secret),
        )
        upsert(
            f"ConfigMap {config['metadata']['name']}",
            lambda: self.core.create_namespaced_config_map(ns, config),
            lambda: self.core.replace_namespaced_config_map(config["metadata"]["name"], ns, config),
        )

    def logs(self, service: str, replica_id: str | None = None, tail_lines: int = 5000) -> str:
        return pod_logs(self.core, self.namespace, self.replicas(service), replica_id, tail_lines)

    async def delete(self, service: str, drain_s: float) -> None:
        await asyncio.to_thread(self._delete_service, service)

    def _delete_service(self, service: str) -> None:
        ns = self.namespace
        self._replica_secrets.pop(service, None)  # its Secret goes below; a new service gets a new one
        selector = f"{m.SERVICE_LABEL}={service},app.kubernetes.io/managed-by=modelfleet"
        listed = call("list Deployments", lambda: self.apps.list_namespaced_deployment(ns, label_selector=selector))
        for d in listed.items:
            name = d.metadata.name
            delete_if_present(
                f"Deployment {name}", functools.partial(self.apps.delete_namespaced_deployment, name, ns, **_BACKGROUND)
            )
        maps = call("list ConfigMaps", lambda: self.core.list_namespaced_config_map(ns, label_selector=selector))
        for c in maps.items:
            name = c.metadata.name
            delete_if_present(f"ConfigMap {name}", functools.partial(self.core.delete_namespaced_config_map, name, ns))
        secrets = call("list Secrets", lambda: self.core.list_namespaced_secret(ns, label_selector=selector))
        for s in secrets.items:
            name = s.metadata.name
            delete_if_present(f"Secret {name}", functools.partial(self.core.delete_namespaced_secret, name, ns))

    def services(self) -> set[str]:
        """The services that have objects in the namespace (route ConfigMaps, Deployments)."""
        ns, selector = self.namespace, "app.kubernetes.io/managed-by=modelfleet"
        deps = call("list Deployments", lambda: self.apps.list_namespaced_deployment(ns, label_selector=selector))
        maps = call("list ConfigMaps", lambda: self.core.list_namespaced_config_map(ns, label_selector=selector))
        found = {(o.metadata.labels or {}).get(m.SERVICE_LABEL) for o in [*deps.items, *maps.items]}
        return {s for s in found if s}

    def foreign_autoscalers(self) -> dict[str, str]:
        """HorizontalPodAutoscalers aimed at this target's Deployments, by service: modelfleet
        scales its services itself, and an HPA would fight it over the replica count."""
        hpas = call(
            "list HorizontalPodAutoscalers",
            lambda: client.AutoscalingV1Api(self.api).list_namespaced_horizontal_pod_autoscaler(self.namespace),
        )
        out: dict[str, str] = {}
        for hpa in hpas.items:
            ref = hpa.spec.scale_target_ref
            service, _, generation = (ref.name or "").rpartition("-g")
            if ref.kind == "Deployment" and service and generation.isdigit():
                out[service] = f"HorizontalPodAutoscaler {hpa.metadata.name} targets Deployment {ref.name}"
        return out

    def sync_router_role(self, services: Collection[str]) -> bool:
        """Make the router's Role grant ``get`` on exactly these services' Secrets (RBAC cannot
        filter by label, so the names are listed). False when no router is installed here."""
        ns, rbac = self.namespace, client.RbacAuthorizationV1Api(self.api)
        try:
            role = rbac.read_namespaced_role(m.ROUTER_NAME, ns)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise api_error(f"read Role {m.ROUTER_NAME}", exc) from exc
        rules = m.router_rules([m.secret_name(s) for s in services])
        current = self.api.sanitize_for_serialization(role).get("rules") or []
        if current != rules:
            body = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "rules": rules}
            body["metadata"] = self.api.sanitize_for_serialization(role.metadata)
            call(f"update Role {m.ROUTER_NAME}", lambda: rbac.replace_namespaced_role(m.ROUTER_NAME, ns, body))
            log.info("Role %s/%s: Secrets of %s", ns, m.ROUTER_NAME, sorted(services) or "no service")
        return True

    def check_now(self, replica_id: str) -> None:
        """The kubelet probes; the router sees the pod's Ready condition change."""

    async def close(self, drain_s: float) -> None:
        """Pods outlive this process; only the watch thread stops."""
        self._stop.set()
        for w in (self._watch, self._deployments_watch):
            if w is not None:
                w.stop()
        for t in (self._thread, self._deployments_thread):
            if t is not None:
                await asyncio.to_thread(t.join, _STOP_WAIT_S)

    # -- for status and tests --------------------------------------------------------------

    def wait_for(self, service: str, check: Callable[[list[ReplicaInfo]], bool], timeout_s: float) -> bool:
        """Poll this target's view of ``service`` until ``check`` holds (tests, scripts)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check(self.replicas(service)):
                return True
            time.sleep(0.1)
        return check(self.replicas(service))


_BACKGROUND: dict[str, Any] = {"propagation_policy": "Background"}


def service_replicas(api: client.ApiClient, namespace: str, service: str) -> list[ReplicaInfo]:
    """A service's pods as replicas, read once (no watch): for one-off status and logs."""
    core = client.CoreV1Api(api)
    selector = f"{m.SERVICE_LABEL}={service},{REPLICA_SELECTOR}"
    listed = call("list pods", lambda: core.list_namespaced_pod(namespace, label_selector=selector))
    return replicas_of([api.sanitize_for_serialization(p) for p in listed.items])


def pod_logs(
    core: client.CoreV1Api,
    namespace: str,
    replicas: list[ReplicaInfo],
    replica_id: str | None,
    tail_lines: int,
    uploaded: Mapping[str, str] | None = None,
) -> str:
    """Each pod's state (and why it is not Ready), then its replica container's log: what the
    pod uploaded (``uploaded``: pod name -> its last lines, from the workspace's copy) when
    there is some, else pods/log (which the kubelet serves: without one the reason it failed
    is shown instead). Then the pods no longer in the cluster that uploaded a log, with it."""
    uploaded = uploaded or {}
    out: list[str] = []
    for r in replicas:
        if replica_id not in (None, r.id):
            continue
        source = "; uploaded log" if r.id in uploaded else ""
        if r.id in uploaded:
            text = uploaded[r.id]
        else:
            try:
                text = core.read_namespaced_pod_log(r.id, namespace, container="replica", tail_lines=tail_lines)
            except ApiException as exc:
                text = f"(no log from the API: {exc.status} {exc.reason})\n"
            except Exception as exc:  # the API server cannot reach a kubelet: a connection error
                text = f"(no log from the API: {exc})\n"
        detail = f": {r.detail}" if r.detail else ""
        out.append(
            f"=== pod {r.id} (generation {r.generation}, {r.state.value}{detail}, {r.restarts} restarts{source}) ===\n"
        )
        out.append(text if text.endswith("\n") or not text else text + "\n")
    current = {r.id for r in replicas}
    for pod, text in uploaded.items():
        if pod not in current and replica_id in (None, pod):
            out.append(f"=== pod {pod} (gone from the cluster; uploaded log) ===\n")
            out.append(text if text.endswith("\n") or not text else text + "\n")
    return "".join(out)


def _service_of(pod: dict[str, Any]) -> str | None:
    return (pod.get("metadata", {}).get("labels") or {}).get(m.SERVICE_LABEL)
