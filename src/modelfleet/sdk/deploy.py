"""``Model.deploy``: check every argument, store the service, and have the cluster serve it.

Everything is checked before anything is written: the service name, the settings, the
models, the entry script and its folder (``service_config.py``). Then the config goes into
the workspace and the local cluster (started on demand) is told to reconcile the service;
with ``deployment_target`` (an attached Kubernetes cluster, ``sdk/compute.py``) the config
names it, and that target's controller (started on demand) reconciles the service instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from modelfleet.errors import ConfigError, Conflict, NotFound
from modelfleet.sdk import service_meta
from modelfleet.sdk.capacity import refuse_never_fits
from modelfleet.sdk.cluster_limits import refuse_unsupported_on_cluster
from modelfleet.sdk.compute import COMPUTE_TARGET_KEY, deployment_target_of
from modelfleet.sdk.endpoint import deploy_endpoint
from modelfleet.sdk.keys import check_key, new_key
from modelfleet.sdk.service_config import build_config
from modelfleet.sdk.webservice import EndpointDeployConfig, Webservice
from modelfleet.spec import DeploySpec, aks_deploy_configuration, validate_service_name
from modelfleet.store.endpoints import is_endpoint_config

if TYPE_CHECKING:
    from modelfleet.sdk.environment import InferenceConfig
    from modelfleet.sdk.registered import RegisteredModel
    from modelfleet.sdk.workspace_base import WorkspaceBase


def deploy_service(
    workspace: WorkspaceBase,
    name: str,
    models: Sequence[RegisteredModel],
    inference_config: InferenceConfig | None,
    deployment_config: DeploySpec | EndpointDeployConfig | None,
    *,
    deployment_target: Any = None,
    overwrite: bool = False,
    show_output: bool = False,
) -> Webservice:
    if isinstance(deployment_config, EndpointDeployConfig):  # AksEndpoint.deploy_configuration(...)
        return deploy_endpoint(
            workspace,
            name,
            models,
            inference_config,
            deployment_config,
            deployment_target=deployment_target,
            overwrite=overwrite,
            show_output=show_output,
        )
    validate_service_name(name)
    _refuse_endpoint_name(workspace, name)
    target = deployment_target_of(workspace, deployment_target)  # None: the local cluster
    if inference_config is None:
        raise ConfigError("Model.deploy needs inference_config=InferenceConfig(entry_script=..., ...)")
    spec = deployment_config if deployment_config is not None else aks_deploy_configuration()
    if not isinstance(spec, DeploySpec):
        raise ConfigError(
            "deployment_config must come from AksWebservice.deploy_configuration(...) or "
            f"LocalWebservice.deploy_configuration(...) (got {type(spec).__name__})"
        )
    _refuse_unsupported(spec)
    if target is None:  # a cluster's nodes are not this machine
        refuse_never_fits(spec)
    else:
        refuse_unsupported_on_cluster(spec, target.name)
    config = build_config(workspace, models, inference_config.to_spec(), spec)
    if target is not None:
        config[COMPUTE_TARGET_KEY] = target.name
    primary = secondary = None
    if spec.auth_enabled:
        primary = spec.primary_key or new_key()
        secondary = spec.secondary_key or new_key()
    # a local service is this folder's cluster's: only it runs it (store/clusters.py); in a shared
    # workspace the store refuses to deploy over another cluster's
    owner = workspace.store.cluster_id if target is None else None
    workspace.store.create_service(
        name, config, primary_key=primary, secondary_key=secondary, overwrite=overwrite, cluster=owner
    )
    # a service deployed again over an old one starts from the tags it is deployed with
    service_meta.save(
        workspace.store, name, service_meta.Metadata(dict(spec.tags), dict(spec.properties), spec.description)
    )
    if target is not None:
        target.ensure_controller()  # it follows the workspace: the new service is picked up within a second
    else:
        cluster = workspace.cluster()
        cluster.ensure_running()
        cluster.sync(name)
    service = Webservice(workspace, name)
    if show_output:
        service.wait_for_deployment(show_output=True)
    return service


def _refuse_unsupported(spec: DeploySpec) -> None:
    # Key and token auth together is refused by DeploySpec itself (as v1 does); keys given by
    # the caller are checked here, before anything is stored.
    for field_name in ("primary_key", "secondary_key"):
        value = getattr(spec, field_name)
        if value is not None:
            check_key(field_name, value)


def _refuse_endpoint_name(workspace: WorkspaceBase, name: str) -> None:
    """A service cannot take an endpoint's name, even with overwrite (its versions would be orphaned)."""
    try:
        record = workspace.store.get_service(name)
    except NotFound:
        return
    if is_endpoint_config(record.config):
        raise Conflict(
            f'"{name}" is already an endpoint in workspace "{workspace.name}"; a service needs a name of its own '
            f"(or delete the endpoint first: `modelfleet endpoint delete -n {name}`)"
        )
