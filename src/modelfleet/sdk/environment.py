"""``Environment`` and ``InferenceConfig``: what a replica runs, described as in v1."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from modelfleet.errors import ConfigError
from modelfleet.spec import EnvironmentSpec, InferenceSpec


@dataclass
class PythonSection:
    """v1's ``env.python``: which interpreter runs the replica."""

    interpreter_path: str | None = None
    user_managed_dependencies: bool = False


@dataclass
class Environment:
    """A replica's Python environment (v1: ``azureml.core.Environment``).

    ``Environment("name")`` is the interpreter running this code, with nothing built.
    ``Environment.from_pip_requirements(name, file)`` records a requirements file; the
    packages it names must be importable by that interpreter until environment builds land.
    """

    name: str
    version: str | None = None
    python: PythonSection = field(default_factory=PythonSection)
    environment_variables: dict[str, str] = field(default_factory=dict)
    pip_requirements: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"Environment name must be a non-empty string (got {self.name!r})")

    @classmethod
    def from_pip_requirements(cls, name: str, file_path: str | os.PathLike[str]) -> Environment:
        path = Path(file_path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"requirements file {path} does not exist") from None
        lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        return cls(name=name, pip_requirements=[line for line in lines if line])

    def to_spec(self) -> EnvironmentSpec:
        return EnvironmentSpec(
            name=self.name,
            python_executable=self.python.interpreter_path,
            pip_requirements=tuple(self.pip_requirements),
            environment_variables=dict(self.environment_variables),
        )

    @staticmethod
    def current_python() -> str:
        return sys.executable


class InferenceConfig:
    """The entry script, its source folder and its environment (v1: ``InferenceConfig``)."""

    def __init__(
        self,
        entry_script: str,
        runtime: str | None = None,
        conda_file: str | None = None,
        extra_docker_file_steps: str | None = None,
        source_directory: str | os.PathLike[str] | None = None,
        enable_gpu: bool | None = None,
        description: str | None = None,
        base_image: str | None = None,
        base_image_registry: object | None = None,
        cuda_version: str | None = None,
        environment: Environment | None = None,
    ) -> None:
        if conda_file is not None:
            raise ConfigError(
                "InferenceConfig(conda_file=...) is not supported yet; pass "
                "environment=Environment.from_pip_requirements(name, 'requirements.txt')"
            )
        if runtime not in (None, "python"):
            raise ConfigError(f"InferenceConfig runtime must be 'python' (got {runtime!r})")
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
        return InferenceSpec(entry_script=self.entry_script, source_directory=source, environment=environment)
