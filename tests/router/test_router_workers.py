"""Router workers' decisions and data, with plain values (no sockets, no sleeps): how slots are
dealt, what a worker is sent and rebuilds from it, how the workers' figures combine, and the
``--router-workers`` setting's check."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from modelfleet.control.router_fleet import (
    FleetRouter,
    TraceBuffer,
    add_metrics,
    add_traces,
    combine_stats,
    metrics_delta,
    metrics_snapshot,
    route_from_plain,
    route_to_plain,
    slot_upstreams,
    take_auth_failures,
)
from modelfleet.control.router_worker import _Worker
from modelfleet.control.router_workers import RouterWorkers, WorkerSettings, _Link, max_workers
from modelfleet.errors import ConfigError
from modelfleet.router.auth import AuthFailures, AuthResult, KeyAuth, TokenAuth, issue_token
from modelfleet.router.mirror import counters_of
from modelfleet.router.proxy import Router, ServiceRoute, Upstream
from modelfleet.telemetry.counters import MirrorCounters, ServiceMetrics
from modelfleet.telemetry.tracing import Timing, Tracer

UPS = [Upstream(id=f"svc-1-{i}", host="localhost", port=0, unix_path=f"/s/{i}.sock") for i in range(3)]


def owned(workers: int, index: int, limit: int, ups: list[Upstream] = UPS) -> list[str]:
    return [u.id for u in slot_upstreams(ups, limit, workers, index)]


def test_partitioned_slots_are_dealt_once_each_and_evenly() -> None:
    for workers in (2, 3, 4):
        for limit in (1, 2, 5):
            if len(UPS) * limit < workers:
                continue  # some worker owns nothing: below
            views = [owned(workers, i, limit) for i in range(workers)]
            for u in UPS:  # a replica's slots add up to its limit over the workers: it is never overfilled
                assert sum(s.split("#")[0] == u.id for v in views for s in v) == limit, (workers, limit)
            sizes = [len(v) for v in views]
            assert max(sizes) - min(sizes) <= 1, (workers, limit, sizes)


def test_a_worker_spreads_over_replicas_before_it_stacks() -> None:
    mine = owned(2, 0, 4)
    firsts = [s.split("#")[0] for s in mine[: len(UPS)]]
    assert sorted(firsts) == sorted(u.id for u in UPS)  # one slot of each replica first
    assert all(u.unix_path for u in slot_upstreams(UPS, 4, 2, 0))  # same address as the replica


def test_each_worker_gets_slots_of_as_many_replicas_as_its_share_allows() -> None:
    """Replicas a multiple of the workers (2 at limit 2 behind 2; 2 at limit 4 behind 4; 3 at limit
    3 behind 3): each worker owns one slot of every replica, never all the slots of one, so a
    worker the kernel gives most connections still reaches every replica."""
    for replicas, limit, workers in ((2, 2, 2), (2, 4, 4), (3, 3, 3), (4, 2, 2)):
        ups = UPS[:replicas] if replicas <= len(UPS) else [*UPS, Upstream(id="svc-1-3", host="localhost", port=0)]
        for index in range(workers):
            mine = [s.split("#")[0] for s in owned(workers, index, limit, ups)]
            share = replicas * limit // workers
            assert len(set(mine)) == min(share, replicas), (replicas, limit, workers, index, mine)


def test_a_worker_that_owns_no_slot_uses_every_slot() -> None:
    one = UPS[:1]
    assert owned(2, 0, 1, one) == ["svc-1-0#0"]
    assert owned(2, 1, 1, one) == ["svc-1-0#0"]  # fewer slots than workers: the busy answer settles
    assert owned(2, 1, 1, []) == []


def test_a_route_crosses_as_key_material_and_checks_the_same() -> None:
    route = ServiceRoute(name="keyed", auth=KeyAuth("k1-primary", "k2-secondary"), max_concurrent=3, timeout_s=7.0)
    plain = route_to_plain(route)
    assert plain["auth"] == {"kind": "key", "primary": "k1-primary", "secondary": "k2-secondary"}
    back = route_from_plain(plain, {})
    assert (back.max_concurrent, back.timeout_s, back.max_wait_s) == (3, 7.0, route.max_wait_s)
    assert back.auth is not None
    assert back.auth.check(b"Bearer k2-secondary") is AuthResult.OK
    assert back.auth.check(b"Bearer nope") is AuthResult.INVALID


def test_a_token_route_crosses_as_the_public_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    route = ServiceRoute(name="tokened", auth=TokenAuth(key.public_key(), "tokened", clock=time.time))
    plain = route_to_plain(route)
    assert plain["auth"]["kind"] == "token" and "PUBLIC KEY" in plain["auth"]["public_key"]
    tokens: dict[str, TokenAuth] = {}
    back = route_from_plain(plain, tokens)
    token, _ = issue_token(key, "tokened", now=time.time())
    assert back.auth is not None and back.auth.check(f"Bearer {token}".encode()) is AuthResult.OK
    other, _ = issue_token(key, "other", now=time.time())
    assert back.auth.check(f"Bearer {other}".encode()) is AuthResult.INVALID
    assert route_from_plain(plain, tokens).auth is back.auth  # kept: its verified-token cache stays


def test_counters_cross_as_deltas_and_add_up() -> None:
    worker, daemon = ServiceMetrics(), ServiceMetrics()
    worker.observe(200, 0.01)
    worker.observe(503, 0.2)
    worker.auth_failed(missing=True)
    first = metrics_snapshot(worker)
    delta = metrics_delta(None, first)
    assert delta is not None and add_metrics(daemon, delta) == 2
    assert metrics_delta(first, metrics_snapshot(worker)) is None  # nothing new: nothing sent
    worker.observe(200, 0.02)
    worker.drop("client_gone")
    delta = metrics_delta(first, metrics_snapshot(worker))
    assert delta is not None and delta["codes"] == {200: 1} and add_metrics(daemon, delta) == 1
    assert metrics_snapshot(daemon) == metrics_snapshot(worker)


def test_mirror_counters_cross_as_deltas_and_add_up() -> None:
    worker, daemon = ServiceMetrics(), ServiceMetrics()
    worker.mirror = MirrorCounters()
    worker.mirror.sent += 2
    worker.mirror.record(200, True, 0.004)
    worker.mirror.record(0, False, 0.3)  # no answer: disagreed and an error
    first = metrics_snapshot(worker)
    delta = metrics_delta(None, first)  # no answer of the mirror version's own yet: the copies alone
    assert delta is not None and delta["mirror"]["sent"] == 2 and add_metrics(daemon, delta) == 0
    assert daemon.mirror is not None  # made on the first copies added
    assert metrics_delta(first, metrics_snapshot(worker)) is None
    worker.mirror.dropped += 1  # a copy never sent is a change too
    delta = metrics_delta(first, metrics_snapshot(worker))
    assert delta is not None and delta["mirror"]["dropped"] == 1 and delta["mirror"]["sent"] == 0
    add_metrics(daemon, delta)
    assert metrics_snapshot(daemon) == metrics_snapshot(worker)
    mc = daemon.mirror
    assert (mc.sent, mc.dropped, mc.agreed, mc.disagreed, mc.errors, mc.count) == (2, 1, 1, 1, 1, 2)


def test_401s_by_address_cross_as_deltas_and_keep_the_bound() -> None:
    worker, daemon = Router(), AuthFailures(max_clients=3)
    assert take_auth_failures(worker) is None  # nothing failed: nothing sent
    worker.auth_failures.record("10.0.0.1", AuthResult.MISSING)
    worker.auth_failures.record("10.0.0.2", AuthResult.INVALID)
    worker.auth_failures.record("10.0.0.1", AuthResult.INVALID)
    first = take_auth_failures(worker)
    assert first == {"missing": 1, "invalid": 2, "by_client": {"10.0.0.2": 1, "10.0.0.1": 2}}
    assert take_auth_failures(worker) is None  # taken: the worker starts again from nothing
    daemon.record("10.0.0.9", AuthResult.INVALID)
    daemon.merge(first)
    assert daemon.snapshot() == {"missing": 1, "invalid": 3, "by_client": {"10.0.0.9": 1, "10.0.0.2": 1, "10.0.0.1": 2}}
    worker.auth_failures.record("10.0.0.3", AuthResult.INVALID)
    second = take_auth_failures(worker)
    assert second is not None
    daemon.merge(second)  # a fourth address: the least recently failing goes, its count stays in the totals
    assert daemon.snapshot() == {"missing": 1, "invalid": 4, "by_client": {"10.0.0.2": 1, "10.0.0.1": 2, "10.0.0.3": 1}}


RIDS = b"x-ms-request-id: r-\xe9\r\nx-request-id: r-\xe9\r\n"  # latin-1 bytes cross as text and back


def test_a_workers_timings_cross_to_the_daemons_tracer_and_count_their_drops() -> None:
    buffer = TraceBuffer(max_pending=2)
    for ended in (1.003, 1.004, 1.005):  # the third finds the buffer full
        buffer.add("svc", RIDS, 200, 1.0, 1.001, ended)
    timings, dropped = json.loads(json.dumps(buffer.take()))  # as the report crosses
    assert len(timings) == 2 and dropped == 1
    assert buffer.take() == ([], 0)  # taken: empty again, and a drop is reported once
    exported: list[Timing] = []

    def export(batch: Sequence[Timing]) -> None:
        exported.extend(batch)

    tracer = Tracer(export)
    add_traces(tracer, timings, dropped)
    add_traces(None, timings, dropped)  # a daemon without a tracer: nothing to do
    tracer.flush()
    assert [(t.service, t.request_id, t.status) for t in exported] == [("svc", "r-\xe9", 200)] * 2
    assert abs(exported[0].queue_s - 0.001) < 1e-9 and abs(exported[0].total_s - 0.003) < 1e-9
    assert tracer.dropped == 1  # /metrics' modelfleet_trace_dropped_total reads this


def test_a_workers_report_carries_its_mirror_copies_401s_and_timings_to_the_daemon(tmp_path: Path) -> None:
    """``_Worker.report`` -> JSON -> ``RouterWorkers._on_message``, with no socket: the worker is
    built from the daemon's config and table calls as a connecting worker is."""
    daemon = FleetRouter(workers=2, index=0, slots="shared")
    fleet = RouterWorkers(daemon, tmp_path / "w.sock", {}, {}, on_replica_failed=lambda *_: None)
    exported: list[Timing] = []
    daemon.tracer = Tracer(exported.extend)
    daemon.set_service(ServiceRoute(name="svc", auth=KeyAuth("k-1"), trace=True))
    daemon.set_replicas("svc", UPS[:1])
    worker = _Worker(1, writer=None)  # type: ignore[arg-type]  # report() sends nothing

    async def build() -> None:
        await worker.handle({"op": "config", "workers": 2, "slots": "shared", "limits": {}})
        for msg in fleet._journal.values():
            await worker.handle(msg)

    asyncio.run(build())
    router = worker.router
    assert router is not None and router.tracer is worker.traces  # the worker traces now
    svc = router.services[b"svc"]
    svc.metrics.observe(200, 0.002)
    counters_of(svc).record(200, True, 0.002)
    router.auth_failures.record("127.0.0.1", AuthResult.INVALID)
    assert router.tracer is not None
    router.tracer.add("svc", RIDS, 200, 5.0, 5.001, 5.002)

    link = _Link(1, 0, writer=None)  # type: ignore[arg-type]
    fleet._on_message(link, json.loads(json.dumps(worker.report(router))))
    assert daemon.auth_failures.snapshot() == {"missing": 0, "invalid": 1, "by_client": {"127.0.0.1": 1}}
    mc = daemon.services[b"svc"].metrics.mirror
    assert mc is not None and (mc.agreed, mc.count) == (1, 1)
    daemon.tracer.flush()
    assert [(t.service, t.request_id) for t in exported] == [("svc", "r-\xe9")]
    # the next report carries only what is new: nothing here
    fleet._on_message(link, json.loads(json.dumps(worker.report(router))))
    assert daemon.auth_failures.snapshot()["invalid"] == 1 and mc.count == 1
    assert daemon.services[b"svc"].metrics.codes == {200: 1}


