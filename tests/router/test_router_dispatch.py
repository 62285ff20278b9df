"""Tier 1: the dispatcher with numbers only (no sockets, no clock, no sleeps)."""

from __future__ import annotations

import pytest

from modelfleet.router.dispatch import Dispatch, Reject, Send, Slot, pick_least_loaded


def make(n: int = 3, limit: int = 1, wait: float = 0.5) -> Dispatch:
    d = Dispatch("x", limit, wait)
    assert d.set_replicas([f"r{i}" for i in range(n)], 0.0) == ()
    return d


def test_worked_example_from_the_docstring() -> None:
    d = make(3)
    out = [d.arrive(name, 0.0) for name in "abcde"]
    assert out == [Send("a", "r0"), Send("b", "r1"), Send("c", "r2"), None, None]
    assert repr(d) == "<Dispatch svc=x in_flight=[1,1,1] queued=2>"
    assert d.expire(0.49) == []
    assert d.expire(0.5) == [Reject("d"), Reject("e")]
    assert repr(d) == "<Dispatch svc=x in_flight=[1,1,1] queued=0>"


def test_finish_hands_the_freed_slot_to_the_oldest_waiter() -> None:
    d = make(3)
    for name in "abcde":
        d.arrive(name, 0.0)
    assert d.finish("r1", 0.2) == [Send("d", "r1")]
    assert d.finish("r0", 0.3) == [Send("e", "r0")]
    assert d.finish("r2", 0.4) == ()
    assert repr(d) == "<Dispatch svc=x in_flight=[1,1,0] queued=0>"
    assert d.in_flight == 2


def test_limit_is_never_exceeded_and_fewest_in_flight_wins() -> None:
    d = make(2, limit=3, wait=10)
    sends = [d.arrive(i, 0.0) for i in range(8)]
    assert sends[6:] == [None, None]
    loads = [s.in_flight for s in d.slots()]
    assert loads == [3, 3]
    d.finish("r1", 1.0)  # r1 at 2 takes the next waiter: back to 3
    assert [s.in_flight for s in d.slots()] == [3, 3]
    assert d.queued == 1


def test_ties_rotate() -> None:
    d = make(3)
    picks = []
    for i in range(6):
        action = d.arrive(i, float(i))
        assert isinstance(action, Send)
        picks.append(action.replica)
        d.finish(action.replica, float(i))
    assert picks == ["r0", "r1", "r2", "r0", "r1", "r2"]


def test_policy_function_skips_closed_slots() -> None:
    slots = [Slot("a"), Slot("b"), Slot("c")]
    slots[0].failed = True
    slots[1].busy_until = 5.0
    assert pick_least_loaded(slots, 1, 1.0, 0) == 2
    slots[2].in_flight = 1
    assert pick_least_loaded(slots, 1, 1.0, 0) == -1
    assert pick_least_loaded(slots, 1, 5.0, 0) == 1  # back-off over
    assert pick_least_loaded([], 1, 0.0, 0) == -1


def test_fifo_arrival_never_overtakes_a_waiter() -> None:
    d = make(1, wait=1.0)
    d.arrive("a", 0.0)
    assert d.arrive("b", 0.1) is None
    assert d.arrive("c", 0.2) is None
    assert d.finish("r0", 0.3) == [Send("b", "r0")]
    assert d.finish("r0", 0.4) == [Send("c", "r0")]


def test_zero_wait_rejects_at_once() -> None:
    d = make(1, wait=0)
    assert d.arrive("a", 0.0) == Send("a", "r0")
    assert d.arrive("b", 0.0) == Reject("b")
    assert d.queued == 0


def test_no_replicas_waits_then_rejects_and_new_replica_serves_the_queue() -> None:
    d = Dispatch("x", 1, 0.5)
    assert d.arrive("a", 0.0) is None
    assert d.arrive("b", 0.1) is None
    assert d.next_wakeup() == 0.5
    assert d.set_replicas(["r0"], 0.2) == [Send("a", "r0")]
    assert d.expire(0.6) == [Reject("b")]


def test_expire_on_finish_rejects_overdue_waiters_first() -> None:
    d = make(1)
    d.arrive("a", 0.0)
    d.arrive("b", 0.0)  # deadline 0.5
    d.arrive("c", 0.3)  # deadline 0.8
    assert d.finish("r0", 0.6) == [Reject("b"), Send("c", "r0")]


def test_cancel_removes_a_waiter_at_once() -> None:
    d = make(1)
    d.arrive("a", 0.0)
    d.arrive("b", 0.0)
    d.arrive("c", 0.0)
    assert d.cancel("b") is True
    assert d.cancel("b") is False
    assert d.queued == 1
    assert d.finish("r0", 0.1) == [Send("c", "r0")]


