"""Resumable uploads of one content-addressed blob: where each backend keeps the blocks of an upload in progress.

Theory of operation. A blob is uploaded in blocks of a fixed size to a temporary name that
depends only on its content, ``<prefix>/.tmp/<digest>``, never a random one: a put of the same
bytes run again after a kill finds what the earlier run stored, keeps it, and sends only the
rest. Which block holds which bytes follows from the digest, the block size and the block's
index alone, so a stored block is recognised by its name and size without reading it back; the
whole object is read back and its sha256 checked once it is assembled, as before (a block that
was stored wrong fails that check, and the put then discards the upload and starts it again,
once). Each backend keeps the blocks with the mechanism it has for this (:class:`Staging`):

- ``az://``: staged blocks of a block blob (Put Block), ids ``<block size>-<index>``, found
  again with Get Block List (uncommitted); they are no object until Put Block List commits them.
  Azure drops uncommitted blocks after 7 days.
- ``s3://``: one multipart upload on the temporary key, found again with ListMultipartUploads
  and ListParts (part n is block n-1, recognised by its size). S3 keeps an incomplete multipart
  upload (and bills it) until it is aborted: a bucket lifecycle rule
  ``AbortIncompleteMultipartUpload`` does that, or ``SharedBlobStore.clean_uploads``.
- ``file://``: a file written in order, kept up to its last whole block (a torn tail is cut off),
  under an exclusive ``lockf`` lock so that two puts of one blob never write it at once.

Why these and not content-addressed part objects plus a manifest, which would be the same on
every backend: that layout puts a manifest, not the blob, under the final name, so every reader
(replicas, the Kubernetes init containers, ``workspace migrate``) would have to assemble parts,
and the parts would need a garbage collector. The native mechanisms keep one object per blob and
leave nothing of an abandoned upload that the service cannot expire or list.

Worked example: a 22 MiB blob in 5 MiB blocks is 5 blocks (4 of 5 MiB and one of 2 MiB). A
put killed after 2 blocks leaves blocks 0 and 1 staged; run again, it finds them (10 MiB), sends
blocks 2-4 (12 MiB), commits, reads 22 MiB back, checks the sha256, and moves the object to its
final name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

MIB = 1024 * 1024
MAX_BLOCKS = 10_000  # S3's limit on the parts of one upload (Azure allows 50,000 blocks)
MIN_S3_BLOCK = 5 * MIB  # S3 refuses a part under 5 MiB (the last excepted)
MAX_BLOCK = 4000 * MIB  # Azure's largest block (S3 allows 5 GiB)
_READ = 4 * MIB


@dataclass(frozen=True)
class Progress:
    """Where one put stands: told to a progress callback after each stored block, and kept as
    ``SharedBlobStore.last_upload`` when it ends."""

    digest: str
    size: int  # the blob's size in bytes
    stored: int  # bytes of the blob the store holds now: kept from an earlier try, plus sent
    sent: int  # bytes this put has sent


ProgressFn = Callable[[Progress], None]


def block_size_for(size: int, block_size: int) -> int:
    """The block size an upload of ``size`` bytes uses: ``block_size``, grown (to a whole MiB)
    only where the blob would otherwise need more than MAX_BLOCKS blocks (over 80 GB at 8 MiB)."""
    if size <= block_size * MAX_BLOCKS:
        return block_size
    need = -(-size // MAX_BLOCKS)
    return -(-need // MIB) * MIB


def plan_blocks(size: int, block_size: int) -> list[tuple[int, int]]:
    """(offset, length) of each block; an empty blob is one empty block."""
    if size == 0:
        return [(0, 0)]
    return [(offset, min(block_size, size - offset)) for offset in range(0, size, block_size)]


class Staging(Protocol):
    """One backend's way of keeping the blocks of an upload under the temporary name."""

    in_order: bool  # whether blocks must be sent one at a time, in order (else several at once)

    def __enter__(self) -> Staging: ...

    def __exit__(self, *exc: object) -> None: ...

    def assembled_size(self) -> int | None:
        """The size of the assembled temporary object if there is one (a put killed after it
        was committed), else None."""
        ...

    def stored(self, blocks: list[tuple[int, int]]) -> set[int]:
        """The indexes of the blocks the store already holds for this upload."""
        ...

    def send(self, index: int, data: bytes) -> None: ...

    def commit(self, blocks: list[tuple[int, int]]) -> None:
        """Assemble the blocks into the temporary object."""
        ...

    def read_back(self) -> str:
        """The sha256 of the assembled temporary object, read from the store."""
        ...

    def promote(self, final: str) -> None:
        """Put the checked object under its final name (whole or not at all) and remove the
        temporary one."""
        ...

    def discard(self) -> None:
        """Remove everything of this upload: blocks, pending upload, temporary object."""
        ...


