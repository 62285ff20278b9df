"""The init container of a service's pod: fetch the models and the source snapshot by content
hash and lay them out as the local replica sees them (``control/layout.py``).

    python -m modelfleet.targets.kubernetes.fetch --blob-store URL --layout layout.json --dest DIR

``layout.json`` (from the service's ConfigMap, see ``manifests.layout``) lists every model
file as ``{"path": "azureml-models/<name>/<version>/<file>", "digest": sha256}`` plus the
snapshot's digest and folder name. A blob is read from ``URL/<first 2 hex>/<other 62 hex>``,
the workspace blob store's own layout (``store/blobs.py``), so that store's folder served
over HTTP, or copied to an object store under the same keys, is a blob store pods can
reach. ``file://`` works too. Every blob is checked against its digest before it is used;
every path stays inside DIR. Stdlib only: this runs in the replica image.

Exit status 0 when everything is in place, 1 with one line on stderr otherwise (the kubelet
then restarts the init container with a back-off).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

_DIGEST = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1024 * 1024
_TIMEOUT_S = 60


class FetchError(Exception):
    """What went wrong, in one line."""


def blob_url(base: str, digest: str) -> str:
    if not _DIGEST.fullmatch(digest):
        raise FetchError(f"blob digest must be 64 lowercase hex characters (a sha256), got {digest!r}")
    return f"{base.rstrip('/')}/{digest[:2]}/{digest[2:]}"


def _inside(dest: Path, rel: str) -> Path:
    p = PurePosixPath(rel)
    if p.is_absolute() or not p.parts or ".." in p.parts:
        raise FetchError(f"path {rel!r} would be written outside {dest}")
    return dest.joinpath(*p.parts)


def download(base: str, digest: str, target: Path) -> None:
    """Write the blob to ``target`` (atomically), refusing bytes that do not hash to ``digest``."""
    url = blob_url(base, digest)
    if urllib.parse.urlsplit(url).scheme not in ("http", "https", "file"):
        raise FetchError(f"blob store URL must be http://, https:// or file:// (got {base!r})")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".fetch-")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as r:
                    while chunk := r.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
            except OSError as e:  # URLError and HTTPError are OSErrors
                raise FetchError(f"cannot fetch blob {digest} from {url}: {e}") from e
        if h.hexdigest() != digest:
            raise FetchError(f"blob from {url} has sha256 {h.hexdigest()}, expected {digest}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def extract(zip_path: Path, dest: Path) -> None:
    """Unpack a snapshot, every entry checked to land inside ``dest`` before anything is written."""
    with zipfile.ZipFile(zip_path) as zf:
        plan = [(info, _inside(dest, info.filename)) for info in zf.infolist()]
        for info, target in plan:
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
            executable = (info.external_attr >> 16) & 0o100
            os.chmod(target, 0o755 if executable else 0o644)


def fetch(base: str, layout: dict[str, Any], dest: Path) -> int:
    """Lay out every file of ``layout`` under ``dest``; returns how many blobs were fetched."""
    count = 0
    for f in layout.get("files", []):
        download(base, f["digest"], _inside(dest, f["path"]))
        count += 1
    snapshot = layout.get("snapshot")
    source_dir = _inside(dest, layout.get("source_name") or "source")
    source_dir.mkdir(parents=True, exist_ok=True)
    if snapshot:
        zip_path = dest / f".snapshot-{snapshot}.zip"
        try:
            download(base, snapshot, zip_path)
            extract(zip_path, source_dir)
        finally:
            zip_path.unlink(missing_ok=True)
        count += 1
    return count


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m modelfleet.targets.kubernetes.fetch", description=__doc__.split("\n")[0]
    )
    p.add_argument("--blob-store", required=True, help="base URL of the blob store (http, https or file)")
    p.add_argument("--layout", required=True, type=Path, help="layout.json from the service's ConfigMap")
    p.add_argument("--dest", required=True, type=Path, help="the app folder to fill")
    args = p.parse_args(argv)
    try:
        try:
            layout = json.loads(args.layout.read_text())
        except (OSError, ValueError) as e:
            raise FetchError(f"cannot read layout {args.layout}: {e}") from e
        n = fetch(args.blob_store, layout, args.dest)
    except FetchError as e:
        print(f"fetch: {e}", file=sys.stderr)
        return 1
    print(f"fetch: {n} blob(s) laid out in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
