"""The daemon's admin API against its own OpenAPI document, fuzzed with schemathesis: every
answer is one the document declares (status, JSON shape), nothing is a 500, and the daemon
keeps serving. A bounded number of examples; ``POST /v1/shutdown`` is left out of the fuzzing
(it would end the run) and checked once at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from e2e_support import deploy, pid_alive, stop_cluster, wait_until
from modelfleet import Workspace
from modelfleet.control.admin_openapi import OPENAPI

schema = schemathesis.openapi.from_dict(OPENAPI)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str], Workspace]]:
    ws = Workspace.create("admin-fuzz", tmp_path_factory.mktemp("ws"))
    try:
        deploy(ws, "kept", "sum")
        info = ws.cluster().info()
        assert info is not None
        token = (ws.path / ".modelfleet" / "runtime" / "admin.token").read_text().strip()
        yield f"http://127.0.0.1:{info['admin_port']}", {"Authorization": f"Bearer {token}"}, ws
    finally:
        stop_cluster(ws)


@schema.exclude(path="/v1/shutdown").parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_one_the_document_declares(case, daemon) -> None:  # type: ignore[no-untyped-def]
    base_url, auth, _ = daemon
    case.call_and_validate(base_url=base_url, headers=auth, timeout=60)


def test_the_daemon_serves_its_document_and_survived(daemon) -> None:  # type: ignore[no-untyped-def]
    base_url, auth, ws = daemon
    assert httpx.get(f"{base_url}/v1/openapi.json", headers=auth).json() == OPENAPI
    assert httpx.get(f"{base_url}/v1/openapi.json").status_code == 401
    # the service that was there before the fuzzing still serves (the fuzzer's names were others)
    status = ws.cluster().status()
    assert "kept" in status["services"]
    # syncing a name the workspace does not hold leaves nothing behind (no controller per name)
    assert sorted(status["services"]) == ["kept"], sorted(status["services"])
    pid = int(ws.cluster().info()["pid"])  # type: ignore[index]
    assert httpx.post(f"{base_url}/v1/shutdown", headers=auth).status_code == 202
    wait_until(lambda: not pid_alive(pid), timeout=30)
    assert not Path(ws.path / ".modelfleet" / "runtime" / "cluster.json").exists() or ws.cluster().info() is None
