"""What an endpoint's traffic split costs the router: CPU per request, split against a single service.

    python bench/endpoint_split.py [--seconds 5] [--rounds 3] [--connections 16]

One local cluster (daemon, router inside it, replicas) on CPU 1 (affinity inherited); ``wrk``
(one thread) on CPU 0. Two things to score, the same trivial model (body ``{"data":
[[1,...,10]]}``, answer ``[55]``), key auth on, autoscaling off:

- ``single``: a service with 2 replicas;
- ``split``: an endpoint with 2 versions of 1 replica each, blue (the default) and green at
  ``--green`` percent (router/versions.py picks one per request and names it in the answer);
- ``mirror``: an endpoint whose default version "main" has 2 replicas and a mirror version
  "shadow" (2 replicas) at ``mirror_percentile=100`` (router/mirror.py): every request is also
  copied to shadow when one of its slots is free, else the copy is dropped (the counts are
  printed: the ratio covers both). The in-process harness below sends every copy (its mirror
  replica answers at once), so its ratio is the whole cost of a copy.

The default share, 50 %, gives both the same capacity and the same spread over 2 replicas, so
the difference is the version choice alone. At 90/10 one replica takes 90 % of the load: its
queue, not the split, then makes the router work more per request (``--green 10`` shows it).

Rounds alternate single/split so that drift in the machine's load hits both alike; medians
are compared. Then the same comparison without sockets or other processes, as
bench/router_hotpath.py drives the router (in-memory transports, process CPU time, alternating
rounds, best of each): a service against an endpoint of 2 versions on the same replica
address, which does not move with the machine's load. Printed: requests/s, p50 and the
daemon's CPU per request (the router is the daemon's; replicas are not counted: they do the
same work either way), and the ratios split/single, the figure the issue bounds (at most 1.05).

Needs ``wrk`` and ``taskset``. Never run inside the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import cpu_seconds, loadavg, machine, wrk_post_lua, wrk_rps_p50

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

BODY = '{"data": [[1,2,3,4,5,6,7,8,9,10]]}'


def start_daemon(ws_path: Path) -> None:
    """Start the workspace's daemon on CPU 1, as ``cluster start`` would."""
    runtime = ws_path / ".modelfleet" / "runtime"
    runtime.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "modelfleet.control.daemon", "--detach", "--workspace", str(ws_path)]
    argv += ["--log-file", str(runtime / "daemon.log"), "--no-dashboard"]
    subprocess.run(argv, check=True, timeout=60, preexec_fn=lambda: os.sched_setaffinity(0, {1}))


def pick_cost_us(green: float) -> float:
    """The version choice alone, in this process: ``EndpointState.pick`` (a random draw over the
    pre-built weights) and the answer line joined to the request ids, as the router does."""
    import timeit

    from modelfleet.router.routes import ServiceRoute, ServiceState
    from modelfleet.router.versions import EndpointState, VersionShare

    services = {n.encode(): ServiceState(ServiceRoute(n)) for n in ("split:blue", "split:green")}
    for svc in services.values():
        svc.dispatch.set_replicas(["r"], 0.0)
    state = EndpointState(
        "split", [VersionShare("blue", "split:blue", 0, True), VersionShare("green", "split:green", green, False)]
    )
    state.refresh(services)
    rids = b"x-ms-request-id: 0123456789abcdef\r\nx-request-id: 0123456789abcdef\r\n"

    def one() -> bytes:
        return rids + state.pick(None, None)[2]

    n = 200_000
    return min(timeit.repeat(one, number=n, repeat=3)) / n * 1e6


