"""What a Kubernetes service's pods uploaded (``targets/kubernetes/ship.py``), laid back into
the workspace's own data folder, where ``modelfleet data show|export`` read a local service's
records (``telemetry/data_layout.py``): the same files, the same readers.

The pods upload immutable segments to the workspace's blob store::

    telemetry/<service>/data/<model>/<version>/<designation>/<YYYY>/<MM>/<DD>/<pod>/<offset>.jsonl

``sync_uploads`` appends to ``<workspace>/.modelfleet/data/<service>/.../<pod>.jsonl`` the bytes of
each segment past what the file already holds, in offset order (segments may overlap after a
sidecar restart: the pod's file is append-only, so the same offset holds the same byte); a gap
(a segment not there yet) stops that file until it comes. The blob store is read where the
workspace keeps it: its local folder (the one a test serves to the pods over HTTP), or the
shared store (``az://``, ``s3://``, ``file://``) through its fsspec filesystem. The compute
target's controller calls it every few seconds for each of its services that collect data.

The replica's output (``replica/logtee.py``), uploaded by the same sidecar when the target has
an upload credential, is laid the same way by ``sync_log_uploads``::

    telemetry/<service>/logs/<pod>/<seq>/<offset>.log  ->  <runtime>/services/<service>/logs/pods/<pod>/<seq>.log

where ``service.get_logs()`` reads it (``uploaded_logs``). Both take an ``flock`` per service
folder, so the controller and a ``get_logs()`` call never lay the same bytes twice.

Retention (the controller's ``prune_log_uploads``, ``logs_to_prune`` decides): the laid logs are
bounded as the local cluster's are, where each replica keeps its log and
``MODELFLEET_LOG_BACKUPS`` rotated files of ``MODELFLEET_LOG_MAX_BYTES`` (``replica/logtee.py``
keeps the same on the pod). Each pod keeps its newest ``backups + 1`` files; pods still running
(listed by the target, or written within ``recent_s``) are kept, and of the pods gone only the
``gone_pods`` most recently written; the rest is deleted. A running pod's newest file is never
deleted (it grows; its segments would have nowhere to go), and no file the pod may still upload
again from offset 0 (a restarted sidecar sends what the pod holds: its newest ``backups + 1``).
Segments already laid (data and logs) and those of deleted files are deleted from the blob
store when it is the workspace's own folder. A shared store (``az://``, ``s3://``, ``file://``) is
left as it is: every teammate's machine lays the same segments into its own copy (``get_logs()``
there), so no one machine may decide they are read; its own lifecycle rule (an Azure lifecycle
management policy or S3 expiration on ``telemetry/``) bounds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from modelfleet.replica.logtee import DEFAULT_BACKUPS
from modelfleet.store.registry import META_DIR, Store
from modelfleet.store.shared_blobs import SharedBlobStore
from modelfleet.targets.kubernetes.manifests import logs_prefix, telemetry_prefix
from modelfleet.telemetry.data_layout import service_data_dir

__all__ = [
    "LaidLog",
    "LogRetention",
    "Pruned",
    "logs_to_prune",
    "pod_logs_dir",
    "prune_log_uploads",
    "sync_log_uploads",
    "sync_uploads",
    "uploaded_logs",
]

# model/version/designation/YYYY/MM/DD/<pod>/<offset>.jsonl
_SEGMENT = re.compile(r"^([^/]+/[^/]+/[^/]+/\d{4}/\d{2}/\d{2})/([^/]+)/(\d{16})\.jsonl$")
# <pod>/<seq>/<offset>.log
_LOG_SEGMENT = re.compile(r"^([^/]+)/(\d{6})/(\d{16})\.log$")


def _segments(store: Store, prefix: str, pattern: re.Pattern[str], suffix: str) -> Iterator[tuple[str, int, int, str]]:
    """(file relpath, offset, size, locator) of every segment uploaded under ``prefix``."""
    blobs = store.blobs
    if isinstance(blobs, SharedBlobStore):
        base = f"{blobs.prefix.rstrip('/')}/{prefix}"
        try:
            found = blobs.fs.find(base, detail=True)
        except FileNotFoundError:
            return
        for path, info in found.items():
            rel = str(path)[len(base) :].lstrip("/")
            m = pattern.match(rel)
            if m:
                yield f"{m[1]}/{m[2]}{suffix}", int(m[3]), int(info.get("size") or 0), str(path)
        return
    root = Path(blobs.root) / prefix
    if not root.is_dir():
        return
    for path in root.rglob(f"*{suffix}"):
        m = pattern.match(path.relative_to(root).as_posix())
        if m:
            yield f"{m[1]}/{m[2]}{suffix}", int(m[3]), path.stat().st_size, str(path)


def _read(store: Store, locator: str) -> bytes:
    blobs = store.blobs
    if isinstance(blobs, SharedBlobStore):
        return bytes(blobs.fs.cat_file(locator))
    return Path(locator).read_bytes()


def sync_uploads(store: Store, service: str, delete_laid: bool = False) -> int:
    """Append the model data the pods uploaded since the last call; returns the bytes appended.
    ``delete_laid``: then delete the segments laid (by this call or an earlier one) from the
    workspace's own blob folder (the controller's calls; a shared store is left alone)."""
    segments = _segments(store, telemetry_prefix(service), _SEGMENT, ".jsonl")
    return _lay(store, segments, service_data_dir(store.root / META_DIR, service), delete_laid)


def pod_logs_dir(store: Store, service: str) -> Path:
    """Where the pods' uploaded output is laid: ``<pod>/<seq>.log``."""
    return store.runtime_dir / "services" / service / "logs" / "pods"


