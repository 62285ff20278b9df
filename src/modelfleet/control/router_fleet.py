"""One router in N processes: what each router worker holds, and how their counts combine.

``FleetRouter`` is the router of the daemon (worker 0) and of every extra router worker process
(``router_workers.py``). The daemon's ``RouterTable`` calls it as it calls a ``Router``; each
call is applied here and, in the daemon, handed to ``fanout`` as plain data (``route_to_plain``
and friends: names, numbers, key and token *material*, never objects), which the workers apply
to their own ``FleetRouter``. So every worker's table equals the daemon's.

**Slots** (``slots``), how the workers share each replica's ``replica_max_concurrent_requests``:

- ``shared``: every worker sees every replica at the service's limit. Two workers may both
  fill the same replica; its busy answer (503 ``x-modelfleet-busy``) keeps the limit exact and
  the router retries elsewhere after a back-off.
- ``partitioned``: each replica's slots are dealt among the workers with the Kubernetes
  routers' dealing (``targets/kubernetes/peers.shares``, a pure function: round-robin, the
  first slot of every replica before the second of any); a slot a worker owns is one upstream
  of its own (``<replica>#<k>``, same address) at a limit of 1, as ``peers.expand`` does for
  router pods. Below capacity no replica is answered busy. A worker that owns no slot of a
  service (fewer slots in all than workers: one replica at limit 1 behind two workers) uses
  every slot, the same fallback a router pod takes when no owner is reachable; forwarding its
  requests to an owner instead (``forward.py``'s way) would cost a second router hop, in CPU
  and latency, on every request of exactly the services whose replicas, not the router, are
  the bottleneck, to save a retry on the collisions.

**Stats**: ``stats()`` is the one router the autoscaler and the admin status see
(``combine_stats``): per service, ``in_flight`` and ``queued`` are the workers' sums (each
worker queues its own clients' requests), ``limit`` the service's per-replica limit, ``idle_s``
the smallest (a request at any worker counts), each replica's ``in_flight`` the sum over its
slots and workers and ``ready`` true when any worker that owns a slot of it may send to it
(or no live worker owns one: a restarting worker's replicas do not look gone). The workers' figures are
at most about a second old (they report every ``REPORT_S``). Answer counters (by status,
latency histogram, 401s, drops) are added into the daemon's own ``ServiceMetrics`` as the
workers report them (``metrics_delta``/``add_metrics``), so every reader of those sees sums.
``/metrics``' in-flight, queued and ready gauges, the dashboard's and the autoscaler's replica
reports read ``stats()`` too. The same report carries, as plain JSON data:

- **mirror counters**: a mirror version's ``MirrorCounters`` (sent, dropped, agreed, ...,
  latency) cross in the same ``metrics_delta`` and ``add_metrics`` adds them into the daemon's
  (made when it has none), so ``/metrics`` and ``versions.version_figures`` count every copy;
- **401s by client address**: each report takes the worker's ``AuthFailures`` (leaving an
  empty one: ``take_auth_failures``), so its snapshot is the failures since the last report;
  the daemon's ``AuthFailures.merge`` adds it (totals and per address, within its LRU bound);
- **traces**: a worker's ``router.tracer`` is a ``TraceBuffer`` (``Tracer.add``'s bounded
  buffer, drops counted, never exported there); each report takes what it holds (request id
  lines as latin-1 text) and the drops since the last one, and ``add_traces`` hands them to
  the daemon's tracer (its ``add``, same perf_counter stamps: CLOCK_MONOTONIC, one clock for
  every process on Linux), which exports them with its own and counts the worker's drops in
  ``modelfleet_trace_dropped_total``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as _ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

from modelfleet.errors import ConfigError
from modelfleet.router.auth import AuthFailures, KeyAuth, TokenAuth
from modelfleet.router.proxy import Router, ServiceRoute, Upstream
from modelfleet.router.versions import VersionShare
from modelfleet.targets.kubernetes.peers import shares
from modelfleet.telemetry.counters import MirrorCounters, ServiceMetrics
from modelfleet.telemetry.tracing import Timing, Tracer

__all__ = [
    "SLOT_MODES",
    "FleetRouter",
    "TraceBuffer",
    "add_metrics",
    "add_traces",
    "combine_stats",
    "metrics_delta",
    "route_from_plain",
    "route_to_plain",
    "slot_upstreams",
    "take_auth_failures",
]

SLOT_MODES = ("shared", "partitioned")
REPORT_S = 1.0  # how often a worker reports its stats and counters to the daemon
TRACE_BUFFER = 10_000  # request timings a worker holds between two reports (more: dropped)
_SLOT = "#"


def peer_names(workers: int) -> list[str]:
    """The workers as ``peers.shares`` deals to them (sorted names, worker 0 first)."""
    return [f"w{i:03d}" for i in range(workers)]


def slot_upstreams(upstreams: Sequence[Upstream], limit: int, workers: int, index: int) -> list[Upstream]:
    """Worker ``index``'s slots of ``upstreams`` at ``limit`` each, dealt among ``workers``: one
    upstream ``<id>#<k>`` per slot owned, slot k of every replica before slot k+1 of any; every
    slot when it owns none (see the module docstring)."""
    names = peer_names(workers)
    owned = shares([u.id for u in upstreams], limit, names, names[index])
    counts = {u.id: (limit if owned is None else owned.get(u.id, 0)) for u in upstreams}
    out: list[Upstream] = []
    for k in range(max(counts.values(), default=0)):
        out += [replace(u, id=f"{u.id}{_SLOT}{k}") for u in upstreams if counts[u.id] > k]
    return out


def replica_of(slot_id: str) -> str:
    return slot_id.split(_SLOT, 1)[0]


# -- plain data for the workers --------------------------------------------------------------


def _text(b: bytes | None) -> str | None:
    return None if b is None else b.decode("latin-1")


def _bytes(s: str | None) -> bytes | None:
    return None if s is None else s.encode("latin-1")


def route_to_plain(route: ServiceRoute) -> dict[str, Any]:
    """A route as JSON-able data; its auth as the key material (keys, or the public key)."""
    auth = route.auth
    plain_auth: dict[str, Any] | None
    if auth is None:
        plain_auth = None
    elif isinstance(auth, KeyAuth):
        primary, secondary = auth.key_material()  # the material itself: the worker builds its own check
        plain_auth = {"kind": "key", "primary": _text(primary), "secondary": _text(secondary)}
    elif isinstance(auth, TokenAuth):
        plain_auth = {"kind": "token", "public_key": auth.public_key_pem()}
    else:
        raise ConfigError(f"router workers pass key or token auth only (service {route.name}: {auth!r})")
    return {
        "name": route.name,
        "auth": plain_auth,
        "max_concurrent": route.max_concurrent,
        "max_wait_s": route.max_wait_s,
        "timeout_s": route.timeout_s,
        "max_body_bytes": route.max_body_bytes,
        "trace": route.trace,
    }


def route_from_plain(data: Mapping[str, Any], tokens: dict[str, TokenAuth]) -> ServiceRoute:
    """The route back; ``tokens`` keeps one ``TokenAuth`` per service (its verified-token cache)."""
    plain_auth = data["auth"]
    name = data["name"]
    auth: KeyAuth | TokenAuth | None = None
    if plain_auth is not None and plain_auth["kind"] == "key":
        auth = KeyAuth(_bytes(plain_auth["primary"]), _bytes(plain_auth["secondary"]))
    elif plain_auth is not None:
        auth = tokens.get(name)
        if auth is None:
            key = serialization.load_pem_public_key(plain_auth["public_key"].encode())
            if not isinstance(key, EllipticCurvePublicKey):
                raise ConfigError(f"service {name}: token auth needs an EC public key")
            auth = tokens[name] = TokenAuth(key, name, clock=time.time)
    if not isinstance(auth, TokenAuth):
        tokens.pop(name, None)
    fields = {k: data[k] for k in ("max_concurrent", "max_wait_s", "timeout_s", "max_body_bytes", "trace")}
    return ServiceRoute(name=name, auth=auth, **fields)


def upstream_to_plain(u: Upstream) -> dict[str, Any]:
    return {"id": u.id, "host": u.host, "port": u.port, "unix_path": u.unix_path, "secret": _text(u.secret)}


def upstream_from_plain(data: Mapping[str, Any]) -> Upstream:
    return Upstream(data["id"], data["host"], data["port"], data["unix_path"], _bytes(data["secret"]))


# -- counters ----------------------------------------------------------------------------------


def metrics_snapshot(m: ServiceMetrics) -> dict[str, Any]:
    return {
        "codes": dict(m.codes),
        "buckets": list(m.buckets),
        "count": m.count,
        "seconds": m.seconds,
        "auth_missing": m.auth_missing,
        "auth_invalid": m.auth_invalid,
        "dropped": dict(m.dropped),
        "mirror": None if m.mirror is None else _mirror_snapshot(m.mirror),
    }


_MIRROR_COUNTS = ("sent", "dropped", "agreed", "disagreed", "errors", "count")


def _mirror_snapshot(mc: MirrorCounters) -> dict[str, Any]:
    return {**{k: getattr(mc, k) for k in _MIRROR_COUNTS}, "buckets": list(mc.buckets), "seconds": mc.seconds}


def _mirror_delta(before: Mapping[str, Any] | None, now: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if now is None:
        return None
    if before is None:
        delta = {**now, "buckets": list(now["buckets"])}
    else:
        delta = {k: now[k] - before[k] for k in _MIRROR_COUNTS}
        delta["buckets"] = [a - b for a, b in zip(now["buckets"], before["buckets"], strict=True)]
        delta["seconds"] = now["seconds"] - before["seconds"]
    return delta if any(delta[k] for k in _MIRROR_COUNTS) else None


def metrics_delta(before: Mapping[str, Any] | None, now: Mapping[str, Any]) -> dict[str, Any] | None:
    """What was counted between two ``metrics_snapshot``s (``None``: nothing)."""
    if before is None:
        delta = dict(now)
    else:
        delta = {
            "codes": {k: v - before["codes"].get(k, 0) for k, v in now["codes"].items()},
            "buckets": [a - b for a, b in zip(now["buckets"], before["buckets"], strict=True)],
            "count": now["count"] - before["count"],
            "seconds": now["seconds"] - before["seconds"],
            "auth_missing": now["auth_missing"] - before["auth_missing"],
            "auth_invalid": now["auth_invalid"] - before["auth_invalid"],
            "dropped": {k: v - before["dropped"].get(k, 0) for k, v in now["dropped"].items()},
        }
        delta["codes"] = {k: v for k, v in delta["codes"].items() if v}
        delta["dropped"] = {k: v for k, v in delta["dropped"].items() if v}
    delta["mirror"] = _mirror_delta(None if before is None else before.get("mirror"), now.get("mirror"))
    busy = delta["codes"] or delta["count"] or delta["auth_missing"] or delta["auth_invalid"] or delta["dropped"]
    return delta if busy or delta["mirror"] is not None else None


def add_metrics(m: ServiceMetrics, delta: Mapping[str, Any]) -> int:
    """Add a worker's ``metrics_delta`` into ``m``; returns the answers it adds."""
    for code, n in delta["codes"].items():
        m.codes[int(code)] = m.codes.get(int(code), 0) + n
    for i, n in enumerate(delta["buckets"][: len(m.buckets)]):
        m.buckets[i] += n
    m.count += delta["count"]
    m.seconds += delta["seconds"]
    m.auth_missing += delta["auth_missing"]
    m.auth_invalid += delta["auth_invalid"]
    for reason, n in delta["dropped"].items():
        m.dropped[reason] = m.dropped.get(reason, 0) + n
    copies = delta.get("mirror")
    if copies:
        mc = m.mirror
        if mc is None:
            mc = m.mirror = MirrorCounters()
        for k in _MIRROR_COUNTS:
            setattr(mc, k, getattr(mc, k) + copies[k])
        for i, n in enumerate(copies["buckets"][: len(mc.buckets)]):
            mc.buckets[i] += n
        mc.seconds += copies["seconds"]
    return int(sum(delta["codes"].values()))


