"""The sidecar of a pod whose service collects model data, or whose compute target has an upload
credential: it uploads what the replica writes to the workspace's blob store, where the
workspace reads it back (``control/k8s_uploads.py``).

    python -m modelfleet.targets.kubernetes.ship --blob-store URL
        [--prefix telemetry/<service>/data --dir /var/modelfleet-data]
        [--logs-prefix telemetry/<service>/logs --logs-dir /var/modelfleet-logs] [--replica URL]

The replica's output (``replica/logtee.py``: ``<logs-dir>/<pod>/<seq>.log``, append-only) is
uploaded the same way, as ``<prefix>/<pod>/<seq>/<offset>.log``.

The replica writes JSON Lines under ``--dir`` as it does on the local cluster
(``telemetry/data_layout.py``: ``<model>/<version>/<designation>/<YYYY>/<MM>/<DD>/<pod>.jsonl``,
append-only). Every ``INTERVAL_S`` the sidecar PUTs each file's new whole lines as one object,
named by the offset they start at::

    <blob store>/<prefix>/<model>/<version>/<designation>/<YYYY>/<MM>/<DD>/<pod>/<offset, 16 digits>.jsonl

Objects are never changed once written, so a plain PUT does (Azure's Put Blob with
``x-ms-blob-type: BlockBlob``, or any server that stores what it is sent); a sidecar restarted
from offset 0 writes the same bytes again under the same or overlapping names, which the
reader lays over each other by offset (the file is append-only: a byte at an offset never
changes). Once laid, the workspace deletes them from its own blob folder (``k8s_uploads``:
retention); a segment sent again after that is skipped as laid, and deleted again.

The write credential comes from the upload Secret (``manifests.upload_secret_name``), never
from the workspace: ``MODELFLEET_UPLOAD_SAS`` (a query string appended to each URL, e.g. an Azure
SAS with create/write permission) or ``MODELFLEET_UPLOAD_TOKEN`` (``Authorization: Bearer``).
With either, plain ``http://`` to anything but a loopback address is refused, as the fetcher
refuses it for the read credential.

On SIGTERM (the pod is being deleted) it keeps uploading until the replica has stopped (its
``--replica`` URL refuses connections: it has written what it held) and then makes a last
pass, so a graceful stop loses nothing. Stdlib only: this runs in the replica image.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from modelfleet.targets.kubernetes.fetch import Credential, FetchError, check_base

__all__ = ["SAS_ENV", "TOKEN_ENV", "Shipper", "segment_key"]

SAS_ENV = "MODELFLEET_UPLOAD_SAS"
TOKEN_ENV = "MODELFLEET_UPLOAD_TOKEN"
INTERVAL_S = 2.0
MAX_SEGMENT = 4 * 1024 * 1024  # bytes per object; a longer backlog goes in several
_TIMEOUT_S = 60


def segment_key(prefix: str, relpath: str, offset: int, suffix: str = ".jsonl") -> str:
    """``<prefix>/<relpath without its suffix>/<offset><suffix>``."""
    stem = relpath[: -len(suffix)] if relpath.endswith(suffix) else relpath
    return f"{prefix.strip('/')}/{stem}/{offset:016d}{suffix}"


def credential_from_env(environ: Mapping[str, str] | None = None) -> Credential:
    env = os.environ if environ is None else environ
    return Credential(env.get(SAS_ENV), env.get(TOKEN_ENV))


class Shipper:
    """Uploads the files ``<folder>/**/*<suffix>``: ``.jsonl`` (collected data) or ``.log``
    (the replica's output, ``replica/logtee.py``)."""

    def __init__(
        self, base: str, prefix: str, folder: Path, credential: Credential | None = None, suffix: str = ".jsonl"
    ) -> None:
        self.credential = credential or Credential()
        check_base(base, self.credential)  # http:// with a credential only to loopback
        if base.startswith("file:"):
            raise FetchError("the upload store must be http:// or https:// (pods cannot write this machine's disk)")
        self.base = base.rstrip("/")
        self.prefix = prefix
        self.folder = folder
        self.suffix = suffix
        self.content_type = "application/x-ndjson" if suffix == ".jsonl" else "text/plain; charset=utf-8"
        self.offsets: dict[str, int] = {}
        self.uploaded = 0  # objects written
        self.failures = 0

    def pass_once(self) -> int:
        """Upload every file's new whole lines; returns the bytes uploaded."""
        sent = 0
        for path in sorted(self.folder.rglob(f"*{self.suffix}")):
            rel = path.relative_to(self.folder).as_posix()
            offset = self.offsets.get(rel, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read(MAX_SEGMENT)
            except OSError:
                continue
            cut = data.rfind(b"\n") + 1  # whole lines only: the rest is still being written
            while cut > 0:
                self._put(segment_key(self.prefix, rel, offset, self.suffix), data[:cut])
                offset += cut
                sent += cut
                self.offsets[rel] = offset
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read(MAX_SEGMENT)
                cut = data.rfind(b"\n") + 1
        return sent

    def _put(self, key: str, body: bytes) -> None:
        url = f"{self.base}/{urllib.parse.quote(key)}"
        request = urllib.request.Request(
            f"{url}?{self.credential.sas}" if self.credential.sas else url,
            data=body,
            method="PUT",
            headers={"x-ms-blob-type": "BlockBlob", "Content-Type": self.content_type},
        )
        if self.credential.token:
            request.add_header("Authorization", f"Bearer {self.credential.token}")
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as r:
                r.read()
        except (OSError, http.client.HTTPException) as e:
            self.failures += 1
            status = e.code if isinstance(e, urllib.error.HTTPError) else 0
            hint = " (the store refused the upload credential, or none was given)" if status in (401, 403) else ""
            raise FetchError(f"cannot upload {url}: {self.credential.redact(str(e))}{hint}") from None
        self.uploaded += 1


def _replica_up(url: str | None) -> bool:
    if not url:
        return False
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            r.read()
        return True
    except urllib.error.HTTPError:
        return True  # it answers
    except OSError:
        return False


def run(shippers: Sequence[Shipper], stop: threading.Event, replica: str | None, grace_s: float) -> None:
    """Pass every ``INTERVAL_S`` until ``stop``; then until the replica is gone (at most
    ``grace_s``), and one last pass."""
    last_error = [""] * len(shippers)

    def attempt() -> None:
        for i, shipper in enumerate(shippers):
            try:
                shipper.pass_once()
                last_error[i] = ""
            except FetchError as e:
                if str(e) != last_error[i]:  # once per distinct failure, not every pass
                    print(f"ship: {e}", file=sys.stderr, flush=True)
                last_error[i] = str(e)

    while not stop.wait(INTERVAL_S):
        attempt()
    end = time.monotonic() + grace_s
    while time.monotonic() < end and _replica_up(replica):
        attempt()
        time.sleep(0.5)
    attempt()
    uploaded, failed = sum(s.uploaded for s in shippers), sum(s.failures for s in shippers)
    print(f"ship: stopped after {uploaded} upload(s), {failed} failed", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m modelfleet.targets.kubernetes.ship", description=__doc__.split("\n")[0])
    p.add_argument("--blob-store", required=True, help="base URL of the blob store (http or https)")
    p.add_argument("--prefix", help="where under it the data goes: telemetry/<service>/data")
    p.add_argument("--dir", type=Path, help="the replica's data folder (with --prefix)")
    p.add_argument("--logs-prefix", help="where under it the log goes: telemetry/<service>/logs")
    p.add_argument("--logs-dir", type=Path, help="the replica's log folder, MODELFLEET_LOG_TEE (with --logs-prefix)")
    p.add_argument("--replica", help="the replica's URL: after SIGTERM, ship until it stops answering")
    p.add_argument("--grace", type=float, default=30.0, help="at most this long after SIGTERM (seconds)")
    args = p.parse_args(argv)
    pairs = [(args.prefix, args.dir, ".jsonl"), (args.logs_prefix, args.logs_dir, ".log")]
    if any((prefix is None) != (folder is None) for prefix, folder, _ in pairs) or not any(f for _, f, _ in pairs):
        p.error("give --prefix with --dir, --logs-prefix with --logs-dir, or both pairs")
    try:
        credential = credential_from_env()
        shippers = [
            Shipper(args.blob_store, prefix, folder, credential, suffix)
            for prefix, folder, suffix in pairs
            if folder is not None
        ]
    except FetchError as e:
        print(f"ship: {e}", file=sys.stderr)
        return 1
    for shipper in shippers:
        shipper.folder.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    for shipper in shippers:
        print(f"ship: uploading {shipper.folder} to {args.blob_store}/{shipper.prefix}", flush=True)
    run(shippers, stop, args.replica, args.grace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
