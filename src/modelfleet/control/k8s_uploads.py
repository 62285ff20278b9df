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
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path

from modelfleet.store.registry import META_DIR, Store
from modelfleet.store.shared_blobs import SharedBlobStore
from modelfleet.targets.kubernetes.manifests import logs_prefix, telemetry_prefix
from modelfleet.telemetry.data_layout import service_data_dir

__all__ = ["pod_logs_dir", "sync_log_uploads", "sync_uploads", "uploaded_logs"]

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


def sync_uploads(store: Store, service: str) -> int:
    """Append the model data the pods uploaded since the last call; returns the bytes appended."""
    segments = _segments(store, telemetry_prefix(service), _SEGMENT, ".jsonl")
    return _lay(store, segments, service_data_dir(store.root / META_DIR, service))


def pod_logs_dir(store: Store, service: str) -> Path:
    """Where the pods' uploaded output is laid: ``<pod>/<seq>.log``."""
    return store.runtime_dir / "services" / service / "logs" / "pods"


def sync_log_uploads(store: Store, service: str) -> int:
    """Append the replica output the pods uploaded since the last call; returns the bytes appended."""
    return _lay(store, _segments(store, logs_prefix(service), _LOG_SEGMENT, ".log"), pod_logs_dir(store, service))


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


def _lay(store: Store, segments: Iterator[tuple[str, int, int, str]], root: Path) -> int:
    by_file: dict[str, list[tuple[int, int, str]]] = {}
    for rel, offset, size, locator in segments:
        by_file.setdefault(rel, []).append((offset, size, locator))
    if not by_file:
        return 0
    with _locked(root):
        return _append(store, by_file, root)


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
            data = _read(store, locator)[have - offset :]
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            have += len(data)
            added += len(data)
    return added
