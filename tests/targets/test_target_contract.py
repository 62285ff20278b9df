"""The ComputeTarget contract, run against every target: what the reconciler relies on.

``targets/base.ComputeTarget``'s docstring states the rules; these tests check them on the
in-memory target (replicas move when the test says) and on the local target (real replica
processes on Unix sockets, or TCP where those are not available). A new target (Kubernetes)
adds a ``Driver`` here and runs the same tests. A driver knows how to make its target's
replicas progress (``settle``: the in-memory one is told to, the local one is waited for) and
what its router would send to (``routed``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e_support import SCRIPTS
from modelfleet.router.proxy import Router
from modelfleet.targets.base import (
    ComputeTarget,
    GenerationSpec,
    Probe,
    ReplicaInfo,
    ReplicaPlan,
    ReplicaState,
    RouteEntry,
)
from modelfleet.targets.local import LocalTarget
from modelfleet.targets.memory import InMemoryTarget

READY, DRAINING, INIT_FAILED = ReplicaState.READY, ReplicaState.DRAINING, ReplicaState.INIT_FAILED


def plan(generation: int, script: str = "sum") -> ReplicaPlan:
    return ReplicaPlan(
        service="svc",
        generation=generation,
        python=sys.executable,
        app_root=SCRIPTS / script,
        entry_script=SCRIPTS / script / "score.py",
        environment={},
        max_concurrent=1,
        probe=Probe(period_s=0.5, timeout_s=2.0, failure_threshold=2, startup_deadline_s=30.0),
    )


def route(serving: int | None) -> RouteEntry:
    return RouteEntry(service="svc", serving_generation=serving, auth=None, timeout_s=5.0)


class MemoryDriver:
    def __init__(self, tmp: Path) -> None:
        self.target = InMemoryTarget()

    def plan(self, generation: int, failing: bool = False) -> ReplicaPlan:
        if failing:
            self.target.fail_next[("svc", generation)] = "init() raised before the replica was ready"
        return plan(generation)

    async def settle(self, condition: Callable[[], Any]) -> Any:
        self.target.make_ready()
        self.target.finish_draining()
        value = condition()
        assert value, f"not settled: {self.target!r}"
        return value

    def routed(self) -> list[str]:
        return self.target.routed("svc")


class LocalDriver:
    def __init__(self, tmp: Path) -> None:
        self.router = Router()
        self.target = LocalTarget(tmp / "runtime", self.router)

    def plan(self, generation: int, failing: bool = False) -> ReplicaPlan:
        return plan(generation, "failing_init" if failing else "sum")

    async def settle(self, condition: Callable[[], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := condition()):
            if time.monotonic() > deadline:
                raise AssertionError(f"not settled within {timeout} s: {self.target!r}")
            await asyncio.sleep(0.05)
        return value

    def routed(self) -> list[str]:
        stats = self.router.stats().get("svc")
        return sorted(rid for rid, r in stats["replicas"].items() if r["ready"]) if stats else []


Driver = MemoryDriver | LocalDriver


@pytest.fixture(params=[MemoryDriver, LocalDriver], ids=["memory", "local"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Driver]:
    made: Driver = request.param(tmp_path)
    yield made
    if isinstance(made, LocalDriver):
        assert made.target.replicas("svc") == [], "a test left replicas running"


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def states(target: ComputeTarget) -> dict[str, ReplicaState]:
    return {r.id: r.state for r in target.replicas("svc")}


def all_in(target: ComputeTarget, state: ReplicaState, generation: int | None = None) -> list[ReplicaInfo]:
    found = [r for r in target.replicas("svc") if generation in (None, r.generation)]
    return found if found and all(r.state is state for r in found) else []


def test_apply_starts_replicas_that_become_ready_with_an_address_and_report_changes(driver: Driver) -> None:
    async def scenario() -> None:
        target, changed = driver.target, list[str]()
        target.watch(changed.append)
        await target.apply(GenerationSpec(driver.plan(1), 2))
        assert sorted(states(target)) == ["svc-1-0", "svc-1-1"]  # listed at once, not when Ready
        ready = await driver.settle(lambda: all_in(target, READY))
        assert all(r.address for r in ready) and set(changed) == {"svc"}
        await target.apply(GenerationSpec(driver.plan(1), 2))  # the same spec again changes nothing
        assert states(target) == {"svc-1-0": READY, "svc-1-1": READY}
        await target.close(0.0)

    run(scenario)


def test_only_ready_replicas_of_the_serving_generation_are_routed(driver: Driver) -> None:
    async def scenario() -> None:
        target = driver.target
        target.publish(route(None))
        await target.apply(GenerationSpec(driver.plan(1), 1))
        await driver.settle(lambda: all_in(target, READY))
        assert driver.routed() == []  # nothing serves yet
        target.publish(route(1))
        assert driver.routed() == ["svc-1-0"]
        await target.apply(GenerationSpec(driver.plan(2), 1))
        await driver.settle(lambda: all_in(target, READY, 2))
        assert driver.routed() == ["svc-1-0"]  # generation 2 is Ready but not serving
        target.publish(route(2))
        assert driver.routed() == ["svc-2-0"]
        await target.close(0.0)

    run(scenario)


def test_scale_down_drains_the_named_replica_first_and_lists_it_until_gone(driver: Driver) -> None:
    async def scenario() -> None:
        target = driver.target
        target.publish(route(1))
        await target.apply(GenerationSpec(driver.plan(1), 3))
        await driver.settle(lambda: all_in(target, READY))
        await target.scale("svc", 1, 2, remove=["svc-1-0"])
        assert states(target)["svc-1-0"] is DRAINING  # at once: the router sends it nothing new
        assert "svc-1-0" not in driver.routed()
        await driver.settle(lambda: sorted(states(target)) == ["svc-1-1", "svc-1-2"])
        await target.scale("svc", 1, 3)  # up again: a fresh replica, at the lowest free index
        await driver.settle(lambda: len(all_in(target, READY)) == 3)
        assert sorted(states(target)) == ["svc-1-0", "svc-1-1", "svc-1-2"]
        await target.close(0.0)

    run(scenario)


def test_retire_removes_one_generation_and_leaves_the_other(driver: Driver) -> None:
    async def scenario() -> None:
        target = driver.target
        target.publish(route(2))
        await target.apply(GenerationSpec(driver.plan(1), 1))
        await target.apply(GenerationSpec(driver.plan(2), 1))
        await driver.settle(lambda: len(all_in(target, READY)) == 2)
        await target.retire("svc", 1, 5.0)
        assert states(target) == {"svc-1-0": DRAINING, "svc-2-0": READY}
        await driver.settle(lambda: list(states(target)) == ["svc-2-0"])
        await target.close(0.0)

    run(scenario)


def test_a_replica_that_fails_before_ready_is_init_failed_with_why_and_not_restarted(driver: Driver) -> None:
    async def scenario() -> None:
        target = driver.target
        await target.apply(GenerationSpec(driver.plan(1, failing=True), 1))
        [failed] = await driver.settle(lambda: all_in(target, INIT_FAILED))
        assert failed.detail == "init() raised before the replica was ready" and failed.restarts == 0
        await target.retire("svc", 1, 5.0)
        await driver.settle(lambda: states(target) == {})
        await target.close(0.0)

    run(scenario)


def test_delete_removes_every_replica_and_the_route(driver: Driver) -> None:
    async def scenario() -> None:
        target = driver.target
        target.publish(route(1))
        await target.apply(GenerationSpec(driver.plan(1), 2))
        await driver.settle(lambda: all_in(target, READY))
        await target.delete("svc", 5.0)
        assert target.replicas("svc") == [] and driver.routed() == []
        await target.close(0.0)

    run(scenario)
