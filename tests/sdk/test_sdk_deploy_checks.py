"""``Model.deploy`` checks its arguments before anything is stored or started (real SQLite
workspaces; no cluster is started by these tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfleet import AksWebservice, InferenceConfig, Model, Workspace
from modelfleet.errors import ConfigError


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    ws = Workspace.create("checks", tmp_path / "ws")
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"w1")
    Model.register(ws, weights, "reg")
    weights.write_bytes(b"w2")
    Model.register(ws, weights, "reg")
    (tmp_path / "score.py").write_text("def init():\n    pass\n\ndef run(data):\n    return data\n")
    return ws


def _inference(tmp_path: Path) -> InferenceConfig:
    return InferenceConfig(entry_script=str(tmp_path / "score.py"))


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (["reg:1"], "models must be a list of Model objects"),
        ("reg", "models must be a list of Model objects"),
        (None, "models must be a list of Model objects"),
    ],
)
def test_deploy_refuses_what_is_not_a_list_of_models(
    ws: Workspace, tmp_path: Path, models: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Model.deploy(ws, "svc", models, _inference(tmp_path))  # type: ignore[arg-type]
    assert ws.store.list_services() == []


def test_deploy_refuses_two_versions_of_one_model(ws: Workspace, tmp_path: Path) -> None:
    both = [Model(ws, "reg", version=1), Model(ws, "reg", version=2)]
    with pytest.raises(ConfigError, match="two versions of the same model name"):
        Model.deploy(ws, "svc", both, _inference(tmp_path))
    assert ws.store.list_services() == []


def test_deploy_refuses_a_key_that_cannot_travel_in_a_header(ws: Workspace, tmp_path: Path) -> None:
    config = AksWebservice.deploy_configuration(primary_key="has space")
    with pytest.raises(ConfigError, match="primary_key must be a non-empty string of visible ASCII") as err:
        Model.deploy(ws, "svc", [Model(ws, "reg")], _inference(tmp_path), config)
    assert "has space" not in str(err.value)  # the message never repeats a key
    assert ws.store.list_services() == []


def test_the_workspace_lists_models_that_can_deploy(ws: Workspace) -> None:
    latest = ws.models["reg"]
    assert type(latest) is Model and latest.version == 2
    assert ws.webservices == {}
