"""``modelfleet model package`` and ``model profile``: v1's ``az ml model package|profile``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e_support import SCRIPTS, cli, stop_cluster
from modelfleet import Workspace


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    workspace = Workspace.create("pkgcli", tmp_path / "ws")
    yield workspace
    stop_cluster(workspace)


def _ic(tmp_path: Path, script: str) -> str:
    path = tmp_path / f"ic-{script}.json"
    path.write_text(json.dumps({"entryScript": "score.py", "sourceDirectory": str(SCRIPTS / script)}))
    return str(path)


def test_model_package_writes_a_dockerfile_and_context(ws: Workspace, tmp_path: Path) -> None:
    (tmp_path / "weights.json").write_text(json.dumps({"w": 1}))
    cli(ws, "model", "register", "-n", "weights", "-p", str(tmp_path / "weights.json"))
    out = tmp_path / "imagefiles"
    result = cli(ws, "model", "package", "-m", "weights:1", "--ic", _ic(tmp_path, "read_model"),
                 "--output-path", str(out), "--image-name", "reader", "--image-label", "v1")  # fmt: skip
    assert f"docker build -t reader:v1 {out}" in result.stdout
    dockerfile = (out / "Dockerfile").read_text()
    assert "AZUREML_MODEL_DIR=/var/azureml-app/azureml-models/weights/1" in dockerfile
    assert (out / "app" / "azureml-models" / "weights" / "1" / "weights.json").is_file()
    again = cli(ws, "model", "package", "-m", "weights:1", "--ic", _ic(tmp_path, "read_model"),
                "--output-path", str(out), check=False)  # fmt: skip
    assert again.returncode == 1 and again.stderr.startswith("error: ") and "not an empty folder" in again.stderr


def test_model_profile_recommends_settings(ws: Workspace, tmp_path: Path) -> None:
    samples = tmp_path / "samples.jsonl"
    samples.write_text('{"data": [[1, 2, 3]]}\n{"data": [[4, 5, 6]]}\n')
    args = ["model", "profile", "-n", "sums", "--ic", _ic(tmp_path, "sum"), "--input-file", str(samples)]
    details = json.loads(cli(ws, *args, "-o", "json").stdout)
    assert details["state"] == "Succeeded" and details["totalQueries"] == 2
    assert details["recommendedCpu"] >= 0.1 and details["recommendedMemoryInGB"] >= 0.1
    assert json.loads(cli(ws, "service", "list", "-o", "json").stdout) == []  # the temporary service is gone
    text = cli(ws, *args).stdout
    assert "recommended: --cpu-cores" in text and "None" not in text
