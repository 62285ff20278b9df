"""Compute targets a workspace deploys to besides the local cluster (v1's ``ComputeTarget``).

    target = KubernetesCompute.attach(ws, "prod", kubeconfig="~/.kube/config", namespace="models",
                                      blob_store="https://blobs.example/ws", router_uri="http://10.0.0.5")
    target = ComputeTarget.attach(ws, "prod", AksCompute.attach_configuration(kubeconfig=..., namespace=...))
    target = ComputeTarget(ws, "prod")                    # later, by name
    Model.deploy(ws, "svc", [model], ic, dc, deployment_target=target)

Attaching records the cluster in the workspace (``store/computes.py``); nothing is created in
the cluster until a service is deployed to it. A service deployed to a Kubernetes target is
reconciled by that target's controller (``control/k8s_controller.py``, started on demand);
its scoring URI is the router's (``router_uri``: what the router's Service was assigned, a
LoadBalancer address or an Ingress host), since only the cluster knows it.

``blob_store`` is the URL the pods' init containers fetch models and source from (the
workspace's blob folder served over HTTP, or an object store holding the same keys): a
workspace whose blobs are only on this machine's disk cannot be deployed to a cluster.
"""

from __future__ import annotations

import builtins
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from modelfleet.errors import ConfigError
from modelfleet.store.computes import ComputeRecord, validate_compute_name

if TYPE_CHECKING:
    from modelfleet.sdk.workspace_base import WorkspaceBase

__all__ = [
    "COMPUTE_TARGET_KEY",
    "AksCompute",
    "ComputeTarget",
    "KubernetesAttachConfiguration",
    "KubernetesCompute",
    "deployment_target_of",
    "service_target",
]

KIND = "kubernetes"
COMPUTE_TARGET_KEY = "compute_target"  # in a service's stored config (control/reconcile.py reads it)


@dataclass(frozen=True)
class KubernetesAttachConfiguration:
    """What ``ComputeTarget.attach`` needs to attach a Kubernetes cluster (v1's attach config)."""

    kubeconfig: str | None = "~/.kube/config"
    context: str | None = None
    namespace: str = "default"
    blob_store: str | None = None
    router_uri: str | None = None
    image: str | None = None
    image_repository: str | None = None

    def __post_init__(self) -> None:
        if self.kubeconfig is not None and not os.path.isfile(os.path.expanduser(self.kubeconfig)):
            raise ConfigError(
                f"kubeconfig {self.kubeconfig!r} is not a file; pass kubeconfig=PATH (None: the pod's own account)"
            )
        if not isinstance(self.namespace, str) or not _dns_label(self.namespace):
            raise ConfigError(
                "namespace must be a DNS label: 1-63 lowercase letters, digits or '-', "
                f"starting and ending with a letter or digit (got {self.namespace!r})"
            )
        for name in ("blob_store", "router_uri"):
            value = getattr(self, name)
            if value is not None and urlsplit(value).scheme not in ("http", "https"):
                raise ConfigError(f"{name} must be an http:// or https:// URL (got {value!r})")

    def settings(self) -> dict[str, Any]:
        out = asdict(self)
        if self.kubeconfig is not None:
            out["kubeconfig"] = os.path.abspath(os.path.expanduser(self.kubeconfig))
        if self.router_uri:
            out["router_uri"] = self.router_uri.rstrip("/")
        return {k: v for k, v in out.items() if v is not None}


def _dns_label(value: str) -> bool:
    return 1 <= len(value) <= 63 and value.replace("-", "a").isalnum() and value == value.lower() and value[0] != "-"


