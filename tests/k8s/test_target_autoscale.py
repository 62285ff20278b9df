"""Autoscaling on the Kubernetes target: the router process (holding the Lease) scales the
serving generation's Deployment through ``deployments/scale`` from its own counts; the
compute target's controller adopts the count (a scale event) instead of undoing it; the
count comes back down after the down-delay."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from k8s_control_plane import ControlPlane, wait_for
from k8s_services import SCRIPTS, router_process, serve_blobs
from kubernetes import client
from node_standin import NodeStandIn

from modelfleet import AksWebservice, InferenceConfig, KubernetesCompute, Model, Workspace


def post(uri: str, key: str, body: bytes) -> int:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    req = urllib.request.Request(uri, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


@pytest.mark.timeout(600)
def test_the_router_scales_the_deployment_and_the_controller_adopts_it(
    admin: client.ApiClient,
    node: NodeStandIn,
    namespace: str,
    control_plane: ControlPlane,
    service_account_kubeconfig,
    tmp_path: Path,
):
    apps = client.AppsV1Api(admin)
    ws = Workspace.create(name="ws", path=tmp_path / "ws")
    log = tmp_path / "router.log"
    with (
        serve_blobs(ws.store) as blobs,
        router_process(admin, namespace, service_account_kubeconfig, log, ["slow-keys"]) as router,
    ):
        target = KubernetesCompute.attach(
            ws,
            "prod",
            kubeconfig=str(control_plane.admin_kubeconfig),
            namespace=namespace,
            blob_store=blobs,
            router_uri=f"http://127.0.0.1:{router.port}",
        )
        stop = threading.Event()
        try:
            weights = tmp_path / "w.json"
            weights.write_text("{}")
            model = Model.register(ws, model_path=str(weights), model_name="w")
            ic = InferenceConfig(entry_script="score.py", source_directory=str(SCRIPTS / "slow"))
            dc = AksWebservice.deploy_configuration(
                autoscale_enabled=True,
                autoscale_min_replicas=1,
                autoscale_max_replicas=2,
                autoscale_target_utilization=50,
                autoscale_down_delay_seconds=5,
                max_request_wait_time=20000,
                period_seconds=1,
            )
            service = Model.deploy(ws, "slow", [model], ic, dc, deployment_target=target)
            service.wait_for_deployment(timeout_sec=180)
            assert service.state == "Healthy", service.error
            key = service.get_keys()[0]
            uri = service.scoring_uri
            wait_for("a scored request", lambda: post(uri, key, b"{}") == 200, timeout=60)

            # three clients, each request 0.3 s, one at a time per replica: 300 % of one replica
            codes: list[int] = []

            def client_loop() -> None:
                deadline = time.monotonic() + 120
                while not stop.is_set() and time.monotonic() < deadline:
                    codes.append(post(uri, key, json.dumps({"sleep": 0.3}).encode()))

            clients = [threading.Thread(target=client_loop) for _ in range(3)]
            for c in clients:
                c.start()
            scale = lambda: apps.read_namespaced_deployment("slow-g1", namespace).spec.replicas  # noqa: E731
            wait_for("the router to scale slow-g1 to 2", lambda: scale() == 2, timeout=60)
            wait_for("the controller to adopt the count", lambda: [e["to"] for e in service.get_scale_events()] == [2])
            time.sleep(3)  # the reconciler's own passes keep 2: nothing scales it back under load
            assert scale() == 2
            stop.set()
            for c in clients:
                c.join()
            assert codes and set(codes) == {200}, sorted(set(codes))
            wait_for("back to 1 after the down-delay", lambda: scale() == 1, timeout=90)
            wait_for("the scale-down adopted", lambda: [e["to"] for e in service.get_scale_events()] == [2, 1], 30)
            text = log.read_text()
            patched = [float(ms) for ms in re.findall(r"decision to deployments/scale patched: (\d+) ms", text)]
            print(f"router: decision -> deployments/scale patched: {patched} ms; lease held: {'held by' in text}")
            assert "lease modelfleet-router held by" in text
            service.delete()
        finally:
            stop.set()
            target.stop_controller()
