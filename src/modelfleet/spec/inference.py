"""``InferenceSpec``: the entry script, its source folder and its environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelfleet.errors import ConfigError
from modelfleet.spec.checks import _check_keys, _kind, _opt_str
from modelfleet.spec.environment import EnvironmentSpec, _read, parse_conda_yaml
from modelfleet.spec.notes import _V1_IGNORED

# --------------------------------------------------------------------------- inference


@dataclass(frozen=True)
class InferenceSpec:
    """v1 ``InferenceConfig``: the entry script, its folder and the environment.

    With ``source_directory`` (an absolute path) the folder is snapshotted and
    ``entry_script`` is a path inside it; without, that file alone is shipped, and a relative
    ``entry_script`` is relative to the current folder (v1's rule). ``environment`` None
    means the deploying interpreter. ``InferenceSpec.resolve`` turns v1's user-relative
    paths into absolute ones.
    """

    entry_script: str
    source_directory: str | None = None
    environment: EnvironmentSpec | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.entry_script, str) or not self.entry_script:
            raise ConfigError(f"entry_script must be a path to a .py file (got {_kind(self.entry_script)})")
        _opt_str("description", self.description)
        if self.environment is not None and not isinstance(self.environment, EnvironmentSpec):
            raise ConfigError(f"environment must be an EnvironmentSpec or None (got {_kind(self.environment)})")
        if self.source_directory is None:
            return
        _opt_str("source_directory", self.source_directory)
        if not os.path.isabs(self.source_directory):
            raise ConfigError(f"source_directory must be an absolute path (got {self.source_directory!r})")
        norm = os.path.normpath(self.entry_script)
        if os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep):
            raise ConfigError(
                f"entry_script must be a path inside source_directory {self.source_directory!r} "
                f"(got {self.entry_script!r})"
            )

    def entry_script_path(self) -> Path:
        """The entry script's path on this machine (relative to the current folder when
        neither it nor ``source_directory`` is absolute)."""
        return Path(self.source_directory or "", self.entry_script)

    def check_files(self) -> None:
        """The one I/O check: the source directory and the entry script exist."""
        if self.source_directory is not None and not os.path.isdir(self.source_directory):
            raise ConfigError(f"source_directory {self.source_directory!r} is not a folder")
        if not self.entry_script_path().is_file():
            raise ConfigError(f"entry_script {str(self.entry_script_path())!r} does not exist or is not a file")

    @classmethod
    def resolve(
        cls,
        entry_script: str | os.PathLike[str],
        source_directory: str | os.PathLike[str] | None = None,
        environment: EnvironmentSpec | None = None,
        description: str | None = None,
        *,
        base_dir: str | os.PathLike[str],
    ) -> InferenceSpec:
        """v1 paths to spec form: ``source_directory`` is relative to ``base_dir`` and
        ``entry_script`` to ``source_directory`` (v1's rule), or to ``base_dir`` without one."""
        entry = os.fspath(entry_script)
        if source_directory is None:
            return cls(os.path.abspath(os.path.join(base_dir, entry)), None, environment, description)
        folder = os.path.abspath(os.path.join(base_dir, os.fspath(source_directory)))
        if os.path.isabs(entry):
            entry = os.path.relpath(entry, folder)
        return cls(os.path.normpath(entry), folder, environment, description)

    def to_dict(self) -> dict[str, Any]:
        return {
            "entry_script": self.entry_script,
            "source_directory": self.source_directory,
            "environment": self.environment.to_dict() if self.environment else None,
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InferenceSpec:
        d = _check_keys("inference spec", d, ["entry_script", "source_directory", "environment", "description"])
        env = d.get("environment")
        return cls(
            entry_script=d.get("entry_script"),  # type: ignore[arg-type]  # checked in __post_init__
            source_directory=d.get("source_directory"),
            environment=EnvironmentSpec.from_dict(env) if env is not None else None,
            description=d.get("description"),
        )

    @classmethod
    def from_v1_json(cls, d: Mapping[str, Any], base_dir: str | os.PathLike[str]) -> InferenceSpec:
        """Read a v1 ``inferenceconfig.json`` (already parsed); ``base_dir`` is the file's folder.

        ``sourceDirectory`` is relative to the file's folder; ``entryScript`` and ``condaFile``
        to ``sourceDirectory`` (or the file's folder). ``condaFile`` is read here. Checks
        that the entry script exists.
        """
        known = [
            "entryScript",
            "sourceDirectory",
            "runtime",
            "condaFile",
            "environment",
            *_V1_IGNORED["inference"],
        ]
        d = _check_keys("inferenceconfig.json", d, known)
        entry = d.get("entryScript")
        if not isinstance(entry, str) or not entry:
            raise ConfigError(f"entryScript is required in inferenceconfig.json (got {_kind(entry)})")
        runtime = d.get("runtime")
        if runtime is not None and str(runtime).lower() != "python":
            raise ConfigError(f"runtime must be 'python' (got {runtime!r}); spark-py is not supported")
        source = _opt_str("sourceDirectory", d.get("sourceDirectory"))
        folder = os.path.join(base_dir, source) if source else os.fspath(base_dir)
        environment = None
        if d.get("environment") is not None:
            if d.get("condaFile"):
                raise ConfigError("inferenceconfig.json gives both environment and condaFile; keep one")
            environment = EnvironmentSpec.from_v1_json(d["environment"], folder)
        elif d.get("condaFile"):
            path = Path(folder, _opt_str("condaFile", d["condaFile"]) or "")
            parsed = parse_conda_yaml(_read(path, "condaFile"), str(path))
            environment = EnvironmentSpec.from_conda(str(parsed.get("name") or "project_environment"), parsed)
        spec = cls.resolve(entry, source, environment, base_dir=base_dir)
        spec.check_files()
        return spec
