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
from modelfleet.store.registry import Store


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


def test_migrate_moves_a_folder_workspace_onto_shared_backends_after_checking_the_copy(
    tmp_path: Path, postgres_server: Any
) -> None:
    from modelfleet.control.credentials import signing_key

    ws = tmp_path / "ws"
    assert _cli("workspace", "create", "-n", "team", "-p", str(ws), cwd=tmp_path).returncode == 0
    (tmp_path / "m.bin").write_bytes(b"weights v1")
    for _ in range(2):
        assert _cli("model", "register", "-n", "m", "-p", str(tmp_path / "m.bin"), cwd=ws).returncode == 0
    with Store.open(ws) as store:
        store.create_service("svc", {"a": 1}, primary_key="pk", secondary_key="sk")
        store.add_event("svc", "deployed", {"n": 1}, time=1.0)
        store.add_event("svc", "scaled", {"n": 2}, time=2.0)
    public_before = signing_key(ws).public_key().public_numbers()
    metadata_db = (ws / ".modelfleet" / "metadata.db").read_bytes()
    database = postgres_server.new_database()
    objects = f"file://{tmp_path}/objects"

    done = _cli("workspace", "migrate", "--to-database", database, "--to-blob-store", objects, cwd=ws)
    assert done.returncode == 0, done.stderr
    assert "copied and checked" in done.stdout
    assert (ws / ".modelfleet" / "metadata.db").read_bytes() == metadata_db  # the source is left as it was
    with Store.open(ws) as store:
        assert store.backends()["database"] == database and store.backends()["blob_store"] == objects
        assert [r.version for r in store.list_models(name="m")] == [2, 1]
        assert store.get_service("svc").primary_key == "pk"
        assert [e["kind"] for e in store.list_events("svc")] == ["deployed", "scaled"]
    # A teammate with the key and no local copy gets the model from the new store.
    bob = tmp_path / "bob"
    (bob / ".modelfleet").mkdir(parents=True)
    shutil.copy(ws / ".modelfleet" / "secret.key", bob / ".modelfleet")
    with Store.create(bob, "team", database=database, blob_store=objects) as store:
        assert store.download_model("m", 1, tmp_path / "dl").read_bytes() == b"weights v1"
    # Tokens issued before the move stay valid: the signing key moved with the workspace.
    assert signing_key(bob).public_key().public_numbers() == public_before

    again = _cli("workspace", "migrate", "--to-database", database, cwd=tmp_path / "bob")
    assert again.returncode != 0 and "already uses shared backends" in again.stderr


def test_migrate_into_a_database_in_use_is_refused_and_changes_nothing(tmp_path: Path, postgres_server: Any) -> None:
    database = postgres_server.new_database()
    (tmp_path / "m.bin").write_bytes(b"w")
    with Store.create(tmp_path / "other", "other", database=database) as other:
        other.register_model("theirs", tmp_path / "m.bin")
    with Store.create(tmp_path / "ws", "ws") as store:
        store.register_model("mine", tmp_path / "m.bin")
    marker = (tmp_path / "ws" / ".modelfleet" / "workspace.json").read_text()
    done = _cli("workspace", "migrate", "--to-database", database, cwd=tmp_path / "ws")
    assert done.returncode != 0
    assert "already holds models: migrate copies into an empty database only" in done.stderr
    assert (tmp_path / "ws" / ".modelfleet" / "workspace.json").read_text() == marker
    with Store.open(tmp_path / "ws") as store:
        assert [r.name for r in store.list_models()] == ["mine"]
