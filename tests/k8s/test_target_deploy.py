"""``Model.deploy(..., deployment_target=KubernetesCompute.attach(...))`` end to end, on the real
control plane with the node stand-in: the SDK records the service, the compute target's
controller (a process the SDK starts) reconciles it into a Deployment, the router (a process
with the router's ServiceAccount) finds its pod through the API and scores it with the key;
an update rolls a new generation with no failed request; ``service.delete()`` removes every
object."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from k8s_control_plane import ControlPlane, wait_for
from k8s_services import SCRIPTS, router_process, serve_blobs
from kubernetes import client
from node_standin import NodeStandIn

from fs_support import files_with_bytes
from modelfleet import AksCompute, AksWebservice, ComputeTarget, InferenceConfig, KubernetesCompute, Model, Workspace
from modelfleet.errors import ConfigError, DeploymentFailed, NotFound
from modelfleet.targets.kubernetes import manifests as m


def post(uri: str, key: str | None) -> tuple[int, object]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(uri, data=b"{}", headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, None


def secret_rules(rbac: client.RbacAuthorizationV1Api, namespace: str) -> list:
    return [r for r in rbac.read_namespaced_role(m.ROUTER_NAME, namespace).rules if "secrets" in r.resources]


def test_attach_by_name_and_v1_form(tmp_path: Path, control_plane: ControlPlane):
    ws = Workspace.create(name="ws", path=tmp_path / "ws")
    kubeconfig = str(control_plane.admin_kubeconfig)
    config = AksCompute.attach_configuration(kubeconfig=kubeconfig, namespace="models", blob_store="http://b:1")
    target = ComputeTarget.attach(ws, "prod", config)
    assert isinstance(target, KubernetesCompute) and target.namespace == "models"
    assert ComputeTarget(ws, "prod") == target
    assert [t.name for t in ComputeTarget.list(ws)] == ["prod"]
    with pytest.raises(ConfigError, match="kubeconfig '/nope' is not a file"):
        KubernetesCompute.attach(ws, "dev", kubeconfig="/nope")
    with pytest.raises(ConfigError, match="namespace must be a DNS label"):
        KubernetesCompute.attach(ws, "dev", kubeconfig=kubeconfig, namespace="Models")
    # a cluster cannot reach blobs on this machine's disk: refused before anything is stored
    bare = KubernetesCompute.attach(ws, "bare", kubeconfig=kubeconfig)
    weights = tmp_path / "w.json"
    weights.write_text("{}")
    model = Model.register(ws, model_path=str(weights), model_name="w")
    ic = InferenceConfig(entry_script="score.py", source_directory=str(SCRIPTS / "read_model"))
    with pytest.raises(ConfigError, match="compute target bare has no blob_store"):
        Model.deploy(ws, "svc", [model], ic, AksWebservice.deploy_configuration(), deployment_target=bare)
    assert ws.store.list_services() == []
    target.detach()
    with pytest.raises(NotFound, match='no compute target "prod"'):
        ComputeTarget(ws, "prod")


@pytest.mark.timeout(600)
def test_model_deploy_to_an_attached_cluster_scores_through_the_router(
    admin: client.ApiClient,
    node: NodeStandIn,
    namespace: str,
    control_plane: ControlPlane,
    service_account_kubeconfig,
    tmp_path: Path,
):
    apps, core = client.AppsV1Api(admin), client.CoreV1Api(admin)
    ws = Workspace.create(name="ws", path=tmp_path / "ws")
    # The router's ServiceAccount, Role and RoleBinding, the Role listing no Secret yet: the
    # compute target's controller adds each deployed service's Secret by name.
    rbac = client.RbacAuthorizationV1Api(admin)
    log = tmp_path / "router.log"
    # a private blob store: it answers 403 unless each request carries the SAS token's signature
    blob_log = tmp_path / "blobs.log"
    with (
        serve_blobs(ws.store, sig=SIG, log=blob_log) as blobs,
        router_process(admin, namespace, service_account_kubeconfig, log) as router,
    ):
        target = KubernetesCompute.attach(
            ws,
            "prod",
            kubeconfig=str(control_plane.admin_kubeconfig),
            namespace=namespace,
            blob_store=blobs,
            blob_store_sas=SAS,
            router_uri=f"http://127.0.0.1:{router.port}",
        )
        try:
            weights = tmp_path / "weights.json"
            weights.write_text(json.dumps({"w": [1, 2, 3]}))
            model = Model.register(ws, model_path=str(weights), model_name="weights")
            ic = InferenceConfig(entry_script="score.py", source_directory=str(SCRIPTS / "read_model"))
            dc = AksWebservice.deploy_configuration(autoscale_enabled=False, num_replicas=1, period_seconds=1)
            start = time.monotonic()
            service = Model.deploy(ws, "scorer", [model], ic, dc, deployment_target=target)
            print(f"Model.deploy returned after {time.monotonic() - start:.1f} s")
            service.wait_for_deployment(timeout_sec=180)
            healthy = time.monotonic() - start
            assert service.state == "Healthy", service.error
            assert service.scoring_uri == f"http://127.0.0.1:{router.port}/api/v1/service/scorer/score"
            primary, _ = service.get_keys()
            wait_for("a scored request", lambda: post(service.scoring_uri, primary)[0] == 200, timeout=60)
            routed = time.monotonic() - start
            print(
                f"Model.deploy -> Healthy: {healthy:.1f} s; -> first request scored through the router: {routed:.1f} s"
            )
            assert post(service.scoring_uri, primary)[1] == {"model": {"w": [1, 2, 3]}}
            assert post(service.scoring_uri, None)[0] == 401
            _the_credential_is_in_its_secret_only(admin, ws, namespace, blobs, blob_log)
            (dep,) = apps.list_namespaced_deployment(namespace, label_selector=f"{m.SERVICE_LABEL}=scorer").items
            secret_rules = [
                r for r in rbac.read_namespaced_role(m.ROUTER_NAME, namespace).rules if "secrets" in r.resources
            ]
            assert [r.resource_names for r in secret_rules] == [["scorer-keys"]]
            assert dep.metadata.name == "scorer-g1"

            # logs: each pod's state, then pods/log (which needs a kubelet: here the reason it failed)
            logs = service.get_logs()
            assert re.search(r"=== pod scorer-g1-\S+ \(generation 1, Ready, 0 restarts\) ===", logs), logs
            assert "no log from the API" in logs  # the node stand-in serves no pods/log

            # an HPA someone aims at the service's Deployment is reported, never obeyed or made
            hpa = client.V1HorizontalPodAutoscaler(
                metadata=client.V1ObjectMeta(name="someones-hpa"),
                spec=client.V1HorizontalPodAutoscalerSpec(
                    scale_target_ref=client.V1CrossVersionObjectReference(
                        api_version="apps/v1", kind="Deployment", name="scorer-g1"
                    ),
                    min_replicas=1,
                    max_replicas=5,
                ),
            )
            autoscaling = client.AutoscalingV1Api(admin)
            autoscaling.create_namespaced_horizontal_pod_autoscaler(namespace, hpa)
            wait_for("the HPA reported", lambda: "HorizontalPodAutoscaler someones-hpa" in (service.error or ""), 30)
            assert service.state == "Healthy"
            assert any("someones-hpa" in e["reason"] for e in service.get_scale_events())
            autoscaling.delete_namespaced_horizontal_pod_autoscaler("someones-hpa", namespace)
            wait_for("the report cleared", lambda: "HorizontalPodAutoscaler" not in (service.error or ""), 30)

            # the local cluster's daemon was never needed
            assert ws.cluster().info() is None

            # an update rolls a second generation under traffic: no request fails
            outcomes: list[int] = []
            stop = threading.Event()

            def traffic() -> None:  # one request at a time, bounded by the test's own deadline
                deadline = time.monotonic() + 240
                while not stop.is_set() and time.monotonic() < deadline:
                    outcomes.append(post(service.scoring_uri, primary)[0])

            sender = threading.Thread(target=traffic)
            sender.start()
            try:
                # a new inference config too: the service stays on the cluster (it once became local)
                service.update(scoring_timeout_ms=30000, inference_config=ic)
                service.wait_for_deployment(timeout_sec=180)

                def rolled() -> bool:
                    names = [d.metadata.name for d in apps.list_namespaced_deployment(namespace).items]
                    pods = core.list_namespaced_pod(namespace, label_selector=f"{m.SERVICE_LABEL}=scorer").items
                    return names == ["scorer-g2"] and len(pods) == 1

                wait_for("generation 1 retired and its pod gone", rolled, timeout=180)
                time.sleep(1)  # traffic on generation 2 alone too
            finally:
                stop.set()
                sender.join()
            failed = [code for code in outcomes if code != 200]
            print(f"update under traffic: {len(outcomes)} requests, {len(failed)} failed {sorted(set(failed))}")
            assert outcomes and not failed
            assert service.state == "Healthy"
            assert ws.cluster().info() is None  # still the cluster's: no local daemon was started for it

            uri = service.scoring_uri
            service.delete()
            with pytest.raises(NotFound):
                service.state  # noqa: B018 - the property reads the workspace
            sel = f"{m.SERVICE_LABEL}=scorer"
            wait_for(
                "every object of the service gone",
                lambda: (
                    not (
                        apps.list_namespaced_deployment(namespace, label_selector=sel).items
                        or core.list_namespaced_config_map(namespace, label_selector=sel).items
                        or core.list_namespaced_secret(namespace, label_selector=sel).items
                        or core.list_namespaced_pod(namespace, label_selector=sel).items
                    )
                ),
                timeout=120,
            )
            wait_for("404 from the router", lambda: post(uri, primary)[0] == 404, timeout=60)

            def secret_rules() -> list:
                return [
                    r for r in rbac.read_namespaced_role(m.ROUTER_NAME, namespace).rules if "secrets" in r.resources
                ]

            wait_for("the deleted service's Secret gone from the router's Role", lambda: secret_rules() == [], 30)
        finally:
            target.stop_controller()


SIG = "c2lnbmF0dXJlLW9mLXRoZS10ZXN0"  # what the private blob server requires
SAS = f"sv=2022-11-02&sr=c&sp=r&se=2099-01-01T00%3A00%3A00Z&sig={SIG}"


def _the_credential_is_in_its_secret_only(
    admin: client.ApiClient, ws: Workspace, namespace: str, blobs: str, blob_log: Path
) -> None:
    """The blob store's Secret holds the SAS token and the init container refers to it; no
    ConfigMap, Deployment, workspace file, log or printed manifest holds it."""
    core, apps = client.CoreV1Api(admin), client.AppsV1Api(admin)
    secret = core.read_namespaced_secret(m.blob_secret_name(blobs), namespace)
    assert base64.b64decode(secret.data["sas"]).decode() == SAS
    assert secret.metadata.labels["app.kubernetes.io/managed-by"] == "modelfleet"
    (dep,) = apps.list_namespaced_deployment(namespace, label_selector=f"{m.SERVICE_LABEL}=scorer").items
    (init,) = dep.spec.template.spec.init_containers
    refs = {e.name: e.value_from.secret_key_ref for e in init.env}
    assert refs["MODELFLEET_BLOB_SAS"].name == secret.metadata.name and refs["MODELFLEET_BLOB_SAS"].optional
    requests = re.findall(r"^(GET|403) /[0-9a-f]{2}/[0-9a-f]{62}$", blob_log.read_text(), re.MULTILINE)
    assert requests and set(requests) == {"GET"}, requests  # the model and the snapshot, each with the SAS
    printed = json.dumps(
        [admin.sanitize_for_serialization(o) for o in core.list_namespaced_config_map(namespace).items]
        + [admin.sanitize_for_serialization(dep)]
    )
    assert SIG not in printed
    for path, data in files_with_bytes(Path(ws.path)):  # the workspace's database, settings and logs
        assert SIG.encode() not in data, path
    done = subprocess.run(
        [sys.executable, "-m", "modelfleet", "-w", str(ws.path), "k8s", "manifests", "-n", "scorer"]
        + ["--compute-target", "prod", "--no-router"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert SIG not in done.stdout + done.stderr
    assert f"Secret {secret.metadata.name} (left out here); create it with: kubectl -n {namespace}" in done.stderr


@pytest.mark.timeout(300)
def test_a_service_whose_init_fails_on_the_cluster_ends_failed_with_the_reason(
    admin: client.ApiClient, node: NodeStandIn, namespace: str, control_plane: ControlPlane, tmp_path: Path
):
    apps = client.AppsV1Api(admin)
    with _attached_bare(control_plane, namespace, tmp_path) as (ws, target, blobs):
        try:
            service = _deploy_one(ws, tmp_path, target, "broken", "failing_init")
            assert service.scoring_uri is None  # no router_uri attached: nothing to promise
            with pytest.raises(DeploymentFailed):
                service.wait_for_deployment(timeout_sec=180)
            assert service.state == "Failed"
            assert "container replica" in (service.error or ""), service.error
            # the failed generation is retired: no pod is left crash-looping
            wait_for("the failed Deployment gone", lambda: not apps.list_namespaced_deployment(namespace).items, 60)
            service.delete()
        finally:
            target.stop_controller()


@pytest.mark.timeout(300)
def test_a_private_blob_store_without_its_credential_fails_the_service_saying_why(
    admin: client.ApiClient, node: NodeStandIn, namespace: str, control_plane: ControlPlane, tmp_path: Path
):
    core = client.CoreV1Api(admin)
    with _attached_bare(control_plane, namespace, tmp_path, sig=SIG) as (ws, target, blobs):
        try:
            service = _deploy_one(ws, tmp_path, target, "locked", "read_model")
            with pytest.raises(DeploymentFailed):
                service.wait_for_deployment(timeout_sec=120)
            # the fetcher's own line, through the pod's termination message, in service.error
            error = service.error or ""
            assert "init container fetch" in error and "HTTP Error 403" in error, error
            assert "no credential was given" in error and f"from {blobs}/" in error, error
            assert not core.list_namespaced_secret(
                namespace, label_selector="app.kubernetes.io/component=blob-store"
            ).items

            # the credential given now (from the environment, say) goes into the Secret; the
            # next generation's pods fetch with it
            assert target.set_blob_store_credential(sas=SAS) == m.blob_secret_name(blobs)
            assert target.settings["blob_store_auth"] == "sas"
            service.update(scoring_timeout_ms=30000)
            service.wait_for_deployment(timeout_sec=120)
            assert service.state == "Healthy", service.error
            target.set_blob_store_credential()  # neither: the Secret goes
            assert not core.list_namespaced_secret(
                namespace, label_selector="app.kubernetes.io/component=blob-store"
            ).items
            assert "blob_store_auth" not in target.settings
            service.delete()
        finally:
            target.stop_controller()


@contextlib.contextmanager
def _attached_bare(
    control_plane: ControlPlane, namespace: str, tmp_path: Path, **private: str
) -> Iterator[tuple[Workspace, KubernetesCompute, str]]:
    """A workspace with the cluster attached as "prod", its blobs served (``sig=``: privately),
    with no router_uri and no blob-store credential."""
    ws = Workspace.create(name="ws", path=tmp_path / "ws")
    with serve_blobs(ws.store, **private) as blobs:
        kubeconfig = str(control_plane.admin_kubeconfig)
        target = KubernetesCompute.attach(ws, "prod", kubeconfig=kubeconfig, namespace=namespace, blob_store=blobs)
        yield ws, target, blobs


def _deploy_one(ws: Workspace, tmp_path: Path, target: KubernetesCompute, name: str, script: str) -> Any:
    """``name`` with one replica of ``SCRIPTS/script`` and a model "w", deployed without waiting."""
    weights = tmp_path / "w.json"
    weights.write_text("{}")
    model = Model.register(ws, model_path=str(weights), model_name="w")
    ic = InferenceConfig(entry_script="score.py", source_directory=str(SCRIPTS / script))
    dc = AksWebservice.deploy_configuration(autoscale_enabled=False, num_replicas=1, period_seconds=1)
    return Model.deploy(ws, name, [model], ic, dc, deployment_target=target)
