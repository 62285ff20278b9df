"""The Kubernetes target against a real API server and controllers, with the node stand-in
running the pods: apply, replicas, scale through deployments/scale, publish, retire, delete."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
from dataclasses import replace
from pathlib import Path

import pytest
from k8s_control_plane import wait_for
from k8s_services import SCRIPTS, event_loop, plan, score, serve_blobs, source
from kubernetes import client
from node_standin import NodeStandIn

from modelfleet.errors import TargetError
from modelfleet.store.registry import Store
from modelfleet.targets.base import GenerationSpec, ReplicaState, RouteEntry
from modelfleet.targets.kubernetes import manifests as m
from modelfleet.targets.kubernetes.pods import GENERATION_LABEL
from modelfleet.targets.kubernetes.target import KubernetesTarget, deployment_name

SECRET_HEADER = "x-modelfleet-replica-secret"


def replica_secret_in(core: client.CoreV1Api, namespace: str, service: str) -> str:
    """The replica secret in the service's Secret, as the API holds it."""
    data = core.read_namespaced_secret(m.secret_name(service), namespace).data
    return base64.b64decode(data[m.REPLICA_SECRET_KEY]).decode()


def _selector(service: str) -> str:
    return f"{m.SERVICE_LABEL}={service}"


def _ready(target: KubernetesTarget, service: str, generation: int, count: int) -> list:
    rs = [r for r in target.replicas(service) if r.generation == generation]
    ready = [r for r in rs if r.state is ReplicaState.READY]
    return ready if len(ready) == count and len(rs) == count else []


