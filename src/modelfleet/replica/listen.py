"""Listening on a Unix domain socket: the replica's address inside a local cluster.

A replica of a local cluster listens on a socket file in the cluster's private folder instead
of a loopback port, so that only the router (and the folder's owner) can reach it; a loopback
port would let any local user score it directly, past keys, limits and request logs. The file
is created with mode 0600 (the umask is narrowed while binding, so it is never more open), a
stale socket left by a killed replica is removed first, and anything else at that path is
refused rather than deleted.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable


class ListenError(Exception):
    """The socket path is taken by something that is not a socket."""


def remove_stale_socket(path: str) -> None:
    """Remove a socket file left at ``path``; refuse any other kind of file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ListenError(f"{path} exists and is not a socket; remove it or choose another --unix-socket path")
    os.unlink(path)


async def listen_unix(
    loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.Protocol], path: str
) -> asyncio.Server:
    """Serve ``factory`` on the Unix socket ``path`` (mode 0600)."""
    remove_stale_socket(path)
    old = os.umask(0o177)  # the socket file is born 0600 (bind applies the umask)
    try:
        server = await loop.create_unix_server(factory, path, backlog=2048)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server
