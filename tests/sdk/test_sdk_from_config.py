"""``Workspace.from_config()`` reading a v1 ``config.json``, and the CLI finding its workspace so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modelfleet import Workspace
from modelfleet.errors import ConfigError, NotFound

V1_CONFIG = {"subscription_id": "1234", "resource_group": "ml-rg", "workspace_name": "fleet"}


def _config(folder: Path, data: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(json.dumps(data))
    return path


def test_v1_config_json_opens_the_workspace_beside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = Workspace.create("fleet", tmp_path / "fleet")
    _config(tmp_path / ".azureml", V1_CONFIG)
    nested = tmp_path / "notebooks" / "day1"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    assert Workspace.from_config().path == ws.path
    assert Workspace.from_config(tmp_path / ".azureml" / "config.json").path == ws.path


def test_v1_config_json_with_workspace_path_attaches_a_workspace_elsewhere(tmp_path: Path) -> None:
    ws = Workspace.create("fleet", tmp_path / "shared" / "team-ws")
    config = _config(tmp_path / "project", {**V1_CONFIG, "workspace_path": "../shared/team-ws"})
    assert Workspace.from_config(config.parent).path == ws.path


def test_v1_config_json_naming_an_unknown_workspace_says_how_to_create_or_attach(tmp_path: Path) -> None:
    Workspace.create("other", tmp_path / "fleet")  # a workspace of another name is not it
    _config(tmp_path, V1_CONFIG)
    with pytest.raises(NotFound) as caught:
        Workspace.from_config(tmp_path)
    message = caught.value.message
    assert "'fleet'" in message and "'ml-rg'" in message
    assert "modelfleet workspace create -n fleet" in message and '"workspace_path"' in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [("{not json", "is not valid JSON"), (json.dumps({"subscription_id": "1"}), 'needs "workspace_name"')],
)
def test_a_broken_v1_config_json_is_a_clear_error(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ConfigError, match=expected):
        Workspace.from_config(tmp_path)


def test_another_tools_config_json_is_passed_over(tmp_path: Path) -> None:
    ws = Workspace.create("fleet", tmp_path / "fleet")
    project = tmp_path / "fleet" / "web"
    _config(project, {"compilerOptions": {"strict": True}})
    assert Workspace.from_config(project).path == ws.path


def test_cli_finds_its_workspace_through_config_json_and_says_one_line_when_none(tmp_path: Path) -> None:
    Workspace.create("fleet", tmp_path / "fleet")
    _config(tmp_path, V1_CONFIG)
    run = [sys.executable, "-m", "modelfleet", "service", "list", "-o", "json"]
    found = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == []
    _config(tmp_path, {**V1_CONFIG, "workspace_name": "missing"})
    missing = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: ") and missing.stderr.count("\n") == 1
    assert "modelfleet workspace create -n missing" in missing.stderr
