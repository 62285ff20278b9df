"""A real PostgreSQL server for tests: Debian's binaries, a throwaway cluster in a temp folder.

``initdb`` refuses to run as root, and sessions and CI run as root, so the cluster is made and
run as the ``postgres`` user the Debian package creates (``runuser``); as anyone else it runs
as that user. It listens on 127.0.0.1 on a free port and on a Unix socket in its own folder,
with durability off (a test cluster is thrown away, and fsync on a shared disk is slow).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

PG_BIN_CANDIDATES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
USER = "modelfleet"


def pg_bin() -> Path:
    for folder in PG_BIN_CANDIDATES:
        if (folder / "initdb").is_file():
            return folder
    raise RuntimeError(
        "PostgreSQL server binaries not found: run `apt-get install -y postgresql` (scripts/test.sh does)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


class PostgresServer:
    def __init__(self) -> None:
        self.bin = pg_bin()
        self.folder = Path(tempfile.mkdtemp(prefix="modelfleet-pg-"))
        self.data = self.folder / "data"
        self.port = 0
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")

    def start(self) -> None:
        subprocess.run(
            _as_server_user([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", USER, "-E", "UTF8"]),
            check=True,
            capture_output=True,
        )
        for _ in range(5):  # a free port can be taken between the probe and the bind: try another
            self.port = _free_port()
            opts = (
                f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            started = subprocess.run(
                _as_server_user(
                    [str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.folder / "log"), "-w"]
                    + ["-t", "60", "start"]
                ),
                capture_output=True,
            )
            if started.returncode == 0:
                return
        raise RuntimeError(f"PostgreSQL did not start: {(self.folder / 'log').read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, FileNotFoundError):
            subprocess.run(
                _as_server_user([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"]),
                check=True,
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(self.folder, ignore_errors=True)

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=USER, dbname="postgres", autocommit=True)

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{dbname}"


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    started = time.monotonic()
    try:
        server.start()
        server.started_in_s = time.monotonic() - started  # type: ignore[attr-defined]
        yield server
    finally:
        server.stop()
