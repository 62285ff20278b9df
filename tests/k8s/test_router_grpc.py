"""The in-cluster router serves the Open Inference Protocol's gRPC API too (``--grpc-port``, as
its generated Deployment and Service expose it): tritonclient's gRPC client reaches a service's
pod through it with the service's key, and is refused without it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from k8s_control_plane import free_port, wait_for
from k8s_services import event_loop, plan, router_process, serve_blobs, source
from kubernetes import client
from node_standin import NodeStandIn
from tritonclient.utils import InferenceServerException

from modelfleet.store.registry import Store
from modelfleet.targets.base import GenerationSpec, RouteEntry
from modelfleet.targets.kubernetes import manifests as m
from modelfleet.targets.kubernetes.target import KubernetesTarget

V2_SCRIPT = Path(__file__).resolve().parents[1] / "e2e_scripts" / "v2_infer"
KEY = "g" * 32


def test_the_router_manifests_expose_the_grpc_port() -> None:
    deployment, service = [
        o for o in m.router_objects(m.RouterSource(image="r:1")) if o["kind"] in ("Deployment", "Service")
    ]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][container["args"].index("--grpc-port") + 1] == str(m.ROUTER_GRPC_PORT)
    assert {"name": "grpc", "containerPort": m.ROUTER_GRPC_PORT, "protocol": "TCP"} in container["ports"]
    assert {"name": "grpc", "port": m.ROUTER_GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"} in service["spec"][
        "ports"
    ]


@pytest.mark.timeout(300)
def test_grpc_through_the_in_cluster_router(
    admin: client.ApiClient,
    node: NodeStandIn,
    namespace: str,
    store: Store,
    tmp_path: Path,
    service_account_kubeconfig,
):
    grpc_port = free_port()
    entry = ("modelfleet.control.k8s_router", "--grpc-port", str(grpc_port))
    log = tmp_path / "router.log"
    with (
        serve_blobs(store) as blobs,
        event_loop() as loop,
        router_process(admin, namespace, service_account_kubeconfig, log, ["tensors-keys"], entry),
    ):
        src = replace(
            source(store, tmp_path, namespace, blobs, name="tensors"),
            snapshot=store.put_snapshot(V2_SCRIPT),
            source_name="v2_infer",
        )
        target = KubernetesTarget(admin, namespace)
        try:
            loop.run_until_complete(target.apply(GenerationSpec(plan(src, 1), 1)))
            target.publish(RouteEntry("tensors", 1, "key", primary_key=KEY, secondary_key="h" * 32))
            c = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")

            def live() -> bool:
                try:
                    return bool(c.is_server_live())
                except InferenceServerException:
                    return False

            wait_for("the gRPC API", live, timeout=60)
            x = triton_grpc.InferInput("x", [3], "INT64")
            x.set_data_from_numpy(np.array([1, 2, 3], dtype=np.int64))
            auth = {"authorization": f"Bearer {KEY}"}

            def answered():
                try:
                    return c.infer("tensors", [x], headers=auth)
                except InferenceServerException:
                    return None

            result = wait_for("an infer call answered through the router", answered, timeout=180)
            np.testing.assert_array_equal(result.as_numpy("doubled"), [2, 4, 6])
            with pytest.raises(InferenceServerException) as refused:
                c.infer("tensors", [x])
            assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        finally:
            loop.run_until_complete(target.close(0))
