"""An upload credential set after deploy reaches the services already deployed: the compute
target's controller sees the target's upload settings change, plans every service again
(``ServiceController.replan``) and applies the plans that changed, so the Deployment rolls to a
template with the "ship" sidecar, and back without it once the credential is removed (for a
service that collects no data). A controller restart applies the template again, which rolls
nothing when it is the same. On the real control plane, the node stand-in running the pods."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from k8s_control_plane import ControlPlane, wait_for
from k8s_services import SCRIPTS, attached_target, post_json
from kubernetes import client
from node_standin import NodeStandIn

from modelfleet import AksWebservice, InferenceConfig, Model, Workspace
from modelfleet.control.k8s_controller import log_path
from modelfleet.sdk.k8s_uploads import set_upload_credential
from modelfleet.targets.kubernetes import manifests as m
from modelfleet.targets.kubernetes.target import deployment_name

WSIG = "d3JpdGUtc2lnbmF0dXJlLW9mLXRoZS10ZXN0"  # what the private blob server requires for a PUT
WSAS = f"sv=2022-11-02&sr=c&sp=cw&se=2099-01-01T00%3A00%3A00Z&sig={WSIG}"


def _template(apps: client.AppsV1Api, namespace: str, name: str) -> tuple[int, dict[str, Any]]:
    """The Deployment's metadata.generation and its pod spec, as plain data."""
    d = apps.read_namespaced_deployment(name, namespace)
    return d.metadata.generation, apps.api_client.sanitize_for_serialization(d.spec.template.spec)


def _shape(pod: dict[str, Any]) -> tuple[list[str], bool, bool]:
    """(containers, the replica tees its log, a "logs" volume)."""
    replica = pod["containers"][0]
    tee = any(e["name"] == "MODELFLEET_LOG_TEE" for e in replica.get("env") or [])
    return [c["name"] for c in pod["containers"]], tee, any(v["name"] == "logs" for v in pod.get("volumes") or [])


@pytest.mark.timeout(600)
def test_a_credential_set_after_deploy_rolls_the_sidecar_in_and_removing_it_rolls_it_out(
    admin: client.ApiClient,
    node: NodeStandIn,
    namespace: str,
    control_plane: ControlPlane,
    service_account_kubeconfig,
    tmp_path: Path,
):
    ws = Workspace.create(name="ws", path=tmp_path / "ws")
    apps, core = client.AppsV1Api(admin), client.CoreV1Api(admin)
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
        try:
            ic = InferenceConfig(entry_script="score.py", source_directory=str(SCRIPTS / "printing"))
            dc = AksWebservice.deploy_configuration(autoscale_enabled=False, num_replicas=1, period_seconds=1)
            service = Model.deploy(ws, "talker", [], ic, dc, deployment_target=target)
            service.wait_for_deployment(timeout_sec=180)
            assert service.state == "Healthy", service.error
            name = deployment_name("talker", 1)
            _, pod = _template(apps, namespace, name)
            assert _shape(pod) == (["replica"], False, False)  # no credential: no sidecar, no tee
            (first_pod,) = core.list_namespaced_pod(namespace, label_selector=f"{m.SERVICE_LABEL}=talker").items

            set_upload_credential(target, sas=WSAS)

            def rolled(expected: tuple[list[str], bool, bool]) -> tuple[int, dict[str, Any]] | None:
                generation, pod = _template(apps, namespace, name)
                return (generation, pod) if _shape(pod) == expected else None

            with_ship, pod = wait_for("the sidecar in the template", lambda: rolled((["replica", "ship"], True, True)))
            args = pod["containers"][1]["args"]
            assert args[args.index("--logs-prefix") + 1] == m.logs_prefix("talker") and "--dir" not in args

            def new_pod_ready() -> str | None:
                pods = core.list_namespaced_pod(namespace, label_selector=f"{m.SERVICE_LABEL}=talker").items
                fresh = [p for p in pods if p.metadata.name != first_pod.metadata.name]
                ready = [
                    p
                    for p in fresh
                    if p.metadata.deletion_timestamp is None
                    and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
                ]
                gone = all(p.metadata.name != first_pod.metadata.name for p in pods)
                return ready[0].metadata.name if ready and gone else None

            # the Deployment rolled: a new pod (with the sidecar) Ready, the old one gone
            rolled_pod = wait_for("the rolled pod Ready and the old one gone", new_pod_ready, timeout=180)
            names = [c.name for c in core.read_namespaced_pod(rolled_pod, namespace).spec.containers]
            assert names == ["replica", "ship"]
            # the rolled pod's log reaches get_logs() through the upload
            primary, _ = service.get_keys()
            wait_for(
                "scoring through the router", lambda: post_json(service.scoring_uri, primary, {"i": 7}) == 200 or None
            )
            wait_for(
                "the rolled pod's line in get_logs()",
                lambda: "printing: run() got i=7" in service.get_logs() or None,
                timeout=120,
            )
            assert service.state == "Healthy", service.error

            # a controller restart applies the template as planned now: the same one, no roll
            target.stop_controller()
            controller_log = log_path(ws.store, "prod")
            before = controller_log.read_text().count(f"{namespace}/{name} applied")
            replica_sets = len(apps.list_namespaced_replica_set(namespace).items)
            target.ensure_controller()
            wait_for(
                "the restarted controller's apply",
                lambda: controller_log.read_text().count(f"{namespace}/{name} applied") > before or None,
                timeout=60,
            )
            assert _template(apps, namespace, name)[0] == with_ship
            assert len(apps.list_namespaced_replica_set(namespace).items) == replica_sets

            # the same form again (a SAS rotated): the template says when it was set, so the pods
            # roll and their sidecar reads the new Secret; the value is in no template
            def stamp() -> str:
                d = apps.read_namespaced_deployment(name, namespace)
                return str((d.spec.template.metadata.annotations or {}).get(m.UPLOAD_CREDENTIAL_ANNOTATION))

            before_rotation = stamp()
            assert before_rotation == target.serialize()["blob_store_upload_set"]
            set_upload_credential(target, sas=WSAS.replace("2099", "2098"))
            rotated = wait_for("the new stamp in the template", lambda: stamp() != before_rotation or None)
            assert _template(apps, namespace, name)[0] > with_ship and WSIG not in json.dumps(pod)
            first_pod = core.read_namespaced_pod(rolled_pod, namespace)
            rolled_pod = wait_for("the pod rolled for the new credential", new_pod_ready, timeout=180)
            assert rotated

            # removed, through the CLI: a service that collects no data loses the sidecar
            removed = subprocess.run(
                [sys.executable, "-m", "modelfleet", "-w", str(ws.path), "k8s", "upload-credential"]
                + ["--compute-target", "prod"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert removed.returncode == 0, removed.stderr
            assert "upload credential removed" in removed.stdout and "roll" in removed.stdout
            without, pod = wait_for("the sidecar out of the template", lambda: rolled((["replica"], False, False)))
            assert without > with_ship
            assert m.UPLOAD_CREDENTIAL_ANNOTATION not in (
                apps.read_namespaced_deployment(name, namespace).spec.template.metadata.annotations or {}
            )
            service.delete()
        finally:
            target.stop_controller()
