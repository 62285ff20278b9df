"""The daemon's side of the fork servers (``replica/forkserver.py``): one per interpreter.

Opt-in: ``MODELFLEET_FORK_SERVER=1`` in the daemon's environment. The local target then asks
``ForkServers.spawn`` for a replica instead of exec'ing ``python -m modelfleet.replica``,
where nothing else must happen between fork and exec: the replica runs as the daemon's user
(``targets/isolation.py`` found no user to drop to) and has no memory limit (no cgroup to
join). Otherwise, and when the server cannot be started, the replica is exec'd as before.

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
import json
import logging
import os
import signal
import socket
from pathlib import Path
from typing import IO

log = logging.getLogger("modelfleet.targets.forkserver")

FORK_SERVER_ENV = "MODELFLEET_FORK_SERVER"
_START_TIMEOUT_S = 60.0


def enabled() -> bool:
    return os.environ.get(FORK_SERVER_ENV, "") not in ("", "0")


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
        self.pending: asyncio.Future[int] | None = None
        self.lock = asyncio.Lock()  # one request at a time: the next answer is its pid
        self.reader = asyncio.create_task(self._read(), name=f"fork server {proc.pid}")

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await loop.sock_recv(self.sock, 65536)
                if not data:
                    break
                message = json.loads(data)
                if "pid" in message and self.pending is not None and not self.pending.done():
                    self.children[message["pid"]] = ForkedProcess(message["pid"])
                    self.pending.set_result(message["pid"])
                elif "exit" in message:
                    child = self.children.pop(message["exit"], None)
                    if child is not None:
                        child._ended(int(message["status"]))
        except (OSError, ValueError):
            log.exception("fork server %d: its socket failed", self.proc.pid)
        finally:  # the server is gone: so are its children (PDEATHSIG)
            for child in self.children.values():
                child._ended(-signal.SIGKILL)
            self.children.clear()
            if self.pending is not None and not self.pending.done():
                self.pending.set_exception(OSError("the fork server ended"))

    @property
    def alive(self) -> bool:
        return not self.reader.done() and self.proc.returncode is None

    async def spawn(self, argv: list[str], env: dict[str, str], cwd: Path, log_file: IO[bytes]) -> ForkedProcess:
        async with self.lock:
            self.pending = asyncio.get_running_loop().create_future()
            request = json.dumps({"argv": argv, "env": env, "cwd": str(cwd)}).encode()
            fds = array.array("i", [log_file.fileno()])
            self.sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
            pid = await asyncio.wait_for(self.pending, _START_TIMEOUT_S)
            return self.children[pid]

    async def close(self) -> None:
        self.sock.close()  # the server ends when its socket closes; its children are killed with it
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


class ForkServers:
    """One fork server per interpreter, started on first use; ``close`` stops them all."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._servers: dict[str, _Server] = {}
        self._starting = asyncio.Lock()

    async def spawn(
        self, python: str, argv: list[str], env: dict[str, str], cwd: Path, log_file: IO[bytes]
    ) -> ForkedProcess:
        server = await self._server(python)
        return await server.spawn(argv, env, cwd, log_file)

    async def _server(self, python: str) -> _Server:
        async with self._starting:
            server = self._servers.get(python)
            if server is not None and server.alive:
                return server
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ours.setblocking(False)
            self._log_dir.mkdir(parents=True, exist_ok=True)
            with open(self._log_dir / "forkserver.log", "ab") as out:
                env = {**os.environ, "PYTHONUNBUFFERED": "1"}
                proc = await asyncio.create_subprocess_exec(
                    python, "-m", "modelfleet.replica.forkserver", str(theirs.fileno()),
                    pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL, stdout=out,
                    stderr=asyncio.subprocess.STDOUT, env=env,
                )  # fmt: skip
            theirs.close()
            log.info("fork server %d started for %s", proc.pid, python)
            server = _Server(proc, ours)
            self._servers[python] = server
            return server

    async def close(self) -> None:
        servers, self._servers = list(self._servers.values()), {}
        await asyncio.gather(*(s.close() for s in servers))
