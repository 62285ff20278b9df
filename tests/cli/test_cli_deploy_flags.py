"""End to end: the deploy settings given as CLI flags (derived from the spec's table) reach the
running service, on deploy and on update."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e_support import SCRIPTS, SUM_BODY, cli, stop_cluster, wait_until
from modelfleet import Workspace


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    workspace = Workspace.create("flags", tmp_path / "ws")
    yield workspace
    stop_cluster(workspace)


def _replicas(ws: Workspace, name: str) -> int:
    status = json.loads(cli(ws, "cluster", "status", "-o", "json").stdout)
    return len(status["services"][name]["replicas"])


def test_setting_flags_reach_the_service_on_deploy_and_update(ws: Workspace, tmp_path: Path) -> None:
    (tmp_path / "ic.json").write_text(
        json.dumps({"entryScript": "score.py", "sourceDirectory": str(SCRIPTS / "sum"), "environment": {"name": "e2e"}})
    )
    model = tmp_path / "weights.json"
    model.write_text("{}")
    cli(ws, "model", "register", "-n", "weights", "-p", str(model))
    flags = ["--num-replicas", "2", "--scoring-timeout-ms", "5000", "--tag", "team=risk", "--auth-enabled", "false"]
    cli(ws, "model", "deploy", "-n", "by-flags", "-m", "weights:1", "--ic", str(tmp_path / "ic.json"), *flags)

    shown = json.loads(cli(ws, "service", "show", "-n", "by-flags", "-o", "json").stdout)["deploymentConfig"]
    assert (shown["numReplicas"], shown["autoScaler"], shown["scoringTimeoutMs"]) == (
        2,
        {"autoscaleEnabled": False},
        5000,
    )
    assert (shown["tags"], shown["authEnabled"]) == ({"team": "risk"}, False)
    assert _replicas(ws, "by-flags") == 2
    assert json.loads(cli(ws, "service", "run", "-n", "by-flags", "-d", SUM_BODY).stdout) == [55]

    cli(ws, "service", "update", "-n", "by-flags", "--num-replicas", "1", "--max-request-wait-time", "0")
    shown = json.loads(cli(ws, "service", "show", "-n", "by-flags", "-o", "json").stdout)["deploymentConfig"]
    assert (shown["numReplicas"], shown["maxQueueWaitMs"], shown["scoringTimeoutMs"]) == (1, 0, 5000)
    wait_until(lambda: _replicas(ws, "by-flags") == 1, timeout=60)

    refused = cli(ws, "service", "update", "-n", "by-flags", "--autoscale-target-utilization", "0", check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == "error: --autoscale-target-utilization must be between 1 and 100 (got 0)"
