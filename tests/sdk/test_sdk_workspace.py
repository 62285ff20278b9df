"""The SDK's workspace and model registry, on real SQLite workspaces (no cluster needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from modelfleet import Model, Workspace
from modelfleet.errors import Conflict, NotFound


def test_create_get_and_from_config_looking_upward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = Workspace.create("team", tmp_path / "fleet")
    assert ws.name == "team" and ws.path == (tmp_path / "fleet").resolve()
    assert Workspace.get(tmp_path / "fleet").name == "team"
    nested = tmp_path / "fleet" / "project" / "src"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    assert Workspace.from_config().path == ws.path
    assert Workspace.from_config(nested).path == ws.path
    with pytest.raises(Conflict):
        Workspace.create("team", tmp_path / "fleet")
    assert Workspace.create("team", tmp_path / "fleet", exist_ok=True).path == ws.path


def test_from_config_outside_any_workspace_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="Workspace.create"):
        Workspace.from_config(tmp_path)


def test_register_file_and_folder_list_get_download(tmp_path: Path) -> None:
    ws = Workspace.create("models", tmp_path / "ws")
    weights = tmp_path / "model.json"
    weights.write_text(json.dumps({"w": 1}))
    first = Model.register(ws, model_path=weights, model_name="reg", tags={"stage": "dev"}, description="first")
    weights.write_text(json.dumps({"w": 2}))
    second = Model.register(ws, model_path=weights, model_name="reg")
    assert (first.version, second.version) == (1, 2)
    assert first.id == "reg:1" and first.tags == {"stage": "dev"} and first.description == "first"

    folder = tmp_path / "outputs"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.txt").write_text("a")
    Model.register(ws, model_path=folder, model_name="bundle")

    assert Model(ws, "reg").version == 2
    assert Model(ws, "reg", version=1).version == 1
    assert Model(ws, id="reg:1").tags == {"stage": "dev"}
    assert Model(ws, "reg", tags=["stage"]).version == 1
    assert {m.id for m in Model.list(ws, latest=True)} == {"reg:2", "bundle:1"}
    assert set(ws.models) == {"reg", "bundle"}

    # versions never change: version 1 still holds what was registered first
    out = Path(Model(ws, "reg", version=1).download(tmp_path / "dl1"))
    assert json.loads(out.read_text()) == {"w": 1}
    out = Path(Model(ws, "bundle").download(tmp_path / "dl2"))
    assert (out / "sub" / "a.txt").read_text() == "a"
    with pytest.raises(NotFound):
        Model(ws, "reg", version=9)


def test_get_model_path_outside_a_replica_downloads_as_v1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = Workspace.create("paths", tmp_path / "ws")
    weights = tmp_path / "model.pkl"
    weights.write_bytes(b"weights")
    Model.register(ws, model_path=weights, model_name="clf")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AZUREML_MODEL_DIR", raising=False)
    path = Model.get_model_path("clf", _workspace=ws)
    assert path == os.path.join("azureml-models", "clf", "1", "model.pkl")
    assert Path(path).read_bytes() == b"weights"
