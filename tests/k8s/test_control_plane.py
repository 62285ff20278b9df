"""The test harness itself: a real control plane and the node stand-in.

These prove that what the Kubernetes target will be tested on is real: the scheduler binds
pods, the controllers count them available, the scale subresource scales, deletion ends the
processes, and RBAC refuses what a Role does not grant.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from k8s_control_plane import api_client_for, wait_for
from kubernetes import client
from kubernetes.client.rest import ApiException
from node_standin import NodeStandIn, expand

# The first test here also starts the control plane (tens of seconds on a loaded machine).
pytestmark = pytest.mark.timeout(600)


def http_server_deployment(name: str, replicas: int = 1) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    # The init container writes the page the server then serves, into the
                    # emptyDir both mount: init order, env and volumes as the kubelet has them.
                    "initContainers": [
                        {
                            "name": "page",
                            "image": "python:3.11",
                            "command": ["python", "-c"],
                            "args": ["import os; open('/srv/www/index.html', 'w').write(os.environ['GREETING'])"],
                            "env": [
                                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                                {"name": "GREETING", "value": "hello from $(POD_IP)"},
                            ],
                            "volumeMounts": [{"name": "www", "mountPath": "/srv/www"}],
                        }
                    ],
                    "containers": [
                        {
                            "name": "web",
                            "image": "python:3.11",
                            "command": ["python", "-m", "http.server"],
                            "args": ["8000", "--bind", "$(POD_IP)", "--directory", "/srv/www"],
                            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                            "ports": [{"name": "http", "containerPort": 8000}],
                            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                            "volumeMounts": [{"name": "www", "mountPath": "/srv/www"}],
                        }
                    ],
                    "volumes": [{"name": "www", "emptyDir": {}}],
                },
            },
        },
    }


def pods_of(core: client.CoreV1Api, namespace: str, app: str) -> list[client.V1Pod]:
    return [
        p
        for p in core.list_namespaced_pod(namespace, label_selector=f"app={app}").items
        if p.metadata.deletion_timestamp is None
    ]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200
        return r.read().decode()


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def test_a_deployment_is_scheduled_run_scaled_and_deleted(admin: client.ApiClient, node: NodeStandIn, namespace: str):
    apps, core = client.AppsV1Api(admin), client.CoreV1Api(admin)
    apps.create_namespaced_deployment(namespace, http_server_deployment("web"))

    def available(n: int) -> Callable[[], bool]:
        return lambda: (apps.read_namespaced_deployment_status("web", namespace).status.available_replicas or 0) == n

    wait_for("1 available replica", available(1))
    (pod,) = pods_of(core, namespace, "web")
    assert pod.spec.node_name == node.name  # bound by the real scheduler
    ip = pod.status.pod_ip
    assert ip.startswith(node.subnet + ".")  # the pod's own loopback address
    assert get(f"http://{ip}:8000/") == f"hello from {ip}"
    assert pod.status.container_statuses[0].restart_count == 0
    first_pids = node.pod_pids()[pod.metadata.name]

    # The scale subresource, as the router's autoscaler will use it.
    apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 2}})
    wait_for("2 available replicas", available(2))
    pods = pods_of(core, namespace, "web")
    ips = {p.status.pod_ip for p in pods}
    assert len(ips) == 2
    for pod_ip in ips:
        assert get(f"http://{pod_ip}:8000/") == f"hello from {pod_ip}"

    pids = [pid for p in pods for pid in node.pod_pids()[p.metadata.name]]
    assert set(first_pids) <= set(pids) and all(alive(pid) for pid in pids)
    apps.delete_namespaced_deployment("web", namespace, propagation_policy="Foreground")
    wait_for("the pods to be gone from the API", lambda: not core.list_namespaced_pod(namespace).items)
    wait_for("the pods' processes to end", lambda: not any(alive(pid) for pid in pids), timeout=30)
    for pod_ip in ips:
        with pytest.raises(OSError):
            get(f"http://{pod_ip}:8000/")


def test_the_scheduler_reports_a_pod_that_fits_nowhere(admin: client.ApiClient, node: NodeStandIn, namespace: str):
    core = client.CoreV1Api(admin)
    body = http_server_deployment("huge")["spec"]["template"]
    body["metadata"]["name"] = "huge"
    body["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "64"}}
    core.create_namespaced_pod(namespace, body)

    def unschedulable() -> str | None:
        for c in core.read_namespaced_pod("huge", namespace).status.conditions or []:
            if c.type == "PodScheduled" and c.status == "False":
                return f"{c.reason}: {c.message}"
        return None

    message = wait_for("PodScheduled=False", unschedulable)
    assert message.startswith("Unschedulable") and "cpu" in message.lower()
    assert core.read_namespaced_pod("huge", namespace).spec.node_name is None


def test_rbac_grants_one_secret_by_name_and_refuses_another(
    admin: client.ApiClient, namespace: str, service_account_kubeconfig: Callable[[str, str], Path]
):
    core, rbac = client.CoreV1Api(admin), client.RbacAuthorizationV1Api(admin)
    for name in ("granted", "other"):
        core.create_namespaced_secret(namespace, {"metadata": {"name": name}, "stringData": {"key": name}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "one-secret"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["granted"], "verbs": ["get"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "one-secret"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "one-secret"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    api = api_client_for(service_account_kubeconfig(namespace, "reader"))
    try:
        as_reader = client.CoreV1Api(api)

        def read_granted() -> bool:
            try:
                return as_reader.read_namespaced_secret("granted", namespace).data is not None
            except ApiException as e:
                if e.status != 403:  # the authorizer's cache may lag the RoleBinding briefly
                    raise
                return False

        wait_for("the granted Secret to be readable", read_granted, timeout=30)
        for refused in (
            lambda: as_reader.read_namespaced_secret("other", namespace),
            lambda: as_reader.list_namespaced_secret(namespace),
            lambda: as_reader.read_namespaced_secret("granted", "default"),
        ):
            with pytest.raises(ApiException) as info:
                refused()
            assert info.value.status == 403
    finally:
        api.close()


def test_variable_references_expand_as_kubernetes_does():
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", env) == "1-two"
    assert expand("$(MISSING) $$(A) $$", env) == "$(MISSING) $(A) $"


# A server whose health the test can break: GET / answers 200 until POST /fail, then 503.
FAILABLE_SERVER = """
import http.server, os
broken = False
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(503 if broken else 200)
        self.end_headers()
    def do_POST(self):
        global broken
        broken = True
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer((os.environ["POD_IP"], 8000), H).serve_forever()
"""


def single_pod(name: str, command: list[str], **container: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "main",
                    "image": "python:3.11",
                    "command": command,
                    "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                    "ports": [{"name": "http", "containerPort": 8000}],
                    **container,
                }
            ],
        },
    }


def ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def test_a_container_that_exits_is_restarted_and_counted(admin: client.ApiClient, node: NodeStandIn, namespace: str):
    core = client.CoreV1Api(admin)
    core.create_namespaced_pod(namespace, single_pod("crasher", ["python", "-c", "import sys; sys.exit(3)"]))

    def restarted_twice() -> client.V1ContainerStatus | None:
        statuses = core.read_namespaced_pod("crasher", namespace).status.container_statuses or []
        return statuses[0] if statuses and statuses[0].restart_count >= 2 else None

    status = wait_for("two restarts", restarted_twice)
    assert status.last_state.terminated.exit_code == 3
    assert not status.ready


def test_readiness_and_liveness_probes_drive_ready_and_restarts(
    admin: client.ApiClient, node: NodeStandIn, namespace: str
):
    core = client.CoreV1Api(admin)
    http_get = {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1, "timeoutSeconds": 2}
    core.create_namespaced_pod(
        namespace,
        single_pod(
            "probed",
            ["python", "-c", FAILABLE_SERVER],
            readinessProbe={**http_get, "failureThreshold": 1},
            livenessProbe={**http_get, "failureThreshold": 6},
        ),
    )
    pod = wait_for("Ready", lambda: (p := core.read_namespaced_pod("probed", namespace)) and ready(p) and p)
    ip = pod.status.pod_ip
    urllib.request.urlopen(urllib.request.Request(f"http://{ip}:8000/fail", method="POST"), timeout=5).close()

    # Readiness fails first (threshold 1): the pod leaves Ready but is not restarted yet...
    not_ready = wait_for(
        "Ready=False", lambda: (p := core.read_namespaced_pod("probed", namespace)) and not ready(p) and p
    )
    assert not_ready.status.container_statuses[0].restart_count == 0
    # ...then liveness fails (threshold 6): the container is restarted, healthy again, and Ready.
    wait_for(
        "a restart and Ready again",
        lambda: (
            (p := core.read_namespaced_pod("probed", namespace)).status.container_statuses[0].restart_count == 1
            and ready(p)
        ),
    )


# Reads its own Pod through the API with the pod's service account, as the in-cluster router will.
READS_ITS_OWN_POD = """
import os, time
from kubernetes import client, config
config.load_config()
pod = client.CoreV1Api().read_namespaced_pod(os.environ["POD_NAME"], os.environ["POD_NAMESPACE"])
print("read my own pod:", pod.metadata.name, flush=True)
time.sleep(600)
"""


def test_a_pod_reaches_the_api_with_its_service_account(admin: client.ApiClient, node: NodeStandIn, namespace: str):
    rbac = client.RbacAuthorizationV1Api(admin)
    rbac.create_namespaced_role(
        namespace,
        {"metadata": {"name": "pods"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]},
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pods"},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}],
        },
    )
    body = single_pod("reader", ["python", "-c", READS_ITS_OWN_POD])
    body["spec"]["containers"][0]["env"] += [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    client.CoreV1Api(admin).create_namespaced_pod(namespace, body)
    log = node.log_path(namespace, "reader", "main")
    wait_for("the pod to read itself", lambda: log.exists() and "read my own pod: reader" in log.read_text())
