"""The dashboard's memory: one sample a second per service, an hour of them, and the
"last minute" figures computed from them.

The router only keeps cumulative counters (``telemetry/counters.py``: answers by status, a
latency histogram as bucket counts). Once a second the dashboard hands each service's
counters to its ``History``, which stores the *difference* from the previous second as a
``Sample`` in a ring of fixed size. Every figure the page shows is then a sum over recent
samples, never a percentile since start.

Rules:

- A counter lower than last time means the service was re-created (its counters restarted
  at 0): the new value is the whole difference.
- Percentiles come from summed bucket differences, interpolated linearly inside the bucket
  that holds the rank; the +Inf bucket answers with the last finite bound (a floor).
- Error rate: 5xx answers (503 and 504 included) over all answers.

Worked example: buckets (0.001, 0.0025, 0.005, ...). In one minute 100 requests were timed,
60 in the 1 ms bucket and 40 in the 2.5 ms one. p50 is rank 50, inside the first bucket
(0 to 1 ms) at 50/60 of it: 0.833 ms. p99 is rank 99, the 39th of 40 in the second bucket
(1 to 2.5 ms): 1 + 1.5 x 39/40 = 2.4625 ms.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["HOUR", "History", "Sample", "Summary", "percentile", "summarize"]

HOUR = 3600  # samples kept: one a second for an hour


@dataclass(frozen=True, slots=True)
class Sample:
    """One second of one service: answers by class, latency bucket counts, gauges at the end."""

    time: float  # epoch seconds when taken
    ok: int  # 1xx-3xx answers
    client_errors: int  # 4xx (401s included)
    server_errors: int  # 5xx other than 503
    unavailable: int  # 503: no capacity within the wait
    buckets: tuple[int, ...]  # latency histogram differences, one per bound plus +Inf
    in_flight: int
    queued: int
    ready: int  # replicas taking requests
    desired: int  # replicas the service should have
    limit: int  # replica_max_concurrent_requests

    @property
    def answers(self) -> int:
        return self.ok + self.client_errors + self.server_errors + self.unavailable

    @property
    def utilization(self) -> float:
        capacity = self.ready * self.limit
        busy = self.in_flight + self.queued
        return busy / capacity if capacity else float(busy)


@dataclass(frozen=True, slots=True)
class Summary:
    """Figures over a window of samples."""

    seconds: float  # the window actually covered
    requests_per_s: float
    error_rate: float | None  # None: no answers
    p50_s: float | None
    p99_s: float | None
    utilization: float  # mean over the window


class History:
    """One service's ring of samples; ``record`` is called once a second by the sampler."""

    def __init__(self, capacity: int = HOUR) -> None:
        self.samples: deque[Sample] = deque(maxlen=capacity)
        self._codes: dict[int, int] = {}
        self._buckets: list[int] = []

    def __repr__(self) -> str:
        return f"<History samples={len(self.samples)}>"

    def record(
        self,
        now: float,
        codes: Mapping[int, int],
        buckets: Sequence[int],
        *,
        in_flight: int,
        queued: int,
        ready: int,
        desired: int,
        limit: int,
    ) -> Sample:
        ok = client = server = unavailable = 0
        for code, total in codes.items():
            n = _delta(total, self._codes.get(code, 0))
            if code == 503:
                unavailable += n
            elif code >= 500:
                server += n
            elif code >= 400:
                client += n
            else:
                ok += n
        last = self._buckets if len(self._buckets) == len(buckets) else [0] * len(buckets)
        sample = Sample(
            time=now,
            ok=ok,
            client_errors=client,
            server_errors=server,
            unavailable=unavailable,
            buckets=_interned(tuple(_delta(b, a) for b, a in zip(buckets, last, strict=True))),
            in_flight=in_flight,
            queued=queued,
            ready=ready,
            desired=desired,
            limit=limit,
        )
        self._codes = dict(codes)
        self._buckets = list(buckets)
        self.samples.append(sample)
        return sample

    def since(self, start: float) -> list[Sample]:
        """Samples taken after ``start`` (epoch seconds), oldest first."""
        out = []
        for s in reversed(self.samples):
            if s.time <= start:
                break
            out.append(s)
        out.reverse()
        return out


_IDLE: dict[int, tuple[int, ...]] = {}


def _interned(buckets: tuple[int, ...]) -> tuple[int, ...]:
    """An idle second's all-zero buckets, shared: an idle service's hour costs a pointer per
    sample for them instead of a tuple (memory: about 0.4 MB an hour idle, 1 MB busy)."""
    if any(buckets):
        return buckets
    return _IDLE.setdefault(len(buckets), buckets)


def _delta(now: int, before: int) -> int:
    return now - before if now >= before else now  # lower: the counters restarted at 0


def summarize(samples: Sequence[Sample], bounds: Sequence[float], seconds: float) -> Summary:
    """Figures over ``samples`` (the last ``seconds`` of them, the caller picks them). The
    rate divides by the window, or by fewer seconds when fewer samples exist yet."""
    covered = float(min(seconds, len(samples))) or 1.0
    answers = sum(s.answers for s in samples)
    errors = sum(s.server_errors + s.unavailable for s in samples)
    buckets = [sum(col) for col in zip(*(s.buckets for s in samples), strict=True)] if samples else []
    return Summary(
        seconds=covered,
        requests_per_s=answers / covered,
        error_rate=errors / answers if answers else None,
        p50_s=percentile(buckets, bounds, 0.50),
        p99_s=percentile(buckets, bounds, 0.99),
        utilization=sum(s.utilization for s in samples) / len(samples) if samples else 0.0,
    )


def percentile(buckets: Iterable[int], bounds: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0 < q <= 1) of a histogram given as per-bucket counts (one per
    bound, then +Inf); None when it is empty. See the module's worked example."""
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1] (got {q})")
    counts = list(buckets)
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i >= len(bounds):
                return float(bounds[-1])  # +Inf bucket: the last finite bound is all we know
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * (rank - seen) / n
        seen += n
    return float(bounds[-1])
