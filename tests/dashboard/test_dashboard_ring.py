"""The dashboard's ring buffer and last-minute figures (control/dashboard/ring.py): plain
numbers in, numbers out; no sockets, no sleeps."""

from __future__ import annotations

import tracemalloc

import pytest

from modelfleet.control.dashboard.ring import History, percentile, summarize
from modelfleet.telemetry.counters import LATENCY_BUCKETS

BOUNDS = LATENCY_BUCKETS
NO_LOAD = {"in_flight": 0, "queued": 0, "ready": 1, "desired": 1, "limit": 1}


def buckets(**at: int) -> list[int]:
    """Bucket counts with ``b<i>=n`` set."""
    out = [0] * (len(BOUNDS) + 1)
    for key, n in at.items():
        out[int(key[1:])] = n
    return out


def test_the_worked_example_of_the_module_docstring() -> None:
    counts = buckets(b0=60, b1=40)
    assert percentile(counts, BOUNDS, 0.5) == pytest.approx(0.001 * 50 / 60)
    assert percentile(counts, BOUNDS, 0.99) == pytest.approx(0.001 + 0.0015 * 39 / 40)


def test_percentile_of_nothing_is_none_and_of_the_inf_bucket_is_the_last_bound() -> None:
    assert percentile(buckets(), BOUNDS, 0.5) is None
    assert percentile(buckets(**{f"b{len(BOUNDS)}": 3}), BOUNDS, 0.99) == BOUNDS[-1]
    with pytest.raises(ValueError, match="q must be"):
        percentile(buckets(b0=1), BOUNDS, 0.0)


def test_samples_hold_differences_by_status_class_not_totals() -> None:
    h = History()
    h.record(100.0, {200: 10, 401: 1}, buckets(b0=10), **NO_LOAD)
    h.record(101.0, {200: 15, 401: 3, 500: 1, 503: 2, 504: 1}, buckets(b0=14, b2=1), **NO_LOAD)
    s = h.last
    assert s is not None
    assert (s.ok, s.client_errors, s.server_errors, s.unavailable) == (5, 2, 2, 2)
    assert s.buckets[0] == 4 and s.buckets[2] == 1 and sum(s.buckets) == 5
    assert s.answers == 11


def test_counters_that_went_down_restarted_at_zero() -> None:
    h = History()
    h.record(100.0, {200: 50}, buckets(b0=50), **NO_LOAD)
    h.record(101.0, {200: 3}, buckets(b0=3), **NO_LOAD)  # the service was re-created
    s = h.last
    assert s is not None and s.ok == 3 and s.buckets[0] == 3


def test_the_last_minute_never_includes_older_requests() -> None:
    h = History()
    h.record(0.0, {}, buckets(), **NO_LOAD)
    h.record(1.0, {200: 1000}, buckets(b9=1000), **NO_LOAD)  # a slow burst long ago (0.5-1 s)
    for t in range(2, 200):  # then 10 fast answers a second
        total = 1000 + 10 * (t - 1)
        h.record(float(t), {200: total}, buckets(b9=1000, b0=10 * (t - 1)), **NO_LOAD)
    window = h.since(199.0 - 60.0)
    assert len(window) == 60
    s = summarize(window, BOUNDS, 60.0)
    assert s.requests_per_s == pytest.approx(10.0)
    assert s.p99_s is not None and s.p99_s <= 0.001  # the old slow burst is out of the window
    assert s.error_rate == 0.0


def test_rate_divides_by_the_seconds_sampled_so_far_and_errors_are_5xx() -> None:
    h = History()
    h.record(0.0, {}, buckets(), **NO_LOAD)
    h.record(1.0, {200: 6, 503: 2}, buckets(b0=8), **NO_LOAD)
    s = summarize(h.since(-60.0), BOUNDS, 60.0)  # two samples: 8 answers over 2 s
    assert s.requests_per_s == pytest.approx(4.0)
    assert s.error_rate == pytest.approx(0.25)
    empty = summarize([], BOUNDS, 60.0)
    assert empty.requests_per_s == 0.0 and empty.error_rate is None and empty.p50_s is None


def test_utilization_is_busy_over_capacity() -> None:
    h = History()
    h.record(0.0, {}, buckets(), in_flight=2, queued=1, ready=2, desired=3, limit=2)
    s = h.last
    assert s is not None and s.utilization == pytest.approx(0.75)
    h.record(1.0, {}, buckets(), in_flight=0, queued=2, ready=0, desired=1, limit=1)
    none_ready = h.last
    assert none_ready is not None and none_ready.utilization == 2.0


def test_the_ring_keeps_an_hour_at_most() -> None:
    h = History(capacity=3600)
    for t in range(4000):
        h.record(float(t), {200: t}, buckets(b0=t), **NO_LOAD)
    assert len(h.samples) == 3600
    assert h.samples[0].time == 400.0


def test_idle_seconds_share_one_bucket_tuple() -> None:
    h = History()
    for t in range(3):
        h.record(float(t), {200: 5}, buckets(b0=5), **NO_LOAD)
    first, second, third = h.samples
    assert sum(first.buckets) == 5
    assert second.buckets is third.buckets and not any(second.buckets)


def idle_hour(h: History, start: float, seconds: int, **gauges: int) -> None:
    """``seconds`` of no answers (the counters stay at {200: 5}), a little over 1 s apart."""
    for i in range(seconds):
        h.record(start + i * 1.001, {200: 5}, buckets(b0=5), **{**NO_LOAD, **gauges})


def test_quiet_seconds_read_back_one_by_one_with_their_own_times_and_gauges() -> None:
    h = History()
    h.record(0.0, {}, buckets(), **NO_LOAD)
    h.record(1.0, {200: 5}, buckets(b0=5), **NO_LOAD)  # 5 answers
    idle_hour(h, 2.0, 10)  # 10 quiet seconds, one run
    idle_hour(h, 20.0, 3, in_flight=1)  # a request in flight, no answer yet: another run
    assert len(h) == 15
    times = [s.time for s in h.samples]
    assert times[:2] == [0.0, 1.0]
    assert times[2:12] == pytest.approx([2.0 + i * 1.001 for i in range(10)])
    assert [s.in_flight for s in h.samples] == [0, 0] + [0] * 10 + [1] * 3
    assert [s.answers for s in h.samples] == [0, 5] + [0] * 13
    last = h.last
    assert last is not None and last.time == pytest.approx(22.002) and last.in_flight == 1
    # a window that starts inside the first quiet run
    window = h.since(2.0 + 6 * 1.001 + 0.0005)
    assert [round(s.time, 3) for s in window] == [round(2.0 + i * 1.001, 3) for i in range(7, 10)] + [
        20.0,
        21.001,
        22.002,
    ]
    s = summarize(h.since(-1.0), BOUNDS, 60.0)
    assert s.requests_per_s == pytest.approx(5 / 15)


def test_an_idle_hour_costs_a_few_bytes_a_second_and_the_ring_still_keeps_an_hour() -> None:
    h = History(capacity=3600)
    h.record(0.0, {200: 5}, buckets(b0=5), **NO_LOAD)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        idle_hour(h, 1.0, 3600)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024  # one Sample a second would be about 460 KB
    assert len(h) == 3600
    assert h.samples[0].time == pytest.approx(1.0)  # the busy second has left the ring
    idle_hour(h, 4000.0, 1000)  # and the run itself now loses its oldest seconds
    assert len(h) == 3600 and len(h.samples) == 3600
    assert h.samples[0].time == pytest.approx(1.0 + 1000 * 1.001)
