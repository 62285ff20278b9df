"""The daemon's side of the fork servers (``replica/forkserver.py``): one per interpreter and
set of the ``PYTHON*`` variables an interpreter reads as it starts (:func:`startup_variables`).

How replicas start is a cluster setting, ``modelfleet cluster start --replica-start fork|exec``
(kept in the workspace, shown by ``cluster status``); ``MODELFLEET_FORK_SERVER`` in the
daemon's environment (``1``/``fork`` or ``0``/``exec``) overrides it, for tests and one-off runs:
the variable first, then the setting, then the default (:data:`DEFAULT`, :func:`choose`).

With fork, the local target asks ``ForkServers.spawn`` for a replica instead of exec'ing
``python -m modelfleet.replica``; the child joins the replica's memory cgroup first, as the
exec'd one does between fork and exec (the pages it shares with its server stay charged where
they were: the limit holds what the replica itself allocates). A replica is still exec'd where
a fork cannot keep a guarantee (:func:`exec_reason`): when it runs as another user than the
daemon (a root daemon's ``nobody``, ``targets/isolation.py``), since a forked child would hold
a copy of its server's memory, which has seen other services' environments and secrets; and
when its interpreter's server cannot be started (it is not tried again for that interpreter).
Each such replica's log says so, and ``cluster status`` counts forked and exec'd replicas.

What a forked replica shows differently from an exec'd one: ``/proc/PID/cmdline`` is its
server's (``python -m modelfleet.replica.forkserver FD``); ``/proc/PID/environ`` is its own
while its environment fits the room the server was started with (16 KiB more than the
daemon's, ``replica/forkserver.py``), else its server's; its string hashes are seeded as its
server's and its siblings' (an exec'd interpreter draws its own seed); its parent is the server.

A forked replica is a ``ForkedProcess``: pid, returncode, ``wait``, ``send_signal`` and
``kill`` as an ``asyncio.subprocess.Process``, so supervision, probes, restarts and the stop
order do not change. Its exit status comes from the server, which reaps it. Replicas die with
their server (PR_SET_PDEATHSIG), and the server with the daemon, so a killed daemon still
leaves no replica behind; a server that dies takes its replicas with it, they are restarted
as any crashed replica, and the next spawn starts a new server.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from modelfleet.errors import ConfigError

log = logging.getLogger("modelfleet.targets.forkserver")

FORK_SERVER_ENV = "MODELFLEET_FORK_SERVER"
SETTING = "replica_start"  # the workspace setting `cluster start --replica-start` stores
FLAG = "--replica-start"
FORK, EXEC = "fork", "exec"
MODES = (FORK, EXEC)
DEFAULT = FORK  # the test directories pass with it (exec where it cannot keep a guarantee: exec_reason)
_ENV_VALUES = {"1": FORK, "0": EXEC, FORK: FORK, EXEC: EXEC}
_START_TIMEOUT_S = 60.0
_ROOM_ENV = "MODELFLEET_FORK_SERVER_ROOM"  # replica/forkserver.py's ROOM_ENV (no import of the replica here)
_ENVIRON_ROOM = 16 * 1024  # bytes of variables a service may add to the daemon's and still show in /proc


@dataclass(frozen=True)
class StartMode:
    """How replicas start (``fork`` or ``exec``) and what said so."""

    mode: str
    source: str  # FORK_SERVER_ENV, "cluster start --replica-start" or "default"


def parse_mode(value: str) -> str:
    """``--replica-start``'s value, checked: ``fork`` or ``exec``."""
    if value in MODES:
        return value
    raise ConfigError(f"{FLAG} must be one of {', '.join(MODES)} (got {value!r})")


def choose(stored: str | None, environ: Mapping[str, str]) -> StartMode:
    """The variable (``1``, ``0``, ``fork``, ``exec``; empty: unset) over the stored setting
    over the default."""
    raw = environ.get(FORK_SERVER_ENV, "").strip()
    if raw:
        if raw.lower() not in _ENV_VALUES:
            raise ConfigError(f"{FORK_SERVER_ENV} must be one of 1, 0, fork, exec (got {raw!r})")
        return StartMode(_ENV_VALUES[raw.lower()], FORK_SERVER_ENV)
    if stored:
        return StartMode(parse_mode(stored), f"cluster start {FLAG}")
    return StartMode(DEFAULT, "default")


