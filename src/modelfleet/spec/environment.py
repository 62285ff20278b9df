"""``EnvironmentSpec``: what a replica's Python environment holds, from any v1 form."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelfleet.errors import ConfigError
from modelfleet.spec.checks import _PYTHON_VERSION_RE, _check_keys, _kind, _opt_str, _str_map, _str_tuple
from modelfleet.spec.notes import _V1_IGNORED

# --------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class EnvironmentSpec:
    """What a replica's Python environment holds.

    ``python_executable`` set: that interpreter as it is (v1 ``userManagedDependencies``);
    nothing is installed into it, and any ``pip_requirements`` are what it must already
    satisfy. Otherwise, with no requirements: the interpreter running modelfleet. With
    ``pip_requirements``: an environment built from them, on ``python_version`` when given.
    ``conda_only_packages`` are the conda (non-pip) dependencies of a v1 conda specification,
    kept so the builder can try them with pip or say why it cannot. ``base_image`` (v1's
    ``environment.docker.base_image``) is the image a Kubernetes service's image is built
    FROM (``envs/image.py``); the local cluster runs no image, and it is not part of the
    environment's hash, so local caches are shared whatever it is.
    """

    name: str
    version: str | None = None
    python_executable: str | None = None
    pip_requirements: tuple[str, ...] = ()
    python_version: str | None = None
    environment_variables: dict[str, str] = field(default_factory=dict)
    conda_only_packages: tuple[str, ...] = ()
    conda_channels: tuple[str, ...] = ()
    base_image: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.name, str) or not self.name.strip() or len(self.name) > 255:
            raise ConfigError(
                f"environment name must be a non-empty string of at most 255 characters (got {self.name!r})"
            )
        if isinstance(self.version, int) and not isinstance(self.version, bool):
            set_(self, "version", str(self.version))  # v1 files write "version": "1" or 1
        _opt_str("environment version", self.version)
        _opt_str("python_executable", self.python_executable)
        _opt_str("docker base_image", self.base_image)
        for name in ("pip_requirements", "conda_only_packages", "conda_channels"):
            set_(self, name, _str_tuple(name, getattr(self, name)))
        if self.python_version is not None and (
            not isinstance(self.python_version, str) or not _PYTHON_VERSION_RE.fullmatch(self.python_version)
        ):
            raise ConfigError(f"python_version must look like 3.11 or 3.11.4 (got {self.python_version!r})")
        env = _str_map("environment_variables", self.environment_variables)
        for key in env:
            if not key or "=" in key or "\0" in key:
                raise ConfigError(f"environment variable name must be non-empty, without '=' (got {key!r})")
        set_(self, "environment_variables", env)
        if self.python_executable is not None and self.python_version is not None:
            raise ConfigError(
                f"environment {self.name!r}: python_executable (user-managed) cannot be combined with "
                f"python_version {self.python_version!r}; give one or the other"
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("pip_requirements", "conda_only_packages", "conda_channels"):
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EnvironmentSpec:
        d = _check_keys("environment spec", d, [f.name for f in dataclasses.fields(cls)])
        return cls(**d)

    @classmethod
    def from_pip_requirements(cls, name: str, text: str) -> EnvironmentSpec:
        """From the text of a requirements.txt: one requirement per line, comments dropped."""
        lines = [line.split(" #")[0].strip() for line in text.splitlines()]
        return cls(name=name, pip_requirements=tuple(x for x in lines if x and not x.startswith("#")))

    @classmethod
    def from_conda(
        cls, name: str, conda: Mapping[str, Any], environment_variables: Mapping[str, str] | None = None
    ) -> EnvironmentSpec:
        """From a v1 conda specification (``condaDependencies``, or a parsed conda YAML file):
        ``python=X`` becomes python_version, the ``pip:`` list pip_requirements, the rest
        conda_only_packages (``pip`` itself is implied and dropped)."""
        conda = _check_keys("conda dependencies", conda, ["name", "channels", "dependencies", "prefix", "variables"])
        pip: list[str] = []
        other: list[str] = []
        python_version = None
        deps = conda.get("dependencies") or []
        if not isinstance(deps, list):
            raise ConfigError(f"conda dependencies must be a list (got {_kind(deps)})")
        for dep in deps:
            if isinstance(dep, Mapping):
                _check_keys("conda dependency", dep, ["pip"])
                pip.extend(_str_tuple("pip dependencies", dep.get("pip") or []))
            elif isinstance(dep, str):
                # conda spells a pin python=3.8, python==3.8.1, "python 3.8" or python=3.8.*
                m = re.fullmatch(r"python(?:(?:\s*==?\s*|\s+)([\d.]+?)(?:\.\*)?)?", dep.strip())
                if m:
                    python_version = m.group(1)
                elif re.match(r"python\s*[<>!~]", dep.strip()):
                    raise ConfigError(f"conda dependency {dep!r}: pin the Python version as python=3.X")
                elif not re.fullmatch(r"pip(\s*[=<>!~].*)?", dep.strip()):
                    other.append(dep.strip())
            else:
                raise ConfigError(f"conda dependencies must be strings or a pip list (got {_kind(dep)})")
        variables = dict(conda.get("variables") or {})
        variables.update(environment_variables or {})
        return cls(
            name=name,
            pip_requirements=tuple(pip),
            python_version=python_version,
            environment_variables=variables,
            conda_only_packages=tuple(other),
            conda_channels=_str_tuple("channels", conda.get("channels") or []),
        )

    @classmethod
    def from_conda_yaml(cls, name: str, text: str, source: str = "conda file") -> EnvironmentSpec:
        """From the text of a conda environment file (``condaFile``, ``from_conda_specification``)."""
        return cls.from_conda(name, parse_conda_yaml(text, source))

    @classmethod
    def from_v1_json(cls, d: Mapping[str, Any], base_dir: str | os.PathLike[str]) -> EnvironmentSpec:
        """A v1 serialized ``Environment`` (the ``environment`` object of inferenceconfig.json).
        ``python.condaDependenciesFile`` is read relative to ``base_dir``."""
        known_top = ["name", "version", "environmentVariables", "python", "docker", *_V1_IGNORED["environment"]]
        d = _check_keys("environment", d, known_top)
        docker = d.get("docker") or {}
        if not isinstance(docker, Mapping):
            raise ConfigError(f"environment.docker must be an object (got {_kind(docker)})")
        base_image = docker.get("baseImage") or None
        if d.get("r"):
            raise ConfigError("environment.r: R environments are not supported by modelfleet")
        name = d.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"environment.name is required (got {_kind(name)})")
        variables = _str_map("environment.environmentVariables", d.get("environmentVariables") or {})
        py = _check_keys(
            "environment.python",
            d.get("python") or {},
            [
                "userManagedDependencies",
                "interpreterPath",
                "condaDependenciesFile",
                "baseCondaEnvironment",
                "condaDependencies",
            ],
        )
        if py.get("userManagedDependencies"):
            interpreter = py.get("interpreterPath")
            # v1's default "python" meant "the image's python"; here that is this interpreter.
            executable = None if interpreter in (None, "python", "python3") else interpreter
            return cls(
                name=name,
                version=d.get("version"),
                python_executable=executable,
                environment_variables=variables,
                base_image=base_image,
            )
        conda: Mapping[str, Any] = py.get("condaDependencies") or {}
        if py.get("condaDependenciesFile"):
            path = Path(base_dir, py["condaDependenciesFile"])
            conda = parse_conda_yaml(_read(path, "environment.python.condaDependenciesFile"), str(path))
        spec = cls.from_conda(name, conda, variables)
        return dataclasses.replace(spec, version=d.get("version"), base_image=base_image)


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {str(path)!r} ({e.strerror})") from None


def parse_conda_yaml(text: str, source: str = "conda file") -> dict[str, Any]:
    """Parse the YAML subset conda environment files use (stdlib only, so no YAML library):
    ``key: scalar``, ``key:`` followed by a block list of scalars, one nested ``- pip:`` list,
    a ``variables:`` mapping, flow lists ``[a, b]``, quotes and comments. Anything else is a
    ConfigError naming the line, rather than a silent misreading."""
    out: dict[str, Any] = {}
    key: str | None = None  # top-level key whose block we are in
    pip: list[str] | None = None
    pip_indent = -1

    def scalar(s: str) -> str:
        s = s.strip()
        if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
            return s[1:-1]
        return s

    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not line.strip() or line.strip() == "---":
            continue
        indent = len(line) - len(line.lstrip(" "))
        body = line.strip()
        if indent == 0 and not body.startswith("-"):
            m = re.fullmatch(r"([A-Za-z_][\w-]*)\s*:\s*(.*)", body)
            if not m:
                raise ConfigError(f"{source}, line {number}: cannot read {raw.strip()!r}")
            key, value, pip = m.group(1), m.group(2), None
            if not value:
                out[key] = None
            elif value.startswith("["):
                out[key] = [scalar(x) for x in value.strip("[]").split(",") if x.strip()]
            else:
                out[key] = scalar(value)
            continue
        if key is None or (out[key] is not None and not isinstance(out[key], (list, dict))):
            raise ConfigError(f"{source}, line {number}: unexpected {raw.strip()!r}")
        if body.startswith("-"):
            item = body[1:].strip()
            if pip is not None and indent > pip_indent:
                pip.append(scalar(item))
                continue
            if out[key] is None:
                out[key] = []
            if not isinstance(out[key], list):
                raise ConfigError(f"{source}, line {number}: unexpected list item {raw.strip()!r}")
            if re.fullmatch(r"pip\s*:", item):
                pip, pip_indent = [], indent
                out[key].append({"pip": pip})
            elif re.fullmatch(r"[\w.-]+\s*:(\s.*)?", item):  # "a: b"; "channel::pkg" is a package
                raise ConfigError(f"{source}, line {number}: nested mapping {item!r} is not supported")
            else:
                pip = None
                out[key].append(scalar(item))
        else:
            m = re.fullmatch(r"([^:\s]+)\s*:\s*(.*)", body)
            if not m or isinstance(out[key], list):
                raise ConfigError(f"{source}, line {number}: cannot read {raw.strip()!r}")
            if out[key] is None:
                out[key] = {}
            out[key][m.group(1)] = scalar(m.group(2))
    return out
