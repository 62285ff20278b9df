"""Fixtures for the Kubernetes tests: a real control plane (session-wide) and API clients.

Skipped, with the reason, when the control plane is not built and ``MODELFLEET_K8S_REQUIRED``
is not set; with it set (CI), a missing build is a failure. Build it with
``scripts/k8s-control-plane.sh``.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from k8s_control_plane import ControlPlane, api_client_for, cache_dir, missing_binaries
from kubernetes import client
from node_standin import NodeStandIn


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cache = cache_dir()
    missing = missing_binaries(cache)
    if missing:
        reason = f"Kubernetes control plane not built (missing {', '.join(missing)}); run scripts/k8s-control-plane.sh"
        if os.environ.get("MODELFLEET_K8S_REQUIRED"):
            pytest.fail(f"MODELFLEET_K8S_REQUIRED is set but the {reason}")
        pytest.skip(reason)
    cp = ControlPlane(workdir=tmp_path_factory.mktemp("k8s"), bin_dir=cache / "bin")
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def admin(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    """An ApiClient with cluster-admin rights (a system:masters client certificate)."""
    api = api_client_for(control_plane.admin_kubeconfig)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def namespace(admin: client.ApiClient) -> Iterator[str]:
    """A fresh namespace for one test (deleted after it; its objects go with it)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(admin)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        _wait_for_default_token(core, name)
        yield name
    finally:
        core.delete_namespace(name)


def _wait_for_default_token(core: client.CoreV1Api, namespace: str, timeout: float = 60) -> None:
    # Pods are admitted only once the controllers made the namespace's default ServiceAccount
    # and its token (1.20's legacy token Secrets); a ReplicaSet retries, a test's own pod not.
    deadline = time.monotonic() + timeout
    while True:
        try:
            if core.read_namespaced_service_account("default", namespace).secrets:
                return
        except client.ApiException as e:
            if e.status != 404:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"namespace {namespace}: no default ServiceAccount token after {timeout:.0f} s")
        time.sleep(0.2)


@pytest.fixture
def service_account_kubeconfig(control_plane: ControlPlane, admin: client.ApiClient) -> Callable[..., Path]:
    """``make(namespace, name, create=True)``: create a ServiceAccount (unless it exists) and
    return a kubeconfig holding a token for it (TokenRequest API, one hour)."""

    def make(namespace: str, name: str, create: bool = True) -> Path:
        core = client.CoreV1Api(admin)
        if create:
            core.create_namespaced_service_account(
                namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
            )
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
        )
        token = core.create_namespaced_service_account_token(name, namespace, request).status.token
        return control_plane.token_kubeconfig(token, f"sa-{namespace}-{name}", namespace)

    return make


@pytest.fixture(scope="session")
def node(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeStandIn]:
    """One node stand-in, with a node's own credentials (the Node authorizer's
    ``system:node:<name>`` in ``system:nodes``). Every image stands for this interpreter."""
    name = "standin-0"
    kubeconfig = control_plane.client_kubeconfig(f"node-{name}", f"system:node:{name}", "system:nodes")
    api = api_client_for(kubeconfig)
    port = int(control_plane.server.rsplit(":", 1)[1])
    standin = NodeStandIn(
        api,
        name,
        tmp_path_factory.mktemp("node"),
        image_python=lambda image: sys.executable,
        api_server=("127.0.0.1", port),
    )
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()
        api.close()
