"""A Dockerfile and build context for an environment, tagged with its hash (Kubernetes).

Every environment gets one, whatever its kind, since a pod has no interpreter of its own:

- built from requirements: the same requirements file as the local environment (the user's
  packages and the runtime's) on the Python version it asks for;
- ``Environment("env")`` (nothing asked for, "this interpreter"): the runtime's packages on
  the Python version modelfleet runs on here, which is what the local replica gets;
- user-managed (``python_executable``, v1's ``userManagedDependencies``): as in v1 the path
  names the interpreter *in the image* (its base image's); a virtualenv on it with
  ``--system-site-packages`` adds the runtime and keeps the base image's packages visible.

The base image: ``base_image`` when given (v1's ``environment.docker.base_image``), else
``CUDA_BASE_IMAGE`` for a service with ``gpu_cores`` (``gpu=True``), else the official
``python:X.Y-slim``. uv comes from its own image (a pinned ``ghcr.io/astral-sh/uv`` stage), so
a base image needs no pip, and uv fetches the asked-for Python when the base image has none
(the CUDA image has none).

The tag is ``<repository>:<hash>`` for the default base image; another base image is a
different image from the same environment, so it gets a suffix (``-cuda``, or ``-base-`` and
12 hex digits of the base image's name): ``image_tag`` is the one place that spells it, and
the deploy looks up the same string. The image also holds the pods' init container
(``targets/kubernetes/fetch.py``, stdlib only), which runs from the same image.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
from pathlib import Path

from modelfleet.envs.build import METADATA, RUNTIME_DIR
from modelfleet.envs.canonical import Canonical, canonicalize, copy_runtime, install_file, runtime_source
from modelfleet.errors import ConfigError
from modelfleet.spec import EnvironmentSpec

DEFAULT_REPOSITORY = "modelfleet-env"
# CUDA 12's runtime libraries with cuDNN: CUDA 12 minor-version compatibility runs it on any
# 525+ driver (AKS's GPU node images ship 535 and later); 12.4 is what the default PyTorch
# wheels (cu124) and onnxruntime-gpu 1.19+ are built against; cuDNN because onnxruntime-gpu and
# TensorFlow load it from the system; Ubuntu 22.04's glibc runs uv's standalone Pythons.
CUDA_BASE_IMAGE = "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"
UV_IMAGE = "ghcr.io/astral-sh/uv"
# The init container's fetcher runs from the environment's image too (manifests' FETCH_COMMAND).
FETCHER_FILES = ("targets/__init__.py", "targets/kubernetes/__init__.py", "targets/kubernetes/fetch.py")
_IMAGE_RE = re.compile(r"^[a-z0-9]+(?:[._/:@-][A-Za-z0-9_.-]+)*$")


def image_variant(base_image: str | None = None, gpu: bool = False) -> str:
    """The tag suffix for a base image other than the default ('' for the default)."""
    if base_image:
        return "base-" + hashlib.sha256(base_image.encode()).hexdigest()[:12]
    return "cuda" if gpu else ""


def image_tag(digest: str, repository: str = DEFAULT_REPOSITORY, variant: str = "") -> str:
    return f"{repository}:{digest}-{variant}" if variant else f"{repository}:{digest}"


def base_image_for(canon: Canonical, base_image: str | None = None, gpu: bool = False) -> str:
    if base_image:
        if not _IMAGE_RE.match(base_image) or len(base_image) > 255:
            raise ConfigError(
                "docker base_image must be an image reference such as 'mcr.microsoft.com/azureml/"
                f"openmpi4.1.0-ubuntu22.04:latest' or 'python:3.11-slim' (got {base_image!r})"
            )
        return base_image
    return CUDA_BASE_IMAGE if gpu else f"python:{canon.python}-slim"


def write_image_context(
    spec: EnvironmentSpec,
    out_dir: Path,
    repository: str = DEFAULT_REPOSITORY,
    *,
    base_image: str | None = None,
    gpu: bool = False,
) -> str:
    """Write ``Dockerfile``, ``requirements.txt``, the runtime copy, ``modelfleet-env.json`` and
    ``image-tag.txt`` into ``out_dir`` (new or empty); returns the tag. Local ``--find-links``
    folders are copied in and pointed at from the requirements file. ``base_image``: the
    environment's own (v1's ``docker.base_image``) unless given."""
    base_image = base_image or spec.base_image
    canon = canonicalize(spec)
    base = base_image_for(canon, base_image, gpu)
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
    runtime = out_dir / RUNTIME_DIR / "modelfleet"
    copy_runtime(runtime)
    for relpath in FETCHER_FILES:
        (runtime / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(runtime_source() / relpath, runtime / relpath)
    in_image = Canonical(canon.hash, canon.document, canon.requirements, tuple(options), canon.python, canon.dropped)
    (out_dir / "requirements.txt").write_text(install_file(in_image))
    tag = image_tag(canon.hash, repository, image_variant(base_image, gpu))
    about = {
        "hash": canon.hash,
        "name": spec.name,
        "tag": tag,
        "base_image": base,
        "spec": spec.to_dict(),
        "canonical": canon.document,
    }
    (out_dir / METADATA).write_text(json.dumps(about, indent=2))
    (out_dir / "Dockerfile").write_text(dockerfile(spec, canon, base, tag))
    (out_dir / ".dockerignore").write_text("Dockerfile\nimage-tag.txt\n")
    (out_dir / "image-tag.txt").write_text(tag + "\n")
    return tag


def dockerfile(spec: EnvironmentSpec, canon: Canonical, base: str, tag: str) -> str:
    variables = "".join(f"ENV {k}={json.dumps(v)}\n" for k, v in sorted(spec.environment_variables.items()))
    if spec.python_executable is not None:
        python, venv_flags = shlex.quote(spec.python_executable), " --system-site-packages"
    else:
        python, venv_flags = canon.python, ""
    return _DOCKERFILE.format(
        name=json.dumps(spec.name)[1:-1],
        hash=canon.hash,
        tag=tag,
        base=base,
        python=python,
        venv_flags=venv_flags,
        uv=f"{UV_IMAGE}:{_uv_version()}",
        env=variables,
    )


def _uv_version() -> str:
    from importlib import metadata

    # uv is one of modelfleet's own dependencies: the image's uv is the one that built here.
    return metadata.version("uv")


# The runtime goes in through a .pth in the virtualenv's site-packages, as locally; Python
# prints where that is, so the line holds for any Python version and base image.
_DOCKERFILE = """\
# modelfleet environment "{name}": the packages and replica runtime of the local
# environment with hash {hash}.
#   docker build -t {tag} .
FROM {uv} AS uv

FROM {base}
LABEL org.modelfleet.environment.hash="{hash}" org.modelfleet.environment.name="{name}"
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 UV_PYTHON_INSTALL_DIR=/opt/python \\
    VIRTUAL_ENV=/opt/env PATH=/opt/env/bin:$PATH
COPY --from=uv /uv /usr/local/bin/uv
COPY . /build
RUN uv venv{venv_flags} --python {python} /opt/env \\
 && uv pip install --no-cache --python /opt/env/bin/python -r /build/requirements.txt \\
 && cp -r /build/modelfleet-runtime /opt/env/modelfleet-runtime \\
 && site="$(/opt/env/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \\
 && echo /opt/env/modelfleet-runtime > "$site/modelfleet-runtime.pth" \\
 && /opt/env/bin/python -I -c "import modelfleet.replica.server, modelfleet.targets.kubernetes.fetch" \\
 && rm -rf /build
{env}WORKDIR /var/azureml-app
USER 10001
EXPOSE 5001
ENTRYPOINT ["python", "-m", "modelfleet.replica", "--host", "0.0.0.0", "--port", "5001"]
"""
