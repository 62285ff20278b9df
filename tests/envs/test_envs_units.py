"""Environment specifications without building anything: the canonical hash, the v1 ways of
writing an environment (requirements files, conda files, CondaDependencies), the cache
settings, and the progress display. No processes, no sockets."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from modelfleet import CondaDependencies, Environment, InferenceConfig, envs
from modelfleet.errors import ConfigError
from modelfleet.sdk.progress import BuildProgress, render_bar
from modelfleet.spec import EnvironmentSpec

RUNTIME = "0.1.0+test"


def digest(*requirements: str, **fields: object) -> str:
    spec = EnvironmentSpec(name=str(fields.pop("name", "env")), pip_requirements=requirements, **fields)  # type: ignore[arg-type]
    return envs.canonicalize(spec, runtime=RUNTIME).hash


def test_the_worked_example_in_the_docstring() -> None:
    spec = EnvironmentSpec(name="e", pip_requirements=("numpy >= 1.0", "Scikit_Learn==1.5", "numpy>=1.0"))
    canon = envs.canonicalize(spec, runtime=RUNTIME)
    assert canon.requirements == ("numpy>=1.0", "scikit-learn==1.5")
    assert canon.hash == digest("scikit-learn == 1.5", "NumPy>=1.0")


def test_spelling_and_order_do_not_change_the_hash() -> None:
    base = digest("mf-tiny-a[Extra_One,b]>=1.0,<2", "--find-links /w", "--no-index", "zope.interface")
    assert digest("-f /w", "Zope_Interface", "MF.Tiny.A[b,extra-one] <2, >=1.0", "--no-index") == base
    assert digest("--find-links=/w", "zope-interface", "mf_tiny_a[B,EXTRA_ONE]>=1.0,<2", "--no-index") == base


def test_what_changes_the_environment_changes_the_hash() -> None:
    base = digest("numpy==1.0")
    assert digest("numpy==1.1") != base
    assert digest("numpy==1.0", "--pre") != base
    assert digest("numpy==1.0", python_version="3.10") != base
    other_runtime = envs.canonicalize(EnvironmentSpec(name="e", pip_requirements=("numpy==1.0",)), runtime="0.2.0")
    assert other_runtime.hash != base


def test_name_variables_and_the_default_python_do_not_change_it() -> None:
    import sys

    base = digest("numpy==1.0")
    assert digest("numpy==1.0", name="other", environment_variables={"A": "1"}) == base
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert digest("numpy==1.0", python_version=here) == base


def test_v1_serving_packages_are_left_out() -> None:
    spec = EnvironmentSpec(name="e", pip_requirements=("azureml-defaults>=1.40", "numpy==1.0"))
    canon = envs.canonicalize(spec, runtime=RUNTIME)
    assert canon.requirements == ("numpy==1.0",) and canon.dropped == ("azureml-defaults>=1.40",)
    assert canon.hash == digest("numpy==1.0")


def test_bad_lines_are_config_errors_naming_them() -> None:
    with pytest.raises(ConfigError, match=r"'numpy >> 1'.*is not a valid pip requirement"):
        digest("numpy >> 1")
    with pytest.raises(ConfigError, match=r"pip option '-e \./pkg' is not supported"):
        digest("-e ./pkg")


def test_what_needs_a_build() -> None:
    assert not envs.needs_build(EnvironmentSpec(name="e"))
    assert not envs.needs_build(EnvironmentSpec(name="e", environment_variables={"A": "1"}))
    assert envs.needs_build(EnvironmentSpec(name="e", python_version="3.11"))
    assert envs.needs_build(EnvironmentSpec(name="e", pip_requirements=("numpy",)))
    user_managed = EnvironmentSpec(name="e", python_executable="/usr/bin/python3", pip_requirements=("numpy",))
    assert not envs.needs_build(user_managed)


def test_the_runtime_version_follows_the_runtime_files(tmp_path: Path) -> None:
    source = envs.canonical.runtime_source()
    copy = tmp_path / "modelfleet"
    envs.canonical.copy_runtime(copy)
    assert envs.runtime_version(copy) == envs.runtime_version(source)
    assert not (copy / "sdk").exists() and not (copy / "store").exists()  # only what a replica may import
    (copy / "replica" / "server.py").write_text("# changed\n")
    assert envs.runtime_version(copy) != envs.runtime_version(source)


# -- the v1 ways of writing one ----------------------------------------------------------------


def test_requirements_files_read_includes_and_anchor_find_links(tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("numpy==1.0  # pinned\n")
    (tmp_path / "requirements.txt").write_text("# top\n-r base.txt\n--find-links ./wheels\n\npandas\n")
    env = Environment.from_pip_requirements("e", tmp_path / "requirements.txt")
    assert env.pip_requirements == ["numpy==1.0", f"--find-links {(tmp_path / 'wheels').resolve()}", "pandas"]
    with pytest.raises(ConfigError, match="does not exist"):
        Environment.from_pip_requirements("e", tmp_path / "missing.txt")


CONDA_FILE = """\
name: project_environment
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip
  - pip:
    - scikit-learn==1.5
    - azureml-defaults
