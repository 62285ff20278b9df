"""An environment's image built inside the cluster: a Kaniko Job, for users with no builder.

The build context (``envs/image.py``'s, about 100 KB gzipped for an environment whose wheels
come from an index) travels in a ConfigMap as ``binaryData``, so the Job needs nothing
outside the cluster but the base images and the package index; a context over
``CONTEXT_LIMIT`` (ConfigMaps hold 1 MiB) is refused, saying to build it with
``modelfleet env build-image``. The Job runs ``gcr.io/kaniko-project/executor`` with
``--context tar:///context/context.tar.gz`` and ``--destination <tag>``; Kaniko pushes with the
registry credential in the Secret ``PUSH_SECRET`` (``kubectl create secret docker-registry
modelfleet-registry ...``), mounted as its ``config.json`` when present (optional: a registry
the nodes' identity may push to, as AKS with ACR attached, needs none).

One Job per tag: its name is derived from the tag, so a second deploy of the same
environment finds the Job already there (409) and starts nothing. The ConfigMap is owned by
the Job, so it goes when the Job does (``ttlSecondsAfterFinished``, a day).

API versions that Kubernetes 1.20 to 1.37 all serve: batch/v1 and v1.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelfleet.errors import ConfigError
from modelfleet.targets.kubernetes.manifests import COMPONENT_LABEL, MANAGED_BY

# The last release of Google's kaniko (the project was archived in 2025); pinned so that a
# build is the same build next month.
KANIKO_IMAGE = "gcr.io/kaniko-project/executor:v1.23.2"
PUSH_SECRET = "modelfleet-registry"
CONTEXT_LIMIT = 900 * 1024
CONTEXT_KEY = "context.tar.gz"
ENVIRONMENT_LABEL = "modelfleet.io/environment"
IMAGE_ANNOTATION = "modelfleet.io/image"
_DEADLINE_S = 3600


@dataclass(frozen=True)
class BuildSource:
    tag: str  # the full destination, registry/repository:hash[-variant]
    environment_hash: str
    context: bytes  # the context as .tar.gz (``context_archive``)
    namespace: str
    insecure: bool = False  # plain http registry (Kaniko's --insecure)


def context_archive(folder: Path) -> bytes:
    """``folder`` as a .tar.gz whose bytes depend on the files only (no times, owners)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(folder.rglob("*")):
            info = tar.gettarinfo(str(path), path.relative_to(folder).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if path.is_file():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return gzip.compress(raw.getvalue(), mtime=0)


def build_name(tag: str) -> str:
    return "modelfleet-build-" + hashlib.sha256(tag.encode()).hexdigest()[:16]


def _labels(src: BuildSource) -> dict[str, str]:
    # a label value holds 63 characters: 40 hex digits of the hash still name it uniquely
    return {**MANAGED_BY, COMPONENT_LABEL: "image-build", ENVIRONMENT_LABEL: src.environment_hash[:40]}


def build_objects(src: BuildSource) -> list[dict[str, Any]]:
    """The ConfigMap holding the context and the Job that builds and pushes ``src.tag``."""
    if len(src.context) > CONTEXT_LIMIT:
        raise ConfigError(
            f"the build context of {src.tag} is {len(src.context) // 1024} KiB, over the {CONTEXT_LIMIT // 1024} KiB "
            "an in-cluster build carries in a ConfigMap (local --find-links wheels, most likely); build and push "
            "it with `modelfleet env build-image NAME --registry R --push` instead"
        )
    name = build_name(src.tag)
    labels = _labels(src)
    meta = {"name": name, "namespace": src.namespace, "labels": labels, "annotations": {IMAGE_ANNOTATION: src.tag}}
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "binaryData": {CONTEXT_KEY: base64.b64encode(src.context).decode()},
    }
    args = [f"--context=tar:///context/{CONTEXT_KEY}", "--dockerfile=Dockerfile", f"--destination={src.tag}"]
    # the pushed digest becomes the container's termination message, so it shows in the Job's pod
    args.append("--digest-file=/dev/termination-log")
    if src.insecure:
        args += ["--insecure", "--skip-tls-verify"]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": _DEADLINE_S,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,  # Kaniko never calls the API
                    "containers": [
                        {
                            "name": "kaniko",
                            "image": KANIKO_IMAGE,
                            "args": args,
                            # installing packages is the heavy part: uv resolves and unpacks wheels
                            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}},
                            "volumeMounts": [
                                {"name": "context", "mountPath": "/context", "readOnly": True},
                                {"name": "registry", "mountPath": "/kaniko/.docker", "readOnly": True},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "context", "configMap": {"name": name}},
                        {
                            "name": "registry",
                            "secret": {
                                "secretName": PUSH_SECRET,
                                "optional": True,
                                "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                            },
                        },
                    ],
                },
            },
        },
    }
    return [config_map, job]


def start_build(api: Any, src: BuildSource) -> bool:
    """Create the ConfigMap and the Job (the ConfigMap then owned by the Job); False when a
    Job for this tag exists already (a build started by an earlier deploy)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    from modelfleet.targets.kubernetes.api import api_error, call

    config_map, job = build_objects(src)
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    name = job["metadata"]["name"]
    # the Job first, as the ConfigMap's owner needs its uid; until the ConfigMap is there the
    # kubelet holds the pod at its volume mount and retries
    try:
        created = batch.create_namespaced_job(src.namespace, job)
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise api_error(f"create Job {name}", exc) from exc
    owner = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": name,
        "uid": created.metadata.uid,
        "blockOwnerDeletion": False,
    }
    config_map["metadata"] = {**config_map["metadata"], "ownerReferences": [owner]}
    try:
        core.create_namespaced_config_map(src.namespace, config_map)
    except ApiException as exc:
        if exc.status != 409:
            raise api_error(f"create ConfigMap {name}", exc) from exc
        call(f"replace ConfigMap {name}", lambda: core.replace_namespaced_config_map(name, src.namespace, config_map))
    return True
