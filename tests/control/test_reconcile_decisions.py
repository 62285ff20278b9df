"""Tier 1: the reconciler's decision (``control/decisions.decide``) over plain values.

No store, target, process, socket or clock: desired state + memory + observed replicas in,
actions and state out.
"""

from __future__ import annotations

from modelfleet.control.decisions import (
    FAILED,
    HEALTHY,
    TRANSITIONING,
    UNHEALTHY,
    Decision,
    Desired,
    Fail,
    Memory,
    Replace,
    Scale,
    Start,
    StartFailed,
    Stop,
    decide,
)
from modelfleet.targets.base import ReplicaInfo, ReplicaState

READY, STARTING, INIT_FAILED = ReplicaState.READY, ReplicaState.STARTING, ReplicaState.INIT_FAILED
DRAINING, UNHEALTHY_R = ReplicaState.DRAINING, ReplicaState.UNHEALTHY


def rep(generation: int, index: int, state: ReplicaState = READY, restarts: int = 0, detail: str | None = None):
    return ReplicaInfo(
        id=f"svc-{generation}-{index}",
        service="svc",
        generation=generation,
        index=index,
        state=state,
        pid=None,
        address=None,
        restarts=restarts,
        log_path=None,
        detail=detail,
    )


def serving(generation: int = 1, **kw) -> Memory:
    return Memory(serving=generation, **kw)


# -- the first roll-out ----------------------------------------------------------------------


def test_first_generation_starts_its_replicas_and_is_transitioning() -> None:
    assert decide(Desired(1, 2), Memory(), []) == Decision((Start(1, 2),), TRANSITIONING, None)


def test_nothing_to_do_while_new_replicas_start() -> None:
    assert decide(Desired(1, 2), Memory(), [rep(1, 0), rep(1, 1, STARTING)]) == Decision((), TRANSITIONING, None)


def test_what_holds_a_starting_replica_back_is_the_state_detail() -> None:
    why = "Unschedulable: 0/1 nodes are available: 1 Insufficient cpu."
    pending = [rep(1, 0), rep(1, 1, STARTING, detail=why)]
    assert decide(Desired(1, 2), Memory(), pending) == Decision((), TRANSITIONING, why)
    # during an update the old generation serves on: Healthy, saying what the new one waits for
    update = [rep(1, 0), rep(2, 0, STARTING, detail=why)]
    assert decide(Desired(2, 1), serving(1), update) == Decision((), HEALTHY, f"updating to generation 2: {why}")


def test_all_ready_replaces_and_is_healthy() -> None:
    assert decide(Desired(1, 2), Memory(), [rep(1, 0), rep(1, 1)]) == Decision((Replace(1, ()),), HEALTHY, None)


def test_init_failure_of_the_first_generation_stops_it_and_fails_the_service() -> None:
    observed = [rep(1, 0), rep(1, 1, INIT_FAILED, detail="init() raised before the replica was ready")]
    d = decide(Desired(1, 2), Memory(), observed)
    reason = "init() raised before the replica was ready; see service.get_logs() or `modelfleet service logs -n svc`"
    assert d == Decision((Stop(1), Fail(1, reason)), FAILED, reason)


def test_a_failed_generation_is_not_retried() -> None:
    memory = Memory(failed=1, failure="init() raised")
    assert decide(Desired(1, 2), memory, []) == Decision((), FAILED, "init() raised")


# -- updates: the worked example of the module docstring and its failure ------------------


def test_update_starts_the_new_generation_beside_the_serving_one() -> None:
    d = decide(Desired(2, 2), serving(1), [rep(1, 0), rep(1, 1)])
    assert d == Decision((Start(2, 2),), HEALTHY, "updating to generation 2")


def test_update_switches_only_when_every_new_replica_is_ready() -> None:
    old = [rep(1, 0), rep(1, 1)]
    assert decide(Desired(2, 2), serving(1), [*old, rep(2, 0), rep(2, 1, STARTING)]).actions == ()
    d = decide(Desired(2, 2), serving(1), [*old, rep(2, 0), rep(2, 1)])
    assert d == Decision((Replace(new=2, old=(1,)),), HEALTHY, None)


