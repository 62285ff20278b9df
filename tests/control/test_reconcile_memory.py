"""Tier 1: the reconciler and the autoscaler driven against the in-memory target.

A real workspace store (SQLite file), the real ``ServiceController``/``Reconciler`` and
``Autoscaler``, and ``targets/memory.InMemoryTarget`` for the compute target: no process, socket
or sleep. Time is the ``now`` given to ``Autoscaler.tick``; replicas change state when the test
says so. The planner is a plain function (a generation's template needs no app folder here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from modelfleet.control.autoscaler import FAILED_START_BACKOFF_S, Autoscaler, Capacity
from modelfleet.control.decisions import FAILED, HEALTHY, TRANSITIONING, UNHEALTHY
from modelfleet.control.reconcile import Reconciler, ServiceController
from modelfleet.errors import BuildError, TargetError
from modelfleet.spec import AutoscaleSpec, DeploySpec
from modelfleet.store.registry import ServiceRecord, Store
from modelfleet.targets.base import ReplicaPlan, ReplicaState
from modelfleet.targets.memory import InMemoryTarget

FIXED = DeploySpec(num_replicas=2, autoscale=AutoscaleSpec(enabled=False))
AUTO = DeploySpec(autoscale=AutoscaleSpec(enabled=True, min_replicas=1, max_replicas=4, down_delay_seconds=60))
ROOMY = Capacity(cpus=64, memory_gb=256)


def plan(store: Store, record: ServiceRecord, spec: DeploySpec) -> ReplicaPlan:
    return ReplicaPlan(
        service=record.name,
        generation=record.generation,
        python="python",
        app_root=Path("app"),
        entry_script=Path("score.py"),
        environment={"VERSION": str(record.config.get("version", 1))},
        max_concurrent=spec.replica_max_concurrent_requests,
    )


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def create(store: Store, name: str, spec: DeploySpec, version: int = 1, overwrite: bool = False) -> None:
    config = {"deploy": spec.to_dict(), "version": version}
    store.create_service(name, config, primary_key="p" * 32, secondary_key="s" * 32, overwrite=overwrite)


async def settle(controller: ServiceController) -> None:
    """Reconcile until nothing is left to do, as the controller's loop does when the target
    reports each change (at most a few passes: the in-memory target changes at once)."""
    for _ in range(5):
        if not (await controller.reconcile()).actions:
            return
    raise AssertionError(f"{controller!r} does not settle")


def events(store: Store, name: str, kind: str) -> list[dict[str, Any]]:
    return store.list_events(name, kind=kind)


async def deployed(store: Store, target: InMemoryTarget, name: str = "svc", spec: DeploySpec = FIXED):
    """A service whose first generation is serving, and its controller."""
    create(store, name, spec)
    controller = ServiceController(name, store, target, plan)
    await settle(controller)
    target.make_ready()
    await settle(controller)
    assert controller.serving_generation == 1
    return controller


# -- roll-outs ----------------------------------------------------------------------------


def test_first_deploy_transitions_then_serves_when_every_replica_is_ready(store: Store) -> None:
    async def scenario() -> None:
        target = InMemoryTarget()
        create(store, "svc", FIXED)
        controller = ServiceController("svc", store, target, plan)
        await controller.reconcile()
        assert target.states("svc") == {"svc-1-0": "Starting", "svc-1-1": "Starting"}
        assert store.get_service("svc").state == TRANSITIONING
        assert target.routes["svc"].serving_generation is None and target.routed("svc") == []
        target.make_ready(["svc-1-0"])
        await controller.reconcile()
        assert controller.serving_generation is None
        target.make_ready()
        await controller.reconcile()
        record = store.get_service("svc")
        assert (record.state, record.serving_generation) == (HEALTHY, 1)
        assert target.routed("svc") == ["svc-1-0", "svc-1-1"]
        route = target.routes["svc"]
        assert (route.auth, route.primary_key, route.secondary_key) == ("key", "p" * 32, "s" * 32)
        assert [e["outcome"] for e in events(store, "svc", "deployment")] == ["succeeded"]
        assert ("apply", "svc", 1, 2) in target.calls

    run(scenario)


def test_update_switches_only_after_the_new_generation_is_ready_then_drains_the_old(store: Store) -> None:
    async def scenario() -> None:
        target = InMemoryTarget()
        controller = await deployed(store, target)
        create(store, "svc", FIXED, version=2, overwrite=True)
        await controller.reconcile()
        assert store.get_service("svc").detail == "updating to generation 2"
        assert target.routed("svc") == ["svc-1-0", "svc-1-1"]  # the old one serves meanwhile
        target.make_ready(["svc-2-0"])
        await controller.reconcile()
        assert target.routed("svc") == ["svc-1-0", "svc-1-1"]
        target.make_ready(["svc-2-1"])
        await controller.reconcile()
        assert target.routed("svc") == ["svc-2-0", "svc-2-1"]
        assert target.states("svc") == {
            "svc-1-0": "Draining",
            "svc-1-1": "Draining",
            "svc-2-0": "Ready",
            "svc-2-1": "Ready",
        }
        assert target.plans[("svc", 2)].environment == {"VERSION": "2"}
        target.finish_draining()
        await controller.reconcile()
        assert sorted(target.states("svc")) == ["svc-2-0", "svc-2-1"]
        record = store.get_service("svc")
        assert (record.state, record.detail, record.serving_generation) == (HEALTHY, None, 2)

    run(scenario)


def test_failed_update_leaves_the_old_generation_serving_and_is_not_retried(store: Store) -> None:
    async def scenario() -> None:
        target = InMemoryTarget()
        controller = await deployed(store, target)
        create(store, "svc", DeploySpec(num_replicas=3, autoscale=AutoscaleSpec(enabled=False)), 2, overwrite=True)
        await controller.reconcile()
        target.fail_init(["svc-2-1"], "init() raised before the replica was ready")
        await controller.reconcile()
        record = store.get_service("svc")
        assert record.state == HEALTHY and record.serving_generation == 1
        assert record.detail is not None and "still serving generation 1" in record.detail
        [failed] = events(store, "svc", "deployment")[1:]
        assert failed["outcome"] == "failed" and "init() raised" in failed["message"]
        assert target.routed("svc") == ["svc-1-0", "svc-1-1"]
        assert {s for rid, s in target.states("svc").items() if rid.startswith("svc-2")} == {"Draining"}
        target.finish_draining()
        applies = [c for c in target.calls if c[0] == "apply"]
        for _ in range(3):
            await controller.reconcile()
        assert [c for c in target.calls if c[0] == "apply"] == applies  # not retried
        assert controller.replica_count == 2  # the serving generation keeps its count, not the new 3
        assert sorted(target.states("svc")) == ["svc-1-0", "svc-1-1"]

    run(scenario)


def test_first_deploy_whose_replicas_fail_init_is_failed_and_the_router_is_told_why(store: Store) -> None:
    async def scenario() -> None:
        target = InMemoryTarget()
        target.fail_next[("svc", 1)] = "init() raised before the replica was ready"
        create(store, "svc", FIXED)
        controller = ServiceController("svc", store, target, plan)
        await settle(controller)
        record = store.get_service("svc")
        assert record.state == FAILED and record.detail is not None
        assert record.detail.startswith("init() raised before the replica was ready; see service.get_logs()")
        assert target.routes["svc"].failure == record.detail
        assert set(target.states("svc").values()) == {"Draining"}

    run(scenario)


def test_a_planning_error_fails_the_deployment_with_its_message(store: Store) -> None:
    def broken(store: Store, record: ServiceRecord, spec: DeploySpec) -> ReplicaPlan:
        raise BuildError("pip could not resolve 'nosuchpackage==9'")

    async def scenario() -> None:
        target = InMemoryTarget()
        create(store, "svc", FIXED)
        controller = ServiceController("svc", store, target, broken)
        await controller.reconcile()
        record = store.get_service("svc")
        assert (record.state, record.detail) == (FAILED, "pip could not resolve 'nosuchpackage==9'")
        assert target.calls == [("publish", "svc", None, "pip could not resolve 'nosuchpackage==9'")]

    run(scenario)


def test_a_switch_whose_publish_fails_is_retried_and_recorded_once(store: Store) -> None:
    async def scenario() -> None:
        target = InMemoryTarget(auto_ready=True)
        create(store, "svc", FIXED)
        controller = ServiceController("svc", store, target, plan)
        await controller.reconcile()  # replicas asked for (and Ready at once)
        target.refuse_publish = 1
        try:
            await controller.reconcile()
        except TargetError:
            pass
        else:
            raise AssertionError("the refused publish should surface")
        assert controller.serving_generation is None and events(store, "svc", "deployment") == []
        await settle(controller)
        assert controller.serving_generation == 1 and target.routes["svc"].serving_generation == 1
        assert [e["outcome"] for e in events(store, "svc", "deployment")] == ["succeeded"]

    run(scenario)


# -- supervision, keys, restore, delete -----------------------------------------------------


def test_a_crashed_replica_makes_the_service_unhealthy_until_it_is_ready_again(store: Store) -> None:
    async def scenario() -> None:
        target = InMemoryTarget()
        controller = await deployed(store, target)
        target.crash("svc-1-1")
        await controller.reconcile()
        assert (store.get_service("svc").state, store.get_service("svc").detail) == (UNHEALTHY, "1 of 2 replicas ready")
        assert target.routed("svc") == ["svc-1-0"]
        target.make_ready()
        await controller.reconcile()
        assert (store.get_service("svc").state, store.get_service("svc").detail) == (HEALTHY, None)

    run(scenario)


def test_a_regenerated_key_is_published_at_once(store: Store) -> None:
    async def scenario() -> None:
        target = InMemoryTarget()
        controller = await deployed(store, target)
        store.set_service_keys("svc", primary_key="n" * 32)
        controller.refresh_route()
        assert target.routes["svc"].primary_key == "n" * 32

    run(scenario)


def test_restore_brings_back_services_but_not_failed_ones(store: Store) -> None:
    async def scenario() -> None:
        first = Reconciler(store, InMemoryTarget(auto_ready=True), plan)
        for name in ("alive", "broken"):
            create(store, name, FIXED)
        first.target.fail_next[("broken", 1)] = "init() raised"  # type: ignore[attr-defined]
        for name in ("alive", "broken"):
            first.sync(name)
            await settle(first.controllers[name])
        await first.shutdown()

        target = InMemoryTarget(auto_ready=True)  # a new daemon: nothing running
        second = Reconciler(store, target, plan)
        await second.restore()
        assert sorted(second.controllers) == ["alive"]
        await settle(second.controllers["alive"])
        assert store.get_service("alive").state == HEALTHY and target.routed("alive") == ["alive-1-0", "alive-1-1"]
        await second.shutdown()
        assert target.closed

    run(scenario)


def test_a_restored_service_reads_transitioning_before_it_is_planned(store: Store) -> None:
    seen: list[str] = []

    def watching(store: Store, record: ServiceRecord, spec: DeploySpec) -> ReplicaPlan:
        seen.append(store.get_service(record.name).state)  # planning may take a while
        return plan(store, record, spec)

    async def scenario() -> None:
        create(store, "svc", FIXED)
        store.set_service_state("svc", HEALTHY, None, serving_generation=1)  # left by a killed daemon
        reconciler = Reconciler(store, InMemoryTarget(auto_ready=True), watching)
        await reconciler.restore()
        await settle(reconciler.controllers["svc"])
        assert seen == [TRANSITIONING]
        assert store.get_service("svc").state == HEALTHY
        await reconciler.shutdown()

    run(scenario)


def test_delete_removes_the_service_everywhere(store: Store) -> None:
    async def scenario() -> None:
        target = InMemoryTarget(auto_ready=True)
        reconciler = Reconciler(store, target, plan)
        create(store, "svc", FIXED)
        reconciler.sync("svc")
        await reconciler.controllers["svc"].reconcile()
        await reconciler.delete("svc")
        assert target.replicas("svc") == [] and "svc" not in target.routes and not reconciler.controllers
        assert [s.name for s in store.list_services()] == []
        await reconciler.shutdown()

    run(scenario)


def test_replica_changes_wake_the_controller(store: Store) -> None:
    async def scenario() -> None:
        target = InMemoryTarget()
        reconciler = Reconciler(store, target, plan)
        create(store, "svc", FIXED)
        reconciler.sync("svc")
        controller = reconciler.controllers["svc"]
        await controller.reconcile()
        controller._wake.clear()
        target.make_ready(["svc-1-0"])
        assert controller._wake.is_set()
        await reconciler.shutdown()

    run(scenario)


# -- scaling, by hand and by the autoscaler -----------------------------------------------


def test_scale_to_records_events_and_removes_named_victims_through_a_drain(store: Store) -> None:
    async def scenario() -> None:
        target = InMemoryTarget(auto_ready=True)
        controller = await deployed(store, target, spec=AUTO)
        assert await controller.scale_to(3, "above target", 1.5) == 3
        assert target.routed("svc") == ["svc-1-0", "svc-1-1", "svc-1-2"]
        assert await controller.scale_to(2, "under target", 0.1) == 2
        assert target.states("svc")["svc-1-2"] == "Draining" and target.routed("svc") == ["svc-1-0", "svc-1-1"]
        assert not controller.scaling  # a drain does not hold the next decision
        steps = [(e["from"], e["to"], e["reason"]) for e in events(store, "svc", "scale")]
        assert steps == [(1, 3, "above target"), (3, 2, "under target")]

    run(scenario)


def test_new_replicas_that_fail_lower_the_count_and_say_why(store: Store) -> None:
    async def scenario() -> None:
        target = InMemoryTarget(auto_ready=True)
        controller = await deployed(store, target, spec=AUTO)
        target.fail_next[("svc", 1)] = "init() raised before the replica was ready"
        await controller.scale_to(3, "above target", 2.0)
        await settle(controller)
        assert controller.replica_count == 1 and controller.start_failures == 1
        [up, down] = events(store, "svc", "scale")
        assert (up["from"], up["to"], down["from"], down["to"]) == (1, 3, 3, 1)
        assert down["reason"] == "2 new replica(s) failed to start: init() raised before the replica was ready"
        assert store.get_service("svc").state == HEALTHY

    run(scenario)


class Load:
    """The router's counters as ``Router.stats`` gives them, for ``busy`` requests at limit 1."""

    def __init__(self, target: InMemoryTarget) -> None:
        self.target = target
        self.busy = 0

    def __call__(self) -> dict[str, dict[str, Any]]:
        routed = self.target.routed("svc")
        in_flight = min(self.busy, len(routed))
        return {
            "svc": {
                "in_flight": in_flight,
                "queued": self.busy - in_flight,
                "limit": 1,
                "replicas": {
                    rid: {"in_flight": 1 if i < in_flight else 0, "ready": True} for i, rid in enumerate(routed)
                },
            }
        }


