"""``Model``: registered models and ``Model.deploy`` (v1: ``azureml.core.Model``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from modelfleet.sdk.deploy import deploy_service
from modelfleet.sdk.registered import RegisteredModel

if TYPE_CHECKING:
    from modelfleet.sdk.environment import InferenceConfig
    from modelfleet.sdk.package import ModelPackage
    from modelfleet.sdk.profile import ModelProfile
    from modelfleet.sdk.webservice import EndpointDeployConfig, Webservice
    from modelfleet.sdk.workspace_base import WorkspaceBase
    from modelfleet.spec import DeploySpec


class Model(RegisteredModel):
    """A registered model version (``registered.py``) and v1's ``Model.deploy``,
    ``Model.package`` and ``Model.profile``."""

    @staticmethod
    def deploy(
        workspace: WorkspaceBase,
        name: str,
        models: Sequence[RegisteredModel],
        inference_config: InferenceConfig | None = None,
        deployment_config: DeploySpec | EndpointDeployConfig | None = None,
        deployment_target: Any = None,
        overwrite: bool = False,
        show_output: bool = False,
    ) -> Webservice:
        """Deploy ``models`` as service ``name`` to the local cluster (started if needed); with
        ``AksEndpoint.deploy_configuration(version_name=...)``, as endpoint ``name`` with that
        first version (an ``AksEndpoint`` is returned)."""
        return deploy_service(
            workspace,
            name,
            models,
            inference_config,
            deployment_config,
            deployment_target=deployment_target,
            overwrite=overwrite,
            show_output=show_output,
        )

    @staticmethod
    def package(
        workspace: WorkspaceBase,
        models: Sequence[RegisteredModel],
        inference_config: InferenceConfig | None = None,
        generate_dockerfile: bool = False,
        image_name: str | None = None,
        image_label: str | None = None,
    ) -> ModelPackage:
        """The service's image as a Dockerfile and build context (``package.location``;
        ``package.save(path)`` copies it), for any environment, ``Environment("env")``
        included (its interpreter's packages, pinned). modelfleet builds no images: pass
        ``generate_dockerfile=True`` and run ``docker build`` on the saved folder."""
        from modelfleet.sdk.package import package_models  # images and audits: not loaded by every CLI command

        return package_models(workspace, models, inference_config, generate_dockerfile, image_name, image_label)

    @staticmethod
    def profile(
        workspace: WorkspaceBase,
        profile_name: str,
        models: Sequence[RegisteredModel],
        inference_config: InferenceConfig,
        input_dataset: Any,
        cpu: float | None = None,
        memory_in_gb: float | None = None,
        description: str | None = None,
        timeout_sec: float = 600,
    ) -> ModelProfile:
        """Deploy ``models`` as a temporary one-replica service, score each sample through it,
        and recommend ``cpu_cores`` and ``memory_gb`` from the replica's measured CPU and memory
        (``profile.get_details()``: ``recommendedCpu``, ``recommendedMemoryInGB``, the peaks and
        latency percentiles). modelfleet has no v1 Dataset: ``input_dataset`` is a file of JSON
        lines (one request body a line) or a list of request bodies (strings, or values sent as
        JSON). ``cpu`` / ``memory_in_gb`` are the temporary service's settings."""
        from modelfleet.sdk.profile import profile_models

        return profile_models(
            workspace,
            profile_name,
            models,
            inference_config,
            input_dataset,
            cpu,
            memory_in_gb,
            description,
            timeout_sec,
        )