def take_auth_failures(router: Router) -> dict[str, Any] | None:
    """A worker's 401s since the last take as ``AuthFailures.snapshot()`` (``None``: none); its
    router goes on with an empty ``AuthFailures`` (so the per-address counts are deltas too)."""
    failures = router.auth_failures
    if not failures.missing and not failures.invalid:
        return None
    router.auth_failures = AuthFailures()
    return failures.snapshot()


def _no_export(timings: Sequence[Timing]) -> None:
    raise RuntimeError("a router worker's timings are exported by the daemon (TraceBuffer.take)")


class TraceBuffer(Tracer):
    """A router worker's tracer: ``Tracer.add`` as the daemon's (bounded at ``max_pending``;
    full: dropped and counted), never exported here: each report ``take``s it."""

    def __init__(self, max_pending: int = TRACE_BUFFER) -> None:
        super().__init__(_no_export, max_pending=max_pending)
        self._dropped_taken = 0

    def take(self) -> tuple[list[list[Any]], int]:
        """The timings added since the last take, as plain data (``[service, request id lines
        as latin-1 text, status, started, sent, ended]``), and the drops since then."""
        pending = self._pending
        out = []
        for _ in range(len(pending)):
            service, rids, status, started, sent, ended = pending.popleft()
            out.append([service, rids.decode("latin-1"), status, started, sent, ended])
        dropped, self._dropped_taken = self.dropped - self._dropped_taken, self.dropped
        return out, dropped


