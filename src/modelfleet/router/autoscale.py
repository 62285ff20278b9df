"""How many replicas a service should have: a decision over numbers and ``now``, no I/O.

Theory of operation
-------------------
The control plane samples the router about ten times per refresh period and calls
``decide(counts, settings, state, now)``; it returns a ``Decision`` and the next
``ScaleState``. Nothing here reads a clock, a socket or the workspace. The steps, in order:

1. **Busy and utilization.** ``busy = in_flight + queued``. The samples of the last
   ``refresh_s`` seconds are kept; ``mean_busy`` is their mean (the smoothing), and
   ``utilization = mean_busy / (ready × limit)``, where ``ready`` counts only replicas that
   passed their readiness probe (a starting replica adds no capacity yet).
2. **Raw desired.** ``raw = ceil(mean_busy / (limit × target))``: the fewest replicas that
   would carry the load at or under the target utilization.
3. **Up, at once.** When every sample since ``above_since`` was above target (busy >
   target × ready × limit) and that has lasted ``refresh_s``, and ``raw > current``, the
   count jumps straight to ``raw`` (not one replica at a time). A single spike resets
   ``above_since`` at the next quiet sample, so it never scales.
4. **Down, slowly.** ``raw`` also goes into a ``MaxWindow`` of ``down_delay_s``. Only when the
   largest ``raw`` of that whole window is below ``current`` (so the load would have fitted
   in fewer replicas, under target, for ``down_delay_s``) does the count drop, by one, and
   at most once per ``refresh_s``. Removing one replica then keeps utilization at or under
   target, so the count does not flap back up.
5. **Clamp** to ``[min_replicas, max_replicas]``.
6. **Room.** When the caller says only ``room`` more replicas fit on the machine, a rise is
   cut to ``current + room`` and ``limited_by`` says ``"capacity"``.

Worked example (a test asserts it): target 70 %, limit 1, refresh 1 s, down-delay 60 s,
min 1, max 4, one Ready replica; samples every 0.25 s. Eight clients keep busy = 8 from
t=0 (1 in flight, 7 queued): utilization 800 %, raw = ceil(8 / 0.7) = 12. At t=0.75 nothing
changes (above target for 0.75 s); at t=1.0 the count goes 1 → 4 (12 clamped to max). The
load stops at t=5.0: the smoothed busy falls over the next second (raw 10, 7, 5, 3, then 0
at t=6.0). The last raw of 4 or more (5, at t=5.5) leaves the 60 s window after t=65.5, so
the count goes 4 → 3 at t=65.75, 3 → 2 at t=66.75, 2 → 1 at t=67.75, and stays at 1 (the
minimum).

Scale to zero (``zero_after_s``, the service's ``scale_to_zero_after_seconds``; off when None).
Utilization is undefined at 0 replicas (nothing to divide by), so these two rules use what
the router saw instead: ``busy`` (requests in flight or held) and ``idle_s`` (seconds since a
request last arrived, from the router's stats). They come before the steps above and skip
the clamp to ``min_replicas`` (v1's >= 1 stays the floor of the rules above):

- **1 → 0**: at ``min_replicas`` or fewer replicas, nothing busy now or over the refresh
  period, and no request arrived for ``zero_after_s`` seconds: the count goes to 0.
- **0 → 1**: at 0 replicas, a request held (``busy > 0``) or one arrived since the service went
  to zero (``idle_s < zero_after_s``: it was at least that idle to get there, so a smaller
  figure means an arrival, even one the router could not hold and answered 503): the count
  goes to 1 at once, the first sample that sees it (no refresh period of waiting), within
  the machine's room. From 1 replica on, the steps above apply as usual.

Worked example (a test asserts it): ``zero_after_s`` 30, min 1, one replica, last request at
t=0. At t=29.9 nothing changes; at t=30 the count goes 1 → 0. A request arrives at t=50 and
waits in the router: the sample at t=50 (busy 1) goes 0 → 1.

A batching service (``max_batch_size`` B > 1, ``replica/batching.py``) is sampled by
``batch_counts``: the router's limit per replica is then C × B requests (C =
replica_max_concurrent_requests, the calls of ``run_batch`` at once), and busy counts each call
the Ready replicas report running (their mean over the last second) as B requests, plus every
request waiting for a batch in a replica or in the router's queue. So utilization is the share
of the calls that are busy plus the waiting load in full batches, as v1's was the share of
run() calls busy plus the queue: a replica whose one call never rests is at 100 % however small
its batches, and scaling follows load. Without a report from every Ready replica the router's
own counts stand (requests against C × B).

The replica calculator of v1's documentation, ``replicas_for``, is the same arithmetic
planned ahead: replicas = ceil(target rps × request seconds ÷ target utilization ÷
per-replica concurrency).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "Counts",
    "Decision",
    "MaxWindow",
    "ScaleSettings",
    "ScaleState",
    "batch_counts",
    "decide",
    "replicas_for",
]

# Floating-point slack for ceil(): 0.7 × 10 / 0.7 must be 10, not 11.
_EPS = 1e-9


@dataclass(frozen=True)
class Counts:
    """One sample of a service, as the router and the controller see it."""

    in_flight: int  # requests being served (draining replicas included)
    queued: int  # requests waiting in the router for a free replica
    ready: int  # replicas that passed readiness and take requests
    current: int  # replicas the service has or is starting (the count last asked for)
    limit: int  # per-replica concurrency (replica_max_concurrent_requests)
    room: int | None = None  # how many more replicas fit on the machine; None: no limit known
    idle_s: float | None = None  # seconds since a request last arrived at the router; None: unknown


@dataclass(frozen=True)
class ScaleSettings:
    """The autoscale settings in the units the decision uses (target as a fraction)."""

    min_replicas: int
    max_replicas: int
    target: float  # 0.7 for autoscale_target_utilization=70
    refresh_s: float
    down_delay_s: float
    zero_after_s: float | None = None  # scale_to_zero_after_seconds; None: never below min_replicas

    @classmethod
    def from_spec(cls, spec: object, zero_after_s: float | None = None) -> ScaleSettings:
        """From a ``spec.AutoscaleSpec`` (duck-typed, so that this module imports nothing) and
        the service's ``scale_to_zero_after_seconds``."""
        return cls(
            min_replicas=spec.min_replicas,  # type: ignore[attr-defined]
            max_replicas=spec.max_replicas,  # type: ignore[attr-defined]
            target=spec.target_utilization / 100.0,  # type: ignore[attr-defined]
            refresh_s=float(spec.refresh_seconds),  # type: ignore[attr-defined]
            down_delay_s=float(spec.down_delay_seconds),  # type: ignore[attr-defined]
            zero_after_s=None if zero_after_s is None else float(zero_after_s),
        )


