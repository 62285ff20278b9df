"""Retention of what the pods upload (``control/k8s_uploads.py``): the laid pod logs are bounded
as a local replica's rotated log is, and the segments laid are deleted from the workspace's own
blob folder. The decision (``logs_to_prune``) over plain data; the files on disk; then the
controller doing both for a service on the control plane."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from k8s_control_plane import ControlPlane, wait_for
from k8s_services import SCRIPTS, attached_target, post_json
from kubernetes import client
from node_standin import NodeStandIn

from modelfleet import AksWebservice, InferenceConfig, Model, Workspace
from modelfleet.control.k8s_uploads import (
    LaidLog,
    LogRetention,
    logs_to_prune,
    pod_logs_dir,
    prune_log_uploads,
    sync_log_uploads,
    sync_uploads,
)
from modelfleet.sdk.k8s_uploads import set_upload_credential
from modelfleet.targets.kubernetes import manifests as m
from modelfleet.targets.kubernetes.ship import segment_key

WSIG = "d3JpdGUtc2lnbmF0dXJlLW9mLXRoZS10ZXN0"
WSAS = f"sv=2022-11-02&sr=c&sp=cw&se=2099-01-01T00%3A00%3A00Z&sig={WSIG}"
NOW = 1_800_000_000.0
HOUR = 3600.0


def _names(files: list[LaidLog]) -> list[str]:
    return [f"{f.pod}/{f.seq}" for f in files]


def test_each_pod_keeps_its_newest_files_as_the_replicas_rotation_does():
    files = [LaidLog("p", seq, 100, NOW - HOUR + seq) for seq in range(1, 8)]
    # running: the newest backups + 1 = 4 stay, the three oldest go
    assert _names(logs_to_prune(files, {"p"}, NOW, LogRetention())) == ["p/1", "p/2", "p/3"]
    assert _names(logs_to_prune(files, {"p"}, NOW, LogRetention(backups=0))) == [f"p/{i}" for i in range(1, 7)]
    assert logs_to_prune(files, {"p"}, NOW, LogRetention(backups=10)) == []
    assert logs_to_prune([], set(), NOW, LogRetention()) == []


def test_only_the_last_pods_gone_are_kept_and_running_or_recent_pods_never_go():
    files = [LaidLog(f"gone{i}", 1, 10, NOW - HOUR * (10 - i)) for i in range(6)]  # gone5 newest
    files += [LaidLog("quiet", 1, 10, NOW - 20 * HOUR)]  # running, silent for hours
    files += [LaidLog("fresh", 1, 10, NOW - 60)]  # not listed yet, but written a minute ago
    retention = LogRetention(gone_pods=4)
    doomed = logs_to_prune(files, {"quiet"}, NOW, retention)
    assert _names(doomed) == ["gone0/1", "gone1/1"]  # oldest first; gone2..gone5 kept
    assert _names(logs_to_prune(files, {"quiet"}, NOW, LogRetention(gone_pods=0))) == [f"gone{i}/1" for i in range(6)]
    # not running and silent longer than recent_s: counted gone, the oldest of them then goes
    assert "quiet/1" in _names(logs_to_prune(files, set(), NOW, retention))
    assert "fresh/1" not in _names(logs_to_prune(files, set(), NOW, LogRetention(gone_pods=0)))
    assert "fresh/1" in _names(logs_to_prune(files, set(), NOW, LogRetention(gone_pods=0, recent_s=30)))
    # a pod gone but kept still loses its files beyond backups + 1
    many = [LaidLog("g", seq, 1, NOW - HOUR) for seq in range(1, 7)]
    assert _names(logs_to_prune(many, set(), NOW, retention)) == ["g/1", "g/2"]


def test_bad_retention_is_refused_naming_the_fields():
    with pytest.raises(ValueError, match="backups, gone_pods and recent_s must be >= 0"):
        LogRetention(backups=-1)
    with pytest.raises(ValueError, match="got 3, -2"):
        LogRetention(gone_pods=-2)


def _segment(ws: Workspace, service: str, rel: str, offset: int, data: bytes) -> Path:
    path = ws.store.blobs.root / segment_key(m.logs_prefix(service), rel, offset, ".log")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_laid_segments_leave_the_blob_folder_and_pruned_files_take_theirs(tmp_path: Path):
    ws = Workspace.create(name="ws", path=tmp_path / "ws")
    first = _segment(ws, "s", "p1/000001.log", 0, b"one\n")
    gap = _segment(ws, "s", "p1/000001.log", 100, b"later\n")  # bytes 4..100 not uploaded yet
    assert sync_log_uploads(ws.store, "s") == 4 and first.exists()  # get_logs()' call keeps them
    assert sync_log_uploads(ws.store, "s", delete_laid=True) == 0
    assert not first.exists() and gap.exists()  # laid: gone; not laid: kept
    laid = pod_logs_dir(ws.store, "s") / "p1" / "000001.log"
    assert laid.read_bytes() == b"one\n"
    assert sync_log_uploads(ws.store, "s", delete_laid=True) == 0 and laid.read_bytes() == b"one\n"

    # model data the same way
    data_key = segment_key(m.telemetry_prefix("s"), "w/1/inputs/2026/12/04/p1.jsonl", 0)
    data_segment = ws.store.blobs.root / data_key
    data_segment.parent.mkdir(parents=True)
    data_segment.write_bytes(b'{"a": 1}\n')
    assert sync_uploads(ws.store, "s", delete_laid=True) == 9 and not data_segment.exists()
    assert not (ws.store.blobs.root / m.telemetry_prefix("s")).exists()  # empty folders go too

    # p1 is gone (not running, written long ago) and retention keeps no gone pod: its laid file
    # and the segment still waiting behind the gap go, so nothing lays it again
    os.utime(laid, (NOW - HOUR, NOW - HOUR))
    _segment(ws, "s", "p2/000001.log", 0, b"two\n")
    sync_log_uploads(ws.store, "s", delete_laid=True)
    pruned = prune_log_uploads(ws.store, "s", {"p2"}, NOW, LogRetention(gone_pods=0))
    assert (pruned.files, pruned.bytes, pruned.segments) == (1, 4, 1)
    assert not gap.exists() and not laid.parent.exists()
    assert sync_log_uploads(ws.store, "s", delete_laid=True) == 0
    assert sorted(p.name for p in pod_logs_dir(ws.store, "s").iterdir() if p.is_dir()) == ["p2"]


def test_a_shared_blob_store_keeps_its_segments(tmp_path: Path):
    # teammates' machines lay the same segments into their own copies: none deletes them
    shared = tmp_path / "shared"
    ws = Workspace.create(name="ws", path=tmp_path / "ws", blob_store=f"file://{shared}")
    seg = shared / segment_key(m.logs_prefix("s"), "p1/000001.log", 0, ".log")
    seg.parent.mkdir(parents=True)
    seg.write_bytes(b"one\n")
    assert sync_log_uploads(ws.store, "s", delete_laid=True) == 4 and seg.exists()
    laid = pod_logs_dir(ws.store, "s") / "p1" / "000001.log"
    os.utime(laid, (NOW - HOUR, NOW - HOUR))
    assert prune_log_uploads(ws.store, "s", set(), NOW, LogRetention(gone_pods=0)).segments == 0
    assert seg.exists() and not laid.exists()


@pytest.mark.timeout(600)
def test_the_controller_deletes_laid_segments_and_old_pods_logs(
    admin: client.ApiClient,
    node: NodeStandIn,
    namespace: str,
    control_plane: ControlPlane,
    service_account_kubeconfig,
    tmp_path: Path,
):
    ws = Workspace.create(name="ws", path=tmp_path / "ws")
    with attached_target(
        ws,
        admin,
        namespace,
        control_plane.admin_kubeconfig,
        service_account_kubeconfig,
        tmp_path,
        WSIG,
        tmp_path / "blobs.log",
    ) as (target, blobs):
        set_upload_credential(target, sas=WSAS)
        try:
            ic = InferenceConfig(entry_script="score.py", source_directory=str(SCRIPTS / "printing"))
            dc = AksWebservice.deploy_configuration(autoscale_enabled=False, num_replicas=1, period_seconds=1)
            service = Model.deploy(ws, "talker", [], ic, dc, deployment_target=target)
            service.wait_for_deployment(timeout_sec=180)
            assert service.state == "Healthy", service.error
            (pod,) = client.CoreV1Api(admin).list_namespaced_pod(namespace).items
            running = pod.metadata.name
            # six pods gone an hour or more ago (as replaced pods leave their laid logs)
            root = pod_logs_dir(ws.store, "talker")
            for i in range(6):
                old = root / f"talker-gone{i}" / "000001.log"
                old.parent.mkdir(parents=True, exist_ok=True)
                old.write_bytes(b"an old pod's line\n")
                os.utime(old, (time.time() - (10 - i) * HOUR,) * 2)
            primary, _ = service.get_keys()
            assert post_json(service.scoring_uri, primary, {"i": 5}) == 200
            uploads = ws.store.blobs.root / m.logs_prefix("talker")

            first_segment = uploads / running / "000001" / f"{0:016d}.log"

            def laid_and_deleted() -> bool | None:
                laid = root / running / "000001.log"
                text = laid.read_text() if laid.exists() else ""
                return ("printing: run() got i=5" in text and not first_segment.exists()) or None

            wait_for("the controller's lay, and the laid segments deleted", laid_and_deleted, timeout=120)
            put = f"PUT /{m.logs_prefix('talker')}/{running}/000001/{0:016d}.log"
            assert put in (tmp_path / "blobs.log").read_text().splitlines()  # it was there, then laid

            def pruned() -> list[str] | None:
                pods = sorted(p.name for p in root.iterdir() if p.is_dir())
                return pods if len(pods) == 5 else None

            # the controller's retention: the running pod, and the four pods gone most recently
            pods = wait_for("the two oldest gone pods' logs deleted", pruned, timeout=120)
            assert pods == sorted([running] + [f"talker-gone{i}" for i in range(2, 6)])
            assert "printing: run() got i=5" in service.get_logs()
            service.delete()
        finally:
            target.stop_controller()


def test_a_segment_deleted_after_it_was_listed_stops_its_file(tmp_path: Path):
    # get_logs() lists the segments, then waits for the lock the controller holds while it
    # prunes a file with its segments: the segment gone is not an error, the file stops there
    from modelfleet.control.k8s_uploads import _lay

    ws = Workspace.create(name="ws", path=tmp_path / "ws")
    root = pod_logs_dir(ws.store, "s")
    listed = [("p/000001.log", 0, 4, str(ws.store.blobs.root / "telemetry/s/logs/p/000001/gone.log"))]
    assert _lay(ws.store, iter(listed), root) == 0
    assert not (root / "p" / "000001.log").exists()
