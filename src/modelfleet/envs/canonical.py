"""The canonical form of an environment specification, and its hash.

What decides a virtualenv's content, and nothing else, is hashed (sha256 of canonical JSON):
the pip requirements respelled (PEP 503 names and extras, specifiers sorted without spaces,
duplicates dropped, sorted), the pip options respelled long and sorted, the Python version
asked for (the running one's ``X.Y`` when none is), the platform, and the replica runtime:
modelfleet's version with a digest of the files copied into every environment
(``RUNTIME_FILES``), and ``RUNTIME_REQUIREMENTS``. The name and the variables are not part
of it. Worked example: ``["numpy >= 1.0", "Scikit_Learn==1.5", "numpy>=1.0"]`` and
``["scikit-learn == 1.5", "NumPy>=1.0"]`` both become ``["numpy>=1.0", "scikit-learn==1.5"]``,
so they hash the same.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

import modelfleet
from modelfleet.errors import ConfigError
from modelfleet.spec import EnvironmentSpec

FORMAT = 1
# What a replica needs besides the standard library (the replica's import set is
# a contract with this builder). Lower bounds as in pyproject: the resolver picks versions
# together with the user's own pins.
RUNTIME_REQUIREMENTS = (
    "httptools>=0.6",
    "inference-schema>=1.7",
    "uvloop>=0.19; sys_platform != 'win32'",
)
# The parts of the modelfleet package a replica may import (replica → wire → telemetry → spec →
# errors: the import-linter layers below the replica).
RUNTIME_FILES = ("__init__.py", "errors.py", "spec", "py.typed", "replica", "wire", "oip", "telemetry")
# v1's serving stack: modelfleet's runtime replaces it, and installing it would pull all of azureml-core.
V1_SERVING_PACKAGES = frozenset({"azureml-defaults", "azureml-inference-server-http"})

_OPTIONS = {
    "-f": "--find-links",
    "--find-links": "--find-links",
    "-i": "--index-url",
    "--index-url": "--index-url",
    "--extra-index-url": "--extra-index-url",
    "--no-index": "--no-index",
    "--pre": "--pre",
}
_FLAG_OPTIONS = {"--no-index", "--pre"}


@dataclass(frozen=True)
class Canonical:
    hash: str
    document: dict[str, Any]  # what was hashed
    requirements: tuple[str, ...]  # respelled, sorted: what is installed besides the runtime
    options: tuple[str, ...]  # pip options, respelled, sorted
    python: str  # the version asked for, e.g. "3.11"
    dropped: tuple[str, ...]  # v1 serving packages left out


def needs_build(spec: EnvironmentSpec) -> bool:
    """False for "this interpreter" (nothing asked for) and for a user-managed interpreter."""
    return spec.python_executable is None and bool(spec.pip_requirements or spec.python_version)


def canonicalize(spec: EnvironmentSpec, runtime: str | None = None) -> Canonical:
    """The normal form of ``spec`` and its hash (see the module docstring)."""
    if spec.conda_only_packages:
        raise ConfigError(conda_only_message(spec.name, spec.conda_only_packages))
    requirements: set[str] = set()
    options: set[str] = set()
    dropped: list[str] = []
    for line in spec.pip_requirements:
        kind, text = _respell(spec.name, line)
        if kind == "option":
            options.add(text)
        elif _name_of(text) in V1_SERVING_PACKAGES:
            dropped.append(text)
        else:
            requirements.add(text)
    python = spec.python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    document = {
        "format": FORMAT,
        "python": python,
        "platform": f"{sys.platform}-{platform.machine()}",
        "requirements": sorted(requirements),
        "options": sorted(options),
        "runtime": {"modelfleet": runtime or runtime_version(), "requirements": list(RUNTIME_REQUIREMENTS)},
    }
    digest = hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return Canonical(digest, document, tuple(sorted(requirements)), tuple(sorted(options)), python, tuple(dropped))


def conda_only_message(name: str, packages: tuple[str, ...] | list[str]) -> str:
    first = packages[0]
    pip_form = re.sub(r"^(?:[\w.-]+::)?([\w.-]+)\s*=\s*([^=\s]+)$", r"\1==\2", first.strip())
    return (
        f"environment {name!r}: conda package {first!r} cannot be installed: modelfleet builds environments "
        f"with pip packages (uv), not conda ({len(packages)} conda package(s): {', '.join(packages)}); "
        f"move each into the pip section (e.g. {pip_form!r}), checking its name on PyPI"
    )


def _name_of(text: str) -> str:
    return re.split(r"[\[\s;@<>=!~]", text, maxsplit=1)[0]


def _respell(env_name: str, line: str) -> tuple[str, str]:
    line = line.strip()
    if line.startswith("-"):
        parts = re.split(r"\s+|=", line, maxsplit=1)
        option, value = parts[0], (parts[1].strip() if len(parts) > 1 else "")
        long = _OPTIONS.get(option)
        if long is None:
            raise ConfigError(
                f"environment {env_name!r}: pip option {line!r} is not supported; allowed: "
                f"{', '.join(sorted(set(_OPTIONS.values())))} (requirements files given with -r are read "
                "by Environment.from_pip_requirements)"
            )
        if long in _FLAG_OPTIONS:
            return "option", long
        if not value:
            raise ConfigError(f"environment {env_name!r}: pip option {option} needs a value (got {line!r})")
        return "option", f"{long} {value}"
    try:
        req = Requirement(line)
    except InvalidRequirement as exc:
        raise ConfigError(
            f"environment {env_name!r}: {line!r} is not a valid pip requirement ({exc}); "
            "write it as name, name==1.2 or name>=1.0,<2"
        ) from None
    text = str(canonicalize_name(req.name))
    if req.extras:
        text += "[" + ",".join(sorted(str(canonicalize_name(e)) for e in req.extras)) + "]"
    text += f" @ {req.url}" if req.url else str(req.specifier)
    if req.marker is not None:
        text += f"; {req.marker}"
    return "requirement", text


def runtime_source() -> Path:
    """The folder of the running modelfleet package (the copy's source)."""
    return Path(modelfleet.__file__).resolve().parent


def _runtime_paths(source: Path) -> list[Path]:
    files = []
    for name in RUNTIME_FILES:
        path = source / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    return sorted(files)


def runtime_version(source: Path | None = None) -> str:
    """modelfleet's version and a digest of the runtime files: a source edit is a new runtime."""
    source = source or runtime_source()
    digest = hashlib.sha256()
    for path in _runtime_paths(source):
        digest.update(path.relative_to(source).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{modelfleet.__version__}+{digest.hexdigest()[:12]}"


def install_file(canon: Canonical) -> str:
    """The requirements file a build installs: options, the user's packages, the runtime's."""
    lines = ["# written by modelfleet: the environment's packages and the replica runtime"]
    lines += list(canon.options) + list(canon.requirements) + list(RUNTIME_REQUIREMENTS)
    return "\n".join(lines) + "\n"


def copy_runtime(dest: Path) -> None:
    """Copy the runtime part of the modelfleet package (``RUNTIME_FILES``) to ``dest``."""
    source = runtime_source()
    for path in _runtime_paths(source):
        target = dest / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