def _entry(in_flight: int, queued: int, idle_s: float, replicas: dict[str, tuple[int, bool]]) -> dict[str, Any]:
    reps = {rid: {"in_flight": n, "ready": ready} for rid, (n, ready) in replicas.items()}
    return {"in_flight": in_flight, "queued": queued, "limit": 2, "idle_s": idle_s, "replicas": reps}


def test_stats_combine_as_one_router() -> None:
    daemon = {"a": _entry(1, 0, 5.0, {"r0": (1, True), "r1": (0, False)}), "b": _entry(0, 0, 9.0, {})}
    worker = {"a": _entry(2, 3, 0.5, {"r1": (2, True)}), "gone": _entry(1, 1, 0.0, {})}
    out = combine_stats([daemon, worker])
    assert set(out) == {"a", "b"}  # a service only a worker still has is left out
    assert out["a"]["in_flight"] == 3 and out["a"]["queued"] == 3 and out["a"]["idle_s"] == 0.5
    assert out["a"]["limit"] == 2
    assert out["a"]["replicas"] == {"r0": {"in_flight": 1, "ready": True}, "r1": {"in_flight": 2, "ready": True}}
    assert daemon["a"]["replicas"]["r1"] == {"in_flight": 0, "ready": False}  # inputs untouched
    # partitioned: a worker with no slot of a replica has no opinion on it (None)
    daemon = {"a": _entry(1, 0, 1.0, {"r0": (1, True), "r1": (0, None)})}  # type: ignore[dict-item]
    assert combine_stats([daemon])["a"]["replicas"]["r1"]["ready"] is True  # its owner is restarting
    worker = {"a": _entry(0, 0, 1.0, {"r0": (0, None), "r1": (0, False)})}  # type: ignore[dict-item]
    out = combine_stats([daemon, worker])
    assert out["a"]["replicas"] == {"r0": {"in_flight": 1, "ready": True}, "r1": {"in_flight": 0, "ready": False}}


