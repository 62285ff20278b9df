"""Pods as replicas (``targets/kubernetes/pods.py``), from plain Pod objects: no cluster."""

from __future__ import annotations

from typing import Any

from modelfleet.targets.base import ReplicaState
from modelfleet.targets.kubernetes.pods import GENERATION_LABEL, replicas_of


def pod(name: str, *, created: str = "2026-01-01T00:00:00Z", gen: int = 1, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "creationTimestamp": created,
            "labels": {"modelfleet.io/service": "svc", GENERATION_LABEL: str(gen)},
        },
        "status": status,
    }


def ready(value: bool) -> list[dict[str, str]]:
    return [{"type": "Ready", "status": "True" if value else "False"}]


def test_a_ready_pod_is_a_ready_replica_at_its_ip():
    (r,) = replicas_of([pod("a", podIP="10.1.0.7", conditions=ready(True))])
    assert (r.id, r.state, r.address, r.generation) == ("a", ReplicaState.READY, "10.1.0.7:5001", 1)


def test_a_terminating_pod_is_draining():
    p = pod("a", podIP="10.1.0.7", conditions=ready(True))
    p["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    assert replicas_of([p])[0].state is ReplicaState.DRAINING


def test_a_failed_pod_is_stopped_not_starting_forever():
    # an evicted pod, or one its node refused: the ReplicaSet starts another in its place
    p = pod("a", phase="Failed", reason="Evicted", message="low on memory", conditions=ready(False))
    (r,) = replicas_of([p])
    assert (r.state, r.detail) == (ReplicaState.STOPPED, "Evicted: low on memory")


def test_a_crash_looping_replica_never_ready_is_init_failed_with_its_exit_status():
    statuses = [
        {
            "name": "replica",
            "restartCount": 2,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 3}},
        }
    ]
    (r,) = replicas_of([pod("a", podIP="10.1.0.7", conditions=ready(False), containerStatuses=statuses)])
    assert r.state is ReplicaState.INIT_FAILED
    assert r.detail == "container replica: CrashLoopBackOff after 2 restarts, last exit status 3"
    assert r.restarts == 2


def test_the_same_pod_after_having_been_ready_is_unhealthy_not_init_failed():
    statuses = [{"name": "replica", "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]
    (r,) = replicas_of([pod("a", conditions=ready(False), containerStatuses=statuses)], ever_ready={"uid-a"})
    assert r.state is ReplicaState.UNHEALTHY


def test_a_failing_init_container_is_named():
    statuses = [{"name": "fetch", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]
    (r,) = replicas_of([pod("a", initContainerStatuses=statuses)])
    assert (r.state, r.detail) == (ReplicaState.INIT_FAILED, "init container fetch exited with status 1 (Error)")


def test_an_unschedulable_pod_is_starting_and_says_why():
    conditions = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes: cpu"}]
    (r,) = replicas_of([pod("a", phase="Pending", conditions=conditions)])
    assert (r.state, r.detail) == (ReplicaState.STARTING, "Unschedulable: 0/1 nodes: cpu")


def test_replicas_are_indexed_per_generation_by_creation_time():
    pods = [
        pod("c", created="2026-01-01T00:00:09Z"),
        pod("a", created="2026-01-01T00:00:05Z"),
        pod("b", created="2026-01-01T00:00:01Z", gen=2),
        {"metadata": {"name": "other", "labels": {}}, "status": {}},
    ]
    assert sorted((r.id, r.generation, r.index) for r in replicas_of(pods)) == [("a", 1, 0), ("b", 2, 0), ("c", 1, 1)]
