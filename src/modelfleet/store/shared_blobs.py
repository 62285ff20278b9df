"""Blobs in an object store a team shares (Azure Blob ``az://``, S3 ``s3://``, or ``file://``), through fsspec.

Theory of operation. The store is content-addressed as on disk: ``<prefix>/ab/cdef...`` holds
the bytes whose sha256 is ``abcdef...``. The workspace's own ``blobs/`` folder is the local
read cache (a :class:`BlobStore`): whatever this machine put or fetched is read from there,
so deploying an unchanged model does not download it again.

A put hashes the file into the cache first (streamed, never whole in memory), then uploads
the cached file to ``<prefix>/.tmp/<digest>.<random>`` in 8 MiB blocks, reads
that object back to check its sha256, and only then copies it, server-side, to its final
name and removes the temporary one. A reader therefore sees under a final name only bytes
whose hash was checked; an interrupted put leaves at most a ``.tmp/`` object, never a wrong
blob. A fetch streams the object into the cache's temporary folder, hashing as it goes, and
installs it only if the hash matches its name.

Credentials never live in the workspace: the URL names the container or bucket, and the
libraries read their secrets from the environment (Azure: ``AZURE_STORAGE_CONNECTION_STRING``
or ``AZURE_STORAGE_ACCOUNT_NAME`` + ``AZURE_STORAGE_ACCOUNT_KEY``; S3: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for a server other than AWS). Every failure
names the store and says whether it was missing, denied or unreachable.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from modelfleet.errors import ConfigError, NotFound, StoreBusy
from modelfleet.store.blobs import BlobStore, check_digest

SCHEMES = {"az": "azure", "abfs": "azure", "s3": "s3", "file": None}  # scheme -> modelfleet's extra
_CHUNK = 4 * 1024 * 1024
_UPLOAD_BLOCK = 8 * 1024 * 1024  # S3 parts must be at least 5 MiB


class BlobStoreError(StoreBusy):
    """The shared blob store failed: which one, and how."""


def parse_blob_store_url(url: str) -> tuple[str, str]:
    """``az://container/prefix`` → ("az", "container/prefix"); refuses what fsspec would misread."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ConfigError(
            f"blob store {url!r} is not supported; use az://CONTAINER/PREFIX, s3://BUCKET/PREFIX or file:///PATH"
        )
    if parts.scheme == "file":
        if parts.netloc or not parts.path.startswith("/"):
            raise ConfigError(f"blob store {url!r} must be an absolute file:///PATH")
        return "file", parts.path.rstrip("/") or "/"
    if parts.username or parts.password or parts.query:
        raise ConfigError(
            f"blob store URL {parts.scheme}://{parts.hostname}/... holds credentials or options; they would be "
            "written into workspace.json: set them in the environment instead (see the README)"
        )
    if not parts.netloc:
        raise ConfigError(f"blob store {url!r} must name a container or bucket: {parts.scheme}://NAME/PREFIX")
    return parts.scheme, f"{parts.netloc}{parts.path}".rstrip("/")


def _filesystem(scheme: str) -> Any:
    import fsspec

    try:
        return fsspec.filesystem(scheme, skip_instance_cache=True)
    except ImportError as exc:
        raise ConfigError(
            f"a {scheme}:// blob store needs an extra: pip install 'modelfleet[{SCHEMES[scheme]}]' ({exc})"
        ) from exc


