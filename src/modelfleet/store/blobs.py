"""Content-addressed blob store: ``blobs/ab/cdef...`` holds the bytes whose sha256 is ``abcdef...``.

Theory of operation. A blob is written to a temporary file under ``blobs/.tmp/`` (the same
file system as its final place), hashed while it is written, fsynced, made read-only and
renamed into place. A rename is atomic, so a reader sees either no blob or the whole blob,
never part of one. Putting content that is already there only removes the temporary file,
so puts are idempotent; two processes putting the same content at once both rename a
complete file with the same bytes, and whichever lands last wins with no harm done.

Blobs are read-only (0444), and replicas never get them: a replica's model files are its
own copies (block-sharing where the file system can), see :meth:`BlobStore.copy_out`. A hard
link would be the same file, and a score.py that writes to its model file (root ignores 0444,
and the owner may chmod it first) would change the stored version for every service.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO

from modelfleet.errors import ConfigError, NotFound

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1024 * 1024


def check_digest(digest: str, *, strict: bool = True) -> str | None:
    """``digest`` if it is a sha256 in hex; else a ConfigError (or None when not ``strict``)."""
    if isinstance(digest, str) and _DIGEST.match(digest) is not None:
        return digest
    if not strict:
        return None
    raise ConfigError(f"blob digest must be 64 lowercase hex characters (a sha256), got {digest!r}")


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / ".tmp"

    def __repr__(self) -> str:
        return f"<BlobStore {self.root}>"

    def ensure(self) -> None:
        """Create the folders (idempotent)."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def put_file(self, path: Path, *, move: bool = False) -> str:
        """Store the file's bytes; return their sha256.

        With ``move``, the file (a temporary file of the caller's, best made under
        :attr:`tmp_dir`) is renamed into the store instead of copied, and is gone afterwards.
        """
        if move:
            digest = _hash_file(path)
            _finish(path)
            try:
                self._install(path, digest)
            except OSError:
                # Another file system: fall back to a copy.
                digest = self.put_file(path)
                path.unlink()
            return digest
        tmp = self._new_temp()
        try:
            hasher = hashlib.sha256()
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    hasher.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            digest = hasher.hexdigest()
            os.chmod(tmp, 0o444)
            self._install(tmp, digest)
        finally:
            tmp.unlink(missing_ok=True)
        return digest

    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; return its sha256."""
        digest = hashlib.sha256(data).hexdigest()
        if self.has(digest):
            return digest
        tmp = self._new_temp()
        try:
            with open(tmp, "wb") as dst:
                dst.write(data)
                dst.flush()
                os.fsync(dst.fileno())
            os.chmod(tmp, 0o444)
            self._install(tmp, digest)
        finally:
            tmp.unlink(missing_ok=True)
        return digest

    def has(self, digest: str) -> bool:
        return _DIGEST.match(digest) is not None and self._where(digest).is_file()

    def path(self, digest: str) -> Path:
        """The blob's file (read-only); NotFound when the store does not hold it."""
        check_digest(digest)
        where = self._where(digest)
        if not where.is_file():
            raise NotFound(
                f"blob {digest} is missing from {self.root}; the workspace's files were removed or "
                "are incomplete: register the model or deploy the source again"
            )
        return where

    def verify(self, digest: str) -> None:
        """Re-hash the stored blob; a ConfigError says it is corrupt (the disk changed it)."""
        got = _hash_file(self.path(digest))
        if got != digest:
            raise ConfigError(
                f"blob {digest} in {self.root} now hashes to {got}: the file was changed on disk; "
                "register that model again"
            )

    def open(self, digest: str) -> BinaryIO:
        return open(self.path(digest), "rb")

    def copy_out(self, digest: str, target: Path) -> None:
        """Write the blob's bytes to ``target``, a new file of its own, read-only (0444).

        ``copy_file_range`` shares the blocks where the file system can (a reflink on btrfs, XFS,
        bcachefs, NFS 4.2: no bytes copied until one side writes), else copies in the kernel.
        Never a hard link: whoever could write or chmod the link would change the blob for
        everyone. Created read-only from the start, so no chmod follows.
        """
        source = self.path(digest)
        src = os.open(source, os.O_RDONLY)
        try:
            dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            try:
                _copy_fd(src, dst, os.fstat(src).st_size)
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def new_temp_path(self, suffix: str = "") -> Path:
        """A fresh path under :attr:`tmp_dir` for a file that will be handed to ``put_file(move=True)``."""
        return self._new_temp(suffix)

    # internals

    def _where(self, digest: str) -> Path:
        return self.root / digest[:2] / digest[2:]

    def _new_temp(self, suffix: str = "") -> Path:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="put-", suffix=suffix)
        os.close(fd)
        return Path(name)

    def _install(self, tmp: Path, digest: str) -> None:
        final = self._where(digest)
        if final.is_file():
            tmp.unlink()
            return
        final.parent.mkdir(exist_ok=True)
        os.replace(tmp, final)
        _fsync_dir(final.parent)


def _copy_fd(src: int, dst: int, size: int) -> None:
    offset = 0
    try:
        while offset < size:
            done = os.copy_file_range(src, dst, size - offset, offset, offset)
            if done == 0:
                break
            offset += done
    except OSError:  # no copy_file_range between these (another file system, an old kernel)
        while offset < size:
            done = os.sendfile(dst, src, offset, size - offset)
            if done == 0:
                break
            offset += done
    if offset != size:
        raise OSError(f"copied {offset} of {size} bytes; the blob changed or the disk is full")


def _hash_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _finish(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(path, 0o444)


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not every platform can open a folder.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
