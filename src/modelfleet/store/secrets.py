"""Secrets in a shared workspace: encrypted in the database with a key kept outside it.

Theory of operation. A workspace whose metadata lives in PostgreSQL is read by every role that
can read its tables (a DBA, a backup, a replica of the server), so what would let someone call
a service or mint tokens (service keys, the token-signing key) is stored encrypted there, with
Fernet (AES-128-CBC and HMAC-SHA256, from ``cryptography``). The key is each member's, never in
the database:

1. ``MODELFLEET_SECRET_KEY``: the key itself (as ``Fernet.generate_key()`` prints it), or
2. ``MODELFLEET_SECRET_KEY_FILE``: a file holding it, or
3. ``<workspace>/.modelfleet/secret.key`` (0600), written when the workspace was created.

A teammate gets the key from whoever created the workspace (as they would a password) and sets
one of these. A ``keycheck`` row, encrypted at creation, lets a wrong key be named on open
instead of surfacing later as an unreadable service key. A SQLite workspace keeps its secrets
as before: the file itself is owner-only, so they are stored plain there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import Column, Connection, Float, String, Table, Text, select

from modelfleet.errors import ConfigError
from modelfleet.store.db import Database, metadata

KEY_ENV = "MODELFLEET_SECRET_KEY"
KEY_FILE_ENV = "MODELFLEET_SECRET_KEY_FILE"
KEY_FILE = "secret.key"
_PREFIX = "fernet:"  # marks an encrypted value, so a plain one (a SQLite workspace) is never "decrypted"
_KEYCHECK = "keycheck"

secrets_table = Table(
    "secrets",
    metadata,
    Column("name", String, primary_key=True),
    Column("value", Text, nullable=False),
    Column("created_time", Float, nullable=False),
)


class SecretBox:
    """Encrypts and decrypts a workspace's secrets with the member's key (None: stored plain)."""

    def __init__(self, key: bytes | None, source: str = "") -> None:
        self._fernet = Fernet(key) if key is not None else None
        self.source = source

    @property
    def encrypts(self) -> bool:
        return self._fernet is not None

    def seal(self, value: str | None) -> str | None:
        if value is None or self._fernet is None:
            return value
        return _PREFIX + self._fernet.encrypt(value.encode()).decode("ascii")

    def open(self, stored: str | None) -> str | None:
        if stored is None or not stored.startswith(_PREFIX):
            return stored
        if self._fernet is None:
            raise ConfigError(
                f"this workspace's secrets are encrypted and no key was given; set {KEY_ENV} or "
                f"{KEY_FILE_ENV}, or put the team's key in .modelfleet/{KEY_FILE}"
            )
        try:
            return self._fernet.decrypt(stored[len(_PREFIX) :].encode("ascii")).decode()
        except InvalidToken:
            raise ConfigError(
                f"the secret key from {self.source} does not decrypt this workspace's secrets: it is not "
                "the team's key; get it from whoever created the workspace"
            ) from None


def new_key_file(meta_dir: Path) -> bytes:
    """The key a shared workspace is made (or joined) with: the environment's, the one already in
    ``meta_dir``, or a new one written there 0600."""
    found = _key_from_environment()
    if found is not None:
        return found[0]
    if (meta_dir / KEY_FILE).is_file():  # a teammate's key, copied in before joining
        return _read_key(meta_dir / KEY_FILE)
    key = Fernet.generate_key()
    fd = os.open(meta_dir / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
    return key


def load_box(meta_dir: Path) -> SecretBox:
    found = _key_from_environment()
    if found is None:
        path = meta_dir / KEY_FILE
        if not path.is_file():
            return SecretBox(None)
        found = (_read_key(path), str(path))
    return SecretBox(*found)


def _key_from_environment() -> tuple[bytes, str] | None:
    if os.environ.get(KEY_ENV):
        return _check_key(os.environ[KEY_ENV].strip().encode(), KEY_ENV), KEY_ENV
    if os.environ.get(KEY_FILE_ENV):
        path = Path(os.environ[KEY_FILE_ENV]).expanduser()
        return _read_key(path), str(path)
    return None


def _read_key(path: Path) -> bytes:
    try:
        return _check_key(path.read_bytes().strip(), str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read the workspace secret key {path}: {exc.strerror}") from exc


def _check_key(key: bytes, source: str) -> bytes:
    try:
        Fernet(key)
    except ValueError:
        raise ConfigError(
            f"the workspace secret key from {source} is not a Fernet key (32 bytes, url-safe base64, 44 "
            "characters); use the key file the workspace was created with"
        ) from None
    return key


class Secrets:
    """Named secrets of one workspace, sealed by its :class:`SecretBox`."""

    def __init__(self, db: Database, box: SecretBox) -> None:
        self._db = db
        self.box = box

    def get_or_create(self, name: str, make: Callable[[], str]) -> str:
        """The secret ``name``; made with ``make`` and stored if none is yet (the first writer wins)."""
        candidate = self.box.seal(make())

        def tx(conn: Connection) -> str:
            stored = conn.execute(select(secrets_table.c.value).where(secrets_table.c.name == name)).scalar()
            if stored is None:
                conn.execute(secrets_table.insert().values(name=name, value=candidate, created_time=time.time()))
                return str(candidate)
            return str(stored)

        value = self.box.open(self._db.write(tx))
        assert value is not None
        return value

    def renew(self, name: str, keep: Callable[[str], bool], make: Callable[[], str]) -> str:
        """The secret ``name`` while ``keep(value)`` holds; else (or when there is none) one made
        with ``make`` replaces it. Read and replaced in one write transaction, so two machines
        renewing at once agree on one value (the second sees the first's and keeps it)."""

        def tx(conn: Connection) -> str:
            stored = conn.execute(select(secrets_table.c.value).where(secrets_table.c.name == name)).scalar()
            current = self.box.open(stored)
            if current is not None and keep(current):
                return current
            made = make()
            sealed = self.box.seal(made)
            if stored is None:
                conn.execute(secrets_table.insert().values(name=name, value=sealed, created_time=time.time()))
            else:
                conn.execute(
                    secrets_table.update()
                    .where(secrets_table.c.name == name)
                    .values(value=sealed, created_time=time.time())
                )
            return made

        return self._db.write(tx)

    def put(self, name: str, value: str) -> None:
        """Store ``value`` as the secret ``name``, replacing any."""
        self.renew(name, lambda _current: False, lambda: value)

    def get(self, name: str) -> str | None:
        stored = self._db.read(
            lambda conn: conn.execute(select(secrets_table.c.value).where(secrets_table.c.name == name)).scalar()
        )
        return self.box.open(stored)

    def write_keycheck(self) -> None:
        self.get_or_create(_KEYCHECK, lambda: "modelfleet")

    def verify_key(self) -> None:
        """Refuse a key that is not the one the workspace's secrets were sealed with, naming its source."""
        stored = self._db.read(
            lambda conn: conn.execute(select(secrets_table.c.value).where(secrets_table.c.name == _KEYCHECK)).scalar()
        )
        self.box.open(stored)