class SharedBlobStore:
    """The same methods as :class:`BlobStore`, over an fsspec file system, with a local read cache."""

    def __init__(self, url: str, cache: BlobStore, *, fs: Any = None) -> None:
        self.url = url
        self.scheme, self.prefix = parse_blob_store_url(url)
        self.cache = cache
        self.fs = fs if fs is not None else _filesystem(self.scheme)
        # What callers of BlobStore use for their own temporary files (snapshots).
        self.root = cache.root
        self.tmp_dir = cache.tmp_dir

    def __repr__(self) -> str:
        return f"<SharedBlobStore {self.url} cache={self.cache.root}>"

    def ensure(self) -> None:
        """Create the cache; check the container or bucket exists and can be listed (it is not created)."""
        self.cache.ensure()
        with self._errors("reach"):
            if self.scheme == "file":
                self.fs.makedirs(self.prefix, exist_ok=True)
            else:
                # A listing, not exists(): adlfs answers exists() for a container it cannot read
                # with True (and a warning), so a wrong key would pass unnoticed until the first upload.
                self.fs.ls(self.prefix.split("/", 1)[0], detail=False)

    def put_file(self, path: Path, *, move: bool = False) -> str:
        digest = self.cache.put_file(path, move=move)
        self._upload(digest)
        return digest

    def put_bytes(self, data: bytes) -> str:
        digest = self.cache.put_bytes(data)
        self._upload(digest)
        return digest

    def has(self, digest: str) -> bool:
        if check_digest(digest, strict=False) is None:
            return False
        with self._errors("look up a blob in"):
            return bool(self.fs.exists(self._key(digest)))

    def path(self, digest: str) -> Path:
        """The blob as a local file (read-only, in the cache), fetched and checked if not cached yet."""
        check_digest(digest)
        if not self.cache.has(digest):
            self._fetch(digest)
        return self.cache.path(digest)

    def open(self, digest: str) -> BinaryIO:
        return open(self.path(digest), "rb")

    def copy_out(self, digest: str, target: Path) -> None:
        self.path(digest)
        self.cache.copy_out(digest, target)

    def new_temp_path(self, suffix: str = "") -> Path:
        return self.cache.new_temp_path(suffix)

    # internals

    def _key(self, digest: str) -> str:
        return f"{self.prefix}/{digest[:2]}/{digest[2:]}"

    def _upload(self, digest: str) -> None:
        final = self._key(digest)
        with self._errors("upload to"):
            if self.fs.exists(final):
                return  # content-addressed: what is there under this name has these bytes
            tmp = f"{self.prefix}/.tmp/{digest}.{secrets.token_hex(8)}"
            if self.scheme == "file":
                self.fs.makedirs(f"{self.prefix}/.tmp", exist_ok=True)
            try:
                self._stream_up(self.cache.path(digest), tmp)
                got = self._hash_remote(tmp)
                if got != digest:
                    raise BlobStoreError(
                        f"blob store {self.url}: the uploaded copy of blob {digest} reads back as {got}; "
                        "nothing was registered: retry, and check the store's health"
                    )
                if self.scheme == "file":
                    self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
                    os.replace(tmp, final)  # a rename: atomic on one file system
                else:
                    self.fs.copy(tmp, final)  # server-side; an object appears whole or not at all
            finally:
                with contextlib.suppress(FileNotFoundError, OSError):
                    self.fs.rm_file(tmp)

    def _stream_up(self, local: Path, key: str) -> None:
        # Written block by block (a block of S3's multipart upload, a staged Azure block): at most
        # one block in memory, whatever the file's size, and nothing under ``key`` until close().
        with open(local, "rb") as src, self.fs.open(key, "wb", block_size=_UPLOAD_BLOCK) as dst:
            shutil.copyfileobj(src, dst, _CHUNK)

    def _hash_remote(self, key: str) -> str:
        hasher = hashlib.sha256()
        with self.fs.open(key, "rb", block_size=_CHUNK) as f:
            while chunk := f.read(_CHUNK):
                hasher.update(chunk)
        return hasher.hexdigest()

    def _fetch(self, digest: str) -> None:
        tmp = self.cache.new_temp_path()
        try:
            hasher = hashlib.sha256()
            with self._errors("download from"):
                try:
                    src = self.fs.open(self._key(digest), "rb", block_size=_CHUNK)
                except FileNotFoundError:
                    raise NotFound(
                        f"blob {digest} is missing from the blob store {self.url}; it was removed or never "
                        "uploaded: register the model or deploy the source again"
                    ) from None
                with src, open(tmp, "wb") as dst:
                    while chunk := src.read(_CHUNK):
                        hasher.update(chunk)
                        dst.write(chunk)
                    dst.flush()
                    os.fsync(dst.fileno())
            if hasher.hexdigest() != digest:
                raise BlobStoreError(
                    f"blob {digest} downloaded from {self.url} has sha256 {hasher.hexdigest()}: the stored "
                    "object is corrupt; delete it from the store and register the model again"
                )
            self.cache.put_file(tmp, move=True)
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Say which store failed and how; NotFound and our own errors pass through."""
        try:
            yield
        except (NotFound, ConfigError, BlobStoreError):
            raise
        except FileNotFoundError as exc:
            raise BlobStoreError(
                f"could not {doing} the blob store {self.url}: its container or bucket is missing ({exc}); "
                "create it, or fix the URL"
            ) from exc
        except PermissionError as exc:
            raise BlobStoreError(
                f"could not {doing} the blob store {self.url}: access denied ({exc}); check the credentials "
                "in the environment (see the README: blob stores)"
            ) from exc
        except Exception as exc:  # each library raises its own (aiohttp, botocore, azure.core)
            if getattr(exc, "status_code", None) in (401, 403):  # azure.core's HttpResponseError
                raise BlobStoreError(
                    f"could not {doing} the blob store {self.url}: access denied ({str(exc).splitlines()[0]}); "
                    "check the credentials in the environment (see the README: blob stores)"
                ) from exc
            raise BlobStoreError(
                f"could not {doing} the blob store {self.url}: {type(exc).__name__}: {exc}; check that it is "
                "reachable and the credentials in the environment"
            ) from exc
