"""Blobs in a shared object store: Azurite (Azure Blob), moto's server (an S3 stand-in) and file://,
each a real server or folder; workspaces in separate folders with their own read caches."""

from __future__ import annotations

import hashlib
import os
import shutil
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from object_servers import BlobBackend

from modelfleet.errors import ConfigError
from modelfleet.store.blobs import BlobStore
from modelfleet.store.registry import Store
from modelfleet.store.shared_blobs import BlobStoreError, SharedBlobStore

# adlfs stages each block as a memoryview, and aiohttp warns that a large raw body "might lock
# the event loop": fsspec runs that loop in a thread of its own, which only it uses.
pytestmark = pytest.mark.filterwarnings("ignore:Sending a large body directly with raw bytes")


def _final_keys(store: SharedBlobStore) -> list[str]:
    """Every object under the store's prefix except the .tmp/ folder of uploads in progress."""
    return sorted(k for k in store.fs.find(store.prefix) if "/.tmp/" not in k)


def test_a_model_registered_in_one_workspace_is_laid_out_from_the_store_in_another(
    tmp_path: Path, blob_backend: BlobBackend, postgres_server: Any
) -> None:
    database = postgres_server.new_database()
    weights = tmp_path / "src" / "model"
    weights.mkdir(parents=True)
    (weights / "w.bin").write_bytes(os.urandom(300_000))
    (weights / "cfg.json").write_text("{}")
    with Store.create(tmp_path / "alice", "team", database=database, blob_store=blob_backend.url) as alice:
        record = alice.register_model("m", weights)
        assert isinstance(alice.blobs, SharedBlobStore)
        assert len(_final_keys(alice.blobs)) == 2  # content-addressed: <prefix>/ab/cdef...
    (tmp_path / "bob" / ".modelfleet").mkdir(parents=True)  # bob joins with the team's key (secrets.py)
    shutil.copy(tmp_path / "alice" / ".modelfleet" / "secret.key", tmp_path / "bob" / ".modelfleet")
    with Store.create(tmp_path / "bob", "team", database=database, blob_store=blob_backend.url) as bob:
        cache = tmp_path / "bob" / ".modelfleet" / "blobs"
        assert not BlobStore(cache).has(record.files[0].digest)  # bob's cache starts empty
        bob.materialize_model(bob.get_model("m"), tmp_path / "replica")
        assert (tmp_path / "replica" / "model" / "w.bin").read_bytes() == (weights / "w.bin").read_bytes()
        assert BlobStore(cache).has(record.files[0].digest)  # now a read cache: no second download
        bob.blobs.fs = None  # type: ignore[union-attr]  # any remote call now fails
        bob.materialize_model(bob.get_model("m"), tmp_path / "replica2")
        assert (tmp_path / "replica2" / "model" / "cfg.json").read_text() == "{}"


def test_a_snapshot_goes_through_the_shared_store(tmp_path: Path, blob_backend: BlobBackend) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "score.py").write_text("def run(x):\n    return x\n")
    with Store.create(tmp_path / "ws", "ws", blob_store=blob_backend.url) as store:
        digest = store.put_snapshot(src)
        assert store.blobs.has(digest)
        (tmp_path / "ws" / ".modelfleet" / "blobs" / digest[:2] / digest[2:]).unlink()  # a cold cache
        store.extract_snapshot(digest, tmp_path / "out")
    assert (tmp_path / "out" / "score.py").read_text().startswith("def run")


