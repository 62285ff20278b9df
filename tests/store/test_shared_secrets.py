"""Secrets a team shares: service keys and the token-signing key, encrypted in a real PostgreSQL
database with a key kept outside it (a file or an environment variable)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from modelfleet.control.credentials import SIGNING_KEY_FILE, signing_key
from modelfleet.errors import ConfigError
from modelfleet.router.auth import AuthResult, issue_token, verify_token
from modelfleet.store.db import Database
from modelfleet.store.registry import Store


def _raw(url: str, sql: str) -> list[Any]:
    db = Database(url)
    try:
        return db.read(lambda conn: list(conn.execute(text(sql))))
    finally:
        db.close()


def _join(tmp_path: Path, who: str, founder: str = "alice") -> Path:
    """A teammate's folder with the team's key copied in, as the README tells them to do."""
    meta = tmp_path / who / ".modelfleet"
    meta.mkdir(parents=True)
    shutil.copy(tmp_path / founder / ".modelfleet" / "secret.key", meta / "secret.key")
    return tmp_path / who


def test_service_keys_are_encrypted_in_the_database_and_read_back_plain(tmp_path: Path, postgres_server: Any) -> None:
    url = postgres_server.new_database()
    with Store.create(tmp_path / "alice", "team", database=url) as alice:
        alice.create_service("svc", {}, primary_key="primary-secret-1", secondary_key="secondary-secret-2")
        alice.set_service_keys("svc", primary_key="primary-secret-3")
    key_file = tmp_path / "alice" / ".modelfleet" / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    [(primary, secondary)] = _raw(url, "SELECT primary_key, secondary_key FROM services")
    for stored, plain in ((primary, "primary-secret-3"), (secondary, "secondary-secret-2")):
        assert stored.startswith("fernet:") and plain not in stored
        assert Fernet(key_file.read_bytes().strip()).decrypt(stored[len("fernet:") :].encode()).decode() == plain
    with Store.open(tmp_path / "alice") as again:
        record = again.get_service("svc")
        assert (record.primary_key, record.secondary_key) == ("primary-secret-3", "secondary-secret-2")


def test_a_sqlite_workspace_keeps_its_keys_as_before(tmp_path: Path) -> None:
    with Store.create(tmp_path, "ws") as store:
        store.create_service("svc", {}, primary_key="p", secondary_key="s")
        assert store.get_service("svc").primary_key == "p"
    assert _raw(f"sqlite:///{tmp_path}/.modelfleet/metadata.db", "SELECT primary_key FROM services") == [("p",)]
    assert not (tmp_path / ".modelfleet" / "secret.key").exists()


def test_one_signing_key_for_the_team_a_token_from_one_member_is_accepted_with_the_others_key(
    tmp_path: Path, postgres_server: Any
) -> None:
    url = postgres_server.new_database()
    Store.create(tmp_path / "alice", "team", database=url).close()
    Store.create(_join(tmp_path, "bob"), "team", database=url).close()
    # Alice gets a token in a process of her own (the SDK's get_token), and so makes the key.
    issued = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from modelfleet.control.credentials import signing_key; "
            "from modelfleet.router.auth import issue_token; "
            "print(issue_token(signing_key(Path(sys.argv[1])), 'svc', time.time())[0])",
            str(tmp_path / "alice"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    token = issued.stdout.strip()
    # Bob's cluster checks it with the public half of the key it reads from the shared workspace.
    assert verify_token(token, signing_key(tmp_path / "bob").public_key(), "svc", time.time()) is AuthResult.OK
    [(stored,)] = _raw(url, "SELECT value FROM secrets WHERE name = 'token-signing-key'")
    assert stored.startswith("fernet:") and "PRIVATE KEY" not in stored
    for who in ("alice", "bob"):  # no key file on either machine
        assert not (tmp_path / who / ".modelfleet" / "credentials" / SIGNING_KEY_FILE).exists()
    other, _ = issue_token(signing_key(tmp_path / "bob"), "svc", time.time())
    assert verify_token(other, signing_key(tmp_path / "alice").public_key(), "svc", time.time()) is AuthResult.OK


def test_the_team_key_can_come_from_the_environment(
    tmp_path: Path, postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres_server.new_database()
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("MODELFLEET_SECRET_KEY", key)
    with Store.create(tmp_path / "alice", "team", database=url) as alice:
        alice.create_service("svc", {}, primary_key="p", secondary_key="s")
    assert not (tmp_path / "alice" / ".modelfleet" / "secret.key").exists()  # nothing written: the env holds it
    with Store.create(tmp_path / "bob", "team", database=url) as bob:
        assert bob.get_service("svc").primary_key == "p"


def test_a_wrong_or_missing_key_is_refused_on_open_with_what_to_do(
    tmp_path: Path, postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres_server.new_database()
    Store.create(tmp_path / "alice", "team", database=url).close()
    # Mallory joins with a key of her own: refused before anything is written.
    with pytest.raises(ConfigError, match="does not decrypt this workspace's secrets: it is not the team's key"):
        Store.create(tmp_path / "mallory", "team", database=url)
    assert not (tmp_path / "mallory" / ".modelfleet" / "workspace.json").exists()
    (tmp_path / "alice" / ".modelfleet" / "secret.key").unlink()
    with pytest.raises(ConfigError, match="MODELFLEET_SECRET_KEY or MODELFLEET_SECRET_KEY_FILE, or copy the key"):
        Store.open(tmp_path / "alice")
    monkeypatch.setenv("MODELFLEET_SECRET_KEY", "not-a-key")
    with pytest.raises(ConfigError, match="from MODELFLEET_SECRET_KEY is not a Fernet key"):
        Store.open(tmp_path / "alice")
    monkeypatch.setenv("MODELFLEET_SECRET_KEY", Fernet.generate_key().decode())
    with pytest.raises(ConfigError, match="from MODELFLEET_SECRET_KEY does not decrypt"):
        Store.open(tmp_path / "alice")
    info = json.loads((tmp_path / "alice" / ".modelfleet" / "workspace.json").read_text())
    assert "secret" not in json.dumps(info) and set(info) == {"name", "format", "database"}
    assert os.environ["MODELFLEET_SECRET_KEY"] not in json.dumps(info)
