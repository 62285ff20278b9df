"""The dashboard's memory: one sample a second per service, an hour of them, and the
"last minute" figures computed from them.

The router only keeps cumulative counters (``telemetry/counters.py``: answers by status, a
latency histogram as bucket counts). Once a second the dashboard hands each service's
counters to its ``History``, which stores the *difference* from the previous second as a
``Sample`` in a ring of fixed size (an hour). Every figure the page shows is then a sum over
recent samples, never a percentile since start. With a thousand services deployed most seconds
of most services are quiet (no answer, the same gauges as the second before): those are kept as
one ``Sample`` and a time per second, read back one by one, so an idle service's hour costs
about 31 KB and 0.7 µs a second instead of 470 KB and 2.4 µs (the README's Dashboard section has the measurement).

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

from array import array
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

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


class _Quiet:
    """Seconds in a row with no answer and the same gauges: the first one's ``Sample`` and every
    such second's time, 8 bytes each (an idle service's hour: about 31 KB instead of 470 KB)."""

    __slots__ = ("sample", "times", "start")

    def __init__(self, sample: Sample) -> None:
        self.sample = sample
        self.times = array("d", (sample.time,))
        self.start = 0  # times before it have left the ring

    def __len__(self) -> int:
        return len(self.times) - self.start

    def at(self, i: int) -> Sample:
        """Its ``i``-th second still in the ring (0: the oldest)."""
        t = self.times[self.start + i]
        return self.sample if t == self.sample.time else replace(self.sample, time=t)

    def drop_oldest(self) -> None:
        self.start += 1
        if self.start > 256 and self.start * 2 > len(self.times):
            del self.times[: self.start]  # now and then, not at every second
            self.start = 0


class History:
    """One service's ring of samples, at most ``capacity`` seconds of them; ``record`` is called
    once a second by the sampler. Quiet seconds that repeat the one before (no answers, same
    gauges) are kept as one ``_Quiet`` entry: with many services deployed most are idle."""

    def __init__(self, capacity: int = HOUR) -> None:
        self.capacity = capacity
        self._entries: deque[Sample | _Quiet] = deque()
        self._count = 0  # seconds held, quiet ones counted one by one
        self._codes: dict[int, int] = {}
        self._buckets: list[int] = []

    def __repr__(self) -> str:
        return f"<History samples={self._count}>"

    def __len__(self) -> int:
        return self._count

    @property
    def samples(self) -> list[Sample]:
        """Every second held, oldest first (the page asks ``since`` for a window instead)."""
        out: list[Sample] = []
        for entry in self._entries:
            if isinstance(entry, _Quiet):
                out.extend(entry.at(i) for i in range(len(entry)))
            else:
                out.append(entry)
        return out

    @property
    def last(self) -> Sample | None:
        """The latest second, or None before the first."""
        if not self._entries:
            return None
        entry = self._entries[-1]
        return entry.at(len(entry) - 1) if isinstance(entry, _Quiet) else entry

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
    ) -> None:
        if codes == self._codes and len(buckets) == len(self._buckets) and buckets == self._buckets:
            # No answer this second. (A service re-created whose new counters happen to equal
            # the old ones exactly would read as idle for that one second.)
            self._record_quiet(now, (in_flight, queued, ready, desired, limit), len(buckets))
            return
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
        self._append(sample)

    def _record_quiet(self, now: float, gauges: tuple[int, int, int, int, int], size: int) -> None:
        """A second with no answers (``gauges``: in_flight, queued, ready, desired, limit): it
        extends the quiet run before it when the gauges are the same."""
        entries = self._entries
        if entries:
            entry = entries[-1]
            before = entry.sample if isinstance(entry, _Quiet) else entry
            if (
                before.answers == 0
                and len(before.buckets) == size
                and (before.in_flight, before.queued, before.ready, before.desired, before.limit) == gauges
            ):
                if not isinstance(entry, _Quiet):
                    entry = entries[-1] = _Quiet(entry)
                entry.times.append(now)
                self._count += 1
                self._trim()
                return
        self._append(Sample(now, 0, 0, 0, 0, _idle(size), *gauges))

    def _append(self, sample: Sample) -> None:
        self._entries.append(sample)
        self._count += 1
        self._trim()

    def _trim(self) -> None:
        entries = self._entries
        while self._count > self.capacity:
            oldest = entries[0]
            if isinstance(oldest, _Quiet) and len(oldest) > 1:
                oldest.drop_oldest()
            else:
                entries.popleft()
            self._count -= 1

    def since(self, start: float) -> list[Sample]:
        """Samples taken after ``start`` (epoch seconds), oldest first."""
        out: list[Sample] = []
        for entry in reversed(self._entries):
            if isinstance(entry, _Quiet):
                for i in range(len(entry) - 1, -1, -1):
                    if entry.times[entry.start + i] <= start:
                        out.reverse()
                        return out
                    out.append(entry.at(i))
            elif entry.time <= start:
                break
            else:
                out.append(entry)
        out.reverse()
        return out


_IDLE: dict[int, tuple[int, ...]] = {}


def _interned(buckets: tuple[int, ...]) -> tuple[int, ...]:
    """An idle second's all-zero buckets, shared: an idle service's hour costs a pointer per
    sample for them instead of a tuple (memory: about 0.4 MB an hour idle, 1 MB busy)."""
    if any(buckets):
        return buckets
    return _IDLE.setdefault(len(buckets), buckets)


def _idle(size: int) -> tuple[int, ...]:
    """The shared all-zero buckets of ``size`` slots."""
    zeros = _IDLE.get(size)
    return zeros if zeros is not None else _IDLE.setdefault(size, (0,) * size)


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
