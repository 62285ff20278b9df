"""v1's ``environment.docker.base_image`` reaches the image a Kubernetes service runs: from the
SDK (``env.docker.base_image``, ``InferenceConfig(base_image=...)``) and from v1 JSON
(``environment.docker.baseImage``), through the stored spec, to the image context's FROM line
and the tag a deploy looks up — without changing the environment's hash (the local cluster
runs no image, so its caches are shared)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelfleet import Environment, InferenceConfig
from modelfleet.control.k8s_controller import environment_image
from modelfleet.envs.canonical import canonicalize
from modelfleet.envs.image import image_variant, write_image_context
from modelfleet.errors import ConfigError
from modelfleet.spec import EnvironmentSpec, InferenceSpec
from modelfleet.spec.notes import v1_notes

BASE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"


def test_the_sdk_carries_docker_base_image_into_the_spec_and_inference_config_fills_it_in() -> None:
    env = Environment("env", pip_requirements=["numpy"])
    env.docker.base_image = BASE
    assert env.to_spec().base_image == BASE
    plain = Environment("plain")
    spec = InferenceConfig(entry_script="score.py", environment=plain, base_image="python:3.11-slim").to_spec()
    assert spec.environment is not None and spec.environment.base_image == "python:3.11-slim"
    # the environment's own wins over InferenceConfig's, as in v1
    spec = InferenceConfig(entry_script="score.py", environment=env, base_image="python:3.11-slim").to_spec()
    assert spec.environment is not None and spec.environment.base_image == BASE


def test_v1_json_reads_docker_base_image_and_the_stored_spec_keeps_it(tmp_path: Path) -> None:
    (tmp_path / "score.py").write_text("def init():\n    pass\n\ndef run(data):\n    return data\n")
    config = {
        "entryScript": "score.py",
        "environment": {
            "name": "env",
            "docker": {"enabled": True, "baseImage": BASE, "baseDockerfile": None},
            "python": {"userManagedDependencies": False, "condaDependencies": {"dependencies": ["python=3.11"]}},
        },
    }
    spec = InferenceSpec.from_v1_json(config, tmp_path)
    assert spec.environment is not None and spec.environment.base_image == BASE
    stored = EnvironmentSpec.from_dict(json.loads(json.dumps(spec.environment.to_dict())))
    assert stored == spec.environment
    assert v1_notes(config, "inference") == []  # docker.baseImage is used now: nothing to warn about
    custom = {**config, "environment": {**config["environment"], "docker": {"baseDockerfile": "FROM x"}}}
    assert v1_notes(custom, "inference") == [
        "environment.docker: ignored (only docker.baseImage is used (a Kubernetes service's image is built FROM it))"
    ]
    with pytest.raises(ConfigError, match="environment.docker must be an object"):
        InferenceSpec.from_v1_json({**config, "environment": {**config["environment"], "docker": "x"}}, tmp_path)
    with pytest.raises(ConfigError, match="docker base_image must be a non-empty string"):
        EnvironmentSpec(name="env", base_image=3)  # type: ignore[arg-type]


def test_the_base_image_is_the_images_from_and_tag_but_not_the_environments_hash(tmp_path: Path) -> None:
    plain = EnvironmentSpec(name="env", pip_requirements=("numpy",))
    based = EnvironmentSpec(name="env", pip_requirements=("numpy",), base_image=BASE)
    assert canonicalize(based).hash == canonicalize(plain).hash
    tag = write_image_context(based, tmp_path / "ctx", "modelfleet-env")
    assert tag.endswith(f"-{image_variant(BASE)}") and tag.startswith(f"modelfleet-env:{canonicalize(based).hash}")
    assert f"FROM {BASE}" in (tmp_path / "ctx" / "Dockerfile").read_text()
    settings = {"image_registry": "registry.example:5000"}
    assert environment_image(settings, based, gpu=False) == f"registry.example:5000/{tag}"
    assert environment_image(settings, plain, gpu=False) == f"registry.example:5000/{tag.rsplit('-', 2)[0]}"
