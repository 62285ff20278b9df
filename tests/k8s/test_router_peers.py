"""Two router pods sharing replica slots (``targets/kubernetes/peers.py``): the deal itself, then
two router pods run by the node stand-in from the generated Deployment, in front of replicas at
``replica_max_concurrent_requests=1``: below capacity no replica answers busy and no request
gets 503; at capacity the only 503s are the queue limit's; a router pod deleted hands its slots
to the survivor within seconds. Then one replica at limit 1 behind two router pods: the router
that owns no slot forwards to the one that does (``forward.py``), and no replica answers busy."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from k8s_control_plane import wait_for
from k8s_services import SCRIPTS, event_loop, plan, serve_blobs, source
from kubernetes import client
from kubernetes.utils.create_from_yaml import create_from_yaml_single_item
from node_standin import NodeStandIn

from modelfleet.errors import ConfigError
from modelfleet.store.registry import Store
from modelfleet.targets.base import GenerationSpec, ReplicaInfo, ReplicaState, RouteEntry
from modelfleet.targets.kubernetes import manifests as m
from modelfleet.targets.kubernetes.forward import (
    HOP_HEADER,
    PER_SLOT,
    ForwardUpstream,
    forward_counts,
    forward_upstreams,
    peer_of,
)
from modelfleet.targets.kubernetes.peers import ROUTER_SELECTOR, expand, peers_of, shares
from modelfleet.targets.kubernetes.target import KubernetesTarget

KEY = "p" * 32
WAIT_S = 0.5  # max_request_wait_time
SLEEP_S = 0.2  # each request's run()


# -- the deal, as plain data ------------------------------------------------------------------


def test_each_slot_has_exactly_one_owner_and_shares_differ_by_at_most_one():
    routers = ["router-a", "router-b", "router-c"]
    for replicas, limit in ((["r0", "r1"], 1), (["r0", "r1", "r2", "r3", "r4"], 2), (["r0"], 3), (["r0"], 7)):
        dealt = {me: shares(replicas, limit, routers, me) or {} for me in routers}
        for rid in replicas:
            assert sum(d.get(rid, 0) for d in dealt.values()) == limit, (replicas, limit, dealt)
        totals = [sum(d.values()) for d in dealt.values()]
        assert max(totals) - min(totals) <= 1, (replicas, limit, dealt)


def test_two_replicas_at_limit_one_go_one_to_each_of_two_routers():
    a = shares(["r0", "r1"], 1, ["b", "a"], "a")
    b = shares(["r0", "r1"], 1, ["a", "b"], "b")
    assert a is not None and b is not None
    assert sorted([*a, *b]) == ["r0", "r1"] and a.keys().isdisjoint(b.keys())
    assert shares(["r0", "r1"], 1, ["a"], "a") == {"r0": 1, "r1": 1}  # the survivor takes all


def test_a_router_that_is_no_peer_or_owns_nothing_uses_every_slot():
    assert shares(["r0"], 1, ["a", "b"], "c") is None  # not Ready, Terminating, or outside the cluster
    owned = [shares(["r0"], 1, ["a", "b"], me) for me in ("a", "b")]
    assert sorted(map(bool, owned)) == [False, True]  # one slot, two routers: one owns it


def _replica(rid: str) -> ReplicaInfo:
    return ReplicaInfo(rid, "svc", 1, 0, ReplicaState.READY, None, f"10.0.0.{rid[-1]}:5001", 0, None)


def test_expand_gives_one_upstream_per_owned_slot_first_slots_first():
    reps = [_replica("r1"), _replica("r2")]
    assert [r.id for r in expand(reps, 2, None)] == ["r1#0", "r2#0", "r1#1", "r2#1"]
    out = expand(reps, 3, {"r2": 2})
    assert [(r.id, r.address) for r in out] == [("r2#0", "10.0.0.2:5001"), ("r2#1", "10.0.0.2:5001")]


def test_peers_are_the_ready_router_pods_that_are_not_terminating():
    def pod(name: str, ready: bool, deleting: bool = False) -> dict:
        meta = {"name": name, **({"deletionTimestamp": "2026-01-01T00:00:00Z"} if deleting else {})}
        status = {"podIP": "10.0.0.9", "conditions": [{"type": "Ready", "status": str(ready)}]}
        return {"metadata": meta, "status": status}

    pods = [pod("b", True), pod("a", True), pod("c", False), pod("d", True, deleting=True)]
    assert peers_of(pods) == ["a", "b"]


def test_a_router_owning_no_slot_forwards_to_the_peers_that_own_them():
    # one replica at limit 1, two routers: one owns the slot, the other forwards to it
    owner = next(me for me in ("a", "b") if shares(["r0"], 1, ["a", "b"], me))
    other = "b" if owner == "a" else "a"
    assert forward_counts(["r0"], 1, ["a", "b"], owner) is None  # it sends to its slot
    assert forward_counts(["r0"], 1, ["a", "b"], other) == {owner: 1}
    # a router that is no peer (not Ready yet) forwards to the owners of every slot
    assert forward_counts(["r0", "r1"], 1, ["a", "b"], "c") == {"a": 1, "b": 1}
    # the owner unreachable, or no replica: nothing to forward to; every slot is used, as before
    assert forward_counts(["r0"], 1, ["a", "b"], other, frozenset({owner})) is None
    assert forward_counts([], 1, ["a", "b"], other) is None
    # three routers, three slots of one replica: every router owns one, none forwards
    assert all(forward_counts(["r0"], 3, ["a", "b", "c"], me) is None for me in ("a", "b", "c"))


def test_forward_upstreams_carry_the_secret_and_the_hop_header():
    ups = forward_upstreams({"b": 1, "c": 2}, {"b": "10.0.0.2", "c": "10.0.0.3"}, b"s" * 43, "a", 8081)
    assert len(ups) == 3 * PER_SLOT
    assert [u.id for u in ups[:3]] == ["fwd:b#0", "fwd:c#0", "fwd:b#1"]  # spread before stacked
    assert {(u.host, u.port) for u in ups} == {("10.0.0.2", 8081), ("10.0.0.3", 8081)}
    head = ups[0].head_lines()
    assert (
        head == b"host: 10.0.0.2:8081\r\nx-modelfleet-replica-secret: " + b"s" * 43 + b"\r\n" + HOP_HEADER + b": a\r\n"
    )
    assert forward_upstreams({"b": 1}, {}, b"s" * 43, "a") == []  # no address known: none
    assert (peer_of("fwd:router-7f-x#3"), peer_of("slow-g1-abc#0")) == ("router-7f-x", None)
    with pytest.raises(ConfigError, match="forwarding needs the service's replica secret"):
        ForwardUpstream(id="fwd:b#0", host="h", port=1, hop=b"a")
    with pytest.raises(ConfigError, match="hop must be the forwarding router's pod name"):
        ForwardUpstream(id="fwd:b#0", host="h", port=1, secret=b"s" * 43, hop=b"a b")


# -- two router pods on the control plane ------------------------------------------------------


def post(address: str, body: dict) -> tuple[int, str]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    req = urllib.request.Request(
        f"http://{address}/api/v1/service/slow/score", data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def load(addresses: list[str], clients_each: int, seconds: float) -> list[tuple[int, str]]:
    """``clients_each`` clients per router address, each sending one request after another."""
    out: list[tuple[int, str]] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client_loop(address: str) -> None:
        while time.monotonic() < end:
            answer = post(address, {"sleep": SLEEP_S})
            with lock:
                out.append(answer)

    threads = [threading.Thread(target=client_loop, args=(a,)) for a in addresses for _ in range(clients_each)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


_BUSY = re.compile(r'"route": "/score", "status": 503')


def busy_answers(node: NodeStandIn, namespace: str, pods: list[str]) -> int:
    """The replicas' busy answers so far: their access logs' 503s on /score (the replica
    answers nothing else 503 there), read after the once-a-second flush."""
    time.sleep(1.5)
    total = 0
    for pod in pods:
        path = node.log_path(namespace, pod, "replica")
        total += len(_BUSY.findall(path.read_text())) if path.exists() else 0
    return total


def two(pods: dict[str, str]) -> dict[str, str] | None:
    return pods if len(pods) == 2 else None


def router_pods(core: client.CoreV1Api, namespace: str) -> dict[str, str]:
    """Ready router pods' names -> pod IP."""
    pods = core.list_namespaced_pod(namespace, label_selector=ROUTER_SELECTOR).items
    api = client.ApiClient()
    ready = peers_of(api.sanitize_for_serialization(p) for p in pods)
    return {p.metadata.name: p.status.pod_ip for p in pods if p.metadata.name in ready}


