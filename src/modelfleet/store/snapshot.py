"""Source snapshots: ``source_directory`` → a deterministic zip, and back.

Theory of operation.

What goes in. The folder is walked top-down. In each folder, ``.amlignore`` is read when it
exists, else ``.gitignore``; its patterns apply to that folder and below, with git's rules
(pathspec's ``GitIgnoreSpec``): a deeper file's match beats a shallower one's, within a file
the last matching pattern wins (so ``!keep.log`` after ``*.log`` keeps it), a pattern ending
in ``/`` matches folders only, and a file inside an excluded folder cannot be re-included,
because an excluded folder is never entered. ``.git`` is always left out, and so is
``.modelfleet`` (a workspace's own metadata, which holds service keys, must never ship to
a replica). A symlink is stored as what it points to when that lies inside the folder; one
pointing outside is refused, since the snapshot would then depend on files the user did not
mean to ship, and so is one pointing into ``.git`` or ``.modelfleet`` (a link to the
workspace's signing key would otherwise ship the key). Sockets, pipes and devices are
skipped, as git skips them.

Determinism. Entries are sorted by name, every timestamp is 1980-01-01 00:00:00, and the
permissions are normalised to 0644 (0755 when the owner may execute the file; folders
0755), so the same tree gives the same bytes and the same sha256. Example: ``a.py`` and
``sub/b.sh`` (mode 0700) give the entries ``a.py`` 0644, ``sub/`` 0755, ``sub/b.sh`` 0755,
whoever made them and whenever.

Limits. As in v1, a snapshot whose files total more than 300 MB is refused.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pathspec import GitIgnoreSpec

from modelfleet.errors import ConfigError

MAX_SNAPSHOT_BYTES = 300 * 1024 * 1024
ALWAYS_EXCLUDED = frozenset({".git", ".modelfleet"})
_EPOCH = (1980, 1, 1, 0, 0, 0)
_UNIX = 3  # ZipInfo.create_system for Unix permission bits


@dataclass(frozen=True)
class _Entry:
    arcname: str  # posix, relative; folders end with "/"
    source: Path | None  # None for folders
    executable: bool
    size: int


def make_snapshot(source_dir: Path, out_path: Path, *, max_bytes: int = MAX_SNAPSHOT_BYTES) -> None:
    """Write the deterministic zip of ``source_dir`` (minus what the ignore files exclude) to ``out_path``."""
    entries = collect(source_dir)
    total = sum(e.size for e in entries)
    if total > max_bytes:
        raise ConfigError(
            f"source_directory {source_dir} holds {total / 2**20:.1f} MB of files, over the "
            f"{max_bytes / 2**20:.0f} MB snapshot limit; list large files (data, checkpoints, virtual "
            "environments) in an .amlignore file there, or register them as a model instead"
        )
    with zipfile.ZipFile(out_path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for entry in sorted(entries, key=lambda e: e.arcname):
            info = zipfile.ZipInfo(entry.arcname, date_time=_EPOCH)
            info.create_system = _UNIX
            if entry.source is None:
                info.external_attr = ((stat.S_IFDIR | 0o755) << 16) | 0x10  # 0x10: MS-DOS folder bit
                zf.writestr(info, b"")
                continue
            info.external_attr = (stat.S_IFREG | (0o755 if entry.executable else 0o644)) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(entry.source, "rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)


def collect(source_dir: Path) -> list[_Entry]:
    """The folders and files a snapshot of ``source_dir`` holds, in walk order."""
    if not source_dir.is_dir():
        raise ConfigError(f"source_directory {source_dir} is not a folder; pass the folder holding the entry script")
    root = source_dir.resolve()
    out: list[_Entry] = []
    _walk(root, root, "", [], {str(root)}, out)
    return out


def _walk(
    root: Path,
    folder: Path,
    prefix: str,
    specs: list[tuple[str, GitIgnoreSpec]],
    ancestors: set[str],
    out: list[_Entry],
) -> None:
    spec = _read_ignore_file(folder)
    if spec is not None:
        specs = [*specs, (prefix, spec)]
    with os.scandir(folder) as it:
        children = sorted(it, key=lambda d: d.name)
    for child in children:
        if child.name in ALWAYS_EXCLUDED:
            continue
        rel = prefix + child.name
        is_link = child.is_symlink()
        try:
            is_dir = child.is_dir()  # follows links
        except OSError:
            is_dir = False
        if _ignored(rel, is_dir, specs):
            continue
        real = Path(os.path.realpath(child.path))
        if is_link:
            _check_link(root, rel, child.path, real)
        if is_dir:
            if str(real) in ancestors:
                raise ConfigError(
                    f"symlink {rel} in source_directory {root} points to {real}, a folder that holds "
                    "it, which would make the snapshot endless; remove the link or add it to .amlignore"
                )
            out.append(_Entry(rel + "/", None, True, 0))
            _walk(root, real if is_link else Path(child.path), rel + "/", specs, ancestors | {str(real)}, out)
            continue
        st = os.stat(child.path)
        if not stat.S_ISREG(st.st_mode):
            continue  # sockets, pipes, devices: nothing a zip can hold
        out.append(_Entry(rel, Path(child.path), bool(st.st_mode & stat.S_IXUSR), st.st_size))


def _check_link(root: Path, rel: str, path: str, real: Path) -> None:
    target = os.readlink(path)
    if not real.is_relative_to(root):
        raise ConfigError(
            f"symlink {rel} in source_directory {root} points outside it (to {target}, which is {real}); "
            "copy the file into the folder or add the link to .amlignore"
        )
    if not real.exists():
        raise ConfigError(
            f"symlink {rel} in source_directory {root} points to {target}, which does not exist; "
            "fix or remove the link, or add it to .amlignore"
        )
    hidden = ALWAYS_EXCLUDED.intersection(real.relative_to(root).parts)
    if hidden:
        # e.g. a link to .modelfleet/credentials/token-signing-key.pem would ship the signing key
        raise ConfigError(
            f"symlink {rel} in source_directory {root} points into {'/'.join(sorted(hidden))} (to {target}), "
            "which snapshots never hold: it keeps a workspace's keys or git's metadata; remove the link "
            "or add it to .amlignore"
        )


def _read_ignore_file(folder: Path) -> GitIgnoreSpec | None:
    for name in (".amlignore", ".gitignore"):
        candidate = folder / name
        if candidate.is_file():
            with open(candidate, encoding="utf-8", errors="replace") as f:
                return GitIgnoreSpec.from_lines(f.read().splitlines())
    return None


def _ignored(rel: str, is_dir: bool, specs: list[tuple[str, GitIgnoreSpec]]) -> bool:
    # Deepest ignore file first: the first one with a matching pattern decides.
    for prefix, spec in reversed(specs):
        local = rel[len(prefix) :] + ("/" if is_dir else "")
        result = spec.check_file(local)
        if result.include is not None:
            return bool(result.include)
    return False


def extract_snapshot(zip_path: Path, dest_dir: Path) -> None:
    """Unpack a snapshot into ``dest_dir``, refusing any entry that would land outside it.

    Every entry is checked before anything is written, so a refused zip leaves ``dest_dir``
    as it was.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir.resolve()
    with zipfile.ZipFile(zip_path) as zf:
        plan: list[tuple[zipfile.ZipInfo, Path]] = []
        for info in zf.infolist():
            plan.append((info, _safe_target(dest, info)))
        for info, target in plan:
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink():
                target.unlink()
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(target, 0o755 if mode & stat.S_IXUSR else 0o644)


def _safe_target(dest: Path, info: zipfile.ZipInfo) -> Path:
    name = info.filename
    refuse = (
        f"snapshot entry {name!r} would be written outside {dest}; the snapshot is corrupt or "
        "was not made by modelfleet: deploy from the source folder again"
    )
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ConfigError(refuse)
    parts = PurePosixPath(name).parts
    if not parts or any(p in ("..", "") for p in parts):
        raise ConfigError(refuse)
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ConfigError(
            f"snapshot entry {name!r} is a symlink, which modelfleet snapshots never hold; the snapshot "
            "is corrupt or was not made by modelfleet: deploy from the source folder again"
        )
    target = dest.joinpath(*parts)
    # A symlink already in dest_dir could still lead outside; resolve what exists.
    if not target.resolve().is_relative_to(dest):
        raise ConfigError(refuse)
    return target
