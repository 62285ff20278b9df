"""Tier 1: the dispatcher while a service has no replica at all (scale to zero, issue 17)."""

from __future__ import annotations

from modelfleet.router.dispatch import Dispatch, Reject, Send


def test_with_no_replica_a_request_waits_the_cold_start_wait_too() -> None:
    d = Dispatch("x", 1, 0.5)
    d.configure(1, 0.5, 0.0, cold_wait_s=30.0)
    assert d.cold
    assert d.arrive("a", 1.0) is None
    assert d.last_arrival == 1.0
    assert d.next_wakeup() == 31.5  # max_request_wait_time + cold_start_wait_ms
    # The replica comes: every held request goes to it, in order.
    assert d.arrive("b", 2.0) is None
    assert d.set_replicas(["r0"], 5.0) == [Send("a", "r0")]
    assert not d.cold
    assert d.finish("r0", 5.1) == [Send("b", "r0")]
    # With a replica listed (busy or not), a newcomer waits the usual 0.5 s.
    assert d.arrive("c", 6.0) is None
    assert d.next_wakeup() == 6.5
    assert d.expire(6.5) == [Reject("c")]


def test_what_cannot_wait_is_rejected() -> None:
    d = Dispatch("x", 1, 0.0)
    d.configure(1, 0.0, 0.0, cold_wait_s=0.0)
    assert d.arrive("a", 1.0) == Reject("a")
    assert d.last_arrival == 1.0  # it still counts as an arrival: the autoscaler starts one
    d.configure(1, 0.0, 0.0, cold_wait_s=2.0)
    assert d.arrive("b", 3.0) is None
    assert d.expire(5.0) == [Reject("b")]  # no replica within the 2 s: 503 with Retry-After


def test_cold_wait_is_off_unless_configured() -> None:
    d = Dispatch("x", 1, 0.5)
    assert d.arrive("a", 0.0) is None
    assert d.next_wakeup() == 0.5


def test_a_held_request_put_back_by_a_busy_replica_keeps_its_cold_wait() -> None:
    d = Dispatch("x", 1, 0.5)
    d.configure(1, 0.5, 0.0, cold_wait_s=30.0)
    assert d.arrive("a", 0.0) is None
    assert d.arrive("b", 0.0) is None
    assert d.set_replicas(["r0"], 3.0) == [Send("a", "r0")]
    assert d.finish("r0", 3.1) == [Send("b", "r0")]
    # the replica said busy at 3.2 (its previous request not quite over): b waits on, not 503
    assert not d.busy("r0", "b", 3.2, 0.0)
    assert d.next_wakeup() == 3.2 + d.busy_backoff_s
    assert d.expire(3.3) == [Send("b", "r0")]
    # one that arrived once the replica was there has the usual wait
    assert d.arrive("c", 4.0) is None
    assert d.finish("r0", 4.1) == [Send("c", "r0")]
    assert d.busy("r0", "c", 4.2, 4.0) == []
    assert d.expire(4.5) == [Reject("c")]
