"""Scale to zero is refused on a Kubernetes compute target (its router's scaler does not bring
a service back from zero yet), before anything is stored."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e_support import SCRIPTS
from modelfleet import AksWebservice, InferenceConfig, KubernetesCompute, Model, Workspace
from modelfleet.errors import ConfigError


def test_a_deploy_with_scale_to_zero_to_a_cluster_is_refused_and_stores_nothing(tmp_path: Path) -> None:
    ws = Workspace.create("limits", tmp_path / "ws")
    ws.store.computes.attach("prod", "kubernetes", {"namespace": "models", "blob_store": "https://blobs.example/m"})
    ic = InferenceConfig(entry_script="score.py", source_directory=SCRIPTS / "sum")
    dc = AksWebservice.deploy_configuration(scale_to_zero_after_seconds=60)
    with pytest.raises(
        ConfigError, match="scale_to_zero_after_seconds is not supported on Kubernetes compute target 'prod'"
    ):
        Model.deploy(ws, "napper", [], ic, dc, deployment_target=KubernetesCompute(ws, "prod"))
    assert ws.store.list_services() == []
