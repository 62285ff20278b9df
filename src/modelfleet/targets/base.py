"""What a compute target is: values describing replicas, and the protocol targets implement.

A compute target starts and stops replicas and says how they are doing; it decides nothing
about how many there should be (the reconciler does) nor which one gets a request (the
router does). ``targets/local.py`` runs replicas as processes on this machine.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class ReplicaState(str, enum.Enum):
    STARTING = "Starting"  # process started, init() running or server not yet answering
    READY = "Ready"  # answered its readiness probe; may receive requests
    UNHEALTHY = "Unhealthy"  # failed failure_threshold liveness probes in a row; being restarted
    INIT_FAILED = "InitFailed"  # exited before ever being ready: init() raised or the script did not load
    EXITED = "Exited"  # exited after being ready; the target restarts it
    STOPPED = "Stopped"  # stopped on purpose


@dataclass(frozen=True)
class Probe:
    """The v1 liveness probe settings, in seconds."""

    period_s: float = 10.0
    timeout_s: float = 2.0
    failure_threshold: int = 3
    startup_deadline_s: float = 310.0  # v1's initial_delay_seconds: how long init() may take


@dataclass(frozen=True)
class ReplicaPlan:
    """Everything needed to start one replica process of one service generation."""

    service: str
    generation: int
    python: str
    app_root: Path
    entry_script: Path
    environment: Mapping[str, str]
    max_concurrent: int
    probe: Probe = field(default_factory=Probe)


@dataclass
class ReplicaInfo:
    """A snapshot of one replica, as status commands and tests see it."""

    id: str
    service: str
    generation: int
    index: int
    state: ReplicaState
    pid: int | None
    port: int | None
    restarts: int
    log_path: Path
    detail: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "generation": self.generation,
            "index": self.index,
            "state": self.state.value,
            "pid": self.pid,
            "port": self.port,
            "restarts": self.restarts,
            "detail": self.detail,
        }


class ComputeTarget(Protocol):
    """What the reconciler needs from a compute target."""

    async def start(self, plan: ReplicaPlan, index: int) -> ReplicaInfo:
        """Start one replica and return once it is Ready or has failed (INIT_FAILED)."""
        ...

    async def stop(self, replica_id: str, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; the caller has drained it first."""
        ...

    def replicas(self, service: str) -> list[ReplicaInfo]: ...
