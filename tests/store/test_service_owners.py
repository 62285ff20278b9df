"""Tier 1: which local cluster owns a service, on a real database and the in-memory target.

The rules (``store/services.py``, ``store/clusters.py``, ``Reconciler.owns``/``_adopt``): a
folder workspace's one cluster runs every local service, owned or not; in a shared workspace a
cluster runs only its own, and a service deployed before owners were recorded is adopted by the
cluster whose runtime folder shows it ran there, else by none (it is listed, with no owner,
until deployed again). Per-cluster settings (ports) are each folder's in a shared workspace.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from modelfleet.control.autoscaler import Capacity
from modelfleet.control.reconcile import Reconciler
from modelfleet.spec import DeploySpec
from modelfleet.store.registry import ServiceRecord, Store
from modelfleet.targets.base import ReplicaPlan
from modelfleet.targets.memory import InMemoryTarget

CONFIG = {"deploy": DeploySpec().to_dict()}


def plan(store: Store, record: ServiceRecord, spec: DeploySpec) -> ReplicaPlan:
    return ReplicaPlan(
        service=record.name,
        generation=record.generation,
        python="python",
        app_root=Path("app"),
        entry_script=Path("score.py"),
        environment={},
        max_concurrent=spec.replica_max_concurrent_requests,
    )


def restored(store: Store) -> set[str]:
    """The services a daemon of ``store``'s folder would restore."""

    async def scenario() -> set[str]:
        reconciler = Reconciler(
            store, InMemoryTarget(), plan, capacity=Capacity(cpus=8, memory_gb=8), cluster=store.cluster_id
        )
        await reconciler.restore()
        names = set(reconciler.controllers)
        await reconciler.shutdown()
        return names

    return asyncio.run(scenario())


def test_a_shared_workspace_restores_each_cluster_its_own_and_adopts_only_with_evidence(
    tmp_path: Path, postgres_server: Any
) -> None:
    url = postgres_server.new_database()
    with Store.create(tmp_path / "alice", "team", database=url) as alice:
        (tmp_path / "bob" / ".modelfleet").mkdir(parents=True)
        shutil.copy(tmp_path / "alice" / ".modelfleet" / "secret.key", tmp_path / "bob" / ".modelfleet")
        with Store.create(tmp_path / "bob", "team", database=url) as bob:
            alice.create_service("hers", CONFIG, primary_key=None, secondary_key=None, cluster=alice.cluster_id)
            bob.create_service("his", CONFIG, primary_key=None, secondary_key=None, cluster=bob.cluster_id)
            for old in ("ran-at-alices", "ran-nowhere"):  # deployed before owners were recorded
                alice.create_service(old, CONFIG, primary_key=None, secondary_key=None)
            (alice.runtime_dir / "services" / "ran-at-alices").mkdir(parents=True)

            assert restored(bob) == {"his"}
            assert restored(alice) == {"hers", "ran-at-alices"}
            assert alice.get_service("ran-at-alices").cluster == alice.cluster_id
            assert bob.get_service("ran-nowhere").cluster is None  # no daemon runs it until redeployed
            assert restored(bob) == {"his"}

            # each folder's cluster keeps its own ports; the team's settings stay one
            alice.set_setting("router_port", "8001")
            bob.set_setting("router_port", "8002")
            alice.set_setting("tls_mode", "self-signed")
            assert (alice.get_setting("router_port"), bob.get_setting("router_port")) == ("8001", "8002")
            assert bob.get_setting("router_port", cluster=alice.cluster_id) == "8001"
            assert bob.get_setting("tls_mode") == "self-signed"


def test_a_folder_workspace_runs_every_local_service_owned_or_not(tmp_path: Path) -> None:
    with Store.create(tmp_path / "ws", "solo") as store:
        store.create_service("old", CONFIG, primary_key=None, secondary_key=None)
        store.create_service("other", CONFIG, primary_key=None, secondary_key=None, cluster="elsewhere:/x#000000")
        store.create_service("k8s", {**CONFIG, "compute_target": "aks"}, primary_key=None, secondary_key=None)
        assert restored(store) == {"old", "other"}
        assert store.get_service("old").cluster == store.cluster_id  # recorded now, for a later migration
        store.update_service_config("other", CONFIG)  # one cluster per folder: nothing is refused
        store.set_setting("router_port", "8001")
        assert store.get_setting("router_port") == "8001"
        assert store._db.read(lambda conn: conn.exec_driver_sql("SELECT key FROM settings").scalars().all()) == [
            "router_port"
        ]


def test_a_migrated_folder_keeps_running_its_services_ports_and_certificate(
    tmp_path: Path, postgres_server: Any
) -> None:
    import datetime
    import json

    from modelfleet.control import tls
    from modelfleet.store.migrate import migrate_workspace

    with Store.create(tmp_path / "ws", "solo") as store:
        store.create_service("old", CONFIG, primary_key=None, secondary_key=None)  # from before owners
        store.set_setting("router_port", "8001")
        tls.save(store, tls.TlsSettings(mode="self-signed"))
        cert, _key = tls.ensure_self_signed(tls.credentials_dir(store.root), datetime.datetime.now(datetime.UTC))
        migrate_workspace(store, to_database=postgres_server.new_database(), to_blob_store=None)
        mine = store.cluster_id
    with Store.open(tmp_path / "ws") as shared:
        assert shared.shared and shared.cluster_id == mine
        assert shared.get_service("old").cluster == mine
        assert shared.get_setting("router_port") == "8001"
        assert json.loads(shared.secrets.get("tls-self-signed") or "{}")["cert"] == cert.read_text()
        assert restored(shared) == {"old"}
