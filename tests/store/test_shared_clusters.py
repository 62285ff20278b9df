"""Who runs what in a workspace a team shares: each local service is owned by one local cluster.

Two folders (two teammates' machines) share one PostgreSQL database and one blob store, and each
runs its own cluster daemon on ports of its own. Alice deploys svc-a, Bob deploys svc-b: each
cluster runs only its own service's replicas, Bob's machine refuses to update, redeploy or
delete Alice's service (naming her cluster), and restarting Bob's daemon does not start svc-a.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from team import two_members

from e2e_support import SUM_BODY, cli, deploy, pid_alive, stop_cluster, wait_until
from modelfleet import Webservice, Workspace
from modelfleet.errors import Conflict


def running(ws: Workspace) -> dict[str, list[int]]:
    """The services this folder's cluster runs, each with its live replica pids."""
    services = ws.cluster().status()["services"]
    return {name: [r["pid"] for r in s["replicas"] if r["pid"] and pid_alive(r["pid"])] for name, s in services.items()}


def test_each_cluster_runs_only_its_own_services_and_refuses_a_teammates(tmp_path: Path, postgres_server: Any) -> None:
    with two_members(tmp_path, postgres_server) as (alice, bob):
        svc_a = deploy(alice, "svc-a", "sum")
        svc_b = deploy(bob, "svc-b", "sum")
        assert alice.store.cluster_id != bob.store.cluster_id
        assert alice.store.get_service("svc-a").cluster == alice.store.cluster_id
        assert bob.store.get_service("svc-b").cluster == bob.store.cluster_id

        # each daemon runs one replica: of its own service only
        ran_a, ran_b = running(alice), running(bob)
        assert set(ran_a) == {"svc-a"} and len(ran_a["svc-a"]) == 1, ran_a
        assert set(ran_b) == {"svc-b"} and len(ran_b["svc-b"]) == 1, ran_b
        assert svc_a.run(SUM_BODY) == [55] and svc_b.run(SUM_BODY) == [55]

        # from Bob's folder, Alice's service can be read but not changed; the refusal names her cluster
        hers = Webservice(bob, "svc-a")
        assert hers.state == "Healthy"
        # its URI names Alice's router (her cluster's port), and scoring through it from Bob's side works
        assert hers.scoring_uri == svc_a.scoring_uri != svc_b.scoring_uri.replace("svc-b", "svc-a")
        assert hers.run(SUM_BODY) == [55]
        for attempt in (lambda: hers.update(num_replicas=2), hers.delete, lambda: deploy(bob, "svc-a", "sum")):
            with pytest.raises(Conflict, match=f"another local cluster, {alice.store.cluster_id}"):
                attempt()
        listed = json.loads(cli(bob, "service", "list", "-o", "json").stdout)
        assert {s["name"]: s["cluster"] for s in listed} == {
            "svc-a": alice.store.cluster_id,
            "svc-b": bob.store.cluster_id,
        }

        # Bob's daemon restarted restores svc-b, never svc-a; Alice's replica was never touched
        stop_cluster(bob)
        cli(bob, "cluster", "start")
        wait_until(lambda: running(bob).get("svc-b"), timeout=60)
        assert set(running(bob)) == {"svc-b"}
        assert running(alice) == ran_a
        assert svc_a.run(SUM_BODY) == [55] and svc_b.run(SUM_BODY) == [55]
        assert alice.store.get_service("svc-a").generation == 1