def test_an_upload_is_streamed_in_blocks(tmp_path: Path, blob_backend: BlobBackend) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for _ in range(24):
            f.write(os.urandom(4 * 1024 * 1024))  # 96 MiB
    store = SharedBlobStore(blob_backend.url, BlobStore(tmp_path / "cache"))
    store.ensure()
    tracemalloc.start()
    try:
        digest = store.put_file(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A few blocks in flight (8 MiB each, and 4 MiB reads), never the file.
    assert peak < 48 * 1024 * 1024, f"peak Python memory {peak / 2**20:.0f} MiB for a 96 MiB upload"
    assert digest == hashlib.sha256(big.read_bytes()).hexdigest()
    assert store._hash_remote(store._key(digest)) == digest


def test_a_corrupt_object_is_refused_on_download_and_not_cached(tmp_path: Path, blob_backend: BlobBackend) -> None:
    writer = SharedBlobStore(blob_backend.url, BlobStore(tmp_path / "a"))
    writer.ensure()
    digest = writer.put_bytes(b"the real bytes")
    writer.fs.pipe_file(writer._key(digest), b"tampered bytes")  # someone with write access to the bucket
    reader = SharedBlobStore(blob_backend.url, BlobStore(tmp_path / "b"))
    with pytest.raises(BlobStoreError, match=f"blob {digest} downloaded from .* is corrupt"):
        reader.path(digest)
    assert not reader.cache.has(digest)
    assert list(reader.cache.tmp_dir.iterdir()) == []


def test_a_model_whose_upload_fails_is_not_registered(tmp_path: Path, blob_backend: BlobBackend) -> None:
    model = tmp_path / "m.bin"
    model.write_bytes(b"m")
    with Store.create(tmp_path / "ws", "ws", blob_store=blob_backend.url) as store:
        assert isinstance(store.blobs, SharedBlobStore)
        if blob_backend.kind == "file":
            store.blobs.fs.rm(store.blobs.prefix, recursive=True)
            Path(store.blobs.prefix).write_text("not a folder")  # the store's folder is gone, a file in its way
        else:
            store.blobs.fs.rm(store.blobs.prefix.split("/", 1)[0], recursive=True)  # the bucket is deleted
        with pytest.raises(BlobStoreError, match=f"could not upload to the blob store {blob_backend.url}"):
            store.register_model("m", model)
        assert store.list_models() == []


@pytest.mark.parametrize("server, scheme", [("azurite", "az"), ("moto_s3", "s3")])
def test_a_missing_container_is_named_at_creation(
    tmp_path: Path, server: str, scheme: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in request.getfixturevalue(server).env.items():
        monkeypatch.setenv(key, value)
    url = f"{scheme}://no-such-bucket-here/team"
    missing = f"could not reach the blob store {url}: its container or bucket is missing"
    with pytest.raises(BlobStoreError, match=missing):
        Store.create(tmp_path / "ws", "ws", blob_store=url)
    assert not (tmp_path / "ws" / ".modelfleet" / "workspace.json").exists()


def test_wrong_credentials_and_an_unreachable_store_are_named(
    tmp_path: Path, azurite: Any, moto_s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = azurite.env["AZURE_STORAGE_CONNECTION_STRING"]
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", good)
    SharedBlobStore("az://ccc/p", BlobStore(tmp_path / "a")).fs.mkdir("ccc")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", good.replace("AccountKey=Eby8", "AccountKey=AAAA"))
    with pytest.raises(BlobStoreError, match="could not reach the blob store az://ccc/p: access denied"):
        SharedBlobStore("az://ccc/p", BlobStore(tmp_path / "b")).ensure()
    # Unreachable, on S3 (botocore gives up in seconds; Azure's SDK retries for over a minute).
    for key, value in moto_s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    with pytest.raises(BlobStoreError, match="could not reach the blob store s3://bkt/p: .*Could not connect"):
        SharedBlobStore("s3://bkt/p", BlobStore(tmp_path / "c")).ensure()


@pytest.mark.parametrize(
    "url, message",
    [
        ("gs://bucket/p", "not supported"),
        ("s3://key:secret@bucket/p", "holds credentials"),
        ("az://", "must name a container or bucket"),
        ("file://relative/p", "absolute"),
    ],
)
def test_bad_blob_store_urls_are_refused(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Store.create(tmp_path / "ws", "ws", blob_store=url)
