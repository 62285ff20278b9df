"""Where the local cluster keeps its runtime files inside a workspace."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Bumped when the admin API or cluster.json changes incompatibly; with the package version it
# tells a client that the running daemon is another modelfleet's (``client.mismatch``).
DAEMON_PROTOCOL = 1


@dataclass(frozen=True)
class RuntimePaths:
    root: Path  # <workspace>/.modelfleet/runtime

    @property
    def cluster_json(self) -> Path:
        """pid, ports and scheme of the running daemon; absent when it is stopped."""
        return self.root / "cluster.json"

    @property
    def admin_token(self) -> Path:
        """The admin API's bearer token, mode 0600."""
        return self.root / "admin.token"

    @property
    def lock(self) -> Path:
        """Held (flock) by the one daemon of this workspace."""
        return self.root / "daemon.lock"

    @property
    def daemon_log(self) -> Path:
        return self.root / "daemon.log"

    def service_dir(self, service: str) -> Path:
        return self.root / "services" / service

    def service_logs(self, service: str) -> Path:
        return self.service_dir(service) / "logs"
