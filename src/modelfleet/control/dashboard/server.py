"""The dashboard's HTTP server (aiohttp, on the daemon's event loop, 127.0.0.1 only).

    GET  /login?code=C                  a one-time code (``login.py``) -> session cookie, 303 to /
    POST /logout                        end the session
    GET  /                              the page (static/index.html); 401 page without a session
    GET  /static/...                    its script, styles and the vendored uPlot (no secrets)
    GET  /api/overview                  every service: state, replicas, last-minute figures
    GET  /api/services/<name>?minutes=M one service: charts' series, scale events, replicas, config
    GET  /api/services/<name>/logs?replica=ID&lines=N   a replica's log tail
    GET  /api/environments              cached environments: hash, packages, users
    GET  /api/models                    registered models and versions
    GET  /api/feed[?service=<name>]     server-sent events, once a second: "overview", and
                                        "service" (new points and events) when one is named
    POST /api/services/<name>/regen-key {"key": "Primary"|"Secondary"}
    POST /api/services/<name>/replicas  {"replicas": N}

Everything but /login and /static needs the session cookie (401 otherwise). A request must
name this dashboard as its Host (127.0.0.1 or localhost and its port; else 421: a page whose
name merely resolves here gets nothing). A POST must carry JSON and, when the browser sends
an Origin, come from this dashboard's own origin.
Responses forbid framing and caching; the page loads nothing from elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from modelfleet.control.dashboard import actions, views
from modelfleet.control.dashboard.login import COOKIE, SESSION_TTL_S, Sessions
from modelfleet.control.reconcile import Reconciler
from modelfleet.errors import ConfigError, ModelfleetError, NotFound
from modelfleet.router.proxy import Router
from modelfleet.spec.names import is_version_service_name, validate_service_name
from modelfleet.store.registry import Store
from modelfleet.telemetry.logfiles import chain, tail

__all__ = ["DASHBOARD_PORT_SETTING", "DashboardServer"]

log = logging.getLogger("modelfleet.dashboard")

DASHBOARD_PORT_SETTING = "dashboard_port"
MAX_FEEDS = 16  # open event streams at once: each costs a view a second
MAX_LOG_LINES = 5000
MAX_MINUTES = 60  # the ring holds an hour
_STATIC = resources.files("modelfleet.control.dashboard") / "static"
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_LOGIN_PAGE = (
    "<!doctype html><title>modelfleet dashboard</title><h1>Log in</h1>"
    "<p>{why} Run <code>modelfleet dashboard</code> for a login link.</p>"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _page_name(name: str) -> str:
    """A page's name: a service's, or an endpoint version's ``<endpoint>:<version>`` (which runs
    as a service of its own: its figures, replicas and logs are its page's). Actions (keys,
    replicas) still take service names only: keys belong to the endpoint."""
    return name if is_version_service_name(name) else validate_service_name(name)


class DashboardServer:
    def __init__(self, router: Router, reconciler: Reconciler, store: Store, workspace: Path, token: str) -> None:
        self.store = store
        self.workspace = workspace
        self.sessions = Sessions(token)
        self.sampler = views.Sampler(router, reconciler)
        self.feeds = 0
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._sampling: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<DashboardServer port={self.port} feeds={self.feeds} {self.sessions!r} {self.sampler!r}>"

    async def start(self, port: int = 0) -> int:
        app = web.Application(middlewares=[self._headers, self._auth], client_max_size=64 * 1024)
        app.add_routes(
            [
                web.get("/login", self.login),
                web.post("/logout", self.logout),
                web.get("/", self.index),
                web.get("/api/overview", self.overview),
                web.get("/api/environments", self.environments),
                web.get("/api/models", self.models),
                web.get("/api/feed", self.feed),
                web.get("/api/services/{name}", self.service),
                web.get("/api/services/{name}/logs", self.logs),
                web.post("/api/services/{name}/regen-key", self.regen_key),
                web.post("/api/services/{name}/replicas", self.set_replicas),
                web.static("/static", Path(str(_STATIC))),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        try:
            await site.start()
        except OSError:
            if port == 0:
                raise
            log.warning("dashboard port %d is taken; using a free one", port)  # a stale stored port
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._sampling = asyncio.get_running_loop().create_task(self.sampler.run(time.time))
        log.info("dashboard on http://127.0.0.1:%d/", self.port)
        return self.port

    async def stop(self) -> None:
        if self._sampling is not None:
            self._sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampling
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    # -- middleware ----------------------------------------------------------------------

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ModelfleetError as exc:
            response = web.json_response({"message": exc.message}, status=exc.http_status)
        except web.HTTPException as exc:
            if exc.status >= 400 and request.path.startswith("/api/"):
                response = web.json_response({"message": exc.reason}, status=exc.status)
            else:
                raise
        if not response.prepared:
            response.headers.update(_HEADERS)
        return response

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.host not in (f"127.0.0.1:{self.port}", f"localhost:{self.port}"):
            # another name that resolves here (DNS rebinding) gets nothing, not even the login page
            return web.json_response({"message": f"unknown host {request.host!r}; use {self.uri}"}, status=421)
        if request.path in ("/login",) or request.path.startswith("/static/"):
            return await handler(request)
        if not self.sessions.valid(request.cookies.get(COOKIE), time.time()):
            if request.path.startswith("/api/") or request.method != "GET":
                return web.json_response({"message": "log in first: run `modelfleet dashboard`"}, status=401)
            return _login_page("You are not logged in (or your session ended).", 401)
        if request.method == "POST":
            origin = request.headers.get("Origin")
            if origin is not None and origin != f"http://{request.host}":
                return web.json_response({"message": f"cross-origin request refused (Origin {origin})"}, status=403)
            if request.content_type != "application/json" and request.path != "/logout":
                return web.json_response({"message": "send a JSON body (Content-Type: application/json)"}, status=415)
        return await handler(request)

    # -- login ---------------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.redeem(request.query.get("code", ""), time.time())
        if session is None:
            return _login_page("That login link is invalid, expired or already used.", 401)
        response = web.Response(status=303, headers={"Location": "/"})  # the code leaves the address bar
        response.set_cookie(COOKIE, session, max_age=SESSION_TTL_S, path="/", httponly=True, samesite="Strict")
        response.headers.update(_HEADERS)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self.sessions.end(request.cookies.get(COOKIE))
        response = web.Response(status=303, headers={"Location": "/"})
        response.del_cookie(COOKIE, path="/")
        return response

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=(_STATIC / "index.html").read_bytes(), content_type="text/html")

    # -- data ------------------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await views.overview(self.sampler, self.store, time.time()))

    async def service(self, request: web.Request) -> web.StreamResponse:
        name = _page_name(request.match_info["name"])
        minutes = _bounded_int(request.query.get("minutes", "10"), "minutes", 1, MAX_MINUTES)
        now = time.time()
        return web.json_response(await views.service_detail(self.sampler, self.store, name, now, now - minutes * 60))

    async def logs(self, request: web.Request) -> web.StreamResponse:
        name = _page_name(request.match_info["name"])
        lines = _bounded_int(request.query.get("lines", "200"), "lines", 1, MAX_LOG_LINES)
        replica = request.query.get("replica")
        controller = self.sampler.reconciler.controllers.get(name)
        # the replica list is read here, on the loop that changes it; only the files in a thread
        paths = {r.id: r.log_path for r in controller.replicas()} if controller is not None else {}
        if replica not in paths:
            have = ", ".join(sorted(paths)) or "none"
            raise NotFound(f"service {name} has no replica {replica!r} (it has: {have})")
        path = paths[replica]
        text = "".join(await asyncio.to_thread(lambda: tail(chain(path), lines))) if path is not None else ""
        return web.Response(text=text, content_type="text/plain")

    async def environments(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await asyncio.to_thread(views.environments, self.store))

    async def models(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await asyncio.to_thread(views.models, self.store))

    async def feed(self, request: web.Request) -> web.StreamResponse:
        name = request.query.get("service")
        if name is not None:
            name = _page_name(name)
        if self.feeds >= MAX_FEEDS:
            return web.json_response({"message": f"at most {MAX_FEEDS} live views at once"}, status=503)
        session = request.cookies.get(COOKIE)
        response = web.StreamResponse(headers={**_HEADERS, "Content-Type": "text/event-stream"})
        self.feeds += 1
        try:
            await response.prepare(request)
            since = time.time() - 1.0
            while self.sessions.valid(session, time.time()):
                now = time.time()
                await response.write(_event("overview", await views.overview(self.sampler, self.store, now)))
                if name is not None:
                    with contextlib.suppress(NotFound):  # deleted meanwhile: the overview says so
                        detail = await views.service_detail(self.sampler, self.store, name, now, since)
                        if detail["series"]["time"]:
                            since = detail["series"]["time"][-1]
                        await response.write(_event("service", detail))
                await asyncio.sleep(1.0)
        except ConnectionError:
            pass  # the page was closed
        finally:
            self.feeds -= 1
        return response

    # -- actions (through the CLI: actions.py) ----------------------------------------------

    async def regen_key(self, request: web.Request) -> web.StreamResponse:
        name = validate_service_name(request.match_info["name"])
        body = await _json_object(request)
        return _outcome(await actions.run_cli(self.workspace, actions.regen_key_argv(name, body.get("key"))))

    async def set_replicas(self, request: web.Request) -> web.StreamResponse:
        name = validate_service_name(request.match_info["name"])
        body = await _json_object(request)
        record = await asyncio.to_thread(self.store.get_service, name)
        autoscale = bool(record.config.get("deploy", {}).get("autoscale", {}).get("enabled"))
        argv = actions.replicas_argv(name, body.get("replicas"), autoscale)
        return _outcome(await actions.run_cli(self.workspace, argv))


def _event(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _outcome(result: actions.ActionResult) -> web.Response:
    return web.json_response({"message": result.message}, status=200 if result.ok else 400)


def _login_page(why: str, status: int) -> web.Response:
    return web.Response(text=_LOGIN_PAGE.format(why=why), status=status, content_type="text/html", headers=_HEADERS)


def _bounded_int(raw: str, field: str, lo: int, hi: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{field} must be a whole number from {lo} to {hi} (got {raw!r})") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{field} must be a whole number from {lo} to {hi} (got {value})")
    return value


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ConfigError("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ConfigError("the body must be a JSON object")
    return body
