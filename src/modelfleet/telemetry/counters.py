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

__all__ = ["LATENCY_BUCKETS", "ServiceMetrics"]

# Seconds. Prometheus' default buckets, with 1 ms and 2.5 ms added: local scoring is fast.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class ServiceMetrics:
    """What the router counts for one service (lives as long as its ``ServiceState``)."""

    __slots__ = ("codes", "buckets", "count", "seconds", "auth_missing", "auth_invalid", "dropped")

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
