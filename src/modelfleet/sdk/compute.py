"""Compute targets a workspace deploys to besides the local cluster (v1's ``ComputeTarget``).

    target = KubernetesCompute.attach(ws, "prod", kubeconfig="~/.kube/config", namespace="models",
                                      blob_store="https://blobs.example/ws", router_uri="http://10.0.0.5")
    target = ComputeTarget.attach(ws, "prod", AksCompute.attach_configuration(kubeconfig=..., namespace=...))
    target = ComputeTarget(ws, "prod")                    # later, by name
    Model.deploy(ws, "svc", [model], ic, dc, deployment_target=target)

Attaching records the cluster in the workspace (``store/computes.py``); nothing is created in
the cluster until a service is deployed to it, except the blob store's credential Secret when
one is given (below). A service deployed to a Kubernetes target is
reconciled by that target's controller (``control/k8s_controller.py``, started on demand);
its scoring URI is the router's (``router_uri``: what the router's Service was assigned, a
LoadBalancer address or an Ingress host), since only the cluster knows it.

``blob_store`` is the URL the pods' init containers fetch models and source from (the
workspace's blob folder served over HTTP, or an object store holding the same keys): a
workspace whose blobs are only on this machine's disk cannot be deployed to a cluster, so a
``file://`` URL is refused. A private store's credential is given at attach time (from the
user's environment) and written straight into a Kubernetes Secret in the target's namespace
(``manifests.blob_secret``); the workspace records only which form was given, never the value.
The init container reads it through optional ``secretKeyRef`` entries and sends it with every blob
request (``targets/kubernetes/fetch.py``). The forms, for what the stdlib fetcher can send
without signing anything itself:

- ``blob_store_sas``: a query string appended to each blob URL. For an ``az://container/prefix``
  workspace, attach ``blob_store="https://<account>.blob.core.windows.net/<container>/<prefix>"``
  (the same container and keys) and a SAS token with read permission on the container.
- ``blob_store_token``: sent as ``Authorization: Bearer <token>``, for a blob server behind an
  auth proxy (the workspace's blob folder served by one, or a proxy in front of an object store).

S3 (``s3://``) needs request signing (SigV4), which the fetcher does not do: use a bucket (or
prefix) with public read, or a proxy in front of it that checks a bearer token or answers
with presigned URLs (a redirect to another host never carries the token). Either credential
is refused with a plain ``http://`` URL unless it names a loopback address: it would travel
in clear. ``set_blob_store_credential`` replaces (or removes) it later; pods started after
that use the new one, running pods already hold their files.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from modelfleet.errors import ConfigError, Conflict
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
    blob_store_sas: str | None = field(default=None, repr=False)
    blob_store_token: str | None = field(default=None, repr=False)
    image_registry: str | None = None
    image_build: str | None = None

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
        if self.router_uri is not None and urlsplit(self.router_uri).scheme not in ("http", "https"):
            raise ConfigError(f"router_uri must be an http:// or https:// URL (got {self.router_uri!r})")
        check_blob_store(self.blob_store, self.blob_store_sas, self.blob_store_token)
        check_image_settings(self.image, self.image_registry, self.image_build)

    @property
    def blob_store_auth(self) -> str | None:
        """Which credential forms were given ("sas", "token", "sas+token"), never their values."""
        return "+".join(k for k, v in (("sas", self.blob_store_sas), ("token", self.blob_store_token)) if v) or None

    def settings(self) -> dict[str, Any]:
        out = asdict(self)
        del out["blob_store_sas"], out["blob_store_token"]  # into the cluster's Secret, never the workspace
        out["blob_store_auth"] = self.blob_store_auth
        if self.kubeconfig is not None:
            out["kubeconfig"] = os.path.abspath(os.path.expanduser(self.kubeconfig))
        if self.router_uri:
            out["router_uri"] = self.router_uri.rstrip("/")
        if self.blob_store:
            out["blob_store"] = self.blob_store.rstrip("/")
        return {k: v for k, v in out.items() if v is not None}


_SAS_RE = re.compile(r"^[A-Za-z0-9\-._~%!$&'()*+,;=:@/?]{3,8192}$")  # URL query characters, no space or '#'
_TOKEN_RE = re.compile(r"^[\x21-\x7e]{8,8192}$")  # visible ASCII, no spaces


def check_blob_store(url: str | None, sas: str | None = None, token: str | None = None) -> None:
    """The pods' blob store and its credential, refused with what is allowed; no message ever
    holds the credential."""
    if url is None:
        if sas or token:
            raise ConfigError("blob_store_sas/blob_store_token need a blob_store (the https:// URL they are for)")
        return
    if not isinstance(url, str):
        raise ConfigError(f"blob_store must be an http:// or https:// URL (got {type(url).__name__})")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file" or (not scheme and url.startswith("/")):
        raise ConfigError(
            f"blob_store {url!r} is on this machine's disk: the pods' init containers fetch models and source "
            "from inside the cluster, where this machine's files are out of reach; serve the blobs over "
            "https:// (or put them in an object store under the same keys) and pass that URL"
        )
    if scheme in ("az", "abfs"):
        raise ConfigError(
            f"blob_store {url!r}: pods reach an Azure container over https; pass "
            f"blob_store='https://<account>.blob.core.windows.net/{parts.netloc}{parts.path}' (the same "
            "container and keys) and, for a private container, blob_store_sas=<a SAS token with read permission>"
        )
    if scheme == "s3":
        raise ConfigError(
            f"blob_store {url!r}: the pods' fetcher does not sign S3 requests; pass the https:// URL of a "
            "public-read bucket, or of a proxy in front of it that takes blob_store_token (a bearer token)"
        )
    if scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"blob_store must be an http:// or https:// URL (got {url!r})")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(
            "blob_store must carry no query, fragment or user:password (it is stored in the workspace in "
            "clear): pass a SAS token as blob_store_sas, a bearer token as blob_store_token"
        )
    for name, value, pattern, what in (
        ("blob_store_sas", sas, _SAS_RE, "a URL query string such as an Azure SAS token (sv=...&sig=...)"),
        ("blob_store_token", token, _TOKEN_RE, "8-8192 visible ASCII characters, no spaces"),
    ):
        if value is None:
            continue
        if not isinstance(value, str) or not pattern.match(value.lstrip("?") if name == "blob_store_sas" else value):
            raise ConfigError(f"{name} must be {what} (the value is not shown)")
        if name == "blob_store_sas" and "=" not in value:
            raise ConfigError(f"{name} must be {what} (the value is not shown)")
        if scheme == "http" and not _loopback(parts.hostname):
            raise ConfigError(
                f"{name} would travel in clear with every blob request to the http:// blob_store {url!r}: "
                "use an https:// blob_store (plain http:// is allowed only to a loopback address)"
            )


IMAGE_BUILDS = ("kaniko",)


def check_image_settings(image: str | None, registry: str | None, build: str | None) -> None:
    """``image_registry``: where the environments' hash-tagged images live; a deploy looks the
    tag up there and, on a miss, refuses (naming ``modelfleet env build-image``) or, with
    ``image_build="kaniko"``, builds it in the cluster."""
    if registry is not None:
        if not isinstance(registry, str) or not registry.strip("/") or "://" in registry or " " in registry:
            raise ConfigError(
                f"image_registry must be host[:port][/path] with no scheme, e.g. myacr.azurecr.io (got {registry!r})"
            )
        if image is not None:
            raise ConfigError(
                "image names one image for every service and image_registry a registry of hash-tagged ones; "
                "give one of them"
            )
    if build is not None:
        if build not in IMAGE_BUILDS:
            raise ConfigError(f"image_build must be one of {', '.join(IMAGE_BUILDS)} or None (got {build!r})")
        if registry is None:
            raise ConfigError('image_build="kaniko" needs image_registry: the registry the Job pushes to')


def _loopback(host: str | None) -> bool:
    return bool(host) and (host in ("localhost", "::1") or str(host).startswith("127."))


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
        *,
        blob_store_sas: str | None = None,
        blob_store_token: str | None = None,
        image_registry: str | None = None,
        image_build: str | None = None,
    ) -> KubernetesAttachConfiguration:
        return KubernetesAttachConfiguration(
            kubeconfig,
            context,
            namespace,
            blob_store,
            router_uri,
            image,
            image_repository,
            blob_store_sas=blob_store_sas,
            blob_store_token=blob_store_token,
            image_registry=image_registry,
            image_build=image_build,
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
        blob_store_sas: str | None = None,
        blob_store_token: str | None = None,
        overwrite: bool = False,
        image_registry: str | None = None,
        image_build: str | None = None,
    ) -> KubernetesCompute:
        """``blob_store_sas``/``blob_store_token``: a private blob store's credential (see the
        module's docstring), written into a Secret in ``namespace`` now, never into the workspace.
        ``image_registry``/``image_build``: see ``check_image_settings``."""
        config = cls.attach_configuration(
            kubeconfig,
            context,
            namespace,
            blob_store,
            router_uri,
            image,
            image_repository,
            blob_store_sas=blob_store_sas,
            blob_store_token=blob_store_token,
            image_registry=image_registry,
            image_build=image_build,
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
        """Each of the service's pods: its state and why it is not Ready, then its last
        ``num_lines`` lines of output. With the target's upload credential
        (``sdk/k8s_uploads.py``) the pods upload their replica's stdout and stderr to the blob
        store and this reads the workspace's copy (laid by ``control/k8s_uploads.py``, brought
        up to date first), which outlives the pod: pods gone from the cluster follow with
        theirs. A pod with nothing uploaded (no credential, or not yet) shows pods/log."""
        from kubernetes import client

        from modelfleet.control.k8s_router import api_client
        from modelfleet.control.k8s_uploads import sync_log_uploads, uploaded_logs
        from modelfleet.targets.kubernetes.target import pod_logs, service_replicas
        from modelfleet.telemetry.logfiles import tail

        settings = self.settings
        store = self.workspace.store
        if settings.get("blob_store_upload_auth"):
            with contextlib.suppress(Exception):  # the blob store unreachable: what was laid so far
                sync_log_uploads(store, service)
        uploaded = {pod: "".join(tail(files, num_lines)) for pod, files in uploaded_logs(store, service).items()}
        api = api_client(settings.get("kubeconfig"), settings.get("context"))
        try:
            replicas = service_replicas(api, self.namespace, service)
            return pod_logs(client.CoreV1Api(api), self.namespace, replicas, None, num_lines, uploaded)
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
        self,
        image: str,
        replicas: int = 2,
        load_balancer_type: str = "LoadBalancer",
        port: int | None = None,
        *,
        ssl_enabled: bool = False,
        ssl_cert_pem_file: str | None = None,
        ssl_key_pem_file: str | None = None,
        ssl_cname: str | None = None,
        ingress_class: str | None = None,
    ) -> builtins.list[str]:
        """Create (or update) the cluster's router: ServiceAccount, Role (this target's services'
        Secrets by name), RoleBinding, Deployment and Service (port 443 with TLS, else 80, unless
        ``port``); with ``ssl_enabled``, a ``kubernetes.io/tls`` Secret from v1's certificate
        files that the router serves HTTPS with; with ``ingress_class`` (and
        ``load_balancer_type="ClusterIP"``), an Ingress for host ``ssl_cname``. The scoring URI
        becomes https and ``ssl_cname`` when given. Returns "Kind/name" of each object."""
        from kubernetes.utils.create_from_yaml import create_from_yaml_single_item

        from modelfleet.targets.kubernetes import manifests as m
        from modelfleet.targets.kubernetes.router_install import router_uri, tls_material, upsert_object

        pair = tls_material(ssl_enabled, ssl_cert_pem_file, ssl_key_pem_file)
        port = port if port is not None else (443 if pair else 80)
        source = m.RouterSource(
            image=image,
            namespace=self.namespace,
            replicas=replicas,
            load_balancer_type=load_balancer_type,
            secret_names=[m.secret_name(s) for s in self._services()],
            port=port,
            tls_digest=m.tls_digest(pair[0]) if pair else None,
            ingress_class=ingress_class,
            ingress_host=ssl_cname,
        )
        api = self._api()
        try:
            done = []
            objects = ([m.router_tls_secret(self.namespace, *pair)] if pair else []) + m.router_objects(source)
            for obj in objects:
                upsert_object(api, obj, create_from_yaml_single_item)
                done.append(f"{obj['kind']}/{obj['metadata']['name']}")
        finally:
            api.close()
        settings = self.settings
        uri = router_uri(settings.get("router_uri"), pair is not None, ssl_cname, port, ingress_class is not None)
        if uri and uri != settings.get("router_uri"):
            settings["router_uri"] = uri
            self.workspace.store.computes.attach(self.name, KIND, settings, overwrite=True)
        return done

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
            every = m.RouterSource(
                image="-",
                namespace=self.namespace,
                load_balancer_type="ClusterIP",
                tls_digest="-",
                ingress_class="any",
                ingress_host="any.example",
            )
            objects = [m.router_tls_secret(self.namespace, b"", b""), *m.router_objects(every)]
            return [f"{o['kind']}/{o['metadata']['name']}" for o in reversed(objects) if delete_object(api, o)]
        finally:
            api.close()

    def set_blob_store_credential(self, sas: str | None = None, token: str | None = None) -> str:
        """Write (or, with neither, remove) the blob store's credential Secret in the cluster;
        returns the Secret's name. Pods started from now on fetch with it."""
        settings = self.settings
        if not settings.get("blob_store"):
            raise ConfigError(f"compute target {self.name} has no blob_store; attach it again with blob_store=URL")
        check_blob_store(settings.get("blob_store"), sas, token)
        name = _write_blob_secret(settings, sas, token)
        auth = KubernetesAttachConfiguration(
            None, blob_store=settings.get("blob_store"), blob_store_sas=sas, blob_store_token=token
        ).blob_store_auth
        settings.pop("blob_store_auth", None)
        if auth:
            settings["blob_store_auth"] = auth
        self.workspace.store.computes.attach(self.name, KIND, settings, overwrite=True)
        return name

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
        settings = attach_configuration.settings()
        c = attach_configuration
        if c.blob_store_auth:
            validate_compute_name(name)
            if not overwrite and name in {r.name for r in workspace.store.computes.list()}:
                raise Conflict(
                    f'compute target "{name}" is already attached to workspace "{workspace.name}"; '
                    "detach it first, choose another name or pass overwrite=True"
                )
            _write_blob_secret(settings, c.blob_store_sas, c.blob_store_token)  # before it is recorded
        workspace.store.computes.attach(name, KIND, settings, overwrite=overwrite)
        return KubernetesCompute(workspace, name)

    @staticmethod
    def list(workspace: WorkspaceBase) -> list[KubernetesCompute]:
        return KubernetesCompute.list(workspace)


def _write_blob_secret(settings: dict[str, Any], sas: str | None, token: str | None) -> str:
    """Create or replace the blob store's credential Secret (delete it when both are None)."""
    from kubernetes import client

    from modelfleet.control.k8s_router import api_client
    from modelfleet.targets.kubernetes import manifests as m
    from modelfleet.targets.kubernetes.api import delete_if_present, upsert

    ns, store = str(settings.get("namespace") or "default"), str(settings["blob_store"])
    body = m.blob_secret(store, ns, sas, token)
    name = body["metadata"]["name"]
    api = api_client(settings.get("kubeconfig"), settings.get("context"))
    try:
        core = client.CoreV1Api(api)
        what = f"Secret {ns}/{name} (the blob store's credential)"
        if not (sas or token):
            delete_if_present(what, lambda: core.delete_namespaced_secret(name, ns))
            return name
        upsert(
            what,
            lambda: core.create_namespaced_secret(ns, body),
            lambda: core.replace_namespaced_secret(name, ns, body),
        )
        return name
    finally:
        api.close()


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
