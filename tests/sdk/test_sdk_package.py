"""``Model.package``: a Dockerfile and context that serve the models as a deployed replica does.

No image is built here (no Docker daemon in the test machine); instead the saved context is
run the way its Dockerfile runs it: the replica, in the app folder, with the ENV it sets.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from e2e_support import SCRIPTS, wait_until
from modelfleet import Environment, InferenceConfig, Model, Workspace
from modelfleet.errors import ConfigError


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.create("pkg", tmp_path / "ws")


def _model(ws: Workspace, tmp_path: Path) -> Model:
    (tmp_path / "weights.json").write_text(json.dumps({"w": 7}))
    return Model.register(ws, model_path=tmp_path / "weights.json", model_name="weights")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dockerfile_env(dockerfile: str, app_root: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in dockerfile.replace("\\\n", " ").splitlines():  # an instruction may go on over lines
        if line.startswith("ENV "):
            for item in shlex.split(line[4:]):
                key, _, value = item.partition("=")
                env[key] = value.replace("/var/azureml-app", str(app_root))
    return env


def test_this_interpreter_environment_is_packaged_pinned_and_the_context_serves(ws: Workspace, tmp_path: Path) -> None:
    model = _model(ws, tmp_path)
    ic = InferenceConfig(
        entry_script="score.py", source_directory=SCRIPTS / "read_model", environment=Environment("env")
    )
    package = Model.package(ws, [model], ic, generate_dockerfile=True, image_name="reader", image_label="v1")
    package.wait_for_creation(show_output=True)
    assert package.image == "reader:v1" and Path(package.location).is_dir()
    out = tmp_path / "imagefiles"
    package.save(out)

    dockerfile = (out / "Dockerfile").read_text()
    assert f"FROM python:{sys.version_info.major}.{sys.version_info.minor}-slim" in dockerfile
    assert "COPY env /build" in dockerfile and "COPY . /build" not in dockerfile
    requirements = (out / "env" / "requirements.txt").read_text()
    assert re.search(r"^httpx==[\d.]+$", requirements, re.M)  # the interpreter's packages, pinned
    assert not re.search(r"^modelfleet==", requirements, re.M)  # the runtime is copied in instead
    assert (out / "app" / "azureml-models" / "weights" / "1" / "weights.json").is_file()
    assert (out / "app" / "read_model" / "score.py").is_file()

    port = _free_port()
    env = {**os.environ, **_dockerfile_env(dockerfile, out / "app")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelfleet.replica", "--port", str(port)],
        cwd=out / "app",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def answers() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, timeout=30)
        response = httpx.post(f"http://127.0.0.1:{port}/score", content="{}")
        assert response.status_code == 200 and response.json() == {"model": {"w": 7}}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def test_a_requirements_environment_keeps_its_own_requirements(ws: Workspace, tmp_path: Path) -> None:
    model = _model(ws, tmp_path)
    (tmp_path / "requirements.txt").write_text("six==1.16.0\n")
    env = Environment.from_pip_requirements("pinned", tmp_path / "requirements.txt")
    ic = InferenceConfig(entry_script="score.py", source_directory=SCRIPTS / "read_model", environment=env)
    package = Model.package(ws, [model], ic, generate_dockerfile=True)
    requirements = (Path(package.location) / "env" / "requirements.txt").read_text()
    assert "six==1.16.0" in requirements and "httpx==" not in requirements
    assert package.image.startswith("modelfleet-package:")


def test_package_refusals_are_clear(ws: Workspace, tmp_path: Path) -> None:
    model = _model(ws, tmp_path)
    ic = InferenceConfig(entry_script="score.py", source_directory=SCRIPTS / "read_model", environment=Environment("e"))
    with pytest.raises(ConfigError, match="generate_dockerfile=True"):
        Model.package(ws, [model], ic)
    package = Model.package(ws, [model], ic, generate_dockerfile=True)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(ConfigError, match="not an empty folder"):
        package.save(busy)
