"""Router workers: 1 router process against 2 (slots partitioned, and shared), one run.

    python bench/router_workers.py [--seconds 4] [--connections 2,3,16] [--replicas 3]

One service (the ``sum`` test script, key auth on, autoscale off) with ``--replicas`` replicas
at ``replica_max_concurrent_requests=1`` (v1's default), in a local cluster started with
``cluster start --router-workers N --router-slots MODE`` for each of: 1 worker, 2 partitioned,
2 shared (a fresh workspace each). ``wrk`` (one thread, new connections kept alive) drives it
at each connection count: below capacity (fewer connections than slots), at capacity, and
over it. Printed for each: req/s; router CPU seconds (utime + stime from /proc of the daemon
and its worker processes, over wrk's run) and req/s per router CPU-second; busy answers (the
replicas' own 503 ``x-modelfleet-busy`` lines in their access logs: a collision of two routers
on one replica, retried by the router); and the 503s clients got (wrk's non-2xx). Then the
ratios of each 2-worker mode to 1 worker, same load.

Placement (this machine has 2 cores, shared): the whole system under test (daemon, router
worker, replicas) on CPU 1 (the cluster is started from ``taskset -c 1``; children inherit
it), ``wrk`` on CPU 0. Two router processes on one core only take turns, so req/s cannot
rise here; what this shows is what a second worker costs per request and how often workers
collide. On a machine with cores to spare for the router the second worker's req/s adds up;
that is where it pays.

Only 127.0.0.1. Everything started is stopped (``cluster stop``; leftovers by pid). Not part
of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import cpu_seconds, kill_pids, loadavg, machine, wait_gone, wrk_argv, wrk_post_lua

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

BODY = '{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
CONFIGS = ((1, "shared"), (2, "partitioned"), (2, "shared"))


def cli(ws: Path, *args: str) -> None:
    """``modelfleet`` on CPU 1: a daemon it starts inherits the placement."""
    argv = ["taskset", "-c", "1", sys.executable, "-m", "modelfleet", "-w", str(ws), *args]
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120)


def busy_answers(ws: Path) -> int:
    return sum(f.read_text(errors="replace").count('"status": 503') for f in ws.rglob("replica-*.log"))


def run_wrk(url: str, script: str, connections: int, seconds: int) -> tuple[float, int, int]:
    """(req/s, requests, non-2xx answers) from one wrk run on CPU 0."""
    out = subprocess.run(wrk_argv(url, script, connections, seconds), capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, count, int(bad.group(1)) if bad else 0


class Cluster:
    """One configuration's cluster, its service deployed, its router processes known."""

    def __init__(self, workers: int, slots: str, args: argparse.Namespace, root: Path) -> None:
        from e2e_support import deploy
        from modelfleet import Workspace

        self.name = f"{workers} {slots if workers > 1 else ''}".strip()
        self.path = root / f"ws-{workers}-{slots}"
        self.ws = Workspace.create("bench", self.path)
        self.pids: list[int] = []
        cli(self.path, "cluster", "start", "--router-workers", str(workers), "--router-slots", slots)
        info = self.ws.cluster().info()
        self.pids = [int(info["pid"])] if info else []
        service = deploy(
            self.ws,
            "bench",
            "sum",
            num_replicas=args.replicas,
            replica_max_concurrent_requests=1,
            autoscale_enabled=False,
            cpu_cores=0.1,
            memory_gb=0.2,
        )
        status = self.ws.cluster().status()
        self.pids = [int(p["pid"]) for p in status["router_workers"] or [{"pid": status["pid"]}]]
        self.uri = service.scoring_uri
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(wrk_post_lua(BODY, {"Authorization": f"Bearer {service.get_keys()[0]}"}))
            self.script = f.name
        run_wrk(self.uri, self.script, 4, 1)  # warm-up: connections, caches

    def measure(self, c: int, seconds: int) -> dict[str, Any]:
        busy0 = busy_answers(self.path)
        cpu0 = cpu_seconds(self.pids)
        rps, count, bad = run_wrk(self.uri, self.script, c, seconds)
        cpu = cpu_seconds(self.pids) - cpu0
        time.sleep(1.1)  # the replicas write their access logs once a second
        return {"c": c, "rps": rps, "count": count, "cpu": cpu, "busy": busy_answers(self.path) - busy0, "503": bad}

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.script)
        with contextlib.suppress(Exception):
            self.ws.cluster().stop()
        wait_gone(self.pids, 30)
        kill_pids(self.pids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--connections", default="2,3,16", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    print(f"{machine()}; load {loadavg()}")
    print(f"{args.replicas} replicas at limit 1 ({args.replicas} slots); system under test on CPU 1, wrk on CPU 0")
    clusters: list[Cluster] = []
    best: dict[tuple[str, int], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="mf-bench-workers-") as tmp:
        try:
            for workers, slots in CONFIGS:
                clusters.append(Cluster(workers, slots, args, Path(tmp)))
            for round_ in range(args.rounds):  # interleaved: the machine is shared
                for cluster in clusters if round_ % 2 == 0 else reversed(clusters):
                    for c in args.connections:
                        r = cluster.measure(c, args.seconds)
                        kept = best.get((cluster.name, c))
                        if kept is None or r["rps"] > kept["rps"]:
                            best[(cluster.name, c)] = r
        finally:
            for cluster in clusters:
                cluster.stop()
    results = {cl.name: [best[(cl.name, c)] for c in args.connections] for cl in clusters}
    print(f"best of {args.rounds} round(s) of {args.seconds} s each")
    print(f"{'routers':<16} {'conns':>5} {'req/s':>8} {'router CPU s':>12} {'req/CPU-s':>10} {'busy':>6} {'503s':>5}")
    for name, rows in results.items():
        for r in rows:
            per_cpu = r["count"] / r["cpu"] if r["cpu"] else float("nan")
            line = f"{name:<16} {r['c']:>5} {r['rps']:>8.0f} {r['cpu']:>12.2f} {per_cpu:>10.0f}"
            print(f"{line} {r['busy']:>6} {r['503']:>5}")
    print("ratios to 1 router process, same load (req/s; req per router CPU-second):")
    base = {r["c"]: r for r in results["1"]}
    for name, rows in results.items():
        if name == "1":
            continue
        for r in rows:
            b = base[r["c"]]
            eff = (r["count"] / r["cpu"]) / (b["count"] / b["cpu"]) if r["cpu"] and b["cpu"] else float("nan")
            print(f"  {name:<14} c={r['c']:<3} req/s x{r['rps'] / b['rps']:.2f}  req/CPU-s x{eff:.2f}")


if __name__ == "__main__":
    main()
