"""The router's per-service request counters: plain ints on the hot path, read on scrape.

Why not prometheus-client objects per request: a labelled ``Counter.inc()`` takes a lock and
a dict lookup of the label tuple (about 1 µs each, two or three per request), while these
are one dict update and one bisect into a list of ints (about 0.3 µs together), and nothing
is allocated per request. ``telemetry/metrics.py`` turns them into Prometheus families when
``/metrics`` is scraped, on the same thread (the event loop), so no lock is needed.

Worked example: with the default buckets, ``observe(200, 0.004)`` adds 1 to ``codes[200]``,
to ``buckets[2]`` (the 0.005 s bucket: the first bound >= 0.004) and 0.004 to ``seconds``;
the exported histogram is cumulative, so the ``le="0.005"`` series and every later bound
count it, and ``le="+Inf"`` equals ``count``.
"""

from __future__ import annotations

from bisect import bisect_left

__all__ = ["LATENCY_BUCKETS", "MirrorCounters", "ServiceMetrics", "histogram", "quantile_ms"]

# Seconds. Prometheus' default buckets, with 1 ms and 2.5 ms added: local scoring is fast.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class ServiceMetrics:
    """What the router counts for one service (lives as long as its ``ServiceState``)."""

    __slots__ = ("codes", "buckets", "count", "seconds", "auth_missing", "auth_invalid", "dropped", "mirror")

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}  # answers by HTTP status
        # Latency of requests given to the dispatcher (queue + replica + streaming), one slot
        # per bound of LATENCY_BUCKETS plus +Inf; not cumulative (the exporter sums).
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.count = 0
        self.seconds = 0.0
        self.auth_missing = 0  # 401: no Authorization header
        self.auth_invalid = 0  # 401: a key or token that does not verify
        # Requests the router dropped before sending them to a replica, by reason:
        # "deadline" (the caller's deadline passed while queued: 504), "client_gone" (the
        # client disconnected while queued: no answer).
        self.dropped: dict[str, int] = {}
        # An endpoint version that is a mirror (router/mirror.py): its copies' outcomes.
        self.mirror: MirrorCounters | None = None

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def auth_failed(self, missing: bool) -> None:
        if missing:
            self.auth_missing += 1
        else:
            self.auth_invalid += 1

    def answered(self, status: int) -> None:
        """An answer the router did not time (a precomputed one: 401, 405, 413, ...)."""
        codes = self.codes
        codes[status] = codes.get(status, 0) + 1

    def observe(self, status: int, seconds: float) -> None:
        """An answer to a request that went through the dispatcher, ``seconds`` after it arrived."""
        codes = self.codes
        codes[status] = codes.get(status, 0) + 1
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.count += 1
        self.seconds += seconds

    def __repr__(self) -> str:
        return f"<ServiceMetrics codes={dict(sorted(self.codes.items()))} timed={self.count}>"


class MirrorCounters:
    """A mirror version's copies (``router/mirror.py``): ``sent`` had a free slot at once,
    ``dropped`` had none (or no complete body to copy) and were never sent; of those sent, each
    ends ``agreed`` (same status and same body hash as the primary's answer) or ``disagreed``;
    ``errors`` counts the sent ones that got a 5xx, no answer or timed out (also disagreed);
    the latency is the copy's own, send to last byte."""

    __slots__ = ("sent", "dropped", "agreed", "disagreed", "errors", "buckets", "count", "seconds")

    def __init__(self) -> None:
        self.sent = 0
        self.dropped = 0
        self.agreed = 0
        self.disagreed = 0
        self.errors = 0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.count = 0
        self.seconds = 0.0

    def record(self, status: int, agreed: bool, seconds: float) -> None:
        """A copy sent ended: ``status`` 0 when it got no answer."""
        if agreed:
            self.agreed += 1
        else:
            self.disagreed += 1
        if status == 0 or status >= 500:
            self.errors += 1
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.count += 1
        self.seconds += seconds


def quantile_ms(buckets: list[int], q: float) -> float | None:
    """The ``q`` quantile (0-1) of a latency histogram of ``LATENCY_BUCKETS`` (one count per
    bound plus +Inf, not cumulative), in ms, as the upper bound of the bucket that holds it
    (what a Prometheus ``histogram_quantile`` without interpolation says); None when empty;
    past the last bound, the last bound (it is at least that: JSON has no infinity)."""
    total = sum(buckets)
    if not total:
        return None
    rank = q * total
    seen = 0
    for bound, n in zip(LATENCY_BUCKETS, buckets, strict=False):
        seen += n
        if seen >= rank and n:
            return bound * 1000.0
    return LATENCY_BUCKETS[-1] * 1000.0


def histogram(buckets: list[int], count: int, seconds: float) -> dict[str, object]:
    """A latency histogram as plain data (``Router.stats()``): bounds in seconds, the counts
    per bound (the last one +Inf, not cumulative), count, sum, p50_ms and p99_ms."""
    return {
        "bounds_s": list(LATENCY_BUCKETS),
        "counts": list(buckets),
        "count": count,
        "sum_s": round(seconds, 6),
        "p50_ms": quantile_ms(buckets, 0.5),
        "p99_ms": quantile_ms(buckets, 0.99),
    }