def exec_reason(mode: str, runs_as: str | None, server_failed: str | None) -> str | None:
    """Why a replica is exec'd rather than forked; None when it is forked. ``runs_as``: the
    user it runs as when that is not the daemon's; ``server_failed``: why its interpreter's
    fork server could not be used."""
    if mode == EXEC:
        return f"{FLAG} exec"
    if runs_as is not None:
        return (
            f"it runs as user {runs_as}, and a forked replica would hold a copy of the fork server's "
            "memory, which has seen other services' environments"
        )
    if server_failed is not None:
        return f"the fork server for its interpreter failed ({server_failed})"
    return None


class ForkedProcess:
    """A replica forked by a server: what the local target uses of ``asyncio.subprocess.Process``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited = asyncio.get_running_loop().create_future()

    def _ended(self, status: int) -> None:
        if self.returncode is None:
            self.returncode = status
            self._exited.set_result(status)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _Server:
    def __init__(self, proc: asyncio.subprocess.Process, sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock
        self.children: dict[int, ForkedProcess] = {}
        # request id -> its spawn's waiter, until the server answers it. A waiter given up (its
        # replica stopped meanwhile, or the wait timed out) stays here until then, so that the
        # child forked for it is killed rather than left serving, and no answer goes to another.
        self.pending: dict[int, asyncio.Future[ForkedProcess]] = {}
        self._ids = itertools.count(1)
        self.forked = 0  # replicas it has forked (none: it failed as it started)
        self.closing = False
        self.reader = asyncio.create_task(self._read(), name=f"fork server {proc.pid}")

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await loop.sock_recv(self.sock, 65536)
                if not data:
                    break
                message = json.loads(data)
                if "pid" in message:
                    pid = int(message["pid"])
                    self.forked += 1  # counted as it forks, not as its spawn resumes: see ForkServers._server
                    child = self.children[pid] = ForkedProcess(pid)  # its exit is reported as any child's
                    waiter = self.pending.pop(message.get("id"), None)
                    if waiter is None or waiter.done():  # not wanted any more
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    else:
                        waiter.set_result(child)  # itself: it may have exited before its spawn resumes
                elif "exit" in message:
                    exited = self.children.pop(message["exit"], None)
                    if exited is not None:
                        exited._ended(int(message["status"]))
        except ConnectionResetError:
            pass  # it died: said below
        except (OSError, ValueError):
            if not self.closing:
                log.exception("fork server %d: its socket failed", self.proc.pid)
        finally:  # the server is gone: so are its children (PDEATHSIG)
            if not self.closing:
                log.warning("fork server %d ended; its %d replicas with it", self.proc.pid, len(self.children))
            for child in self.children.values():
                child._ended(-signal.SIGKILL)
            self.children.clear()
            for waiter in self.pending.values():
                if not waiter.done():
                    waiter.set_exception(OSError("the fork server ended"))
            self.pending.clear()

    @property
    def alive(self) -> bool:
        return not self.reader.done() and self.proc.returncode is None

    async def spawn(
        self, argv: list[str], env: dict[str, str], cwd: Path, log_file: IO[bytes], cgroup_procs: Path | None
    ) -> ForkedProcess:
        if self.reader.done():
            raise OSError("the fork server ended")
        request_id = next(self._ids)
        message: dict[str, object] = {"id": request_id, "argv": argv, "env": env, "cwd": str(cwd)}
        if cgroup_procs is not None:
            message["cgroup_procs"] = str(cgroup_procs)
        fds = array.array("i", [log_file.fileno()])
        waiter = self.pending[request_id] = asyncio.get_running_loop().create_future()
        try:
            self.sock.sendmsg([json.dumps(message).encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
        except OSError:
            del self.pending[request_id]
            raise
        return await asyncio.wait_for(waiter, _START_TIMEOUT_S)  # given up: the answer kills the child

    async def close(self) -> None:
        self.closing = True
        self.sock.close()  # the server ends when its socket closes; its children are killed with it
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


# Read by the interpreter as it starts (PYTHONPATH, PYTHONHASHSEED, PYTHONWARNINGS, ...): a forked
# replica has its server's, so a server is started for each set of these its replicas ask for.
# These two are not: the child sets up its own unbuffered stdout, breakpoint() reads it each call.
_READ_LATER = frozenset({"PYTHONUNBUFFERED", "PYTHONBREAKPOINT"})


def startup_variables(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The variables of ``env`` that an interpreter reads as it starts (empty ones are unset)."""
    return tuple(sorted((k, v) for k, v in env.items() if k.startswith("PYTHON") and k not in _READ_LATER and v))


