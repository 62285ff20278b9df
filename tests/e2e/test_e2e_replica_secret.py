"""Tier 2: each service's replicas answer only the router, with a secret of the service's own.

A real local cluster and real replica processes. Every service's replicas get their own
secret (``MODELFLEET_REPLICA_SECRET``, ``LocalTarget.replica_secret``) and refuse every request
but ``GET /`` without it; the router sends it (``Upstream.secret``). A root daemon runs every
service's replicas as ``nobody``, so one service's replica can open another's socket: only the
secret keeps it out, and the replica is not dumpable, so another ``nobody`` process cannot read
that secret from its ``/proc/PID/environ``.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import socket
from collections.abc import Iterator

import httpx
import pytest
import requests

from e2e_support import SUM_BODY, deploy, root_daemon_with_nobody_replicas, stop_cluster, system_python, wait_until
from modelfleet import Workspace

SECRET_ENV = b"MODELFLEET_REPLICA_SECRET"


@pytest.fixture
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = Workspace.create("secrets", tmp_path_factory.mktemp("ws"))
    try:
        yield workspace
    finally:
        stop_cluster(workspace)


def environ_of(pid: int) -> dict[bytes, bytes]:
    """A process's environment as it was started (what /proc shows; popping it from
    ``os.environ`` later does not clear it there)."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        items = [item.partition(b"=") for item in f.read().split(b"\0") if item]
    return {name: value for name, _, value in items}


def status_of(address: str, method: str = "POST", path: str = "/score", secret: bytes | None = None) -> int:
    """One request straight to a replica's address (its socket, or host:port), as any local
    process could send it; the answer's status code."""
    body = SUM_BODY.encode() if method == "POST" else b""
    head = f"{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
    head += f"content-length: {len(body)}\r\nconnection: close\r\n"
    raw = head.encode() + (b"x-modelfleet-replica-secret: " + secret + b"\r\n" if secret else b"") + b"\r\n"
    if address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(10)
        sock.connect(address)
    else:
        host, port = address.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=10)
    with sock:
        sock.sendall(raw + body)
        return int(sock.recv(65536).split(b" ", 2)[1])


def test_a_replica_refuses_another_services_secret_and_none_and_the_router_gets_through(ws: Workspace) -> None:
    alpha = deploy(ws, "alpha", "sum", auth_enabled=False)
    beta = deploy(ws, "beta", "sum", auth_enabled=False)
    services = ws.cluster().status()["services"]
    [a] = services["alpha"]["replicas"]
    [b] = services["beta"]["replicas"]

    # what a hostile score.py of alpha holds: its own replica's secret, from its environment
    secret_a = environ_of(a["pid"])[SECRET_ENV]
    secret_b = environ_of(b["pid"])[SECRET_ENV]
    assert secret_a != secret_b
    assert all(re.fullmatch(rb"[\x21-\x7e]{16,512}", s) for s in (secret_a, secret_b))

    # straight to beta's replica: alpha's secret and no secret are both refused
    assert status_of(b["address"], secret=secret_a) == 403
    assert status_of(b["address"]) == 403
    assert status_of(b["address"], method="GET", path="/swagger.json") == 403
    assert status_of(b["address"], method="GET", path="/") == 200  # the liveness probe needs none
    assert status_of(b["address"], secret=secret_b) == 200  # the secret is all that was missing

    # through the router, both services answer
    for service in (alpha, beta):
        answer = httpx.post(service.scoring_uri, content=SUM_BODY, headers={"Content-Type": "application/json"})
        assert answer.status_code == 200 and answer.json() == [55]

    # the secret is the service's, not the replica's: after an update, beta's new replicas
    # have the same one, and the router still gets through
    beta.update(num_replicas=2)
    beta.wait_for_deployment(timeout_sec=60)

    def two_ready() -> list[dict[str, object]] | None:
        replicas = ws.cluster().status()["services"]["beta"]["replicas"]
        return replicas if len(replicas) == 2 and all(r["state"] == "Ready" for r in replicas) else None

    replicas = wait_until(two_ready, timeout=60)
    assert {environ_of(int(r["pid"]))[SECRET_ENV] for r in replicas} == {secret_b}
    answer = httpx.post(beta.scoring_uri, content=SUM_BODY, headers={"Content-Type": "application/json"})
    assert answer.status_code == 200 and answer.json() == [55]


@pytest.mark.skipif(
    os.geteuid() != 0 or system_python() is None, reason="needs root and a system python3 of this version"
)
@pytest.mark.timeout(300)
def test_a_hostile_replica_running_as_nobody_cannot_score_or_read_another_services_replica() -> None:
    # A root daemon whose interpreter and workspace nobody can reach: its replicas run as nobody.
    with root_daemon_with_nobody_replicas("hostile") as workspace:
        victim = deploy(workspace, "victim", "sum")
        snoop = deploy(workspace, "snoop", "snoop")
        services = workspace.cluster().status()["services"]
        [v] = services["victim"]["replicas"]
        [s] = services["snoop"]["replicas"]
        assert v["address"].startswith("/"), v  # a Unix socket, in a folder nobody may enter

        # the snooping script is handed its own replica's secret (read here as root)
        own = environ_of(s["pid"])[SECRET_ENV].decode()
        request = {"pid": v["pid"], "socket": v["address"], "secret": own}
        key = snoop.get_keys()[0]
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        answer = requests.post(snoop.scoring_uri, data=json.dumps(request), headers=headers, timeout=60).json()
        assert answer == {
            "uid": pwd.getpwnam("nobody").pw_uid,  # the same user as the victim's replica
            "environ": "PermissionError",  # not dumpable: its /proc files are root's
            "with_secret": 403,  # it reached the socket, and was refused
            "without": 403,
        }

        headers = {"Authorization": f"Bearer {victim.get_keys()[0]}", "Content-Type": "application/json"}
        assert requests.post(victim.scoring_uri, data=SUM_BODY, headers=headers, timeout=60).json() == [55]
