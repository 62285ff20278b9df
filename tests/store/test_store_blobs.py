"""Content-addressed blob store."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from modelfleet.errors import ConfigError, NotFound
from modelfleet.store.blobs import BlobStore


def test_put_bytes_and_file_share_one_address(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    data = b"model weights"
    digest = hashlib.sha256(data).hexdigest()
    assert not blobs.has(digest)
    assert blobs.put_bytes(data) == digest
    (tmp_path / "f").write_bytes(data)
    assert blobs.put_file(tmp_path / "f") == digest  # idempotent
    where = blobs.path(digest)
    assert where == tmp_path / "blobs" / digest[:2] / digest[2:]
    assert blobs.has(digest)
    with blobs.open(digest) as f:
        assert f.read() == data
    assert stat.S_IMODE(os.stat(where).st_mode) == 0o444
    assert list(blobs.tmp_dir.iterdir()) == []  # no temporary file left behind
    assert (tmp_path / "f").read_bytes() == data  # a plain put copies


def test_put_file_move_renames_the_file_in(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    tmp = blobs.new_temp_path(".zip")
    tmp.write_bytes(b"zip bytes")
    digest = blobs.put_file(tmp, move=True)
    assert not tmp.exists()
    assert blobs.path(digest).read_bytes() == b"zip bytes"
    again = blobs.new_temp_path()
    again.write_bytes(b"zip bytes")
    assert blobs.put_file(again, move=True) == digest
    assert not again.exists()


def test_missing_and_malformed_digests(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    with pytest.raises(NotFound, match="missing"):
        blobs.path("0" * 64)
    with pytest.raises(ConfigError, match="64 lowercase hex"):
        blobs.path("../../etc/passwd")
    assert not blobs.has("../../etc/passwd")
