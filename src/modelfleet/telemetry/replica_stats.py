"""A replica's counters in one small JSON file, read by the daemon's metrics and dashboard.

Several parts of a replica count what the daemon reports: the data collector (records
accepted, written, dropped: ``telemetry/collect.py``) and the replica's log (lines dropped
when its disk is full: ``telemetry/logfiles.py``). Each adds a source, a function returning
its numbers; ``write()`` merges them and replaces the file (a temporary file renamed over it,
so a reader never sees half of one) when they changed since the last write. The collector
writes after each of its flushes; a thread writes every ``interval_s`` for the others.

A failed write is skipped (the next one tries again): counters are never worth a failure of
the replica, and on a full disk the file may be the thing that cannot be written.

Only stdlib: the replica runs in the user's environment.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["StatsFile"]


class StatsFile:
    """``path`` holds the merged numbers of every source, and ``pid``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._sources: list[Callable[[], Mapping[str, Any]]] = []
        self._lock = threading.Lock()
        self._written: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<StatsFile {self.path} sources={len(self._sources)}>"

    def add(self, source: Callable[[], Mapping[str, Any]]) -> None:
        self._sources.append(source)

    def write(self) -> None:
        with self._lock:
            data: dict[str, Any] = {}
            for source in self._sources:
                data.update(source())
            data["pid"] = os.getpid()
            if data == self._written:
                return
            tmp = f"{self.path}.{os.getpid()}.tmp"
            try:
                with open(tmp, "w") as f:
                    json.dump(data, f)
                os.replace(tmp, self.path)
                self._written = data
            except OSError:
                pass

    def start(self, interval_s: float = 1.0) -> None:
        self.write()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), name="replica-stats", daemon=True)
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.write()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.write()
