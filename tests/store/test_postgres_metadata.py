"""A workspace whose metadata lives in a real PostgreSQL server (started by the tests), and schema versions."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from modelfleet.errors import ConfigError, StoreBusy
from modelfleet.store import migrations
from modelfleet.store.db import SCHEMA_HEAD, Database
from modelfleet.store.registry import Store

PROCESSES = 4
PER_PROCESS = 50


def _register_many(root: str, model_file: str, barrier: Any) -> list[int]:
    store = Store.open(Path(root))  # workspace.json names the database: nothing else is passed
    try:
        barrier.wait(timeout=60)
        return [store.register_model("race", Path(model_file)).version for _ in range(PER_PROCESS)]
    finally:
        store.close()


def test_four_processes_registering_one_name_get_200_distinct_gapless_versions(
    tmp_path: Path, postgres_server: Any
) -> None:
    Store.create(tmp_path / "ws", "ws", database=postgres_server.new_database()).close()
    model = tmp_path / "model.pkl"
    model.write_bytes(b"weights")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(PROCESSES) as pool:
        barrier = manager.Barrier(PROCESSES)
        results = [
            pool.apply_async(_register_many, (str(tmp_path / "ws"), str(model), barrier)) for _ in range(PROCESSES)
        ]
        per_process = [r.get(timeout=170) for r in results]
    versions = sorted(v for vs in per_process for v in vs)
    assert versions == list(range(1, PROCESSES * PER_PROCESS + 1))
    for vs in per_process:
        assert vs == sorted(vs)
    with Store.open(tmp_path / "ws") as store:
        records = store.list_models(name="race")
        assert [r.version for r in records] == list(range(PROCESSES * PER_PROCESS, 0, -1))
        assert all(len(r.files) == 1 for r in records)  # no version without its files


def test_two_folders_naming_one_database_share_models_and_services(
    tmp_path: Path, postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres_server.new_database()
    with Store.create(tmp_path / "alice", "team", database=url) as alice:
        model = tmp_path / "m.bin"
        model.write_bytes(b"m")
        alice.register_model("shared", model)
        alice.create_service("svc", {"x": 1}, primary_key="pk", secondary_key="sk")
    monkeypatch.setenv("MODELFLEET_SECRET_KEY_FILE", str(tmp_path / "alice" / ".modelfleet" / "secret.key"))
    with Store.create(tmp_path / "bob", "team", database=url) as bob:  # the schema is there: kept
        assert bob.get_model("shared").version == 1
        assert bob.get_service("svc").primary_key == "pk"
    info = json.loads((tmp_path / "bob" / ".modelfleet" / "workspace.json").read_text())
    assert info == {"name": "team", "format": 2, "database": url}
    assert not (tmp_path / "bob" / ".modelfleet" / "metadata.db").exists()


def test_a_password_in_the_url_is_refused(tmp_path: Path, postgres_server: Any) -> None:
    url = postgres_server.new_database().replace("modelfleet@", "modelfleet:secret@")
    with pytest.raises(ConfigError, match="holds a password.*PGPASSWORD"):
        Store.create(tmp_path / "ws", "ws", database=url)
    assert not (tmp_path / "ws" / ".modelfleet" / "workspace.json").exists()


@pytest.mark.parametrize(
    "url, message",
    [
        ("mysql://u@h/db", "backend 'mysql' is not supported"),
        ("not a url", "is not a database URL"),
        ("postgresql+psycopg://u@/db", "must name a host and a database"),
    ],
)
def test_bad_database_urls_are_refused(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Store.create(tmp_path / "ws", "ws", database=url)


def test_an_unreachable_server_is_named_in_the_error(tmp_path: Path, postgres_server: Any) -> None:
    with pytest.raises(
        StoreBusy, match=r"database postgresql\+psycopg://modelfleet@127\.0\.0\.1:1/x failed: .*reachable"
    ):
        Store.create(tmp_path / "ws", "ws", database="postgresql+psycopg://modelfleet@127.0.0.1:1/x")


def test_a_missing_database_is_named_in_the_error(tmp_path: Path, postgres_server: Any) -> None:
    url = postgres_server.url("nope")
    with pytest.raises(StoreBusy, match='database "nope" does not exist'):
        Store.create(tmp_path / "ws", "ws", database=url)


def test_schema_head_constant_matches_the_migrations() -> None:
    assert migrations.head() == SCHEMA_HEAD


def _make_format1_workspace(root: Path) -> None:
    """A workspace as modelfleet made it before Alembic: the baseline tables and a meta row, no alembic_version."""
    meta = root / ".modelfleet"
    (meta / "blobs" / ".tmp").mkdir(parents=True)
    (meta / "runtime").mkdir()
    raw = sqlite3.connect(meta / "metadata.db")
    raw.executescript(
        """
        CREATE TABLE meta (key VARCHAR PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE models (name VARCHAR, version INTEGER, description TEXT, created_time FLOAT NOT NULL,
            kind VARCHAR NOT NULL, root_name VARCHAR NOT NULL, tags TEXT NOT NULL, properties TEXT NOT NULL,
            PRIMARY KEY (name, version));
        CREATE TABLE model_files (name VARCHAR, version INTEGER, relpath VARCHAR, digest VARCHAR NOT NULL,
            size INTEGER NOT NULL, PRIMARY KEY (name, version, relpath),
            FOREIGN KEY(name, version) REFERENCES models (name, version) ON DELETE CASCADE);
        CREATE TABLE services (name VARCHAR PRIMARY KEY, config TEXT NOT NULL, primary_key TEXT, secondary_key TEXT,
            generation INTEGER NOT NULL, serving_generation INTEGER, state VARCHAR NOT NULL, detail TEXT,
            created_time FLOAT NOT NULL, updated_time FLOAT NOT NULL);
        CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, service VARCHAR NOT NULL, time FLOAT NOT NULL,
            kind VARCHAR NOT NULL, data TEXT NOT NULL);
        CREATE TABLE settings (key VARCHAR PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        INSERT INTO models VALUES ('old', 1, NULL, 1.0, 'file', 'm.bin', '{}', '{}');
        INSERT INTO model_files VALUES ('old', 1, 'm.bin', 'ab', 1);
        """
    )
    raw.commit()
    raw.close()
    (meta / "workspace.json").write_text(json.dumps({"name": "old", "format": 1}))


def test_a_workspace_made_before_alembic_is_upgraded_on_open(tmp_path: Path) -> None:
    _make_format1_workspace(tmp_path)
    with Store.open(tmp_path) as store:
        assert store.get_model("old").version == 1  # its rows are kept
        store.computes.attach("k8s", "kubernetes", {})  # the table revision 0002 adds
        assert [c.name for c in store.computes.list()] == ["k8s"]
    raw = sqlite3.connect(tmp_path / ".modelfleet" / "metadata.db")
    assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [(SCHEMA_HEAD,)]
    raw.close()


def test_a_workspace_from_a_newer_modelfleet_is_refused_with_what_to_do(tmp_path: Path, postgres_server: Any) -> None:
    url = postgres_server.new_database()
    Store.create(tmp_path / "ws", "ws", database=url).close()
    db = Database(url)
    db.write(lambda conn: conn.execute(text("UPDATE alembic_version SET version_num = '9999'")))
    db.close()
    with pytest.raises(
        ConfigError, match=r"schema revision 9999, made by a newer modelfleet.*pip install -U modelfleet"
    ):
        Store.open(tmp_path / "ws")