def sync_log_uploads(store: Store, service: str, delete_laid: bool = False) -> int:
    """Append the replica output the pods uploaded since the last call; returns the bytes
    appended. ``delete_laid``: as ``sync_uploads``'."""
    segments = _segments(store, logs_prefix(service), _LOG_SEGMENT, ".log")
    return _lay(store, segments, pod_logs_dir(store, service), delete_laid)


def uploaded_logs(store: Store, service: str) -> dict[str, list[Path]]:
    """Each pod's laid log files, oldest first; pods ordered by their last write, oldest first."""
    root = pod_logs_dir(store, service)
    if not root.is_dir():
        return {}
    pods = {d.name: sorted(d.glob("[0-9]*.log")) for d in root.iterdir() if d.is_dir()}
    pods = {name: files for name, files in pods.items() if files}
    return dict(sorted(pods.items(), key=lambda kv: (kv[1][-1].stat().st_mtime, kv[0])))


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _lay(store: Store, segments: Iterator[tuple[str, int, int, str]], root: Path, delete_laid: bool = False) -> int:
    by_file: dict[str, list[tuple[int, int, str]]] = {}
    for rel, offset, size, locator in segments:
        by_file.setdefault(rel, []).append((offset, size, locator))
    if not by_file:
        return 0
    with _locked(root):
        added = _append(store, by_file, root)
        if delete_laid and _owned(store):
            for rel, found in by_file.items():
                target = root / rel
                have = target.stat().st_size if target.exists() else 0
                for offset, size, locator in found:
                    if offset + size <= have:
                        Path(locator).unlink(missing_ok=True)
                _remove_empty_parents(Path(found[0][2]).parent, Path(store.blobs.root))
        return added


def _owned(store: Store) -> bool:
    """The blob store is this workspace's own folder (not a store teammates read too)."""
    return not isinstance(store.blobs, SharedBlobStore)


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone)
            return
        folder = folder.parent


def _append(store: Store, by_file: dict[str, list[tuple[int, int, str]]], root: Path) -> int:
    added = 0
    for rel, segments in sorted(by_file.items()):
        target = root / rel
        have = target.stat().st_size if target.exists() else 0
        for offset, size, locator in sorted(segments):
            if offset + size <= have:
                continue  # laid already
            if offset > have:
                break  # a gap: the segment before this one is not uploaded yet
            try:
                data = _read(store, locator)[have - offset :]
            except FileNotFoundError:
                break  # deleted since it was listed (pruned with its file by the controller)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            have += len(data)
            added += len(data)
    return added


