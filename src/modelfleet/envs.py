"""Which interpreter runs a service's replicas.

``Environment("name")`` is the interpreter that runs the control plane, with nothing built.
An environment with pip requirements runs there too, provided that interpreter already
satisfies them; otherwise the deployment fails naming what is missing. (Building
environments into their own cached virtualenvs is the next step; the supervisor already
starts replicas through whatever interpreter this returns.)
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.requirements import InvalidRequirement, Requirement

from modelfleet.errors import BuildError
from modelfleet.spec import EnvironmentSpec


def resolve_interpreter(spec: EnvironmentSpec) -> str:
    python = spec.python_executable or sys.executable
    if spec.pip_requirements and python == sys.executable:
        missing = unsatisfied(spec.pip_requirements)
        if missing:
            raise BuildError(
                f"environment {spec.name!r} needs packages this interpreter ({python}) does not have: "
                f"{', '.join(missing)}; install them there (pip install ...) and update the service"
            )
    return python


def unsatisfied(requirements: tuple[str, ...] | list[str]) -> list[str]:
    """The requirements (pip syntax) that the running interpreter does not satisfy."""
    missing = []
    for line in requirements:
        if line.startswith(("-", "--")):
            continue  # pip options (index URLs, -r includes) say nothing about what is installed
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            missing.append(f"{line} (not a valid requirement)")
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{line} (found {version})")
    return missing
