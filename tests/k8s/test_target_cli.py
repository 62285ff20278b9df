"""``modelfleet compute attach|list|show|detach`` and ``modelfleet k8s manifests``, run as the
command itself; no cluster is needed: manifests are made from what the workspace holds, and
every printed object (per generation too) validates against Kubernetes 1.37's schema."""

from __future__ import annotations

import base64
import gzip
import io
import json
import subprocess
import sys
import tarfile
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
        [80, 8001],  # HTTP, and the V2 gRPC API
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


def _manifests_with_tls_ingress_kaniko(ws: Workspace, tmp_path: Path, *extra: str) -> tuple[list, str, Path, Path]:
    from test_router_tls import issue

    kubeconfig = tmp_path / "kubeconfig"
    attached = cli(
        ws.path, "compute", "attach", "-n", "built", "--kubeconfig", str(kubeconfig), "--namespace", "models",
        "--blob-store", "https://blobs.example/ws", "--image-registry", "registry.example", "--image-build", "kaniko",
    )  # fmt: skip
    assert attached.returncode == 0, attached.stderr
    config = json.loads(cli(ws.path, "compute", "show", "-n", "built", "-o", "json").stdout)
    assert config["imageBuild"] == "kaniko"
    _, cert, key = issue(tmp_path)
    done = cli(
        ws.path, "k8s", "manifests", "-n", "scorer", "--compute-target", "built", "--load-balancer-type", "ClusterIP",
        "--ssl-enabled", "--ssl-cert-pem-file", str(cert), "--ssl-key-pem-file", str(key),
        "--ssl-cname", "models.example.com", "--ingress-class", "nginx", *extra,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return list(yaml.safe_load_all(done.stdout)), done.stdout + done.stderr, cert, key


def test_k8s_manifests_print_the_kaniko_job_the_ingress_and_never_the_tls_key(workspace: Workspace, tmp_path: Path):
    from test_router_tls import issue

    from modelfleet.targets.kubernetes import kaniko
    from modelfleet.targets.kubernetes import manifests as m

    _store_service(workspace, tmp_path)
    objects, printed, cert, key = _manifests_with_tls_ingress_kaniko(workspace, tmp_path)
    kinds = [(o["kind"], o["metadata"]["name"]) for o in objects]
    image = objects[4]["spec"]["template"]["spec"]["containers"][0]["image"]
    build = kaniko.build_name(image)
    assert image.startswith("registry.example/modelfleet-env:") and image.endswith("-cuda")  # gpu_cores=1
    assert kinds == [
        ("ConfigMap", build),  # the build first: it pushes the tag the Deployment pulls
        ("Job", build),
        ("Secret", "scorer-keys"),
        ("ConfigMap", "scorer-config"),
        ("Deployment", "scorer"),
        ("ServiceAccount", "modelfleet-router"),
        ("Role", "modelfleet-router"),
        ("RoleBinding", "modelfleet-router"),
        ("Deployment", "modelfleet-router"),
        ("Service", "modelfleet-router"),
        ("Ingress", "modelfleet-router"),
    ]
    job = objects[1]
    assert f"--destination={image}" in job["spec"]["template"]["spec"]["containers"][0]["args"]
    context = gzip.decompress(base64.b64decode(objects[0]["binaryData"][kaniko.CONTEXT_KEY]))
    with tarfile.open(fileobj=io.BytesIO(context)) as tar:
        assert "Dockerfile" in tar.getnames()
    router = objects[8]["spec"]["template"]
    assert router["metadata"]["annotations"][m.TLS_DIGEST_ANNOTATION] == m.tls_digest(cert.read_bytes())
    assert {"name": "tls", "secret": {"secretName": m.ROUTER_TLS_SECRET}} in router["spec"]["volumes"]
    assert objects[9]["spec"]["ports"][0]["port"] == 443 and objects[9]["spec"]["type"] == "ClusterIP"
    ingress = objects[10]["spec"]
    assert ingress["ingressClassName"] == "nginx"
    assert ingress["tls"] == [{"hosts": ["models.example.com"], "secretName": m.ROUTER_TLS_SECRET}]
    for obj in objects:
        kubernetes_validate.validate(obj, "1.37.0", strict=True)
    # the key is nowhere in what was printed, nor the certificate's body (its Secret is left out)
    key_body = "".join(key.read_text().splitlines()[1:-1])
    assert key_body[:40] not in printed.replace("\n", "")
    assert not [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == m.ROUTER_TLS_SECRET]
    command = (
        f"kubectl -n models create secret tls {m.ROUTER_TLS_SECRET} --cert={cert} --key={key} "
        f"&& kubectl -n models label secret {m.ROUTER_TLS_SECRET} app.kubernetes.io/managed-by=modelfleet "
        "app.kubernetes.io/component=router app.kubernetes.io/name=modelfleet-router"
    )
    assert f"(left out here: it holds the key); create it with: {command}\n" in printed
    assert f"note: Job {build} builds and pushes {image}" in printed

    # refused, naming the flag: a key that is not the certificate's, an Ingress without ClusterIP
    (tmp_path / "other").mkdir()
    _, other_cert, _ = issue(tmp_path / "other")
    wrong = cli(
        workspace.path, "k8s", "manifests", "-n", "scorer", "--blob-store", "https://b.example", "--ssl-enabled",
        "--ssl-cert-pem-file", str(other_cert), "--ssl-key-pem-file", str(key),
    )  # fmt: skip
    assert wrong.returncode == 1 and "are not a PEM certificate and its unencrypted private key" in wrong.stderr
    assert wrong.stdout == ""
    no_lb = cli(
        workspace.path, "k8s", "manifests", "-n", "scorer", "--blob-store", "https://b.example",
        "--ingress-class", "nginx", "--ssl-cname", "models.example.com",
    )  # fmt: skip
    assert no_lb.returncode == 1 and 'an Ingress goes with load_balancer_type="ClusterIP"' in no_lb.stderr


@pytest.mark.timeout(600)  # may be the test that starts the control plane
def test_the_printed_kaniko_job_tls_router_and_ingress_are_accepted_by_the_api_server(
    workspace: Workspace, tmp_path: Path, admin, namespace: str
):
    from kubernetes.utils.create_from_yaml import create_from_yaml_single_item

    _store_service(workspace, tmp_path)
    objects, _, _, _ = _manifests_with_tls_ingress_kaniko(workspace, tmp_path, "--namespace", namespace)
    assert {o["metadata"]["namespace"] for o in objects} == {namespace}
    for obj in objects:  # server-side dry run: validation, defaulting and admission, nothing stored
        created = create_from_yaml_single_item(admin, obj, dry_run="All")
        assert created.metadata.name == obj["metadata"]["name"], obj["kind"]


def test_k8s_upload_credential_is_read_from_the_environment_and_refused_in_clear(workspace: Workspace, tmp_path: Path):
    import os

    kubeconfig = tmp_path / "kubeconfig"
    attached = cli(
        workspace.path, "compute", "attach", "-n", "clear", "--kubeconfig", str(kubeconfig),
        "--blob-store", "http://blobs.example/ws",
    )  # fmt: skip
    assert attached.returncode == 0, attached.stderr
    unset = cli(workspace.path, "k8s", "upload-credential", "--compute-target", "clear", "--sas-env", "H1_NOPE")
    assert unset.returncode == 1 and "--sas-env: environment variable H1_NOPE is not set or empty" in unset.stderr
    env = {**os.environ, "H1_WRITE_SAS": "sv=1&sp=cw&sig=c2VjcmV0LXNpZw"}
    clear = subprocess.run(
        [sys.executable, "-m", "modelfleet", "-w", str(workspace.path), "k8s", "upload-credential"]
        + ["--compute-target", "clear", "--sas-env", "H1_WRITE_SAS"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert clear.returncode == 1 and "would travel in clear" in clear.stderr, clear.stderr
    assert "c2VjcmV0LXNpZw" not in clear.stdout + clear.stderr
    shown = json.loads(cli(workspace.path, "compute", "show", "-n", "clear", "-o", "json").stdout)
    assert "blobStoreUploadAuth" not in shown


def test_k8s_manifests_of_a_collecting_service_print_its_sidecar_and_not_its_upload_secret(
    workspace: Workspace, tmp_path: Path
):
    from modelfleet.targets.kubernetes import manifests as m

    weights = tmp_path / "weights.json"
    weights.write_text("{}")
    model = Model.register(workspace, model_path=str(weights), model_name="weights")
    ic = InferenceConfig(entry_script="score.py", source_directory=str(SCRIPTS / "read_model"))
    config = build_config(workspace, [model], ic.to_spec(), AksWebservice.deploy_configuration(collect_model_data=True))
    workspace.store.create_service(
        "collects", {**config, "compute_target": "prod"}, primary_key="p" * 32, secondary_key="s" * 32
    )
    done = cli(
        workspace.path, "k8s", "manifests", "-n", "collects", "--blob-store", "https://b.example/ws", "--no-router"
    )
    assert done.returncode == 0, done.stderr
    objects = list(yaml.safe_load_all(done.stdout))
    assert [o["kind"] for o in objects] == ["Secret", "ConfigMap", "Deployment"]  # no upload Secret
    containers = objects[2]["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["replica", "ship"]
    name = m.upload_secret_name("https://b.example/ws")
    assert f"Secret {name} (left out here;" in done.stderr
    assert f"kubectl -n default create secret generic {name} --from-literal=sas=" in done.stderr
    for obj in objects:
        kubernetes_validate.validate(obj, "1.37.0", strict=True)
