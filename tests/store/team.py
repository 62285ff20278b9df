"""Two teammates' folders on one shared workspace: a real PostgreSQL database and one blob store.

Each folder stands for a machine: its own ``.modelfleet/`` (runtime, credentials, read cache),
its own local cluster (daemon, router and replicas on ports of its own), the team's key copied
in as the README tells a teammate to do. Clusters started in a test are stopped at its end.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from e2e_support import stop_cluster
from modelfleet import Workspace


@contextlib.contextmanager
def two_members(tmp_path: Path, postgres_server: Any) -> Iterator[tuple[Workspace, Workspace]]:
    backends = {"database": postgres_server.new_database(), "blob_store": f"file://{tmp_path}/objects/team"}
    alice = Workspace.create("team", tmp_path / "alice", **backends)
    (tmp_path / "bob" / ".modelfleet").mkdir(parents=True)
    shutil.copy(tmp_path / "alice" / ".modelfleet" / "secret.key", tmp_path / "bob" / ".modelfleet")
    bob = Workspace.create("team", tmp_path / "bob", **backends)
    try:
        yield alice, bob
    finally:
        try:
            stop_cluster(alice)
        finally:
            try:
                stop_cluster(bob)
            finally:
                alice.store.close()
                bob.store.close()