def add_traces(tracer: Tracer | None, timings: Iterable[Sequence[Any]], dropped: int) -> None:
    """A worker's ``TraceBuffer.take`` into the daemon's ``tracer`` (nothing without one)."""
    if tracer is None:
        return
    for service, rids, status, started, sent, ended in timings:
        tracer.add(str(service), str(rids).encode("latin-1"), int(status), float(started), float(sent), float(ended))
    tracer.dropped += int(dropped)


def combine_stats(views: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """One router's ``stats()`` from its workers' (the daemon's first; see the module docstring).
    A service only the daemon has not (a worker behind on a removal) is left out."""
    if not views:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, own in views[0].items():
        entry = {**own, "replicas": {rid: dict(r) for rid, r in own["replicas"].items()}}
        for view in views[1:]:
            other = view.get(name)
            if other is None:
                continue
            entry["in_flight"] += other["in_flight"]
            entry["queued"] += other["queued"]
            entry["idle_s"] = min(entry["idle_s"], other["idle_s"])
            for rid, r in other["replicas"].items():
                mine = entry["replicas"].setdefault(rid, {"in_flight": 0, "ready": None})
                mine["in_flight"] += r["in_flight"]
                if r["ready"] is not None:
                    mine["ready"] = bool(mine["ready"]) or r["ready"]
        for r in entry["replicas"].values():
            if r["ready"] is None:  # listed, and no live worker owns a slot of it to say otherwise
                r["ready"] = True
        out[name] = entry
    return out


def _check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` without SO_REUSEPORT (SO_REUSEADDR, as asyncio's listeners set it, so
    that connections in TIME_WAIT do not count): OSError (address in use) when someone listens."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = found[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)


# -- the router ------------------------------------------------------------------------------


class FleetRouter(Router):
    """A ``Router`` that is worker ``index`` of ``workers`` (see the module docstring).

    In the daemon, ``fanout`` takes each table call as plain data, ``remote_drain`` waits for
    the workers' drains and ``remote_stats`` gives their latest ``stats()``."""

    def __init__(
        self,
        on_replica_failed: Callable[[str, str], Any] | None = None,
        *,
        workers: int = 1,
        index: int = 0,
        slots: str = "shared",
        **kwargs: Any,
    ) -> None:
        if slots not in SLOT_MODES:
            raise ConfigError(f"--router-slots must be one of {', '.join(SLOT_MODES)} (got {slots!r})")
        cb = on_replica_failed
        super().__init__(None if cb is None else (lambda service, rid: cb(service, replica_of(rid))), **kwargs)
        self.workers = workers
        self.index = index
        self.slots = slots
        self.partitioned = slots == "partitioned" and workers > 1
        self.fanout: Callable[[dict[str, Any]], None] | None = None
        self.remote_drain: Callable[[str, list[str], float], Awaitable[bool]] | None = None
        self.remote_stats: Callable[[], list[dict[str, dict[str, Any]]]] = list
        self._routes: dict[str, ServiceRoute] = {}  # service -> its route as given (its real limit)
        self._upstreams: dict[str, list[Upstream]] = {}  # service -> its replicas (not slots)
        self._raw = False  # inside set_endpoint: its set_service is neither sent nor split

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, ssl: _ssl.SSLContext | None = None, *, reuse_port: bool = False
    ) -> int:
        """As ``Router.start``. The first process (the daemon) first makes sure that nobody
        listens on ``port`` yet: with SO_REUSEPORT a bind would otherwise join any listener
        of this user's there (another cluster's, say) instead of failing as it should."""
        if reuse_port and port and self.index == 0:
            _check_port_free(host, port)
        return await super().start(host, port, ssl, reuse_port=reuse_port)

    def _send(self, msg: dict[str, Any]) -> None:
        if self.fanout is not None and not self._raw:
            self.fanout(msg)

    def _limit(self, service: str) -> int:
        route = self._routes.get(service)
        return route.max_concurrent if route is not None else 1

    def _slots(self, service: str, ids: Iterable[str]) -> list[str]:
        if not self.partitioned:
            return list(ids)
        return [f"{rid}{_SLOT}{k}" for rid in ids for k in range(self._limit(service))]

    def _local_route(self, route: ServiceRoute) -> ServiceRoute:
        return replace(route, max_concurrent=1) if self.partitioned else route  # a slot: limit 1

    def _local_upstreams(self, service: str) -> list[Upstream]:
        ups = self._upstreams.get(service, [])
        return slot_upstreams(ups, self._limit(service), self.workers, self.index) if self.partitioned else ups

    def set_service(self, route: ServiceRoute) -> None:
        self._send({"op": "set_service", "route": route_to_plain(route)})
        if self._raw:
            super().set_service(route)
            return
        before = self._limit(route.name) if route.name in self._routes else None
        self._routes[route.name] = route
        super().set_service(self._local_route(route))
        if self.partitioned and route.name in self._upstreams and before != route.max_concurrent:
            super().set_replicas(route.name, self._local_upstreams(route.name))  # re-dealt at the new limit

    def set_replicas(self, service: str, upstreams: Iterable[Upstream]) -> None:
        ups = list(upstreams)
        self._send({"op": "set_replicas", "service": service, "upstreams": [upstream_to_plain(u) for u in ups]})
        self._upstreams[service] = ups
        super().set_replicas(service, self._local_upstreams(service))

    def set_workers(self, workers: int) -> None:
        """The fleet grew or shrank to ``workers``: slots are dealt again (partitioned)."""
        self._send({"op": "workers", "workers": workers})
        before = self.partitioned
        self.workers = workers
        self.partitioned = self.slots == "partitioned" and workers > 1
        for name, route in self._routes.items():
            if name.encode() not in self.services:
                continue
            if before != self.partitioned:
                super().set_service(self._local_route(route))
            if name in self._upstreams:
                super().set_replicas(name, self._local_upstreams(name))

    def set_endpoint(self, route: ServiceRoute, versions: Sequence[VersionShare]) -> None:
        self._send({"op": "set_endpoint", "route": route_to_plain(route), "versions": [asdict(v) for v in versions]})
        self._raw = True
        try:
            super().set_endpoint(route, versions)
        finally:
            self._raw = False

    def set_cold_wait(self, service: str, seconds: float) -> None:
        self._send({"op": "set_cold_wait", "service": service, "seconds": seconds})
        super().set_cold_wait(service, seconds)

    def set_service_failed(self, service: str, reason: str | None) -> None:
        self._send({"op": "set_service_failed", "service": service, "reason": reason})
        super().set_service_failed(service, reason)

    def mark_healthy(self, service: str, replica_id: str) -> None:
        self._send({"op": "mark_healthy", "service": service, "replica": replica_id})
        for rid in self._slots(service, [replica_id]):
            super().mark_healthy(service, rid)

    async def drain(self, service: str, replica_ids: Iterable[str], timeout_s: float) -> bool:
        ids = list(replica_ids)
        local = super().drain(service, self._slots(service, ids), timeout_s)
        if self.remote_drain is None:
            return await local
        results = await asyncio.gather(local, self.remote_drain(service, ids, timeout_s))
        return all(results)

    def remove_service(self, service: str) -> None:
        self._send({"op": "remove_service", "service": service})
        self._routes.pop(service, None)
        self._upstreams.pop(service, None)
        super().remove_service(service)

    def own_stats(self) -> dict[str, dict[str, Any]]:
        """This worker's ``Router.stats()``, by replica (slots summed) at the service's limit."""
        out = super().stats()
        if not self.partitioned:
            return out
        for name, entry in out.items():
            entry["limit"] = self._limit(name) if name in self._routes else entry["limit"]
            by_replica: dict[str, dict[str, Any]] = {}
            for sid, r in entry["replicas"].items():
                mine = by_replica.setdefault(replica_of(sid), {"in_flight": 0, "ready": False})
                mine["in_flight"] += r["in_flight"]
                mine["ready"] = mine["ready"] or r["ready"]
            for u in self._upstreams.get(name, ()):  # given, but no slot here: no opinion (None)
                by_replica.setdefault(u.id, {"in_flight": 0, "ready": None})
            entry["replicas"] = by_replica
        return out

    def stats(self) -> dict[str, dict[str, Any]]:
        """All workers' figures as one router's (``combine_stats``; the module docstring says how)."""
        return combine_stats([self.own_stats(), *self.remote_stats()])

    def gauges(self) -> dict[str, tuple[int, int, int, int]]:
        """``Router.gauges`` of all workers together, taken from the combined ``stats()``."""
        return {
            name: (e["in_flight"], e["queued"], e["limit"], sum(1 for r in e["replicas"].values() if r["ready"]))
            for name, e in self.stats().items()
        }

    def apply_plain(self, msg: Mapping[str, Any], tokens: dict[str, TokenAuth]) -> None:
        """A worker applies a table call the daemon sent (all but ``drain``)."""
        op = msg["op"]
        if op == "set_service":
            self.set_service(route_from_plain(msg["route"], tokens))
        elif op == "set_replicas":
            self.set_replicas(msg["service"], [upstream_from_plain(u) for u in msg["upstreams"]])
        elif op == "set_endpoint":
            versions = [VersionShare(**v) for v in msg["versions"]]
            self.set_endpoint(route_from_plain(msg["route"], tokens), versions)
        elif op == "set_cold_wait":
            self.set_cold_wait(msg["service"], msg["seconds"])
        elif op == "set_service_failed":
            self.set_service_failed(msg["service"], msg["reason"])
        elif op == "mark_healthy":
            self.mark_healthy(msg["service"], msg["replica"])
        elif op == "workers":
            self.set_workers(msg["workers"])
        elif op == "remove_service":
            self.remove_service(msg["service"])
            tokens.pop(msg["service"], None)
        else:
            raise ValueError(f"unknown router table call {op!r}")
