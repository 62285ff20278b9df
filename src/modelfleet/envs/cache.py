"""The caches as folders: what they hold, and removing what nothing uses.

A workspace cache (``<workspace>/.modelfleet/envs``) holds environments built there and
symlinks to the machine-wide cache's; each link has a back-reference in the machine cache,
``.users/<hash>/<key>`` holding the workspace cache's path, so ``prune_machine`` removes a
machine environment only when no workspace still links to it. Removal takes the hash's
build lock without waiting, and skips an environment that is being built or linked.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelfleet.envs.build import JOURNAL, METADATA, CacheSettings, _remove, usable


@dataclass(frozen=True)
class CachedEnv:
    hash: str
    path: Path  # real location
    where: str  # "workspace" | "machine"
    metadata: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", "?"))


def list_cached(cache: Path, where: str) -> list[CachedEnv]:
    """The complete environments in one cache folder (links followed), oldest first."""
    found: list[CachedEnv] = []
    if not cache.is_dir():
        return found
    for entry in cache.iterdir():
        if entry.name.startswith(".") or not re.fullmatch(r"[0-9a-f]{64}", entry.name) or not usable(entry):
            continue
        try:
            metadata = json.loads((entry / METADATA).read_text())
        except (OSError, ValueError):
            continue
        found.append(CachedEnv(entry.name, entry.resolve(), where, metadata))
    return sorted(found, key=lambda e: e.metadata.get("created", 0))


def prune_workspace(settings: CacheSettings, in_use: set[str]) -> list[CachedEnv]:
    """Remove the workspace's environments (links, or local builds) whose hash no service uses."""
    removed = []
    cache = settings.workspace_cache
    for env in list_cached(cache, "workspace"):
        if env.hash in in_use:
            continue
        with _try_lock(env.path.parent / ".locks" / f"{env.hash}.lock") as held:
            if not held:
                continue  # being built or linked right now
            entry = cache / env.hash
            local = not entry.is_symlink()
            _remove(entry)
            if local:
                _remove(cache / ".users" / env.hash)
            else:
                key = hashlib.sha256(str(cache.resolve()).encode()).hexdigest()[:16]
                _remove(env.path.parent / ".users" / env.hash / key)
            removed.append(env)
    return removed


def machine_users(machine_cache: Path, digest: str) -> list[str]:
    """The workspace caches that still link to this machine environment."""
    users = []
    folder = machine_cache / ".users" / digest
    for record in folder.glob("*") if folder.is_dir() else []:
        workspace_cache = Path(record.read_text().strip())
        link = workspace_cache / digest
        if link.is_symlink() and link.resolve() == (machine_cache / digest).resolve():
            users.append(str(workspace_cache))
        else:
            record.unlink(missing_ok=True)  # that workspace pruned it or is gone
    return users


def prune_machine(machine_cache: Path) -> list[CachedEnv]:
    """Remove machine-wide environments that no workspace links to any more."""
    removed = []
    for env in list_cached(machine_cache, "machine"):
        with _try_lock(machine_cache / ".locks" / f"{env.hash}.lock") as held:
            if not held or machine_users(machine_cache, env.hash):
                continue
            trash = machine_cache / f".tmp-{env.hash[:16]}-prune-{secrets.token_hex(3)}"
            os.rename(env.path, trash)  # atomic: the entry is gone before its files go
            _remove(trash)
            _remove(machine_cache / ".users" / env.hash)
            removed.append(env)
    return removed


@contextlib.contextmanager
def _try_lock(path: Path) -> Iterator[bool]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def builds(cache: Path) -> list[dict[str, Any]]:
    """The journal of finished builds in one cache folder, oldest first."""
    try:
        text = (cache / JOURNAL).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
