"""A daemon left running by another modelfleet (an upgrade): detected, never a silent mix.

Replicas and the router live and die with the daemon, and an environment's hash includes the
replica runtime's version (envs/canonical.py), so the one pairing that can differ is a client
(SDK/CLI) against a running daemon. The daemon writes its version and admin protocol into
cluster.json; these tests rewrite that file as a daemon from before the check wrote it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2e_support import SUM_BODY, deploy, pid_alive, stop_cluster, wait_until
from modelfleet import Webservice, Workspace
from modelfleet.errors import ClusterUnavailable


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    workspace = Workspace.create("upgrade", tmp_path / "ws")
    yield workspace
    stop_cluster(workspace)


def pretend_older_daemon(ws: Workspace) -> int:
    cluster_json = ws.path / ".modelfleet" / "runtime" / "cluster.json"
    info = json.loads(cluster_json.read_text())
    assert info["modelfleet"] and info["protocol"]  # what this daemon wrote
    del info["modelfleet"], info["protocol"]
    cluster_json.write_text(json.dumps(info))
    return int(info["pid"])


def test_changes_through_an_older_daemon_are_refused_with_what_to_do(ws: Workspace) -> None:
    deploy(ws, "kept", "sum")
    pretend_older_daemon(ws)
    with pytest.raises(ClusterUnavailable, match=r"older than .*restart it: `modelfleet cluster stop`"):
        ws.cluster().sync("kept")
    assert "services" in ws.cluster().status()  # looking is still allowed, and so is stopping


def test_deploy_restarts_an_older_daemon_and_every_service_comes_back(ws: Workspace) -> None:
    first = deploy(ws, "kept", "sum")
    keys, uri = first.get_keys(), first.scoring_uri
    old_pid = pretend_older_daemon(ws)
    code = (
        "import sys; sys.path.insert(0, sys.argv[2]); from e2e_support import deploy; "
        "from modelfleet import Workspace; deploy(Workspace.get(sys.argv[1]), 'added', 'sum')"
    )
    tests_dir = str(Path(__file__).parents[1])  # where e2e_support.py is
    result = subprocess.run([sys.executable, "-c", code, str(ws.path), tests_dir],
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "is modelfleet older than 0.1.0" in result.stderr and "restarting it" in result.stderr
    wait_until(lambda: not pid_alive(old_pid), timeout=30)
    kept = Webservice(ws, "kept")
    wait_until(lambda: Webservice(ws, "kept").state == "Healthy", timeout=60)
    assert kept.get_keys() == keys and kept.scoring_uri == uri
    answer = httpx.post(uri, content=SUM_BODY, headers={"Authorization": f"Bearer {keys[0]}"}, timeout=30)
    assert answer.status_code == 200 and answer.json() == [55]
