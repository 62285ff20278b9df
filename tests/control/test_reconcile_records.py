"""How a running reconciler learns that a service's stored record changed (issue 16: at 1,000
services, one read per service per second took a whole core of the daemon).

A real SQLite workspace, the real ``Reconciler`` and its controllers' loops on the in-memory
target; these tests let the loops run in real time for a few seconds."""

from __future__ import annotations

import asyncio
import time

from test_reconcile_memory import FIXED, ROOMY, create, plan

from modelfleet.control.reconcile import Reconciler
from modelfleet.spec import DeploySpec
from modelfleet.store.registry import Store
from modelfleet.targets.memory import InMemoryTarget
from store_statements import counted_statements


async def _until(condition, within_s: float) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within_s:
            raise AssertionError(f"not within {within_s} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def _serving(store: Store, target: InMemoryTarget, name: str = "svc") -> Reconciler:
    """A reconciler whose ``name`` is deployed and serving its first generation."""
    reconciler = Reconciler(store, target, plan, capacity=ROOMY)
    create(store, name, FIXED)
    reconciler.sync(name)
    await _until(lambda: store.get_service(name).serving_generation == 1, 10)
    return reconciler


def test_idle_services_cost_one_query_a_second_not_one_per_service(store: Store) -> None:
    async def scenario() -> None:
        target = InMemoryTarget(auto_ready=True)
        reconciler = Reconciler(store, target, plan, capacity=ROOMY)
        names = [f"svc-{i:02d}" for i in range(20)]
        for name in names:
            create(store, name, FIXED)
            reconciler.sync(name)
        await _until(lambda: all(store.get_service(n).state == "Healthy" for n in names), 10)
        await asyncio.sleep(1.5)  # the last writes of the roll-outs are read back once
        with counted_statements(store) as statements:
            await asyncio.sleep(3.2)
        reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
        # about three polls of the services' count and summed updated_time (and the list of
        # them when that moved); reading each record every second would be 20 x 3 = 60
        assert 2 <= len(reads) <= 5, reads
        assert all("updated_time" in s for s in reads), reads
        assert sum("sum(services.updated_time)" in s for s in reads) >= 2, reads
        await reconciler.shutdown()

    asyncio.run(scenario())


def test_a_record_changed_without_a_sync_is_picked_up_within_seconds(store: Store) -> None:
    """Another process (or a teammate's machine) changes the record and tells no daemon."""

    async def scenario() -> None:
        target = InMemoryTarget(auto_ready=True)
        reconciler = await _serving(store, target)
        config = {"deploy": DeploySpec(num_replicas=3, autoscale=FIXED.autoscale).to_dict(), "version": 2}
        await asyncio.to_thread(store.update_service_config, "svc", config)
        took = await _until(lambda: store.get_service("svc").serving_generation == 2, 10)
        assert took < 3.5
        assert target.plans[("svc", 2)].environment == {"VERSION": "2"}
        assert sorted(r.id for r in target.replicas("svc") if r.generation == 2) == ["svc-2-0", "svc-2-1", "svc-2-2"]
        await reconciler.shutdown()

    asyncio.run(scenario())


def test_a_record_deleted_without_a_sync_ends_its_controller(store: Store) -> None:
    async def scenario() -> None:
        target = InMemoryTarget(auto_ready=True)
        reconciler = await _serving(store, target)
        controller = reconciler.controllers["svc"]
        await asyncio.to_thread(store.delete_service, "svc")
        task = controller._task
        assert task is not None
        await _until(task.done, 3.5)
        await reconciler.shutdown()

    asyncio.run(scenario())