def _hash_object(fs: Any, key: str) -> str:
    hasher = hashlib.sha256()
    with fs.open(key, "rb", block_size=_READ) as f:
        while chunk := f.read(_READ):
            hasher.update(chunk)
    return hasher.hexdigest()


def _size_or_none(fs: Any, key: str) -> int | None:
    try:
        return int(fs.info(key)["size"])
    except FileNotFoundError:
        return None


# -- Azure: staged blocks ------------------------------------------------------------------


class AzureStaging:
    in_order = False

    def __init__(self, fs: Any, key: str, block_size: int) -> None:
        from fsspec.asyn import sync

        self.fs, self.key, self.block_size = fs, key, block_size
        container, blob = key.split("/", 1)
        self._container, self._blob = container, blob
        self._client = fs.service_client.get_blob_client(container, blob)
        self._sync: Callable[..., Any] = lambda fn, *a, **kw: sync(fs.loop, fn, *a, **kw)

    def __enter__(self) -> AzureStaging:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _id(self, index: int) -> str:
        # Every id of one blob must have the same length; the block size is in it so that a
        # rerun with another block size never mistakes a block for one of its own.
        return f"{self.block_size:012d}-{index:06d}"

    def assembled_size(self) -> int | None:
        return _size_or_none(self.fs, self.key)

    def stored(self, blocks: list[tuple[int, int]]) -> set[int]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            _, uncommitted = self._sync(self._client.get_block_list, "uncommitted")
        except ResourceNotFoundError as exc:
            if "ContainerNotFound" in str(getattr(exc, "error_code", "")):
                raise FileNotFoundError(self._container) from exc
            return set()  # no blob and no block under this name
        have = {b.id: b.size for b in uncommitted}
        return {i for i, (_, length) in enumerate(blocks) if have.get(self._id(i)) == length}

    def send(self, index: int, data: bytes) -> None:
        self._sync(self._client.stage_block, block_id=self._id(index), data=data, length=len(data))

    def commit(self, blocks: list[tuple[int, int]]) -> None:
        from azure.storage.blob import BlobBlock

        ids = [BlobBlock(self._id(i)) for i, (_, length) in enumerate(blocks) if length]
        if ids:
            self._sync(self._client.commit_block_list, ids)
        else:
            self._sync(self._client.upload_blob, b"", overwrite=True)
        self.fs.invalidate_cache(self.key)

    def read_back(self) -> str:
        return _hash_object(self.fs, self.key)

    def promote(self, final: str) -> None:
        # A server-side copy; it can finish asynchronously on Azure, so wait for it before the
        # source is deleted. The copy is whole or not at all: readers never see part of it.
        container, blob = final.split("/", 1)
        target = self.fs.service_client.get_blob_client(container, blob)
        copy = self._sync(target.start_copy_from_url, self._client.url)
        status, delay = copy.get("copy_status"), 0.05
        while status == "pending":
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            status = self._sync(target.get_blob_properties).copy.status
        if status not in ("success", None):
            raise OSError(f"the server-side copy of {self.key} to {final} ended {status!r}")
        self.fs.invalidate_cache(final)
        self.discard()

    def discard(self) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._sync(self._client.delete_blob)
        except ResourceNotFoundError:
            # Azure will not delete a blob that has uncommitted blocks only: commit none, so
            # that it is an empty blob, and delete that (both a no-op when nothing is there).
            with contextlib.suppress(ResourceNotFoundError):
                self._sync(self._client.commit_block_list, [])
                self._sync(self._client.delete_blob)
        self.fs.invalidate_cache(self.key)


# -- S3: one multipart upload --------------------------------------------------------------


