"""Tier 1: the autoscaling decision over numbers and ``now``; no sockets, no sleeps."""

from __future__ import annotations

import pytest

from modelfleet.router.autoscale import (
    Counts,
    Decision,
    MaxWindow,
    ScaleSettings,
    ScaleState,
    decide,
    replicas_for,
)
from modelfleet.spec import AutoscaleSpec

SETTINGS = ScaleSettings(min_replicas=1, max_replicas=4, target=0.7, refresh_s=1.0, down_delay_s=60.0)


class Service:
    """Steps the decision the way the control loop does: the count follows the decision,
    and every replica asked for is Ready at once unless told otherwise."""

    def __init__(self, settings: ScaleSettings = SETTINGS, current: int = 1, limit: int = 1) -> None:
        self.settings = settings
        self.current = current
        self.limit = limit
        self.state = ScaleState()
        self.changes: list[tuple[float, int, int]] = []
        self.last: Decision | None = None

    def step(self, now: float, busy: int, ready: int | None = None, room: int | None = None) -> Decision:
        in_flight = min(busy, self.current * self.limit)
        counts = Counts(
            in_flight=in_flight,
            queued=busy - in_flight,
            ready=self.current if ready is None else ready,
            current=self.current,
            limit=self.limit,
            room=room,
        )
        decision, self.state = decide(counts, self.settings, self.state, now)
        if decision.desired != self.current:
            self.changes.append((now, self.current, decision.desired))
            self.current = decision.desired
        self.last = decision
        return decision

    def run(self, start: float, end: float, busy: int, dt: float = 0.25) -> None:
        now = start
        while now < end:
            self.step(now, busy)
            now += dt


def test_worked_example_from_the_docstring() -> None:
    svc = Service()
    svc.run(0.0, 1.0, busy=8)  # samples at 0, 0.25, 0.5, 0.75
    assert svc.changes == []
    first = svc.step(1.0, busy=8)
    assert svc.changes == [(1.0, 1, 4)]
    assert first.raw == 12 and first.utilization == pytest.approx(8.0)
    assert first.limited_by == "max" and "capped at autoscale_max_replicas=4" in first.reason
    svc.run(1.25, 5.0, busy=8)
    assert svc.changes == [(1.0, 1, 4)]  # 200 % at the max: nothing more to do
    raws = [svc.step(5.0 + i * 0.25, busy=0).raw for i in range(5)]
    assert raws == [10, 7, 5, 3, 0]  # the smoothing lets the load fade over one refresh period
    svc.run(6.25, 65.75, busy=0)
    assert svc.current == 4  # raw 5 (t=5.5) is still in the 60 s window at t=65.5
    svc.run(65.75, 80.0, busy=0)
    assert svc.changes == [(1.0, 1, 4), (65.75, 4, 3), (66.75, 3, 2), (67.75, 2, 1)]


def test_one_spike_does_not_scale() -> None:
    svc = Service()
    svc.run(0.0, 2.0, busy=0)
    svc.step(2.0, busy=8)  # one sample at 800 %
    svc.run(2.25, 10.0, busy=0)
    svc.run(10.0, 10.75, busy=8)  # 0.75 s above target: less than a refresh period
    svc.run(10.75, 12.0, busy=0)
    assert svc.changes == []


def test_scale_up_is_enough_replicas_at_once_not_one_by_one() -> None:
    svc = Service(ScaleSettings(1, 10, 0.7, 1.0, 60.0))
    svc.run(0.0, 1.25, busy=5)
    # mean busy 5 at limit 1 and 70 %: ceil(5 / 0.7) = 8 replicas in one decision
    assert svc.changes == [(1.0, 1, 8)]
    assert svc.step(1.5, busy=5).utilization == pytest.approx(5 / 8)  # all eight Ready


def test_starting_replicas_add_no_capacity_and_are_not_asked_for_twice() -> None:
    svc = Service(ScaleSettings(1, 10, 0.7, 1.0, 60.0))
    for i in range(5):
        svc.step(i * 0.25, busy=5, ready=1)
    assert svc.changes == [(1.0, 1, 8)]
    # the seven new ones are still starting: utilization is still measured on the one Ready
    d = svc.step(1.25, busy=5, ready=1)
    assert d.utilization == pytest.approx(5.0)
    assert d.desired == 8 and svc.changes == [(1.0, 1, 8)]


