"""``Model.profile``: measure a model's CPU and memory on sample requests (v1: ``ModelProfile``).

The models are deployed as a temporary one-replica service on the local cluster, each
sample is scored through the router one after another, and the replica process's CPU time
and resident memory are read from ``/proc`` (Linux) around each request. The recommendation
is the peak seen with 20 % headroom, rounded up to 0.1 (cores, GB). The service is deleted
afterwards, whatever happened.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfleet.errors import ConfigError, ModelfleetError
from modelfleet.sdk.deploy import deploy_service
from modelfleet.spec import aks_deploy_configuration

if TYPE_CHECKING:
    from modelfleet.sdk.environment import InferenceConfig
    from modelfleet.sdk.registered import RegisteredModel
    from modelfleet.sdk.workspace_base import WorkspaceBase

HEADROOM = 1.2
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ModelProfile:
    """The outcome of ``Model.profile`` (v1: ``azureml.core.profile.ModelProfile``)."""

    def __init__(self, name: str, details: dict[str, Any]) -> None:
        self.name = name
        self._details = details
        self.state = details["state"]
        self.recommended_cpu = details["recommendedCpu"]
        self.recommended_memory = details["recommendedMemoryInGB"]

    def __repr__(self) -> str:
        return f"ModelProfile(name={self.name!r}, state={self.state!r})"

    def wait_for_completion(self, show_output: bool = False) -> None:
        """v1 waited for the profiling run; ``Model.profile`` has finished it already."""
        if show_output:
            print(
                f"{self.name}: {self.state}; recommended cpu_cores={self.recommended_cpu}, "
                f"memory_gb={self.recommended_memory}",
                flush=True,
            )

    def get_details(self) -> dict[str, Any]:
        return dict(self._details)

    def serialize(self) -> dict[str, Any]:
        return self.get_details()


def read_samples(input_dataset: Any) -> list[str]:
    """The request bodies: a file of JSON lines (one body each) or a list of bodies."""
    if isinstance(input_dataset, str | os.PathLike):
        path = Path(input_dataset).expanduser()
        if not path.is_file():
            raise ConfigError(f"input_dataset {path} is not a file of JSON lines (one request body a line)")
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        for number, line in enumerate(lines, 1):
            try:
                json.loads(line)
            except ValueError:
                raise ConfigError(f"input_dataset {path} line {number} is not JSON: {line[:80]!r}") from None
        bodies = lines
    elif isinstance(input_dataset, Sequence) and not isinstance(input_dataset, bytes):
        bodies = [b if isinstance(b, str) else json.dumps(b) for b in input_dataset]
    else:
        raise ConfigError(
            "input_dataset must be a file of JSON lines or a list of request bodies "
            f"(got {type(input_dataset).__name__}); modelfleet has no v1 Dataset"
        )
    if not bodies:
        raise ConfigError("input_dataset holds no request bodies")
    return bodies


def profile_models(
    workspace: WorkspaceBase,
    name: str,
    models: Sequence[RegisteredModel],
    inference_config: InferenceConfig,
    input_dataset: Any,
    cpu: float | None,
    memory_in_gb: float | None,
    description: str | None,
    timeout_sec: float,
) -> ModelProfile:
    bodies = read_samples(input_dataset)
    config = aks_deploy_configuration(
        autoscale_enabled=False, num_replicas=1, cpu_cores=cpu, memory_gb=memory_in_gb, description=f"profile {name}"
    )
    service_name = f"profile-{uuid.uuid4().hex[:12]}"
    started = time.time()
    service = deploy_service(workspace, service_name, models, inference_config, config)
    try:
        service.wait_for_deployment(timeout_sec=timeout_sec)
        replicas = workspace.cluster().status()["services"][service_name]["replicas"]
        pid = int(replicas[0]["pid"])
        latencies: list[float] = []
        errors: list[str] = []
        peak_cpu = 0.0
        peak_rss = _rss_bytes(pid)
        for body in bodies:
            cpu_before, t0 = _cpu_seconds(pid), time.perf_counter()
            try:
                service.run(body)
            except ModelfleetError as exc:
                errors.append(exc.message[:500])
            elapsed = time.perf_counter() - t0
            latencies.append(elapsed * 1000)
            peak_cpu = max(peak_cpu, (_cpu_seconds(pid) - cpu_before) / max(elapsed, 1e-6))
            peak_rss = max(peak_rss, _rss_bytes(pid))
        peak_rss = max(peak_rss, _peak_rss_bytes(pid))
    finally:
        service.delete()
    peak_cpu = min(peak_cpu, float(os.cpu_count() or 1))
    ordered = sorted(latencies)
    spec = config
    details: dict[str, Any] = {
        "name": name,
        "description": description,
        "createdTime": started,
        "state": "Succeeded" if len(errors) < len(bodies) else "Failed",
        "requestedCpu": spec.cpu_cores,
        "requestedMemoryInGB": spec.memory_gb,
        "maxUtilizedCpu": round(peak_cpu, 3),
        "maxUtilizedMemoryInGB": round(peak_rss / 1024**3, 4),
        "recommendedCpu": _round_up(max(peak_cpu * HEADROOM, 0.1)),
        "recommendedMemoryInGB": _round_up(max(peak_rss / 1024**3 * HEADROOM, 0.1)),
        "totalQueries": len(bodies),
        "successQueries": len(bodies) - len(errors),
        "successRate": round((len(bodies) - len(errors)) / len(bodies), 4),
        "latencyPercentile50InMs": _percentile(ordered, 50),
        "latencyPercentile90InMs": _percentile(ordered, 90),
        "latencyPercentile99InMs": _percentile(ordered, 99),
        "errorLogs": errors[:10],
    }
    return ModelProfile(name, details)


def _round_up(value: float) -> float:
    return math.ceil(round(value, 6) * 10) / 10


def _percentile(ordered: list[float], pct: int) -> float:
    index = min(len(ordered) - 1, max(0, math.ceil(pct / 100 * len(ordered)) - 1))
    return round(ordered[index], 3)


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of ``pid`` and its waited-for children (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / _TICKS


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _rss_bytes(pid: int) -> int:
    return _status_kb(pid, "VmRSS") * 1024


def _peak_rss_bytes(pid: int) -> int:
    return _status_kb(pid, "VmHWM") * 1024
