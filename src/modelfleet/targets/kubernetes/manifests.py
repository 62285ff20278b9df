"""The objects that run services and the router in a Kubernetes cluster, as plain dicts.

Pure functions, no client and no cluster: ``service_objects`` and ``router_objects`` turn what
the workspace knows (a ``DeploySpec``, the models' files and the snapshot by content hash, the
keys) into objects the official client can create, and ``modelfleet k8s manifests`` can print
as YAML for GitOps. Only API versions that Kubernetes 1.20 and 1.37 both serve are used:
``v1``, ``apps/v1``, ``rbac.authorization.k8s.io/v1`` and ``coordination.k8s.io/v1``.

Per service (name ``S``)::

    Deployment S           the replicas; rolling update with maxUnavailable 0, readiness-gated;
                           the replica container's MODELFLEET_REPLICA_SECRET comes from
                           S-keys' replicaSecret (secretKeyRef)
    Secret     S-keys      primaryKey, secondaryKey, replicaSecret (the router reads it by
                           name, and sends replicaSecret to the service's pods, which refuse
                           every request but ``GET /`` without it: no other pod can score them)
    ConfigMap  S-config    settings.json (the deploy spec, no keys), layout.json (the files
                           the init container fetches by content hash and where they go)

Per blob store (the URL the init containers fetch from; shared by every service using it)::

    Secret     modelfleet-blobs-<digest of the URL>   sas and/or token: the private store's
                           credential, written by ``KubernetesCompute.attach(...,
                           blob_store_sas=... | blob_store_token=...)`` and never kept in the
                           workspace; the init container reads it through optional
                           secretKeyRefs (a public store has no Secret) as
                           $MODELFLEET_BLOB_SAS / $MODELFLEET_BLOB_TOKEN (``fetch.py``).
                           Printed manifests leave it out (``blob_secret_command`` says how
                           to create it).

The pod lays the app out as the local target does (``control/layout.py``)::

    /var/azureml-app/                    AML_APP_ROOT, an emptyDir filled by the init container
      azureml-models/<name>/<version>/   AZUREML_MODEL_DIR (one model) or azureml-models (several)
      <source name>/<entry script>       the source snapshot

Every pod reads its own IP from the downward API and binds it (``$(MODELFLEET_POD_IP)``), which
a real pod and the test suite's node stand-in (one loopback address per pod) both honour.

``replicaSecret`` is one per service and must not change while its pods run: a pod reads it
when it starts, the router when it reads the Secret, and a pod and router that disagree mean
403 for every request. The Kubernetes target makes it once and reuses the Secret's value for
every later generation (``KubernetesTarget.replica_secret``); the pod template carries a
digest of it (``modelfleet.io/replica-secret``), so that pods started with another value are
rolled rather than left refusing the router. Where ``ServiceSource`` has none (printed
manifests, which hold no secret unless asked) the Secret is printed without it and the pods
wait (the kubelet says the key is missing) until one is put there, e.g.
``kubectl patch secret S-keys -p '{"stringData": {"replicaSecret": "<32+ random characters>"}}'``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelfleet.errors import ConfigError
from modelfleet.spec import DeploySpec, validate_model_name, validate_service_name
from modelfleet.targets.kubernetes.fetch import SAS_ENV, TOKEN_ENV
from modelfleet.targets.kubernetes.router_scale import ANNOTATION as ROUTER_SCALE_ANNOTATION
from modelfleet.targets.kubernetes.router_scale import RouterScaleSettings
from modelfleet.targets.kubernetes.ship import SAS_ENV as UPLOAD_SAS_ENV
from modelfleet.targets.kubernetes.ship import TOKEN_ENV as UPLOAD_TOKEN_ENV

MANAGED_BY = {"app.kubernetes.io/managed-by": "modelfleet"}
SERVICE_LABEL = "modelfleet.io/service"
COMPONENT_LABEL = "app.kubernetes.io/component"
CONFIG_HASH_ANNOTATION = "modelfleet.io/config-hash"
REPLICA_SECRET_ANNOTATION = "modelfleet.io/replica-secret"  # a digest of it, never the secret
# when the upload credential was last set (never its value): setting it again rolls the pods that
# upload, whose sidecar reads the Secret at start (``sdk/k8s_uploads.py``)
UPLOAD_CREDENTIAL_ANNOTATION = "modelfleet.io/upload-credential-set"
REPLICA_SECRET_KEY = "replicaSecret"  # in Secret S-keys
REPLICA_SECRET_ENV = "MODELFLEET_REPLICA_SECRET"  # replica/config.py SECRET_ENV
_REPLICA_SECRET_RE = re.compile(r"^[\x21-\x7e]{16,512}$")  # what the router's Upstream accepts
TAGS_ANNOTATION = "modelfleet.io/tags"
DESCRIPTION_ANNOTATION = "modelfleet.io/description"
AZURE_INTERNAL_LB_ANNOTATION = "service.beta.kubernetes.io/azure-load-balancer-internal"

ROUTER_NAME = "modelfleet-router"
ROUTER_LEASE = "modelfleet-router"
LOAD_BALANCER_TYPES = ("LoadBalancer", "InternalLoadBalancer", "ClusterIP")
# The router's TLS: a kubernetes.io/tls Secret (tls.crt, tls.key) mounted into its pods, and
# the certificate's digest on the pod template, so a new certificate rolls the pods.
ROUTER_TLS_SECRET = "modelfleet-router-tls"
ROUTER_TLS_MOUNT = "/etc/modelfleet-tls"
TLS_DIGEST_ANNOTATION = "modelfleet.io/tls-certificate"
# ingress-nginx's way to say the backend speaks HTTPS; other controllers have their own
INGRESS_BACKEND_HTTPS_ANNOTATION = "nginx.ingress.kubernetes.io/backend-protocol"
_DNS_NAME_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)+$")

BLOB_STORE_ANNOTATION = "modelfleet.io/blob-store"
BLOB_SAS_KEY = "sas"  # in the blob store's Secret: a query string appended to each blob URL
BLOB_TOKEN_KEY = "token"  # ... and a bearer token sent with each blob request

APP_ROOT = "/var/azureml-app"
DATA_MOUNT = "/var/modelfleet-data"  # collected model data, shipped by the "ship" sidecar (ship.py)
TELEMETRY_PREFIX = "telemetry"  # under the blob store: <prefix>/<service>/data/...
LOG_MOUNT = "/var/modelfleet-logs"  # the replica's output (replica/logtee.py), shipped by "ship"
LOG_TEE_ENV = "MODELFLEET_LOG_TEE"
SHIP_COMMAND = ["python", "-m", "modelfleet.targets.kubernetes.ship"]
CONFIG_MOUNT = "/etc/modelfleet"
MODELS_FOLDER = "azureml-models"
REPLICA_PORT = 5001
ROUTER_PORT = 8080
ROUTER_PEER_PORT = 8081  # requests forwarded between router pods (forward.py's PEER_PORT)
ROUTER_GRPC_PORT = 8001  # the Open Inference Protocol's gRPC API (router/grpc_front.py), Triton's port
POD_IP_ENV = "MODELFLEET_POD_IP"

# The init container's command line: the fetcher reads layout.json from the ConfigMap and
# writes every file, checked against its digest, under --dest.
FETCH_COMMAND = ["python", "-m", "modelfleet.targets.kubernetes.fetch"]
REPLICA_COMMAND = ["python", "-m", "modelfleet.replica"]
ROUTER_COMMAND = ["python", "-m", "modelfleet", "router", "--kubernetes"]
# A replica pod being deleted keeps serving this long before its SIGTERM: every router drops a
# Terminating pod from its table as soon as its watch says so, and anything still on its way
# (a router whose watch lags, a request already sent) is answered rather than refused. An exec
# hook, not preStop's own ``sleep`` (1.30 and later): 1.20 would drop that field.
PRE_STOP_S = 3
PRE_STOP_COMMAND = ["python", "-c", f"import time; time.sleep({PRE_STOP_S})"]


@dataclass(frozen=True)
class ModelFile:
    """One file of a registered model: its path inside the model and its blob digest."""

    relpath: str
    digest: str


@dataclass(frozen=True)
class ModelLayout:
    name: str
    version: int
    files: tuple[ModelFile, ...]

    def __post_init__(self) -> None:
        validate_model_name(self.name)
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ConfigError(f"model version must be an integer >= 1 (got {self.version!r})")


@dataclass(frozen=True)
class ServiceSource:
    """What one service's objects are made from.

    ``image`` is the replica runtime image for the service's environment (tagged with the
    environment's hash); ``blob_store`` is the URL the init container fetches blobs from.
    """

    name: str
    deploy: DeploySpec
    image: str
    entry_script: str
    blob_store: str
    models: tuple[ModelLayout, ...] = ()
    snapshot: str | None = None
    source_name: str = "source"
    environment_variables: Mapping[str, str] = field(default_factory=dict)
    primary_key: str | None = field(default=None, repr=False)
    secondary_key: str | None = field(default=None, repr=False)
    namespace: str = "default"
    # What the router sends this service's pods (Secret S-keys, replicaSecret); None: left out
    replica_secret: str | None = field(default=None, repr=False)
    # the target has an upload credential: the replica's output is uploaded ("ship", LOG_MOUNT)
    ship_logs: bool = False
    upload_credential_set: str | None = None  # when it was set (the target's blob_store_upload_set)

    @property
    def ships(self) -> bool:
        """Whether its pods have the "ship" sidecar: collected data, or the log, to upload."""
        return self.deploy.collect_model_data or self.ship_logs

    def __post_init__(self) -> None:
        validate_service_name(self.name)
        if self.replica_secret is not None and not valid_replica_secret(self.replica_secret):
            raise ConfigError("replica_secret must be 16-512 characters of visible ASCII (no spaces)")
        if self.name == ROUTER_NAME:
            raise ConfigError(f"service name {ROUTER_NAME!r} is the router's own Deployment; choose another")
        for what in ("image", "entry_script", "blob_store", "source_name"):
            if not isinstance(getattr(self, what), str) or not getattr(self, what):
                raise ConfigError(f"{what} must be a non-empty string (got {getattr(self, what)!r})")
        if "/" in self.source_name or self.source_name in (".", "..", MODELS_FOLDER):
            raise ConfigError(f"source_name must be one folder name (got {self.source_name!r})")

    @property
    def effective_namespace(self) -> str:
        return self.deploy.namespace or self.namespace


@dataclass(frozen=True)
class RouterSource:
    """The cluster's router: image, namespace, how it is reached, and the Secrets it may read."""

    image: str
    namespace: str = "default"
    replicas: int = 2
    load_balancer_type: str = "LoadBalancer"
    secret_names: Sequence[str] = ()
    port: int = 80
    max_replicas: int = 10  # the Lease holder scales the router out to this (router_scale.py)
    # TLS: the digest of the certificate in Secret ROUTER_TLS_SECRET (router_tls_secret makes
    # it); None serves plain HTTP. An Ingress: its class and host (v1's ssl_cname).
    tls_digest: str | None = None
    ingress_class: str | None = None
    ingress_host: str | None = None

    def __post_init__(self) -> None:
        if self.ingress_class is not None:
            if not isinstance(self.ingress_class, str) or not _DNS_NAME_RE.match(self.ingress_class + ".x"):
                raise ConfigError(
                    f"ingress_class must be an IngressClass name, e.g. nginx (got {self.ingress_class!r})"
                )
            if self.load_balancer_type != "ClusterIP":
                raise ConfigError(
                    f'an Ingress goes with load_balancer_type="ClusterIP" (got {self.load_balancer_type!r}): '
                    "the Ingress is the way in"
                )
            if self.ingress_host is None:
                raise ConfigError("an Ingress needs its host: ssl_cname, e.g. models.example.com")
        if self.ingress_host is not None and (
            not isinstance(self.ingress_host, str) or not _DNS_NAME_RE.match(self.ingress_host)
        ):
            raise ConfigError(f"ssl_cname must be a DNS name such as models.example.com (got {self.ingress_host!r})")
        if self.load_balancer_type not in LOAD_BALANCER_TYPES:
            raise ConfigError(
                f"load_balancer_type must be one of {', '.join(LOAD_BALANCER_TYPES)} (got {self.load_balancer_type!r})"
            )
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int) or self.replicas < 1:
            raise ConfigError(f"router replicas must be an integer >= 1 (got {self.replicas!r})")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ConfigError(f"router port must be 1-65535 (got {self.port!r})")


