"""The machine's room: what the local cluster's replicas request against what the machine has.

One accounting, used by every deploy and update (``ServiceController`` checks a new
generation before planning it) and by the autoscaler (how many more replicas fit). A rule, as
a Kubernetes node's allocatable: a replica reserves its ``cpu_cores``, ``memory_gb`` and
``gpu_cores`` whatever it uses. A service holds, at its current spec, as many replicas as the
largest of: those it runs (starting and draining ones included), the count it should have, and
the count a deploy or update being planned asked for. The daemon and router reserve nothing.

A new generation is checked as if it replaced the service's own replicas (its other
generations are left out of "held by others"): an update that asks for no more than the
service holds always fits, although old and new replicas run side by side for a moment while
it rolls out. A deploy or update that does not fit is refused with a message that names what
was asked, what is free and who holds the rest; nothing already running is touched, and a
refused update leaves the serving generation serving.

GPUs are counted whole: ``gpu_cores`` is a number of devices, found with ``nvidia-smi -L``
once when the daemon starts (none where it is missing). The local target hands each replica its
own devices through ``CUDA_VISIBLE_DEVICES`` (``targets/local.py``).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from modelfleet.spec import DeploySpec
from modelfleet.targets.gpus import gpu_count

_EPS = 1e-9
_NAMED_HOLDERS = 5  # a refusal names this many of the biggest holders, then counts the rest


@dataclass(frozen=True)
class Capacity:
    """What this machine offers replicas: CPUs, memory in GB and GPUs (whole devices)."""

    cpus: float
    memory_gb: float
    gpus: int = 0


def machine_capacity() -> Capacity:
    """This machine's CPU count, total memory (``/proc/meminfo``, else sysconf) and GPUs."""
    memory_gb = 0.0
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                memory_gb = int(line.split()[1]) / (1024 * 1024)
                break
    if not memory_gb:
        with contextlib.suppress(ValueError, OSError):
            memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return Capacity(cpus=float(os.cpu_count() or 1), memory_gb=memory_gb or math.inf, gpus=gpu_count())


@dataclass(frozen=True)
class Holding:
    """What one service's replicas request, all together."""

    service: str
    replicas: int
    cpus: float
    memory_gb: float
    gpus: int

    @classmethod
    def of(cls, service: str, spec: DeploySpec, replicas: int) -> Holding:
        return cls(service, replicas, replicas * spec.cpu_cores, replicas * spec.memory_gb, replicas * spec.gpu_cores)


class Holder(Protocol):
    """A service that holds room (``ServiceController`` is one)."""

    @property
    def name(self) -> str: ...
    def holding(self) -> Holding | None: ...


@dataclass(frozen=True)
class Used:
    cpus: float = 0.0
    memory_gb: float = 0.0
    gpus: int = 0


def used_by(holdings: Iterable[Holding]) -> Used:
    cpus = memory = 0.0
    gpus = 0
    for h in holdings:
        cpus, memory, gpus = cpus + h.cpus, memory + h.memory_gb, gpus + h.gpus
    return Used(cpus, memory, gpus)


def holdings(holders: Iterable[Holder], exclude: str | None = None) -> list[Holding]:
    """What every service but ``exclude`` holds (services holding nothing left out)."""
    out = []
    for holder in holders:
        if holder.name == exclude:
            continue
        h = holder.holding()
        if h is not None and h.replicas:
            out.append(h)
    return out


def room_for(capacity: Capacity, used: Used, spec: DeploySpec) -> int:
    """How many more replicas of ``spec`` fit beside ``used`` (never negative)."""
    fits = [
        math.floor((capacity.cpus - used.cpus) / spec.cpu_cores + _EPS),
        math.floor((capacity.memory_gb - used.memory_gb) / spec.memory_gb + _EPS),
    ]
    if spec.gpu_cores:
        fits.append((capacity.gpus - used.gpus) // spec.gpu_cores)
    return max(0, min(fits))


def refusal(capacity: Capacity, service: str, spec: DeploySpec, replicas: int, others: list[Holding]) -> str | None:
    """Why ``replicas`` replicas of ``spec`` do not fit beside ``others``, or None when they do."""
    if spec.gpu_cores and capacity.gpus == 0:
        return (
            f"service {service!r} asks for gpu_cores={spec.gpu_cores} but this machine has no GPU "
            "(nvidia-smi lists none); deploy with gpu_cores=0, or to a cluster with GPUs"
        )
    used = used_by(others)
    if room_for(capacity, used, spec) >= replicas:
        return None
    asked = Holding.of(service, spec, replicas)
    gpus = f", {asked.gpus} GPUs" if asked.gpus else ""
    free_gpus = f", {capacity.gpus - used.gpus} of {capacity.gpus} GPUs" if asked.gpus else ""
    return (
        f"service {service!r} does not fit on this machine: {replicas} replicas of cpu_cores={spec.cpu_cores:g}, "
        f"memory_gb={spec.memory_gb:g}" + (f", gpu_cores={spec.gpu_cores}" if spec.gpu_cores else "") + " ask for "
        f"{asked.cpus:g} CPUs, {asked.memory_gb:.2f} GB{gpus}; free: {max(capacity.cpus - used.cpus, 0):g} of "
        f"{capacity.cpus:g} CPUs, {max(capacity.memory_gb - used.memory_gb, 0):.2f} of {capacity.memory_gb:.2f} GB"
        f"{free_gpus}; held by {_holders(others)}. Lower the replica count, cpu_cores or memory_gb, or delete "
        "or shrink a service"
    )


def _holders(others: list[Holding]) -> str:
    if not others:
        return "no other service"
    biggest = sorted(others, key=lambda h: (-h.cpus, -h.memory_gb, h.service))
    named = [
        f"{h.service} ({h.replicas} replicas: {h.cpus:g} CPUs, {h.memory_gb:.2f} GB"
        + (f", {h.gpus} GPUs)" if h.gpus else ")")
        for h in biggest[:_NAMED_HOLDERS]
    ]
    rest = biggest[_NAMED_HOLDERS:]
    if rest:
        used = used_by(rest)
        named.append(f"{len(rest)} more services ({used.cpus:g} CPUs, {used.memory_gb:.2f} GB)")
    return ", ".join(named)
