"""A Dockerfile and build context for an environment, tagged with its hash (Kubernetes).

The image holds what the local environment holds: the same requirements file (the user's
packages and the runtime's), the same copy of modelfleet's runtime behind a ``.pth``, and
runs ``python -m modelfleet.replica`` on port 5001. Its tag is ``modelfleet-env:<hash>``, so
a cluster that has the tag has the environment.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from modelfleet.envs.build import METADATA, RUNTIME_DIR
from modelfleet.envs.canonical import Canonical, canonicalize, copy_runtime, install_file, needs_build
from modelfleet.errors import ConfigError
from modelfleet.spec import EnvironmentSpec


def image_tag(digest: str, repository: str = "modelfleet-env") -> str:
    return f"{repository}:{digest}"


def write_image_context(spec: EnvironmentSpec, out_dir: Path, repository: str = "modelfleet-env") -> str:
    """Write ``Dockerfile``, ``requirements.txt``, the runtime copy, ``modelfleet-env.json`` and
    ``image-tag.txt`` into ``out_dir`` (new or empty); returns the tag. Local ``--find-links``
    folders are copied in and pointed at from the requirements file."""
    if not needs_build(spec):
        raise ConfigError(
            f"environment {spec.name!r} asks for no packages and no Python version (or is user-managed); "
            "an image is made for an environment built from requirements"
        )
    canon = canonicalize(spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise ConfigError(f"OUT_DIR {out_dir} is not empty; give a new or empty folder")
    options = []
    for i, option in enumerate(canon.options):
        flag, _, value = option.partition(" ")
        if flag == "--find-links" and Path(value).is_dir():
            shutil.copytree(value, out_dir / "wheels" / str(i))
            option = f"--find-links /build/wheels/{i}"
        options.append(option)
    copy_runtime(out_dir / RUNTIME_DIR / "modelfleet")
    in_image = Canonical(canon.hash, canon.document, canon.requirements, tuple(options), canon.python, canon.dropped)
    (out_dir / "requirements.txt").write_text(install_file(in_image))
    about = {"hash": canon.hash, "name": spec.name, "spec": spec.to_dict(), "canonical": canon.document}
    (out_dir / METADATA).write_text(json.dumps(about, indent=2))
    tag = image_tag(canon.hash, repository)
    variables = "".join(f"ENV {k}={json.dumps(v)}\n" for k, v in sorted(spec.environment_variables.items()))
    uv_version = _uv_version()
    (out_dir / "Dockerfile").write_text(
        _DOCKERFILE.format(
            name=spec.name,
            hash=canon.hash,
            tag=tag,
            python=canon.python,
            uv=f"uv=={uv_version}" if uv_version else "uv",
            env=variables,
            major_minor=".".join(canon.python.split(".")[:2]),
        )
    )
    (out_dir / "image-tag.txt").write_text(tag + "\n")
    return tag


def _uv_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("uv")
    except metadata.PackageNotFoundError:
        return None


# The .pth line is relative to site-packages (/opt/env/lib/pythonX.Y/site-packages), as locally.
_DOCKERFILE = """\
# modelfleet environment {name!r}: the packages and replica runtime of the local
# environment with hash {hash}.
#   docker build -t {tag} .
FROM python:{python}-slim
LABEL org.modelfleet.environment.hash="{hash}" org.modelfleet.environment.name="{name}"
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 VIRTUAL_ENV=/opt/env PATH=/opt/env/bin:$PATH
COPY . /build
RUN pip install --no-cache-dir {uv} \\
 && uv venv --relocatable /opt/env \\
 && uv pip install --no-cache --python /opt/env/bin/python -r /build/requirements.txt \\
 && cp -r /build/modelfleet-runtime /opt/env/modelfleet-runtime \\
 && echo ../../../modelfleet-runtime > /opt/env/lib/python{major_minor}/site-packages/modelfleet-runtime.pth \\
 && python -I -c "import modelfleet.replica.server" \\
 && rm -rf /build
{env}WORKDIR /var/azureml-app
EXPOSE 5001
ENTRYPOINT ["python", "-m", "modelfleet.replica", "--host", "0.0.0.0", "--port", "5001"]
"""
