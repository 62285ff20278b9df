"""The replica's access log: one JSON line per answer, collected on the loop and written once a
second (STYLE item 6: nothing is formatted per request).

Each line names the request id, the route (the path: no query string, no body, no header),
method, status and duration. Never a key: the router strips those before the replica.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time

from modelfleet.telemetry import collect

# method is a token httptools has checked; the rest is JSON-encoded.
_LINE = (
    '{"time": "%s.%03dZ", "level": "INFO", "logger": "modelfleet.replica.access", "request_id": %s, '
    '"method": "%s", "route": %s, "status": %d, "duration_ms": %.3f}'
)


class AccessLog:
    """Answers since the last ``write``, as tuples."""

    def __init__(self) -> None:
        self.entries: list[tuple[float, str, str, int, float, bytes]] = []

    def __repr__(self) -> str:
        return f"<AccessLog pending={len(self.entries)}>"

    def add(self, method: str, path: str, status: int, t0: float, ids: bytes) -> None:
        """One answer; ``t0`` is when the request was parsed (``time.perf_counter()``)."""
        self.entries.append((time.time(), method, path, status, time.perf_counter() - t0, ids))

    def write(self) -> None:
        """Write the lines collected since the last call to stderr (the replica's log)."""
        lines, self.entries = self.entries, []
        if not lines:
            return
        out = []
        dumps = json.dumps
        second, stamp = -1, ""
        for when, method, path, status, seconds, ids in lines:
            if int(when) != second:
                second = int(when)
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            rid = dumps(collect._rid(ids))
            out.append(_LINE % (stamp, int(when % 1 * 1000), rid, method, dumps(path), status, seconds * 1000))
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write("\n".join(out) + "\n")
            sys.stderr.flush()
