"""``Environment`` and ``InferenceConfig``: what a replica runs, described as in v1.

An environment is one of:

- ``Environment("name")``: the interpreter running modelfleet, nothing built;
- ``Environment.from_pip_requirements(name, "requirements.txt")``, or
  ``env.python.conda_dependencies = CondaDependencies.create(pip_packages=[...])``, or
  ``Environment.from_conda_specification(name, "env.yml")`` (its Python version and pip
  section): a virtualenv built once with uv, cached by the hash of this specification and
  shared by every service that asks for the same (``modelfleet.envs``);
- ``env.python.user_managed_dependencies = True`` with ``interpreter_path``: that interpreter
  as it is.

``environment_variables`` are set in every replica of every kind.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from modelfleet.errors import ConfigError
from modelfleet.sdk.conda_dependencies import CondaDependencies
from modelfleet.spec import EnvironmentSpec, InferenceSpec


@dataclass
class PythonSection:
    """v1's ``env.python``: the interpreter and the packages."""

    interpreter_path: str | None = None
    user_managed_dependencies: bool = False
    conda_dependencies: CondaDependencies | None = None
    conda_dependencies_file: str | None = None  # v1 name; read by from_conda_specification


@dataclass
class DockerSection:
    """v1's ``env.docker``: only ``base_image`` is used, as the image a Kubernetes service's
    image is built FROM (``modelfleet env build-image``); the local cluster runs no image."""

    base_image: str | None = None
    base_image_registry: object | None = None  # v1's ContainerRegistry; the compute target's registry is used


@dataclass
class Environment:
    """A replica's Python environment (v1: ``azureml.core.Environment``)."""

    name: str
    version: str | None = None
    python: PythonSection = field(default_factory=PythonSection)
    docker: DockerSection = field(default_factory=DockerSection)
    environment_variables: dict[str, str] = field(default_factory=dict)
    pip_requirements: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"Environment name must be a non-empty string (got {self.name!r})")

    @classmethod
    def from_pip_requirements(cls, name: str, file_path: str | os.PathLike[str]) -> Environment:
        """A built environment with the packages a requirements file names. ``-r`` includes are
        read in, and relative ``--find-links`` folders become absolute (relative to the file)."""
        return cls(name=name, pip_requirements=read_requirements(Path(file_path)))

    @classmethod
    def from_conda_specification(cls, name: str, file_path: str | os.PathLike[str]) -> Environment:
        """A built environment from a conda file's Python version and pip section; a conda
        (non-pip) package other than python and pip is a ConfigError naming it."""
        path = Path(file_path)
        if not path.is_file():
            raise ConfigError(f"conda specification file {str(path)!r} does not exist")
        deps = CondaDependencies(path)
        env = cls(name=name)
        env.python.conda_dependencies = deps
        env.python.conda_dependencies_file = str(path)
        deps.to_spec(name)  # refuse conda packages now, naming them, not at deploy time
        return env

    def to_spec(self) -> EnvironmentSpec:
        python = self.python
        if python.user_managed_dependencies or python.interpreter_path:
            if self.pip_requirements or python.conda_dependencies is not None:
                raise ConfigError(
                    f"environment {self.name!r}: a user-managed interpreter (python.interpreter_path / "
                    "user_managed_dependencies) is used as it is; drop the packages, or the interpreter to have "
                    "modelfleet build the environment"
                )
            return EnvironmentSpec(
                name=self.name,
                version=self.version,
                python_executable=python.interpreter_path or sys.executable,
                environment_variables=dict(self.environment_variables),
                base_image=self.docker.base_image,
            )
        if python.conda_dependencies is not None:
            spec = python.conda_dependencies.to_spec(self.name, dict(self.environment_variables))
            extra = tuple(self.pip_requirements)
            return EnvironmentSpec(
                name=self.name,
                version=self.version,
                pip_requirements=spec.pip_requirements + extra,
                python_version=spec.python_version,
                environment_variables=spec.environment_variables,
                conda_channels=spec.conda_channels,
                base_image=self.docker.base_image,
            )
        return EnvironmentSpec(
            name=self.name,
            version=self.version,
            pip_requirements=tuple(self.pip_requirements),
            environment_variables=dict(self.environment_variables),
            base_image=self.docker.base_image,
        )

    @staticmethod
    def current_python() -> str:
        return sys.executable


def read_requirements(path: Path, _seen: frozenset[Path] = frozenset()) -> list[str]:
    """The lines of a requirements file that matter: comments and blanks dropped, ``-r FILE``
    read in place, ``--find-links DIR`` made absolute when DIR is relative to the file."""
    real = path.resolve()
    if real in _seen:
        raise ConfigError(f"requirements file {str(path)!r} includes itself (through -r)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"requirements file {str(path)!r} does not exist") from None
    lines: list[str] = []
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        flag, value = _option(line)
        if flag in ("-r", "--requirement"):
            lines += read_requirements(path.parent / value, _seen | {real})
        elif flag in ("-f", "--find-links") and value and "://" not in value:
            folder = Path(value).expanduser()
            lines.append(f"--find-links {folder if folder.is_absolute() else (path.parent / folder).resolve()}")
        else:
            lines.append(line)
    return lines


def _option(line: str) -> tuple[str | None, str]:
    if not line.startswith("-"):
        return None, ""
    parts = re.split(r"\s+|=", line, maxsplit=1)
    value = parts[1].strip() if len(parts) > 1 else ""
    return parts[0], (shlex.split(value)[0] if value else "")


class InferenceConfig:
    """The entry script, its source folder and its environment (v1: ``InferenceConfig``).

    ``conda_file`` (v1): a conda specification, relative to ``source_directory`` when one is
    given (as v1 read it), else to the current folder; it becomes the environment, so it
    cannot be combined with ``environment``.
    """

    def __init__(
        self,
        entry_script: str,
        runtime: str | None = None,
        conda_file: str | os.PathLike[str] | None = None,
        extra_docker_file_steps: str | None = None,
        source_directory: str | os.PathLike[str] | None = None,
        enable_gpu: bool | None = None,
        description: str | None = None,
        base_image: str | None = None,
        base_image_registry: object | None = None,
        cuda_version: str | None = None,
        environment: Environment | None = None,
    ) -> None:
        if runtime not in (None, "python"):
            raise ConfigError(f"InferenceConfig runtime must be 'python' (got {runtime!r})")
        if conda_file is not None:
            if environment is not None:
                raise ConfigError("InferenceConfig takes conda_file or environment, not both; keep one")
            path = Path(conda_file)
            if not path.is_absolute() and source_directory is not None:
                path = Path(source_directory) / path
            environment = Environment.from_conda_specification(path.stem or "conda-env", path)
        self.entry_script = entry_script
        self.source_directory = str(source_directory) if source_directory is not None else None
        self.environment = environment
        self.description = description
        self.enable_gpu = enable_gpu
        self.base_image = base_image

    def __repr__(self) -> str:
        return f"InferenceConfig(entry_script={self.entry_script!r}, source_directory={self.source_directory!r})"

    def to_spec(self) -> InferenceSpec:
        source = str(Path(self.source_directory).expanduser().resolve()) if self.source_directory else None
        environment = self.environment.to_spec() if self.environment is not None else None
        if environment is not None and self.base_image and environment.base_image is None:  # v1's base_image=
            environment = dataclasses.replace(environment, base_image=self.base_image)
        return InferenceSpec(entry_script=self.entry_script, source_directory=source, environment=environment)
