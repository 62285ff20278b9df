"""The dashboard server on its own: a real socket on 127.0.0.1, a real SQLite store, the
router object with no services, the reconciler over the in-memory target."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx

from modelfleet.control.dashboard.login import COOKIE, issue_code
from modelfleet.control.dashboard.ring import History
from modelfleet.control.dashboard.server import DashboardServer
from modelfleet.control.reconcile import Reconciler
from modelfleet.router.proxy import Router
from modelfleet.store.registry import Store
from modelfleet.targets.memory import InMemoryTarget

TOKEN = "the-admin-token"


def test_a_stored_port_that_is_taken_gives_way_to_a_free_one(store: Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            server = DashboardServer(Router(), Reconciler(store, InMemoryTarget()), store, tmp_path, TOKEN)
            try:
                assert await server.start(port) != port
                async with httpx.AsyncClient(base_url=server.uri, timeout=10) as http:
                    assert (await http.get("/api/overview")).status_code == 401
                    code = issue_code(TOKEN, time.time())
                    login = await http.get(f"/login?code={code}")
                    assert login.status_code == 303 and login.headers["location"] == "/"
                    assert http.cookies.get(COOKIE)
                    assert (await http.get("/api/overview")).json()["services"] == []
            finally:
                await server.stop()

    asyncio.run(scenario())


def test_the_sampler_drops_what_the_router_no_longer_routes(store: Store, tmp_path: Path) -> None:
    server = DashboardServer(Router(), Reconciler(store, InMemoryTarget()), store, tmp_path, TOKEN)
    server.sampler.histories["gone"] = History()  # a service removed since the last sample
    server.sampler.tick(time.time())
    assert server.sampler.histories == {}
