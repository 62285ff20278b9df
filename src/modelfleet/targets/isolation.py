"""What a replica process may touch: the user it runs as and its memory limit.

The local target calls :func:`spawn_options` when it starts a replica and passes what it
returns to ``create_subprocess_exec``; when a replica exits it asks :func:`exit_reason`
whether the kernel killed it for memory.

Who the replica runs as. A daemon run by an ordinary user starts replicas as that user. A
daemon run as root starts them as ``nobody`` (:data:`REPLICA_USER`): root ignores file
permissions, so a root replica could write any workspace file (blobs, keys, metadata.db).
For that to work the replica needs, and is given through the group of ``nobody``: traversal
of ``.modelfleet``, ``runtime`` and its service folder (mode g+x, nothing for others), read
access to its generation's app folder, write access to its service's ``logs`` and ``run``
folders, its socket's folder and its collected-data folder, and its own log file. It gets
nothing else: blobs, ``metadata.db`` and credentials are made owner-only, other services'
data stay root's. ``nobody`` rather than a user of our own: nothing is added to the
machine's user database (the price: other processes running as ``nobody`` share that group
access to the runtime folders, not to the store). When the interpreter cannot be reached
by ``nobody`` (it lives under ``/root``, mode 0700, say) the replica runs as root, and its
log says why and what to change. Either way the replica's model files are its own read-only
copies (``Store.materialize_model``), so a write never reaches a blob.

Replicas of different services all run as ``nobody``, so one can enter the socket folder
and open another service's socket. What keeps it out is the other service's secret (the
local target's ``replica_secret``, in the replica's ``MODELFLEET_REPLICA_SECRET``): without
it every request but ``GET /`` is answered 403. So that one ``nobody`` process cannot read
that secret out of another's ``/proc/PID/environ`` or memory, such a replica is told
(:data:`NOT_DUMPABLE_ENV`) to make itself not dumpable (``PR_SET_DUMPABLE`` 0) before it
loads the script: its ``/proc`` files then belong to root and it cannot be traced. (From
exec until that call, the interpreter's start, it is still dumpable: a ``nobody`` process
polling ``/proc`` at that moment could read the secret. Closing that window needs the secret
passed another way than the environment, e.g. on an inherited socket.)

Memory. ``memory_gb_limit`` (the limit; ``memory_gb`` is the request, as in v1 and
Kubernetes) becomes a memory cgroup per replica, ``memory.max`` (cgroup v2) or
``memory.limit_in_bytes`` (v1), with swap held to the same bound where the kernel lets us,
so going past it ends in the kernel's OOM kill, which :func:`exit_reason` then reports as
such. Not RLIMIT_AS: that caps address space, not memory, and breaks numpy, CUDA and uvloop,
which reserve far more than they touch. Where no memory cgroup can be made (not root and no
delegated cgroup v2 subtree, no memory controller), the limit is not enforced, and the
replica's log and the service's state detail (``service.error``) say so. cgroup v2 needs
the daemon alone in a cgroup whose memory controller it may hand down: as root it moves
itself into a leaf ``modelfleet-daemon`` of its own cgroup; as a user, run it in a
delegated one, e.g. ``systemd-run --user --scope -p Delegate=yes modelfleet cluster start``.

The replica's cgroup is joined, and privileges dropped, in the child between fork and exec,
so not one page is charged elsewhere and nothing runs as root that the script controls.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import logging
import os
import pwd
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelfleet.replica.config import NOT_DUMPABLE_ENV
from modelfleet.targets.base import ReplicaPlan

log = logging.getLogger("modelfleet.targets.isolation")

REPLICA_USER = "nobody"
MEMORY_LIMIT_ENV = "MODELFLEET_MEMORY_LIMIT_BYTES"  # set by control/layout.py from memory_gb_limit
CGROUP_ROOT = Path("/sys/fs/cgroup")
_DATA_DIR_ENV = "MODELFLEET_DATA_DIR"
_PRIVATE = ("blobs", "credentials", "metadata.db", "metadata.db-wal", "metadata.db-shm")
_DAEMON_LEAF = "modelfleet-daemon"  # cgroup v2: where the daemon moves itself (see the module's doc)


@dataclass(frozen=True)
class Identity:
    user: str
    uid: int
    gid: int


@dataclass(frozen=True)
class MemoryCgroup:
    path: Path
    version: int  # 1 or 2
    limit_bytes: int

    def oom_kills(self) -> int:
        """How many processes the kernel killed in this cgroup for going over the limit."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            text = (self.path / name).read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0


