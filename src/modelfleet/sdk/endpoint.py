"""``Model.deploy`` with ``AksEndpoint.deploy_configuration(...)``: an endpoint and its first version.

Everything is checked before anything is written (the endpoint's name, the version's name and
share, the settings, the models and the entry script). The version's service row is written
first, then the endpoint's (``store/endpoints.py``), and the local cluster is told to sync the
endpoint, which publishes its route and starts its version. Kubernetes compute targets do not
run endpoints yet (their router does not split traffic between versions): refused here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from modelfleet.errors import ConfigError, Conflict, NotFound
from modelfleet.sdk import service_meta
from modelfleet.sdk.capacity import refuse_never_fits
from modelfleet.sdk.keys import check_key, new_key
from modelfleet.sdk.service_config import build_config
from modelfleet.sdk.webservice import AksEndpoint, EndpointDeployConfig, endpoint_config, version_spec
from modelfleet.spec import validate_service_name
from modelfleet.spec.names import version_service_name
from modelfleet.store.endpoints import is_endpoint_config, with_version

if TYPE_CHECKING:
    from modelfleet.sdk.environment import InferenceConfig
    from modelfleet.sdk.registered import RegisteredModel
    from modelfleet.sdk.workspace_base import WorkspaceBase

__all__ = ["deploy_endpoint"]


def deploy_endpoint(
    workspace: WorkspaceBase,
    name: str,
    models: Sequence[RegisteredModel],
    inference_config: InferenceConfig | None,
    config: EndpointDeployConfig,
    *,
    deployment_target: Any = None,
    overwrite: bool = False,
    show_output: bool = False,
) -> AksEndpoint:
    validate_service_name(name)
    if deployment_target is not None:
        raise ConfigError(
            "deployment_target: endpoints (AksEndpoint) run on the local cluster only for now; a Kubernetes "
            "compute target's router does not split traffic between versions yet. Deploy the endpoint "
            "without deployment_target, or deploy an AksWebservice to the cluster"
        )
    if inference_config is None:
        raise ConfigError("Model.deploy needs inference_config=InferenceConfig(entry_script=..., ...)")
    spec = config.spec
    for field_name in ("primary_key", "secondary_key"):
        value = getattr(spec, field_name)
        if value is not None:
            check_key(field_name, value)
    refuse_never_fits(spec)
    store = workspace.store
    try:
        existing = store.get_service(name)
    except NotFound:
        existing = None
    if existing is not None and not is_endpoint_config(existing.config):
        raise Conflict(
            f'"{name}" is already a service in workspace "{workspace.name}"; an endpoint needs a name of its own '
            f"(or delete the service first: `modelfleet service delete -n {name}`)"
        )
    if existing is not None and not overwrite:
        raise Conflict(
            f'endpoint "{name}" already exists in workspace "{workspace.name}"; add a version with '
            "endpoint.create_version(...), pass overwrite=True to replace it, or delete it first "
            f"(`modelfleet endpoint delete -n {name}`)"
        )
    entry = config.version_entry()
    entry.setdefault("is_default", True)  # the endpoint's first version is its default
    versions = with_version(
        {},
        config.version_name,
        create=True,
        **{k: entry[k] for k in ("traffic_percentile", "is_default", "mirror_percentile") if k in entry},
    )
    versions[config.version_name].update(entry)
    version_config = build_config(workspace, models, inference_config.to_spec(), version_spec(spec))
    if existing is not None:
        AksEndpoint(workspace, name).delete()
    owner = store.cluster_id
    internal = version_service_name(name, config.version_name)
    store.create_service(internal, version_config, primary_key=None, secondary_key=None, overwrite=True, cluster=owner)
    primary = secondary = None
    if spec.auth_enabled:
        primary = spec.primary_key or new_key()
        secondary = spec.secondary_key or new_key()
    store.create_service(
        name, endpoint_config(spec, versions), primary_key=primary, secondary_key=secondary, cluster=owner
    )
    meta = service_meta.Metadata(dict(spec.tags), dict(spec.properties), spec.description)
    service_meta.save(store, name, meta)
    cluster = workspace.cluster()
    cluster.ensure_running()
    cluster.sync(name)
    endpoint = AksEndpoint(workspace, name)
    if show_output:
        endpoint.wait_for_deployment(show_output=True)
    return endpoint