@dataclass(frozen=True)
class MaxWindow:
    """The largest value recorded in the last ``length`` seconds.

    Entries are kept in time order with values strictly decreasing (a new value evicts every
    older one not larger than it), so ``max`` is the first entry and the tuple stays short.
    An entry recorded at ``t`` counts while ``now - t <= length``. ``start`` is when the
    first value was recorded: the window has seen a whole ``length`` once ``now - start >=
    length``.
    """

    length: float
    entries: tuple[tuple[float, int], ...] = ()
    start: float | None = None

    def record(self, now: float, value: int) -> MaxWindow:
        kept = [(t, v) for t, v in self.entries if now - t <= self.length and v > value]
        kept.append((now, value))
        return MaxWindow(self.length, tuple(kept), now if self.start is None else self.start)

    def max(self, now: float) -> int | None:
        for t, v in self.entries:
            if now - t <= self.length:
                return v
        return None

    def covers(self, now: float) -> bool:
        return self.start is not None and now - self.start >= self.length


@dataclass(frozen=True)
class ScaleState:
    """What ``decide`` remembers between samples. Start with ``ScaleState()``."""

    samples: tuple[tuple[float, int], ...] = ()  # (time, busy) of the last refresh period
    above_since: float | None = None  # start of the current run of above-target samples
    down: MaxWindow | None = None  # raw desired counts over the down-delay
    last_change: float | None = None  # when the count last changed (paces down steps)


@dataclass(frozen=True)
class Decision:
    desired: int  # the replica count to have now
    wanted: int  # what the load asks for before the machine's room is applied
    utilization: float | None  # smoothed busy ÷ (ready × limit); None with no ready replica
    raw: int  # ceil(mean busy ÷ (limit × target)), before holding and clamping
    reason: str  # why ``desired`` differs from ``current`` (empty when it does not)
    limited_by: str | None = None  # "max", "min" or "capacity" when one of them cut the count
    mean_busy: float = 0.0  # the smoothed in-flight + queued


def batch_counts(counts: Counts, reports: Sequence[Mapping[str, Any]], batch: int) -> Counts:
    """A batching service's sample (module docstring): ``reports`` are the Ready replicas'
    ``batch_calls_busy_mean`` and ``batch_waiting``; ``counts.limit`` is already C × ``batch``."""
    if batch <= 1 or not reports or len(reports) < counts.ready:
        return counts
    busy = sum(float(r.get("batch_calls_busy_mean", 0.0)) for r in reports)
    waiting = sum(int(r.get("batch_waiting", 0)) for r in reports)
    return replace(counts, in_flight=round(busy * batch), queued=waiting + counts.queued)


