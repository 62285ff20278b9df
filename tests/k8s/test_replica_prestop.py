"""A replica pod deleted under a request: its preStop hook keeps it serving for
``manifests.PRE_STOP_S`` (a router whose watch lags is still answered, not refused), the long
request in flight gets its 200, and the pod ends well inside its grace period."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from k8s_control_plane import wait_for
from k8s_services import SCRIPTS, event_loop, plan, router_process, serve_blobs, source
from kubernetes import client
from node_standin import NodeStandIn

from modelfleet.spec import aks_deploy_configuration
from modelfleet.store.registry import Store
from modelfleet.targets.base import GenerationSpec, ReplicaInfo, ReplicaState, RouteEntry
from modelfleet.targets.kubernetes import manifests as m
from modelfleet.targets.kubernetes.target import KubernetesTarget

KEY = "p" * 32


def post(url: str, body: dict, headers: dict[str, str]) -> tuple[int, str]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **headers}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def test_the_replica_container_has_a_pre_stop_hook_inside_its_grace_period():
    src = m.ServiceSource(
        name="scorer",
        deploy=aks_deploy_configuration(scoring_timeout_ms=20000),
        image="i",
        entry_script="score.py",
        blob_store="https://blobs.example",
        models=(),
        snapshot="0" * 64,
    )
    deployment = m.service_objects(src)[-1]
    pod = deployment["spec"]["template"]["spec"]
    (replica,) = pod["containers"]
    assert replica["lifecycle"]["preStop"] == {"exec": {"command": m.PRE_STOP_COMMAND}}
    assert pod["terminationGracePeriodSeconds"] == m.PRE_STOP_S + 20 + 5


@pytest.mark.timeout(300)
def test_a_pod_deleted_under_a_long_request_answers_it_and_serves_through_its_pre_stop(
    admin: client.ApiClient,
    node: NodeStandIn,
    namespace: str,
    store: Store,
    tmp_path: Path,
    service_account_kubeconfig,
):
    core = client.CoreV1Api(admin)
    log = tmp_path / "router.log"
    with (
        serve_blobs(store) as blobs,
        event_loop() as loop,
        router_process(admin, namespace, service_account_kubeconfig, log, [m.secret_name("slow")]) as router,
    ):
        src = source(
            store, tmp_path, namespace, blobs, name="slow", scoring_timeout_ms=20000, replica_max_concurrent_requests=2
        )
        src = replace(src, snapshot=store.put_snapshot(SCRIPTS / "slow"), source_name="slow")
        target = KubernetesTarget(admin, namespace)
        try:
            loop.run_until_complete(target.apply(GenerationSpec(plan(src, 1), 1)))
            target.publish(RouteEntry("slow", 1, "key", primary_key=KEY, max_concurrent=2, timeout_s=20.0))
            via_router = f"http://127.0.0.1:{router.port}/api/v1/service/slow/score"
            auth = {"Authorization": f"Bearer {KEY}"}

            def ready_and_scored() -> list[ReplicaInfo] | None:
                # the router's pod watch and the target's are two: either may see the pod Ready first
                ready = [r for r in target.replicas("slow") if r.state is ReplicaState.READY]
                return ready if ready and post(via_router, {"sleep": 0}, auth)[0] == 200 else None

            (pod,) = wait_for("the pod Ready and scored through the router", ready_and_scored, 180)
            secret = core.read_namespaced_secret(m.secret_name("slow"), namespace).data[m.REPLICA_SECRET_KEY]
            direct = f"http://{pod.address}/score"
            as_router = {"x-modelfleet-replica-secret": base64.b64decode(secret).decode()}

            answers: list[tuple[int, str]] = []
            long = threading.Thread(target=lambda: answers.append(post(via_router, {"sleep": 5}, auth)))
            long.start()
            time.sleep(0.5)  # the request is in run() now
            deleted = time.monotonic()
            core.delete_namespaced_pod(pod.id, namespace)
            time.sleep(1.0)
            # A router that has not seen the deletion yet: the pod still answers, in its preStop.
            lagging = post(direct, {"sleep": 0}, as_router)
            long.join(timeout=60)

            def gone() -> bool:
                return not [p for p in core.list_namespaced_pod(namespace).items if p.metadata.name == pod.id]

            wait_for("the pod gone", gone, timeout=60)
            ended = time.monotonic() - deleted
            print(f"deleted under a 5 s request: it got {answers[0][0]}; pod gone {ended:.1f} s after the delete")
            assert [code for code, _ in answers] == [200], answers
            assert lagging[0] == 200, lagging
            assert ended < m.PRE_STOP_S + 20 + 5
            loop.run_until_complete(target.delete("slow", 1.0))
        finally:
            loop.run_until_complete(target.close(0))
