"""The workspace database: tables, one engine per store, and the transaction helpers.

Theory of operation. Several processes use one workspace at once (the SDK in a notebook,
the CLI, the control-plane daemon), so every write is a short transaction that takes
SQLite's write lock up front (``BEGIN IMMEDIATE``). Taking it up front matters: a deferred
transaction that reads and then writes can fail with SQLITE_BUSY without waiting when
another writer committed in between, and a read-then-write such as "next version =
max(version) + 1" must see the newest committed row while nobody else can insert. The
journal is WAL, so readers never block the writer nor the writer the readers.

Waiting for the lock happens twice over: SQLite's busy timeout waits inside each attempt,
and :meth:`Database.write` retries the whole transaction a few times with backoff. "database
is locked" is translated here and only here; past the budget it becomes ``StoreBusy``.
Example: with a 5 s busy timeout and 4 attempts, a writer gives up after roughly 20 s of
another process holding the lock, and says which file was locked.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import (
    Column,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
)
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import OperationalError

from modelfleet.errors import StoreBusy

T = TypeVar("T")

SCHEMA_VERSION = 1

metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", Text, nullable=False),
)

models = Table(
    "models",
    metadata,
    Column("name", String, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("description", Text),
    Column("created_time", Float, nullable=False),
    Column("kind", String, nullable=False),  # "file" | "folder"
    Column("root_name", String, nullable=False),
    Column("tags", Text, nullable=False),  # JSON object of str -> str
    Column("properties", Text, nullable=False),  # JSON object of str -> str
)

model_files = Table(
    "model_files",
    metadata,
    Column("name", String, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("relpath", String, primary_key=True),  # posix, starts with the model's root_name
    Column("digest", String, nullable=False),
    Column("size", Integer, nullable=False),
    ForeignKeyConstraint(["name", "version"], ["models.name", "models.version"], ondelete="CASCADE"),
)

services = Table(
    "services",
    metadata,
    Column("name", String, primary_key=True),
    Column("config", Text, nullable=False),  # JSON, opaque to the store
    Column("primary_key", Text),
    Column("secondary_key", Text),
    Column("generation", Integer, nullable=False),
    Column("serving_generation", Integer),
    Column("state", String, nullable=False),
    Column("detail", Text),
    Column("created_time", Float, nullable=False),
    Column("updated_time", Float, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String, nullable=False),
    Column("time", Float, nullable=False),
    Column("kind", String, nullable=False),
    Column("data", Text, nullable=False),  # JSON object
    Index("events_by_service_time", "service", "time"),
)

settings = Table(
    "settings",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", Text, nullable=False),
)


def _is_locked(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "database is locked" in text or "database is busy" in text


class Database:
    """One engine over one SQLite file; every access goes through :meth:`read` or :meth:`write`."""

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_s: float = 5.0,
        attempts: int = 4,
    ) -> None:
        self.path = path
        self._attempts = attempts
        self._busy_timeout_s = busy_timeout_s
        self.engine: Engine = create_engine(
            URL.create("sqlite", database=str(path)),
            connect_args={
                "timeout": busy_timeout_s,
                # The daemon may use the store from worker threads; the pool still hands
                # each connection to one thread at a time.
                "check_same_thread": False,
                # Autocommit at the driver: we issue BEGIN ourselves (see _on_begin), so the
                # sqlite3 module never starts a deferred transaction behind our back.
                "isolation_level": None,
            },
        )
        event.listen(self.engine, "connect", _on_connect)
        event.listen(self.engine, "begin", _on_begin)

    @classmethod
    def create(cls, path: Path) -> Database:
        """Create the file owner-only (it holds service keys), switch it to WAL, make the tables."""
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        # WAL is a property of the file, set once, outside any transaction (hence not via the engine,
        # whose connections always BEGIN first).
        with contextlib.closing(sqlite3.connect(path, timeout=5.0, isolation_level=None)) as raw:
            raw.execute("PRAGMA journal_mode=WAL")
        db = cls(path)
        db.write(_create_schema)
        return db

    def close(self) -> None:
        self.engine.dispose()

    def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a deferred (read) transaction: under WAL it never waits for writers."""
        return self._run(fn, "DEFERRED")

    def write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction, retried whole while the file is locked.

        ``fn`` may run more than once, so it must do nothing but database work.
        """
        return self._run(fn, "IMMEDIATE")

    def _run(self, fn: Callable[[Connection], T], mode: str) -> T:
        started = time.monotonic()
        for attempt in range(1, self._attempts + 1):
            try:
                with self.engine.connect().execution_options(sqlite_begin=mode) as conn, conn.begin():
                    return fn(conn)
            except OperationalError as exc:
                if not _is_locked(exc):
                    raise
                if attempt == self._attempts:
                    waited = time.monotonic() - started
                    raise StoreBusy(
                        f"the workspace database {self.path} stayed locked by another process for "
                        f"{waited:.0f} s ({attempt} attempts); retry, or stop the process holding it "
                        "(for example `modelfleet cluster stop`)"
                    ) from exc
                # Jittered backoff so that two waiting writers do not retry in lockstep.
                time.sleep(random.uniform(0.05, 0.2) * attempt)
        raise AssertionError("unreachable")


def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA foreign_keys=ON")
        # NORMAL is durable across application crashes in WAL mode and much cheaper than FULL.
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()


def _on_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def _create_schema(conn: Connection) -> None:
    # Inside BEGIN IMMEDIATE, so two processes creating at once cannot both issue CREATE TABLE.
    metadata.create_all(conn)
    conn.execute(
        meta.insert().prefix_with("OR IGNORE"),
        {"key": "schema_version", "value": str(SCHEMA_VERSION)},
    )