def test_no_scale_down_before_the_down_delay_and_one_step_per_refresh() -> None:
    svc = Service(ScaleSettings(1, 4, 0.7, 1.0, 2.0), current=4)
    svc.run(0.0, 3.0, busy=3)  # 3 busy at 70 % need ceil(3 / 0.7) = 5 > 4: hold at 4
    assert svc.changes == []
    # smoothed over 1 s, raw is still 4 at t=3.0; that leaves the 2 s window after t=5.0
    svc.run(3.0, 5.25, busy=0)
    assert svc.changes == []
    svc.run(5.25, 9.0, busy=0)
    assert svc.changes == [(5.25, 4, 3), (6.25, 3, 2), (7.25, 2, 1)]


def test_scale_down_stops_where_the_load_still_needs_replicas() -> None:
    svc = Service(ScaleSettings(1, 10, 0.7, 1.0, 5.0), current=6)
    svc.run(0.0, 30.0, busy=2)  # ceil(2 / 0.7) = 3 replicas carry it under target
    assert svc.current == 3
    d = svc.step(30.0, busy=2)
    assert d.utilization == pytest.approx(2 / 3) and d.desired == 3


def test_steady_load_just_under_target_does_not_flap() -> None:
    svc = Service(ScaleSettings(1, 10, 0.7, 1.0, 3.0), current=3)
    svc.run(0.0, 60.0, busy=2)  # 67 % on three replicas
    assert svc.changes == []


def test_min_and_max_are_kept_even_when_settings_change() -> None:
    svc = Service(ScaleSettings(2, 4, 0.7, 1.0, 60.0), current=1)
    d = svc.step(0.0, busy=0)
    assert d.desired == 2 and d.limited_by == "min" and "autoscale_min_replicas=2" in d.reason
    svc.settings = ScaleSettings(1, 2, 0.7, 1.0, 60.0)
    svc.current = 3
    d = svc.step(0.25, busy=0)
    assert d.desired == 2 and d.limited_by == "max"


def test_the_machine_room_cuts_a_rise_and_says_so() -> None:
    svc = Service(ScaleSettings(1, 10, 0.7, 1.0, 60.0))
    for i in range(4):
        svc.step(i * 0.25, busy=5, room=2)
    d = svc.step(1.0, busy=5, room=2)
    assert (d.desired, d.wanted, d.limited_by) == (3, 8, "capacity")
    d = svc.step(1.25, busy=5, room=0)
    assert (d.desired, d.wanted, d.limited_by) == (3, 8, "capacity")
    assert d.reason  # the caller records why the count stays short


def test_concurrency_per_replica_counts_in_capacity() -> None:
    svc = Service(ScaleSettings(1, 10, 0.5, 1.0, 60.0), limit=4)
    svc.run(0.0, 1.25, busy=8)  # 8 busy on 1 × 4 slots = 200 %; at 50 %: ceil(8 / 2) = 4
    assert svc.changes == [(1.0, 1, 4)]


def test_max_window_keeps_the_largest_recent_value() -> None:
    w = MaxWindow(10.0)
    assert w.max(0.0) is None and not w.covers(0.0)
    w = w.record(0.0, 5).record(1.0, 3).record(2.0, 4)
    assert w.entries == ((0.0, 5), (2.0, 4))  # 3 can never be the max again
    assert w.max(9.0) == 5 and w.max(10.0) == 5 and w.max(10.5) == 4
    assert w.max(12.5) is None
    assert w.covers(10.0) and not w.covers(9.9)


def test_settings_from_the_spec() -> None:
    spec = AutoscaleSpec(min_replicas=1, max_replicas=4, target_utilization=70, down_delay_seconds=60)
    assert ScaleSettings.from_spec(spec) == SETTINGS


def test_replica_calculator_matches_v1_docs() -> None:
    # v1's documented example: 20 rps × 10 s at 70 % and one request per replica
    assert replicas_for(20, 10, 70, 1) == 286
    assert replicas_for(7, 0.1, 70, 1) == 1  # 0.7 ÷ 0.7 is exactly 1, not 2
    assert replicas_for(100, 0.2, 50, 4) == 10
