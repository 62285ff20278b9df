"""Model data collection: what models were asked and answered, kept in the workspace.

Writing (in the replica, one ``DataSink`` per process)
------------------------------------------------------
``collect_model_data=True`` on a service makes each replica record, for every ``/score``
request run() was called with, its input (designation ``inputs``) and, when run() returned
(status < 400), its output (``predictions``), under the service's first model's name and
version. Scripts record what they choose with ``ModelDataCollector(model_name,
designation=..., feature_names=[...]).collect(data)``, imported from ``modelfleet.telemetry``
or v1's ``azureml.monitoring``. A script that makes a collector for ``inputs`` or
``predictions`` itself turns the automatic records of that designation off, so v1 scripts
do not record them twice. Without ``collect_model_data`` the collector accepts the calls and
stores nothing, as v1's did.

The request path only appends a tuple to a bounded deque (no formatting, no I/O, no lock).
A writer thread wakes every ``flush_interval_s`` (1 s), or as soon as the buffer is half full,
formats the pending records as JSON Lines and appends each partition's batch with one
``write``. When ``max_pending`` records
wait, new ones are dropped and counted; a write that fails (read-only or full folder) drops
its batch and counts it too. Scoring never waits and never fails because of collection.

Layout and record format: ``telemetry/data_layout.py``.

Why JSON Lines and not Parquet on disk: an append-only text file is readable up to its last
whole line at any moment, so a killed replica loses only what it had not written yet, while a
Parquet file is unreadable until its footer is written (each flush would have to write a new
small file). And the replica runs in the user's environment, where pyarrow may be absent.
``modelfleet data export --format parquet`` converts (pyarrow, ``modelfleet[parquet]``).

Durability: a record survives a graceful stop of its replica (SIGTERM: cluster stop, update,
scale-down, delete; ``close()`` writes everything pending and fsyncs) and, across a SIGKILL
of the replica or the daemon, every record of a request answered at least ``flush_interval_s``
before the kill. Records newer than that may be lost; a record is never half-written
(readers skip a cut last line, and the next writer starts a fresh line).

Reading is ``telemetry/collected.py``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from modelfleet.telemetry.data_layout import INPUTS, PREDICTIONS, UNKNOWN_VERSION, safe_part
from modelfleet.telemetry.replica_stats import StatsFile

__all__ = ["DataSink", "ModelDataCollector", "current_sink", "install_sink", "set_request_ids"]

log = logging.getLogger("modelfleet.replica.collect")  # the replica's handler writes it to its log

_WARN_EVERY_S = 60.0
_CHUNK = 16  # records formatted between two hand-overs of the GIL (see DataSink.flush)


# -- writing -------------------------------------------------------------------------------


_JSON_START = frozenset(b'{["-0123456789tfn')
_PLAIN_ID = re.compile(rb"[A-Za-z0-9._:/+=-]*").fullmatch  # request ids written without escaping
_SPACE = frozenset(b" \t")


def _json_bytes(raw: bytes) -> bytes:
    """``raw`` as the record's ``data``, on one line, without parsing it (the writer must stay
    cheap, see ``DataSink.flush``): a body that starts like JSON is written as it is; anything
    else, and any body with a line break, as a JSON string. A body that starts like JSON but is
    not (cut, malformed) is written verbatim too; ``read_records`` reads it back as text."""
    if not raw:
        return b'""'
    if b"\n" in raw or b"\r" in raw or b"\x00" in raw:  # pretty-printed, or UTF-16/32
        try:
            return json.dumps(json.loads(raw)).encode()
        except (ValueError, UnicodeDecodeError):
            return json.dumps(raw.decode("utf-8", "replace")).encode()
    if raw[0] in _SPACE or raw[-1] in _SPACE:
        raw = raw.strip()
        if not raw:
            return b'""'
    if raw[0] in _JSON_START:
        return raw
    return json.dumps(raw.decode("utf-8", "replace")).encode()


def _default(value: Any) -> Any:
    # numpy scalars and arrays, pandas objects, dates, bytes: what scripts pass to collect()
    for method in ("tolist", "item"):
        fn = getattr(value, method, None)
        if callable(fn):
            return fn()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    return str(value)


class _File:
    __slots__ = ("fd", "fresh_line")

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # A writer killed mid-line (earlier process of this replica) left a cut line: start a new one.
        self.fresh_line = True
        size = os.fstat(self.fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                self.fresh_line = f.read(1) == b"\n"


@dataclass
class SinkStats:
    records: int = 0  # accepted into the buffer
    written: int = 0
    dropped: int = 0  # buffer full, or the write failed
    write_errors: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "written": self.written,
            "dropped": self.dropped,
            "write_errors": self.write_errors,
            "last_error": self.last_error,
        }


class DataSink:
    """One replica's collected records: buffered on the request path, written by a thread."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        replica: str,
        models: Mapping[str, str],
        *,
        flush_interval_s: float = 1.0,
        max_pending: int = 10_000,
        stats_file: StatsFile | None = None,
    ) -> None:
        self.root = Path(root)
        self.replica = safe_part(replica)
        self.models = dict(models)
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self.stats_file = stats_file
        if stats_file is not None:
            stats_file.add(self._counts)
        first = next(iter(self.models.items()), ("model", UNKNOWN_VERSION))
        self.auto_model, self.auto_version = first
        self.auto_inputs = True  # turned off when the script collects that designation itself
        self.auto_predictions = True
        self.stats = SinkStats()
        # (kind, time, ...) tuples; see _format. Appended by workers, taken by the writer.
        self._pending: deque[tuple[Any, ...]] = deque()
        self._drop_lock = threading.Lock()
        self._files: dict[Path, _File] = {}
        self._targets: dict[tuple[str, str, str, tuple[str, str, str]], tuple[Path, bytes]] = {}
        # The batch being formatted (flush) and, for its current second, the time text, the
        # day partition and the automatic records' line lists and prefixes (_new_second).
        self._batches: dict[Path, list[bytes]] = {}
        self._second = -1
        self._second_bytes = b""
        self._day: tuple[str, str, str] = ("", "", "")
        self._auto_inputs: list[bytes] = []
        self._auto_inputs_prefix = b""
        self._auto_predictions: list[bytes] = []
        self._auto_predictions_prefix = b""
        self._stopping = False
        self._wake = threading.Event()  # the interval is up, the buffer is half full, or close()
        self._early = max(1, max_pending // 2)
        self._thread: threading.Thread | None = None
        self._flush_lock = threading.Lock()
        self._last_warning = 0.0

    def __repr__(self) -> str:
        s = self.stats
        return f"<DataSink {self.root} pending={len(self._pending)} written={s.written} dropped={s.dropped}>"

    # -- the request path (worker threads): append only ---------------------------------

    def exchange(self, ids: bytes, when: float, request: bytes | None, answer: bytes | None) -> None:
        """One scored request: its body (or query) and, when run() returned, the answer body."""
        pending = self._pending
        if len(pending) >= self.max_pending:
            self._dropped(2 if answer is not None else 1)
            return
        pending.append(("x", when, ids, request, answer))
        self.stats.records += 1 if answer is None else 2
        if len(pending) == self._early:
            self._wake.set()  # half full before the interval is up: write now

    def record(self, model: str, designation: str, request_id: str, when: float, data: Any) -> None:
        """One record a script chose to collect (``ModelDataCollector.collect``)."""
        if len(self._pending) >= self.max_pending:
            self._dropped(1)
            return
        version = self.models.get(model, UNKNOWN_VERSION)
        self._pending.append(("r", when, request_id, model, version, designation, data))
        self.stats.records += 1
        if len(self._pending) == self._early:
            self._wake.set()

    def _dropped(self, n: int) -> None:
        with self._drop_lock:
            self.stats.dropped += n

    def script_collects(self, designation: str) -> None:
        if designation == INPUTS:
            self.auto_inputs = False
        elif designation == PREDICTIONS:
            self.auto_predictions = False

    # -- the writer thread ------------------------------------------------------------------

    def start(self) -> None:
        self._write_stats()
        self._thread = threading.Thread(target=self._run, name="data-collector", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        """Write everything pending, fsync, close (graceful stop)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.flush()
        with self._flush_lock:
            for f in self._files.values():
                with contextlib.suppress(OSError):
                    os.fsync(f.fd)
                os.close(f.fd)
            self._files.clear()
        self._write_stats()

    def flush(self) -> None:
        """Format and write what is pending.

        Formatting holds the GIL, which the replica's loop and run() threads need too: held
        for a whole batch (thousands of records, tens of ms) it would make each of their
        waits for it long (the "convoy" of a CPU-bound thread beside I/O-bound ones), which
        measured as half the throughput of a service with replica_max_concurrent_requests=1.
        So records are formatted ``_CHUNK`` at a time with ``time.sleep(0)`` between chunks,
        which hands the GIL to any thread waiting for it, and formatting does no parsing."""
        with self._flush_lock:
            pending = self._pending
            batches: dict[Path, list[bytes]] = {}
            self._batches = batches
            self._second = -1  # the automatic records' lists are looked up again in this batch
            left = len(pending)
            while left > 0:
                with contextlib.suppress(IndexError):
                    for _ in range(min(_CHUNK, left)):
                        item = pending.popleft()
                        try:
                            if item[0] == "x":
                                self._format_exchange(item)
                            else:
                                self._format(item, batches)
                        except Exception as exc:  # noqa: BLE001 - one odd record must not stop the writer
                            self._failed(1, f"a record could not be encoded: {exc!r}")
                left -= _CHUNK
                if left > 0:
                    time.sleep(0)
            for path, lines in batches.items():
                self._write(path, lines)
            self._write_stats()

    def _format_exchange(self, item: tuple[Any, ...]) -> None:
        """The automatic records of one request (the common case, kept tight: ~2 µs)."""
        _, when, ids, request, answer = item
        second = int(when)
        if second != self._second:
            self._new_second(second)
        stamp = b', "time": "%s.%06dZ", "data": ' % (self._second_bytes, int((when - second) * 1_000_000))
        rid = ids[14 : ids.find(b"\r\n")] if ids.startswith(b"x-request-id: ") else b""
        quoted = b'"' + rid + b'"' if _PLAIN_ID(rid) else json.dumps(rid.decode("latin-1")).encode()
        head = quoted + stamp
        if request is not None:
            self._auto_inputs.append(self._auto_inputs_prefix + head + _json_bytes(request) + b"}\n")
        if answer is not None:
            self._auto_predictions.append(self._auto_predictions_prefix + head + _json_bytes(answer) + b"}\n")

    def _format(self, item: tuple[Any, ...], batches: dict[Path, list[bytes]]) -> None:
        """A record a script collected."""
        _, when, request_id, model, version, designation, data = item
        stamp = self._stamp(when)
        data_json = json.dumps(data, default=_default, allow_nan=True).encode()
        path, prefix = self._target(model, version, designation)
        line = prefix + json.dumps(request_id).encode() + stamp + data_json + b"}\n"
        batches.setdefault(path, []).append(line)

    def _new_second(self, second: int) -> None:
        t = time.gmtime(second)
        self._second = second
        self._second_bytes = time.strftime("%Y-%m-%dT%H:%M:%S", t).encode()
        self._day = (f"{t.tm_year:04d}", f"{t.tm_mon:02d}", f"{t.tm_mday:02d}")
        path, self._auto_inputs_prefix = self._target(self.auto_model, self.auto_version, INPUTS)
        self._auto_inputs = self._batches.setdefault(path, [])
        path, self._auto_predictions_prefix = self._target(self.auto_model, self.auto_version, PREDICTIONS)
        self._auto_predictions = self._batches.setdefault(path, [])

    def _target(self, model: str, version: str, designation: str) -> tuple[Path, bytes]:
        """The file of a partition on the current day, and the line prefix of its records
        (both cached: building paths costs more than formatting a record)."""
        key = (model, version, designation, self._day)
        target = self._targets.get(key)
        if target is None:
            if len(self._targets) > 4096:  # days go by; user designations are few
                self._targets.clear()
            y, m, d = self._day
            partition = self.root / safe_part(model) / safe_part(version) / safe_part(designation)
            path = partition / y / m / d / f"{self.replica}.jsonl"
            prefix = b'{"model": %s, "version": %s, "designation": %s, "request_id": ' % (
                json.dumps(model).encode(),
                json.dumps(version).encode(),
                json.dumps(designation).encode(),
            )
            target = self._targets[key] = (path, prefix)
        return target

    def _stamp(self, when: float) -> bytes:
        """``, "time": "<ISO 8601>", "data": `` for ``when``; sets the day partition."""
        second = int(when)
        if second != self._second:
            self._new_second(second)
        return b', "time": "%s.%06dZ", "data": ' % (self._second_bytes, int((when - second) * 1_000_000))

    def _write(self, path: Path, lines: list[bytes]) -> None:
        f = self._files.get(path)
        data = b"".join(lines)
        newline = 0  # 1 when a "\n" goes first, closing a line a killed writer cut
        written = 0
        try:
            if f is None:
                f = self._files[path] = _File(path)
            if not f.fresh_line:
                data = b"\n" + data
                newline = 1
            view = memoryview(data)
            while written < len(data):
                written += os.write(f.fd, view[written:])
            f.fresh_line = True
            self.stats.written += len(lines)
        except OSError as exc:
            saved = max(0, data.count(b"\n", 0, written) - newline) if written else 0
            self.stats.written += saved
            self._failed(len(lines) - saved, f"writing {path}: {exc.strerror or exc}")
            if f is not None:
                if written:
                    f.fresh_line = data[written - 1 : written] == b"\n"
                # closed and reopened next time: the folder may come back
                with contextlib.suppress(OSError):
                    os.close(f.fd)
                self._files.pop(path, None)

    def _failed(self, n: int, why: str) -> None:
        self._dropped(n)
        self.stats.write_errors += 1
        self.stats.last_error = why
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning = now
            log.warning(
                "model data collection: %s; %d record(s) dropped so far (scoring goes on)", why, self.stats.dropped
            )

    def _counts(self) -> dict[str, Any]:
        return {**self.stats.as_dict(), "pending": len(self._pending)}

    def _write_stats(self) -> None:
        if self.stats_file is not None:
            self.stats_file.write()


def _rid(ids: bytes) -> str:
    # the replica's request-id header block starts with "x-request-id: <id>\r\n"
    if ids.startswith(b"x-request-id: "):
        return ids[14 : ids.find(b"\r\n")].decode("latin-1")
    return ""


# The replica installs its sink here at start; ModelDataCollector finds it. None: not collecting.
_sink: DataSink | None = None
_request = threading.local()


def install_sink(sink: DataSink | None) -> None:
    global _sink
    _sink = sink


def current_sink() -> DataSink | None:
    return _sink


def set_request_ids(ids: bytes) -> None:
    """The request the current worker thread scores (its id goes with collected records)."""
    _request.ids = ids


class ModelDataCollector:
    """v1's collector: ``ModelDataCollector(model_name, designation="default",
    feature_names=None).collect(input_data, user_correlation_id="")``.

    With ``feature_names``, rows (a list of lists, a 2-D array, or one flat row) are recorded as
    objects keyed by those names; a pandas DataFrame as its records. Returns the correlation
    context v1 returned (the request id and the time), for ``add_correlations``.
    """

    def __init__(
        self,
        model_name: str,
        designation: str = "default",
        feature_names: Iterable[str] | None = None,
        workspace: str = "default/default/default",
        **kwargs: Any,
    ) -> None:
        self.model_name = str(model_name)
        self.designation = str(designation)
        self.feature_names = list(feature_names) if feature_names is not None else None
        sink = _sink
        if sink is not None:
            sink.script_collects(self.designation)

    def __repr__(self) -> str:
        return f"<ModelDataCollector {self.model_name}/{self.designation} collecting={_sink is not None}>"

    def collect(self, input_data: Any, user_correlation_id: str = "") -> dict[str, Any]:
        sink = _sink
        if sink is None:
            return {}
        now = time.time()
        request_id = user_correlation_id or _rid(getattr(_request, "ids", b""))
        sink.record(self.model_name, self.designation, request_id, now, _rows(input_data, self.feature_names))
        return {"$aml_dc_correlation_id": request_id, "$aml_dc_scoring_timestamp": now}

    def add_correlations(self, input_data: Any, correlations: Any) -> Any:
        """Returns the data unchanged (the records carry the request id already)."""
        return input_data


def _rows(data: Any, names: list[str] | None) -> Any:
    to_dict = getattr(data, "to_dict", None)
    if callable(to_dict) and hasattr(data, "columns"):  # pandas DataFrame
        return to_dict(orient="records")
    tolist = getattr(data, "tolist", None)
    if callable(tolist):  # numpy: a copy, so later changes to the array do not show
        data = tolist()
    if not names or not isinstance(data, list | tuple):
        return data
    if data and all(isinstance(r, list | tuple) and len(r) == len(names) for r in data):
        return [dict(zip(names, r, strict=True)) for r in data]
    if len(data) == len(names) and not any(isinstance(v, list | tuple | dict) for v in data):
        return [dict(zip(names, data, strict=True))]
    return data