class S3Staging:
    in_order = False

    def __init__(self, fs: Any, key: str, block_size: int) -> None:
        self.fs, self.key, self.block_size = fs, key, block_size
        self._bucket, self._name = key.split("/", 1)
        self._upload_id: str | None = None
        self._starting = threading.Lock()  # the first two blocks must not start two uploads
        self._etags: dict[int, str] = {}  # part number -> ETag, for the completion

    def __enter__(self) -> S3Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _call(self, method: str, **kwargs: Any) -> Any:
        return self.fs.call_s3(method, Bucket=self._bucket, **kwargs)

    def pending_uploads(self) -> list[str]:
        """The ids of the multipart uploads in progress on the temporary key."""
        ids: list[str] = []
        marker: dict[str, str] = {}
        while True:
            out = self._call("list_multipart_uploads", Prefix=self._name, **marker)
            ids += [u["UploadId"] for u in out.get("Uploads", []) if u["Key"] == self._name]
            if not out.get("IsTruncated"):
                return ids
            marker = {"KeyMarker": out["NextKeyMarker"], "UploadIdMarker": out["NextUploadIdMarker"]}

    def _parts(self, upload_id: str) -> dict[int, tuple[int, str]]:
        parts: dict[int, tuple[int, str]] = {}
        marker = 0
        while True:
            out = self._call("list_parts", Key=self._name, UploadId=upload_id, PartNumberMarker=marker)
            for p in out.get("Parts", []):
                parts[int(p["PartNumber"])] = (int(p["Size"]), str(p["ETag"]))
            if not out.get("IsTruncated"):
                return parts
            marker = int(out["NextPartNumberMarker"])

    def assembled_size(self) -> int | None:
        return _size_or_none(self.fs, self.key)

    def stored(self, blocks: list[tuple[int, int]]) -> set[int]:
        best: tuple[int, str, dict[int, tuple[int, str]]] | None = None
        for upload_id in self.pending_uploads():
            parts = self._parts(upload_id)
            usable = {n: p for n, p in parts.items() if 0 < n <= len(blocks) and p[0] == blocks[n - 1][1]}
            if best is None or len(usable) > best[0]:
                best = (len(usable), upload_id, usable)
        if best is None:
            return set()
        _, self._upload_id, usable = best
        self._etags = {n: etag for n, (_, etag) in usable.items()}
        return {n - 1 for n in usable}

    def send(self, index: int, data: bytes) -> None:
        with self._starting:
            if self._upload_id is None:
                self._upload_id = self._call("create_multipart_upload", Key=self._name)["UploadId"]
        out = self._call("upload_part", Key=self._name, UploadId=self._upload_id, PartNumber=index + 1, Body=data)
        self._etags[index + 1] = out["ETag"]

    def commit(self, blocks: list[tuple[int, int]]) -> None:
        if self._upload_id is None:  # an empty blob: no part was sent
            self.fs.pipe_file(self.key, b"")
            return
        parts = [{"PartNumber": n, "ETag": self._etags[n]} for n in range(1, len(blocks) + 1)]
        self._call(
            "complete_multipart_upload", Key=self._name, UploadId=self._upload_id, MultipartUpload={"Parts": parts}
        )
        self._upload_id = None
        self.fs.invalidate_cache(self.key)

    def read_back(self) -> str:
        return _hash_object(self.fs, self.key)

    def promote(self, final: str) -> None:
        self.fs.copy(self.key, final)  # CopyObject (multipart copy over 5 GB): whole or not at all
        self.discard()

    def discard(self) -> None:
        for upload_id in self.pending_uploads():
            with contextlib.suppress(FileNotFoundError):  # another put completed or aborted it
                self._call("abort_multipart_upload", Key=self._name, UploadId=upload_id)
        self._upload_id, self._etags = None, {}
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.key)
        self.fs.invalidate_cache(self.key)


# -- file://: a file written in order, under a lock ------------------------------------------