def secret_name(service: str) -> str:
    return f"{service}-keys"


def new_replica_secret() -> str:
    """32 random bytes as urlsafe text (43 characters)."""
    return secrets.token_urlsafe(32)


def valid_replica_secret(value: str) -> bool:
    return bool(_REPLICA_SECRET_RE.match(value))


def replica_secret_digest(value: str) -> str:
    return hashlib.sha256(b"modelfleet-replica-secret\0" + value.encode()).hexdigest()[:16]


def blob_secret_name(blob_store: str) -> str:
    """The Secret holding the credential of the blob store at that URL (one per store)."""
    return f"modelfleet-blobs-{hashlib.sha256(blob_store.rstrip('/').encode()).hexdigest()[:12]}"


def _credential_secret(
    name: str, component: str, blob_store: str, namespace: str, sas: str | None, token: str | None
) -> dict[str, Any]:
    data = {k: v for k, v in ((BLOB_SAS_KEY, (sas or "").lstrip("?")), (BLOB_TOKEN_KEY, token)) if v}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(
            name, namespace, {**MANAGED_BY, COMPONENT_LABEL: component}, {BLOB_STORE_ANNOTATION: blob_store.rstrip("/")}
        ),
        "type": "Opaque",
        "stringData": data,
    }


def _credential_secret_command(name: str, component: str, namespace: str, key: str, variable: str) -> str:
    return (
        f'kubectl -n {namespace} create secret generic {name} --from-literal={key}="${variable}" '
        f"&& kubectl -n {namespace} label secret {name} app.kubernetes.io/managed-by=modelfleet "
        f"{COMPONENT_LABEL}={component}"
    )