class KubernetesCompute:
    """A Kubernetes cluster attached to a workspace (v1: ``AksCompute``)."""

    type = "Kubernetes"

    def __init__(self, workspace: WorkspaceBase, name: str) -> None:
        self.workspace = workspace
        self.name = validate_compute_name(name)
        self._record()  # NotFound, saying how to attach, when there is none

    def __repr__(self) -> str:
        return f"KubernetesCompute(name={self.name!r}, namespace={self.namespace!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KubernetesCompute) and (other.workspace.path, other.name) == (
            self.workspace.path,
            self.name,
        )

    def __hash__(self) -> int:
        return hash((str(self.workspace.path), self.name))

    @staticmethod
    def attach_configuration(
        kubeconfig: str | None = "~/.kube/config",
        context: str | None = None,
        namespace: str = "default",
        blob_store: str | None = None,
        router_uri: str | None = None,
        image: str | None = None,
        image_repository: str | None = None,
    ) -> KubernetesAttachConfiguration:
        return KubernetesAttachConfiguration(
            kubeconfig, context, namespace, blob_store, router_uri, image, image_repository
        )

    @classmethod
    def attach(
        cls,
        workspace: WorkspaceBase,
        name: str,
        kubeconfig: str | None = "~/.kube/config",
        context: str | None = None,
        namespace: str = "default",
        *,
        blob_store: str | None = None,
        router_uri: str | None = None,
        image: str | None = None,
        image_repository: str | None = None,
        overwrite: bool = False,
    ) -> KubernetesCompute:
        config = cls.attach_configuration(
            kubeconfig, context, namespace, blob_store, router_uri, image, image_repository
        )
        return ComputeTarget.attach(workspace, name, config, overwrite=overwrite)

    @staticmethod
    def list(workspace: WorkspaceBase) -> list[KubernetesCompute]:
        return [KubernetesCompute(workspace, r.name) for r in workspace.store.computes.list() if r.kind == KIND]

    def _record(self) -> ComputeRecord:
        return self.workspace.store.computes.get(self.name)

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self._record().settings)

    @property
    def namespace(self) -> str:
        return str(self.settings.get("namespace") or "default")

    @property
    def router_uri(self) -> str | None:
        return self.settings.get("router_uri")

    def scoring_uri(self, service: str) -> str | None:
        base = self.router_uri
        return f"{base}/api/v1/service/{service}/score" if base else None

    def logs(self, service: str, num_lines: int = 5000) -> str:
        """Each of the service's pods: its state and why it is not Ready, then its log."""
        from kubernetes import client

        from modelfleet.control.k8s_router import api_client
        from modelfleet.targets.kubernetes.target import pod_logs, service_replicas

        settings = self.settings
        api = api_client(settings.get("kubeconfig"), settings.get("context"))
        try:
            replicas = service_replicas(api, self.namespace, service)
            return pod_logs(client.CoreV1Api(api), self.namespace, replicas, None, num_lines)
        finally:
            api.close()

    def _api(self) -> Any:
        from modelfleet.control.k8s_router import api_client

        settings = self.settings
        return api_client(settings.get("kubeconfig"), settings.get("context"))

    def _services(self) -> builtins.list[str]:
        store = self.workspace.store
        return sorted(r.name for r in store.list_services() if r.config.get(COMPUTE_TARGET_KEY) == self.name)

    def install_router(
        self, image: str, replicas: int = 2, load_balancer_type: str = "LoadBalancer", port: int = 80
    ) -> builtins.list[str]:
        """Create (or update) the cluster's router: ServiceAccount, Role (this target's services'
        Secrets by name), RoleBinding, Deployment and Service; returns "Kind/name" of each."""
        from kubernetes.utils.create_from_yaml import create_from_yaml_single_item

        from modelfleet.targets.kubernetes import manifests as m
        from modelfleet.targets.kubernetes.router_install import upsert_object

        source = m.RouterSource(
            image=image,
            namespace=self.namespace,
            replicas=replicas,
            load_balancer_type=load_balancer_type,
            secret_names=[m.secret_name(s) for s in self._services()],
            port=port,
        )
        api = self._api()
        try:
            done = []
            for obj in m.router_objects(source):
                upsert_object(api, obj, create_from_yaml_single_item)
                done.append(f"{obj['kind']}/{obj['metadata']['name']}")
            return done
        finally:
            api.close()

    def router_status(self) -> dict[str, Any]:
        """The router's Deployment (replicas, ready) and Service (type, cluster IP, the address
        a load balancer assigned) as the API reports them."""
        from kubernetes import client

        from modelfleet.targets.kubernetes.manifests import ROUTER_NAME
        from modelfleet.targets.kubernetes.router_install import router_status

        api = self._api()
        try:
            return router_status(client.AppsV1Api(api), client.CoreV1Api(api), self.namespace, ROUTER_NAME)
        finally:
            api.close()

    def uninstall_router(self) -> builtins.list[str]:
        from modelfleet.targets.kubernetes import manifests as m
        from modelfleet.targets.kubernetes.router_install import delete_object

        api = self._api()
        try:
            objects = m.router_objects(m.RouterSource(image="-", namespace=self.namespace))
            return [f"{o['kind']}/{o['metadata']['name']}" for o in reversed(objects) if delete_object(api, o)]
        finally:
            api.close()

    def get_status(self) -> str:
        """v1's provisioning state: an attached cluster is there already."""
        return "Succeeded"

    def wait_for_completion(self, show_output: bool = False) -> None:
        """v1: wait for provisioning; attaching provisions nothing, so there is nothing to wait for."""

    def ensure_controller(self) -> int:
        """Start the controller that reconciles this target's services, unless it runs; its pid."""
        from modelfleet.control.k8s_controller import ensure_controller

        return ensure_controller(self.workspace.store, self.name)

    def stop_controller(self) -> bool:
        from modelfleet.control.k8s_controller import stop_controller

        return stop_controller(self.workspace.store, self.name)

    def detach(self) -> None:
        """Forget the cluster (its services' objects stay in it); the controller stops."""
        self.stop_controller()
        self.workspace.store.computes.detach(self.name)

    def serialize(self) -> dict[str, Any]:
        record = self._record()
        return {"name": record.name, "computeType": self.type, "createdTime": record.created_time, **record.settings}


