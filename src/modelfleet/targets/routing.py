"""The local target's side of the router that runs in the same process (the daemon).

``RouterTable`` turns the reconciler's ``RouteEntry`` values into the router's own objects
(``ServiceRoute`` with its key or token check) and keeps each service's replica set equal to
the rule of ``targets/base.ComputeTarget``: the Ready, live replicas of the serving
generation, reached by their address (a Unix socket path, or host:port), each with its
service's replica secret (``Upstream.secret``, given with ``publish``). It hands the router a
new set only when the set, or the secret, changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from modelfleet.router.auth import KeyAuth, TokenAuth
from modelfleet.router.proxy import Router, ServiceRoute, Upstream
from modelfleet.targets.base import ReplicaInfo, ReplicaState, RouteEntry
from modelfleet.targets.endpoints import EndpointEntry

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

__all__ = ["RouterTable", "upstream"]

_DEFAULT_DRAIN_S = 60.0


class RouterTable:
    def __init__(self, router: Router, token_key: Callable[[], EllipticCurvePublicKey] | None = None) -> None:
        self.router = router
        self._token_key = token_key  # the workspace's public key, read when a service first needs it
        self._routes: dict[str, RouteEntry] = {}
        self._auth: dict[str, KeyAuth | TokenAuth] = {}
        self._published: dict[str, tuple[str, ...]] = {}
        self._secrets: dict[str, bytes | None] = {}  # service -> its replicas' secret
        self._endpoints: set[str] = set()  # endpoints (no replicas of their own)

    def __repr__(self) -> str:
        return f"<RouterTable {self._published}>"

    def publish(self, route: RouteEntry, replica_secret: bytes | None = None) -> None:
        """The service's limits and auth, and whether it failed, applied to the router now.
        ``replica_secret``: what the router sends the service's replicas (``Upstream.secret``);
        a changed one reaches the router's replica set at the next ``sync``."""
        service = route.service
        front = ServiceRoute(
            name=service,
            auth=self._auth_for(route),
            max_concurrent=route.max_concurrent,
            max_wait_s=route.max_wait_s,
            timeout_s=route.timeout_s,
            max_body_bytes=route.max_body_bytes,
            trace=route.trace,
        )
        if isinstance(route, EndpointEntry):  # an endpoint: its versions' services serve it
            self.router.set_endpoint(front, route.versions)
            self._routes[service] = route
            self._endpoints.add(service)
            return
        self.router.set_service(front)
        previous = self._routes.get(service)
        if route.failure != (previous.failure if previous else None):
            # every replica failed init(): the router says the service failed, and why
            self.router.set_service_failed(service, route.failure)
        self._routes[service] = route
        if self._secrets.get(service) != replica_secret:
            self._secrets[service] = replica_secret
            self._published.pop(service, None)  # same replicas, new head lines: hand them over again

    def drain_s(self, service: str) -> float:
        """How long a removed replica may take to finish (the service's scoring timeout)."""
        route = self._routes.get(service)
        return route.timeout_s if route is not None else _DEFAULT_DRAIN_S

    def sync(self, service: str, live: Iterable[ReplicaInfo]) -> None:
        """``live``: the service's replicas that are neither draining nor stopping."""
        route = self._routes.get(service)
        if route is None or service in self._endpoints:
            return  # the router has no such service yet (publish comes first), or an endpoint
        ready = [
            r for r in live if r.generation == route.serving_generation and r.state is ReplicaState.READY and r.address
        ]
        ids = tuple(r.id for r in ready)
        if self._published.get(service) == ids:
            return
        self._published[service] = ids
        secret = self._secrets.get(service)
        self.router.set_replicas(service, [upstream(r, secret) for r in ready])

    def remove(self, service: str) -> None:
        """New requests get 404, waiting ones 503; requests in flight finish."""
        self.router.remove_service(service)
        self._routes.pop(service, None)
        self._endpoints.discard(service)
        self._auth.pop(service, None)
        self._published.pop(service, None)
        self._secrets.pop(service, None)

    def _auth_for(self, route: RouteEntry) -> KeyAuth | TokenAuth | None:
        current = self._auth.get(route.service)
        auth: KeyAuth | TokenAuth | None = None
        if route.auth == "key":
            if isinstance(current, KeyAuth):  # keep the object: the router holds it
                current.set_keys(route.primary_key or "", route.secondary_key or "")
                auth = current
            else:
                auth = KeyAuth(route.primary_key or "", route.secondary_key or "")
        elif route.auth == "token":
            if isinstance(current, TokenAuth):
                auth = current
            elif self._token_key is None:
                raise RuntimeError("token auth needs the workspace's public key: RouterTable(token_key=...)")
            else:
                auth = TokenAuth(self._token_key(), route.service, clock=time.time)  # JWT times: wall clock
        if auth is None:
            self._auth.pop(route.service, None)
        else:
            self._auth[route.service] = auth
        return auth


def upstream(info: ReplicaInfo, secret: bytes | None = None) -> Upstream:
    """Where the router reaches a replica, from its address, and the secret it sends it."""
    address = info.address or ""
    if address.startswith("/"):  # host and port then only name it in the router's logs
        return Upstream(id=info.id, host="localhost", port=0, unix_path=address, secret=secret)
    host, port = address.rsplit(":", 1)
    return Upstream(id=info.id, host=host, port=int(port), secret=secret)