def blob_secret(blob_store: str, namespace: str, sas: str | None = None, token: str | None = None) -> dict[str, Any]:
    """The blob store's credential Secret (``BLOB_SAS_KEY``/``BLOB_TOKEN_KEY``); the caller
    validated the values (``sdk/compute.py``)."""
    return _credential_secret(blob_secret_name(blob_store), "blob-store", blob_store, namespace, sas, token)


def blob_secret_command(blob_store: str, namespace: str, key: str) -> str:
    """How a GitOps user creates the blob store's Secret themselves (the value from $VAR)."""
    return _credential_secret_command(
        blob_secret_name(blob_store), "blob-store", namespace, key, f"BLOB_STORE_{key.upper()}"
    )


def upload_secret_name(blob_store: str) -> str:
    """The Secret holding the pods' write credential for the blob store at that URL: what the
    "ship" sidecar uploads collected data with (``ship.py``); apart from the read one, which
    every init container gets."""
    return f"modelfleet-upload-{hashlib.sha256(blob_store.rstrip('/').encode()).hexdigest()[:12]}"


def upload_secret(blob_store: str, namespace: str, sas: str | None = None, token: str | None = None) -> dict[str, Any]:
    """The write credential's Secret (``BLOB_SAS_KEY``/``BLOB_TOKEN_KEY``); the caller
    validated the values (``upload_credential.py``)."""
    return _credential_secret(upload_secret_name(blob_store), "blob-upload", blob_store, namespace, sas, token)


