"""What a Kubernetes service cannot have yet is refused before anything is stored: a deploy or
an update with ``collect_model_data=True`` (a pod's collected records would not reach the
workspace). The compute target is recorded in the workspace; no cluster is needed to refuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e_support import SCRIPTS
from modelfleet import AksWebservice, InferenceConfig, KubernetesCompute, Model, Webservice, Workspace
from modelfleet.errors import ConfigError
from modelfleet.sdk.service_config import build_config


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    ws = Workspace.create("limits", tmp_path / "ws")
    ws.store.computes.attach("prod", "kubernetes", {"namespace": "models", "blob_store": "https://blobs.example/m"})
    return ws


IC = InferenceConfig(entry_script="score.py", source_directory=SCRIPTS / "sum")


def test_a_deploy_with_data_collection_to_a_cluster_is_refused_and_stores_nothing(ws: Workspace) -> None:
    dc = AksWebservice.deploy_configuration(collect_model_data=True)
    with pytest.raises(
        ConfigError, match="collect_model_data=True is not supported on Kubernetes compute target 'prod'"
    ):
        Model.deploy(ws, "collects", [], IC, dc, deployment_target=KubernetesCompute(ws, "prod"))
    assert ws.store.list_services() == []
    assert ws.cluster().info() is None


def test_an_update_that_turns_data_collection_on_for_a_cluster_service_is_refused(ws: Workspace) -> None:
    config = build_config(ws, [], IC.to_spec(), AksWebservice.deploy_configuration())
    ws.store.create_service(
        "remote", {**config, "compute_target": "prod"}, primary_key="p" * 43, secondary_key="s" * 43
    )
    service = Webservice(ws, "remote")
    with pytest.raises(ConfigError, match="collect_model_data=True is not supported"):
        service.update(collect_model_data=True)
    assert ws.store.get_service("remote").generation == 1  # nothing changed