def hotpath_us(requests: int, rounds: int, green: float) -> tuple[float, float, float]:
    """(single, split, mirror) router CPU µs per request, in process (bench/router_hotpath.py's
    harness); mirror: every request also copied to a mirror version, which answers it."""
    import asyncio
    import gc
    import time

    from modelfleet.router.auth import KeyAuth
    from modelfleet.router.proxy import ClientConnection, Router, ServiceRoute, Upstream
    from modelfleet.router.upstream import Pool, UpstreamConn
    from modelfleet.router.versions import VersionShare
    from router_hotpath import ANSWER, BODY, KEY, REQUEST, MemoryTransport

    loop = asyncio.new_event_loop()
    try:
        import uvloop

        loop.close()
        loop = uvloop.new_event_loop()
    except ImportError:
        pass

    def setup(kind: str) -> tuple[Router, object]:
        split = kind != "single"
        pool = Pool(max_idle_s=3600.0)  # the other router's round may pass the 1.5 s default
        router = Router(pool=pool)
        router.loop = loop  # never run: timers are only armed, and cancelled at the end
        router.date_line = b"date: Wed, 25 Nov 2026 18:01:59 GMT\r\n"
        front = ServiceRoute("bench", auth=KeyAuth(KEY), max_concurrent=64, max_wait_s=5)
        if kind == "mirror":
            for version, port in (("main", 5001), ("shadow", 5002)):
                router.set_service(ServiceRoute(f"bench:{version}", max_concurrent=64, max_wait_s=5))
                router.set_replicas(f"bench:{version}", [Upstream(f"{version}-0", "127.0.0.1", port)])
            shares = [
                VersionShare("main", "bench:main", 0, True),
                VersionShare("shadow", "bench:shadow", 0, False, mirror_percentile=100),
            ]
            router.set_endpoint(front, shares)
        elif split:
            for version in ("blue", "green"):
                router.set_service(ServiceRoute(f"bench:{version}", max_concurrent=64, max_wait_s=5))
                router.set_replicas(f"bench:{version}", [Upstream(f"{version}-0", "127.0.0.1", 5001)])
            shares = [VersionShare("blue", "bench:blue", 0, True), VersionShare("green", "bench:green", green, False)]
            router.set_endpoint(front, shares)
        else:
            router.set_service(front)
            router.set_replicas("bench", [Upstream("bench-0", "127.0.0.1", 5001)])
        up = UpstreamConn(pool, ("127.0.0.1", 5001))
        up_t = MemoryTransport()
        up.connection_made(up_t)
        pool.put(up, loop.time())
        shadow = UpstreamConn(pool, ("127.0.0.1", 5002))
        shadow_t = MemoryTransport()
        shadow.connection_made(shadow_t)
        pool.put(shadow, loop.time())
        client = ClientConnection(router)
        client_t = MemoryTransport()
        client.connection_made(client_t)

        def one() -> None:
            client.data_received(REQUEST)
            up.data_received(ANSWER)

        def mirrored() -> None:
            client.data_received(REQUEST)
            up.data_received(ANSWER)
            shadow.data_received(ANSWER)  # the copy, sent after the primary's answer, is answered

        if kind == "mirror":
            one = mirrored
        one()
        sent, answer = up_t.out[-1], client_t.out[-1]
        assert sent.startswith(b"POST /score HTTP/1.1\r\n") and sent.endswith(BODY), sent
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\n[55]"), answer
        assert (b"azureml-model-deployment: " in answer) == split, answer
        if kind == "mirror":
            copy = shadow_t.out[-1]
            assert copy.startswith(b"POST /score HTTP/1.1\r\n") and copy.endswith(BODY), copy
        return router, (one, up_t, client_t, shadow_t)

    runs = {name: setup(name) for name in ("single", "split", "mirror")}
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, (_, (one, up_t, client_t, shadow_t)) in runs.items():  # type: ignore[misc]
            up_t.out.clear()
            client_t.out.clear()
            shadow_t.out.clear()
            gc.collect()
            t0 = time.process_time()
            for _ in range(requests):
                one()
            best[name] = min(best[name], (time.process_time() - t0) / requests * 1e6)
            assert len(client_t.out) >= requests, f"{name}: some requests were not answered"
    for router, _ in runs.values():
        for svc in router.services.values():
            for handle in (svc.timer, svc.deadline_timer):
                if handle is not None:
                    handle.cancel()
    mirror = runs["mirror"][0].services[b"bench:shadow"].metrics.mirror
    assert mirror is not None and mirror.dropped == 0 and mirror.sent == mirror.agreed > 0, mirror
    loop.close()
    return best["single"], best["split"], best["mirror"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--green", type=float, default=50.0, help="green's traffic_percentile (blue: the rest)")
    args = ap.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("needs wrk and taskset: apt-get install -y wrk util-linux")

    from e2e_support import SCRIPTS, stop_cluster
    from modelfleet import AksEndpoint, AksWebservice, Environment, InferenceConfig, Model, Workspace

    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {machine()}")
    print(f"load average before: {loadavg()}")
    tmp = Path(tempfile.mkdtemp(prefix="mf-bench-split-"))
    ws = Workspace.create("bench-split", tmp / "ws")
    try:
        start_daemon(ws.path)
        ic = InferenceConfig(
            entry_script="score.py", source_directory=SCRIPTS / "sum", environment=Environment("bench")
        )
        fixed = {"autoscale_enabled": False}
        single = Model.deploy(ws, "single", [], ic, AksWebservice.deploy_configuration(num_replicas=2, **fixed))
        dc = AksEndpoint.deploy_configuration(version_name="blue", num_replicas=1, **fixed)
        split = Model.deploy(ws, "split", [], ic, dc)
        assert isinstance(split, AksEndpoint)
        split.create_version(
            "green", models=[], inference_config=ic, traffic_percentile=args.green, num_replicas=1, **fixed
        )
        dc = AksEndpoint.deploy_configuration(version_name="main", num_replicas=2, **fixed)
        mirror = Model.deploy(ws, "mirror", [], ic, dc)
        assert isinstance(mirror, AksEndpoint)
        mirror.create_version("shadow", models=[], inference_config=ic, mirror_percentile=100, num_replicas=2, **fixed)
        single.wait_for_deployment(timeout_sec=120)
        split.wait_for_deployment(timeout_sec=120)
        mirror.wait_for_deployment(timeout_sec=120)
        targets = {"single": single, "split": split, "mirror": mirror}
        daemon = [int(ws.cluster().info()["pid"])]  # type: ignore[index]
        script = tmp / "post.lua"
        for service in targets.values():  # warm up (connections, caches)
            script.write_text(wrk_post_lua(BODY, {"Authorization": f"Bearer {service.get_keys()[0]}"}))
            wrk_rps_p50(service.scoring_uri, 4, 1, script)  # type: ignore[arg-type]

        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in targets}
        print(f"{'round':>5} {'target':>7} {'req/s':>9} {'p50':>9} {'router CPU/request':>19}")
        for r in range(args.rounds):
            for name, service in targets.items():
                script.write_text(wrk_post_lua(BODY, {"Authorization": f"Bearer {service.get_keys()[0]}"}))
                cpu0 = cpu_seconds(daemon)
                rps, p50, count = wrk_rps_p50(service.scoring_uri, args.connections, args.seconds, script)  # type: ignore[arg-type]
                cpu = (cpu_seconds(daemon) - cpu0) / count * 1e6
                results[name].append((rps, p50, cpu))
                print(f"{r + 1:>5} {name:>7} {rps:>9.0f} {p50:>7.3f}ms {cpu:>16.1f} µs")

        def median(name: str, i: int) -> float:
            return statistics.median(x[i] for x in results[name])

        print(
            f"\n{args.connections} connections, median of {args.rounds} rounds of {args.seconds} s: "
            f"single {median('single', 0):.0f} req/s (p50 {median('single', 1):.3f} ms), "
            f"split {median('split', 0):.0f} req/s (p50 {median('split', 1):.3f} ms)"
        )
        cpu_single, cpu_split = median("single", 2), median("split", 2)
        print(
            f"router CPU per request: single {cpu_single:.1f} µs, split {cpu_split:.1f} µs, "
            f"ratio split/single {cpu_split / cpu_single:.3f} (target <= 1.05; green at {args.green:g} %)"
        )
        cpu_mirror = median("mirror", 2)
        copies = ws.cluster().status()["router"]["mirror"]["endpoint"]["versions"]["shadow"]["mirror"]
        print(
            f"router CPU per request with 100 % mirroring: {cpu_mirror:.1f} µs, ratio mirror/single "
            f"{cpu_mirror / cpu_single:.3f} (copies over the whole run: {copies['sent']} sent, "
            f"{copies['dropped']} dropped for want of a free shadow slot, {copies['agreed']} agreed)"
        )
        single_us, split_us, mirror_us = hotpath_us(50_000, 5, args.green)
        print(
            f"router hot path in process (bench/router_hotpath.py's harness, best of 5 x 50,000 each): "
            f"single {single_us:.2f} µs, split {split_us:.2f} µs, ratio {split_us / single_us:.3f}; "
            f"100 % mirrored (every copy sent and answered) {mirror_us:.2f} µs, ratio {mirror_us / single_us:.3f}"
        )
        pick = pick_cost_us(args.green)
        print(
            f"the version choice alone (pick + answer line, in process): {pick:.2f} µs per request, "
            f"{pick / cpu_single:.1%} of single's router CPU per request"
        )
        print(f"load average after: {loadavg()}")
    finally:
        stop_cluster(ws)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