class ForkServers:
    """One fork server per interpreter (and per set of its start-up variables, see
    :func:`startup_variables`), started on first use; ``close`` stops them all."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._servers: dict[tuple[str, tuple[tuple[str, str], ...]], _Server] = {}
        self._failed: dict[str, str] = {}  # interpreter -> why its server failed as it started
        self._starting = asyncio.Lock()

    def failed(self, python: str) -> str | None:
        """Why this interpreter's server failed as it started (its replicas are exec'd), or None."""
        return self._failed.get(python)

    async def spawn(
        self,
        python: str,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        log_file: IO[bytes],
        cgroup_procs: Path | None = None,
    ) -> ForkedProcess | None:
        """A replica forked by ``python``'s server; None when that failed (the caller execs it).
        A server that fails before its first fork (it cannot import the runtime, say) is not
        started again for that interpreter; one that dies later is, on the next spawn."""
        server, key = None, (python, startup_variables(env))
        try:
            server = await self._server(key)
            return await server.spawn(argv, env, cwd, log_file, cgroup_procs)
        except (OSError, asyncio.TimeoutError) as exc:
            first = server is None or server.forked == 0
            why = str(exc) or type(exc).__name__
            if first:  # the first reason stands (a spawn waiting on the same server fails after it)
                self._failed.setdefault(
                    python, f"before its first replica: {why}; see {self._log_dir / 'forkserver.log'}"
                )
            log.warning("fork server for %s: %s; this replica is exec'd", python, why)
            if server is not None:
                if self._servers.get(key) is server:
                    del self._servers[key]
                await server.close()
            return None

    async def _server(self, key: tuple[str, tuple[tuple[str, str], ...]]) -> _Server:
        python, startup = key
        async with self._starting:
            failed = self._failed.get(python)
            if failed is not None:  # a spawn that waited on this lock behind the first one
                raise OSError(failed)
            server = self._servers.get(key)
            if server is not None and server.alive:
                return server
            if server is not None and server.forked == 0:
                # It ended before its first fork, and the spawn that started it has not resumed
                # to record that yet: this spawn fails the same way rather than start a second.
                raise OSError("the fork server ended")
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ours.setblocking(False)
            self._log_dir.mkdir(parents=True, exist_ok=True)
            with open(self._log_dir / "forkserver.log", "ab") as out:
                # the daemon's environment, but for the start-up variables: its replicas'
                env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") or k in _READ_LATER}
                env.update(startup, PYTHONUNBUFFERED="1")
                # room where a forked replica writes its environment for /proc/PID/environ to show
                env[_ROOM_ENV] = "." * _ENVIRON_ROOM
                proc = await asyncio.create_subprocess_exec(
                    python, "-m", "modelfleet.replica.forkserver", str(theirs.fileno()),
                    pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL, stdout=out,
                    stderr=asyncio.subprocess.STDOUT, env=env,
                )  # fmt: skip
            theirs.close()
            shown = " ".join(f"{k}={v}" for k, v in startup)
            log.info("fork server %d started for %s%s", proc.pid, python, f" with {shown}" if shown else "")
            server = _Server(proc, ours)
            self._servers[key] = server
            return server

    async def close(self) -> None:
        servers, self._servers = list(self._servers.values()), {}
        await asyncio.gather(*(s.close() for s in servers))