# -- retention --------------------------------------------------------------------------


@dataclass(frozen=True)
class LaidLog:
    """One laid log file: ``<pod>/<seq>.log``, its size and last write (seconds since the epoch)."""

    pod: str
    seq: int
    size: int
    mtime: float


@dataclass(frozen=True)
class LogRetention:
    """What of a service's laid pod logs is kept (module docstring)."""

    backups: int = DEFAULT_BACKUPS  # files per pod beyond its newest: the replica's MODELFLEET_LOG_BACKUPS
    gone_pods: int = 4  # pods no longer running whose logs are kept, the most recently written
    recent_s: float = 600.0  # a pod written within this counts as running (the pod list may lag)

    def __post_init__(self) -> None:
        if self.backups < 0 or self.gone_pods < 0 or self.recent_s < 0:
            raise ValueError(
                f"LogRetention: backups, gone_pods and recent_s must be >= 0 "
                f"(got {self.backups}, {self.gone_pods}, {self.recent_s})"
            )


def logs_to_prune(
    files: Sequence[LaidLog], running: Collection[str], now: float, retention: LogRetention
) -> list[LaidLog]:
    """The laid log files to delete, oldest first: of each pod all but its newest
    ``backups + 1``; of the pods gone (neither in ``running`` nor written within ``recent_s``
    of ``now``) all but the ``gone_pods`` most recently written, whose files all go."""
    by_pod: dict[str, list[LaidLog]] = {}
    for f in files:
        by_pod.setdefault(f.pod, []).append(f)
    last_write = {pod: max(f.mtime for f in found) for pod, found in by_pod.items()}
    gone = [pod for pod in by_pod if pod not in running and now - last_write[pod] >= retention.recent_s]
    gone.sort(key=lambda pod: (last_write[pod], pod), reverse=True)
    dropped = set(gone[retention.gone_pods :])
    out: list[LaidLog] = []
    for pod, found in by_pod.items():
        found.sort(key=lambda f: f.seq)
        out += found if pod in dropped else found[: max(0, len(found) - (retention.backups + 1))]
    return sorted(out, key=lambda f: (f.mtime, f.pod, f.seq))


@dataclass(frozen=True)
class Pruned:
    files: int  # laid log files deleted
    bytes: int
    segments: int  # segments of those files deleted from the blob store


def prune_log_uploads(
    store: Store, service: str, running: Collection[str], now: float, retention: LogRetention | None = None
) -> Pruned:
    """Delete what ``logs_to_prune`` names, and the segments of those files still in the
    workspace's own blob folder (so they are not laid again)."""
    retention = retention or LogRetention()
    root = pod_logs_dir(store, service)
    if not root.is_dir():
        return Pruned(0, 0, 0)
    with _locked(root):
        files = []
        for path in root.glob("*/[0-9]*.log"):
            if path.stem.isdigit():
                st = path.stat()
                files.append(LaidLog(path.parent.name, int(path.stem), st.st_size, st.st_mtime))
        doomed = logs_to_prune(files, running, now, retention)
        segments = 0
        base = Path(store.blobs.root) / logs_prefix(service) if _owned(store) else None
        for f in doomed:
            (root / f.pod / f"{f.seq:06d}.log").unlink(missing_ok=True)
            folder = base / f.pod / f"{f.seq:06d}" if base is not None else None
            if folder is not None and folder.is_dir():
                for segment in folder.glob("*.log"):
                    segment.unlink(missing_ok=True)
                    segments += 1
                _remove_empty_parents(folder, Path(store.blobs.root))
        for pod in {f.pod for f in doomed}:
            with contextlib.suppress(OSError):
                (root / pod).rmdir()  # only when empty: a pod gone whole
        return Pruned(len(doomed), sum(f.size for f in doomed), segments)