def upload_secret_command(blob_store: str, namespace: str, key: str) -> str:
    """How a GitOps user creates the upload Secret themselves (the value from $VAR)."""
    return _credential_secret_command(
        upload_secret_name(blob_store), "blob-upload", namespace, key, f"UPLOAD_{key.upper()}"
    )


def telemetry_prefix(service: str) -> str:
    """Where a service's pods upload collected model data, under the blob store."""
    return f"{TELEMETRY_PREFIX}/{service}/data"


def logs_prefix(service: str) -> str:
    """Where a service's pods upload the replica's output, under the blob store."""
    return f"{TELEMETRY_PREFIX}/{service}/logs"


def _ship_container(src: ServiceSource, grace_s: int) -> dict[str, Any]:
    """The sidecar that uploads the replica's collected data (``ship.py``)."""
    name = upload_secret_name(src.blob_store)
    credential = [
        {"name": env, "valueFrom": {"secretKeyRef": {"name": name, "key": key, "optional": True}}}
        for env, key in ((UPLOAD_SAS_ENV, BLOB_SAS_KEY), (UPLOAD_TOKEN_ENV, BLOB_TOKEN_KEY))
    ]
    return {
        "name": "ship",
        "image": src.image,
        "command": SHIP_COMMAND,
        "args": [
            "--blob-store",
            src.blob_store,
            *(["--prefix", telemetry_prefix(src.name), "--dir", DATA_MOUNT] if src.deploy.collect_model_data else []),
            *(["--logs-prefix", logs_prefix(src.name), "--logs-dir", LOG_MOUNT] if src.ship_logs else []),
            "--replica",
            f"http://$({POD_IP_ENV}):{REPLICA_PORT}/",
            "--grace",
            str(max(1, grace_s - 2)),
        ],
        "env": [{"name": POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}, *credential],
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
        "volumeMounts": [
            *([{"name": "data", "mountPath": DATA_MOUNT}] if src.deploy.collect_model_data else []),
            *([{"name": "logs", "mountPath": LOG_MOUNT}] if src.ship_logs else []),
        ],
    }


