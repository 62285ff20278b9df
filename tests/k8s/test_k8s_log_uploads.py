"""A pod's output reaches the workspace: with the target's upload credential, every service's
replica copies its stdout and stderr to pod-local files (``replica/logtee.py``), the ``ship``
sidecar uploads their new whole lines (``targets/kubernetes/ship.py``), the workspace lays
them back (``control/k8s_uploads.py``) and ``service.get_logs()`` reads that copy. First the
halves against the private HTTP blob server alone, then a service on the control plane."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from k8s_control_plane import ControlPlane, wait_for
from k8s_services import SCRIPTS, attached_target, post_json, serve_blobs
from kubernetes import client
from node_standin import NodeStandIn

from modelfleet import AksWebservice, InferenceConfig, Model, Workspace
from modelfleet.control.k8s_uploads import pod_logs_dir, sync_log_uploads, uploaded_logs
from modelfleet.sdk.k8s_uploads import set_upload_credential
from modelfleet.spec import aks_deploy_configuration
from modelfleet.targets.kubernetes import manifests as m
from modelfleet.targets.kubernetes.fetch import Credential
from modelfleet.targets.kubernetes.ship import Shipper, main, segment_key

WSIG = "d3JpdGUtc2lnbmF0dXJlLW9mLXRoZS10ZXN0"  # what the private blob server requires for a PUT
WSAS = f"sv=2022-11-02&sr=c&sp=cw&se=2099-01-01T00%3A00%3A00Z&sig={WSIG}"


def test_log_files_are_shipped_and_laid_back_once_per_pod(tmp_path: Path):
    ws = Workspace.create(name="ws", path=tmp_path / "ws")
    folder = tmp_path / "pod-logs"
    first, second = folder / "scorer-abc" / "000001.log", folder / "scorer-abc" / "000002.log"
    first.parent.mkdir(parents=True)
    with serve_blobs(ws.store, write_sig=WSIG) as blobs:
        shipper = Shipper(blobs, m.logs_prefix("scorer"), folder, Credential(sas=WSAS), suffix=".log")
        first.write_bytes(b"one\ntwo\nthr")  # "thr" is a line still being written
        assert shipper.pass_once() == len(b"one\ntwo\n")
        with open(first, "ab") as f:
            f.write(b"ee\n")
        second.write_bytes(b"after a restart\n")
        assert shipper.pass_once() == len(b"three\n") + len(b"after a restart\n")
        # a restarted sidecar starts from offset 0 again: same names, overlapping bytes
        Shipper(blobs, m.logs_prefix("scorer"), folder, Credential(sas=WSAS), suffix=".log").pass_once()

        key = segment_key(m.logs_prefix("scorer"), "scorer-abc/000001.log", 8, ".log")
        assert key == "telemetry/scorer/logs/scorer-abc/000001/0000000000000008.log"
        assert (ws.store.blobs.root / key).read_bytes() == b"three\n"
        assert sync_log_uploads(ws.store, "scorer") == len(b"one\ntwo\nthree\nafter a restart\n")
        assert sync_log_uploads(ws.store, "scorer") == 0
        laid = uploaded_logs(ws.store, "scorer")
        assert list(laid) == ["scorer-abc"]
        assert [p.read_bytes() for p in laid["scorer-abc"]] == [b"one\ntwo\nthree\n", b"after a restart\n"]
        assert laid["scorer-abc"][0].parent == pod_logs_dir(ws.store, "scorer") / "scorer-abc"
        # model data is not mistaken for a log, nor a log for model data
        assert not (ws.store.blobs.root / m.telemetry_prefix("scorer")).exists()


def test_the_sidecar_needs_a_folder_to_ship(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        main(["--blob-store", "http://127.0.0.1:9/ws"])
    assert "give --prefix with --dir, --logs-prefix with --logs-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--blob-store", "http://127.0.0.1:9/ws", "--logs-dir", "/tmp/x"])


def _pod(src: m.ServiceSource) -> dict:
    return m.service_objects(src)[2]["spec"]["template"]["spec"]


def test_a_target_with_an_upload_credential_ships_every_services_log():
    src = m.ServiceSource(
        name="scorer",
        deploy=aks_deploy_configuration(),
        image="i:1",
        entry_script="score.py",
        blob_store="https://blobs.example/ws",
        ship_logs=True,
    )
    pod = _pod(src)
    replica, ship = pod["containers"]
    env = {e["name"]: e.get("value") for e in replica["env"]}
    assert env["MODELFLEET_LOG_TEE"] == m.LOG_MOUNT and "MODELFLEET_DATA_DIR" not in env
    assert {"name": "logs", "mountPath": m.LOG_MOUNT} in replica["volumeMounts"]
    args = ship["args"]
    assert args[args.index("--logs-prefix") + 1] == "telemetry/scorer/logs"
    assert args[args.index("--logs-dir") + 1] == m.LOG_MOUNT and "--dir" not in args
    assert ship["volumeMounts"] == [{"name": "logs", "mountPath": m.LOG_MOUNT}]
    assert {"name": "logs", "emptyDir": {}} in pod["volumes"]

    from dataclasses import replace

    both = _pod(replace(src, deploy=src.deploy.replace(collect_model_data=True)))
    ship_args = both["containers"][1]["args"]
    assert "--dir" in ship_args and "--logs-dir" in ship_args
    plain = _pod(replace(src, ship_logs=False))  # no credential: no sidecar, no tee
    assert [c["name"] for c in plain["containers"]] == ["replica"]
    assert "MODELFLEET_LOG_TEE" not in {e["name"] for e in plain["containers"][0]["env"]}


@pytest.mark.timeout(600)
def test_a_pods_prints_and_tracebacks_reach_get_logs_through_the_upload(
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
        set_upload_credential(target, sas=WSAS)
        try:
            ic = InferenceConfig(entry_script="score.py", source_directory=str(SCRIPTS / "printing"))
            dc = AksWebservice.deploy_configuration(autoscale_enabled=False, num_replicas=1, period_seconds=1)
            service = Model.deploy(ws, "talker", [], ic, dc, deployment_target=target)
            service.wait_for_deployment(timeout_sec=180)
            assert service.state == "Healthy", service.error
            primary, _ = service.get_keys()
            assert post_json(service.scoring_uri, primary, {"i": 1}) == 200
            assert post_json(service.scoring_uri, primary, {"i": 2, "fail": True}) == 500

            def logs_with(*parts: str) -> str | None:
                text = service.get_logs()
                return text if all(p in text for p in parts) else None

            text = wait_for(
                "the pod's print()s and run()'s traceback in get_logs()",
                lambda: logs_with("printing: run() got i=2", "ValueError: run() was told to fail at i=2"),
                timeout=120,
            )
            assert "printing: init done" in text and "printing: run() got i=1" in text
            assert "Traceback (most recent call last)" in text
            assert "; uploaded log) ===" in text, text  # the workspace's copy, not pods/log
            assert "no log from the API" not in text, text  # the stand-in serves no pods/log
            puts = [line for line in blob_log.read_text().splitlines() if "PUT" in line]
            assert puts and all(line.startswith("PUT /telemetry/talker/logs/talker-") for line in puts), puts

            # the sidecar is killed and restarted: it uploads the files from offset 0 again,
            # and no line appears twice
            (pod,) = client.CoreV1Api(admin).list_namespaced_pod(namespace).items
            ship_pid = node.pod_pids()[pod.metadata.name][-1]  # init container done; replica, ship
            uploads_before = len(puts)
            os.kill(ship_pid, signal.SIGKILL)
            first_key = f"PUT /telemetry/talker/logs/{pod.metadata.name}/000001/{0:016d}.log"

            def sent_again() -> bool | None:  # the restarted sidecar sent the file from offset 0
                lines = blob_log.read_text().splitlines()
                return (len(lines) > uploads_before and lines.count(first_key) >= 2) or None

            wait_for("the restarted sidecar's uploads from offset 0", sent_again, timeout=120)
            statuses = client.CoreV1Api(admin).read_namespaced_pod(pod.metadata.name, namespace).status
            assert {c.name: c.restart_count for c in statuses.container_statuses}["ship"] >= 1
            assert post_json(service.scoring_uri, primary, {"i": 3}) == 200
            text = wait_for("the line after the restart", lambda: logs_with("printing: run() got i=3"), timeout=120)
            for line in ("printing: init done", "printing: run() got i=1", "printing: run() got i=2"):
                assert text.count(line) == 1, text
            assert text.count("ValueError: run() was told to fail at i=2") == 1, text
            service.delete()
        finally:
            target.stop_controller()


def test_concurrent_passes_lay_each_byte_once(tmp_path: Path):
    # the controller's pass and a get_logs() call may run at once: a per-folder flock keeps
    # them from both appending the same segment
    import fcntl
    import threading

    ws = Workspace.create(name="ws", path=tmp_path / "ws")
    lines = b"".join(f"line {i}\n".encode() for i in range(50))
    for offset in range(0, len(lines), 70):
        cut = lines[offset : offset + 70]
        seg = ws.store.blobs.root / segment_key(m.logs_prefix("s"), "s-pod/000001.log", offset, ".log")
        seg.parent.mkdir(parents=True, exist_ok=True)
        seg.write_bytes(cut)
    root = pod_logs_dir(ws.store, "s")
    root.mkdir(parents=True)
    held = os.open(root / ".lock", os.O_WRONLY | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    added: list[int] = []
    threads = [threading.Thread(target=lambda: added.append(sync_log_uploads(ws.store, "s"))) for _ in range(6)]
    for t in threads:
        t.start()
    threads[0].join(0.5)
    assert added == [] and not (root / "s-pod").exists()  # waiting for the lock
    os.close(held)  # releases it
    for t in threads:
        t.join(30)
    assert sorted(added) == [0] * 5 + [len(lines)]
    assert (root / "s-pod" / "000001.log").read_bytes() == lines