class FileStaging:
    in_order = True  # so that what a killed put leaves is a prefix of the blob

    def __init__(self, key: str, block_size: int) -> None:
        self.key, self.block_size = key, block_size
        self._fd = -1

    def __enter__(self) -> FileStaging:
        os.makedirs(os.path.dirname(self.key), exist_ok=True)
        self._fd = os.open(self.key, os.O_RDWR | os.O_CREAT, 0o644)
        # Held until the put ends; a killed process's lock goes with it. Another put of the same
        # blob waits here, and then finds the blob under its final name.
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)
        self._fd = -1

    def still_ours(self) -> bool:
        """Whether the temporary path still names the file this put holds (another put that
        held the lock before may have moved it to its final name)."""
        try:
            return os.path.samestat(os.fstat(self._fd), os.stat(self.key))
        except FileNotFoundError:
            return False

    def assembled_size(self) -> int | None:
        return None  # the file is the blocks: stored() finds them

    def stored(self, blocks: list[tuple[int, int]]) -> set[int]:
        have = os.fstat(self._fd).st_size
        kept = sum(1 for offset, length in blocks if length and offset + length <= have)
        # Blocks are written in order: keep the whole ones at the front, cut a torn tail.
        offset, length = blocks[kept] if kept < len(blocks) else (blocks[-1][0] + blocks[-1][1], 0)
        os.ftruncate(self._fd, offset)
        return set(range(kept))

    def send(self, index: int, data: bytes) -> None:
        os.pwrite(self._fd, data, index * self.block_size)

    def commit(self, blocks: list[tuple[int, int]]) -> None:
        offset, length = blocks[-1]
        os.ftruncate(self._fd, offset + length)
        os.fsync(self._fd)

    def read_back(self) -> str:
        hasher = hashlib.sha256()
        offset = 0
        while chunk := os.pread(self._fd, _READ, offset):
            hasher.update(chunk)
            offset += len(chunk)
        return hasher.hexdigest()

    def promote(self, final: str) -> None:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.replace(self.key, final)  # a rename: atomic on one file system

    def discard(self) -> None:
        if self.still_ours():
            os.unlink(self.key)


def staging_for(scheme: str, fs: Any, key: str, block_size: int) -> Staging:
    if scheme in ("az", "abfs"):
        return AzureStaging(fs, key, block_size)
    if scheme == "s3":
        return S3Staging(fs, key, block_size)
    return FileStaging(key, block_size)


# -- what an upload that never resumes leaves ----------------------------------------------


def clean_uploads(scheme: str, fs: Any, tmp_prefix: str, cutoff: float) -> int:
    """Remove what uploads under ``tmp_prefix`` (``<prefix>/.tmp``) last touched before
    ``cutoff`` (epoch seconds) left: Azure blobs with uncommitted blocks only and committed
    temporary blobs, S3 multipart uploads and temporary objects, ``file://`` partial files (one
    a live put holds locked is skipped). Returns how many it removed."""
    if scheme in ("az", "abfs"):
        return _clean_azure(fs, tmp_prefix, cutoff)
    if scheme == "s3":
        return _clean_s3(fs, tmp_prefix, cutoff)
    return _clean_files(tmp_prefix, cutoff)


def _clean_azure(fs: Any, tmp_prefix: str, cutoff: float) -> int:
    from fsspec.asyn import sync

    container, path = tmp_prefix.split("/", 1)

    async def stale() -> list[str]:
        client = fs.service_client.get_container_client(container)
        listing = client.list_blobs(name_starts_with=f"{path}/", include=["uncommittedblobs"])
        return [b.name async for b in listing if b.last_modified.timestamp() < cutoff]

    names = sync(fs.loop, stale)
    for name in names:
        AzureStaging(fs, f"{container}/{name}", 0).discard()
    return len(names)


def _clean_s3(fs: Any, tmp_prefix: str, cutoff: float) -> int:
    bucket, path = tmp_prefix.split("/", 1)
    removed = 0
    marker: dict[str, str] = {}
    while True:
        out = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=f"{path}/", **marker)
        for upload in out.get("Uploads", []):
            if upload["Initiated"].timestamp() < cutoff:
                with contextlib.suppress(FileNotFoundError):
                    fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                    removed += 1
        if not out.get("IsTruncated"):
            break
        marker = {"KeyMarker": out["NextKeyMarker"], "UploadIdMarker": out["NextUploadIdMarker"]}
    fs.invalidate_cache(tmp_prefix)
    for key, info in fs.find(tmp_prefix, detail=True).items():
        if info["LastModified"].timestamp() < cutoff:
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(key)
                removed += 1
    return removed


def _clean_files(tmp_prefix: str, cutoff: float) -> int:
    removed = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(tmp_prefix) as entries:
        for entry in entries:
            if not entry.is_file(follow_symlinks=False) or entry.stat().st_mtime >= cutoff:
                continue
            fd = os.open(entry.path, os.O_RDWR)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a put is writing it now
            else:
                os.unlink(entry.path)
                removed += 1
            finally:
                os.close(fd)
    return removed
