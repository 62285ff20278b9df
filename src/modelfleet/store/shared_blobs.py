"""Blobs in an object store a team shares (Azure Blob ``az://``, S3 ``s3://``, or ``file://``), through fsspec.

Theory of operation. The store is content-addressed as on disk: ``<prefix>/ab/cdef...`` holds
the bytes whose sha256 is ``abcdef...``. The workspace's own ``blobs/`` folder is the local
read cache (a :class:`BlobStore`): whatever this machine put or fetched is read from there,
so deploying an unchanged model does not download it again.

A put hashes the file into the cache first (streamed, never whole in memory), then uploads
the cached file in blocks (8 MiB by default, two in flight at a time) to the temporary name
``<prefix>/.tmp/<digest>``, assembles them there, reads that object back to check its sha256,
and only then moves it to its final name (a server-side copy, or a rename on ``file://``) and
removes everything of the upload. A reader therefore sees under a final name only bytes whose
hash was checked. The temporary name depends only on the content, so a put killed midway and
run again resumes: it finds the blocks the first run stored and sends only the others.
``resumable.py`` says how each backend keeps them (Azure staged blocks, an S3 multipart upload,
a partial file) and why those rather than part objects and a manifest. An upload that is never
resumed leaves its blocks in ``.tmp/`` only: Azure drops them after 7 days; S3 keeps them until
a lifecycle rule (``AbortIncompleteMultipartUpload``) or :meth:`SharedBlobStore.clean_uploads`
removes them; on ``file://`` ``clean_uploads`` removes the partial file. A fetch streams the
object into the cache's temporary folder, hashing as it goes, and installs it only if the hash
matches its name.

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
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from modelfleet.errors import ConfigError, NotFound, StoreBusy
from modelfleet.store.blobs import BlobStore, check_digest
from modelfleet.store.resumable import (
    MAX_BLOCK,
    MIN_S3_BLOCK,
    Progress,
    ProgressFn,
    Staging,
    block_size_for,
    clean_uploads,
    plan_blocks,
    staging_for,
)

SCHEMES = {"az": "azure", "abfs": "azure", "s3": "s3", "file": None}  # scheme -> modelfleet's extra
_CHUNK = 4 * 1024 * 1024
UPLOAD_BLOCK = 8 * 1024 * 1024  # the default block size of an upload (S3 parts must be at least 5 MiB)
UPLOAD_CONCURRENCY = 2  # blocks in flight at once by default: 16 MiB of memory at most
STALE_UPLOAD_S = 7 * 24 * 3600  # clean_uploads' default: as long as Azure keeps uncommitted blocks


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

    def __init__(
        self,
        url: str,
        cache: BlobStore,
        *,
        fs: Any = None,
        block_size: int = UPLOAD_BLOCK,
        concurrency: int = UPLOAD_CONCURRENCY,
        progress: ProgressFn | None = None,
    ) -> None:
        self.url = url
        self.scheme, self.prefix = parse_blob_store_url(url)
        smallest = MIN_S3_BLOCK if self.scheme == "s3" else 64 * 1024
        if not smallest <= block_size <= MAX_BLOCK:
            raise ConfigError(
                f"block_size {block_size} is out of range for {self.scheme}:// blob stores: "
                f"{smallest} to {MAX_BLOCK} bytes"
            )
        if not 1 <= concurrency <= 16:
            raise ConfigError(f"concurrency {concurrency} is out of range: 1 to 16 blocks in flight")
        self.cache = cache
        self.fs = fs if fs is not None else _filesystem(self.scheme)
        self.block_size = block_size
        self.concurrency = concurrency  # blocks in flight at once (az, s3): what hides round trips
        self.progress = progress  # called after each block a put stores (a progress bar; tests)
        self.last_upload: Progress | None = None  # how the last put went: bytes kept, bytes sent
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

    def clean_uploads(self, older_than_s: float = STALE_UPLOAD_S, *, now: float | None = None) -> int:
        """Remove what puts that never resumed left in ``.tmp/`` (blocks, pending multipart
        uploads, temporary objects) untouched for ``older_than_s`` seconds; a final blob is never
        touched. Returns how many uploads it removed."""
        cutoff = (time.time() if now is None else now) - older_than_s
        with self._errors("clean up"):
            return clean_uploads(self.scheme, self.fs, f"{self.prefix}/.tmp", cutoff)

    # internals

    def _key(self, digest: str) -> str:
        return f"{self.prefix}/{digest[:2]}/{digest[2:]}"

    def _upload(self, digest: str) -> None:
        self.last_upload = None  # None after a put another put of the same bytes finished first
        local = self.cache.path(digest)
        size = local.stat().st_size
        final = self._key(digest)
        with self._errors("upload to"):
            if self.fs.exists(final):  # content-addressed: what is there under this name has these bytes
                self.last_upload = Progress(digest, size, size, 0)
                return
            block = block_size_for(size, self.block_size)
            try:
                with staging_for(self.scheme, self.fs, f"{self.prefix}/.tmp/{digest}", block) as staging:
                    if self.scheme == "file" and os.path.exists(final):
                        staging.discard()  # another put of these bytes held the lock, and finished
                        self.last_upload = Progress(digest, size, size, 0)
                        return
                    self.last_upload = self._upload_checked(staging, local, digest, plan_blocks(size, block))
                    staging.promote(final)
            except Exception:
                # Another put of the same bytes may have finished first (and removed the blocks
                # this one was using): then the blob is there, whole and checked.
                with contextlib.suppress(Exception):
                    self.fs.invalidate_cache(final)
                    if self.fs.exists(final):
                        return
                raise

    def _upload_checked(self, staging: Staging, local: Path, digest: str, blocks: list[tuple[int, int]]) -> Progress:
        """Send the blocks the store lacks, assemble them, read the object back and check its
        hash; on a mismatch send every block again, once, before giving up."""
        size = blocks[-1][0] + blocks[-1][1]
        if staging.assembled_size() == size:  # a put killed after assembling, before the move
            done = Progress(digest, size, size, 0)
        else:
            done = self._send(staging, local, digest, blocks, staging.stored(blocks))
        if staging.read_back() == digest:
            return done
        done = self._send(staging, local, digest, blocks, set())
        got = staging.read_back()
        if got != digest:
            staging.discard()
            raise BlobStoreError(
                f"blob store {self.url}: the uploaded copy of blob {digest} reads back as {got}; "
                "nothing was registered: retry, and check the store's health"
            )
        return done

    def _send(
        self, staging: Staging, local: Path, digest: str, blocks: list[tuple[int, int]], stored: set[int]
    ) -> Progress:
        """Send the blocks not in ``stored``, ``self.concurrency`` at a time (one where the
        backend needs them in order), each read only when a slot is free: that many blocks in
        memory at most. Then assemble them."""
        size = blocks[-1][0] + blocks[-1][1]
        done = Progress(digest, size, sum(blocks[i][1] for i in stored), 0)
        if self.progress is not None:
            self.progress(done)
        slots = 1 if staging.in_order else self.concurrency
        in_flight: dict[Future[None], int] = {}

        def settle(until: int) -> None:
            nonlocal done
            while len(in_flight) > until:
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    length = in_flight.pop(future)
                    future.result()
                    done = Progress(digest, size, done.stored + length, done.sent + length)
                    if self.progress is not None:
                        self.progress(done)

        with open(local, "rb") as src, ThreadPoolExecutor(slots, "blob-upload") as pool:
            for index, (offset, length) in enumerate(blocks):
                if index in stored or length == 0:
                    continue
                settle(slots - 1)
                src.seek(offset)
                in_flight[pool.submit(staging.send, index, src.read(length))] = length
            settle(0)
        staging.commit(blocks)
        return done

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
