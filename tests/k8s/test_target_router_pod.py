"""The router as the cluster runs it: ``modelfleet k8s router install`` makes its Deployment,
the node stand-in runs its pod from the pod spec (``python -m modelfleet router --kubernetes``,
its ServiceAccount's token as the kubelet mounts it), and a service deployed with
``Model.deploy`` is scored through that pod's address with the service's key."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from k8s_control_plane import ControlPlane, wait_for
from k8s_services import SCRIPTS, serve_blobs
from kubernetes import client
from node_standin import NodeStandIn

from modelfleet import AksWebservice, InferenceConfig, KubernetesCompute, Model, Workspace
from modelfleet.targets.kubernetes import manifests as m


def post(uri: str, key: str) -> tuple[int, object]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    req = urllib.request.Request(uri, data=b"{}", headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, None
    except OSError:
        return 0, None


@pytest.mark.timeout(600)
def test_a_service_is_scored_through_the_router_pod(
    admin: client.ApiClient, node: NodeStandIn, namespace: str, control_plane: ControlPlane, tmp_path: Path
):
    apps, core = client.AppsV1Api(admin), client.CoreV1Api(admin)
    ws = Workspace.create(name="ws", path=tmp_path / "ws")
    with serve_blobs(ws.store) as blobs:
        target = KubernetesCompute.attach(
            ws, "prod", kubeconfig=str(control_plane.admin_kubeconfig), namespace=namespace, blob_store=blobs
        )
        try:
            target.install_router(image="modelfleet-router:test", replicas=1, load_balancer_type="ClusterIP")

            def router_pod_ip() -> str | None:
                dep = apps.read_namespaced_deployment(m.ROUTER_NAME, namespace)
                if (dep.status.available_replicas or 0) < 1:
                    return None
                pods = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/component=router").items
                ready = [p for p in pods if p.status.pod_ip and not p.metadata.deletion_timestamp]
                return ready[0].status.pod_ip if ready else None

            ip = wait_for("the router pod Ready", router_pod_ip, timeout=180)
            weights = tmp_path / "weights.json"
            weights.write_text(json.dumps({"w": [1, 2, 3]}))
            model = Model.register(ws, model_path=str(weights), model_name="weights")
            ic = InferenceConfig(entry_script="score.py", source_directory=str(SCRIPTS / "read_model"))
            dc = AksWebservice.deploy_configuration(autoscale_enabled=False, num_replicas=1, period_seconds=1)
            service = Model.deploy(ws, "scorer", [model], ic, dc, deployment_target=target)
            service.wait_for_deployment(timeout_sec=180)
            key = service.get_keys()[0]
            uri = f"http://{ip}:{m.ROUTER_PORT}/api/v1/service/scorer/score"
            wait_for("scored through the router pod", lambda: post(uri, key)[0] == 200, timeout=60)
            assert post(uri, key)[1] == {"model": {"w": [1, 2, 3]}}
            assert post(uri, "x" * 32)[0] == 401
            assert target.router_status()["readyReplicas"] == 1
            service.delete()
            wait_for("404 once deleted", lambda: post(uri, key)[0] == 404, timeout=60)
            target.uninstall_router()
            selector = "app.kubernetes.io/component=router"
            gone = lambda: not core.list_namespaced_pod(namespace, label_selector=selector).items  # noqa: E731
            wait_for("the router pod gone", gone)
        finally:
            target.stop_controller()
