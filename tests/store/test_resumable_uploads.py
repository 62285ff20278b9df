"""Resumable uploads to a shared blob store, on Azurite, moto's server (an S3 stand-in) and file://.

A put runs in a child process that is SIGKILLed once the store holds some of its blocks (seen
from the store, through the backend's own client library: boto3, azure-storage-blob, the file
system), then runs again here and must send only the rest. What each backend holds of an
upload in progress is read the same independent way, to check that nothing is left over.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from object_servers import BlobBackend

from modelfleet.errors import ConfigError
from modelfleet.store.blobs import BlobStore
from modelfleet.store.resumable import MIB, Progress, block_size_for, plan_blocks
from modelfleet.store.shared_blobs import SharedBlobStore

pytestmark = pytest.mark.filterwarnings("ignore:Sending a large body directly with raw bytes")

BLOCK = 5 * MIB  # S3's smallest part


def _azure_container(backend: BlobBackend, store: SharedBlobStore) -> object:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(backend.env["AZURE_STORAGE_CONNECTION_STRING"])
    return service.get_container_client(store.prefix.split("/", 1)[0])


def _s3(backend: BlobBackend) -> object:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=backend.env["AWS_ENDPOINT_URL"],
        aws_access_key_id=backend.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=backend.env["AWS_SECRET_ACCESS_KEY"],
        region_name=backend.env["AWS_DEFAULT_REGION"],
    )


def _pending_bytes(backend: BlobBackend, store: SharedBlobStore, digest: str) -> int:
    """Bytes of the upload of ``digest`` in progress that the store holds: Azure's uncommitted
    blocks, the parts of S3's multipart uploads, the partial file."""
    tmp = f"{store.prefix}/.tmp/{digest}"
    bucket, key = tmp.split("/", 1)
    if backend.kind == "file":
        return os.stat(tmp).st_size if os.path.exists(tmp) else 0
    if backend.kind == "azurite":
        from azure.core.exceptions import ResourceNotFoundError

        try:
            _, uncommitted = _azure_container(backend, store).get_blob_client(key).get_block_list("uncommitted")  # type: ignore[attr-defined]
        except ResourceNotFoundError:
            return 0
        return sum(b.size for b in uncommitted)
    s3 = _s3(backend)
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])  # type: ignore[attr-defined]
    parts = [s3.list_parts(Bucket=bucket, Key=key, UploadId=u["UploadId"]).get("Parts", []) for u in uploads]  # type: ignore[attr-defined]
    return sum(p["Size"] for ps in parts for p in ps)


def _everything(backend: BlobBackend, store: SharedBlobStore) -> list[str]:
    """Every object, uncommitted blob, pending multipart upload or file under the store's prefix."""
    bucket, path = store.prefix.split("/", 1)
    if backend.kind == "file":
        return sorted(os.path.join(d, f) for d, _, files in os.walk(store.prefix) for f in files)
    if backend.kind == "azurite":
        listing = _azure_container(backend, store).list_blobs(name_starts_with=f"{path}/", include=["uncommittedblobs"])  # type: ignore[attr-defined]
        return sorted(f"{bucket}/{b.name}" for b in listing)
    s3 = _s3(backend)
    objects = s3.list_objects_v2(Bucket=bucket, Prefix=f"{path}/").get("Contents", [])  # type: ignore[attr-defined]
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])  # type: ignore[attr-defined]
    return sorted([f"{bucket}/{o['Key']}" for o in objects] + [f"pending upload {u['Key']}" for u in uploads])


def _random_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


