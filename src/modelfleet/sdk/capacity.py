"""Refuse, before anything is stored, a deployment that could never run on this machine.

"Never" means on an empty machine: one replica asks for more CPUs or memory than the
machine has, or the replicas it must start with (``num_replicas``, or
``autoscale_min_replicas``) do not fit side by side. Whether it fits beside the services
already running is the control plane's accounting, not this check's.
"""

from __future__ import annotations

from modelfleet.control.room import Capacity, Used, machine_capacity, room_for
from modelfleet.errors import ConfigError
from modelfleet.spec import DeploySpec


def refuse_never_fits(spec: DeploySpec, capacity: Capacity | None = None) -> None:
    if spec.compute_type not in ("aks", "local"):
        return  # another target's nodes are not this machine
    machine = capacity or machine_capacity()
    cpus, memory = machine.cpus, machine.memory_gb
    if spec.cpu_cores > cpus:
        raise ConfigError(
            f"cpu_cores {spec.cpu_cores:g} can never fit: this machine has {cpus:g} CPUs; ask for at most {cpus:g}"
        )
    if spec.memory_gb > memory:
        raise ConfigError(
            f"memory_gb {spec.memory_gb:g} can never fit: this machine has {memory:.1f} GB of memory; "
            f"ask for at most {memory:.1f}"
        )
    replicas = spec.initial_replicas()
    fits = room_for(machine, Used(), spec.replace(gpu_cores=0))  # GPUs are checked on their own
    if replicas > fits:
        count = "autoscale_min_replicas" if spec.autoscale.enabled else "num_replicas"
        raise ConfigError(
            f"{count} {replicas} can never fit: {replicas} replicas of cpu_cores {spec.cpu_cores:g} and "
            f"memory_gb {spec.memory_gb:g} need {replicas * spec.cpu_cores:g} CPUs and "
            f"{replicas * spec.memory_gb:g} GB, and this machine has {cpus:g} CPUs and {memory:.1f} GB "
            f"(at most {fits} such replicas); lower {count}, cpu_cores or memory_gb"
        )
