"""``Model``: registered models and ``Model.deploy`` (v1: ``azureml.core.Model``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from modelfleet.sdk.deploy import deploy_service
from modelfleet.sdk.registered import RegisteredModel

if TYPE_CHECKING:
    from modelfleet.sdk.environment import InferenceConfig
    from modelfleet.sdk.webservice import Webservice
    from modelfleet.sdk.workspace_base import WorkspaceBase
    from modelfleet.spec import DeploySpec


class Model(RegisteredModel):
    """A registered model version (``registered.py``) and v1's ``Model.deploy``."""

    @staticmethod
    def deploy(
        workspace: WorkspaceBase,
        name: str,
        models: Sequence[RegisteredModel],
        inference_config: InferenceConfig | None = None,
        deployment_config: DeploySpec | None = None,
        deployment_target: Any = None,
        overwrite: bool = False,
        show_output: bool = False,
    ) -> Webservice:
        """Deploy ``models`` as service ``name`` to the local cluster (started if needed)."""
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