variables:
  MODE: fast
"""


def test_conda_specification_gives_python_and_the_pip_section(tmp_path: Path) -> None:
    (tmp_path / "env.yml").write_text(CONDA_FILE)
    spec = Environment.from_conda_specification("c", tmp_path / "env.yml").to_spec()
    assert spec.python_version == "3.11"
    assert spec.pip_requirements == ("scikit-learn==1.5", "azureml-defaults")
    assert spec.environment_variables == {"MODE": "fast"}
    assert envs.canonicalize(spec, runtime=RUNTIME).requirements == ("scikit-learn==1.5",)


def test_a_conda_only_package_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "env.yml").write_text(CONDA_FILE.replace("  - pip\n", "  - pip\n  - libgfortran=5.0\n"))
    with pytest.raises(ConfigError, match=r"conda package 'libgfortran=5.0'.*e\.g\. 'libgfortran==5.0'"):
        Environment.from_conda_specification("c", tmp_path / "env.yml")
    env = Environment("c")
    env.python.conda_dependencies = CondaDependencies.create(conda_packages=["numpy"], pip_packages=["pandas"])
    with pytest.raises(ConfigError, match="conda package 'numpy'"):
        env.to_spec()


def test_conda_dependencies_as_in_v1(tmp_path: Path) -> None:
    deps = CondaDependencies.create(pip_packages=["numpy==1.0", "pandas"], python_version="3.10")
    deps.add_pip_package("numpy==1.1")  # replaces the same package
    deps.remove_pip_package("pandas")
    deps.add_conda_package("python=3.11")  # v1 spelled the version this way too
    deps.set_pip_option("--index-url https://mirror.example/simple")
    assert list(deps.pip_packages) == ["numpy==1.1"] and deps.get_python_version() == "3.11"
    path = Path(deps.save(tmp_path / "env.yml"))
    again = CondaDependencies(path)
    assert list(again.pip_packages) == ["numpy==1.1"] and list(again.pip_options) == list(deps.pip_options)
    env = Environment("v1")
    env.python.conda_dependencies = again
    env.environment_variables = {"A": "1"}
    spec = env.to_spec()
    assert spec.pip_requirements == ("--index-url https://mirror.example/simple", "numpy==1.1")
    assert spec.python_version == "3.11" and spec.environment_variables == {"A": "1"}


def test_inference_config_conda_file_is_relative_to_the_source_directory(tmp_path: Path) -> None:
    (tmp_path / "env.yml").write_text(CONDA_FILE)
    ic = InferenceConfig(entry_script="score.py", source_directory=tmp_path, conda_file="env.yml")
    assert ic.environment is not None and ic.environment.to_spec().python_version == "3.11"
    with pytest.raises(ConfigError, match="conda_file or environment"):
        InferenceConfig(entry_script="score.py", conda_file=tmp_path / "env.yml", environment=Environment("e"))


def test_user_managed_and_current_interpreter() -> None:
    import sys

    assert Environment("plain").to_spec().python_executable is None
    env = Environment("mine")
    env.python.user_managed_dependencies = True
    assert env.to_spec().python_executable == sys.executable
    env.pip_requirements = ["numpy"]
    with pytest.raises(ConfigError, match="user-managed"):
        env.to_spec()


# -- settings and progress --------------------------------------------------------------------


def test_cache_settings_come_from_the_workspace_with_defaults(tmp_path: Path) -> None:
    stored: dict[str, str] = {}
    home = tmp_path / "home"
    settings = envs.CacheSettings.from_workspace(stored.get, tmp_path / "ws", home)
    assert settings.workspace_cache == tmp_path / "ws" / ".modelfleet" / "envs"
    assert settings.machine_cache == home / ".cache" / "modelfleet" / "envs" == settings.build_cache
    assert not settings.offline and settings.find_links == ()
    stored.update({envs.SETTING_MACHINE_CACHE: "none", envs.SETTING_OFFLINE: "true"})
    stored[envs.SETTING_FIND_LINKS] = f"/a{__import__('os').pathsep}/b"
    settings = envs.CacheSettings.from_workspace(stored.get, tmp_path / "ws", home)
    assert settings.machine_cache is None and settings.build_cache == settings.workspace_cache
    assert settings.offline and settings.find_links == ("/a", "/b")


def test_render_bar() -> None:
    line = render_bar(3, 5, "installing 2 package(s) and the replica runtime", 14.2, 80)
    assert line.startswith("[#####") and line.endswith("  14 s") and len(line) == 80
    assert "3/5  installing" in line
    assert render_bar(5, 5, "ready", 0, 80).startswith("[" + "#" * 30 + "]")
    assert len(render_bar(1, 5, "x" * 300, 1, 60)) == 60


def test_build_progress_prints_each_event_once_per_generation() -> None:
    out = io.StringIO()
    progress = BuildProgress("svc", out, now=lambda: 0.0)
    events = [
        {"generation": 1, "step": 1, "steps": 5, "message": "old", "detail": False},
        {"generation": 2, "step": 1, "steps": 5, "message": "not cached; building", "detail": False},
        {"generation": 2, "step": 1, "steps": 5, "message": "Resolved 3 packages", "detail": True},
        {"generation": 2, "hash": "abc", "python": "/x/bin/python"},  # the outcome, not a line
    ]
    progress.show(events[:2], 2)
    progress.show(events, 2)
    progress.close()
    assert out.getvalue() == "svc: [1/5] not cached; building\nsvc:     Resolved 3 packages\n"


def test_image_context_for_an_environment(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "x-1.0-py3-none-any.whl").write_bytes(b"")
    spec = EnvironmentSpec(
        name="img", pip_requirements=(f"--find-links {wheels}", "numpy==1.0"), environment_variables={"A": "b c"}
    )
    out = tmp_path / "ctx"
    tag = envs.write_image_context(spec, out)
    assert tag == f"modelfleet-env:{envs.canonicalize(spec).hash}"
    dockerfile = (out / "Dockerfile").read_text()
    assert 'ENV A="b c"' in dockerfile and envs.canonicalize(spec).hash in dockerfile
    assert (out / "requirements.txt").read_text().splitlines()[1:3] == ["--find-links /build/wheels/0", "numpy==1.0"]
    assert (out / "wheels" / "0" / "x-1.0-py3-none-any.whl").is_file()
    with pytest.raises(ConfigError, match="not empty"):
        envs.write_image_context(spec, out)
    shutil.rmtree(out)


def test_build_progress_draws_a_bar_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    clock = iter([0.0, 12.0, 12.0])
    progress = BuildProgress("svc", out, now=lambda: next(clock))
    step = {"generation": 1, "step": 3, "steps": 5, "message": "installing 2 package(s)", "detail": False}
    progress.show([step], 1)
    progress.show([step], 1)  # nothing new: the bar is redrawn with the step's seconds
    progress.close()
    text = out.getvalue()
    assert text.startswith("svc: [3/5] installing 2 package(s)\n\r[")
    assert "3/5  installing 2 package(s)" in text and text.count("\r[") == 2 and "  12 s" in text
    assert text.endswith("\r\x1b[2K")  # the bar is wiped before anything else is printed
