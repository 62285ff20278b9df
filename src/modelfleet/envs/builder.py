"""Building an environment's image with the container builder this machine has.

docker, podman and buildah all build a Dockerfile context; whichever is found first on PATH
(in that order) is used, or the one named. Each gets the same two steps, spelled its way:
build the context with the hash tag, then (when asked) push the tag. The registry login is
the builder's own (``docker login`` and friends): modelfleet hands it no credential. With no
builder, the same commands are what the user runs elsewhere (``commands(..., "docker")``).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from modelfleet.errors import BuildError, ConfigError

BUILDERS = ("docker", "podman", "buildah")


def find_builder(wanted: str | None = None) -> str | None:
    """The path of ``wanted`` (or of the first of BUILDERS) on PATH; None when there is none."""
    if wanted is not None and wanted not in BUILDERS:
        raise ConfigError(f"builder must be one of {', '.join(BUILDERS)} (got {wanted!r})")
    for name in (wanted,) if wanted else BUILDERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def commands(builder: str, tag: str, context: Path, push: bool, insecure: bool = False) -> list[list[str]]:
    """The build (and push) command lines for ``builder`` (a name or a path to one)."""
    name = Path(builder).name
    if name not in BUILDERS:
        raise ConfigError(f"builder must be one of {', '.join(BUILDERS)} (got {builder!r})")
    build = [builder, "build", "-t", tag, str(context)]
    out = [build]
    if push:
        # docker reads plain-http registries from its daemon's insecure-registries, not a flag
        tls = ["--tls-verify=false"] if insecure and name != "docker" else []
        out.append([builder, "push", *tls, tag])
    return out


def shown(argv: list[str]) -> str:
    return shlex.join(argv)


def run(argv: list[str]) -> None:
    """One builder step, its output going to the user's terminal as it comes."""
    done = subprocess.run(argv, check=False)
    if done.returncode != 0:
        raise BuildError(f"`{shown(argv)}` failed with exit status {done.returncode} (its output is above)")