def decide(counts: Counts, settings: ScaleSettings, state: ScaleState, now: float) -> tuple[Decision, ScaleState]:
    """One autoscaling step (see the module docstring for the rules and a worked example)."""
    s, c = settings, counts
    limit = max(c.limit, 1)
    # 1. busy and utilization, smoothed over the refresh period
    busy = c.in_flight + c.queued
    samples = tuple((t, b) for t, b in state.samples if now - t <= s.refresh_s) + ((now, busy),)
    mean_busy = sum(b for _, b in samples) / len(samples)
    utilization = mean_busy / (c.ready * limit) if c.ready else None
    above = busy > s.target * c.ready * limit
    above_since = (state.above_since if state.above_since is not None else now) if above else None
    # 2. raw desired
    raw = max(0, math.ceil(mean_busy / (limit * s.target) - _EPS))
    down = (state.down or MaxWindow(s.down_delay_s)).record(now, raw)
    if down.length != s.down_delay_s:  # settings changed: keep the history, apply the new length
        down = MaxWindow(s.down_delay_s, down.entries, down.start)

    desired, reason, limited_by = c.current, "", None
    util_text = "n/a (no ready replica)" if utilization is None else f"{utilization:.0%}"
    zero = _to_or_from_zero(c, s, busy, samples)
    if zero is not None:  # scale to zero's rules (module docstring): no clamp to the minimum
        desired, reason = zero
    # 3. up at once, after about one refresh period above target
    elif above_since is not None and now - above_since >= s.refresh_s and raw > c.current:
        desired = raw
        reason = (
            f"utilization {util_text} above target {s.target:.0%} for {now - above_since:.1f} s: "
            f"{mean_busy:.1f} requests busy need {raw} replicas"
        )
    # 4. down by one, after the whole down-delay asked for fewer
    else:
        held = down.max(now)
        paced = state.last_change is None or now - state.last_change >= s.refresh_s
        if held is not None and held < c.current and down.covers(now) and paced:
            desired = c.current - 1
            reason = (
                f"utilization {util_text} under target {s.target:.0%} for {s.down_delay_s:g} s "
                f"(at most {held} replicas needed): one step down"
            )
    # 5. clamp
    if desired > s.max_replicas and zero is None:
        desired, limited_by = s.max_replicas, "max"
        reason += f"; capped at autoscale_max_replicas={s.max_replicas}" if reason else ""
    if desired < s.min_replicas and zero is None:
        desired, limited_by = s.min_replicas, "min"
        reason = reason or f"below autoscale_min_replicas={s.min_replicas}"
    if c.current > s.max_replicas and not reason:
        reason = f"above autoscale_max_replicas={s.max_replicas}"
    wanted = desired
    # 6. the machine's room
    if c.room is not None and desired > c.current + max(c.room, 0):
        desired, limited_by = c.current + max(c.room, 0), "capacity"
    last_change = now if desired != c.current else state.last_change
    decision = Decision(
        desired=desired,
        wanted=wanted,
        utilization=utilization,
        raw=raw,
        reason=reason if wanted != c.current else "",
        limited_by=limited_by,
        mean_busy=mean_busy,
    )
    return decision, ScaleState(samples, above_since, down, last_change)


def _to_or_from_zero(
    c: Counts, s: ScaleSettings, busy: int, samples: tuple[tuple[float, int], ...]
) -> tuple[int, str] | None:
    """Scale to zero's two rules: (desired, reason) when one applies, else None."""
    zero, idle = s.zero_after_s, c.idle_s
    if zero is None:
        return None
    if c.current == 0:
        if busy > 0:
            return 1, f"{busy} request(s) held while scaled to zero: starting one replica"
        if idle is not None and idle < zero:
            return 1, f"a request arrived {idle:.1f} s ago while scaled to zero: starting one replica"
        return 0, ""
    quiet = busy == 0 and all(b == 0 for _, b in samples)
    if c.current <= s.min_replicas and quiet and idle is not None and idle >= zero:
        return 0, f"no request for {idle:.0f} s (scale_to_zero_after_seconds={zero:g}): scaling to zero"
    return None


def replicas_for(
    target_rps: float, request_seconds: float, target_utilization: float = 70, max_concurrent: int = 1
) -> int:
    """v1's replica calculator: ceil(target rps × request seconds ÷ target utilization ÷
    per-replica concurrency), with ``target_utilization`` in percent. Values are checked by
    the caller (the SDK), which names the fields in its errors.

    v1's example: 20 requests/s of 10 s each at 70 % and one request per replica need
    ceil(20 × 10 ÷ 0.7 ÷ 1) = ceil(285.7) = 286 replicas.
    """
    concurrent = target_rps * request_seconds / (target_utilization / 100.0)
    return max(1, math.ceil(concurrent / max_concurrent - _EPS))