def test_failed_update_stops_the_new_generation_and_keeps_the_old_serving() -> None:
    observed = [rep(1, 0), rep(1, 1), rep(2, 0, INIT_FAILED, detail="init() raised"), rep(2, 1, STARTING)]
    d = decide(Desired(2, 2), serving(1), observed)
    assert d.actions[0] == Stop(2) and isinstance(d.actions[1], Fail) and d.actions[1].generation == 2
    assert d.state == HEALTHY
    assert d.detail is not None and d.detail.startswith("update to generation 2 failed: init() raised")
    assert d.detail.endswith("still serving generation 1")


def test_after_a_failed_update_the_old_generation_serves_on_and_says_so() -> None:
    memory = serving(1, failed=2, failure="init() raised")
    d = decide(Desired(2, 2), memory, [rep(1, 0), rep(1, 1), rep(2, 0, DRAINING)])
    assert d == Decision((), HEALTHY, "update to generation 2 failed: init() raised; still serving generation 1")


def test_an_update_during_an_update_stops_the_abandoned_generation() -> None:
    observed = [rep(1, 0), rep(2, 0, STARTING)]
    assert decide(Desired(3, 1), serving(1), observed).actions == (Start(3, 1), Stop(2))


def test_leftover_generations_are_stopped() -> None:
    assert decide(Desired(2, 1), serving(2), [rep(1, 0), rep(2, 0)]).actions == (Stop(1),)


# -- scaling ------------------------------------------------------------------------------


def test_scale_up_asks_for_the_whole_count_at_once() -> None:
    assert decide(Desired(1, 4), serving(1), [rep(1, 0)]).actions == (Scale(1, 4),)


def test_scale_down_removes_not_ready_first_then_the_highest_index() -> None:
    observed = [rep(1, 0), rep(1, 1, UNHEALTHY_R, restarts=1), rep(1, 2), rep(1, 3)]
    assert decide(Desired(1, 2), serving(1), observed).actions == (Scale(1, 2, ("svc-1-1", "svc-1-3")),)


def test_draining_replicas_count_for_nothing() -> None:
    observed = [rep(1, 0), rep(1, 1, DRAINING), rep(1, 2, DRAINING)]
    assert decide(Desired(1, 1), serving(1), observed) == Decision((), HEALTHY, None)


def test_new_replicas_of_a_scale_up_are_failed_starts_not_a_failed_service() -> None:
    observed = [rep(1, 0), rep(1, 1, INIT_FAILED, detail="init() raised"), rep(1, 2, STARTING)]
    d = decide(Desired(1, 3), serving(1), observed)
    assert d.actions == (
        StartFailed(1, 2, "1 new replica(s) failed to start: init() raised"),
        Scale(1, 2, ("svc-1-1",)),
    )
    assert (d.state, d.detail) == (HEALTHY, None)  # the starting one is not counted yet


# -- health -------------------------------------------------------------------------------


def test_replicas_starting_for_a_scale_up_keep_the_service_healthy() -> None:
    assert decide(Desired(1, 3), serving(1), [rep(1, 0), rep(1, 1, STARTING), rep(1, 2, STARTING)]).state == HEALTHY


def test_a_crashed_replica_makes_the_service_unhealthy_until_it_is_back() -> None:
    observed = [rep(1, 0), rep(1, 1, STARTING, restarts=1)]
    assert decide(Desired(1, 2), serving(1), observed) == Decision((), UNHEALTHY, "1 of 2 replicas ready")
    observed[1] = rep(1, 1, READY, restarts=1)
    assert decide(Desired(1, 2), serving(1), observed) == Decision((), HEALTHY, None)


def test_no_replica_at_all_is_unhealthy_and_restarted() -> None:
    assert decide(Desired(1, 1), serving(1), []) == Decision((Scale(1, 1),), UNHEALTHY, "0 of 0 replicas ready")
