"""How the in-cluster router learns its services and their Ready pods: by watching the API.

Two watches, each in a thread, as a small informer does (list, then watch from the list's
resourceVersion, list again after 410 Gone or an error; a watch ends every minute and starts
again, which also re-reads every service's keys):

- route ConfigMaps (``routes.ROUTE_SELECTOR``): each says a service's serving generation,
  auth kind and limits; the service's keys, and the secret its pods require
  (``replicaSecret``, which becomes every upstream's ``Upstream.secret``), are then read
  from its Secret **by name** (the router's Role grants ``get`` on those names only, never
  list or watch);
- replica Pods (``target.REPLICA_SELECTOR``): ``pods.replicas_of`` turns them into replicas,
  and the Ready ones of the serving generation are the router's upstreams.

A third watch follows the router's own pods (``peers.ROUTER_SELECTOR``): the Ready ones are
the peers that split each replica's slots between them (``peers.py`` says how and why); a
change of peers re-syncs every service. A service this router owns no slot of is forwarded
to the peers that own its slots (``forward.py``), at their pod IPs.

Everything reaches the router through ``targets/routing.RouterTable`` (the same object the
local target uses), on the router's event loop: the router's data path imports no client.
A pod going Terminating leaves the table at once (new requests go elsewhere; those in
flight finish), as the local target's draining replicas do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from modelfleet.errors import TargetError
from modelfleet.router.proxy import Router, Upstream
from modelfleet.targets.base import ReplicaState, RouteEntry
from modelfleet.targets.kubernetes.forward import (
    PEER_PORT,
    UNREACHABLE_S,
    forward_counts,
    forward_upstreams,
    peer_of,
    secret_digest,
)
from modelfleet.targets.kubernetes.manifests import secret_name
from modelfleet.targets.kubernetes.peers import ROUTER_SELECTOR, expand, peers_of, shares
from modelfleet.targets.kubernetes.pods import is_ready, replicas_of
from modelfleet.targets.kubernetes.routes import ROUTE_SELECTOR, replica_secret_of, route_from, token_key_of
from modelfleet.targets.kubernetes.target import REPLICA_SELECTOR
from modelfleet.targets.routing import RouterTable

__all__ = ["Discovery", "ForwardingTable"]

log = logging.getLogger("modelfleet.router.discovery")

_WATCH_TIMEOUT_S = 60
# A stopped watch ends at its next event or timeout; its thread is a daemon, so stopping
# waits only briefly for it rather than up to a minute (a pod's SIGTERM must end it fast).
_STOP_WAIT_S = 2.0
_RETRY_S = 1.0


class ForwardingTable(RouterTable):
    """``RouterTable`` that can also hand a service's requests to peer routers."""

    def secret(self, service: str) -> bytes | None:
        return self._secrets.get(service)

    def forward(self, service: str, upstreams: list[Upstream]) -> None:
        """The service's requests go to ``upstreams`` (peer routers) until the next ``sync``
        hands it replicas again."""
        if service not in self._routes:
            return
        ids = tuple(u.id for u in upstreams)
        if self._published.get(service) == ids:
            return
        self._published[service] = ids
        self.router.set_replicas(service, upstreams)


