"""Where the local cluster's replicas put their Unix sockets.

A folder only the cluster's user may enter (0700): ``<runtime>/sockets``. A socket path has
at most 107 bytes (``sockaddr_un.sun_path`` less its NUL), and a workspace may lie deep enough
to pass that (pytest's temporary folders do); then a short private folder is made in the
temporary folder (``mkdtemp(prefix="mf-")``, 0700), its path recorded in
``<runtime>/socket-dir`` so that whoever stops the cluster (or the next daemon, after a
crash) removes it. Only a folder of that shape is ever removed, whatever the record says.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["SocketFolder"]

SUN_PATH_MAX = 107
_LONGEST_NAME = 64 + len(".sock")  # a replica id: service name (<= 32), generation and index, with room
_RECORD = "socket-dir"
_PREFIX = "mf-"


class SocketFolder:
    def __init__(self, runtime_dir: Path) -> None:
        self._runtime_dir = runtime_dir
        self._folder: Path | None = None

    def __repr__(self) -> str:
        return f"<SocketFolder {self._folder}>"

    def path_for(self, replica_id: str) -> Path:
        """The socket path of one replica; the folder is made on first use."""
        return self.folder() / f"{replica_id}.sock"

    def folder(self) -> Path:
        if self._folder is not None:
            return self._folder
        self.remove()  # one left by a daemon that was killed
        folder = self._runtime_dir / "sockets"
        if len(os.fsencode(folder)) + 1 + _LONGEST_NAME > SUN_PATH_MAX:
            folder = Path(tempfile.mkdtemp(prefix=_PREFIX))  # made 0700
            _write_private(self._runtime_dir / _RECORD, str(folder))
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)  # mkdir's mode is cut by the umask, and the folder may predate us
        self._folder = folder
        return folder

    def remove(self) -> None:
        """Remove the short folder, if one is recorded (the workspace's own stays)."""
        record = self._runtime_dir / _RECORD
        try:
            folder = Path(record.read_text().strip())
        except FileNotFoundError:
            return
        if folder.parent == Path(tempfile.gettempdir()) and folder.name.startswith(_PREFIX):
            shutil.rmtree(folder, ignore_errors=True)
        record.unlink(missing_ok=True)
        if self._folder == folder:
            self._folder = None


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