async def steps(
    autoscaler: Autoscaler, controller: ServiceController, start: float, end: float
) -> list[tuple[float, int]]:
    """Tick every 0.1 s of injected time; the counts the controller moved to, and when."""
    changes = []
    now = start
    while now < end:
        before = controller.replica_count
        autoscaler.tick(now)
        await autoscaler.settled()
        await settle(controller)
        if controller.replica_count != before:
            changes.append((round(now, 1), controller.replica_count))
        now += 0.1
    return changes


def test_autoscaler_scales_up_at_once_and_down_one_at_a_time_after_the_delay(store: Store) -> None:
    async def scenario() -> None:
        target = InMemoryTarget(auto_ready=True)
        reconciler = Reconciler(store, target, plan)
        create(store, "svc", AUTO)
        reconciler.sync("svc")
        controller = reconciler.controllers["svc"]
        await settle(controller)
        load = Load(target)
        autoscaler = Autoscaler(reconciler, load, ROOMY)

        load.busy = 8  # 8 busy need ceil(8 / 0.7) = 12: all four at once, after one refresh period
        up = await steps(autoscaler, controller, 0.0, 5.0)
        assert len(up) == 1 and up[0][1] == 4 and 1.0 <= up[0][0] <= 1.2, up
        assert target.routed("svc") == ["svc-1-0", "svc-1-1", "svc-1-2", "svc-1-3"]

        load.busy = 0
        down = await steps(autoscaler, controller, 5.0, 70.0)
        target.finish_draining()
        assert [count for _, count in down] == [3, 2, 1]
        assert down[0][0] >= 5.0 + 60.0, down  # not before the down-delay
        assert [(e["from"], e["to"]) for e in events(store, "svc", "scale")] == [(1, 4), (4, 3), (3, 2), (2, 1)]
        assert sorted(target.states("svc")) == ["svc-1-0"]
        await autoscaler.stop()
        await reconciler.shutdown()

    run(scenario)


