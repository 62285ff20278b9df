"""Log files kept in the workspace: size-based rotation, reading the last lines, following.

Rotation (``RotatingFile``): a write that would take ``path`` past ``max_bytes`` first renames
``path.{N-1}`` -> ``path.N`` ... ``path`` -> ``path.1`` (the oldest, ``path.N`` with N =
``backups``, is dropped) and opens a fresh ``path``. Renaming, not copying and truncating, so
no line is ever lost or split: every file holds whole writes, and each is at most
``max_bytes`` unless a single write is larger. Two processes may append to one file (the old
and the new replica of one index while an update drains): the size is read with ``fstat``
on each write, rotation happens under an ``flock`` on ``path.lock``, and a writer whose file
was rotated by the other reopens ``path`` instead of rotating again.

Worked example: ``max_bytes=100, backups=2``. Writes of 60, 30 and 20 bytes: the third would
make 110, so ``path`` (90 bytes) becomes ``path.1`` and the 20 bytes start a new ``path``.
Two rotations later the first 90 bytes are in ``path.2``; the third rotation drops them.

A full disk: by default a failed write raises ``OSError``, as any file's does. With
``count_failures=True`` (the replica's own stdout and stderr, where an exception would reach
the script's ``print`` and fail the request) the lines that could not be written are dropped
and counted instead (``lines_dropped``, ``write_errors``, ``last_error``: ``counts()``), and
writing resumes when there is room again.

Only stdlib: the replica (in the user's environment) uses this for its own stdout/stderr.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

__all__ = ["DEFAULT_BACKUPS", "DEFAULT_MAX_BYTES", "RotatingFile", "chain", "follow", "tail"]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 3


class RotatingFile(io.RawIOBase):
    """An append-only byte sink for ``path`` with size-based rotation (see module docstring).

    ``on_rotate(fd)`` is called with the new file's descriptor after each rotation (the replica
    points its fds 1 and 2 there, so output written below Python follows too)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
        on_rotate: Callable[[int], None] | None = None,
        count_failures: bool = False,
    ) -> None:
        super().__init__()
        if max_bytes < 1 or backups < 1:
            raise ValueError(f"max_bytes and backups must be >= 1 (got {max_bytes}, {backups})")
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.on_rotate = on_rotate
        self.rotations = 0
        self.count_failures = count_failures
        self.lines_dropped = 0
        self.write_errors = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        """Append ``data``. A block of lines larger than the room left is split at line ends,
        so that files stay within ``max_bytes``; only a single line longer than that is not."""
        data = bytes(data)
        n = len(data)
        with self._lock:
            if self._fd < 0:
                raise ValueError("write to a closed RotatingFile")
            try:
                self._append(data)
            except _PartlyWritten as exc:
                if not self.count_failures:
                    raise
                self.write_errors += 1
                self.lines_dropped += max(1, data.count(b"\n", exc.written))
                self.last_error = f"writing {self.path}: {exc.strerror or exc}"
        return n

    def counts(self) -> dict[str, int | str | None]:
        """What ``count_failures`` dropped, under the names the replica's stats file uses."""
        return {
            "log_lines_dropped": self.lines_dropped,
            "log_write_errors": self.write_errors,
            "log_last_error": self.last_error,
        }

    def _append(self, data: bytes) -> None:
        """Write all of ``data``, rotating as needed; the lock is held. A failure part of the
        way raises ``_PartlyWritten``, an ``OSError`` that says how much was written."""
        n = len(data)
        start = 0
        try:
            size = os.fstat(self._fd).st_size
            while start < n:
                room = self.max_bytes - size
                if n - start <= room:
                    end = n
                else:
                    end = data.rfind(b"\n", start, start + room) + 1  # 0: no line end fits
                    if end <= start:
                        if size:  # start a fresh file and try again with all of max_bytes
                            self._rotate()
                            size = 0
                            continue
                        end = data.find(b"\n", start) + 1 or n  # one line longer than max_bytes
                size += end - start
                while start < end:
                    start += os.write(self._fd, memoryview(data)[start:end])
                if start < n:
                    self._rotate()
                    size = 0
        except OSError as exc:
            raise _PartlyWritten(exc.errno or 0, exc.strerror or str(exc), start) from exc

    def _rotate(self) -> None:
        lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = -1
            if current == os.fstat(self._fd).st_ino:  # nobody rotated it meanwhile: we do
                for i in range(self.backups - 1, 0, -1):
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
                os.replace(self.path, self.path + ".1")
                self.rotations += 1
            old, self._fd = self._fd, self._open()
            os.close(old)
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)
        if self.on_rotate is not None:
            self.on_rotate(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        super().close()


class _PartlyWritten(OSError):
    def __init__(self, errno: int, strerror: str, written: int) -> None:
        super().__init__(errno, strerror)
        self.written = written


def chain(path: Path, backups: int = 99) -> list[Path]:
    """``path`` and its rotated files, oldest first (``path.N`` ... ``path.1``, ``path``)."""
    older = []
    for i in range(1, backups + 1):
        p = path.with_name(f"{path.name}.{i}")
        if not p.is_file():
            break
        older.append(p)
    return [*reversed(older), *([path] if path.is_file() else [])]


def tail(files: Sequence[Path], num_lines: int) -> list[str]:
    """The last ``num_lines`` lines of the files read one after the other (oldest first)."""
    if num_lines <= 0:
        return []
    lines: list[str] = []
    for path in reversed(files):  # newest first; older files only while lines are missing
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            continue
        lines = text.splitlines(keepends=True) + lines
        if len(lines) >= num_lines:
            break
    return lines[-num_lines:]


class _Followed:
    __slots__ = ("path", "file", "inode")

    def __init__(self, path: Path, at_end: bool) -> None:
        self.path = path
        self.file = open(path, "rb")  # noqa: SIM115 - kept open across polls
        self.inode = os.fstat(self.file.fileno()).st_ino
        if at_end:
            self.file.seek(0, os.SEEK_END)


def _rotated_since(path: Path, inode: int, backups: int = 99) -> bytes:
    """The whole content of the rotated files newer than the one with ``inode`` (now
    ``path.N``): ``path.{N-1}`` ... ``path.1``, oldest first."""
    newer: list[Path] = []
    for i in range(1, backups + 1):
        p = path.with_name(f"{path.name}.{i}")
        try:
            if os.stat(p).st_ino == inode:
                break
        except FileNotFoundError:
            return b""  # the old file is gone (dropped): what came between cannot be told apart
        newer.append(p)
    out = b""
    for p in reversed(newer):
        with contextlib.suppress(FileNotFoundError):
            out += p.read_bytes()
    return out


def follow(
    paths: Callable[[], Sequence[Path]],
    interval_s: float = 0.2,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[tuple[Path, str]]:
    """Yield ``(path, line)`` for each whole line appended to the files ``paths()`` names,
    from now on, until ``stop()``. Survives rotation (the renamed file is read to its end,
    then the new one from its start) and truncation; files that appear later are read from
    their start."""
    followed: dict[Path, _Followed] = {}
    partial: dict[Path, bytes] = {}
    first = True
    try:
        while not stop():
            for path in paths():
                if path not in followed:
                    with contextlib.suppress(FileNotFoundError):
                        followed[path] = _Followed(path, at_end=first)
            first = False
            for path, f in list(followed.items()):
                data = f.file.read()
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    st = None
                if st is not None and st.st_ino != f.inode:  # rotated: the old file is read out above
                    data += f.file.read()
                    f.file.close()
                    data += _rotated_since(path, f.inode)  # rotated more than once since the last poll
                    followed[path] = f = _Followed(path, at_end=False)
                    data += f.file.read()
                elif st is not None and st.st_size < f.file.tell():  # truncated
                    f.file.seek(0)
                    data += f.file.read()
                if data:
                    buf = partial.pop(path, b"") + data
                    *whole, rest = buf.split(b"\n")
                    if rest:
                        partial[path] = rest
                    for line in whole:
                        yield path, line.decode("utf-8", "replace") + "\n"
            time.sleep(interval_s)
    finally:
        for f in followed.values():
            f.file.close()
