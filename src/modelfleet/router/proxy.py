"""The router: its services, their replicas, the listeners, and the timers and timeouts.

``Router`` is what the control plane drives (``set_service``, ``set_replicas``, ``drain``,
``remove_service``...) and what the connections read (``ports.FrontPort``): the routing table
(``routes.ServiceState`` per service, its ``dispatch.Dispatch``), the upstream ``Pool``, the
clocks (``loop.time()``; the injected ``clock`` and ``wall_clock`` once per tick) and every
timer: each service's queue deadline and scoring timeout, and one tick that refreshes the Date
line and sweeps the connections for header, keep-alive and send timeouts (``timeouts``). Decisions come from
``dispatch.Dispatch`` as action values; the router carries them out.

A request's path through the router's modules is told in ``client`` (the connection that
parses it, ``client.ClientConnection``, re-exported here) and ``cycle`` (its life until
answered).
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
import time
from collections.abc import Callable, Iterable, Sequence
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from modelfleet.errors import ConfigError
from modelfleet.router.auth import AuthFailures
from modelfleet.router.client import ClientConnection
from modelfleet.router.dispatch import Action, Reject, Send
from modelfleet.router.ids import RequestIds
from modelfleet.router.refusals import Refusals
from modelfleet.router.routes import ServiceRoute, ServiceState, Upstream
from modelfleet.router.timeouts import ConnectionTimeouts
from modelfleet.router.upstream import Pool
from modelfleet.router.versions import EndpointState, VersionShare, version_figures
from modelfleet.telemetry.counters import ServiceMetrics

if TYPE_CHECKING:
    from modelfleet.telemetry.tracing import Tracer

__all__ = ["ClientConnection", "Router", "ServiceRoute", "Upstream"]

log = logging.getLogger("modelfleet.router")
_access = logging.getLogger("modelfleet.router.access")

# -- the router --------------------------------------------------------------------------


class Router:
    """The front end: services, their replicas, and the HTTP server (see module docstring).

    Limits on what a client may send, with defaults chosen after the servers a v1 request
    met on its way (azureml-fe's nginx, then gunicorn in the image) and Envoy's:

    - ``max_header_bytes`` (64 KiB): request line and headers together. Envoy allows 60 KiB,
      nginx 4 x 8 KiB buffers; 64 KiB passes any real client (a JWT is ~1 KiB). Past it: 431.
    - ``max_header_fields`` (100): gunicorn's ``limit_request_fields`` (what azmlinfsrv runs
      under) and Envoy's default. Past it: 431.
    - ``header_timeout_s`` (20 s): a request head, once begun (or a new connection's first
      one), must be complete within it; Apache's ``RequestReadTimeout header=20`` and
      within nginx's 60 s ``client_header_timeout``, short enough that a slowloris client
      does not hold a connection for long. Past it: 408 and close.
    - ``keep_alive_timeout_s`` (75 s): an idle keep-alive connection is closed after it;
      nginx's ``keepalive_timeout`` default, and above the idle timeouts of common client
      pools (httpx 5 s, aiohttp 15 s), so the client closes first and never races us.
    - ``send_timeout_s`` (60 s): a client that takes none of its answer for this long is cut
      off (nginx's ``send_timeout``); until then what the router holds for it is bounded by the
      transport's high-water mark, as it stops reading the replica while the client is full.
      A streamed answer is then cut at the replica too (its generator ends, its slot is
      freed); one with a length is drained so the connection can be reused.

    A flood of bad credentials (issue 12: a keyed client of another service must keep its
    latency while one connection after another sends wrong keys as fast as the router answers):
    a connection whose last ``bad_auth_allowance`` (1,000) requests were all refused 401 is
    read only once per ``bad_auth_pause_s`` (50 ms) from then on, until a request on it passes
    authentication. A client with a wrong key still gets its answers, in order; a flood of
    401s costs the router at most 20 requests a second per connection instead of all its CPU.
    The allowance lets a pipelined burst of mistakes through at full speed.

    Timeouts are checked by one sweep per ``tick_s`` over the open connections (no timer
    per request); ``tick_s`` is at most 1 s and at most half of the shorter timeout.
    ``clock`` is the monotonic clock used for timeouts (default: the event loop's);
    ``wall_clock`` gives epoch seconds for token expiry, read once per tick (``wall_now``:
    tokens carry whole seconds and 30 s of skew, so a per-request read buys nothing).
    """

    def __init__(
        self,
        on_replica_failed: Callable[[str, str], Any] | None = None,
        *,
        access_log: bool = False,
        pool: Pool | None = None,
        max_header_bytes: int = 64 * 1024,
        max_header_fields: int = 100,
        header_timeout_s: float = 20.0,
        keep_alive_timeout_s: float = 75.0,
        send_timeout_s: float = 60.0,
        bad_auth_allowance: int = 1000,
        bad_auth_pause_s: float = 0.05,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(max_header_bytes, int) or max_header_bytes < 1024:
            raise ConfigError(f"max_header_bytes must be an integer >= 1024 (got {max_header_bytes!r})")
        if not isinstance(max_header_fields, int) or max_header_fields < 8:
            raise ConfigError(f"max_header_fields must be an integer >= 8 (got {max_header_fields!r})")
        timeouts = ConnectionTimeouts(header_timeout_s, keep_alive_timeout_s, send_timeout_s)
        if not isinstance(bad_auth_allowance, int) or bad_auth_allowance < 0:
            raise ConfigError(f"bad_auth_allowance must be an integer >= 0 (got {bad_auth_allowance!r})")
        if not isinstance(bad_auth_pause_s, (int, float)) or not 0 < bad_auth_pause_s <= 10:
            raise ConfigError(f"bad_auth_pause_s must be a number of seconds in (0, 10] (got {bad_auth_pause_s!r})")
        # Settings, fixed at construction.
        self.on_replica_failed = on_replica_failed
        self.bad_auth_allowance = bad_auth_allowance
        self.bad_auth_pause_s = float(bad_auth_pause_s)
        self.access_log = access_log and _access.isEnabledFor(logging.INFO)  # decided once
        self.max_header_bytes = max_header_bytes
        self.max_header_fields = max_header_fields
        self.timeouts = timeouts
        self.tick_s = timeouts.tick_s
        self._clock = clock
        self._wall_clock = wall_clock
        self.wall_now = wall_clock()  # epoch seconds for token expiry, refreshed every tick
        self.clock: Callable[[], float] = clock or time.monotonic  # the loop's clock once started
        self.refusals = Refusals(max_header_bytes, max_header_fields)  # head limits and their 431s
        # Routing table and upstream connections; change through the methods below.
        self.services: dict[bytes, ServiceState] = {}
        self.pool = pool or Pool()
        # Running state: between start() and stop().
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.connections: set[ClientConnection] = set()
        self._servers: list[asyncio.AbstractServer] = []  # one per start(): TLS and plain HTTP
        self._tasks: set[asyncio.Task[None]] = set()  # connection attempts in progress
        self.stopping = False
        self._tick_handle: asyncio.TimerHandle | None = None
        self.date_line = b""
        self._date_at = 0.0
        self._swept_at = 0.0
        self.auth_failures = AuthFailures()  # 401s in total and per client address, for metrics
        self.unrouted = ServiceMetrics()  # answers outside any service (health, unknown names)
        self.tracer: Tracer | None = None  # set by the composition root; used for services with trace=True
        self.ids = RequestIds()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, ssl: _ssl.SSLContext | None = None, *, reuse_port: bool = False
    ) -> int:
        """Listen; returns the bound port. Call again to listen on another port too (e.g. plain
        HTTP beside TLS); every listener serves the same services. ``reuse_port``: bind with
        SO_REUSEPORT, so that router worker processes share the port and the kernel spreads
        connections over them (``control/router_workers.py``)."""
        self.loop = asyncio.get_running_loop()
        if self._clock is None:
            self.clock = self.loop.time
        if self._tick_handle is None:
            self._swept_at = self.clock()
            self._tick()
        server = await self.loop.create_server(
            lambda: ClientConnection(self), host, port, ssl=ssl, backlog=2048, reuse_port=reuse_port or None
        )
        self._servers.append(server)
        bound: int = server.sockets[0].getsockname()[1]
        log.info("router listening on %s:%d%s", host, bound, " (TLS)" if ssl else "")
        return bound

    async def start_unix(self, path: str) -> None:
        """Listen on the Unix socket ``path`` too (private to this machine: the gRPC front's
        way in, whatever the TCP listeners' TLS); it serves the same services."""
        self.loop = asyncio.get_running_loop()
        server = await self.loop.create_unix_server(lambda: ClientConnection(self), path, backlog=2048)
        self._servers.append(server)
        log.info("router listening on %s", path)

    def stop_listening(self) -> None:
        """Take no new connection; those open are served on (a router worker retiring)."""
        for server in self._servers:
            server.close()

    async def stop(self) -> None:
        """Stop listening, cut client connections, then replica connections; every slot is
        given back and nothing is reported as a replica failure."""
        self.stopping = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.transport.abort()
        await asyncio.sleep(0)  # connection_lost runs: queued requests leave their queues
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.pool.close_all()
        await asyncio.sleep(0)  # upstream connection_lost runs: the remaining slots are freed
        for svc in self.services.values():
            for handle in (svc.timer, svc.deadline_timer):
                if handle is not None:
                    handle.cancel()
            svc.timer = svc.deadline_timer = None
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    def _tick(self) -> None:
        # The Date header is refreshed once a second, not formatted per answer.
        now = self.clock()
        self.wall_now = self._wall_clock()
        if now - self._date_at >= 1.0 or not self.date_line:
            self._date_at = now
            self.date_line = b"date: " + formatdate(usegmt=True).encode() + b"\r\n"
        self._sweep(now)
        self._tick_handle = self.loop.call_later(self.tick_s, self._tick)

    def _sweep(self, now: float) -> None:
        """Apply the header, keep-alive and send timeouts (``timeouts``)."""
        elapsed = now - self._swept_at
        self._swept_at = now
        expired, stalled = self.timeouts.sweep(self.connections, elapsed)
        for conn in expired:
            if not conn.transport.is_closing():
                conn.expire()
        for conn in stalled:
            # Its answers cannot be delivered: the connection goes, and with it (client_gone)
            # the replica's answer: drained when it has a length, cut when it streams.
            log.info("client %s read nothing for %.0f s; closing its connection", conn.peer_host(), conn.stalled)
            conn.transport.abort()

    def spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- routing table -----------------------------------------------------------------

    def set_service(self, route: ServiceRoute) -> None:
        """Create or update a service in place; requests in flight are not disturbed."""
        key = route.name.encode()
        svc = self.services.get(key)
        if svc is None:
            self.services[key] = svc = ServiceState(route)
            svc.dispatch.last_arrival = self._now()  # idle from here until a request comes
            log.info("service %s: added (max_concurrent=%d)", route.name, route.max_concurrent)
            self._version_changed(key)
            return
        svc.update(route)
        self.apply(svc, svc.dispatch.configure(route.max_concurrent, route.max_wait_s, self._now()))
        if svc.sending:  # a new scoring timeout applies to requests already sent, too
            first = next(iter(svc.sending.values()))
            self.arm_deadline(svc, first + route.timeout_s)

    def set_replicas(self, service: str, upstreams: Iterable[Upstream]) -> None:
        """The replicas that may receive new requests; others finish what they have.
        Ignored (and logged) for a service the router does not have, e.g. one just removed."""
        svc = self._service(service)
        if svc is None:
            return
        ups = list(upstreams)
        d = svc.dispatch
        new = {u.id: (u, u.key, u.head_lines()) for u in ups}
        for rid, entry in svc.addresses.items():
            if rid not in new:
                if d.slot(rid) is not None:
                    new[rid] = entry  # still has requests in flight
                else:
                    self.pool.close_idle(entry[1])
        svc.addresses = new
        if ups and svc.failed is not None:
            self.set_service_failed(service, None)
        self.apply(svc, d.set_replicas([u.id for u in ups], self._now()))
        log.info("service %s: replicas %s (%r)", service, [u.id for u in ups], d)
        self._version_changed(service.encode())

    def set_endpoint(self, route: ServiceRoute, versions: Sequence[VersionShare]) -> None:
        """Create or update an endpoint (``versions.py``): ``route`` holds its auth and body limit,
        ``versions`` its versions' services and shares; those services are set on their own."""
        state = EndpointState(route.name, versions)
        self.set_service(route)
        front = self.services[route.name.encode()]
        front.endpoint = state
        state.refresh(self.services)
        log.info("endpoint %s: versions %s", route.name, state.weights())

    def _version_changed(self, key: bytes) -> None:
        """A version's service changed (replicas, failure, presence): its endpoint re-weighs."""
        cut = key.find(b":")
        if cut > 0:
            front = self.services.get(key[:cut])
            if front is not None and front.endpoint is not None:
                front.endpoint.refresh(self.services)

    def set_cold_wait(self, service: str, seconds: float) -> None:
        """Scale to zero: how much longer than max_request_wait_time a request may wait while
        the service has no replica at all (``cold_start_wait_ms``; 0 when scale to zero is off)."""
        svc = self.services.get(service.encode())
        if svc is None or svc.dispatch.cold_wait_s == seconds:
            return
        if not seconds >= 0:
            raise ConfigError(f"cold_start_wait_ms must be >= 0 (got {seconds!r} s)")
        d = svc.dispatch
        self.apply(svc, d.configure(d.limit, d.max_wait_s, self._now(), cold_wait_s=float(seconds)))
        log.info("service %s: requests wait up to %.1f s more while it has no replica", service, seconds)
        self._version_changed(service.encode())  # a version at zero is still served (versions.healthy)

    def set_service_failed(self, service: str, reason: str | None) -> None:
        """The service cannot serve (e.g. every replica failed init()): new and waiting requests
        get 503 saying so and why, without Retry-After. ``None`` clears it; so does
        ``set_replicas`` with at least one replica."""
        svc = self._service(service)
        if svc is None:
            return
        svc.set_failed(reason)
        self._version_changed(service.encode())
        if reason is None:
            log.info("service %s: no longer marked failed", service)
            return
        log.warning("service %s: marked failed (%s)", service, reason)
        if svc.timer is not None:
            svc.timer.cancel()
            svc.timer = None
            svc.timer_at = float("inf")
        for action in svc.dispatch.clear():
            action.req.reject()  # type: ignore[attr-defined]

    def mark_healthy(self, service: str, replica_id: str) -> None:
        """A failed replica passed its probe: it may take new requests again."""
        svc = self._service(service)
        if svc is None:
            return
        self.apply(svc, svc.dispatch.mark_healthy(replica_id, self._now()))

    async def drain(self, service: str, replica_ids: Iterable[str], timeout_s: float) -> bool:
        """Stop assigning to ``replica_ids`` and wait until none has a request in flight.
        Returns False when ``timeout_s`` passed first."""
        svc = self.services.get(service.encode())
        if svc is None:
            return True
        ids = frozenset(replica_ids)
        d = svc.dispatch
        d.retire(ids)
        if d.idle(ids):
            log.info("service %s: drained %s (nothing in flight)", service, sorted(ids))
            return True
        in_flight = sum(s.in_flight for s in d.slots() if s.id in ids)
        log.info("service %s: draining %s, %d in flight", service, sorted(ids), in_flight)
        fut: asyncio.Future[None] = self.loop.create_future()
        entry = (ids, fut)
        svc.drains.append(entry)
        try:
            await asyncio.wait_for(fut, timeout_s)
            log.info("service %s: drained %s", service, sorted(ids))
            return True
        except asyncio.TimeoutError:
            log.warning("service %s: drain of %s timed out after %.1f s (%r)", service, sorted(ids), timeout_s, d)
            return False
        finally:
            if entry in svc.drains:
                svc.drains.remove(entry)

    def remove_service(self, service: str) -> None:
        """New requests get 404; waiting ones 503; requests in flight finish."""
        svc = self.services.pop(service.encode(), None)
        if svc is None:
            return
        svc.removed = True
        if svc.timer is not None:
            svc.timer.cancel()
            svc.timer = None
        # svc.deadline_timer stays: requests in flight still have their scoring timeout.
        for req in svc.dispatch.clear():
            req.req.reject()  # type: ignore[attr-defined]
        for _, fut in svc.drains:
            if not fut.done():
                fut.set_result(None)
        self._version_changed(service.encode())
        log.info("service %s: removed", service)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per service: in_flight, queued, limit, idle_s (seconds since a request last arrived)
        and each replica's in_flight and readiness. An endpoint's entry also has ``"endpoint"``,
        its versions' figures (``versions.version_figures``: requests, errors, latency, and
        each mirror's copies)."""
        out: dict[str, dict[str, Any]] = {}
        now = self._now()
        for svc in self.services.values():
            d = svc.dispatch
            out[svc.route.name] = {
                "in_flight": d.in_flight,
                "queued": d.queued,
                "limit": d.limit,
                "idle_s": now - d.last_arrival,  # since a request last arrived (scale to zero)
                "replicas": {s.id: {"in_flight": s.in_flight, "ready": s.listed and not s.failed} for s in d.slots()},
            }
            if svc.endpoint is not None:
                out[svc.route.name]["endpoint"] = version_figures(svc.endpoint)  # type: ignore[arg-type]
        return out

    def gauges(self) -> dict[str, tuple[int, int, int, int]]:
        """Per service: (in_flight, queued, limit, ready replicas), the part of ``stats()`` the
        dashboard samples every second for every service, without building its dicts."""
        out: dict[str, tuple[int, int, int, int]] = {}
        for svc in self.services.values():
            d = svc.dispatch
            ready = sum(1 for s in d.slots() if s.listed and not s.failed)
            out[svc.route.name] = (d.in_flight, d.queued, d.limit, ready)
        return out

    # -- used by cycles ----------------------------------------------------------------

    def _now(self) -> float:
        return self.loop.time() if self.loop is not None else 0.0

    def _service(self, service: str) -> ServiceState | None:
        svc = self.services.get(service.encode())
        if svc is None:
            log.info("router has no service named %r (removed, or set_service not called yet)", service)
        return svc

    def apply(self, svc: ServiceState, actions: Sequence[Action]) -> None:
        """Carry out dispatch actions, then make sure a timer covers the queue."""
        for a in actions:
            if a.__class__ is Send:
                a.req.assign(a.replica)  # type: ignore[attr-defined]
            elif a.__class__ is Reject:
                a.req.reject()  # type: ignore[attr-defined]
            else:  # Expire: the caller's deadline passed while queued
                a.req.expired()  # type: ignore[attr-defined]
        if svc.dispatch.queued:
            self.arm(svc)

    def arm(self, svc: ServiceState) -> None:
        when = svc.dispatch.next_wakeup()
        if when is None or (svc.timer is not None and svc.timer_at <= when):
            return
        if svc.timer is not None:
            svc.timer.cancel()
        svc.timer_at = when
        svc.timer = self.loop.call_at(when, self._on_timer, svc, when)

    def _on_timer(self, svc: ServiceState, when: float) -> None:
        svc.timer = None
        svc.timer_at = float("inf")
        if svc.removed:
            return
        # Timers may fire a hair early (uvloop rounds to ms); the timer stands for `when`.
        self.apply(svc, svc.dispatch.expire(max(self.loop.time(), when)))

    def arm_deadline(self, svc: ServiceState, when: float) -> None:
        if svc.deadline_timer is not None:
            svc.deadline_timer.cancel()
        svc.deadline_timer = self.loop.call_at(when, self._on_deadline, svc, when)

    def _on_deadline(self, svc: ServiceState, when: float) -> None:
        """Answer 504 for every request sent more than timeout_s ago; re-arm for the next."""
        svc.deadline_timer = None
        now = max(self.loop.time(), when)
        timeout = svc.route.timeout_s
        sending = svc.sending
        while sending:
            cycle, sent = next(iter(sending.items()))
            if sent + timeout > now:
                self.arm_deadline(svc, sent + timeout)
                return
            del sending[cycle]
            cycle.timed_out()

    def check_drains(self, svc: ServiceState) -> None:
        for ids, fut in svc.drains:
            if not fut.done() and svc.dispatch.idle(ids):
                fut.set_result(None)

    def replica_failed(self, svc: ServiceState, replica_id: str, why: str) -> None:
        svc.dispatch.fail(replica_id)
        addr = svc.addresses.get(replica_id)
        if addr is not None:
            self.pool.close_idle(addr[1])
        log.warning(
            "service %s: replica %s failed (%s); no new requests go to it until it is marked healthy",
            svc.route.name,
            replica_id,
            why,
        )
        cb = self.on_replica_failed
        if cb is not None:
            try:
                cb(svc.route.name, replica_id)
            except Exception:
                log.exception("on_replica_failed callback raised (service %s)", svc.route.name)
