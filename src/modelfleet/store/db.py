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

On PostgreSQL (a workspace a team shares) the same tables and the same two helpers apply:
reads run at READ COMMITTED and writes at SERIALIZABLE, so "next version = max(version) + 1"
is as safe as under SQLite's single writer. A write that loses a race with another machine's
fails with a serialization failure (or a deadlock, or a unique violation) and is retried
whole, with jittered backoff; nothing is committed by the loser, so versions stay gapless.
The schema is Alembic's (``migrations/``, see :func:`migrate`) on both.
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
    BigInteger,
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
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from modelfleet.errors import ConfigError, StoreBusy

T = TypeVar("T")

# The newest revision under migrations/versions (a test checks they agree).
SCHEMA_HEAD = "0004"

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
    Column("size", BigInteger, nullable=False),  # a model file may pass 2 GiB (PostgreSQL: int8)
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
    # the local cluster that runs it (store/clusters.py); None: another compute target's, or a
    # local service deployed before owners were recorded
    Column("cluster", String),
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


# PostgreSQL SQLSTATEs after which a whole write transaction is run again: serialization
# failure, deadlock, unique violation (two writers inserting the same next version).
_PG_RETRY = {"40001", "40P01", "23505"}


def _is_locked(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "database is locked" in text or "database is busy" in text


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


def database_url(value: str) -> URL:
    """A workspace database URL, checked: ``sqlite:///PATH`` or ``postgresql+psycopg://...``.

    A password in it is refused: the URL is written into workspace.json, which teammates copy
    and commit; libpq reads the password from ``PGPASSWORD`` or ``~/.pgpass`` instead.
    """
    try:
        url = make_url(value)
    except ArgumentError as exc:
        raise ConfigError(
            f"database {value!r} is not a database URL; use postgresql+psycopg://USER@HOST/DB or sqlite:///PATH"
        ) from exc
    backend = url.get_backend_name()
    if backend == "postgresql":
        url = url.set(drivername="postgresql+psycopg")  # a bare postgresql:// means psycopg2 to SQLAlchemy
        if url.password is not None:
            raise ConfigError(
                "the database URL holds a password, and it would be stored in the workspace's "
                "workspace.json; remove it and set PGPASSWORD or a ~/.pgpass line instead"
            )
        if not url.host or not url.database:
            raise ConfigError(f"database URL {url} must name a host and a database: postgresql+psycopg://USER@HOST/DB")
        return url
    if backend == "sqlite":
        if not url.database:
            raise ConfigError("a sqlite database URL must name a file: sqlite:///PATH")
        return url
    raise ConfigError(f"database backend {backend!r} is not supported; use postgresql+psycopg://... or sqlite:///PATH")


class Database:
    """One engine over one workspace database; every access goes through :meth:`read` or :meth:`write`.

    ``target`` is a SQLite file's path, or a database URL (see :func:`database_url`).
    """

    def __init__(
        self,
        target: Path | str | URL,
        *,
        busy_timeout_s: float = 5.0,
        attempts: int | None = None,
    ) -> None:
        url = target if isinstance(target, URL) else None
        if isinstance(target, str):
            url = database_url(target)
        if url is not None and url.get_backend_name() == "sqlite":
            target, url = Path(str(url.database)), None
        self._busy_timeout_s = busy_timeout_s
        if url is None:
            self.path: Path | None = Path(target)  # type: ignore[arg-type]
            self.url = URL.create("sqlite", database=str(self.path))
            self.is_postgres = False
            # SQLite waits inside each attempt (busy timeout), so a few attempts suffice.
            self._attempts = attempts or 4
            self.engine: Engine = create_engine(
                self.url,
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
        else:
            self.path = None
            self.url = url
            self.is_postgres = True
            # A lost race costs one short transaction and is retried at once; many machines at
            # once can lose several times in a row, so the budget is counted in attempts.
            self._attempts = attempts or 30
            self.engine = create_engine(
                url,
                pool_pre_ping=True,  # a server restarted under a long-lived daemon
                connect_args={"connect_timeout": max(1, int(busy_timeout_s * 2))},
            )

    @property
    def where(self) -> str:
        """The database, for messages, with no credentials."""
        return str(self.path) if self.path is not None else self.url.render_as_string(hide_password=True)

    @classmethod
    def create(cls, target: Path | str | URL) -> Database:
        """Make the workspace's database (the SQLite file owner-only: it holds service keys) and its schema."""
        if isinstance(target, Path):
            fd = os.open(target, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
            os.chmod(target, 0o600)
            # WAL is a property of the file, set once, outside any transaction (hence not via the
            # engine, whose connections always BEGIN first).
            with contextlib.closing(sqlite3.connect(target, timeout=5.0, isolation_level=None)) as raw:
                raw.execute("PRAGMA journal_mode=WAL")
        db = cls(target)
        try:
            db.migrate()
        except BaseException:
            db.close()
            raise
        return db

    def migrate(self) -> None:
        """Bring the schema to this modelfleet's (Alembic head), in one write transaction.

        The usual case, a schema already at head, costs one read and no import of Alembic.
        """
        if self.read(_revision) == SCHEMA_HEAD:
            return
        from modelfleet.store.migrations import upgrade

        self.write(lambda conn: upgrade(conn, self.where))

    def close(self) -> None:
        self.engine.dispose()

    def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a read transaction: under WAL (and on PostgreSQL) it never waits for writers."""
        return self._run(fn, write=False)

    def write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one write transaction (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL:
        SERIALIZABLE), retried whole while the database is locked or a race was lost.

        ``fn`` may run more than once, so it must do nothing but database work.
        """
        return self._run(fn, write=True)

    def _connect(self, write: bool) -> Connection:
        try:
            conn = self.engine.connect()
        except OperationalError as exc:
            if self.is_postgres:
                raise _unavailable(self.where, exc) from exc
            raise
        if self.is_postgres:
            return conn.execution_options(isolation_level="SERIALIZABLE" if write else "READ COMMITTED")
        return conn.execution_options(sqlite_begin="IMMEDIATE" if write else "DEFERRED")

    def _run(self, fn: Callable[[Connection], T], *, write: bool) -> T:
        started = time.monotonic()
        for attempt in range(1, self._attempts + 1):
            try:
                with self._connect(write) as conn, conn.begin():
                    return fn(conn)
            except DBAPIError as exc:
                if self.is_postgres:
                    if _sqlstate(exc) not in _PG_RETRY:
                        if exc.connection_invalidated or isinstance(exc, OperationalError):
                            raise _unavailable(self.where, exc) from exc
                        raise
                    if attempt == self._attempts:
                        raise StoreBusy(
                            f"the workspace database {self.where} kept refusing a write as conflicting "
                            f"with other writers ({attempt} attempts); retry"
                        ) from exc
                    time.sleep(random.uniform(0.0, 0.02) * attempt)
                    continue
                if not isinstance(exc, OperationalError) or not _is_locked(exc):
                    raise
                if attempt == self._attempts:
                    waited = time.monotonic() - started
                    raise StoreBusy(
                        f"the workspace database {self.where} stayed locked by another process for "
                        f"{waited:.0f} s ({attempt} attempts); retry, or stop the process holding it "
                        "(for example `modelfleet cluster stop`)"
                    ) from exc
                # Jittered backoff so that two waiting writers do not retry in lockstep.
                time.sleep(random.uniform(0.05, 0.2) * attempt)
        raise AssertionError("unreachable")


def _unavailable(where: str, exc: DBAPIError) -> StoreBusy:
    """The shared database could not be reached or refused us: which one, and why."""
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    return StoreBusy(
        f"the workspace database {where} failed: {reason}; check that the server runs and is "
        "reachable, and the user's password (PGPASSWORD or ~/.pgpass) and rights"
    )


def _revision(conn: Connection) -> str | None:
    if not conn.dialect.has_table(conn, "alembic_version"):
        return None
    return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


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
