"""A real PostgreSQL server for tests: Debian's binaries, a throwaway cluster in a temp folder.

``initdb`` refuses to run as root, and sessions and CI run as root, so the cluster is made and
run as the ``postgres`` user the Debian package creates (``runuser``, ``setpriv``); as anyone
else it runs as that user. The server is a child of the test process and dies with it. It
listens on 127.0.0.1 on a free port and on a Unix socket in its own folder, with durability
off (a test cluster is thrown away, and fsync on a shared disk is slow)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
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


def _die_with_parent(argv: list[str]) -> list[str]:
    """``argv`` exec'd by setpriv (same pid, no process in between), as the server user when we
    are root, with SIGKILL on our death."""
    become = ["--reuid=postgres", "--regid=postgres", "--init-groups"] if os.geteuid() == 0 else []
    return ["setpriv", *become, "--pdeathsig", "KILL", "--", *argv]


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
        log = self.folder / "log"
        for _ in range(5):  # a free port can be taken between the probe and the bind: try another
            self.port = _free_port()
            argv = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.folder)]
            argv += ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off"]
            argv += ["-c", "full_page_writes=off", "-c", "max_connections=200"]
            with open(log, "ab") as out:
                # The postmaster is our child (not pg_ctl's daemon), and --pdeathsig ends it when
                # this process dies: a test run killed outright leaves no server behind.
                self.proc = subprocess.Popen(_die_with_parent(argv), stdout=out, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 60
            while self.proc.poll() is None and time.monotonic() < deadline:
                ready = subprocess.run(
                    [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"],
                    capture_output=True,
                )
                if ready.returncode == 0:
                    return
                time.sleep(0.1)
            self._end()
        raise RuntimeError(f"PostgreSQL did not start: {log.read_text(errors='replace')[-2000:]}")

    def _end(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGQUIT)  # PostgreSQL's immediate shutdown: the data is thrown away
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)

    def stop(self) -> None:
        self._end()
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