def test_busy_requeues_at_head_and_backs_the_replica_off() -> None:
    d = make(2, wait=1.0)
    d.busy_backoff_s = 0.05
    assert d.arrive("a", 0.0) == Send("a", "r0")
    assert d.arrive("b", 0.0) == Send("b", "r1")
    assert d.arrive("c", 0.1) is None
    # r0 says busy for "a": "a" goes back ahead of "c", r0 is skipped for 50 ms.
    assert d.busy("r0", "a", 0.2, arrived=0.0) == []
    assert d.queued == 2
    assert d.next_wakeup() == pytest.approx(0.25)
    assert d.expire(0.25) == [Send("a", "r0")]
    # "a" keeps its original deadline (0.0 + 1.0), not a fresh one.
    assert d.busy("r0", "a", 0.3, arrived=0.0) == []
    assert d.expire(1.0) == [Reject("a"), Send("c", "r0")]


def test_busy_tries_another_replica_with_room() -> None:
    d = make(2, wait=1.0)
    assert d.arrive("a", 0.0) == Send("a", "r0")
    assert d.busy("r0", "a", 0.01, arrived=0.0) == [Send("a", "r1")]


def test_refused_marks_failed_and_tries_another() -> None:
    d = make(2)
    assert d.arrive("a", 0.0) == Send("a", "r0")
    assert d.refused("r0", "a", 0.0, arrived=0.0) == [Send("a", "r1")]
    assert d.arrive("b", 0.0) is None  # r0 failed, r1 full
    assert d.mark_healthy("r0", 0.1) == [Send("b", "r0")]


def test_fail_keeps_in_flight_until_finish_and_relisting_clears_it() -> None:
    d = make(2)
    d.arrive("a", 0.0)  # r0
    d.fail("r0")
    d.finish("r0", 0.1)
    assert [s.in_flight for s in d.slots()] == [0, 0]
    assert d.arrive("b", 0.1) == Send("b", "r1")
    assert d.arrive("c", 0.1) is None  # r0 is failed
    assert d.set_replicas(["r0", "r1"], 0.2) == [Send("c", "r0")]


def test_unlisted_replica_finishes_its_requests_then_goes() -> None:
    d = make(2)
    d.arrive("a", 0.0)  # r0
    d.set_replicas(["r1", "r2"], 0.1)
    assert [s.id for s in d.slots()] == ["r0", "r1", "r2"]
    assert d.arrive("b", 0.1) == Send("b", "r1")
    assert d.arrive("c", 0.1) == Send("c", "r2")
    assert d.arrive("d", 0.1) is None  # r0 has room by count but takes nothing new
    assert not d.idle(["r0"])
    assert not d.finish("r0", 0.2)  # "d" still waits: r1 and r2 are full
    assert d.idle(["r0"])
    assert [s.id for s in d.slots()] == ["r1", "r2"]


def test_retire_drains_and_relisting_brings_back() -> None:
    d = make(2)
    d.arrive("a", 0.0)  # r0
    d.retire(["r0", "r1"])
    assert [s.id for s in d.slots()] == ["r0"]  # r1 had nothing: gone at once
    assert d.arrive("b", 0.0) is None
    d.finish("r0", 0.1)
    assert d.slots() == []
    assert d.set_replicas(["r0"], 0.2) == [Send("b", "r0")]


def test_release_without_a_held_slot_is_loud() -> None:
    d = make(1)
    with pytest.raises(ValueError, match="holds no request"):
        d.finish("r0", 0.0)
    with pytest.raises(ValueError, match="holds no request"):
        d.finish("nope", 0.0)


def test_configure_raises_limit_and_moves_deadlines() -> None:
    d = make(1, wait=0.5)
    d.arrive("a", 0.0)
    d.arrive("b", 0.0)
    d.arrive("c", 0.0)
    assert d.configure(2, 1.0, 0.1) == [Send("b", "r0")]
    assert d.next_wakeup() == 1.0  # "c": 0.0 + 1.0
    assert d.expire(0.9) == []
    assert d.expire(1.0) == [Reject("c")]


def test_next_wakeup_covers_busy_backoff_and_clear_rejects_all() -> None:
    d = make(1, wait=1.0)
    assert d.next_wakeup() is None
    d.arrive("a", 0.0)
    d.busy("r0", "a", 0.1, arrived=0.0)
    assert d.next_wakeup() == pytest.approx(0.1 + d.busy_backoff_s)
    d.arrive("b", 0.1)
    assert d.clear() == [Reject("a"), Reject("b")]
    assert d.queued == 0
