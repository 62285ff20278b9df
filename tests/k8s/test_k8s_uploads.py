"""Model data collected by a pod reaches the workspace: the "ship" sidecar uploads the replica's
records to the blob store with the pods' write credential (``targets/kubernetes/ship.py``), and
the compute target's controller lays them into the workspace's data folder
(``control/k8s_uploads.py``), where ``modelfleet data export`` reads them. First the two halves
against the private HTTP blob server alone, then a service deployed with
``collect_model_data=True`` on the control plane, scored through the router."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from k8s_control_plane import ControlPlane, wait_for
from k8s_services import SCRIPTS, attached_target, post_json, serve_blobs
from kubernetes import client
from node_standin import NodeStandIn

from fs_support import files_with_bytes
from modelfleet import AksWebservice, InferenceConfig, Model, Workspace
from modelfleet.control.k8s_uploads import sync_uploads
from modelfleet.errors import ConfigError
from modelfleet.sdk.k8s_uploads import set_upload_credential
from modelfleet.store.registry import META_DIR
from modelfleet.targets.kubernetes import manifests as m
from modelfleet.targets.kubernetes.fetch import Credential, FetchError
from modelfleet.targets.kubernetes.ship import Shipper, segment_key
from modelfleet.targets.kubernetes.upload_credential import check_upload_credential
from modelfleet.telemetry.collected import read_records
from modelfleet.telemetry.data_layout import service_data_dir

WSIG = "d3JpdGUtc2lnbmF0dXJlLW9mLXRoZS10ZXN0"  # what the private blob server requires for a PUT
WSAS = f"sv=2022-11-02&sr=c&sp=cw&se=2099-01-01T00%3A00%3A00Z&sig={WSIG}"
PART = "weights/1/inputs/2026/12/04"


def _line(i: int) -> bytes:
    rec = {"model": "weights", "version": "1", "designation": "inputs", "request_id": f"r{i}"}
    return json.dumps({**rec, "time": "2026-12-04T10:00:00.000000Z", "data": {"i": i}}).encode() + b"\n"


def test_shipped_segments_are_laid_back_whole_lines_once(tmp_path: Path):
    ws = Workspace.create(name="ws", path=tmp_path / "ws")
    folder = tmp_path / "pod-data"
    path = folder / PART / "scorer-abc.jsonl"
    path.parent.mkdir(parents=True)
    with serve_blobs(ws.store, write_sig=WSIG, log=tmp_path / "blobs.log") as blobs:
        shipper = Shipper(blobs, m.telemetry_prefix("scorer"), folder, Credential(sas=WSAS))
        path.write_bytes(_line(0) + _line(1) + _line(2)[:10])  # the last line still being written
        assert shipper.pass_once() == len(_line(0) + _line(1))
        with open(path, "ab") as f:
            f.write(_line(2)[10:] + _line(3))
        assert shipper.pass_once() == len(_line(2) + _line(3))
        assert shipper.pass_once() == 0  # nothing new: nothing sent
        # a sidecar restarted from offset 0 sends the same bytes again, cut elsewhere
        again = Shipper(blobs, m.telemetry_prefix("scorer"), folder, Credential(sas=WSAS))
        path.write_bytes(_line(0) + _line(1) + _line(2) + _line(3) + _line(4))
        again.pass_once()

        assert sync_uploads(ws.store, "scorer") == len(path.read_bytes())
        assert sync_uploads(ws.store, "scorer") == 0
        local = service_data_dir(ws.store.root / META_DIR, "scorer") / PART / "scorer-abc.jsonl"
        assert local.read_bytes() == path.read_bytes()
        assert [r["request_id"] for r in read_records(service_data_dir(ws.store.root / META_DIR, "scorer"))] == [
            "r0", "r1", "r2", "r3", "r4",
        ]  # fmt: skip
        key = segment_key(m.telemetry_prefix("scorer"), f"{PART}/scorer-abc.jsonl", 0)
        assert key == f"telemetry/scorer/data/{PART}/scorer-abc/0000000000000000.jsonl"

        # a gap (a segment not there yet) holds the file back rather than lay later bytes early
        seg = ws.store.blobs.root / key
        seg.unlink()
        local.unlink()
        assert sync_uploads(ws.store, "scorer") == 0 and not local.exists()

        # without the write credential the store refuses, and the shipper says why
        refused = Shipper(blobs, m.telemetry_prefix("other"), folder, Credential())
        with pytest.raises(FetchError, match="refused the upload credential, or none was given"):
            refused.pass_once()
    assert WSIG not in (tmp_path / "blobs.log").read_text()


def test_the_upload_credential_is_checked_and_never_sent_in_clear():
    with pytest.raises(ConfigError, match="travel in clear"):
        check_upload_credential("http://blobs.example/ws", WSAS, None)
    check_upload_credential("http://127.0.0.1:9/ws", WSAS, None)  # loopback: allowed
    check_upload_credential("https://blobs.example/ws", None, "t" * 16)
    with pytest.raises(ConfigError, match="upload credential sas must be a URL query string"):
        check_upload_credential("https://blobs.example/ws", "no equals sign", None)
    with pytest.raises(ConfigError, match="upload credential token must be 8-8192 visible ASCII"):
        check_upload_credential("https://blobs.example/ws", None, "has space")
    with pytest.raises(ConfigError, match="has no blob_store"):
        check_upload_credential(None, WSAS, None)
    with pytest.raises(FetchError, match="would travel in clear"):
        Shipper("http://blobs.example/ws", "telemetry/s/data", Path("/nonexistent"), Credential(sas=WSAS))


def test_a_collecting_service_gets_the_ship_sidecar_and_a_data_folder():
    from modelfleet.spec import aks_deploy_configuration

    src = m.ServiceSource(
        name="scorer",
        deploy=aks_deploy_configuration(collect_model_data=True),
        image="i:1",
        entry_script="score.py",
        blob_store="https://blobs.example/ws",
        models=(m.ModelLayout("weights", 1, ()),),
    )
    pod = m.service_objects(src)[2]["spec"]["template"]["spec"]
    replica, ship = pod["containers"]
    env = {e["name"]: e.get("value") for e in replica["env"]}
    assert env["MODELFLEET_DATA_DIR"] == m.DATA_MOUNT and env["MODELFLEET_MODELS"] == "weights:1"
    assert ship["name"] == "ship" and ship["command"] == m.SHIP_COMMAND
    assert ship["args"][ship["args"].index("--prefix") + 1] == "telemetry/scorer/data"
    refs = {e["name"]: e["valueFrom"].get("secretKeyRef") for e in ship["env"]}
    assert refs["MODELFLEET_UPLOAD_SAS"] == {
        "name": m.upload_secret_name("https://blobs.example/ws"),
        "key": "sas",
        "optional": True,
    }
    assert {"name": "data", "emptyDir": {}} in pod["volumes"]
    plain = replace_collect(src, False)
    assert [c["name"] for c in m.service_objects(plain)[2]["spec"]["template"]["spec"]["containers"]] == ["replica"]


def replace_collect(src: m.ServiceSource, on: bool) -> m.ServiceSource:
    from dataclasses import replace

    return replace(src, deploy=src.deploy.replace(collect_model_data=on))


@pytest.mark.timeout(600)
def test_records_collected_by_a_pod_appear_in_the_workspace_export(
    admin: client.ApiClient,
    node: NodeStandIn,
    namespace: str,
    control_plane: ControlPlane,
    service_account_kubeconfig,
    tmp_path: Path,
):
    ws = Workspace.create(name="ws", path=tmp_path / "ws")
    blob_log = tmp_path / "blobs.log"
    with attached_target(
        ws, admin, namespace, control_plane.admin_kubeconfig, service_account_kubeconfig, tmp_path, WSIG, blob_log
    ) as (target, blobs):
        name = set_upload_credential(target, sas=WSAS)
        assert name == m.upload_secret_name(blobs)
        assert target.serialize()["blob_store_upload_auth"] == "sas"
        try:
            weights = tmp_path / "weights.json"
            weights.write_text(json.dumps({"w": [1, 2, 3]}))
            model = Model.register(ws, model_path=str(weights), model_name="weights")
            ic = InferenceConfig(entry_script="score.py", source_directory=str(SCRIPTS / "read_model"))
            dc = AksWebservice.deploy_configuration(
                autoscale_enabled=False, num_replicas=1, period_seconds=1, collect_model_data=True
            )
            service = Model.deploy(ws, "scorer", [model], ic, dc, deployment_target=target)
            service.wait_for_deployment(timeout_sec=180)
            assert service.state == "Healthy", service.error
            primary, _ = service.get_keys()
            for i in range(3):
                assert post_json(service.scoring_uri, primary, {"i": i}) == 200

            def exported() -> list[dict] | None:
                done = subprocess.run(
                    [sys.executable, "-m", "modelfleet", "-w", str(ws.path), "data", "export", "-n", "scorer"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                records = [json.loads(line) for line in done.stdout.splitlines()] if done.returncode == 0 else []
                return records if len(records) >= 6 else None

            records = wait_for("the pod's records in the workspace's export", exported, timeout=120)
            inputs = [r["data"] for r in records if r["designation"] == "inputs"]
            predictions = [r["data"] for r in records if r["designation"] == "predictions"]
            assert inputs == [{"i": 0}, {"i": 1}, {"i": 2}]
            assert predictions == [{"model": {"w": [1, 2, 3]}}] * 3
            assert {(r["model"], r["version"]) for r in records} == {("weights", "1")}
            puts = [line for line in blob_log.read_text().splitlines() if "PUT" in line]
            data_puts = [line for line in puts if line.startswith("PUT /telemetry/scorer/data/weights/1/")]
            # with the upload credential the replica's log goes too (test_k8s_log_uploads.py)
            others = set(puts) - set(data_puts)
            assert data_puts and all(line.startswith("PUT /telemetry/scorer/logs/") for line in others), puts
            # the write credential is in the cluster's Secret only, never in the workspace
            for path, data in files_with_bytes(Path(ws.path)):  # the controller still lays and deletes
                assert WSIG.encode() not in data, path
            secret = client.CoreV1Api(admin).read_namespaced_secret(name, namespace)
            assert secret.metadata.labels["app.kubernetes.io/managed-by"] == "modelfleet"
            service.delete()
        finally:
            target.stop_controller()


def test_segments_in_a_shared_blob_store_are_read_through_its_filesystem(tmp_path: Path):
    # A team's workspace keeps its blobs in an object store (here file://, through fsspec as
    # az:// and s3:// are): the pods' segments are read from there, not from the local cache.
    shared = tmp_path / "shared"
    ws = Workspace.create(name="ws", path=tmp_path / "ws", blob_store=f"file://{shared}")
    lines = _line(0) + _line(1) + _line(2)
    for offset, part in ((0, lines[:100]), (100, lines[100:])):
        seg = shared / segment_key(m.telemetry_prefix("scorer"), f"{PART}/scorer-abc.jsonl", offset)
        seg.parent.mkdir(parents=True, exist_ok=True)
        seg.write_bytes(part)
    assert not (ws.store.blobs.root / "telemetry").exists()
    assert sync_uploads(ws.store, "scorer") == len(lines)
    records = read_records(service_data_dir(ws.store.root / META_DIR, "scorer"))
    assert [r["request_id"] for r in records] == ["r0", "r1", "r2"]