AksCompute = KubernetesCompute


class ComputeTarget:
    """v1's base name: ``ComputeTarget(ws, name)`` returns the attached target by its kind."""

    def __new__(cls, workspace: WorkspaceBase, name: str) -> KubernetesCompute:  # type: ignore[misc]
        return KubernetesCompute(workspace, name)

    @staticmethod
    def attach(
        workspace: WorkspaceBase,
        name: str,
        attach_configuration: KubernetesAttachConfiguration,
        overwrite: bool = False,
    ) -> KubernetesCompute:
        if not isinstance(attach_configuration, KubernetesAttachConfiguration):
            raise ConfigError(
                "attach_configuration must come from KubernetesCompute.attach_configuration(...) "
                f"(got {type(attach_configuration).__name__})"
            )
        workspace.store.computes.attach(name, KIND, attach_configuration.settings(), overwrite=overwrite)
        return KubernetesCompute(workspace, name)

    @staticmethod
    def list(workspace: WorkspaceBase) -> list[KubernetesCompute]:
        return KubernetesCompute.list(workspace)


def deployment_target_of(workspace: WorkspaceBase, deployment_target: Any) -> KubernetesCompute | None:
    """``Model.deploy``'s ``deployment_target``: None (the local cluster) or an attached cluster
    of this workspace."""
    if deployment_target is None:
        return None
    if not isinstance(deployment_target, KubernetesCompute):
        raise ConfigError(
            "deployment_target must be an attached cluster, KubernetesCompute(ws, name) or "
            f"ComputeTarget(ws, name), or None for the local cluster (got {type(deployment_target).__name__})"
        )
    if Path(deployment_target.workspace.path) != Path(workspace.path):
        raise ConfigError(
            f"compute target {deployment_target.name} is attached to workspace {deployment_target.workspace.name}, "
            f"not {workspace.name}; attach it to this workspace too"
        )
    target = KubernetesCompute(workspace, deployment_target.name)
    if not target.settings.get("blob_store"):
        raise ConfigError(
            f"compute target {target.name} has no blob_store: its pods fetch models and source from a blob "
            "store they can reach, and this workspace's blobs are only on this machine's disk; serve them "
            "(or copy them to an object store) and attach again with blob_store=URL, overwrite=True"
        )
    return target


def service_target(workspace: WorkspaceBase, config: dict[str, Any]) -> KubernetesCompute | None:
    """The attached cluster a stored service runs on, or None for the local cluster."""
    name = config.get(COMPUTE_TARGET_KEY)
    return KubernetesCompute(workspace, str(name)) if name else None
