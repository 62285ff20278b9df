"""A fork server: imports the replica runtime once, then forks each replica from itself.

``python -m modelfleet.replica.forkserver FD`` (started by the local target, one per
environment interpreter, ``targets/forkserver.py``). ``FD`` is its end of a Unix socket pair.
Each request is one datagram: JSON ``{"argv", "env", "cwd"}`` and, when the replica has a
memory limit, ``"cgroup_procs"`` (its memory cgroup's ``cgroup.procs``), with the replica's log
file descriptor attached (SCM_RIGHTS). The server forks; the child first joins that cgroup (as
an exec'd replica does between fork and exec: what it allocates from then on is held to the
limit; the pages it still shares with the server stay charged to the server's), takes the log
as stdout and stderr, ``/dev/null`` as stdin, the working folder and the environment given, asks the kernel
to kill it when the server dies, and runs ``modelfleet.replica.main(argv)`` as ``python -m
modelfleet.replica`` would. The server answers ``{"id", "pid"}`` (the request's id) and, when a child ends,
``{"exit": pid, "status": code}`` (negative: the signal that ended it, as asyncio says).

Why: an exec'd replica is a whole interpreter of its own (about 16 MiB PSS, nearly all of it
private). A forked one shares the interpreter and the runtime's modules with the server and its
siblings, copy-on-write (``gc.freeze()`` keeps the collector from touching, and so copying, the
pages of objects imported before the fork); the user's ``init()`` runs after the fork.

The server has no thread and no event loop (a fork copies neither safely); it waits in
``select`` and reaps its children there. It ends when the other end of its socket closes.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import gc
import json
import os
import select
import signal
import socket
import sys
import traceback
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_MAX_REQUEST = 1 << 20


def _preload() -> None:
    # What every replica imports before the user's script: imported here once, shared by all.
    # What a replica imports as it starts serving (found with -X importtime): no loop is made here.
    import concurrent.futures.thread  # noqa: F401
    import encodings.idna  # noqa: F401

    import modelfleet.errors  # noqa: F401
    import modelfleet.replica.app  # noqa: F401
    import modelfleet.replica.config  # noqa: F401
    import modelfleet.replica.entry  # noqa: F401
    import modelfleet.replica.protocol  # noqa: F401
    import modelfleet.replica.scoring  # noqa: F401
    import modelfleet.replica.server  # noqa: F401

    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401


def _receive(sock: socket.socket) -> tuple[dict[str, object], int] | None:
    fds = array.array("i")
    data, ancillary, _flags, _addr = sock.recvmsg(_MAX_REQUEST, socket.CMSG_SPACE(fds.itemsize))
    if not data:
        return None
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if len(fds) != 1:
        raise ValueError("a request carries exactly one file descriptor (the replica's log)")
    return json.loads(data), fds[0]


def _child(sock: socket.socket, request: dict[str, object], log_fd: int) -> None:
    """In the forked child: become the replica. Never returns."""
    code = 1
    try:
        procs = request.get("cgroup_procs")
        if procs:
            _join(str(procs), log_fd)
        sock.close()
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the server died between fork and prctl
            os._exit(1)
        # as a fresh interpreter has them: SIGPIPE ignored (a write to a closed socket raises
        # BrokenPipeError, it does not kill the replica), SIGINT raises KeyboardInterrupt
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        # unbuffered, as the exec'd replica's PYTHONUNBUFFERED=1
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        env = request["env"]
        assert isinstance(env, dict)
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
        os.chdir(str(request["cwd"]))
        argv = [str(a) for a in request["argv"]]  # type: ignore[attr-defined]
        sys.argv = ["modelfleet.replica", *argv]
        _show_environ(os.environ)
        # The server's objects stay frozen (no gc.unfreeze()): a full collection would write to each
        # of them, copying every page they share (measured: 7.8 -> 11.2 MiB PSS after one gc.collect())
        from modelfleet.replica import main

        code = main(argv)
    except SystemExit as ex:
        code = 0 if ex.code is None else ex.code if isinstance(ex.code, int) else 1
        if not isinstance(ex.code, int | None):
            print(ex.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        _finalize()
        os._exit(code)


def _finalize() -> None:
    """What an interpreter does as it exits, before the child's ``os._exit``: wait for the
    threads that are not daemons, run the ``atexit`` functions (the script's own, logging's
    flush), flush stdout and stderr."""
    import atexit
    import threading

    for step in (threading._shutdown, atexit._run_exitfuncs, sys.stdout.flush, sys.stderr.flush):  # type: ignore[attr-defined]
        with contextlib.suppress(BaseException):
            step()


ROOM_ENV = "MODELFLEET_FORK_SERVER_ROOM"  # set by the daemon: room for a replica's environment


def _show_environ(env: os._Environ[str]) -> None:
    """Write the replica's environment where ``/proc/PID/environ`` reads it (the strings the
    kernel laid out at the server's exec, this child's copy of them), so that tools that look
    there (``ps e``, a debugger, another process of the same user) see what an exec'd replica
    would show instead of the server's. The server was started with :data:`ROOM_ENV` for this
    room; an environment larger than the room leaves the server's there. Called after
    ``os.environ`` was cleared and set again: no C ``environ`` entry points into it any more."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        first, last = int(fields[47]), int(fields[48])  # env_start and env_end (fields 50, 51)
    except (OSError, IndexError, ValueError):
        return
    block = b"".join(os.fsencode(k) + b"=" + os.fsencode(v) + b"\0" for k, v in env.items())
    if first and len(block) <= last - first:
        ctypes.memmove(first, block + bytes(last - first - len(block)), last - first)


def _join(procs: str, log_fd: int) -> None:
    try:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
    except OSError as exc:  # as the exec'd replica does: said in its log, and it starts anyway
        os.write(log_fd, f"modelfleet: could not join the memory cgroup ({exc}); no memory limit\n".encode())


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(OSError):
            sock.send(json.dumps({"exit": pid, "status": code}).encode())


def serve(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    _preload()
    gc.collect()
    gc.freeze()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd says a child ended
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [], 1.0)
        if wake_r in ready:
            os.read(wake_r, 4096)
        _reap(sock)
        if sock.fileno() not in ready:
            continue
        received = _receive(sock)
        if received is None:
            return 0  # the daemon closed its end
        request, log_fd = received
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
            _child(sock, request, log_fd)
        os.close(log_fd)
        sock.send(json.dumps({"id": request.get("id"), "pid": pid}).encode())


if __name__ == "__main__":
    # as replica/__main__.py: ``-m`` put the current folder first on sys.path; a replica has it not
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # the daemon's death ends the server
    sys.exit(serve(int(sys.argv[1])))
