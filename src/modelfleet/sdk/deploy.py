"""Turning ``Model.deploy`` and ``Webservice.update`` arguments into a stored service config.

Everything is checked here, before anything is written: the service name, the settings,
the models, the entry script and its folder. Then the config goes into the workspace and
the local cluster (started on demand) is told to reconcile the service.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfleet.errors import ConfigError, TargetError
from modelfleet.spec import (
    DeploySpec,
    EnvironmentSpec,
    InferenceSpec,
    aks_deploy_configuration,
    validate_service_name,
)

if TYPE_CHECKING:
    from modelfleet.sdk.environment import InferenceConfig
    from modelfleet.sdk.model import Model
    from modelfleet.sdk.webservice import Webservice
    from modelfleet.sdk.workspace import Workspace

KEY_BYTES = 32  # 256 bits of randomness per key


def new_key() -> str:
    return secrets.token_urlsafe(KEY_BYTES)


def deploy_service(
    workspace: Workspace,
    name: str,
    models: list[Model],
    inference_config: InferenceConfig | None,
    deployment_config: DeploySpec | None,
    *,
    deployment_target: Any = None,
    overwrite: bool = False,
    show_output: bool = False,
) -> Webservice:
    from modelfleet.sdk.webservice import KubernetesCompute, Webservice

    validate_service_name(name)
    if isinstance(deployment_target, KubernetesCompute):
        raise TargetError(
            "deploying to a Kubernetes cluster is not available yet; leave deployment_target out "
            "to deploy to the local cluster"
        )
    if inference_config is None:
        raise ConfigError("Model.deploy needs inference_config=InferenceConfig(entry_script=..., ...)")
    spec = deployment_config if deployment_config is not None else aks_deploy_configuration()
    if not isinstance(spec, DeploySpec):
        raise ConfigError(
            "deployment_config must come from AksWebservice.deploy_configuration(...) or "
            f"LocalWebservice.deploy_configuration(...) (got {type(spec).__name__})"
        )
    _refuse_unsupported(spec)
    config = build_config(workspace, models, inference_config.to_spec(), spec)
    primary = secondary = None
    if spec.auth_enabled:
        primary = spec.primary_key or new_key()
        secondary = spec.secondary_key or new_key()
    workspace.store.create_service(name, config, primary_key=primary, secondary_key=secondary, overwrite=overwrite)
    cluster = workspace.cluster()
    cluster.ensure_running()
    cluster.sync(name)
    service = Webservice(workspace, name)
    if show_output:
        service.wait_for_deployment(show_output=True)
    return service


def build_config(
    workspace: Workspace, models: list[Model], inference: InferenceSpec, spec: DeploySpec
) -> dict[str, Any]:
    """The stored form of a service: see ``control/layout.py`` for how it becomes an app folder."""
    from modelfleet.sdk.model import Model

    if not isinstance(models, list | tuple) or not all(isinstance(m, Model) for m in models):
        raise ConfigError("models must be a list of Model objects (e.g. [Model(ws, 'name')])")
    if len({m.name for m in models}) != len(models):
        raise ConfigError("models must not hold two versions of the same model name (v1 lays them out by name)")
    return {
        "deploy": spec.to_dict(),
        "inference": snapshot_source(workspace, inference),
        "environment": (inference.environment or EnvironmentSpec(name="default")).to_dict(),
        "models": [{"name": m.name, "version": m.version} for m in models],
    }


def snapshot_source(workspace: Workspace, inference: InferenceSpec) -> dict[str, Any]:
    """Store the entry script's folder (or the script alone) and say how to find it again."""
    if inference.source_directory:
        source = Path(inference.source_directory)
        if not source.is_dir():
            raise ConfigError(f"source_directory {source} is not a folder")
        script = source / inference.entry_script
        if not script.is_file():
            raise ConfigError(
                f"entry_script {inference.entry_script!r} not found in source_directory {source}; "
                "entry_script is relative to source_directory"
            )
        digest = workspace.store.put_snapshot(source)
        return {"entry_script": inference.entry_script, "source_name": source.name, "snapshot": digest}
    script = Path(inference.entry_script).expanduser()
    if not script.is_file():
        raise ConfigError(
            f"entry_script {script} not found (no source_directory given, so it is relative to {Path.cwd()})"
        )
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy2(script, Path(tmp) / script.name)
        digest = workspace.store.put_snapshot(Path(tmp))
    return {"entry_script": script.name, "source_name": "source", "snapshot": digest}


def _refuse_unsupported(spec: DeploySpec) -> None:
    # Key and token auth together is refused by DeploySpec itself (as v1 does); keys given by
    # the caller are checked here, before anything is stored.
    for field_name in ("primary_key", "secondary_key"):
        value = getattr(spec, field_name)
        if value is not None:
            check_key(field_name, value)


_KEY_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F))  # visible ASCII: safe in a header


def check_key(field_name: str, value: object) -> str:
    """A caller-chosen key must fit in ``Authorization: Bearer <key>``; the message never
    repeats the key."""
    if not isinstance(value, str) or not value or not set(value) <= _KEY_CHARS:
        raise ConfigError(
            f"{field_name} must be a non-empty string of visible ASCII characters (no spaces or line "
            "breaks); leave it out to get a generated 256-bit key"
        )
    return value
