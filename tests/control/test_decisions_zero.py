"""Tier 1: a service scaled to zero, as the reconciler's decision sees it (issue 17)."""

from __future__ import annotations

from modelfleet.control.decisions import HEALTHY, UNHEALTHY, Desired, Memory, Scale, decide
from modelfleet.targets.base import ReplicaInfo, ReplicaState


def rep(index: int, state: ReplicaState, restarts: int = 0) -> ReplicaInfo:
    return ReplicaInfo(f"svc-1-{index}", "svc", 1, index, state, None, None, restarts, None)


SERVING = Memory(serving=1)


def test_one_to_zero_drains_the_last_replica_and_stays_healthy() -> None:
    d = decide(Desired(1, 0), SERVING, [rep(0, ReplicaState.READY)])
    assert d.actions == (Scale(1, 0, ("svc-1-0",)),)
    # the replica drains (the target's business): Healthy, "scaled to zero"
    d = decide(Desired(1, 0), SERVING, [rep(0, ReplicaState.DRAINING)])
    assert d.actions == () and (d.state, d.detail) == (HEALTHY, "scaled to zero")
    d = decide(Desired(1, 0), SERVING, [])
    assert d.actions == () and (d.state, d.detail) == (HEALTHY, "scaled to zero")


def test_zero_to_one_starts_a_replica_and_says_so() -> None:
    d = decide(Desired(1, 1), SERVING, [])
    assert d.actions == (Scale(1, 1),)
    d = decide(Desired(1, 1), SERVING, [rep(0, ReplicaState.STARTING)])
    assert d.actions == () and (d.state, d.detail) == (HEALTHY, "scaled to zero; starting a replica")
    d = decide(Desired(1, 1), SERVING, [rep(0, ReplicaState.READY)])
    assert d.state == HEALTHY and d.detail is None


def test_a_replica_restarting_after_a_crash_is_not_a_cold_start() -> None:
    d = decide(Desired(1, 1), SERVING, [rep(0, ReplicaState.STARTING, restarts=1)])
    assert (d.state, d.detail) == (UNHEALTHY, "0 of 1 replicas ready")
