"""``modelfleet env build-image``: the look-up in a real registry (Debian's docker-registry),
then the builder on PATH, or the exact commands when there is none. The builder is a fake
executable that records its argv: the OS boundary, since no container engine runs here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelfleet import envs
from modelfleet.sdk.workspace import Workspace
from modelfleet.spec import EnvironmentSpec
from registry_support import running_registry, skopeo_push, write_oci_layout

FAKE_BUILDER = """#!/bin/sh
printf '%s\\n' "$*" >> "{record}"
[ "$1" = build ] && [ ! -f "$4/Dockerfile" ] && exit 9
exit {status}
"""


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    workspace = Workspace.create("images", tmp_path / "ws")
    # a service on Environment("env"): nothing is built for it locally, yet a pod needs an image
    workspace.store.create_service(
        "plain", {"environment": EnvironmentSpec(name="env").to_dict()}, primary_key=None, secondary_key=None
    )
    return workspace


def fake_builder(folder: Path, name: str, status: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / f"{name}.argv"
    script = folder / name
    script.write_text(FAKE_BUILDER.format(record=record, status=status))
    script.chmod(0o755)
    return record


def build_image(ws: Workspace, path: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PATH"} | {"PATH": path}
    return subprocess.run(
        [sys.executable, "-m", "modelfleet", "-w", str(ws.path), "env", "build-image", "env", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_a_miss_builds_and_pushes_with_the_builder_on_path_and_a_hit_builds_nothing(
    ws: Workspace, tmp_path: Path
) -> None:
    digest = envs.canonicalize(EnvironmentSpec(name="env")).hash
    with running_registry(tmp_path / "reg") as registry:
        tag = f"{registry.host}/modelfleet-env:{digest}"
        bin_dir = tmp_path / "bin"
        record = fake_builder(bin_dir, "podman")  # docker and buildah absent: podman is the one found
        context = tmp_path / "ctx"
        done = build_image(ws, str(bin_dir), "--registry", registry.host, "--push", "--context", str(context))
        assert done.returncode == 0, done.stderr
        assert record.read_text().splitlines() == [f"build -t {tag} {context}", f"push {tag}"]
        assert (context / "image-tag.txt").read_text() == tag + "\n"
        assert f"{tag} is not in the registry" in done.stdout and f"built {tag} and pushed it" in done.stdout

        # what the builder would have pushed, put there by skopeo: the next run finds it
        write_oci_layout(tmp_path / "layout", "v1", context)
        skopeo_push(tmp_path / "layout", "v1", tag)
        record.unlink()
        again = build_image(ws, str(bin_dir), "--registry", registry.host, "--push")
        assert again.returncode == 0, again.stderr
        assert f"{tag} is in the registry already; nothing to build" in again.stdout
        assert not record.exists()

        # the CUDA variant is another tag: a miss, built without a push
        gpu = build_image(ws, str(bin_dir), "--registry", registry.host, "--gpu", "--builder", "podman")
        assert gpu.returncode == 0, gpu.stderr
        lines = record.read_text().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"build -t {tag}-cuda ")
        assert f"push it: {bin_dir / 'podman'} push {tag}-cuda" in gpu.stdout


def test_no_builder_prints_the_exact_commands_and_fails(ws: Workspace, tmp_path: Path) -> None:
    digest = envs.canonicalize(EnvironmentSpec(name="env")).hash
    empty = tmp_path / "empty-path"
    empty.mkdir()
    with running_registry(tmp_path / "reg") as registry:
        tag = f"{registry.host}/models/env:{digest}"
        context = tmp_path / "ctx"
        args = ["--registry", registry.host, "--repository", "models/env", "--context", str(context)]
        done = build_image(ws, str(empty), *args)
    assert done.returncode == 1
    assert f"  docker build -t {tag} {context}\n  docker push {tag}\n" in done.stdout
    assert 'image_build="kaniko"' in done.stdout
    assert "no container builder on PATH (looked for docker, podman or buildah)" in done.stderr
    assert (context / "Dockerfile").is_file()


def test_a_failing_builder_and_bad_arguments_say_what_failed(ws: Workspace, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_builder(bin_dir, "docker", status=3)
    with running_registry(tmp_path / "reg") as registry:
        failed = build_image(ws, str(bin_dir), "--registry", registry.host)
        assert failed.returncode == 1 and "failed with exit status 3" in failed.stderr
        scheme = build_image(ws, str(bin_dir), "--registry", f"http://{registry.host}")
        assert scheme.returncode == 1 and "--registry is host[:port][/path] with no scheme" in scheme.stderr
        user = build_image(ws, str(bin_dir), "--registry", registry.host, "--registry-username", "u")
        assert user.returncode == 1 and "$MODELFLEET_REGISTRY_PASSWORD" in user.stderr
    gone = build_image(ws, str(bin_dir), "--registry", registry.host)
    assert gone.returncode == 1 and f"cannot reach registry {registry.host}" in gone.stderr
