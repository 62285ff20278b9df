"""v1 keys that were set but mean nothing here, so the CLI can say so."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Keys v1 had that have no effect in modelfleet: accepted, reported by ``v1_notes`` when set.
_V1_IGNORED: dict[str, dict[str, str]] = {
    "deploy": {},
    "inference": {
        "extraDockerfileSteps": "modelfleet builds no Docker image from it",
        "enableGpu": "GPUs are requested with gpu_cores in the deployment configuration",
        "baseImage": "give it as the environment's docker.baseImage (a Kubernetes service's image is built FROM it)",
        "baseImageRegistry": "registry credentials are the compute target's (image_registry)",
        "cudaVersion": "modelfleet builds no Docker image from it",
    },
    "environment": {
        "docker": "only docker.baseImage is used (a Kubernetes service's image is built FROM it)",
        "spark": "Spark packages are not installed",
        "databricks": "Databricks libraries are not installed",
        "inferencingStackVersion": "the scoring stack is modelfleet's own",
        "assetId": "environments are identified by their contents",
        "r": "R environments are not supported",
    },
}


# --------------------------------------------------------------------------- notes


def v1_notes(d: Mapping[str, Any], kind: str) -> list[str]:
    """For a v1 file of ``kind`` "deploy" or "inference": one line per v1 key that was set but
    has no effect in modelfleet, for the CLI to print. Empty when nothing was lost."""
    notes: list[str] = []
    if kind == "deploy":
        if d.get("appInsightsEnabled"):
            notes.append("appInsightsEnabled: no Application Insights; use the Prometheus metrics and service logs")
        if isinstance(d.get("dataCollection"), Mapping) and d["dataCollection"].get("eventHubEnabled"):
            notes.append("dataCollection.eventHubEnabled: no event hubs; collected data is stored in the workspace")
        return notes
    for key, why in _V1_IGNORED["inference"].items():
        if d.get(key):
            notes.append(f"{key}: ignored ({why})")
    env = d.get("environment")
    if isinstance(env, Mapping):
        docker = env.get("docker")
        if isinstance(docker, Mapping) and docker.get("baseDockerfile"):
            notes.append(f"environment.docker: ignored ({_V1_IGNORED['environment']['docker']})")
        for key in ("spark", "databricks"):
            section = env.get(key)
            if isinstance(section, Mapping) and any(v for k, v in section.items() if k != "precachePackages"):
                notes.append(f"environment.{key}: ignored ({_V1_IGNORED['environment'][key]})")
        py = env.get("python")
        if isinstance(py, Mapping) and py.get("baseCondaEnvironment"):
            notes.append(
                "environment.python.baseCondaEnvironment: ignored (environments are built from their own list)"
            )
    return notes
