"""``Model.package``: a service's image as a Dockerfile and its build context (v1: ``ModelPackage``).

For users who build and run their own images: the context holds the environment's
requirements and modelfleet's replica runtime (``envs/image.py``, the same files
``modelfleet env image-context`` writes, under ``env/``), the models laid out as v1 laid them
out (``azureml-models/<name>/<version>/``) and the entry script's source folder; the image
runs the replica on port 5001 with the v1 variables (``AZUREML_MODEL_DIR``,
``AZUREML_ENTRY_SCRIPT``) set as a deployed replica has them.

An environment that asks for no packages (``Environment("env")``: this interpreter, or a
user-managed one) is packaged with the packages that interpreter has installed, pinned, on
its Python version: the image then holds what the local replica would have used.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfleet.control.layout import MODELS_FOLDER
from modelfleet.envs.audit import installed_pins
from modelfleet.envs.canonical import canonicalize, needs_build
from modelfleet.envs.image import write_image_context
from modelfleet.errors import ConfigError
from modelfleet.sdk.service_config import build_config
from modelfleet.spec import EnvironmentSpec, aks_deploy_configuration

if TYPE_CHECKING:
    from modelfleet.sdk.environment import InferenceConfig
    from modelfleet.sdk.registered import RegisteredModel
    from modelfleet.sdk.workspace_base import WorkspaceBase

APP_ROOT = "/var/azureml-app"  # where v1 images kept the app (the env image's WORKDIR)
# distributions never pinned into a packaged interpreter: the runtime is copied in instead
_NOT_PINNED = {"modelfleet"}


class ModelPackage:
    """A written image context (v1: ``azureml.core.model.ModelPackage``)."""

    def __init__(self, workspace: WorkspaceBase, location: Path, image: str, log: list[str]) -> None:
        self.workspace = workspace
        self.location = str(location)  # v1: where the context (or image) is; here a folder
        self.image = image  # the tag the Dockerfile suggests
        self.state = "Succeeded"
        self._log = log

    def __repr__(self) -> str:
        return f"ModelPackage(location={self.location!r}, image={self.image!r})"

    def wait_for_creation(self, show_output: bool = False) -> None:
        """v1 waited for the build; the context is written by ``Model.package`` already."""
        if show_output:
            print(self.get_logs(), flush=True)

    def get_logs(self, decode: bool = True, offset: int = 0) -> str:
        return "\n".join(self._log[offset:])

    def save(self, output_directory: str | Path) -> None:
        """Copy the Dockerfile and its context into ``output_directory`` (new or empty)."""
        out = Path(output_directory).expanduser()
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(f"output_directory {out} is not an empty folder; give a new or empty one")
        out.parent.mkdir(parents=True, exist_ok=True)
        # copyfile, not copy2: the models' files are read-only in the workspace, not in a copy
        shutil.copytree(self.location, out, dirs_exist_ok=True, copy_function=shutil.copyfile)

    def get_container_registry(self) -> None:
        """v1 named the registry that holds the image; modelfleet pushes to none."""
        return None

    def serialize(self) -> dict[str, Any]:
        return {"location": self.location, "image": self.image, "state": self.state}


def package_models(
    workspace: WorkspaceBase,
    models: Sequence[RegisteredModel],
    inference_config: InferenceConfig | None,
    generate_dockerfile: bool,
    image_name: str | None,
    image_label: str | None,
) -> ModelPackage:
    if inference_config is None:
        raise ConfigError("Model.package needs inference_config=InferenceConfig(entry_script=..., ...)")
    if not generate_dockerfile:
        raise ConfigError(
            "modelfleet builds no images itself: pass generate_dockerfile=True, then build the saved "
            "context with `docker build` (package.save(path))"
        )
    inference = inference_config.to_spec()
    config = build_config(workspace, models, inference, aks_deploy_configuration())
    environment = EnvironmentSpec.from_dict(config["environment"])
    log: list[str] = []
    buildable = _buildable(environment, log)
    location = workspace.store.runtime_dir / "packages" / uuid.uuid4().hex
    location.mkdir(parents=True)
    env_tag = write_image_context(buildable, location / "env")
    env_dockerfile = location / "env" / "Dockerfile"
    base = env_dockerfile.read_text()
    env_dockerfile.unlink()
    if base.count("COPY . /build\n") != 1:
        raise AssertionError("envs/image.py's Dockerfile no longer copies its context with `COPY . /build`")
    model_dir = _lay_out_app(workspace, config, location / "app")
    image = f"{image_name or 'modelfleet-package'}:{image_label or canonicalize(buildable).hash[:12]}"
    entry = f"{config['inference']['source_name']}/{config['inference']['entry_script']}"
    (location / "Dockerfile").write_text(
        f"# modelfleet package: {', '.join(m.id for m in models) or 'no models'} served by {entry}\n"
        f"#   docker build -t {image} . && docker run -p 5001:5001 {image}\n"
        + base.replace("COPY . /build\n", "COPY env /build\n")
        + f"COPY app {APP_ROOT}\n"
        + f"ENV AML_APP_ROOT={APP_ROOT} AZUREML_MODEL_DIR={APP_ROOT}/{model_dir} "
        + f"AZUREML_SOURCE_DIRECTORY={config['inference']['source_name']} "
        + f"AZUREML_ENTRY_SCRIPT={json.dumps(config['inference']['entry_script'])}\n"
    )
    log.append(f"environment {environment.name!r}: image context {env_tag}")
    log.append(f"wrote {location / 'Dockerfile'} and its context; build it with: docker build -t {image} {location}")
    return ModelPackage(workspace, location, image, log)


def _buildable(environment: EnvironmentSpec, log: list[str]) -> EnvironmentSpec:
    """``environment`` itself when it names its packages, else the pinned packages of the
    interpreter it stands for."""
    if needs_build(environment):
        return environment
    python = environment.python_executable or sys.executable
    version = subprocess.run(
        [python, "-I", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if version.returncode != 0:
        raise ConfigError(f"environment {environment.name!r}: cannot run its interpreter {python}")
    pins = [p for p in installed_pins(python) if p.partition("==")[0].lower() not in _NOT_PINNED]
    log.append(f"environment {environment.name!r} is the interpreter {python}: its {len(pins)} packages pinned")
    return EnvironmentSpec(
        name=environment.name,
        pip_requirements=tuple(pins),
        python_version=version.stdout.strip(),
        environment_variables=environment.environment_variables,
    )


def _lay_out_app(workspace: WorkspaceBase, config: dict[str, Any], app: Path) -> str:
    """Models and source as ``control/layout.py`` lays them out for a replica; the model
    folder relative to ``app`` (a model's version folder when there is one, as in v1)."""
    store = workspace.store
    refs = config["models"]
    for ref in refs:
        record = store.get_model(ref["name"], int(ref["version"]))
        dest = app / MODELS_FOLDER / record.name / str(record.version)
        dest.mkdir(parents=True)
        store.materialize_model(record, dest)
    (app / MODELS_FOLDER).mkdir(parents=True, exist_ok=True)
    source = app / config["inference"]["source_name"]
    source.mkdir(parents=True)
    store.extract_snapshot(config["inference"]["snapshot"], source)
    return f"{MODELS_FOLDER}/{refs[0]['name']}/{refs[0]['version']}" if len(refs) == 1 else MODELS_FOLDER
