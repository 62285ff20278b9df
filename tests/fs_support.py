"""Folders in tests: one nobody may create files in, for the tests of what a full or read-only
disk does (tests/telemetry, tests/replica); and the files of one that changes as it is read, for
the tests that look through a workspace or runtime folder for a secret."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """A folder nobody may create files in: chattr +i as root (root ignores modes), else 0555."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
            pytest.skip("running as root and chattr +i is not available here")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
        try:
            yield
        finally:
            folder.chmod(stat.S_IRWXU)


def files_with_bytes(root: Path, suffix: str = "") -> Iterator[tuple[Path, bytes]]:
    """Each regular file under ``root`` whose name ends in ``suffix``, with its bytes.

    The folder may change meanwhile: a running daemon or controller deletes old generations,
    laid uploads and rotated logs. A file or folder gone before it is read is passed over (as
    ``os.walk`` passes over a folder gone); ``Path.rglob`` raises FileNotFoundError instead."""
    for folder, _folders, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            if not name.endswith(suffix) or not path.is_file():  # sockets and pipes too
                continue
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            yield path, data