@dataclass
class _Spawned:
    log_path: Path
    cgroup: MemoryCgroup | None


_spawned: dict[str, _Spawned] = {}
_granted: set[tuple[Path, int]] = set()
_launches = itertools.count(1)


def spawn_options(
    plan: ReplicaPlan,
    replica_id: str,
    log_path: Path,
    run_dir: Path,
    socket_path: Path | None,
    then: Callable[[], None],
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for the replica's ``create_subprocess_exec``: a ``preexec_fn`` that
    joins the replica's memory cgroup, drops to the replica's user, then calls ``then`` (which
    must run last: a change of user clears PR_SET_PDEATHSIG). Notes what it did in the log.
    ``env``, the replica's environment, gets a ``HOME`` (and ``XDG_CACHE_HOME``) of its own when
    it runs as another user: libraries that cache under ``~`` must not meet the daemon's home,
    and :data:`NOT_DUMPABLE_ENV` (other services' replicas run as the same user)."""
    notes: list[str] = []
    identity, why_not = replica_identity(plan.python)
    if identity is not None:
        writable = [log_path.parent, run_dir] + ([socket_path.parent] if socket_path is not None else [])
        try:
            grant_access(identity, plan.app_root, log_path, writable, plan.environment.get(_DATA_DIR_ENV))
            if env is not None:
                home = run_dir / "home"
                home.mkdir(mode=0o700, exist_ok=True)
                os.chown(home, identity.uid, identity.gid)
                env["HOME"], env["XDG_CACHE_HOME"] = str(home), str(home / ".cache")
                env[NOT_DUMPABLE_ENV] = "1"
        except OSError as exc:
            identity, why_not = None, f"could not give user {REPLICA_USER} access to the replica's folders ({exc})"
    if identity is not None:
        notes.append(f"runs as user {identity.user} (uid {identity.uid})")
    elif why_not:
        notes.append(f"runs as root: {why_not}")
    cgroup = None
    limit = plan.environment.get(MEMORY_LIMIT_ENV)
    if limit:
        cgroup, reason = memory_cgroup(replica_id, int(limit))
        gb = int(limit) / 1024**3
        if cgroup is not None:
            notes.append(f"memory limited to {gb:g} GB (memory_gb_limit; cgroup v{cgroup.version} {cgroup.path})")
        else:
            notes.append(f"memory_gb_limit {gb:g} GB is NOT enforced on this machine: {reason}")
    _spawned[replica_id] = _Spawned(log_path, cgroup)
    if notes:
        _note(log_path, f"replica {replica_id} " + "; ".join(notes))
    procs = str(cgroup.path / "cgroup.procs") if cgroup is not None else None

    def preexec() -> None:  # in the child, between fork and exec: no locks, no logging
        if procs is not None:
            try:
                with open(procs, "w") as f:
                    f.write(str(os.getpid()))
            except OSError as exc:  # stderr is the replica's log: say so there, and start anyway
                os.write(2, f"modelfleet: could not join the memory cgroup ({exc}); no memory limit\n".encode())
        if identity is not None:  # failing here fails the start: never run on as root by accident
            os.setgroups([])
            os.setgid(identity.gid)
            os.setuid(identity.uid)
        then()

    return {"preexec_fn": preexec}


def exit_reason(replica_id: str, returncode: int | None) -> str | None:
    """Why the replica exited, when isolation knows better than its status: "killed: out of
    memory ..." after an OOM kill in its cgroup (also written to its log); else None."""
    spawned = _spawned.get(replica_id)
    if spawned is None or spawned.cgroup is None:
        return None
    if spawned.cgroup.oom_kills() == 0:
        return None
    gb = spawned.cgroup.limit_bytes / 1024**3
    reason = f"killed: out of memory (over memory_gb_limit {gb:g} GB; exit status {returncode})"
    _note(spawned.log_path, f"replica {replica_id} {reason}")
    return reason


# -- who the replica runs as ---------------------------------------------------------------


def replica_identity(python: str) -> tuple[Identity | None, str | None]:
    """(the user replicas run as, None), or (None, why they run as root), or (None, None)
    when the daemon is not root (replicas then run as the daemon's own user)."""
    if os.geteuid() != 0:
        return None, None
    try:
        entry = pwd.getpwnam(REPLICA_USER)
    except KeyError:
        return None, f"there is no user {REPLICA_USER!r} to run replicas as; create one"
    identity = Identity(REPLICA_USER, entry.pw_uid, entry.pw_gid)
    blocked = unreachable(Path(python), identity)
    if blocked is not None:
        return None, (
            f"the interpreter {python} is not reachable by user {REPLICA_USER} ({blocked} is mode "
            f"{stat.S_IMODE(blocked.stat().st_mode):04o}); install Python where every user may run it, or run "
            "the daemon as an unprivileged user"
        )
    return identity, None


def unreachable(path: Path, identity: Identity) -> Path | None:
    """The first folder on the way to ``path`` (links followed) that ``identity`` may not enter,
    or ``path`` itself if it may not read and run it; None when it can."""
    real = Path(os.path.realpath(path))
    for candidate in [*reversed(Path(path).absolute().parents), *reversed(real.parents)]:
        if not _allowed(candidate, identity, stat.S_IXUSR):
            return candidate
    if not _allowed(real, identity, stat.S_IRUSR | stat.S_IXUSR):
        return real
    return None


def _allowed(path: Path, identity: Identity, owner_bits: int) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_uid == identity.uid:
        need = owner_bits
    elif st.st_gid == identity.gid:
        need = owner_bits >> 3
    else:
        need = owner_bits >> 6
    return st.st_mode & need == need


def grant_access(
    identity: Identity, app_root: Path, log_path: Path, writable: list[Path], data_dir: str | None
) -> None:
    """Give the replica's group what a replica needs, and nothing more (see the module's doc)."""
    meta = next((p for p in app_root.parents if p.name == ".modelfleet"), None)
    if meta is None:
        return
    for name in _PRIVATE:  # entering .modelfleet must not open these to the replica's group
        with contextlib.suppress(FileNotFoundError):
            os.chmod(meta / name, stat.S_IMODE((meta / name).stat().st_mode) & 0o700)
    # traversal only (g+x): the folders from .modelfleet down to the service and its generation
    for folder in [meta, *(p for p in reversed(app_root.parents) if meta in p.parents)]:
        _group(folder, identity.gid, stat.S_IXGRP)
    key = (app_root, app_root.stat().st_ino)
    if key not in _granted:  # an app folder is written once per generation (and rewritten whole)
        for walked, _dirs, files in os.walk(app_root):
            _group(Path(walked), identity.gid, stat.S_IRGRP | stat.S_IXGRP)
            for name in files:
                _group(Path(walked) / name, identity.gid, stat.S_IRGRP)
        _granted.add(key)
    for folder in writable:  # logs (it rotates its own), run (port and stats files), its socket's folder
        _group(folder, identity.gid, stat.S_IWGRP | stat.S_IXGRP)
    with contextlib.suppress(FileNotFoundError):
        os.chown(log_path, identity.uid, identity.gid)  # the replica appends to it and rotates it
    if data_dir:
        data = Path(data_dir)
        data.mkdir(parents=True, exist_ok=True)
        _group(data.parent, identity.gid, stat.S_IXGRP)
        for walked, _dirs, files in os.walk(data):
            os.chown(walked, identity.uid, identity.gid)
            for name in files:
                os.chown(Path(walked) / name, identity.uid, identity.gid)


def _group(path: Path, gid: int, bits: int) -> None:
    st = path.stat()
    if st.st_gid != gid:
        os.chown(path, -1, gid)
    if st.st_mode & bits != bits:
        os.chmod(path, stat.S_IMODE(st.st_mode) | bits)


# -- memory ---------------------------------------------------------------------------------


def memory_cgroup(replica_id: str, limit_bytes: int, root: Path = CGROUP_ROOT) -> tuple[MemoryCgroup | None, str]:
    """A fresh memory cgroup for one replica with ``limit_bytes``; (None, why) if none can be made."""
    try:
        found = _replica_parent(root)
    except OSError as exc:
        return None, f"cannot make a memory cgroup ({exc})"
    if isinstance(found, str):
        return None, found
    parent, version = found
    # A fresh cgroup per launch (its OOM count starts at 0; an old one may still hold a dying
    # process). The finished ones, this replica's previous launch included, are removed here.
    live = {s.cgroup.path for rid, s in _spawned.items() if s.cgroup is not None and rid != replica_id}
    for old in parent.iterdir():
        if old.is_dir() and old not in live:
            with contextlib.suppress(OSError):  # still holds a process: left for later
                old.rmdir()
    path = parent / f"{replica_id}.{next(_launches)}"
    try:
        path.mkdir()
        if version == 2:
            (path / "memory.max").write_text(str(limit_bytes))
            for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                with contextlib.suppress(OSError):  # no swap accounting: the limit still holds for RAM
                    (path / name).write_text(value)
        else:
            (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            with contextlib.suppress(OSError):
                (path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
    except OSError as exc:
        return None, f"cannot set up the memory cgroup {path} ({exc})"
    return MemoryCgroup(path, version, limit_bytes), ""


def memory_limit_note(limit_bytes: int | None, root: Path = CGROUP_ROOT) -> str | None:
    """What a service's state detail says when its memory limit cannot be enforced here; None
    when it is (or none was asked for). The answer for a machine is found once and kept."""
    if limit_bytes is None:
        return None
    reason = _unenforceable(root)
    if reason is None:
        return None
    return f"memory_gb_limit {limit_bytes / 1024**3:g} GB is not enforced on this machine: {reason}"


@functools.lru_cache(maxsize=4)
def _unenforceable(root: Path) -> str | None:
    try:
        found = _replica_parent(root)
    except OSError as exc:
        return f"cannot make a memory cgroup ({exc})"
    return found if isinstance(found, str) else None


def _replica_parent(root: Path) -> tuple[Path, int] | str:
    """The folder this daemon makes replica cgroups in (created on first use), and the version."""
    own = _own_cgroups()
    if (root / "cgroup.controllers").is_file() and "" in own:  # unified (v2) at the root
        here = root / own[""].lstrip("/")
        return _v2_parent(here.parent if here.name == _DAEMON_LEAF else here)
    if "memory" in own and (root / "memory").is_dir():
        here = root / "memory" / own["memory"].lstrip("/")
        if not os.access(here, os.W_OK):
            return f"the memory cgroup {here} is not writable by this user (cgroup v1 needs root)"
        parent = here / f"modelfleet-{os.getpid()}"
        _sweep(here)
        _made(parent)
        return parent, 1
    return "no memory cgroup controller is available here"


def _v2_parent(own: Path) -> tuple[Path, int] | str:
    if "memory" not in (own / "cgroup.controllers").read_text().split():
        return f"the memory controller is not delegated to this daemon's cgroup {own}"
    if not os.access(own, os.W_OK):
        return (
            f"this daemon's cgroup {own} is not writable by this user; start the cluster in a delegated "
            "cgroup, e.g. `systemd-run --user --scope -p Delegate=yes modelfleet cluster start`"
        )
    if "memory" not in (own / "cgroup.subtree_control").read_text().split():
        # v2 hands controllers only to children of a cgroup without processes: move into a leaf
        leaf = own / _DAEMON_LEAF
        leaf.mkdir(exist_ok=True)
        try:
            (leaf / "cgroup.procs").write_text(str(os.getpid()))
            (own / "cgroup.subtree_control").write_text("+memory")
        except OSError as exc:
            return (
                f"cannot enable the memory controller below {own} ({exc}); other processes share the "
                "daemon's cgroup: start the cluster in a cgroup of its own, e.g. `systemd-run --scope -p "
                "Delegate=yes modelfleet cluster start`"
            )
    parent = own / f"modelfleet-{os.getpid()}"
    _sweep(own)
    _made(parent)
    if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
        (parent / "cgroup.subtree_control").write_text("+memory")
    return parent, 2


def _made(parent: Path) -> None:
    if not parent.is_dir():
        parent.mkdir()
        atexit.register(_remove, parent)  # the daemon's replicas have stopped by then


def _remove(parent: Path) -> None:
    for child in parent.iterdir():
        if child.is_dir():
            with contextlib.suppress(OSError):
                child.rmdir()
    with contextlib.suppress(OSError):
        parent.rmdir()


def _sweep(here: Path) -> None:
    """Remove the (empty) replica cgroups that daemons which have exited left behind."""
    for parent in here.glob("modelfleet-[0-9]*"):
        pid = int(parent.name.split("-", 1)[1])
        if pid == os.getpid() or _alive(pid):
            continue
        _remove(parent)


def _own_cgroups() -> dict[str, str]:
    """Controller ("" for v2's unified hierarchy) → this process's cgroup path."""
    out: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(","):
                out[controller] = path
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _note(log_path: Path, line: str) -> None:
    log.info("%s", line)
    with contextlib.suppress(OSError), open(log_path, "a", encoding="utf-8") as f:
        f.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
