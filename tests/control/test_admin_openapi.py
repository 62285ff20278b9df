"""The daemon's admin API against its own OpenAPI document, fuzzed with schemathesis: every
answer is one the document declares (status, JSON shape), nothing is a 500, and the daemon
keeps serving. A bounded number of examples; ``POST /v1/shutdown`` is left out of the fuzzing
(it would end the run) and checked once, on a daemon of its own."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from e2e_support import deploy, pid_alive, stop_cluster, wait_until
from modelfleet import Workspace
from modelfleet.control.admin_openapi import OPENAPI

schema = schemathesis.openapi.from_dict(OPENAPI)


def admin(ws: Workspace) -> tuple[str, dict[str, str]]:
    """The running daemon's admin URL and the header that carries its token."""
    info = ws.cluster().info()
    assert info is not None
    token = (ws.path / ".modelfleet" / "runtime" / "admin.token").read_text().strip()
    return f"http://127.0.0.1:{info['admin_port']}", {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str], Workspace]]:
    ws = Workspace.create("admin-fuzz", tmp_path_factory.mktemp("ws"))
    try:
        deploy(ws, "kept", "sum")
        yield *admin(ws), ws
    finally:
        stop_cluster(ws)


@schema.exclude(path="/v1/shutdown").parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_one_the_document_declares(case, daemon) -> None:  # type: ignore[no-untyped-def]
    base_url, auth, _ = daemon
    case.call_and_validate(base_url=base_url, headers=auth, timeout=60)
    # after each example the daemon still serves; the service that was there before the fuzzing
    # is still there (the fuzzer's names were others), and syncing a name the workspace does not
    # hold left nothing behind (no controller per name)
    status = httpx.get(f"{base_url}/v1/status", headers=auth, timeout=60)
    assert status.status_code == 200, status.text
    assert sorted(status.json()["services"]) == ["kept"], sorted(status.json()["services"])


def test_the_daemon_serves_its_document(daemon) -> None:  # type: ignore[no-untyped-def]
    base_url, auth, _ = daemon
    assert httpx.get(f"{base_url}/v1/openapi.json", headers=auth).json() == OPENAPI
    assert httpx.get(f"{base_url}/v1/openapi.json").status_code == 401


def test_shutdown_ends_the_daemon(fresh_ws: Workspace) -> None:
    # a daemon of its own: the module's serves the other tests, in whatever order they run
    fresh_ws.cluster().ensure_running()
    base_url, auth = admin(fresh_ws)
    pid = int(fresh_ws.cluster().info()["pid"])  # type: ignore[index]
    assert httpx.post(f"{base_url}/v1/shutdown", headers=auth).status_code == 202
    wait_until(lambda: not pid_alive(pid), timeout=30)
    runtime = fresh_ws.path / ".modelfleet" / "runtime"
    assert not (runtime / "cluster.json").exists() or fresh_ws.cluster().info() is None