_PUT_THEN_HANG = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from modelfleet.store.blobs import BlobStore
    from modelfleet.store.shared_blobs import SharedBlobStore

    block = int(sys.argv[4])

    def hang_after_two_blocks(progress):  # called once each block is stored
        if progress.sent >= 2 * block:
            threading.Event().wait()  # until SIGKILL

    # One block in flight at a time: when the second is stored, no third is on its way.
    cache = BlobStore(Path(sys.argv[2]))
    store = SharedBlobStore(sys.argv[1], cache, block_size=block, concurrency=1, progress=hang_after_two_blocks)
    store.put_file(Path(sys.argv[3]))
    """
)


def test_an_upload_killed_midway_resumes_with_the_blocks_already_stored_and_leaves_no_orphan(
    tmp_path: Path, blob_backend: BlobBackend
) -> None:
    big = tmp_path / "big.bin"
    size = 4 * BLOCK + 2 * MIB + 123  # 5 blocks, the last one short
    digest = _random_file(big, size)
    store = SharedBlobStore(blob_backend.url, BlobStore(tmp_path / "cache"), block_size=BLOCK)
    store.ensure()
    log = tmp_path / "child.log"
    with open(log, "wb") as out:
        argv = [blob_backend.url, str(tmp_path / "child-cache"), str(big), str(BLOCK)]
        child = subprocess.Popen(
            [sys.executable, "-c", _PUT_THEN_HANG, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **blob_backend.env},
        )
    try:
        deadline = time.monotonic() + 60
        while _pending_bytes(blob_backend, store, digest) < 2 * BLOCK:  # watched in the store
            assert child.poll() is None, f"the upload ended by itself: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no 2 blocks stored in 60 s: {log.read_text()[-2000:]}"
            time.sleep(0.05)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)

    kept = _pending_bytes(blob_backend, store, digest)
    assert kept == 2 * BLOCK  # the killed put's blocks stay in the store, for a resume
    assert not store.has(digest)
    assert [k for k in _everything(blob_backend, store) if "/.tmp/" not in k] == []  # nothing under a final name

    seen: list[Progress] = []
    store.progress = seen.append
    assert store.put_file(big) == digest  # the same put, run again (two blocks in flight)
    assert seen[0] == Progress(digest, size, stored=kept, sent=0)  # it found the blocks stored
    assert store.last_upload == Progress(digest, size, stored=size, sent=size - kept)  # and sent only the rest
    assert len(seen) == 1 + 3  # block by block
    assert store._hash_remote(store._key(digest)) == digest
    assert _everything(blob_backend, store) == [store._key(digest)]  # no block, part, upload or .tmp file left


def test_an_upload_never_resumed_is_kept_a_while_then_removed_by_clean_uploads(
    tmp_path: Path, blob_backend: BlobBackend
) -> None:
    big = tmp_path / "big.bin"
    digest = _random_file(big, BLOCK + MIB)
    store = SharedBlobStore(blob_backend.url, BlobStore(tmp_path / "cache"), block_size=BLOCK)
    store.ensure()
    other = store.put_bytes(b"a blob that is already there")

    def interrupt(progress: Progress) -> None:
        if progress.sent:
            raise KeyboardInterrupt  # Ctrl-C after the first block

    store.progress = interrupt
    with pytest.raises(KeyboardInterrupt):
        store.put_file(big)
    pending = _pending_bytes(blob_backend, store, digest)
    assert pending >= BLOCK  # the first block, and the second where it was in flight (az, s3)
    if blob_backend.kind != "s3-moto":  # moto dates every multipart upload 2010-11-10: too old to be kept
        assert store.clean_uploads() == 0  # younger than 7 days: left for a resume
        assert _pending_bytes(blob_backend, store, digest) == pending
    assert store.clean_uploads(older_than_s=0, now=time.time() + 2) == 1
    assert _everything(blob_backend, store) == [store._key(other)]  # the final blob stays


def test_the_block_plan_of_the_worked_example_and_of_a_huge_blob() -> None:
    # resumable.py's docstring: 22 MiB in 5 MiB blocks is 4 blocks of 5 MiB and one of 2 MiB.
    assert plan_blocks(22 * MIB, 5 * MIB) == [(i * 5 * MIB, 5 * MIB) for i in range(4)] + [(20 * MIB, 2 * MIB)]
    assert plan_blocks(0, 5 * MIB) == [(0, 0)]
    assert block_size_for(80 * 10_000 * MIB // 10, 8 * MIB) == 8 * MIB  # 80,000 MiB: 10,000 blocks of 8 MiB
    assert block_size_for(100 * 10**9, 8 * MIB) == 10 * MIB  # S3's 10,000 parts at most: blocks grow to a whole MiB


def test_a_block_size_s3_would_refuse_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="block_size 1048576 is out of range for s3:// blob stores"):
        SharedBlobStore("s3://bucket/p", BlobStore(tmp_path), block_size=MIB)