@pytest.mark.timeout(600)
def test_two_router_pods_split_the_replicas_slots(
    admin: client.ApiClient, node: NodeStandIn, namespace: str, store: Store, tmp_path: Path
):
    core = client.CoreV1Api(admin)
    router = m.RouterSource(
        image="modelfleet-router:test", namespace=namespace, replicas=2, secret_names=[m.secret_name("slow")]
    )
    for obj in m.router_objects(router):
        create_from_yaml_single_item(admin, obj)
    with serve_blobs(store) as blobs, event_loop() as loop:
        src = source(store, tmp_path, namespace, blobs, name="slow", replica_max_concurrent_requests=1)
        src = replace(src, snapshot=store.put_snapshot(SCRIPTS / "slow"), source_name="slow")
        target = KubernetesTarget(admin, namespace)
        try:
            loop.run_until_complete(target.apply(GenerationSpec(plan(src, 1), 2)))
            target.publish(RouteEntry("slow", 1, "key", primary_key=KEY, max_concurrent=1, max_wait_s=WAIT_S))
            routers = wait_for("two router pods Ready", lambda: two(router_pods(core, namespace)), 180)
            addresses = [f"{ip}:{m.ROUTER_PORT}" for ip in routers.values()]

            def both_route() -> bool:
                ready = [r for r in target.replicas("slow") if r.state is ReplicaState.READY]
                return len(ready) == 2 and all(post(a, {"sleep": 0})[0] == 200 for a in addresses)

            wait_for("both replicas Ready and both routers scoring", both_route, timeout=180)
            logs = {name: node.log_path(namespace, name, "router") for name in routers}
            both = f"router peers: {sorted(routers)}"
            wait_for("each router sees both", lambda: all(both in log.read_text() for log in logs.values()), 30)
            replicas = [r.id for r in target.replicas("slow")]

            # Below capacity: one client per router, two replicas at limit 1.
            below = load(addresses, 1, 4.0)
            busy_below = busy_answers(node, namespace, replicas)
            codes_below = sorted({c for c, _ in below})
            print(f"below capacity: {len(below)} requests, codes {codes_below}, replicas' busy answers {busy_below}")
            assert codes_below == [200]
            assert busy_below == 0

            # Past capacity: four clients per router; the only refusals are the queue limit's.
            over = load(addresses, 4, 4.0)
            busy_over = busy_answers(node, namespace, replicas) - busy_below
            refused = [b for c, b in over if c != 200]
            print(f"past capacity: {len(over)} requests, {len(refused)} 503s, replicas' busy answers {busy_over}")
            assert all("max_request_wait_time" in b for b in refused), refused[:3]
            assert {c for c, _ in over} <= {200, 503}
            assert refused, "8 clients on 2 slots at 0.5 s wait must meet the queue limit"
            assert busy_over == 0

            # The router Deployment scaled to 1: the pod removed hands its slots to the survivor
            # (whose log names the new peers); no replacement comes to muddle the count.
            seen = {n: len(log.read_bytes()) for n, log in logs.items()}  # look past what was logged
            patched = time.monotonic()
            apps = client.AppsV1Api(admin)
            apps.patch_namespaced_deployment_scale(m.ROUTER_NAME, namespace, {"spec": {"replicas": 1}})

            def logged_since(name: str) -> str:
                # the removed pod's folder goes with it, as a kubelet's does: its log reads as empty
                try:
                    return logs[name].read_bytes()[seen[name] :].decode()
                except FileNotFoundError:
                    return ""

            def survivor() -> str | None:
                alone = [n for n in logs if f"router peers: ['{n}']" in logged_since(n)]
                return alone[0] if alone else None

            left = wait_for("the survivor alone among peers", survivor, timeout=30)
            print(f"router pod removed -> survivor owns every slot: {time.monotonic() - patched:.2f} s")
            before = busy_answers(node, namespace, replicas)
            pair = load([f"{routers[left]}:{m.ROUTER_PORT}"], 2, 2.0)
            assert sorted({c for c, _ in pair}) == [200]
            assert busy_answers(node, namespace, replicas) == before
            loop.run_until_complete(target.delete("slow", 1.0))
        finally:
            loop.run_until_complete(target.close(0))


