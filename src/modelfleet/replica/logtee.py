"""A Kubernetes replica's output, to its container log and to files the ``ship`` sidecar uploads.

With ``MODELFLEET_LOG_TEE=<folder>`` set (the Kubernetes target sets it,
``targets/kubernetes/manifests.py``; the local target does not: it sets ``MODELFLEET_LOG_FILE``),
the replica points its fds 1 and 2 at a pipe at start, and a thread copies every chunk it
reads to the original stdout (so ``kubectl logs`` and pods/log still show everything) and to
``<folder>/<replica id>/<seq, 6 digits>.log``. Everything written to fds 1 and 2 goes through
it: the replica's log lines, the user's ``print()``s, tracebacks, and what C code writes.
The thread reads what gathered in the pipe (1 MiB) at most every 20 ms, so a busy replica pays
one wake-up per batch, not per line (``bench/log_tee.py``: CPU per request within the noise).

Files: a process start opens the next sequence number (a restarted container's output starts
a new file; the last one's lines stay). A file is append-only and never renamed, so the
sidecar can name what it uploads by file and offset (``ship.py``); when a file reaches
``MODELFLEET_LOG_MAX_BYTES`` (default 10 MiB) the next line starts the next file (a file
ends with a whole line; a line longer than the limit is a file of its own), and the last
``MODELFLEET_LOG_BACKUPS`` + 1 files (default 3 + 1) are kept. A file's last line is completed
with a newline at exit, so a line cut by the exit is uploaded too.

A write to the file that fails (a full disk) is dropped and counted (``lines_dropped``); the
copy to stdout goes on. Stdlib only: it runs in the user's environment.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ENV", "LogTee", "start", "start_from_env"]

ENV = "MODELFLEET_LOG_TEE"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 3
_NAME = re.compile(r"^(\d{6})\.log$")
_PIPE_BYTES = 1 << 20  # what writers may put in the pipe before they wait for the thread
_BATCH_S = 0.02  # after a short read, let lines gather: one wake-up per batch, not per line


class LogTee:
    """The copying thread and its current file (see module docstring)."""

    def __init__(self, folder: Path, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS) -> None:
        if max_bytes < 1 or backups < 0:
            raise ValueError(f"max_bytes must be >= 1 and backups >= 0 (got {max_bytes}, {backups})")
        self.folder = folder
        self.max_bytes = max_bytes
        self.backups = backups
        self.lines_dropped = 0
        folder.mkdir(parents=True, exist_ok=True)
        seqs = [int(m[1]) for p in folder.iterdir() if (m := _NAME.match(p.name))]
        self.seq = max(seqs, default=0) + 1
        self._fd = self._open()
        self._size = 0
        self._ends_line = True
        self._stdout = os.dup(1)  # the container's own stdout: what pods/log reads
        read, write = os.pipe()
        with contextlib.suppress(OSError, AttributeError):  # Linux; elsewhere the default size
            fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        os.set_inheritable(self._stdout, False)
        os.dup2(write, 1)
        os.dup2(write, 2)
        os.close(write)
        self._read = read
        self._thread = threading.Thread(target=self._copy, name="modelfleet-logtee", daemon=True)
        self._thread.start()

    @property
    def path(self) -> Path:
        return self.folder / f"{self.seq:06d}.log"

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _next_file(self) -> None:
        os.close(self._fd)
        self.seq += 1
        self._fd = self._open()
        self._size = 0
        for p in self.folder.iterdir():
            m = _NAME.match(p.name)
            if m and int(m[1]) < self.seq - self.backups:
                with contextlib.suppress(OSError):
                    p.unlink()

    def _to_file(self, data: bytes) -> None:
        while data:
            if self._size + len(data) <= self.max_bytes:
                self._write(data)
                return
            # too much for this file: what fits, up to a line's end, here; the rest in the next
            room = self.max_bytes - self._size
            cut = data.rfind(b"\n", 0, room) + 1 if room > 0 else 0
            if not cut and self._size and self._ends_line:
                self._next_file()
                continue
            if not cut:  # a line longer than a file, or the rest of one begun: up to its end
                cut = data.find(b"\n") + 1 or len(data)
            self._write(data[:cut])
            data = data[cut:]

    def _write(self, data: bytes) -> None:
        try:
            os.write(self._fd, data)  # O_APPEND, one write: the file holds it whole or not at all
        except OSError:
            self.lines_dropped += max(1, data.count(b"\n"))
            return
        self._size += len(data)
        self._ends_line = data.endswith(b"\n")

    def _copy(self) -> None:
        while True:
            try:
                data = os.read(self._read, _PIPE_BYTES)
            except OSError:
                break
            if not data:
                break
            with contextlib.suppress(OSError):
                view = memoryview(data)
                while view:
                    view = view[os.write(self._stdout, view) :]
            self._to_file(data)
            if len(data) < _PIPE_BYTES:
                time.sleep(_BATCH_S)
        if not self._ends_line:
            self._to_file(b"\n")

    def close(self, timeout: float = 2.0) -> None:
        """Flush Python's streams, give fds 1 and 2 back to the container's stdout (the pipe's
        write end closes) and wait for the thread to copy what is left."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(self._stdout, 1)
        os.dup2(self._stdout, 2)
        self._thread.join(timeout)


def start(
    folder: str | os.PathLike[str], name: str, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS
) -> LogTee:
    """Tee fds 1 and 2 to ``<folder>/<name>/`` until the process exits."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"the replica id names a folder: one path component (got {name!r})")
    tee = LogTee(Path(folder) / name, max_bytes, backups)
    atexit.register(tee.close)
    return tee


def start_from_env(
    name: str,
    max_bytes: int = DEFAULT_MAX_BYTES,
    backups: int = DEFAULT_BACKUPS,
    environ: Mapping[str, str] | None = None,
) -> LogTee | None:
    """``start`` into ``MODELFLEET_LOG_TEE``; None when it is not set. The sizes are the
    replica's ``MODELFLEET_LOG_MAX_BYTES``/``MODELFLEET_LOG_BACKUPS`` (``replica/config.py``)."""
    folder = (os.environ if environ is None else environ).get(ENV)
    return start(folder, name, max_bytes, backups) if folder else None
