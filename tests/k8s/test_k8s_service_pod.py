"""A service's generated objects, run for real: the init container fetches the model and the
snapshot by digest from a blob store served over HTTP, the replica starts from the pod spec,
and a scoring request to the pod's address is answered by the user's score.py."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from k8s_control_plane import wait_for
from k8s_services import serve_blobs
from kubernetes import client
from kubernetes.utils.create_from_yaml import create_from_yaml_single_item
from node_standin import NodeStandIn

from modelfleet.spec import aks_deploy_configuration
from modelfleet.store.registry import Store
from modelfleet.targets.kubernetes import fetch
from modelfleet.targets.kubernetes import manifests as m

SCRIPTS = Path(__file__).resolve().parent.parent / "e2e_scripts"


@pytest.fixture
def blob_server(store: Store) -> Iterator[str]:
    with serve_blobs(store) as url:
        yield url


def _source(store: Store, tmp_path: Path, namespace: str, blob_store: str) -> m.ServiceSource:
    weights = tmp_path / "weights.json"
    weights.write_text(json.dumps({"w": [1, 2, 3]}))
    record = store.register_model("weights", weights)
    snapshot = store.put_snapshot(SCRIPTS / "read_model")
    return m.ServiceSource(
        name="scorer",
        deploy=aks_deploy_configuration(
            autoscale_enabled=False, num_replicas=1, namespace=namespace, period_seconds=1, primary_key="k" * 32
        ),
        image="modelfleet-replica:test",
        entry_script="score.py",
        blob_store=blob_store,
        models=(
            m.ModelLayout(record.name, record.version, tuple(m.ModelFile(f.relpath, f.digest) for f in record.files)),
        ),
        snapshot=snapshot,
        source_name="read_model",
        replica_secret=m.new_replica_secret(),  # what the Kubernetes target puts in Secret scorer-keys
    )


@pytest.mark.timeout(600)
def test_a_generated_service_runs_and_scores(
    admin: client.ApiClient, node: NodeStandIn, namespace: str, store: Store, blob_server: str, tmp_path: Path
):
    apps, core = client.AppsV1Api(admin), client.CoreV1Api(admin)
    src = _source(store, tmp_path, namespace, blob_server)
    start = time.monotonic()
    for obj in m.service_objects(src):
        create_from_yaml_single_item(admin, obj)

    wait_for(
        "the Deployment to be available",
        lambda: apps.read_namespaced_deployment_status("scorer", namespace).status.available_replicas == 1,
    )
    print(f"deployment created -> available: {time.monotonic() - start:.1f} s")
    (pod,) = core.list_namespaced_pod(namespace, label_selector=f"{m.SERVICE_LABEL}=scorer").items
    assert pod.status.init_container_statuses[0].state.terminated.exit_code == 0
    # The pod answers only with the service's replica secret (Secret scorer-keys), as the router sends it.
    data = core.read_namespaced_secret(m.secret_name("scorer"), namespace).data
    secret = base64.b64decode(data[m.REPLICA_SECRET_KEY]).decode()
    with pytest.raises(urllib.error.HTTPError, match="403"):
        _score(pod.status.pod_ip, None)
    assert _score(pod.status.pod_ip, secret) == {"model": {"w": [1, 2, 3]}}

    # A changed setting rolls the pod; with maxUnavailable 0 a Ready one is there throughout.
    old_pids = node.pod_pids()[pod.metadata.name]
    _, config, deployment = m.service_objects(replace(src, deploy=src.deploy.replace(scoring_timeout_ms=30000)))
    core.replace_namespaced_config_map(config["metadata"]["name"], namespace, config)
    apps.replace_namespaced_deployment("scorer", namespace, deployment)

    def rolled() -> client.V1Pod | None:
        status = apps.read_namespaced_deployment_status("scorer", namespace).status
        assert (status.available_replicas or 0) >= 1, "no available replica during the rolling update"
        pods = core.list_namespaced_pod(namespace, label_selector=f"{m.SERVICE_LABEL}=scorer").items
        done = status.updated_replicas == status.replicas == status.available_replicas == 1 and len(pods) == 1
        return pods[0] if done and pods[0].metadata.name != pod.metadata.name else None

    new_pod = wait_for("the rolling update", rolled)
    env = {e.name: e.value for e in new_pod.spec.containers[0].env}
    assert env["SCORING_TIMEOUT_MS"] == "30000"
    assert _score(new_pod.status.pod_ip, secret) == {"model": {"w": [1, 2, 3]}}  # the Secret's, unchanged
    wait_for("the old pod's processes to end", lambda: not any(Path(f"/proc/{pid}").exists() for pid in old_pids))


def _score(pod_ip: str, secret: str | None) -> object:
    headers = {"Content-Type": "application/json", **({"x-modelfleet-replica-secret": secret} if secret else {})}
    url = f"http://{pod_ip}:{m.REPLICA_PORT}/score"
    req = urllib.request.Request(url, data=b"{}", headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_the_fetcher_refuses_a_blob_that_does_not_match_its_digest(tmp_path: Path):
    blobs = tmp_path / "blobs"
    digest = "ab" + "0" * 62
    (blobs / "ab").mkdir(parents=True)
    (blobs / "ab" / digest[2:]).write_bytes(b"not what the digest says")
    layout = {"files": [{"path": "azureml-models/m/1/model.bin", "digest": digest}], "snapshot": None}
    with pytest.raises(fetch.FetchError, match="sha256"):
        fetch.fetch(blobs.as_uri(), layout, tmp_path / "app")
    assert not (tmp_path / "app" / "azureml-models" / "m" / "1" / "model.bin").exists()


def test_the_fetcher_keeps_every_path_inside_the_app_folder(tmp_path: Path):
    layout = {"files": [{"path": "../escape", "digest": "a" * 64}]}
    with pytest.raises(fetch.FetchError, match="outside"):
        fetch.fetch((tmp_path / "blobs").as_uri(), layout, tmp_path / "app")


def test_the_fetcher_says_what_is_wrong_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    layout = tmp_path / "layout.json"
    argv = ["--blob-store", "ftp://blobs", "--layout", str(layout), "--dest", str(tmp_path / "app")]
    assert fetch.main(argv) == 1
    assert capsys.readouterr().err.startswith(f"fetch: cannot read layout {layout}")
    layout.write_text(json.dumps({"files": [{"path": "m.bin", "digest": "a" * 64}]}))
    assert fetch.main(argv) == 1
    assert capsys.readouterr().err == "fetch: blob store URL must be http://, https:// or file:// (got 'ftp://blobs')\n"