def test_a_worker_rebuilt_from_the_daemons_calls_holds_the_same_table() -> None:
    daemon = FleetRouter(workers=2, index=0, slots="partitioned")
    worker = FleetRouter(workers=2, index=1, slots="partitioned")
    sent: list[dict[str, Any]] = []
    daemon.fanout = sent.append
    daemon.set_service(ServiceRoute(name="svc", auth=KeyAuth("secret-key-1"), max_concurrent=2))
    daemon.set_replicas("svc", UPS[:2])
    daemon.set_cold_wait("svc", 3.0)
    assert [m["op"] for m in sent] == ["set_service", "set_replicas", "set_cold_wait"]
    tokens: dict[str, TokenAuth] = {}
    for msg in sent:
        worker.apply_plain(msg, tokens)
    d_slots = {s.id for s in daemon.services[b"svc"].dispatch.slots()}
    w_slots = {s.id for s in worker.services[b"svc"].dispatch.slots()}
    # 4 slots, 2 each: one of each replica apiece (slot ids are each router's own: "<replica>#<k>")
    assert len(d_slots) == len(w_slots) == 2
    both = ["svc-1-0", "svc-1-1"]
    assert sorted(s.split("#")[0] for s in d_slots) == sorted(s.split("#")[0] for s in w_slots) == both
    assert daemon.services[b"svc"].dispatch.limit == 1  # a slot is an upstream of limit 1
    views = [daemon.own_stats(), worker.own_stats()]
    assert all(v["svc"]["limit"] == 2 for v in views)  # the service's limit, not a slot's
    assert all(sorted(v["svc"]["replicas"]) == ["svc-1-0", "svc-1-1"] for v in views)  # by replica, not slot
    assert sorted(combine_stats(views)["svc"]["replicas"]) == ["svc-1-0", "svc-1-1"]
    # a limit change re-deals: 3 slots a replica, 6 in all
    daemon.set_service(ServiceRoute(name="svc", auth=KeyAuth("secret-key-1"), max_concurrent=3))
    worker.apply_plain(sent[-1], tokens)
    assert len(daemon.services[b"svc"].dispatch.slots()) + len(worker.services[b"svc"].dispatch.slots()) == 6
    daemon.remove_service("svc")
    worker.apply_plain(sent[-1], tokens)
    assert not daemon.services and not worker.services