def _blob_credential_env(blob_store: str) -> list[dict[str, Any]]:
    name = blob_secret_name(blob_store)
    return [
        {"name": env, "valueFrom": {"secretKeyRef": {"name": name, "key": key, "optional": True}}}
        for env, key in ((SAS_ENV, BLOB_SAS_KEY), (TOKEN_ENV, BLOB_TOKEN_KEY))
    ]


def config_map_name(service: str) -> str:
    return f"{service}-config"


def service_labels(service: str) -> dict[str, str]:
    return {**MANAGED_BY, SERVICE_LABEL: service, COMPONENT_LABEL: "replica"}


# --------------------------------------------------------------------------- per service


def service_objects(src: ServiceSource) -> list[dict[str, Any]]:
    """Secret, ConfigMap and Deployment of one service, in the order to create them."""
    config = _config_map(src)
    return [_secret(src), config, _deployment(src, _digest(config["data"]))]


def _meta(
    name: str, namespace: str, labels: Mapping[str, str], annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def _annotations(deploy: DeploySpec) -> dict[str, str]:
    # Tag keys are free text in v1, and label/annotation keys are not, so tags travel as one
    # JSON annotation that any key survives.
    out: dict[str, str] = {}
    if deploy.tags:
        out[TAGS_ANNOTATION] = json.dumps(deploy.tags, sort_keys=True)
    if deploy.description:
        out[DESCRIPTION_ANNOTATION] = deploy.description
    return out


def _secret(src: ServiceSource) -> dict[str, Any]:
    pairs = (
        ("primaryKey", src.primary_key),
        ("secondaryKey", src.secondary_key),
        (REPLICA_SECRET_KEY, src.replica_secret),
    )
    data = {k: v for k, v in pairs if v}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(secret_name(src.name), src.effective_namespace, service_labels(src.name)),
        "type": "Opaque",
        "stringData": data,
    }


def layout(src: ServiceSource) -> dict[str, Any]:
    """The files the init container fetches, by digest, relative to the app root."""
    files = [
        {"path": f"{MODELS_FOLDER}/{m.name}/{m.version}/{f.relpath}", "digest": f.digest}
        for m in src.models
        for f in m.files
    ]
    return {"files": files, "snapshot": src.snapshot, "source_name": src.source_name}


def _config_map(src: ServiceSource) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(config_map_name(src.name), src.effective_namespace, service_labels(src.name)),
        "data": {
            "settings.json": json.dumps(src.deploy.to_dict(include_keys=False), sort_keys=True),
            "layout.json": json.dumps(layout(src), sort_keys=True),
        },
    }


