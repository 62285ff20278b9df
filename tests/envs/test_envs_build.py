"""Environments built with uv, cached by hash, and replicas running inside them (end to end).

No package index is reached: the environments' packages are tiny wheels written by the test
(``wheels.make_wheel``), and the replica runtime's own packages (httptools, uvloop,
inference-schema and what they need) are the ones installed here, repacked as wheels
(``wheels.runtime_wheelhouse``). The workspace points the builder at that wheelhouse,
offline, with its machine-wide cache and uv's cache in the test's temporary folder.
"That built nothing" is read from the caches (the build journal, the cache entries), not
from timings.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from e2e_support import SCRIPTS, stop_cluster, wait_until
from modelfleet import (
    AksWebservice,
    CondaDependencies,
    Environment,
    InferenceConfig,
    Model,
    Webservice,
    Workspace,
    envs,
)
from modelfleet.cli import main as cli
from modelfleet.errors import DeploymentFailed
from wheels import make_wheel, runtime_wheelhouse


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    for letter in "abcd":
        make_wheel(folder, f"mf-tiny-{letter}", "1.0", {f"mf_tiny_{letter}/__init__.py": f"VALUE = '{letter}-1.0'\n"})
    make_wheel(folder, "mf-tiny-b", "2.0", {"mf_tiny_b/__init__.py": "VALUE = 'b-2.0'\n"})
    return folder


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("envs")
    workspace = Workspace.create("envs", root / "ws")
    store = workspace.store
    store.set_setting(envs.SETTING_MACHINE_CACHE, str(root / "machine-cache"))
    store.set_setting(envs.SETTING_FIND_LINKS, str(runtime_wheelhouse(root / "runtime-wheels")))
    store.set_setting(envs.SETTING_OFFLINE, "true")
    store.set_setting(envs.SETTING_UV_CACHE, str(root / "uv-cache"))
    yield workspace
    stop_cluster(workspace)


def settings(ws: Workspace) -> envs.CacheSettings:
    from modelfleet.control.environments import settings_for

    return settings_for(ws.store)


def deploy(ws: Workspace, name: str, env: Environment, wait: bool = True) -> Webservice:
    ic = InferenceConfig(entry_script="score.py", source_directory=SCRIPTS / "env_probe", environment=env)
    dc = AksWebservice.deploy_configuration(num_replicas=1, auth_enabled=False)
    service = Model.deploy(ws, name, [], ic, dc, overwrite=True)
    if wait:
        service.wait_for_deployment(timeout_sec=90)
    return service


def built(ws: Workspace, digest: str) -> int:
    """How many times the machine cache built this environment (its journal)."""
    return sum(1 for entry in envs.builds(settings(ws).machine_cache) if entry["hash"] == digest)


def build_log(service: Webservice) -> str:
    return (service.workspace.store.runtime_dir / "services" / service.name / "logs" / "build.log").read_text()


def test_requirements_file_builds_once_and_the_replica_runs_inside(
    ws: Workspace, wheels: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "wheels").symlink_to(wheels)
    requirements = tmp_path / "requirements.txt"
    # a relative --find-links is relative to the file, as pip reads it; "< 3" makes the hash this
    # test's own (the other tests build a and b >= 2.0 too), so the build it watches is its own
    requirements.write_text(
        "# the probe's packages\n--find-links wheels\nMF_Tiny.A==1.0\nmf-tiny-b >= 2.0, < 3  # newest\n"
    )
    env = Environment.from_pip_requirements("probe-env", requirements)
    digest = envs.canonicalize(env.to_spec()).hash

    service = deploy(ws, "probe", env, wait=False)
    service.wait_for_deployment(show_output=True, timeout_sec=90)
    shown = capsys.readouterr().out
    assert "probe: [3/5] installing 2 package(s) and the replica runtime" in shown
    assert "environment ready" in shown and "Installed" in shown

    assert built(ws, digest) == 1
    home = settings(ws).machine_cache / digest
    assert (settings(ws).workspace_cache / digest).resolve() == home.resolve()
    answer = service.run("{}")
    assert answer["executable"] == str(home / "bin" / "python")
    assert answer["prefix"] == str(home)
    assert answer["modules"]["mf_tiny_a"] == "a-1.0" and answer["modules"]["mf_tiny_b"] == "b-2.0"
    # only the replica runtime is in there: not the SDK, nor the control plane's packages
    assert answer["modules"]["modelfleet.sdk"] is None and answer["modules"]["sqlalchemy"] is None


def test_same_specification_in_another_spelling_builds_nothing(ws: Workspace, wheels: Path) -> None:
    first = Environment.from_pip_requirements("probe-env", _requirements(wheels, ["mf-tiny-a==1.0", "mf-tiny-b>=2.0"]))
    digest = envs.canonicalize(first.to_spec()).hash
    deploy(ws, "first", first)
    assert built(ws, digest) == 1
    entry = settings(ws).machine_cache / digest
    made = (entry / envs.METADATA).stat().st_mtime_ns

    other = Environment("another-name")  # v1 style, names respelled and reordered, variables added
    deps = CondaDependencies.create(pip_packages=["MF_TINY_B >= 2.0", "mf.tiny.a == 1.0", "mf-tiny-a==1.0"])
    deps.set_pip_option(f"--find-links {wheels}")
    other.python.conda_dependencies = deps
    other.environment_variables = {"GREETING": "hello"}
    assert envs.canonicalize(other.to_spec()).hash == digest
    service = deploy(ws, "second", other)

    assert built(ws, digest) == 1
    assert (entry / envs.METADATA).stat().st_mtime_ns == made
    assert "found in the workspace cache" in build_log(service)
    answer = service.run("{}")
    assert answer["executable"] == str(entry / "bin" / "python")
    assert answer["greeting"] == "hello"


def test_a_package_that_does_not_exist_fails_and_leaves_no_cache_entry(ws: Workspace, wheels: Path) -> None:
    requirements = _requirements(wheels, ["mf-tiny-a==1.0", "mf-does-not-exist==1.0"])
    env = Environment.from_pip_requirements("broken", requirements)
    digest = envs.canonicalize(env.to_spec()).hash
    service = deploy(ws, "broken", env, wait=False)
    with pytest.raises(DeploymentFailed, match="mf-does-not-exist"):
        service.wait_for_deployment(timeout_sec=90)
    assert service.state == "Failed"
    assert "uv pip install failed" in service.error
    logs = service.get_logs()
    assert "mf-does-not-exist was not found in the provided package locations" in logs
    cache = settings(ws)
    assert not (cache.machine_cache / digest).exists() and not (cache.workspace_cache / digest).exists()
    assert not list(cache.machine_cache.glob(".tmp-*"))
    assert built(ws, digest) == 0


def test_two_deploys_of_one_new_environment_build_it_once(ws: Workspace, wheels: Path) -> None:
    env = Environment.from_pip_requirements("shared", _requirements(wheels, ["mf-tiny-c==1.0"]))
    digest = envs.canonicalize(env.to_spec()).hash
    assert built(ws, digest) == 0
    services: list[Webservice] = []
    threads = [
        threading.Thread(target=lambda n=n: services.append(deploy(ws, n, env, wait=False)))
        for n in ("pair-x", "pair-y")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for service in services:
        service.wait_for_deployment(timeout_sec=90)
        assert service.run("{}")["modules"]["mf_tiny_c"] == "c-1.0"
    assert built(ws, digest) == 1
    logs = [build_log(s) for s in services]
    assert sum("environment ready in" in log for log in logs) == 1  # the one that built it


def test_another_workspace_finds_the_machine_cache(ws: Workspace, wheels: Path, tmp_path: Path) -> None:
    env = Environment.from_pip_requirements("probe-env", _requirements(wheels, ["mf-tiny-a==1.0", "mf-tiny-b>=2.0"]))
    spec = env.to_spec()
    digest = envs.canonicalize(spec).hash
    deploy(ws, "first", env)
    mine = settings(ws)
    theirs = envs.CacheSettings(tmp_path / "other-ws-envs", mine.machine_cache, mine.find_links, True, mine.uv_cache)
    resolved = envs.resolve(spec, theirs)
    assert resolved.source == "machine" and resolved.hash == digest
    assert (theirs.workspace_cache / digest).is_symlink()
    assert sorted(envs.machine_users(mine.machine_cache, digest)) == sorted(
        [str(mine.workspace_cache.resolve()), str(theirs.workspace_cache.resolve())]
    )
    assert envs.resolve(spec, theirs).source == "workspace"
    assert built(ws, digest) == 1


def test_env_cli_lists_prunes_and_writes_an_image_context(
    ws: Workspace, wheels: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = Environment.from_pip_requirements("short-lived", _requirements(wheels, ["mf-tiny-d==1.0"]))
    digest = envs.canonicalize(env.to_spec()).hash
    service = deploy(ws, "short-lived", env)
    root = ["-w", str(ws.path)]

    assert cli([*root, "env", "list", "-o", "json"]) == 0
    rows = {r["hash"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[digest]["usedBy"] == ["short-lived"] and rows[digest]["name"] == "short-lived"

    assert cli([*root, "env", "image-context", "short-lived", str(tmp_path / "image")]) == 0
    assert f"image tag: modelfleet-env:{digest}" in capsys.readouterr().out
    dockerfile = (tmp_path / "image" / "Dockerfile").read_text()
    assert digest in dockerfile and "modelfleet.replica" in dockerfile
    assert "mf-tiny-d==1.0" in (tmp_path / "image" / "requirements.txt").read_text()
    assert (tmp_path / "image" / "modelfleet-runtime" / "modelfleet" / "replica" / "server.py").is_file()
    assert list((tmp_path / "image" / "wheels").rglob("mf_tiny_d-1.0-*.whl"))

    assert cli([*root, "env", "prune"]) == 0  # still used: stays
    assert (settings(ws).workspace_cache / digest).exists()
    service.delete()
    wait_until(lambda: "short-lived" not in [s.name for s in Webservice.list(ws)])
    capsys.readouterr()
    assert cli([*root, "env", "prune", "--machine"]) == 0
    assert f"removed {digest[:12]}" in capsys.readouterr().out
    assert not (settings(ws).workspace_cache / digest).exists()
    assert not (settings(ws).machine_cache / digest).exists()


def _requirements(wheels: Path, lines: list[str]) -> Path:
    path = wheels.parent / f"req-{abs(hash(tuple(lines)))}.txt"
    path.write_text("\n".join([f"--find-links {wheels}", *lines]) + "\n")
    return path
