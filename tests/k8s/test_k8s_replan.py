"""``ServiceController.replan``, which the Kubernetes controller calls for every service when
the compute target's upload settings change (``control/k8s_controller.py``): against the
in-memory target, no process, socket or sleep. An equal plan applies nothing; another is
applied to the generation in force at its count; a failed generation is not brought back."""

from __future__ import annotations

import asyncio
from pathlib import Path

from modelfleet.control.k8s_controller import upload_settings
from modelfleet.control.reconcile import ServiceController
from modelfleet.spec import AutoscaleSpec, DeploySpec
from modelfleet.store.computes import ComputeRecord
from modelfleet.store.registry import ServiceRecord, Store
from modelfleet.targets.base import ReplicaPlan
from modelfleet.targets.memory import InMemoryTarget

FIXED = DeploySpec(num_replicas=2, autoscale=AutoscaleSpec(enabled=False))


def test_replan_applies_only_a_changed_plan_and_never_a_failed_generation(store: Store) -> None:
    inputs = {"ship": "no"}  # what the planner reads besides the record: the target's settings

    def plan(store: Store, record: ServiceRecord, spec: DeploySpec) -> ReplicaPlan:
        return ReplicaPlan(
            service=record.name,
            generation=record.generation,
            python="python",
            app_root=Path("app"),
            entry_script=Path("score.py"),
            environment={"SHIP": inputs["ship"], "VERSION": str(record.config.get("version"))},
            max_concurrent=spec.replica_max_concurrent_requests,
        )

    async def settle(controller: ServiceController) -> None:
        for _ in range(5):
            if not (await controller.reconcile()).actions:
                return
        raise AssertionError(f"{controller!r} does not settle")

    async def scenario() -> None:
        target = InMemoryTarget()
        store.create_service(
            "svc", {"deploy": FIXED.to_dict(), "version": 1}, primary_key="p" * 32, secondary_key="s" * 32
        )
        controller = ServiceController("svc", store, target, plan)
        assert not await controller.replan()  # nothing planned yet
        await settle(controller)
        target.make_ready()
        await settle(controller)
        assert controller.serving_generation == 1
        target.calls.clear()

        assert not await controller.replan() and target.calls == []  # the same plan: nothing applied
        inputs["ship"] = "yes"
        assert await controller.replan()
        assert target.calls == [("apply", "svc", 1, 2)]  # the generation in force, at its count
        assert target.plans[("svc", 1)].environment["SHIP"] == "yes"
        assert not await controller.replan() and len(target.calls) == 1  # in force now

        # an update whose replicas fail: the failed generation is replanned but not started again
        store.create_service(
            "svc",
            {"deploy": FIXED.to_dict(), "version": 2},
            primary_key="p" * 32,
            secondary_key="s" * 32,
            overwrite=True,
        )
        target.fail_next[("svc", 2)] = "init() raised"
        await settle(controller)
        assert controller.serving_generation == 1
        target.calls.clear()
        inputs["ship"] = "no"
        assert await controller.replan()
        assert [c for c in target.calls if c[0] == "apply"] == []
        await controller.close()

    asyncio.run(scenario())


def test_upload_settings_are_what_the_pod_template_takes_from_the_target() -> None:
    def record(**settings: object) -> ComputeRecord:
        return ComputeRecord(name="prod", kind="kubernetes", settings=dict(settings), created_time=0.0)

    base = upload_settings(record(blob_store="https://b/ws", namespace="a"))
    assert base == (False, "https://b/ws", None)
    assert upload_settings(record(blob_store="https://b/ws", namespace="b")) == base  # no roll for it
    assert upload_settings(record(blob_store="https://b/ws", blob_store_upload_auth="sas"))[0] is True
    set_at = upload_settings(record(blob_store="https://b/ws", blob_store_upload_set="2026-12-04T19:00:00Z"))
    assert set_at != base  # set again (a rotated SAS): the pods that upload roll