def test_autoscaler_backs_off_after_new_replicas_fail_to_start(store: Store) -> None:
    async def scenario() -> None:
        target = InMemoryTarget(auto_ready=True)
        reconciler = Reconciler(store, target, plan)
        create(store, "svc", AUTO)
        reconciler.sync("svc")
        controller = reconciler.controllers["svc"]
        await settle(controller)
        load = Load(target)
        autoscaler = Autoscaler(reconciler, load, ROOMY)
        target.fail_next[("svc", 1)] = "init() raised"
        load.busy = 8
        await steps(autoscaler, controller, 0.0, 3.0)
        asked = [e for e in events(store, "svc", "scale") if e["to"] > e["from"]]
        assert len(asked) == 1 and controller.start_failures == 1 and controller.replica_count == 1
        target.fail_next.clear()
        await steps(autoscaler, controller, 3.0, 3.0 + FAILED_START_BACKOFF_S - 2.0)
        assert controller.replica_count == 1  # still backing off
        await steps(autoscaler, controller, 31.0, 40.0)
        assert controller.replica_count == 4
        await autoscaler.stop()
        await reconciler.shutdown()

    run(scenario)


def test_autoscaler_leaves_services_alone_while_they_roll_out(store: Store) -> None:
    async def scenario() -> None:
        target = InMemoryTarget()
        reconciler = Reconciler(store, target, plan)
        create(store, "svc", AUTO)
        reconciler.sync("svc")
        controller = reconciler.controllers["svc"]
        await controller.reconcile()
        target.make_ready()
        await controller.reconcile()
        create(store, "svc", AUTO, version=2, overwrite=True)
        await controller.reconcile()  # generation 2 starting, not Ready
        assert controller.scaling
        load = Load(target)
        load.busy = 8
        autoscaler = Autoscaler(reconciler, load, ROOMY)
        assert await steps(autoscaler, controller, 0.0, 3.0) == []
        assert [c for c in target.calls if c[0] == "scale"] == []
        await autoscaler.stop()
        await reconciler.shutdown()

    run(scenario)