class Discovery:
    """Feeds ``router`` from the API objects of ``namespace``. ``start`` on the router's loop."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        router: Router,
        identity: str | None = None,
        peer_port: int = PEER_PORT,
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.table = ForwardingTable(router, token_key=self._token_key)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watches: list[watch.Watch] = []
        self._lock = threading.Lock()
        self._pods: dict[str, dict[str, Any]] = {}  # by uid
        self._ever_ready: set[str] = set()
        self._routes: dict[str, str] = {}  # service -> route ConfigMap resourceVersion applied
        self._latest: dict[str, dict[str, Any]] = {}  # service -> its route ConfigMap as last seen
        self._token_pem: str | None = None
        # On the loop: each service's serving generation and its Ready replicas (the autoscaler's)
        self._serving: dict[str, tuple[int, int]] = {}
        self._generations: dict[str, int] = {}
        self._listed = {"routes": threading.Event(), "pods": threading.Event(), "peers": threading.Event()}
        # identity: this router's pod name; with None it is no peer and uses every slot
        self.identity = identity
        self._peers: list[str] = []
        self._peer_ips: dict[str, str] = {}  # peer -> its pod IP
        self._limits: dict[str, int] = {}  # on the loop: service -> replica_max_concurrent_requests
        # On the loop: forwarding to peers (forward.py)
        self.peer_port = peer_port
        self._forwarding: dict[str, tuple[str, ...]] = {}  # service -> the peers it goes to
        self._by_secret: dict[bytes, str] = {}  # secret_digest(replica secret) -> service
        self._unreachable: dict[str, float] = {}  # peer -> until when (loop time) it is skipped

    def __repr__(self) -> str:
        return f"<Discovery namespace={self.namespace} services={sorted(self._routes)} pods={len(self._pods)}>"

    @property
    def synced(self) -> bool:
        """Both lists were read once (the router then knows what the cluster held at start)."""
        return all(e.is_set() for e in self._listed.values())

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        follows = (("routes", self._follow_routes), ("pods", self._follow_pods), ("peers", self._follow_peers))
        for name, follow in follows:
            t = threading.Thread(target=follow, name=f"discovery-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    async def stop(self) -> None:
        self._stop.set()
        for w in list(self._watches):
            w.stop()
        for t in self._threads:
            await asyncio.to_thread(t.join, _STOP_WAIT_S)

    # -- the two informers -------------------------------------------------------------------

    def _informer(self, what: str, lister: Callable[..., Any], selector: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """("LISTED", {uid: object}) after each list, then (event type, object) per event."""
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    listed = lister(self.namespace, label_selector=selector)
                    version = listed.metadata.resource_version
                    objs = [self.api.sanitize_for_serialization(o) for o in listed.items]
                    yield "LISTED", {o["metadata"]["uid"]: o for o in objs}
                w = watch.Watch()
                self._watches.append(w)
                try:
                    for event in w.stream(
                        lister,
                        self.namespace,
                        label_selector=selector,
                        resource_version=version,
                        timeout_seconds=_WATCH_TIMEOUT_S,
                    ):
                        if self._stop.is_set():
                            return
                        obj = self.api.sanitize_for_serialization(event["object"])
                        if event["type"] == "ERROR":
                            raise ApiException(status=obj.get("code", 500), reason=obj.get("message"))
                        version = obj["metadata"].get("resourceVersion") or version
                        yield event["type"], obj
                finally:
                    self._watches.remove(w)
                yield "RESYNC", {}
            except Exception as exc:
                if self._stop.is_set():
                    return
                if not (isinstance(exc, ApiException) and exc.status == 410):
                    log.warning("%s watch in %s restarts after: %s", what, self.namespace, exc)
                    self._stop.wait(1.0)
                version = None

    def _follow_routes(self) -> None:
        maps: dict[str, dict[str, Any]] = {}  # by service
        for kind, obj in self._informer("route", self.core.list_namespaced_config_map, ROUTE_SELECTOR):
            if kind == "LISTED":
                fresh = {_service(o): o for o in obj.values()}
                for gone in set(maps) - set(fresh):
                    self._routes.pop(gone, None)
                    self._call(self._remove, gone)
                maps = fresh
                changed = list(fresh.values())
                self._routes.clear()  # a fresh list re-reads every service's keys
            elif kind == "RESYNC":
                self._routes.clear()
                changed = list(maps.values())
            elif kind == "DELETED":
                maps.pop(_service(obj), None)
                self._routes.pop(_service(obj), None)
                self._call(self._remove, _service(obj))
                changed = []
            else:
                maps[_service(obj)] = obj
                changed = [obj]
            self._latest = dict(maps)
            for cm in changed:
                self._read_route(cm)
            if kind == "LISTED":
                self._listed["routes"].set()

    def _read_route(self, cm: dict[str, Any]) -> None:
        service = _service(cm)
        version = cm["metadata"].get("resourceVersion", "")
        if self._routes.get(service) == version:
            return
        try:
            secret = self.api.sanitize_for_serialization(
                self.core.read_namespaced_secret(secret_name(service), self.namespace)
            )
        except ApiException as exc:
            if exc.status != 404:
                # e.g. 403 until the Role lists this service's Secret: try again shortly
                log.warning("service %s: keys not readable (%s %s); retrying", service, exc.status, exc.reason)
                retry = threading.Timer(_RETRY_S, self._retry, (service,))
                retry.daemon = True
                retry.start()
                return
            secret = None
        try:
            route = route_from(cm, secret)
            replica_secret = replica_secret_of(secret)
        except TargetError as exc:
            log.warning("service %s: %s", service, exc.message)
            return
        pem = token_key_of(cm)
        if pem:
            self._token_pem = pem
        self._routes[service] = version
        self._call(self._publish, route, replica_secret.encode() if replica_secret is not None else None)

    def _retry(self, service: str) -> None:
        cm = self._latest.get(service)
        if cm is not None and not self._stop.is_set():
            self._read_route(cm)

    def _follow_pods(self) -> None:
        for kind, obj in self._informer("pod", self.core.list_namespaced_pod, REPLICA_SELECTOR):
            with self._lock:
                if kind == "LISTED":
                    services = {_service(p) for p in (*self._pods.values(), *obj.values())}
                    self._pods = dict(obj)
                    self._ever_ready.update(uid for uid, p in obj.items() if is_ready(p))
                elif kind == "RESYNC":
                    continue
                else:
                    uid = obj["metadata"]["uid"]
                    services = {_service(obj)}
                    if kind == "DELETED":
                        self._pods.pop(uid, None)
                        self._ever_ready.discard(uid)
                    else:
                        self._pods[uid] = obj
                        if is_ready(obj):
                            self._ever_ready.add(uid)
            for service in services:
                self._call(self._sync, service)
            if kind == "LISTED":
                self._listed["pods"].set()

    def _follow_peers(self) -> None:
        routers: dict[str, dict[str, Any]] = {}  # by uid
        for kind, obj in self._informer("router pod", self.core.list_namespaced_pod, ROUTER_SELECTOR):
            if kind == "LISTED":
                routers = dict(obj)
            elif kind == "DELETED":
                routers.pop(obj["metadata"]["uid"], None)
            elif kind != "RESYNC":
                routers[obj["metadata"]["uid"]] = obj
            peers = peers_of(routers.values())
            ips = {
                str(p["metadata"]["name"]): str((p.get("status") or {}).get("podIP") or "") for p in routers.values()
            }
            with self._lock:
                changed = peers != self._peers or any(self._peer_ips.get(p) != ips.get(p) for p in peers)
                self._peers = peers
                self._peer_ips = {p: ips[p] for p in peers if ips.get(p)}
                services = {_service(p) for p in self._pods.values()}
            if changed:
                log.info("router peers: %s (this one: %s)", peers, self.identity)
                for service in services:
                    self._call(self._sync, service)
            if kind == "LISTED":
                self._listed["peers"].set()

    def peers(self) -> list[str]:
        """The router pods that share the replicas' slots (Ready, not Terminating), by name."""
        with self._lock:
            return list(self._peers)

    # -- on the router's loop ----------------------------------------------------------------

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, *args)

    def _publish(self, route: RouteEntry, replica_secret: bytes | None) -> None:
        try:
            # Each upstream is one slot (peers.expand), so the router's own limit is 1.
            self.table.publish(replace(route, max_concurrent=1), replica_secret)
            self._limits[route.service] = route.max_concurrent
            self._by_secret = {k: v for k, v in self._by_secret.items() if v != route.service}
            if replica_secret is not None:
                self._by_secret[secret_digest(replica_secret)] = route.service
        except Exception:
            log.exception("service %s: route not applied", route.service)
            return
        log.info("service %s: route applied (serving generation %s)", route.service, route.serving_generation)
        if route.serving_generation is None:
            self._generations.pop(route.service, None)
            self._serving.pop(route.service, None)
        else:
            self._generations[route.service] = route.serving_generation
        self._sync(route.service)

    def _sync(self, service: str) -> None:
        with self._lock:
            pods = [p for p in self._pods.values() if _service(p) == service]
            ever_ready = set(self._ever_ready)
            peers = list(self._peers)
        live = [r for r in replicas_of(pods, ever_ready) if r.state is not ReplicaState.DRAINING]
        limit = self._limits.get(service, 1)
        generation = self._generations.get(service)
        serving = [r for r in live if r.generation == generation and r.state is ReplicaState.READY and r.address]
        ids = [r.id for r in serving]
        owned = shares(ids, limit, peers, self.identity) if self.identity else None
        upstreams = self._forward(service, ids, limit, peers) if self.identity and owned is None else None
        if upstreams:
            self.table.forward(service, upstreams)
        else:
            if self._forwarding.pop(service, None) is not None:
                log.info("service %s: no longer forwarded (this router sends to replica slots)", service)
            self.table.sync(service, expand(serving, limit, owned))
        if generation is not None:
            self._serving[service] = (generation, len(serving))

    def _forward(self, service: str, ids: list[str], limit: int, peers: list[str]) -> list[Upstream] | None:
        """Upstreams to the peers owning the service's slots, when this router owns none."""
        secret = self.table.secret(service)
        if secret is None or self.identity is None:
            return None  # no proof to give a peer: the service's replicas take no secret
        now = self._now()
        unreachable = frozenset(p for p, until in self._unreachable.items() if until > now)
        counts = forward_counts(ids, limit, peers, self.identity, unreachable)
        with self._lock:
            addresses = dict(self._peer_ips)
        upstreams = forward_upstreams(counts or {}, addresses, secret, self.identity, self.peer_port)
        if not upstreams:
            return None
        to = tuple(sorted({p for p in counts or {} if p in addresses}))
        if self._forwarding.get(service) != to:
            self._forwarding[service] = to
            log.info("service %s: this router owns no slot of it; forwarding to %s", service, list(to))
        return list(upstreams)

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else time.monotonic()

    # -- what the peer port asks (forward.PeerDesk), on the loop ---------------------------

    def service_for(self, digest: bytes) -> str | None:
        return self._by_secret.get(digest)

    def forwards(self, service: str) -> bool:
        return service in self._forwarding

    def replica_failed(self, service: str, replica_id: str) -> None:
        """The router's report of an upstream that failed: a peer whose port refused is skipped
        for ``UNREACHABLE_S`` (its services go to replica slots meanwhile), then tried again."""
        peer = peer_of(replica_id)
        if peer is None or self._loop is None:
            return
        if self._unreachable.get(peer, 0.0) > self._now():
            return
        log.warning("peer router %s unreachable; not forwarding to it for %.0f s", peer, UNREACHABLE_S)
        self._unreachable[peer] = self._now() + UNREACHABLE_S
        self._resync_forwarded()
        self._loop.call_later(UNREACHABLE_S + 0.1, self._resync_forwarded)

    def _resync_forwarded(self) -> None:
        for service in list(self._limits):
            self._sync(service)

    def serving(self, service: str) -> tuple[int, int] | None:
        """The serving generation of ``service`` and how many of its replicas are Ready."""
        return self._serving.get(service)

    def _remove(self, service: str) -> None:
        self.table.remove(service)
        self._generations.pop(service, None)
        self._serving.pop(service, None)
        self._limits.pop(service, None)
        self._forwarding.pop(service, None)
        self._by_secret = {k: v for k, v in self._by_secret.items() if v != service}
        log.info("service %s: removed (its route ConfigMap is gone)", service)

    def _token_key(self) -> Any:
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        if self._token_pem is None:
            raise TargetError("a service uses tokens but no route ConfigMap carries the workspace's public key")
        return load_pem_public_key(self._token_pem.encode())


def _service(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata", {}).get("labels") or {}).get("modelfleet.io/service", ""))
