"""Tier 1: scale to zero's two rules in the autoscaling decision (issue 17): numbers and ``now``."""

from __future__ import annotations

import dataclasses

from modelfleet.router.autoscale import Counts, ScaleSettings, ScaleState, decide

ZERO = ScaleSettings(min_replicas=1, max_replicas=4, target=0.7, refresh_s=1.0, down_delay_s=60.0, zero_after_s=30.0)


def counts(
    current: int, *, busy: int = 0, idle: float | None, ready: int | None = None, room: int | None = None
) -> Counts:
    return Counts(
        in_flight=min(busy, current),
        queued=busy - min(busy, current),
        ready=current if ready is None else ready,
        current=current,
        limit=1,
        room=room,
        idle_s=idle,
    )


def test_the_worked_example_from_the_docstring() -> None:
    state = ScaleState()
    current, changes = 1, []
    t = 0.0
    while t <= 60.0:
        busy = 1 if t >= 50.0 and current == 0 else 0  # a request held from t=50 until a replica serves it
        idle = t if t < 50.0 else t - 50.0  # last arrival at 0, then at 50
        d, state = decide(counts(current, busy=busy, idle=idle), ZERO, state, t)
        if d.desired != current:
            changes.append((round(t, 2), current, d.desired, d.reason))
            current = d.desired
        t = round(t + 0.05, 2)
    assert [c[:3] for c in changes] == [(30.0, 1, 0), (50.0, 0, 1)]
    assert "no request for 30 s (scale_to_zero_after_seconds=30)" in changes[0][3]
    assert "held while scaled to zero" in changes[1][3]


def test_off_by_default_the_minimum_holds() -> None:
    off = dataclasses.replace(ZERO, zero_after_s=None)
    d, _ = decide(counts(1, idle=10_000.0), off, ScaleState(), 10_000.0)
    assert d.desired == 1
    d, _ = decide(counts(0, idle=10_000.0), off, ScaleState(), 10_000.0)
    assert d.desired == 1 and d.limited_by == "min"  # never at zero without the setting


def test_not_to_zero_while_anything_is_busy_or_above_the_minimum() -> None:
    # a request in flight, though none arrived for long (a slow one)
    d, _ = decide(counts(1, busy=1, idle=40.0), ZERO, ScaleState(), 100.0)
    assert d.desired == 1
    # busy a moment ago, within the refresh period
    _, state = decide(counts(1, busy=1, idle=40.0), ZERO, ScaleState(), 100.0)
    d, _ = decide(counts(1, idle=40.0), ZERO, state, 100.5)
    assert d.desired == 1
    # above the minimum: the usual one-step-down rule first
    two = dataclasses.replace(ZERO, min_replicas=2)
    d, _ = decide(counts(3, idle=40.0), two, ScaleState(), 100.0)
    assert d.desired == 3
    d, _ = decide(counts(2, idle=40.0), two, ScaleState(), 100.0)
    assert d.desired == 0
    # unknown idle time (a router that does not report it): never to zero
    d, _ = decide(counts(1, idle=None), ZERO, ScaleState(), 100.0)
    assert d.desired == 1


def test_from_zero_on_an_arrival_even_one_not_held() -> None:
    # nothing held (max_request_wait_time + cold_start_wait_ms was 0: answered 503), but it came
    d, _ = decide(counts(0, idle=0.2), ZERO, ScaleState(), 500.0)
    assert d.desired == 1 and "arrived 0.2 s ago" in d.reason
    assert d.utilization is None  # undefined at zero
    # nothing came: stays at zero, with no reason to log
    d, _ = decide(counts(0, idle=31.0), ZERO, ScaleState(), 500.0)
    assert d.desired == 0 and d.reason == ""


def test_from_zero_one_replica_at_once_then_the_usual_rules() -> None:
    d, state = decide(counts(0, busy=20, idle=0.0), ZERO, ScaleState(), 0.0)
    assert d.desired == 1  # one replica, at the first sample: no refresh period to wait
    # Ready one second later with the 20 still there: up at once as usual
    for t in (0.25, 0.5, 0.75, 1.0, 1.25):
        d, state = decide(counts(1, busy=20, idle=0.0), ZERO, state, t)
    assert d.desired == 4 and d.limited_by == "max"


def test_from_zero_within_the_machines_room() -> None:
    d, _ = decide(counts(0, busy=1, idle=0.0, room=0), ZERO, ScaleState(), 0.0)
    assert d.desired == 0 and d.wanted == 1 and d.limited_by == "capacity"
