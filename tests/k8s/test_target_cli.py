"""``modelfleet compute attach|list|show|detach`` and ``modelfleet k8s manifests``, run as the
command itself; no cluster is needed: manifests are made from what the workspace holds, and
every printed object (per generation too) validates against Kubernetes 1.37's schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from modelfleet import AksWebservice, InferenceConfig, Model, Workspace
from modelfleet.sdk.service_config import build_config
from modelfleet.targets.kubernetes.target import generation_objects

SCRIPTS = Path(__file__).resolve().parent.parent / "e2e_scripts"


def cli(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelfleet", "-w", str(ws), *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace.create(name="ws", path=tmp_path / "ws")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("{}")
    done = cli(ws.path, "compute", "attach", "-n", "prod", "--kubeconfig", str(kubeconfig), "--namespace", "models")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "attached compute target prod (namespace models)\n"
    return ws


def test_compute_list_show_detach(workspace: Workspace):
    listed = json.loads(cli(workspace.path, "compute", "list", "-o", "json").stdout)
    assert [(c["name"], c["computeType"], c["namespace"]) for c in listed] == [("prod", "Kubernetes", "models")]
    shown = json.loads(cli(workspace.path, "compute", "show", "-n", "prod", "-o", "json").stdout)
    assert shown["kubeconfig"].endswith("kubeconfig")
    refused = cli(workspace.path, "compute", "attach", "-n", "prod", "--kubeconfig", "/nope")
    assert (refused.returncode, refused.stderr.count("\n")) == (1, 1)
    assert "kubeconfig '/nope' is not a file" in refused.stderr
    assert cli(workspace.path, "compute", "detach", "-n", "prod").returncode == 0
    gone = cli(workspace.path, "compute", "show", "-n", "prod")
    assert gone.returncode == 1 and 'no compute target "prod"' in gone.stderr


def _store_service(ws: Workspace, tmp_path: Path) -> None:
    """A service recorded as deployed to "prod", as Model.deploy records it (no controller)."""
    weights = tmp_path / "weights.json"
    weights.write_text("{}")
    model = Model.register(ws, model_path=str(weights), model_name="weights")
    ic = InferenceConfig(entry_script="score.py", source_directory=str(SCRIPTS / "read_model"))
    dc = AksWebservice.deploy_configuration(cpu_cores=0.5, memory_gb=1, gpu_cores=1, tags={"team": "a b"})
    config = build_config(ws, [model], ic.to_spec(), dc)
    config["compute_target"] = "prod"
    ws.store.create_service("scorer", config, primary_key="p" * 32, secondary_key="s" * 32)


def test_k8s_manifests_prints_every_object_valid_for_1_37(workspace: Workspace, tmp_path: Path):
    _store_service(workspace, tmp_path)
    no_blobs = cli(workspace.path, "k8s", "manifests", "-n", "scorer", "--compute-target", "prod")
    assert no_blobs.returncode == 1 and "--blob-store URL" in no_blobs.stderr

    done = cli(
        workspace.path, "k8s", "manifests", "-n", "scorer", "--compute-target", "prod", "--blob-store", "http://b"
    )
    assert done.returncode == 0, done.stderr
    objects = list(yaml.safe_load_all(done.stdout))
    kinds = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert kinds == [
        ("Secret", "scorer-keys"),
        ("ConfigMap", "scorer-config"),
        ("Deployment", "scorer"),
        ("ServiceAccount", "modelfleet-router"),
        ("Role", "modelfleet-router"),
        ("RoleBinding", "modelfleet-router"),
        ("Deployment", "modelfleet-router"),
        ("Service", "modelfleet-router"),
    ]
    assert {o["metadata"]["namespace"] for o in objects} == {"models"}
    assert objects[0]["stringData"] == {}, "keys are printed only when asked for"
    assert "Secret scorer-keys has no keys" in done.stderr
    container = objects[2]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "1024Mi"},
        "limits": {"nvidia.com/gpu": "1"},
    }
    assert container["image"].startswith("modelfleet-replica:")
    secrets_rule = [r for r in objects[4]["rules"] if r["resources"] == ["secrets"]]
    assert secrets_rule == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["scorer-keys"], "verbs": ["get"]}
    ]
    for obj in objects:
        kubernetes_validate.validate(obj, "1.37.0", strict=True)

    keyed = cli(
        workspace.path, "k8s", "manifests", "-n", "scorer", "--blob-store", "http://b", "--with-keys", "--no-router"
    )
    objects = list(yaml.safe_load_all(keyed.stdout))
    assert [o["kind"] for o in objects] == ["Secret", "ConfigMap", "Deployment"]
    assert objects[0]["stringData"] == {"primaryKey": "p" * 32, "secondaryKey": "s" * 32}
    assert objects[0]["metadata"]["namespace"] == "default"


def test_the_targets_per_generation_objects_validate_too(workspace: Workspace, tmp_path: Path):
    from modelfleet.control.k8s_controller import service_source
    from modelfleet.spec import DeploySpec

    _store_service(workspace, tmp_path)
    record = workspace.store.get_service("scorer")
    compute = workspace.store.computes.get("prod")
    compute = type(compute)(compute.name, compute.kind, {**compute.settings, "blob_store": "http://b"}, 0.0)
    src = service_source(workspace.store, record, DeploySpec.from_dict(record.config["deploy"]), compute)
    config, deployment = generation_objects(src, 7, 3)
    assert (config["metadata"]["name"], deployment["metadata"]["name"]) == ("scorer-g7-config", "scorer-g7")
    assert deployment["spec"]["selector"]["matchLabels"]["modelfleet.io/generation"] == "7"
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": "scorer-g7-config"}} in volumes
    for obj in (config, deployment):
        kubernetes_validate.validate(obj, "1.37.0", strict=True)


def test_k8s_router_install_status_uninstall(tmp_path: Path, control_plane, admin, namespace: str):
    from kubernetes import client

    ws = Workspace.create(name="ws", path=tmp_path / "ws")
    attach = ["-n", "prod", "--kubeconfig", str(control_plane.admin_kubeconfig), "--namespace", namespace]
    assert cli(ws.path, "compute", "attach", *attach).returncode == 0
    target = ["--compute-target", "prod"]
    before = cli(ws.path, "k8s", "router", "status", *target)
    assert before.returncode == 0 and before.stdout.startswith(f"no router in namespace {namespace}")

    installed = cli(ws.path, "k8s", "router", "install", *target, "--image", "modelfleet-router:1", "--replicas", "1")
    assert installed.returncode == 0, installed.stderr
    kinds = ["ServiceAccount", "Role", "RoleBinding", "Deployment", "Service"]
    assert installed.stdout.splitlines() == [f"applied {k}/modelfleet-router" for k in kinds]
    status = json.loads(cli(ws.path, "k8s", "router", "status", *target, "-o", "json").stdout)
    assert (status["installed"], status["replicas"], status["serviceType"], status["ports"]) == (
        True,
        1,
        "LoadBalancer",
        [80],
    )
    again = cli(ws.path, "k8s", "router", "install", *target, "--image", "modelfleet-router:2", "--replicas", "2")
    assert again.returncode == 0, again.stderr
    dep = client.AppsV1Api(admin).read_namespaced_deployment("modelfleet-router", namespace)
    assert (dep.spec.replicas, dep.spec.template.spec.containers[0].image) == (2, "modelfleet-router:2")

    removed = cli(ws.path, "k8s", "router", "uninstall", *target)
    assert removed.returncode == 0 and removed.stdout.splitlines() == [
        f"deleted {k}/modelfleet-router" for k in reversed(kinds)
    ]
    assert json.loads(cli(ws.path, "k8s", "router", "status", *target, "-o", "json").stdout)["installed"] is False
