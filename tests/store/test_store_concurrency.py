"""Two real processes on one workspace; and "database is locked" becoming StoreBusy."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from modelfleet.errors import StoreBusy
from modelfleet.store.blobs import BlobStore
from modelfleet.store.db import Database
from modelfleet.store.registry import Store

PER_PROCESS = 20


def _register_many(root: str, model_file: str, barrier: Any) -> list[int]:
    store = Store.open(Path(root))
    try:
        barrier.wait(timeout=60)  # both processes start registering at the same moment
        return [store.register_model("race", Path(model_file)).version for _ in range(PER_PROCESS)]
    finally:
        store.close()


def _put_same_blob(root: str, data: bytes, barrier: Any) -> str:
    blobs = BlobStore(Path(root))
    barrier.wait(timeout=60)
    digests = {blobs.put_bytes(data) for _ in range(20)}
    assert len(digests) == 1
    return digests.pop()


def test_two_processes_registering_one_name_get_distinct_consecutive_versions(tmp_path: Path) -> None:
    Store.create(tmp_path / "ws", "ws").close()
    model = tmp_path / "model.pkl"
    model.write_bytes(b"same content in both processes")  # both also put the same blob at once
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(2) as pool:
        barrier = manager.Barrier(2)
        results = [pool.apply_async(_register_many, (str(tmp_path / "ws"), str(model), barrier)) for _ in range(2)]
        per_process = [r.get(timeout=120) for r in results]
    versions = sorted(v for vs in per_process for v in vs)
    assert versions == list(range(1, 2 * PER_PROCESS + 1))
    for vs in per_process:  # each process saw its own versions increase
        assert vs == sorted(vs)
    with Store.open(tmp_path / "ws") as store:
        assert [r.version for r in store.list_models(name="race")] == list(range(2 * PER_PROCESS, 0, -1))
        blob = store.blobs.path(store.get_model("race", 1).files[0].digest)
        assert blob.read_bytes() == b"same content in both processes"
        assert list(store.blobs.tmp_dir.iterdir()) == []


def test_two_processes_putting_the_same_blob(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    data = b"x" * 3_000_000
    with ctx.Manager() as manager, ctx.Pool(2) as pool:
        barrier = manager.Barrier(2)
        results = [pool.apply_async(_put_same_blob, (str(tmp_path), data, barrier)) for _ in range(2)]
        digests = {r.get(timeout=120) for r in results}
    assert len(digests) == 1
    blobs = BlobStore(tmp_path)
    assert blobs.path(digests.pop()).read_bytes() == data
    assert list(blobs.tmp_dir.iterdir()) == []


def test_locked_database_becomes_store_busy_and_reads_go_on(tmp_path: Path) -> None:
    with Store.create(tmp_path, "ws") as store:
        store.set_setting("k", "v")
    path = tmp_path / ".modelfleet" / "metadata.db"
    db = Database(path, busy_timeout_s=0.05, attempts=2)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process's writer, holding the lock
        with pytest.raises(StoreBusy, match=r"metadata\.db stayed locked by another process.*retry"):
            db.write(lambda conn: conn.exec_driver_sql("INSERT INTO settings VALUES ('x', 'y')"))
        # WAL: readers are not blocked by the writer.
        assert db.read(lambda conn: conn.exec_driver_sql("SELECT value FROM settings").scalar()) == "v"
        holder.execute("ROLLBACK")
        db.write(lambda conn: conn.exec_driver_sql("INSERT INTO settings VALUES ('x', 'y')"))
    finally:
        holder.close()
        db.close()
