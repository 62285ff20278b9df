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

A private store's credential comes from the environment (the pod's Deployment fills it from
the blob store's Secret, ``manifests.blob_secret_name``) and goes with every blob request:

- ``MODELFLEET_BLOB_SAS``: a query string appended to each blob URL, e.g. an Azure SAS token
  for the container (``https://<account>.blob.core.windows.net/<container>/<prefix>?<sas>``);
- ``MODELFLEET_BLOB_TOKEN``: sent as ``Authorization: Bearer <token>`` (a blob server behind
  an auth proxy); not forwarded when a redirect leads to another host.

Either is refused over plain ``http://`` to anything but a loopback address (it would travel
in clear). Neither is ever printed: a failed fetch names the URL without the query.

Exit status 0 when everything is in place, 1 with one line on stderr otherwise (the kubelet
then restarts the init container with a back-off).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

_DIGEST = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1024 * 1024
_TIMEOUT_S = 60
SAS_ENV = "MODELFLEET_BLOB_SAS"
TOKEN_ENV = "MODELFLEET_BLOB_TOKEN"
_LOOPBACK_HOSTS = ("localhost", "::1")


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


class Credential:
    """A private blob store's credential: a query string (SAS) and/or a bearer token."""

    def __init__(self, sas: str | None = None, token: str | None = None) -> None:
        # a Secret made from a file often ends in a newline: surrounding whitespace is not part of it
        self.sas = (sas or "").strip().lstrip("?") or None
        self.token = (token or "").strip() or None

    def __repr__(self) -> str:  # never the values
        return f"Credential(sas={'***' if self.sas else None}, token={'***' if self.token else None})"

    def __bool__(self) -> bool:
        return bool(self.sas or self.token)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credential:
        env = os.environ if environ is None else environ
        return cls(env.get(SAS_ENV), env.get(TOKEN_ENV))

    def redact(self, text: str) -> str:
        for value in (self.sas, self.token):
            if value:
                text = text.replace(value, "***")
        return text


def is_loopback(host: str | None) -> bool:
    return bool(host) and (host in _LOOPBACK_HOSTS or host.startswith("127."))  # type: ignore[union-attr]


def check_base(base: str, credential: Credential) -> None:
    """A blob store URL the fetcher may use, with that credential (or none)."""
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("http", "https", "file"):
        public = urllib.parse.urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))
        raise FetchError(f"blob store URL must be http://, https:// or file:// (got {public!r})")
    if parts.query or parts.username or parts.password:
        raise FetchError(
            f"blob store URL must carry no query and no user:password (a credential comes from ${SAS_ENV} "
            f"or ${TOKEN_ENV})"
        )
    for var, value in ((SAS_ENV, credential.sas), (TOKEN_ENV, credential.token)):
        if value and not all("\x21" <= c <= "\x7e" for c in value):
            raise FetchError(f"${var} holds spaces or control characters (the value is not shown)")
    if credential and parts.scheme == "http" and not is_loopback(parts.hostname):
        raise FetchError(
            f"a blob store credential (${SAS_ENV}/${TOKEN_ENV}) would travel in clear to {base}: "
            "use an https:// blob store (plain http:// only to a loopback address)"
        )


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects; the bearer token only to the same scheme, host and port."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            old, nxt = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(new.full_url)
            if (old.scheme, old.netloc) != (nxt.scheme, nxt.netloc):
                new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_Redirects)


def _refused(status: int, credential: Credential) -> str:
    if status not in (401, 403):
        return ""
    if credential:
        return " (the blob store refused the credential from the blob store's Secret: expired or wrong?)"
    return (
        f" (no credential was given: a private store needs one, ${SAS_ENV} or ${TOKEN_ENV} from the "
        "blob store's Secret; attach the compute target with blob_store_sas or blob_store_token)"
    )


def download(base: str, digest: str, target: Path, credential: Credential | None = None) -> None:
    """Write the blob to ``target`` (atomically), refusing bytes that do not hash to ``digest``."""
    credential = credential or Credential()
    url = blob_url(base, digest)  # what messages name: never the query
    check_base(base, credential)
    request = urllib.request.Request(f"{url}?{credential.sas}" if credential.sas else url)
    if credential.token:
        request.add_header("Authorization", f"Bearer {credential.token}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".fetch-")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with _OPENER.open(request, timeout=_TIMEOUT_S) as r:
                    while chunk := r.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
            except (OSError, http.client.HTTPException) as e:  # URLError and HTTPError are OSErrors
                status = e.code if isinstance(e, urllib.error.HTTPError) else 0
                why = credential.redact(str(e)) + _refused(status, credential)
                raise FetchError(f"cannot fetch blob {digest} from {url}: {why}") from None
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


def fetch(base: str, layout: dict[str, Any], dest: Path, credential: Credential | None = None) -> int:
    """Lay out every file of ``layout`` under ``dest``; returns how many blobs were fetched."""
    count = 0
    for f in layout.get("files", []):
        download(base, f["digest"], _inside(dest, f["path"]), credential)
        count += 1
    snapshot = layout.get("snapshot")
    source_dir = _inside(dest, layout.get("source_name") or "source")
    source_dir.mkdir(parents=True, exist_ok=True)
    if snapshot:
        zip_path = dest / f".snapshot-{snapshot}.zip"
        try:
            download(base, snapshot, zip_path, credential)
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
        n = fetch(args.blob_store, layout, args.dest, Credential.from_env())
    except FetchError as e:
        print(f"fetch: {e}", file=sys.stderr)
        return 1
    print(f"fetch: {n} blob(s) laid out in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