def peer_post(address: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """A request straight to a router pod's peer port, as a forwarding router sends it."""
    req = urllib.request.Request(
        f"http://{address}/score", data=b'{"sleep": 0}', headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers)


@pytest.mark.timeout(600)
def test_a_router_pod_owning_no_slot_forwards_and_no_replica_answers_busy(
    admin: client.ApiClient, node: NodeStandIn, namespace: str, store: Store, tmp_path: Path
):
    import base64

    core = client.CoreV1Api(admin)
    router = m.RouterSource(
        image="modelfleet-router:test", namespace=namespace, replicas=2, secret_names=[m.secret_name("slow")]
    )
    for obj in m.router_objects(router):
        create_from_yaml_single_item(admin, obj)
    with serve_blobs(store) as blobs, event_loop() as loop:
        src = source(store, tmp_path, namespace, blobs, name="slow", replica_max_concurrent_requests=1)
        src = replace(src, snapshot=store.put_snapshot(SCRIPTS / "slow"), source_name="slow")
        target = KubernetesTarget(admin, namespace)
        try:
            loop.run_until_complete(target.apply(GenerationSpec(plan(src, 1), 1)))
            target.publish(RouteEntry("slow", 1, "key", primary_key=KEY, max_concurrent=1, max_wait_s=WAIT_S))
            routers = wait_for("two router pods Ready", lambda: two(router_pods(core, namespace)), 180)
            addresses = {n: f"{ip}:{m.ROUTER_PORT}" for n, ip in routers.items()}

            def one_ready() -> list[str] | None:
                ready = [r.id for r in target.replicas("slow") if r.state is ReplicaState.READY]
                return ready if len(ready) == 1 else None

            replicas = wait_for("the replica Ready", one_ready, timeout=180)
            owner = next(n for n in routers if shares(replicas, 1, sorted(routers), n))
            (other,) = set(routers) - {owner}
            logs = {n: node.log_path(namespace, n, "router") for n in routers}
            forwarding = f"service slow: this router owns no slot of it; forwarding to ['{owner}']"
            wait_for("the other router forwarding", lambda: forwarding in logs[other].read_text(), 60)
            wait_for(
                "both routers scoring", lambda: all(post(a, {"sleep": 0})[0] == 200 for a in addresses.values()), 60
            )
            # the owner may have forwarded while it was not Ready itself (no peer yet); not now
            text = logs[owner].read_text()
            assert text.rfind("forwarding to") < text.rfind("no longer forwarded") or "forwarding to" not in text

            # the client's key is checked at the first router: a wrong one never reaches the peer
            bad = urllib.request.Request(
                f"http://{addresses[other]}/api/v1/service/slow/score",
                data=b"{}",
                headers={"Authorization": "Bearer x"},
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(bad, timeout=30)
            assert refused.value.code == 401

            # Load from both routers on the one slot: the forwarded requests queue at the owner
            # with its own, so the replica never answers busy; the only 503s are the queue limit's.
            answers = load(list(addresses.values()), 1, 4.0)
            busy = busy_answers(node, namespace, replicas)
            refused_503 = [b for c, b in answers if c != 200]
            print(f"one slot, two routers: {len(answers)} requests, {len(refused_503)} 503s, busy answers {busy}")
            assert busy == 0
            assert {c for c, _ in answers} <= {200, 503}
            assert all("max_request_wait_time" in b for b in refused_503), refused_503[:3]
            assert sum(c == 200 for c, _ in answers) >= len(answers) // 2

            # The peer port itself: the service's secret and the hop header, or 401; with them
            # no key is asked (the first router checked it); at a router that forwards the
            # service itself, the busy answer (never forwarded twice).
            secret = base64.b64decode(
                core.read_namespaced_secret("slow-keys", namespace).data["replicaSecret"]
            ).decode()
            peer = {n: f"{ip}:{m.ROUTER_PEER_PORT}" for n, ip in routers.items()}
            proof = {"x-modelfleet-replica-secret": secret, "x-modelfleet-forwarded-by": other}
            assert peer_post(peer[owner], {"x-modelfleet-forwarded-by": other})[0] == 401
            assert peer_post(peer[owner], {"x-modelfleet-replica-secret": secret})[0] == 401
            assert peer_post(peer[owner], {**proof, "x-modelfleet-replica-secret": "w" * 43})[0] == 401
            assert peer_post(peer[owner], proof)[0] == 200
            status, headers = peer_post(peer[other], {**proof, "x-modelfleet-forwarded-by": owner})
            assert (status, headers.get("x-modelfleet-busy")) == (503, "1")
            loop.run_until_complete(target.delete("slow", 1.0))
        finally:
            loop.run_until_complete(target.close(0))
