"""Real object-store servers for tests, on free loopback ports, each in its own temp folder.

- Azurite, the Azure Storage emulator Microsoft publishes (npm ``azurite``), for ``az://``.
  scripts/test.sh installs it into ``~/.cache/modelfleet/npm`` (outside the clone);
  ``MODELFLEET_AZURITE`` may name another ``azurite-blob``.
- moto's server mode, for ``s3://``: a stand-in for S3 (moto reimplements the S3 API in
  Python; it is not AWS), good enough to run s3fs's real HTTP requests against.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

AZURITE = Path(
    os.environ.get("MODELFLEET_AZURITE", Path.home() / ".cache/modelfleet/npm/node_modules/.bin/azurite-blob")
)
# Azurite's one account, with the key it publishes for everyone: no secret.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class Server:
    port: int
    env: dict[str, str]  # what a client needs in its environment to reach the server


@dataclass
class BlobBackend:
    kind: str
    url: str  # a fresh, empty container/bucket (or folder) and a prefix in it
    env: dict[str, str]  # the credentials a client reads from its environment


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}): {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s")


@contextlib.contextmanager
def _process(argv: list[str], port: int, what: str) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="modelfleet-objstore-"))
    log = folder / "log"
    with open(log, "wb") as out:
        # Its own process group, so the whole server (npm's node, moto's workers) ends with it.
        # setpriv --pdeathsig: the server dies with the test process even if no teardown runs.
        proc = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", "--", *argv],
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_listening(port, proc, what, log)
        yield folder
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def running_azurite() -> Iterator[Server]:
    if not AZURITE.is_file():
        raise RuntimeError(
            f"Azurite not found at {AZURITE}: `npm install --prefix ~/.cache/modelfleet/npm azurite@3` "
            "(scripts/test.sh does), or set MODELFLEET_AZURITE"
        )
    port = _free_port()
    argv = [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--silent", "--disableTelemetry"]
    # The Python SDK moves to new API versions before Azurite does; the calls we make are old ones.
    argv += ["--skipApiVersionCheck", "--loose"]
    with _process(argv + ["--location", "."], port, "Azurite"):
        conn = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
        )
        yield Server(port, {"AZURE_STORAGE_CONNECTION_STRING": conn})


@contextlib.contextmanager
def running_moto_s3() -> Iterator[Server]:
    port = _free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with _process(argv, port, "moto server (S3 stand-in)"):
        yield Server(
            port,
            {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            },
        )
