"""Tier 1: callers' deadlines in the dispatcher (issue 18), numbers only: no sockets, no sleeps."""

from __future__ import annotations

from modelfleet.router.dispatch import Dispatch, Expire, Reject, Send


def make(n: int = 1, limit: int = 1, wait: float = 10.0) -> Dispatch:
    d = Dispatch("x", limit, wait)
    assert d.set_replicas([f"r{i}" for i in range(n)], 0.0) == ()
    return d


def test_a_waiter_expires_at_its_own_deadline_not_its_place_in_the_queue() -> None:
    d = make()
    assert d.arrive("a", 0.0) == Send("a", "r0")
    assert d.arrive("b", 0.0, 5.0) is None  # waits; deadline 5 s
    assert d.arrive("c", 0.0, 1.0) is None  # behind b, but its deadline is sooner
    assert d.arrive("d", 0.0) is None  # no caller deadline: the queue's 10 s
    assert d.next_wakeup() == 1.0
    assert d.expire(0.999) == []
    assert d.expire(1.0) == [Expire("c")]
    assert d.queued == 2
    assert d.next_wakeup() == 5.0
    # A replica frees up: b (next in line) is sent, and its deadline entry no longer counts.
    assert d.finish("r0", 2.0) == [Send("b", "r0")]
    assert d.next_wakeup() == 10.0  # d's queue deadline
    assert d.expire(6.0) == []
    assert d.expire(10.0) == [Reject("d")]


def test_a_request_past_its_deadline_on_arrival_is_expired_at_once_even_with_room() -> None:
    d = make()
    assert d.arrive("a", 3.0, 3.0) == Expire("a")
    assert d.arrive("b", 3.0, 2.0) == Expire("b")
    assert d.arrive("c", 3.0, 3.5) == Send("c", "r0")


def test_the_queue_wait_wins_when_it_is_shorter_than_the_callers_deadline() -> None:
    d = make(wait=0.5)
    d.arrive("a", 0.0)
    assert d.arrive("b", 0.0, 2.0) is None
    assert d.next_wakeup() == 0.5
    assert d.expire(0.5) == [Reject("b")]  # 503: no capacity within max_request_wait_time
    assert d.next_wakeup() is None


def test_expiry_comes_before_a_freed_slot() -> None:
    d = make()
    d.arrive("a", 0.0)
    d.arrive("b", 0.0, 1.0)
    d.arrive("c", 0.0)
    # The slot frees after b's deadline: b is expired, c gets the slot.
    assert d.finish("r0", 1.5) == [Expire("b"), Send("c", "r0")]


def test_busy_put_back_keeps_the_callers_deadline() -> None:
    d = make()
    assert d.arrive("a", 0.0, 1.0) == Send("a", "r0")
    assert d.arrive("b", 0.0) is None
    # The replica said busy at 0.2: a goes back to the head with its deadline still 1.0.
    assert not d.busy("r0", "a", 0.2, 0.0, 1.0)
    assert d.next_wakeup() == 0.2 + d.busy_backoff_s
    assert d.expire(1.0) == [Expire("a"), Send("b", "r0")]


def test_cancelled_waiters_leave_no_deadline_behind() -> None:
    d = make()
    d.arrive("a", 0.0)
    d.arrive("b", 0.0, 1.0)
    assert d.cancel("b") is True
    assert d.cancel("b") is False
    assert d.next_wakeup() is None
    assert not d.expire(2.0)
    # Many waiters with deadlines served before them: nothing left over once the queue empties.
    for i in range(100):
        d.arrive(i, 0.0, 100.0)
    for _ in range(101):
        d.finish("r0", 1.0)
    assert d.queued == 0 and d._due == []


def test_clear_rejects_waiters_with_deadlines_too() -> None:
    d = make()
    d.arrive("a", 0.0)
    d.arrive("b", 0.0, 1.0)
    assert d.clear() == [Reject("b")]
    assert not d.expire(5.0)