def test_replicas_of_a_draining_generation_are_listed_until_gone(store: Store) -> None:
    async def scenario() -> None:
        target = InMemoryTarget(auto_ready=True)
        controller = await deployed(store, target)
        await controller.scale_to(1, "by hand", None)
        assert [r.state for r in controller.replicas()] == [ReplicaState.READY, ReplicaState.DRAINING]
        target.finish_draining()
        assert [r.id for r in controller.replicas()] == ["svc-1-0"]

    run(scenario)


# -- how often a steady service is looked at ------------------------------------------------


async def _quiet(controller: ServiceController, window_s: float, within_s: float = 15.0) -> int:
    """Wait until ``window_s`` go by without a pass (its roll-out's passes are over); the count."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while loop.time() < deadline:
        before = controller.passes
        await asyncio.sleep(window_s)
        if controller.passes == before:
            return before
    raise AssertionError(f"{controller!r} made a pass in every {window_s} s for {within_s} s")


def test_a_steady_service_is_passed_over_until_idle_resync_s_and_a_change_still_wakes_it(store: Store) -> None:
    """1,000 steady services made 1,000 passes a second (most of an idle daemon's CPU): with
    ``idle_resync_s`` (the local cluster's LOCAL_IDLE_RESYNC_S) a service whose last pass did
    nothing and whose replicas are all Ready is looked at that rarely, and a replica change
    still brings a pass at once."""

    async def scenario() -> None:
        target = InMemoryTarget(auto_ready=True)
        reconciler = Reconciler(store, target, plan, capacity=ROOMY, idle_resync_s=60.0)
        create(store, "svc", FIXED)
        reconciler.sync("svc")
        controller = reconciler.controllers["svc"]
        passes = await _quiet(controller, 2.5)  # every second, as before, would never be quiet
        assert store.get_service("svc").state == HEALTHY
        target.crash("svc-1-0")  # reported through watch(): a pass now, not in a minute
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0
        while controller.passes == passes and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert controller.passes > passes
        # not steady (a replica is Starting): looked at every second again
        await asyncio.sleep(2.5)
        assert controller.passes >= passes + 2
        await reconciler.shutdown()

    run(scenario)


def test_by_default_a_steady_service_is_still_looked_at_every_second(store: Store) -> None:
    async def scenario() -> None:
        target = InMemoryTarget(auto_ready=True)
        reconciler = Reconciler(store, target, plan, capacity=ROOMY)
        create(store, "svc", FIXED)
        reconciler.sync("svc")
        controller = reconciler.controllers["svc"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15.0
        while store.get_service("svc").state != HEALTHY and loop.time() < deadline:
            await asyncio.sleep(0.05)
        passes = controller.passes
        await asyncio.sleep(3.5)
        assert controller.passes >= passes + 2
        await reconciler.shutdown()

    run(scenario)
