"""Which local cluster a workspace folder runs, and the settings that are that cluster's own.

Every workspace folder runs at most one local cluster (one daemon: ``runtime/daemon.lock``).
In a workspace a team shares, several folders (teammates' machines, or two folders on one
machine) use one database, so each folder's cluster needs a name that the database can
record: the cluster that owns a local service is the only one that runs it (a daemon restores
only its own services) and the only one from which it may be deployed over, updated or
deleted (``store/services.py``).

The identity is made once per folder and kept in ``runtime/cluster-id`` (written aside, then
linked into place, so two racing creators agree):

    <hostname>:<workspace folder>#<6 random hex digits>      e.g. alice-laptop:/home/alice/team-ws#3f2a9c

Why this shape rather than the hostname and folder alone: containers, CI runners and
identically imaged laptops often share a hostname and a home path, and two such folders must
still be two clusters; a folder deleted and made again (its replicas gone) is a new cluster,
not the old one come back. Why not a bare random id: the owner is named in refusals and in
``service list``, where "alice-laptop:/home/alice/team-ws" tells a teammate whom to ask. The
id is read from the file, never recomputed, so a machine renamed later keeps owning its
services (its id then shows the old name).

Per-cluster settings: the ports a daemon binds and the scheme and host its scoring URIs use
(``CLUSTER_SETTINGS``) describe one cluster, so in a shared workspace they are stored under
``KEY@<cluster id>``; a folder workspace keeps the plain keys, as before. The rest (TLS mode,
router limits) is the team's: one value for every cluster.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from pathlib import Path

from modelfleet.errors import ConfigError

IDENTITY_FILE = "cluster-id"

# settings that describe one local cluster (control/daemon.py, control/tls.py, telemetry, dashboard)
CLUSTER_SETTINGS = frozenset(
    {
        "router_port",
        "router_http_port",
        "router_grpc_port",
        "router_scheme",
        "router_uri_host",
        "metrics_port",
        "dashboard_port",
    }
)


def scoped_setting(key: str, cluster: str) -> str:
    """The settings-table key of ``key`` for ``cluster`` (a per-cluster setting of a shared workspace)."""
    return f"{key}@{cluster}"


def local_cluster_id(runtime_dir: Path, root: Path) -> str:
    """This folder's cluster id, made on first use."""
    path = runtime_dir / IDENTITY_FILE
    with contextlib.suppress(FileNotFoundError):
        return _read(path)
    runtime_dir.mkdir(parents=True, exist_ok=True)
    made = f"{socket.gethostname() or 'localhost'}:{root}#{secrets.token_hex(3)}"
    tmp = path.with_name(f".{IDENTITY_FILE}.{secrets.token_hex(8)}.tmp")
    tmp.write_text(made + "\n")
    try:
        os.link(tmp, path)  # fails if another process made it first: theirs wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> str:
    value = path.read_text().strip()
    if not value or "\n" in value:
        raise ConfigError(
            f"{path} does not hold a cluster id (one line, as `host:folder#hex`); restore it, or delete it "
            "to make a new one (services deployed from this folder then belong to no cluster here)"
        )
    return value
