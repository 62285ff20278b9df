"""What a compute target is: the values it speaks in, and the interface every target implements.

A compute target runs a service's replicas somewhere (``targets/local.py``: processes on this
machine; ``targets/memory.py``: nothing at all, for tests; a Kubernetes target: pods of
Deployments) and reports how they are doing. It decides nothing: how many replicas a service
should have and which generation serves is the reconciler's choice (``control/decisions.py``),
which replica gets a request is the router's. The reconciler, the autoscaler, the SDK and the
CLI see a target only through :class:`ComputeTarget`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

OnChange = Callable[[str], None]


class ReplicaState(str, enum.Enum):
    STARTING = "Starting"  # started, init() running or server not yet answering
    READY = "Ready"  # answered its readiness probe; may receive requests
    UNHEALTHY = "Unhealthy"  # failed failure_threshold liveness probes in a row; being restarted
    INIT_FAILED = "InitFailed"  # exited before ever being ready: init() raised or the script did not load
    EXITED = "Exited"  # exited after being ready; the target restarts it
    DRAINING = "Draining"  # being removed: gets no new requests, finishes those in flight, then stops
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
    """The template of one service generation: everything needed to start any of its replicas
    (what a Deployment's pod template holds). Replicas of one generation differ only by index."""

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
    """One replica as observed: status commands, the reconciler and tests see this.

    ``address`` is where the router reaches it: a Unix socket path (local target) or
    ``host:port`` (a pod IP and port); None until it listens. ``restarts`` counts restarts
    after crashes or failed liveness probes (a Kubernetes container's restartCount).
    """

    id: str
    service: str
    generation: int
    index: int
    state: ReplicaState
    pid: int | None
    address: str | None
    restarts: int
    log_path: Path | None
    detail: str | None = None

    @property
    def new(self) -> bool:
        """Started and not yet Ready for the first time (a scale-up or roll-out in progress),
        as opposed to one being restarted after a crash."""
        return self.state is ReplicaState.STARTING and self.restarts == 0

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "generation": self.generation,
            "index": self.index,
            "state": self.state.value,
            "pid": self.pid,
            "address": self.address,
            "restarts": self.restarts,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class GenerationSpec:
    """Desired state of one generation of a service: its template and how many replicas."""

    plan: ReplicaPlan
    replicas: int

    def __post_init__(self) -> None:
        if self.replicas < 0:
            raise ValueError(f"replicas must be >= 0 (got {self.replicas})")


@dataclass(frozen=True)
class RouteEntry:
    """One service's line in the router's table: how it is served and which generation.

    The router sends new requests only to Ready replicas of ``serving_generation`` that are
    not draining; ``None`` means nothing serves yet. ``failure`` set (every replica failed
    init(), nothing serving) makes the router answer that the service failed, and why.
    """

    service: str
    serving_generation: int | None
    auth: Literal["key", "token"] | None
    primary_key: str | None = field(default=None, repr=False)
    secondary_key: str | None = field(default=None, repr=False)
    max_concurrent: int = 1
    max_wait_s: float = 0.5
    timeout_s: float = 60.0
    max_body_bytes: int = 100 * 1024 * 1024
    trace: bool = False
    failure: str | None = None
    cold_wait_s: float = 0.0  # scale to zero: more a request may wait while no replica exists


class ComputeTarget(Protocol):
    """The interface every compute target implements; the reconciler drives it, nothing else.

    Written for whoever implements the next target. It is declarative: the reconciler says
    what a service's generations should look like and observes what runs; it never asks for
    "start replica 3". Each call returns once the change is under way, not when it is done;
    progress shows in :meth:`replicas`, and the target calls the callback given to
    :meth:`watch` whenever a replica of that service changes state, so the reconciler looks
    again (it also looks every second, so a missed call only delays).

    How the calls map onto Kubernetes (one Deployment per generation, named after the service
    and generation, ``maxUnavailable: 0``, readiness probe ``GET /``):

    - :meth:`apply` = create or patch the generation's Deployment (pod template from the
      plan, ``spec.replicas``). Called again with the same spec it changes nothing.
    - :meth:`scale` = patch ``deployments/scale``; ``remove`` names the pods to remove first
      (the ``controller.kubernetes.io/pod-deletion-cost`` annotation), since a Deployment
      picks its victims itself.
    - :meth:`retire` = delete the generation's Deployment; its pods go Terminating, which
      the router treats as draining (``preStop`` waits for in-flight requests).
    - :meth:`replicas` = the pods by label: Ready condition, ``status.podIP`` as the
      address, ``restartCount`` as restarts; a pod never Ready whose container terminated
      (or is in CrashLoopBackOff) is ``INIT_FAILED``; a Terminating pod is ``DRAINING``.
    - :meth:`publish` = what the in-cluster router reads (a ConfigMap per service with the
      serving generation and limits, a Secret with the keys); the router then follows Ready
      pods of that generation by watching the API.
    - :meth:`logs` = ``pods/log`` of the service's pods (``tail_lines``).
    - :meth:`delete` = delete the service's Deployments, Secret and ConfigMap.
    - :meth:`check_now` = nothing to do: the kubelet probes, and the router sees the pod's
      Ready condition change.
    - :meth:`close` = nothing to stop: pods outlive the process that applied them.
    - :meth:`watch` = a watch on the service's pods (by label), calling back per event.

    Rules every target keeps (the reconciler's guarantees rest on them):

    - a replica that fails before ever being Ready is reported ``INIT_FAILED`` with the
      reason in ``detail``, and is not restarted; one that fails after being Ready is
      restarted by the target (``restarts`` counts), reported not Ready meanwhile;
    - removing a replica (``scale`` down, ``retire``, ``delete``) always drains it first:
      the router stops assigning to it at once, its in-flight requests finish (at most the
      given drain time), and only then is it stopped. It is listed ``DRAINING`` until gone;
    - only the generation the route names is ever sent traffic, so a new generation can be
      started beside the serving one and switched to once all its replicas are Ready.

    ``tests/targets/test_target_contract.py`` checks these rules on every target; a new one adds a
    driver there (how to let its replicas progress, what its router sends to).
    """

    def watch(self, on_change: OnChange) -> None:
        """Call ``on_change(service)`` (on the event loop) whenever a replica of that service
        changes state; one subscriber, the reconciler."""
        ...

    def replicas(self, service: str) -> list[ReplicaInfo]:
        """Every replica of ``service`` the target knows, any generation and state."""
        ...

    async def apply(self, spec: GenerationSpec) -> None:
        """Make ``spec.plan``'s generation run ``spec.replicas`` replicas (create, or change
        the count as :meth:`scale` would). Other generations are left as they are."""
        ...

    async def scale(self, service: str, generation: int, replicas: int, remove: Collection[str] = ()) -> None:
        """Change a generation's replica count; going down, the replicas named in ``remove``
        go first (then any not Ready, then the highest index); each is drained first."""
        ...

    async def retire(self, service: str, generation: int, drain_s: float) -> None:
        """Remove a whole generation: drain its replicas (at most ``drain_s``) and stop them.
        Returns at once; the replicas are listed ``DRAINING`` until they are gone."""
        ...

    def publish(self, route: RouteEntry) -> None:
        """Hand the router this service's entry (limits, keys, serving generation, failure).
        Takes effect before the call returns where the router is in this process, so that a
        regenerated key is refused from then on."""
        ...

    def logs(self, service: str, replica_id: str | None = None, tail_lines: int = 5000) -> str:
        """The last ``tail_lines`` lines of one replica's log, or of each replica's in turn."""
        ...

    async def delete(self, service: str, drain_s: float) -> None:
        """Remove the service from the router and every replica of it (drained first)."""
        ...

    def check_now(self, replica_id: str) -> None:
        """The router saw this replica fail mid-request: probe it now rather than at the next period."""
        ...

    async def close(self, drain_s: float) -> None:
        """The process that drives the target is stopping: replicas that live in it (the local
        target's processes) are stopped, so nothing is left running; replicas that live
        elsewhere (pods) are left as they are."""
        ...