@pytest.mark.timeout(600)
def test_apply_scale_publish_retire_delete(
    admin: client.ApiClient, node: NodeStandIn, namespace: str, store: Store, tmp_path: Path
):
    apps, core = client.AppsV1Api(admin), client.CoreV1Api(admin)
    changed: list[str] = []
    with serve_blobs(store) as blobs, event_loop() as loop:
        src = source(store, tmp_path, namespace, blobs)
        target = KubernetesTarget(admin, namespace)
        target.watch(changed.append)
        run = loop.run_until_complete

        # apply: a Deployment per generation; its pod becomes a Ready replica with an address
        start = time.monotonic()
        run(target.apply(GenerationSpec(plan(src, 1), 1)))
        (replica,) = wait_for("generation 1 Ready", lambda: _ready(target, "scorer", 1, 1), timeout=180)
        print(f"apply -> replica Ready: {time.monotonic() - start:.1f} s")
        assert replica.address == f"{replica.address.split(':')[0]}:{m.REPLICA_PORT}"
        # the pod requires the service's secret, which apply put in Secret S-keys before the pod
        secret_1 = replica_secret_in(core, namespace, "scorer")
        assert secret_1 == target.replica_secret("scorer") and m.valid_replica_secret(secret_1)
        with pytest.raises(urllib.error.HTTPError, match="403"):
            score(replica.address)
        assert score(replica.address, headers={SECRET_HEADER: secret_1}) == {"model": {"w": [1, 2, 3]}}
        dep = apps.read_namespaced_deployment(deployment_name("scorer", 1), namespace)
        (env,) = [e for e in dep.spec.template.spec.containers[0].env if e.name == "MODELFLEET_REPLICA_SECRET"]
        assert (env.value, env.value_from.secret_key_ref.name, env.value_from.secret_key_ref.key) == (
            None,
            "scorer-keys",
            "replicaSecret",
        )
        assert dep.spec.template.metadata.labels[GENERATION_LABEL] == "1"
        assert dep.spec.strategy.rolling_update.max_unavailable == 0
        run(asyncio.sleep(0.2))  # the watch's callbacks run on the loop
        assert "scorer" in changed, "the watch callback was never called"

        # apply again with the same spec: nothing changes
        run(target.apply(GenerationSpec(plan(src, 1), 1)))
        again = apps.read_namespaced_deployment(deployment_name("scorer", 1), namespace)
        assert again.metadata.generation == dep.metadata.generation

        # scale up through deployments/scale
        t0 = time.monotonic()
        run(target.scale("scorer", 1, 2))
        patched = time.monotonic() - t0
        assert apps.read_namespaced_deployment_scale(deployment_name("scorer", 1), namespace).spec.replicas == 2
        print(f"scale() -> deployments/scale patched: {patched * 1000:.0f} ms")
        two = wait_for("two Ready replicas", lambda: _ready(target, "scorer", 1, 2), timeout=180)
        assert {r.index for r in two} == {0, 1}

        # scale down naming the victim: it drains (Terminating) and goes
        victim = two[0].id
        run(target.scale("scorer", 1, 1, remove=[victim]))
        assert apps.read_namespaced_deployment_scale(deployment_name("scorer", 1), namespace).spec.replicas == 1
        wait_for("one replica left", lambda: _ready(target, "scorer", 1, 1), timeout=120)

        # publish: the route ConfigMap (no keys) and the keys Secret
        route = RouteEntry("scorer", 1, "key", primary_key="p" * 32, secondary_key="s" * 32, max_concurrent=2)
        target.publish(route)
        cm = core.read_namespaced_config_map("scorer-route", namespace)
        assert json.loads(cm.data["route.json"])["serving_generation"] == 1
        assert "p" * 32 not in json.dumps(cm.data)
        secret = core.read_namespaced_secret(m.secret_name("scorer"), namespace)
        assert base64.b64decode(secret.data["primaryKey"]).decode() == "p" * 32
        target.publish(RouteEntry("scorer", 1, "key", primary_key="q" * 32, secondary_key="s" * 32))
        secret = core.read_namespaced_secret(m.secret_name("scorer"), namespace)
        assert base64.b64decode(secret.data["primaryKey"]).decode() == "q" * 32
        assert replica_secret_in(core, namespace, "scorer") == secret_1  # new keys, the same replica secret

        # a second generation beside the first, then the first retired
        run(target.apply(GenerationSpec(plan(src, 2), 1)))
        (new,) = wait_for("generation 2 Ready", lambda: _ready(target, "scorer", 2, 1), timeout=180)
        assert len(target.replicas("scorer")) == 2
        # an update keeps the secret: the new generation's pod takes what the router sends
        assert replica_secret_in(core, namespace, "scorer") == secret_1
        assert score(new.address, headers={SECRET_HEADER: secret_1}) == {"model": {"w": [1, 2, 3]}}
        # a restarted daemon (a new target) finds it; another service gets its own
        assert KubernetesTarget(admin, namespace).replica_secret("scorer") == secret_1
        other = target.replica_secret("other")
        assert other != secret_1 and replica_secret_in(core, namespace, "other") == other
        # a Secret written before replica secrets keeps its keys and gains one
        core.create_namespaced_secret(
            namespace, {"metadata": {"name": "legacy-keys"}, "stringData": {"primaryKey": "k"}}
        )
        legacy = target.replica_secret("legacy")
        data = core.read_namespaced_secret("legacy-keys", namespace).data
        assert (
            base64.b64decode(data["primaryKey"]) == b"k" and base64.b64decode(data["replicaSecret"]).decode() == legacy
        )
        run(target.retire("scorer", 1, 5.0))
        wait_for("generation 1 gone", lambda: not [r for r in target.replicas("scorer") if r.generation == 1], 120)
        names = {d.metadata.name for d in apps.list_namespaced_deployment(namespace).items}
        assert names == {deployment_name("scorer", 2)}

        # delete: every object of the service goes, pods included
        run(target.delete("scorer", 5.0))
        wait_for(
            "the pods gone", lambda: not core.list_namespaced_pod(namespace, label_selector=_selector("scorer")).items
        )
        assert not apps.list_namespaced_deployment(namespace, label_selector=_selector("scorer")).items
        assert not core.list_namespaced_config_map(namespace, label_selector=_selector("scorer")).items
        assert not core.list_namespaced_secret(namespace, label_selector=_selector("scorer")).items
        wait_for("the target's pod watch forgets them", lambda: target.replicas("scorer") == [], 30)
        run(target.close(0))


@pytest.mark.timeout(300)
def test_a_replica_whose_init_fails_is_reported_init_failed(
    admin: client.ApiClient, node: NodeStandIn, namespace: str, store: Store, tmp_path: Path
):
    with serve_blobs(store) as blobs, event_loop() as loop:
        src = source(store, tmp_path, namespace, blobs)
        src = replace(src, snapshot=store.put_snapshot(SCRIPTS / "failing_init"), source_name="failing_init")
        target = KubernetesTarget(admin, namespace)
        loop.run_until_complete(target.apply(GenerationSpec(plan(src, 1), 1)))

        def failed() -> list:
            return [r for r in target.replicas("scorer") if r.state is ReplicaState.INIT_FAILED]

        (replica,) = wait_for("the replica reported InitFailed", failed, timeout=180)
        assert "container replica" in (replica.detail or "")
        loop.run_until_complete(target.delete("scorer", 1.0))
        loop.run_until_complete(target.close(0))


def test_an_api_error_becomes_a_target_error_that_says_what_failed(admin: client.ApiClient, namespace: str):
    target = KubernetesTarget(admin, "no-such-namespace")
    with pytest.raises(TargetError, match=r"Secret scorer-keys failed: 404"):
        target.publish(RouteEntry("scorer", 1, "key", primary_key="p" * 32, secondary_key="s" * 32))