def test_shared_slots_leave_the_table_as_it_is() -> None:
    router = FleetRouter(workers=2, index=1, slots="shared")
    router.set_service(ServiceRoute(name="svc", max_concurrent=2))
    router.set_replicas("svc", UPS)
    assert sorted(s.id for s in router.services[b"svc"].dispatch.slots()) == [u.id for u in UPS]
    assert router.services[b"svc"].dispatch.limit == 2


def test_worker_settings_name_the_flag_and_the_range() -> None:
    assert WorkerSettings() == WorkerSettings(workers=1, slots="partitioned")
    assert max_workers(2) == 8 and max_workers(0) == 4
    for bad in (0, -1, max_workers() + 1, True, "2"):
        with pytest.raises(ConfigError, match=rf"--router-workers must be a count from 1 to {max_workers()} or "):
            WorkerSettings(workers=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--router-slots must be one of shared, partitioned"):
        WorkerSettings(slots="striped")


def test_a_worker_process_loads_no_control_plane_library() -> None:
    code = (
        "import sys, modelfleet.control.router_worker\n"
        "print([m for m in ('sqlalchemy', 'modelfleet.sdk', 'modelfleet.store', 'kubernetes', 'pydantic')"
        " if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.strip() == "[]"


def test_gauges_are_the_stats_the_dashboard_samples() -> None:
    def from_stats(router: Router) -> dict[str, tuple[int, int, int, int]]:
        return {
            name: (e["in_flight"], e["queued"], e["limit"], sum(1 for r in e["replicas"].values() if r["ready"]))
            for name, e in router.stats().items()
        }

    for router in (Router(), FleetRouter(workers=2, index=0, slots="partitioned")):
        router.set_service(ServiceRoute(name="svc", auth=KeyAuth("secret-key-1"), max_concurrent=3))
        router.set_replicas("svc", UPS[:2])
        router.set_service(ServiceRoute(name="other", max_concurrent=1))
        router.services[b"svc"].dispatch.slots()[0].failed = True  # failed mid-request
        assert router.gauges() == from_stats(router)
        assert router.gauges()["other"] == (0, 0, 1, 0)  # no replica yet
    # partitioned, a worker's slots are each an upstream of limit 1: gauges speak of replicas
    assert router.gauges()["svc"][2] == 3 and Router.gauges(router)["svc"][2] == 1
