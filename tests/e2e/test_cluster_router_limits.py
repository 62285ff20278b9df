"""`modelfleet cluster start --router-...`: the router's client limits are configurable, kept in
the workspace (a daemon started later by a deploy uses them too), and checked with the flag
named in the error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e_support import SUM_BODY, cli, deploy, raw_exchange, stop_cluster
from modelfleet import Workspace


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    workspace = Workspace.create("limits", tmp_path / "ws")
    yield workspace
    stop_cluster(workspace)


def header_heavy(uri: str, key: str, fields: int) -> int:
    path = uri.split("://", 1)[1].split("/", 1)[1]
    extra = "".join(f"x-extra-{i}: {i}\r\n" for i in range(fields))
    head = (f"POST /{path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"{extra}Content-Length: {len(SUM_BODY)}\r\nConnection: close\r\n\r\n")  # fmt: skip
    status, _ = raw_exchange(uri, head.encode(), SUM_BODY.encode())
    return status


def test_a_configured_header_field_limit_holds_and_survives_a_restart(ws: Workspace) -> None:
    assert cli(ws, "cluster", "start", "--router-max-header-fields", "20").returncode == 0
    service = deploy(ws, "limited", "sum")
    key = service.get_keys()[0]
    assert header_heavy(service.scoring_uri, key, 5) == 200
    assert header_heavy(service.scoring_uri, key, 30) == 431  # under the default of 100
    stop_cluster(ws)
    ws.cluster().ensure_running()  # as a deploy would start it: the stored limits apply
    deploy(ws, "limited", "sum")
    assert header_heavy(service.scoring_uri, key, 30) == 431


def test_bad_limits_name_the_flag_and_change_nothing(ws: Workspace) -> None:
    bad = cli(ws, "cluster", "start", "--router-max-header-bytes", "5", check=False)
    assert bad.returncode == 1
    assert bad.stderr == "error: --router-max-header-bytes must be an integer >= 1024 (got 5)\n"
    assert ws.cluster().info() is None  # nothing was started
    assert cli(ws, "cluster", "start").returncode == 0
    running = cli(ws, "cluster", "start", "--router-send-timeout-s", "5", check=False)
    assert running.returncode == 1 and "stop it with `modelfleet cluster stop`" in running.stderr
