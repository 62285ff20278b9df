"""Tier 2: replicas of the local cluster listen on Unix sockets only (issue 12, defect 4).

A real cluster, real replica processes. A replica has no TCP port at all, so no local user
can score it around the router's keys, limits and logs; its socket sits in a folder only the
cluster's user may enter (0700) and is itself 0600; the liveness probe and the router both
reach it through the socket. The workspace here lies under pytest's deep temporary folder,
too deep for a socket path (107 bytes), so the short private folder in /tmp is used, and it
is removed when the cluster stops.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2e_support import SUM_BODY, deploy, stop_cluster, wait_until
from modelfleet import Workspace
from modelfleet.targets.local import unix_sockets_supported

pytestmark = pytest.mark.skipif(
    not unix_sockets_supported(), reason="the router or the replica runtime cannot use Unix sockets yet"
)


@pytest.fixture
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = Workspace.create("sockets", tmp_path_factory.mktemp("a-folder-deep-enough-for-a-socket-path" * 2))
    try:
        yield workspace
    finally:
        stop_cluster(workspace)


def private(folder: Path, replica_pid: int) -> bool:
    """0700, or 0730 where the replica runs as another user (a root daemon's replicas run as
    nobody, targets/isolation.py) and the group is that user's own: nobody else may enter."""
    st = folder.stat()
    mode = stat.S_IMODE(st.st_mode)
    if mode == 0o700:
        return True
    with open(f"/proc/{replica_pid}/status") as f:
        gid = next(int(line.split()[1]) for line in f if line.startswith("Gid:"))
    return mode == 0o730 and st.st_gid == gid != os.getgid()


def another_user_connects(path: Path) -> subprocess.CompletedProcess[str] | None:
    """Try to connect to the socket as a user and group that are neither the cluster's nor the
    replica's (None where this test cannot switch users)."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if os.geteuid() != 0 or python is None:
        return None
    code = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"
    stranger = 54321  # no such user needs to exist
    return subprocess.run(
        [python, "-c", code, str(path)],
        user=stranger,
        group=stranger,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def listening_tcp_ports(pid: int) -> list[int]:
    """TCP ports the process listens on (its socket inodes matched against /proc/net/tcp*)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    ports = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_a_replica_listens_only_on_a_private_unix_socket(ws: Workspace) -> None:
    service = deploy(ws, "sockets", "sum", auth_enabled=False)
    [replica] = ws.cluster().status()["services"]["sockets"]["replicas"]
    path = Path(replica["address"])
    assert path.is_absolute() and len(os.fsencode(path)) <= 107

    assert listening_tcp_ports(replica["pid"]) == []  # nothing to connect to but the socket
    assert stat.S_ISSOCK(path.lstat().st_mode)
    assert stat.S_IMODE(path.lstat().st_mode) == 0o600
    folder = path.parent
    assert private(folder, replica["pid"])
    assert folder.parent == Path("/tmp") and folder.name.startswith("mf-")  # the workspace is too deep

    other = another_user_connects(path)
    if other is not None:  # any other local user is refused by the folder's mode
        assert other.returncode != 0 and "PermissionError" in other.stderr, other

    # the router reaches it through the socket, and so does the liveness probe after a crash
    assert httpx.post(service.scoring_uri, content=SUM_BODY).json() == [55]
    os.kill(replica["pid"], signal.SIGKILL)

    def back() -> bool:
        [now] = ws.cluster().status()["services"]["sockets"]["replicas"]
        return now["state"] == "Ready" and now["pid"] != replica["pid"]

    wait_until(back, timeout=30)
    assert httpx.post(service.scoring_uri, content=SUM_BODY).json() == [55]

    stop_cluster(ws)
    assert not folder.exists()  # the short folder goes with the cluster
