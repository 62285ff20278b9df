"""The in-cluster router, run as a process with the router's ServiceAccount and Role: it finds
the service and its Ready pods through the API (no local target), checks the key itself, and
follows scale-ups, key changes and deletion."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from k8s_control_plane import wait_for
from k8s_services import event_loop, plan, router_process, serve_blobs, source
from kubernetes import client
from node_standin import NodeStandIn

from modelfleet.router.proxy import Router
from modelfleet.store.registry import Store
from modelfleet.targets.base import GenerationSpec, ReplicaState, RouteEntry
from modelfleet.targets.kubernetes import manifests as m
from modelfleet.targets.kubernetes.discovery import Discovery
from modelfleet.targets.kubernetes.target import KubernetesTarget

WHOAMI = Path(__file__).resolve().parent / "scripts" / "whoami"
KEY, NEW_KEY, SECONDARY = "p" * 32, "n" * 32, "s" * 32


def post(port: int, service: str, key: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/service/{service}/score", data=b"{}", headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except OSError:
        return 0, {}


@pytest.mark.timeout(600)
def test_the_router_discovers_pods_through_the_api_and_scores_with_a_key(
    admin: client.ApiClient,
    node: NodeStandIn,
    namespace: str,
    store: Store,
    tmp_path: Path,
    service_account_kubeconfig,
):
    # The router's ServiceAccount, Role (this service's Secret only) and RoleBinding, as generated.
    log = tmp_path / "router.log"
    entry = ("modelfleet.control.k8s_router",)  # the module itself; the other tests use the CLI
    with (
        serve_blobs(store) as blobs,
        event_loop() as loop,
        router_process(admin, namespace, service_account_kubeconfig, log, ["scorer-keys"], entry) as router,
    ):
        port = router.port
        src = source(store, tmp_path, namespace, blobs)
        src = replace(src, snapshot=store.put_snapshot(WHOAMI), source_name="whoami")
        target = KubernetesTarget(admin, namespace)
        try:
            start = time.monotonic()
            loop.run_until_complete(target.apply(GenerationSpec(plan(src, 1), 1)))
            target.publish(RouteEntry("scorer", 1, "key", primary_key=KEY, secondary_key=SECONDARY))
            status, body = wait_for("a scored request", lambda: (r := post(port, "scorer", KEY))[0] == 200 and r)
            print(f"apply + publish -> first request scored through the router: {time.monotonic() - start:.1f} s")
            (first,) = [r.id for r in target.replicas("scorer")]
            assert body == {"pod": first}
            assert post(port, "scorer", SECONDARY)[0] == 200
            assert post(port, "scorer", None)[0] == 401
            assert post(port, "scorer", "x" * 32)[0] == 401
            assert post(port, "other", KEY)[0] == 404

            # scale up: the new pod is routed to once Ready (the discovery delay)
            loop.run_until_complete(target.scale("scorer", 1, 2))

            def new_ready() -> str | None:
                rs = [r for r in target.replicas("scorer") if r.state is ReplicaState.READY and r.id != first]
                return rs[0].id if rs else None

            second = wait_for("the second pod Ready", new_ready, timeout=180)
            ready_at = time.monotonic()
            while post(port, "scorer", KEY)[1] != {"pod": second}:  # a request every few ms, bounded
                assert time.monotonic() - ready_at < 60, "the new pod was never routed to"
                time.sleep(0.01)
            delay = time.monotonic() - ready_at
            print(f"pod Ready (seen by the target's watch) -> first request routed to it: {delay * 1000:.0f} ms")

            # a new primary key: the old one is refused once the router has read the Secret again
            target.publish(RouteEntry("scorer", 1, "key", primary_key=NEW_KEY, secondary_key=SECONDARY))
            wait_for("the old key refused", lambda: post(port, "scorer", KEY)[0] == 401, timeout=30)
            assert post(port, "scorer", NEW_KEY)[0] == 200

            # deleted: the route ConfigMap goes and the router answers 404
            loop.run_until_complete(target.delete("scorer", 1.0))
            wait_for("404 after deletion", lambda: post(port, "scorer", NEW_KEY)[0] == 404, timeout=60)
            assert router.proc.poll() is None, log.read_text()
        finally:
            loop.run_until_complete(target.close(0))
    assert router.proc.returncode == 0, log.read_text()[-3000:]  # SIGTERM: a clean stop
    text = log.read_text()
    assert "Forbidden" not in text, "the router asked for something its Role does not grant:\n" + text[-3000:]


@pytest.mark.timeout(300)
def test_the_router_checks_tokens_with_the_public_key_from_the_route(
    admin: client.ApiClient,
    node: NodeStandIn,
    namespace: str,
    store: Store,
    tmp_path: Path,
    service_account_kubeconfig,
):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from modelfleet.router.auth import issue_token

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    log = tmp_path / "router.log"
    with (
        serve_blobs(store) as blobs,
        event_loop() as loop,
        router_process(admin, namespace, service_account_kubeconfig, log, ["scorer-keys"]) as router,
    ):
        port = router.port
        src = replace(
            source(store, tmp_path, namespace, blobs), snapshot=store.put_snapshot(WHOAMI), source_name="whoami"
        )
        target = KubernetesTarget(admin, namespace, token_key_pem=pem.decode)
        try:
            loop.run_until_complete(target.apply(GenerationSpec(plan(src, 1), 1)))
            target.publish(RouteEntry("scorer", 1, "token"))
            token, _ = issue_token(key, "scorer", now=time.time())
            wait_for("a request scored with a token", lambda: post(port, "scorer", token)[0] == 200)
            other, _ = issue_token(key, "other", now=time.time())
            assert post(port, "scorer", other)[0] == 401  # a token for another service
            forged, _ = issue_token(ec.generate_private_key(ec.SECP256R1()), "scorer", now=time.time())
            assert post(port, "scorer", forged)[0] == 401
            assert post(port, "scorer", None)[0] == 401
            loop.run_until_complete(target.delete("scorer", 1.0))
        finally:
            loop.run_until_complete(target.close(0))


@pytest.mark.timeout(300)
def test_a_pod_killed_mid_traffic_costs_at_most_the_request_it_held(
    admin: client.ApiClient,
    node: NodeStandIn,
    namespace: str,
    store: Store,
    tmp_path: Path,
    service_account_kubeconfig,
):
    log = tmp_path / "router.log"
    with (
        serve_blobs(store) as blobs,
        event_loop() as loop,
        router_process(admin, namespace, service_account_kubeconfig, log, ["scorer-keys"]) as router,
    ):
        port = router.port
        src = source(store, tmp_path, namespace, blobs)
        src = replace(src, snapshot=store.put_snapshot(WHOAMI), source_name="whoami")
        target = KubernetesTarget(admin, namespace)
        stop = threading.Event()
        codes: list[int] = []
        try:
            loop.run_until_complete(target.apply(GenerationSpec(plan(src, 1), 2)))
            target.publish(RouteEntry("scorer", 1, "key", primary_key=KEY, secondary_key=SECONDARY))

            def both_serving() -> bool:
                ready = [r for r in target.replicas("scorer") if r.state is ReplicaState.READY]
                return len(ready) == 2 and {post(port, "scorer", KEY)[1].get("pod") for _ in range(6)} == {
                    r.id for r in ready
                }

            wait_for("both pods Ready and routed to", both_serving)
            victim = sorted(r.id for r in target.replicas("scorer"))[0]

            def traffic() -> None:
                deadline = time.monotonic() + 120
                while not stop.is_set() and time.monotonic() < deadline:
                    codes.append(post(port, "scorer", KEY)[0])

            sender = threading.Thread(target=traffic)
            sender.start()
            time.sleep(0.5)
            for pid in node.pod_pids()[victim]:
                os.kill(pid, signal.SIGKILL)
            killed_at = len(codes)

            def recovered() -> bool:
                (r,) = [r for r in target.replicas("scorer") if r.id == victim]
                return r.state is ReplicaState.READY and r.restarts == 1

            wait_for("the killed pod restarted and Ready again", recovered, timeout=120)
            wait_for("the restarted pod routed to again", lambda: post(port, "scorer", KEY)[1] == {"pod": victim}, 30)
            stop.set()
            sender.join()
            failed = [c for c in codes if c != 200]
            print(f"pod killed mid-traffic: {len(codes)} requests ({killed_at} before the kill), failed: {failed}")
            assert len(failed) <= 1, failed
            loop.run_until_complete(target.delete("scorer", 1.0))
        finally:
            stop.set()
            loop.run_until_complete(target.close(0))


@pytest.mark.timeout(300)
def test_the_routers_upstreams_carry_each_services_own_replica_secret_across_an_update(
    admin: client.ApiClient, node: NodeStandIn, namespace: str, store: Store, tmp_path: Path
):
    core = client.CoreV1Api(admin)
    router = Router()
    with serve_blobs(store) as blobs, event_loop() as loop:
        target = KubernetesTarget(admin, namespace)

        async def start() -> Discovery:
            discovery = Discovery(admin, namespace, router)
            discovery.start()
            return discovery

        discovery = loop.run_until_complete(start())
        sources = {name: replace(source(store, tmp_path, namespace, blobs), name=name) for name in ("scorer", "other")}
        try:
            for name, src in sources.items():
                loop.run_until_complete(target.apply(GenerationSpec(plan(src, 1), 1)))
                target.publish(RouteEntry(name, 1, "key", primary_key=KEY, secondary_key=SECONDARY))

            def upstreams(service: str, generation: int) -> list | None:
                loop.run_until_complete(asyncio.sleep(0.05))  # the discovery's callbacks run on the loop
                state = router.services.get(service.encode())
                if state is None:
                    return None
                ups = [(u, head) for u, _, head in state.addresses.values()]
                return ups if len(ups) == 1 and ups[0][0].id.startswith(f"{service}-g{generation}-") else None

            secrets = {}
            for name in sources:
                data = core.read_namespaced_secret(m.secret_name(name), namespace).data
                secrets[name] = base64.b64decode(data[m.REPLICA_SECRET_KEY])
                [(up, head)] = wait_for(f"{name}'s pod in the router", lambda n=name: upstreams(n, 1), timeout=180)
                assert up.secret == secrets[name]
                assert b"x-modelfleet-replica-secret: " + secrets[name] + b"\r\n" in head  # built once, sent each time
            assert secrets["scorer"] != secrets["other"]

            # an update: the new generation's pod is sent the same secret, which it was started with
            loop.run_until_complete(target.apply(GenerationSpec(plan(sources["scorer"], 2), 1)))
            target.publish(RouteEntry("scorer", 2, "key", primary_key=KEY, secondary_key=SECONDARY))
            [(up, _)] = wait_for("generation 2 in the router", lambda: upstreams("scorer", 2), timeout=180)
            assert up.secret == secrets["scorer"]
            for name in sources:
                loop.run_until_complete(target.delete(name, 1.0))
        finally:
            loop.run_until_complete(discovery.stop())
            loop.run_until_complete(target.close(0))
