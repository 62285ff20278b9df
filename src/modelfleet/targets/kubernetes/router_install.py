"""The cluster's router installed from ``manifests.router_objects`` (``modelfleet k8s router
install|status|uninstall``): each object created, or patched to the manifest when it exists;
deleted by kind and name; the Deployment's readiness and the Service's address read back.
TLS (v1's ``ssl_enabled``/``ssl_cert_pem_file``/``ssl_key_pem_file``/``ssl_cname``): the pair is
checked here, before anything is written to the cluster, and goes into the router's
``kubernetes.io/tls`` Secret; the scoring URI then says https and the certificate's name."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubernetes import client
from kubernetes.client.rest import ApiException

from modelfleet.errors import ConfigError, TargetError
from modelfleet.targets.kubernetes.api import api_error, call

__all__ = ["delete_object", "router_status", "router_uri", "tls_material", "upsert_object"]

_READERS = {
    "ServiceAccount": ("CoreV1Api", "service_account"),
    "Service": ("CoreV1Api", "service"),
    "Role": ("RbacAuthorizationV1Api", "role"),
    "RoleBinding": ("RbacAuthorizationV1Api", "role_binding"),
    "Deployment": ("AppsV1Api", "deployment"),
    "Secret": ("CoreV1Api", "secret"),
    "Ingress": ("NetworkingV1Api", "ingress"),
}


def upsert_object(api: client.ApiClient, obj: dict[str, Any], create: Callable[..., Any]) -> None:
    """Create ``obj``; when it exists, patch it to what ``obj`` says (the router's objects)."""
    kind, name, ns = obj["kind"], obj["metadata"]["name"], obj["metadata"]["namespace"]
    group, suffix = _READERS[kind]
    api_class = getattr(client, group)(api)
    try:
        create(api, obj)
    except Exception as exc:  # create_from_yaml wraps the API's errors in FailToCreateError
        statuses = [e.status for e in getattr(exc, "api_exceptions", [])] or [getattr(exc, "status", None)]
        if statuses != [409]:
            raise TargetError(f"Kubernetes API: create {kind} {name} failed: {exc}") from exc
        patch = getattr(api_class, f"patch_namespaced_{suffix}")
        call(f"update {kind} {name}", lambda: patch(name, ns, obj))


def delete_object(api: client.ApiClient, obj: dict[str, Any]) -> bool:
    """Delete ``obj`` by kind and name; False when it was not there."""
    kind, name, ns = obj["kind"], obj["metadata"]["name"], obj["metadata"]["namespace"]
    group, suffix = _READERS[kind]
    remove = getattr(getattr(client, group)(api), f"delete_namespaced_{suffix}")
    try:
        # The raw answer: 1.20 answers a Service's deletion with a Status, which this client
        # would try (and fail) to read as a Service.
        remove(name, ns, _preload_content=False).release_conn()
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise api_error(f"delete {kind} {name}", exc) from exc


def router_status(apps: client.AppsV1Api, core: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any]:
    try:
        dep = apps.read_namespaced_deployment(name, namespace)
        svc = core.read_namespaced_service(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return {"installed": False, "namespace": namespace}
        raise api_error(f"read the router {name}", exc) from exc
    ingress = (svc.status.load_balancer.ingress or []) if svc.status and svc.status.load_balancer else []
    return {
        "installed": True,
        "namespace": namespace,
        "replicas": dep.spec.replicas,
        "readyReplicas": dep.status.ready_replicas or 0,
        "serviceType": svc.spec.type,
        "clusterIP": svc.spec.cluster_ip,
        "ports": [p.port for p in svc.spec.ports or []],
        "loadBalancer": [i.ip or i.hostname for i in ingress],
    }


def tls_material(enabled: bool, cert_file: str | None, key_file: str | None) -> tuple[bytes, bytes] | None:
    """(certificate PEM, key PEM) when TLS is on, after checking that the key is the
    certificate's; None when it is off."""
    if not enabled:
        if cert_file or key_file:
            raise ConfigError("ssl_cert_pem_file and ssl_key_pem_file apply only with ssl_enabled=True")
        return None
    if not cert_file or not key_file:
        raise ConfigError(
            "ssl_enabled=True needs ssl_cert_pem_file and ssl_key_pem_file: the PEM files of the "
            "router's certificate and of its unencrypted private key"
        )
    for field, path in (("ssl_cert_pem_file", cert_file), ("ssl_key_pem_file", key_file)):
        if not Path(path).expanduser().is_file():
            raise ConfigError(f"{field}: {path} does not exist or is not a file")
    cert, key = Path(cert_file).expanduser(), Path(key_file).expanduser()
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"ssl_cert_pem_file {cert_file} and ssl_key_pem_file {key_file} are not a PEM certificate and its "
            f"unencrypted private key ({exc.reason or exc})"
        ) from None
    return cert.read_bytes(), key.read_bytes()


def router_uri(current: str | None, tls: bool, cname: str | None, port: int, ingress: bool) -> str | None:
    """Where clients reach the router after an install: ``ssl_cname`` when given (through an
    Ingress on its default port, else on the Service's ``port``), else the attached
    ``router_uri`` with its scheme set by ``tls``."""
    scheme = "https" if tls else "http"
    if cname:
        default = 443 if tls else 80
        return f"{scheme}://{cname}" if ingress or port == default else f"{scheme}://{cname}:{port}"
    if not current:
        return None
    return f"{scheme}://{urlsplit(current).netloc}"
