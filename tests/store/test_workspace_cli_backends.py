"""`modelfleet workspace create --database --blob-store` and `workspace show`, as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from modelfleet.sdk.workspace import Workspace


def _cli(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelfleet", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_two_folders_on_one_database_and_blob_store_see_each_others_models(
    tmp_path: Path, postgres_server: Any
) -> None:
    database = postgres_server.new_database()
    objects = f"file://{tmp_path}/objects"
    for who in ("alice", "bob"):
        if who == "bob":  # alice hands bob the team's key, which her create wrote; he puts it in place
            (tmp_path / "bob" / ".modelfleet").mkdir(parents=True)
            shutil.copy(tmp_path / "alice" / ".modelfleet" / "secret.key", tmp_path / "bob" / ".modelfleet")
        done = _cli(
            "workspace",
            "create",
            "-n",
            "team",
            "-p",
            str(tmp_path / who),
            "--database",
            database,
            "--blob-store",
            objects,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
    shown = _cli("workspace", "show", "-o", "json", cwd=tmp_path / "bob")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {
        "name": "team",
        "path": str(tmp_path / "bob"),
        "database": database,
        "blobStore": objects,
        "readCache": str(tmp_path / "bob" / ".modelfleet" / "blobs"),
    }
    (tmp_path / "m.bin").write_bytes(b"weights")
    assert _cli("model", "register", "-n", "m", "-p", str(tmp_path / "m.bin"), cwd=tmp_path / "alice").returncode == 0
    bob = Workspace.get(tmp_path / "bob")
    try:
        assert bob.store.get_model("m").version == 1
        out = bob.store.download_model("m", None, tmp_path / "dl")
        assert out.read_bytes() == b"weights"
    finally:
        bob.store.close()


def test_a_bad_backend_url_is_one_error_line(tmp_path: Path) -> None:
    done = _cli(
        "workspace", "create", "-n", "team", "-p", str(tmp_path / "ws"), "--blob-store", "gs://b/p", cwd=tmp_path
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "error: blob store 'gs://b/p' is not supported; use az://CONTAINER/PREFIX, s3://BUCKET/PREFIX or file:///PATH"
    ]
    assert not (tmp_path / "ws").exists()
