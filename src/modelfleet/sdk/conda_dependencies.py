"""``CondaDependencies``: v1's conda specification object (``azureml.core.conda_dependencies``).

A v1 script moves by changing its import to ``from modelfleet import CondaDependencies`` (or
``modelfleet.sdk.conda_dependencies``). It keeps v1's methods; what reaches the environment
is the Python version and the pip section, since modelfleet builds with pip packages (uv).
Conda packages may be recorded (a v1 file read and saved again keeps them), and deploying an
environment that has any is a ``ConfigError`` naming them.

Different from v1, on purpose: ``create`` adds no ``azureml-defaults`` (modelfleet's replica
runtime serves instead) and pins no Python version unless asked (the environment then runs
the Python that runs modelfleet).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from modelfleet.errors import ConfigError
from modelfleet.spec import EnvironmentSpec, parse_conda_yaml

_PIP_OPTION_PREFIXES = ("--index-url", "--extra-index-url", "--find-links", "-f ", "-i ", "--no-index", "--pre")


class CondaDependencies:
    """A conda environment specification: name, channels, conda packages, a pip section."""

    def __init__(
        self,
        conda_dependencies_file_path: str | os.PathLike[str] | None = None,
        _underlying_structure: dict[str, Any] | None = None,
    ) -> None:
        if conda_dependencies_file_path is not None:
            path = Path(conda_dependencies_file_path)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"conda_dependencies_file_path {str(path)!r}: cannot read it ({exc.strerror})"
                ) from None
            structure = parse_conda_yaml(text, str(path))
        else:
            structure = dict(_underlying_structure or {"name": "project_environment", "dependencies": []})
        self._name = str(structure.get("name") or "project_environment")
        self._channels: list[str] = list(structure.get("channels") or [])
        self._python: str | None = None
        self._conda: list[str] = []
        self._pip: list[str] = []
        self._pip_options: list[str] = []
        self._variables: dict[str, str] = dict(structure.get("variables") or {})
        # EnvironmentSpec.from_conda is the one reader of the dependency list
        spec = EnvironmentSpec.from_conda(self._name, {"dependencies": structure.get("dependencies") or []})
        self._python = spec.python_version
        self._conda = list(spec.conda_only_packages)
        for item in spec.pip_requirements:
            (self._pip_options if item.startswith("-") else self._pip).append(item)

    @staticmethod
    def create(
        pip_indexurl: str | None = None,
        pip_packages: Iterable[str] | None = None,
        conda_packages: Iterable[str] | None = None,
        python_version: str | None = None,
        pin_sdk_version: bool = True,
    ) -> CondaDependencies:
        """v1's factory. ``pin_sdk_version`` is accepted and means nothing (no SDK is installed)."""
        deps = CondaDependencies()
        if python_version is not None:
            deps.set_python_version(python_version)
        if pip_indexurl:
            deps.set_pip_option(f"--index-url {pip_indexurl}")
        for package in pip_packages or ():
            deps.add_pip_package(package)
        for package in conda_packages or ():
            deps.add_conda_package(package)
        return deps

    @staticmethod
    def merge_requirements(requirements: Iterable[str]) -> list[str]:
        """v1's helper: the requirements with exact duplicates removed, order kept."""
        return list(dict.fromkeys(r.strip() for r in requirements if r.strip()))

    def __repr__(self) -> str:
        return f"CondaDependencies(python={self._python!r}, pip_packages={self._pip!r}, conda_packages={self._conda!r})"

    # -- v1 methods ---------------------------------------------------------------------------

    def add_pip_package(self, pip_package: str) -> None:
        _check_item("pip_package", pip_package)
        name = _base_name(pip_package)
        self._pip = [p for p in self._pip if _base_name(p) != name] + [pip_package.strip()]

    def remove_pip_package(self, pip_package: str) -> None:
        name = _base_name(pip_package)
        self._pip = [p for p in self._pip if _base_name(p) != name]

    def add_conda_package(self, conda_package: str) -> None:
        _check_item("conda_package", conda_package)
        spec = EnvironmentSpec.from_conda(self._name, {"dependencies": [conda_package]})
        if spec.python_version is not None:
            self._python = spec.python_version  # v1 allowed add_conda_package("python=3.9")
            return
        name = _base_name(conda_package)
        self._conda = [p for p in self._conda if _base_name(p) != name] + list(spec.conda_only_packages)

    def remove_conda_package(self, conda_package: str) -> None:
        name = _base_name(conda_package)
        self._conda = [p for p in self._conda if _base_name(p) != name]

    def add_channel(self, channel: str) -> None:
        _check_item("channel", channel)
        if channel not in self._channels:
            self._channels.append(channel)

    def remove_channel(self, channel: str) -> None:
        self._channels = [c for c in self._channels if c != channel]

    def set_pip_option(self, pip_option: str) -> None:
        _check_item("pip_option", pip_option)
        if not pip_option.strip().startswith(_PIP_OPTION_PREFIXES):
            raise ConfigError(
                f"pip_option must be one of --index-url, --extra-index-url, --find-links, --no-index, --pre "
                f"(got {pip_option!r})"
            )
        flag = pip_option.split()[0]
        self._pip_options = [o for o in self._pip_options if o.split()[0] != flag or flag == "--find-links"]
        self._pip_options.append(pip_option.strip())

    def set_python_version(self, version: str) -> None:
        EnvironmentSpec(name=self._name, python_version=version)  # validates the form
        self._python = version

    def get_python_version(self) -> str | None:
        return self._python

    @property
    def pip_packages(self) -> Iterator[str]:
        return iter(list(self._pip))

    @property
    def conda_packages(self) -> Iterator[str]:
        return iter(list(self._conda))

    @property
    def conda_channels(self) -> Iterator[str]:
        return iter(list(self._channels))

    @property
    def pip_options(self) -> Iterator[str]:
        return iter(list(self._pip_options))

    def as_dict(self) -> dict[str, Any]:
        """The conda file as a dict (v1's ``_conda_dependencies``)."""
        dependencies: list[Any] = []
        if self._python:
            dependencies.append(f"python={self._python}")
        dependencies += self._conda
        if self._pip or self._pip_options:
            dependencies += ["pip", {"pip": self._pip_options + self._pip}]
        out: dict[str, Any] = {"name": self._name, "dependencies": dependencies}
        if self._channels:
            out["channels"] = list(self._channels)
        if self._variables:
            out["variables"] = dict(self._variables)
        return out

    def serialize_to_string(self) -> str:
        """The conda environment file's text (YAML)."""
        d = self.as_dict()
        lines = [f"name: {d['name']}"]
        if d.get("channels"):
            lines += ["channels:"] + [f"  - {c}" for c in d["channels"]]
        lines.append("dependencies:")
        for dep in d["dependencies"]:
            if isinstance(dep, dict):
                lines += ["  - pip:"] + [f"    - {_quote(p)}" for p in dep["pip"]]
            else:
                lines.append(f"  - {_quote(dep)}")
        if d.get("variables"):
            lines += ["variables:"] + [f"  {k}: {_quote(v)}" for k, v in d["variables"].items()]
        return "\n".join(lines) + "\n"

    def save(self, path: str | os.PathLike[str]) -> str:
        Path(path).write_text(self.serialize_to_string(), encoding="utf-8")
        return str(path)

    def save_to_file(self, base_directory: str | os.PathLike[str], conda_file_path: str | None = None) -> str:
        return self.save(Path(base_directory, conda_file_path or "myenv.yml"))

    def to_spec(self, name: str, environment_variables: dict[str, str] | None = None) -> EnvironmentSpec:
        """The environment this specification asks for; a ConfigError naming any conda package."""
        from modelfleet.envs import conda_only_message

        if self._conda:
            raise ConfigError(conda_only_message(name, self._conda))
        variables = {**self._variables, **(environment_variables or {})}
        return EnvironmentSpec(
            name=name,
            pip_requirements=tuple(self._pip_options + self._pip),
            python_version=self._python,
            environment_variables=variables,
            conda_channels=tuple(self._channels),
        )


def _check_item(what: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise ConfigError(f"{what} must be a non-empty one-line string (got {value!r})")


def _base_name(requirement: str) -> str:
    text = requirement.strip().split("::")[-1]
    for sep in "[=<>!~; @":
        text = text.split(sep)[0]
    return text.lower().replace("_", "-").replace(".", "-")


def _quote(value: str) -> str:
    return f'"{value}"' if any(c in value for c in ":#{}[],&*?|>'\"%@`") else value
