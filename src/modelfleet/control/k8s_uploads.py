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
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from modelfleet.store.registry import META_DIR, Store
from modelfleet.store.shared_blobs import SharedBlobStore
from modelfleet.targets.kubernetes.manifests import telemetry_prefix
from modelfleet.telemetry.data_layout import service_data_dir

__all__ = ["sync_uploads"]

# model/version/designation/YYYY/MM/DD/<pod>/<offset>.jsonl
_SEGMENT = re.compile(r"^([^/]+/[^/]+/[^/]+/\d{4}/\d{2}/\d{2})/([^/]+)/(\d{16})\.jsonl$")


def _segments(store: Store, service: str) -> Iterator[tuple[str, int, int, str]]:
    """(file relpath, offset, size, locator) of every uploaded segment of ``service``."""
    prefix = telemetry_prefix(service)
    blobs = store.blobs
    if isinstance(blobs, SharedBlobStore):
        base = f"{blobs.prefix.rstrip('/')}/{prefix}"
        try:
            found = blobs.fs.find(base, detail=True)
        except FileNotFoundError:
            return
        for path, info in found.items():
            rel = str(path)[len(base) :].lstrip("/")
            m = _SEGMENT.match(rel)
            if m:
                yield f"{m[1]}/{m[2]}.jsonl", int(m[3]), int(info.get("size") or 0), str(path)
        return
    root = Path(blobs.root) / prefix
    if not root.is_dir():
        return
    for path in root.rglob("*.jsonl"):
        m = _SEGMENT.match(path.relative_to(root).as_posix())
        if m:
            yield f"{m[1]}/{m[2]}.jsonl", int(m[3]), path.stat().st_size, str(path)


def _read(store: Store, locator: str) -> bytes:
    blobs = store.blobs
    if isinstance(blobs, SharedBlobStore):
        return bytes(blobs.fs.cat_file(locator))
    return Path(locator).read_bytes()


def sync_uploads(store: Store, service: str) -> int:
    """Append what the pods uploaded since the last call; returns the bytes appended."""
    by_file: dict[str, list[tuple[int, int, str]]] = {}
    for rel, offset, size, locator in _segments(store, service):
        by_file.setdefault(rel, []).append((offset, size, locator))
    root = service_data_dir(store.root / META_DIR, service)
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
