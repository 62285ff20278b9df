"""Issue 16: every deploy and update is checked against the machine's room (``control/room.py``).

Tier 1: a real workspace store (SQLite), the real ``Reconciler`` with a small stated capacity
and the in-memory target. Tier 2: a real local cluster refuses a deploy that does not fit beside
a running service, and a GPU where the machine has none, while the running service answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from e2e_support import SUM_BODY, deploy, stop_cluster, wait_until
from modelfleet import Workspace
from modelfleet.control.autoscaler import Autoscaler
from modelfleet.control.decisions import FAILED, HEALTHY
from modelfleet.control.reconcile import Reconciler
from modelfleet.control.room import Capacity, Holding, refusal
from modelfleet.errors import DeploymentFailed
from modelfleet.spec import AutoscaleSpec, DeploySpec
from modelfleet.store.registry import ServiceRecord, Store
from modelfleet.targets.base import ReplicaPlan
from modelfleet.targets.memory import InMemoryTarget

SMALL = Capacity(cpus=4, memory_gb=8)


def fixed(replicas: int, cpu: float = 1.0, memory: float = 1.0, gpus: int = 0) -> DeploySpec:
    return DeploySpec(
        num_replicas=replicas, autoscale=AutoscaleSpec(enabled=False), cpu_cores=cpu, memory_gb=memory, gpu_cores=gpus
    )


def test_a_refusal_names_what_was_asked_what_is_free_and_who_holds_it() -> None:
    others = [Holding("big", 2, 2.0, 2.0, 0), Holding("small", 1, 0.5, 1.0, 0)]
    assert refusal(SMALL, "new", fixed(1), 1, others) is None
    why = refusal(SMALL, "new", fixed(2), 2, others)
    assert why is not None
    assert "'new' does not fit" in why and "2 replicas of cpu_cores=1, memory_gb=1 ask for 2 CPUs, 2.00 GB" in why
    assert "free: 1.5 of 4 CPUs, 5.00 of 8.00 GB" in why
    assert "held by big (2 replicas: 2 CPUs, 2.00 GB), small (1 replicas: 0.5 CPUs, 1.00 GB)" in why
    many = [Holding(f"s{i}", 1, 0.01, 0.01, 0) for i in range(8)]
    assert "3 more services (0.03 CPUs, 0.03 GB)" in (refusal(SMALL, "new", fixed(5), 5, many) or "")


def test_a_gpu_is_refused_where_there_is_none_and_counted_where_there_are_some() -> None:
    assert "has no GPU" in (refusal(SMALL, "g", fixed(1, gpus=1), 1, []) or "")
    two = Capacity(cpus=4, memory_gb=8, gpus=2)
    assert refusal(two, "g", fixed(2, gpus=1), 2, []) is None
    why = refusal(two, "g", fixed(1, gpus=1), 1, [Holding("other", 2, 0.2, 0.2, 2)])
    assert why is not None and "free: " in why and "0 of 2 GPUs" in why and "other (2 replicas" in why


def _plan(store: Store, record: ServiceRecord, spec: DeploySpec) -> ReplicaPlan:
    return ReplicaPlan(record.name, record.generation, "python", Path("app"), Path("score.py"), {}, 1)


def _create(store: Store, name: str, spec: DeploySpec, overwrite: bool = False) -> None:
    config: dict[str, Any] = {"deploy": spec.to_dict()}
    store.create_service(name, config, primary_key="p" * 32, secondary_key="s" * 32, overwrite=overwrite)


async def _state(store: Store, name: str, state: str, detail_has: str = "") -> ServiceRecord:
    for _ in range(200):
        record = store.get_service(name)
        if record.state == state and detail_has in (record.detail or ""):
            return record
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name}: {record.state} {record.detail!r}, wanted {state} with {detail_has!r}")


def test_deploys_and_updates_that_do_not_fit_are_refused_and_disturb_nothing(store: Store) -> None:
    async def scenario() -> None:
        target = InMemoryTarget()
        reconciler = Reconciler(store, target, _plan, capacity=SMALL)
        try:
            _create(store, "first", fixed(3))  # 3 of 4 CPUs
            reconciler.sync("first")
            await asyncio.sleep(0.1)
            target.make_ready()
            await _state(store, "first", HEALTHY)

            _create(store, "second", fixed(2))  # 2 more CPUs: 1 is free
            reconciler.sync("second")
            record = await _state(store, "second", FAILED)
            assert "free: 1 of 4 CPUs" in (record.detail or "") and "first (3 replicas" in (record.detail or "")
            assert target.states("second") == {}

            _create(store, "second", fixed(1), overwrite=True)  # fits now
            reconciler.sync("second")
            await asyncio.sleep(0.1)
            target.make_ready()
            await _state(store, "second", HEALTHY)

            _create(store, "first", fixed(4), overwrite=True)  # an update past the room: refused
            reconciler.sync("first")
            await asyncio.sleep(0.3)
            failed = store.list_events("first", kind="deployment")[-1]
            assert failed["outcome"] == "failed" and "held by second (1 replicas" in failed["message"]
            assert store.get_service("first").state == HEALTHY
            assert sorted(target.states("first").values()) == ["Ready"] * 3  # the old generation serves on

            _create(store, "first", fixed(3, cpu=1.0, memory=1.5), overwrite=True)  # no more CPUs: fits
            reconciler.sync("first")
            await asyncio.sleep(0.1)
            for _ in range(100):  # the old generation reads Healthy meanwhile: wait for the roll-out's event
                target.make_ready()
                if store.list_events("first", kind="deployment")[-1]["outcome"] == "succeeded":
                    break
                await asyncio.sleep(0.05)
            assert store.list_events("first", kind="deployment")[-1]["generation"] == 3
        finally:
            await reconciler.shutdown()

    asyncio.run(scenario())


def test_the_autoscaler_counts_the_same_room(store: Store) -> None:
    async def scenario() -> None:
        target = InMemoryTarget()
        reconciler = Reconciler(store, target, _plan, capacity=SMALL)
        try:
            _create(store, "held", fixed(3))
            reconciler.sync("held")
            await asyncio.sleep(0.1)
            target.make_ready()
            await _state(store, "held", HEALTHY)
            autoscaler = Autoscaler(reconciler, lambda: {}, SMALL)
            other = DeploySpec(cpu_cores=1.0, memory_gb=1.0)
            assert autoscaler._room(reconciler.controllers["held"], other) == 1  # 4 - 3 CPUs
        finally:
            await reconciler.shutdown()

    asyncio.run(scenario())


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    workspace = Workspace.create("room", tmp_path / "ws")
    yield workspace
    stop_cluster(workspace)


def test_a_real_cluster_refuses_what_does_not_fit_and_keeps_serving(ws: Workspace) -> None:
    cpus = float(__import__("os").cpu_count() or 1)
    first = deploy(ws, "first", "sum", cpu_cores=cpus * 0.75, memory_gb=0.1)
    with pytest.raises(DeploymentFailed, match=r"'second' does not fit on this machine.*held by first \(1 replicas"):
        deploy(ws, "second", "sum", cpu_cores=cpus * 0.5, memory_gb=0.1)
    with pytest.raises(DeploymentFailed, match="asks for gpu_cores=1 but this machine has no GPU"):
        deploy(ws, "gpu", "sum", cpu_cores=0.01, memory_gb=0.1, gpu_cores=1)
    headers = {"Authorization": f"Bearer {first.get_keys()[0]}", "Content-Type": "application/json"}
    r = requests.post(first.scoring_uri, data=SUM_BODY, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    wait_until(lambda: ws.webservices["second"].state == "Failed")