def _digest(data: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def resources(deploy: DeploySpec) -> dict[str, dict[str, str]]:
    """cpu_cores/memory_gb as requests, the ``*_limit`` fields as limits, gpu_cores as nvidia.com/gpu.

    CPU in millicores and memory in MiB (v1's memory_gb is GiB-based: 0.5 -> 512Mi). An
    extended resource such as a GPU is set as a limit; Kubernetes makes the request equal.
    """
    out: dict[str, dict[str, str]] = {"requests": {"cpu": _cpu(deploy.cpu_cores), "memory": _mem(deploy.memory_gb)}}
    limits: dict[str, str] = {}
    if deploy.cpu_cores_limit is not None:
        limits["cpu"] = _cpu(deploy.cpu_cores_limit)
    if deploy.memory_gb_limit is not None:
        limits["memory"] = _mem(deploy.memory_gb_limit)
    if deploy.gpu_cores:
        limits["nvidia.com/gpu"] = str(deploy.gpu_cores)
    if limits:
        out["limits"] = limits
    return out


def _cpu(cores: float) -> str:
    return f"{max(1, math.ceil(cores * 1000 - 1e-9))}m"


def _mem(gb: float) -> str:
    return f"{max(1, math.ceil(gb * 1024 - 1e-9))}Mi"


def probes(deploy: DeploySpec) -> dict[str, dict[str, Any]]:
    """v1's liveness settings as the liveness probe and, without the initial delay, readiness.

    Kubernetes requires a liveness probe's successThreshold to be 1, so v1's
    success_threshold applies to readiness only. Readiness starts at once: v1's 310 s initial
    delay guards slow init() from being killed, not from being routed to once it answers.
    """
    lv = deploy.liveness
    http = {"httpGet": {"path": "/", "port": "http"}, "timeoutSeconds": lv.timeout_seconds}
    return {
        "livenessProbe": {
            **http,
            "initialDelaySeconds": lv.initial_delay_seconds,
            "periodSeconds": lv.period_seconds,
            "successThreshold": 1,
            "failureThreshold": lv.failure_threshold,
        },
        "readinessProbe": {
            **http,
            "periodSeconds": lv.period_seconds,
            "successThreshold": lv.success_threshold,
            "failureThreshold": lv.failure_threshold,
        },
    }


def _pod_ip_env() -> list[dict[str, Any]]:
    return [
        {"name": POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "MODELFLEET_REPLICA_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]


def replica_environment(src: ServiceSource) -> dict[str, str]:
    """The replica's variables, as ``control/layout.py`` sets them for a local replica."""
    source_dir = f"{APP_ROOT}/{src.source_name}"
    models_root = f"{APP_ROOT}/{MODELS_FOLDER}"
    model_dir = f"{models_root}/{src.models[0].name}/{src.models[0].version}" if len(src.models) == 1 else models_root
    env = {
        "AML_APP_ROOT": APP_ROOT,
        "AZUREML_MODEL_DIR": model_dir,
        "AZUREML_SOURCE_DIRECTORY": source_dir,
        "AZUREML_ENTRY_SCRIPT": src.entry_script,
        "SCORING_TIMEOUT_MS": str(src.deploy.scoring_timeout_ms),
        "WORKER_COUNT": str(src.deploy.replica_max_concurrent_requests),
        "PYTHONUNBUFFERED": "1",
        # the service's models: named in collected records (as control/layout.py sets it)
        "MODELFLEET_MODELS": ",".join(f"{ml.name}:{ml.version}" for ml in src.models) or f"{src.name}:0",
    }
    if src.deploy.collect_model_data:  # the replica records inputs and predictions; "ship" uploads them
        env["MODELFLEET_DATA_DIR"] = DATA_MOUNT
    if src.ship_logs:  # the replica copies its output there too (replica/logtee.py); "ship" uploads it
        env[LOG_TEE_ENV] = LOG_MOUNT
    if src.deploy.max_batch_size > 1:  # dynamic batching (replica/batching.py, replica/config.py)
        env["MODELFLEET_MAX_BATCH_SIZE"] = str(src.deploy.max_batch_size)
        env["MODELFLEET_MAX_BATCH_DELAY_MS"] = str(src.deploy.max_batch_delay_ms)
    env.update(src.environment_variables)
    return env


def _replica_secret_env(service: str) -> dict[str, Any]:
    ref = {"name": secret_name(service), "key": REPLICA_SECRET_KEY}
    return {"name": REPLICA_SECRET_ENV, "valueFrom": {"secretKeyRef": ref}}


def _deployment(src: ServiceSource, config_hash: str) -> dict[str, Any]:
    deploy = src.deploy
    ns = src.effective_namespace
    labels = service_labels(src.name)
    selector = {SERVICE_LABEL: src.name, **MANAGED_BY}
    env = replica_environment(src)
    env.pop(REPLICA_SECRET_ENV, None)  # the Secret's, never a variable of the service's
    template_annotations = {CONFIG_HASH_ANNOTATION: config_hash}
    if src.replica_secret is not None:
        template_annotations[REPLICA_SECRET_ANNOTATION] = replica_secret_digest(src.replica_secret)
    if src.ships and src.upload_credential_set:
        template_annotations[UPLOAD_CREDENTIAL_ANNOTATION] = src.upload_credential_set
    volumes = [
        {"name": "app", "emptyDir": {}},
        {"name": "config", "configMap": {"name": config_map_name(src.name)}},
    ]
    init = {
        "name": "fetch",
        "image": src.image,
        "command": FETCH_COMMAND,
        "args": ["--blob-store", src.blob_store, "--layout", f"{CONFIG_MOUNT}/layout.json", "--dest", APP_ROOT],
        "env": _blob_credential_env(src.blob_store),
        # why a fetch failed (its last line on stderr) shows in the pod's status, so in service.error
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": resources(deploy),
        "volumeMounts": [
            {"name": "app", "mountPath": APP_ROOT},
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        ],
    }
    replica = {
        "name": "replica",
        "image": src.image,
        "command": REPLICA_COMMAND,
        "args": [
            "--entry_script",
            f"{APP_ROOT}/{src.source_name}/{src.entry_script}",
            "--model_dir",
            env["AZUREML_MODEL_DIR"],
            "--max-concurrent",
            str(deploy.replica_max_concurrent_requests),
            "--host",
            f"$({POD_IP_ENV})",
            "--port",
            str(REPLICA_PORT),
            "--access-log",
        ],
        "workingDir": APP_ROOT,
        "env": [{"name": k, "value": v} for k, v in env.items()] + _pod_ip_env() + [_replica_secret_env(src.name)],
        "ports": [{"name": "http", "containerPort": REPLICA_PORT, "protocol": "TCP"}],
        "resources": resources(deploy),
        **probes(deploy),
        "lifecycle": {"preStop": {"exec": {"command": PRE_STOP_COMMAND}}},
        "volumeMounts": [{"name": "app", "mountPath": APP_ROOT}]
        + ([{"name": "data", "mountPath": DATA_MOUNT}] if deploy.collect_model_data else [])
        + ([{"name": "logs", "mountPath": LOG_MOUNT}] if src.ship_logs else []),
    }
    # The grace period counts from the deletion: the preStop wait, then the replica's own drain
    # after SIGTERM (it stops accepting and answers what it holds, up to the scoring timeout).
    grace = PRE_STOP_S + math.ceil(deploy.scoring_timeout_ms / 1000) + 5
    containers = [replica]
    if deploy.collect_model_data:
        volumes.append({"name": "data", "emptyDir": {}})
    if src.ship_logs:
        volumes.append({"name": "logs", "emptyDir": {}})
    if src.ships:
        containers.append(_ship_container(src, grace))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(src.name, ns, labels, _annotations(deploy)),
        "spec": {
            "replicas": deploy.initial_replicas(),
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "revisionHistoryLimit": 3,
            "template": {
                "metadata": {"labels": labels, "annotations": template_annotations},
                "spec": {
                    "automountServiceAccountToken": False,  # replicas never call the API
                    "terminationGracePeriodSeconds": grace,
                    "initContainers": [init],
                    "containers": containers,
                    "volumes": volumes,
                },
            },
        },
    }


# --------------------------------------------------------------------------- the router


def router_labels() -> dict[str, str]:
    return {**MANAGED_BY, COMPONENT_LABEL: "router", "app.kubernetes.io/name": ROUTER_NAME}


def router_rules(secret_names: Sequence[str]) -> list[dict[str, Any]]:
    """What the router needs and no more. Secrets by name only: RBAC cannot filter by label,
    so the Role lists each service's Secret and must be updated as services come and go."""
    rules: list[dict[str, Any]] = [
        {"apiGroups": [""], "resources": ["pods", "configmaps"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        # One router pod holds the Lease and is the one that scales. create cannot be limited
        # by name (the object does not exist yet); the rest can.
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [ROUTER_LEASE],
            "verbs": ["get", "update", "patch"],
        },
    ]
    names = sorted(set(secret_names))
    if names:  # an empty resourceNames list would grant every Secret
        rules.append({"apiGroups": [""], "resources": ["secrets"], "resourceNames": names, "verbs": ["get"]})
    return rules


def router_objects(src: RouterSource) -> list[dict[str, Any]]:
    """ServiceAccount, Role, RoleBinding, Deployment and Service of the router, then its Ingress
    when one is named (the TLS Secret is ``router_tls_secret``, made apart: it holds the key)."""
    ns = src.namespace
    labels = router_labels()
    meta = _meta(ROUTER_NAME, ns, labels)
    service_annotations = (
        {AZURE_INTERNAL_LB_ANNOTATION: "true"} if src.load_balancer_type == "InternalLoadBalancer" else {}
    )
    scale = RouterScaleSettings(min_replicas=src.replicas, max_replicas=max(src.replicas, src.max_replicas))
    tls = src.tls_digest is not None
    port_name = "https" if tls else "http"
    probe = {"path": "/", "port": port_name, **({"scheme": "HTTPS"} if tls else {})}
    http = {"httpGet": probe, "timeoutSeconds": 2}
    tls_args = ["--tls-cert", f"{ROUTER_TLS_MOUNT}/tls.crt", "--tls-key", f"{ROUTER_TLS_MOUNT}/tls.key"]
    tls_mounts = {"volumeMounts": [{"name": "tls", "mountPath": ROUTER_TLS_MOUNT, "readOnly": True}]}
    tls_volumes = {"volumes": [{"name": "tls", "secret": {"secretName": ROUTER_TLS_SECRET}}]}
    template_annotations = {"annotations": {TLS_DIGEST_ANNOTATION: src.tls_digest}} if tls else {}
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": router_rules(src.secret_names),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ROUTER_NAME},
            "subjects": [{"kind": "ServiceAccount", "name": ROUTER_NAME, "namespace": ns}],
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {**meta, "annotations": {ROUTER_SCALE_ANNOTATION: scale.annotation()}},
            "spec": {
                "replicas": src.replicas,
                "selector": {"matchLabels": {COMPONENT_LABEL: "router", **MANAGED_BY}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {"labels": labels, **template_annotations},
                    "spec": {
                        "serviceAccountName": ROUTER_NAME,
                        "containers": [
                            {
                                "name": "router",
                                "image": src.image,
                                "command": ROUTER_COMMAND,
                                "args": [
                                    "--namespace",
                                    ns,
                                    "--host",
                                    f"$({POD_IP_ENV})",
                                    "--port",
                                    str(ROUTER_PORT),
                                    "--peer-port",
                                    str(ROUTER_PEER_PORT),
                                    "--grpc-port",
                                    str(ROUTER_GRPC_PORT),
                                    *(tls_args if tls else []),
                                ],
                                "env": [
                                    *_pod_ip_env(),
                                    {"name": "MODELFLEET_NAMESPACE", "value": ns},
                                    {"name": "PYTHONUNBUFFERED", "value": "1"},
                                ],
                                "ports": [
                                    {"name": port_name, "containerPort": ROUTER_PORT, "protocol": "TCP"},
                                    {"name": "peer", "containerPort": ROUTER_PEER_PORT, "protocol": "TCP"},
                                    {"name": "grpc", "containerPort": ROUTER_GRPC_PORT, "protocol": "TCP"},
                                ],
                                "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
                                "livenessProbe": {**http, "periodSeconds": 10, "failureThreshold": 3},
                                "readinessProbe": {**http, "periodSeconds": 2, "failureThreshold": 2},
                                **(tls_mounts if tls else {}),
                            }
                        ],
                        **(tls_volumes if tls else {}),
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(ROUTER_NAME, ns, labels, service_annotations),
            "spec": {
                "type": "ClusterIP" if src.load_balancer_type == "ClusterIP" else "LoadBalancer",
                "selector": {COMPONENT_LABEL: "router", **MANAGED_BY},
                "ports": [
                    {"name": port_name, "port": src.port, "targetPort": port_name, "protocol": "TCP"},
                    {"name": "grpc", "port": ROUTER_GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                ],
            },
        },
    ]
    if src.ingress_class is not None:
        objects.append(_router_ingress(src, labels))
    return objects


def _router_ingress(src: RouterSource, labels: Mapping[str, str]) -> dict[str, Any]:
    """The Ingress the user names (its class) for host ``ssl_cname``, to the router's Service;
    with TLS it presents the router's certificate too, and reaches the router over HTTPS."""
    host = src.ingress_host
    backend = {"service": {"name": ROUTER_NAME, "port": {"number": src.port}}}
    spec: dict[str, Any] = {
        "ingressClassName": src.ingress_class,
        "rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}],
    }
    annotations = {}
    if src.tls_digest is not None:
        spec["tls"] = [{"hosts": [host], "secretName": ROUTER_TLS_SECRET}]
        annotations[INGRESS_BACKEND_HTTPS_ANNOTATION] = "HTTPS"
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _meta(ROUTER_NAME, src.namespace, labels, annotations),
        "spec": spec,
    }


def router_tls_secret(namespace: str, cert_pem: bytes, key_pem: bytes) -> dict[str, Any]:
    """The router's certificate and key as a ``kubernetes.io/tls`` Secret (what its pods mount)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": _meta(ROUTER_TLS_SECRET, namespace, router_labels()),
        "data": {"tls.crt": base64.b64encode(cert_pem).decode(), "tls.key": base64.b64encode(key_pem).decode()},
    }


def router_tls_secret_command(namespace: str, cert_file: str, key_file: str) -> str:
    """How a GitOps user creates the router's TLS Secret themselves (the same name and labels
    as ``router_tls_secret``); the paths are given shell-quoted."""
    labels = " ".join(f"{k}={v}" for k, v in router_labels().items())
    return (
        f"kubectl -n {namespace} create secret tls {ROUTER_TLS_SECRET} --cert={cert_file} --key={key_file} "
        f"&& kubectl -n {namespace} label secret {ROUTER_TLS_SECRET} {labels}"
    )


def tls_digest(cert_pem: bytes) -> str:
    return hashlib.sha256(cert_pem).hexdigest()[:16]
