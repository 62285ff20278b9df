"""A load step against one service, three ways: fixed 1 replica, fixed max replicas, autoscaled.

Each run deploys a fresh service on the local cluster, lets it sit idle, then steps the
offered load from 0 to ``--rate`` requests/s (open loop: request i is due at step + i/rate,
whatever happened to the others, and its latency counts from when it was due, so queueing
is not hidden) for ``--seconds``. The model: body ``{"data": [[1,...,10]]}``, answer
``[55]``, after ``--work-ms`` of sleep in run() (a stand-in for model time: on one CPU only
waiting work gains from more replicas). Every run uses the v1 defaults for the router's
queue (max_request_wait_time 500 ms, then 503) and one request per replica at a time.

It prints, per run: time from the step to the autoscaler's decision, to the first new
replica serving (the router's replica set grew, from the daemon's log) and to all of them; p50/p99 latency and errors
during the ramp (the first ``--ramp`` seconds), p99 after it, and over the whole step; then the autoscaled
p99 ÷ the fixed-max p99.

Placement (2-core machine): the cluster (daemon, router, every replica) is pinned
to CPU 1 (it is started from a thread pinned there and children inherit it); this harness,
the load generator (one asyncio thread, raw HTTP/1.1 keep-alive to 127.0.0.1) run on CPU 0.
Replica-set changes are read from the daemon's log afterwards rather than polled.

    python bench/autoscale_step.py [--rate 25] [--work-ms 100] [--seconds 8] [--max-replicas 4]

Never run inside the test suite; traffic goes only to 127.0.0.1 and every run is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

BODY = b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
SCORE = """\
import json
import time


def init():
    pass


def run(raw_data):
    data = json.loads(raw_data)["data"]
    time.sleep({work_s})  # stands in for model time
    return [sum(row) for row in data]
"""


@dataclass
class Result:
    name: str
    samples: list[tuple[float, int, float]] = field(default_factory=list)  # (due offset, status, latency s)
    decision_s: float | None = None
    first_new_s: float | None = None
    all_s: float | None = None
    events: list[dict] = field(default_factory=list)
    replica_cpus: set[str] = field(default_factory=set)  # Cpus_allowed_list of its replicas


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer


async def post(port: int, path: str, pool: list[Conn], timeout: float) -> int:
    """One POST over a pooled keep-alive connection; the status (599 for a transport error)."""
    conn = pool.pop() if pool else Conn(*await asyncio.open_connection("127.0.0.1", port))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode()
    try:
        conn.writer.write(head + BODY)
        status_line = await asyncio.wait_for(conn.reader.readline(), timeout)
        status = int(status_line.split(b" ", 2)[1])
        length, close = 0, False
        while True:
            line = await conn.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        await conn.reader.readexactly(length)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
        conn.writer.close()
        return 599
    if close:
        conn.writer.close()
    else:
        pool.append(conn)
    return status


async def step_load(port: int, path: str, rate: float, seconds: float, result: Result, t0: float) -> None:
    loop = asyncio.get_running_loop()
    pool: list[Conn] = []

    async def one(due: float) -> None:
        status = await post(port, path, pool, timeout=15.0)
        result.samples.append((due - t0, status, loop.time() - due))

    tasks = []
    for i in range(int(rate * seconds)):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    for conn in pool:
        conn.writer.close()


def replicas_serving(daemon_log: Path, name: str, since: float) -> list[tuple[float, int]]:
    """(wall time, replica count) each time the router's replica set of ``name`` changed after
    ``since``, from the daemon's log (no polling, so nothing competes with the router)."""
    out = []
    pattern = re.compile(rf"^(\S+ \S+),(\d+) INFO modelfleet.router: service {name}: replicas \[(.*?)\]")
    for line in daemon_log.read_text(errors="replace").splitlines():
        m = pattern.match(line)
        if m:
            when = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
            if when >= since:
                out.append((when, len([x for x in m.group(3).split(",") if x.strip()])))
    return out


def cpus_allowed(pid: int) -> str:
    return Path(f"/proc/{pid}/status").read_text().split("Cpus_allowed_list:")[1].split()[0]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def summary(samples: list[tuple[float, int, float]]) -> tuple[float, float, int, int]:
    ok = [lat for _, status, lat in samples if status == 200]
    return percentile(ok, 0.5) * 1000, percentile(ok, 0.99) * 1000, len(samples) - len(ok), len(samples)


def run_one(ws, name: str, source: Path, settings: dict, args: argparse.Namespace) -> Result:
    from modelfleet import AksWebservice, Environment, InferenceConfig, Model

    ic = InferenceConfig(entry_script="score.py", source_directory=source, environment=Environment("bench"))
    service = Model.deploy(ws, name, [], ic, AksWebservice.deploy_configuration(auth_enabled=False, **settings))
    service.wait_for_deployment(timeout_sec=120)
    path = "/api/v1/service/" + name + "/score"
    port = int(service.scoring_uri.split(":")[2].split("/")[0])
    result = Result(name)

    async def load(rate: float, seconds: float, into: Result) -> None:
        await step_load(port, path, rate, seconds, into, asyncio.get_running_loop().time())

    asyncio.run(load(1, 1, Result("warm-up")))  # one request: connections and imports warm
    time.sleep(1.5)  # idle before the step (the autoscaler sees nothing busy)
    before = len(service.workspace.cluster().status()["services"][name]["replicas"])
    t0_wall = time.time()
    asyncio.run(load(args.rate, args.seconds, result))
    for replica in service.workspace.cluster().status()["services"][name]["replicas"]:
        if replica["pid"]:
            result.replica_cpus.add(cpus_allowed(replica["pid"]))
    result.events = service.get_scale_events()
    ups = [e for e in result.events if e["to"] > e["from"]]
    if ups:
        result.decision_s = ups[0]["time"] - t0_wall
    for when, count in replicas_serving(ws.store.runtime_dir / "daemon.log", name, t0_wall):
        if count > before and result.first_new_s is None:
            result.first_new_s = when - t0_wall
        if count >= args.max_replicas and count > before and result.all_s is None:
            result.all_s = when - t0_wall
    service.delete()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=25.0, help="requests/s after the step")
    ap.add_argument("--work-ms", type=float, default=100.0, help="run() time per request")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of the step")
    ap.add_argument("--ramp", type=float, default=3.0, help="seconds after the step reported as the ramp")
    ap.add_argument("--max-replicas", type=int, default=4)
    args = ap.parse_args()
    if os.cpu_count() is None or os.cpu_count() < 2:  # type: ignore[operator]
        sys.exit("needs two CPUs (cluster on CPU 1, load on CPU 0)")

    from modelfleet import Workspace

    with tempfile.TemporaryDirectory(prefix="mf-bench-") as tmp:
        source = Path(tmp) / "model"
        source.mkdir()
        (source / "score.py").write_text(SCORE.replace("{work_s}", repr(args.work_ms / 1000.0)))
        ws = Workspace.create("bench", Path(tmp) / "ws")
        # start the cluster from a thread pinned to CPU 1: the daemon and the replicas it
        # starts inherit it; this thread (the load generator) then runs on CPU 0
        starter = threading.Thread(target=lambda: (os.sched_setaffinity(0, {1}), ws.cluster().ensure_running()))
        starter.start()
        starter.join()
        os.sched_setaffinity(0, {0})
        daemon_pid = int(ws.cluster().info()["pid"])
        placement = cpus_allowed(daemon_pid)
        print(
            f"# {time.strftime('%Y-%m-%d %H:%M %Z')}  step 0 -> {args.rate:g} req/s for {args.seconds:g} s, "
            f"run() {args.work_ms:g} ms, 1 request per replica, max_request_wait_time 500 ms; "
            f"cluster on CPU {placement}, load generator on CPU 0"
        )
        runs = [
            ("fixed1", {"autoscale_enabled": False, "num_replicas": 1}),
            ("fixedmax", {"autoscale_enabled": False, "num_replicas": args.max_replicas}),
            (
                "autoscaled",
                {
                    "autoscale_min_replicas": 1,
                    "autoscale_max_replicas": args.max_replicas,
                    "autoscale_refresh_seconds": 1,
                    "autoscale_target_utilization": 70,
                },
            ),
        ]
        results = []
        try:
            for name, settings in runs:
                results.append(run_one(ws, name, source, settings, args))
        finally:
            ws.cluster().stop()

        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}s"

        print(
            f"{'run':<11} {'decision':>9} {'1st new':>8} {'all':>7} "
            f"{'ramp p50':>9} {'ramp p99':>9} {'ramp err':>9} {'after p99':>10} {'p50':>8} {'p99':>8} {'errors':>9}"
        )
        p99s = {}
        for r in results:
            ramp = [s for s in r.samples if s[0] < args.ramp]
            rp50, rp99, rerr, rn = summary(ramp)
            _, ap99, _, _ = summary([s for s in r.samples if s[0] >= args.ramp])
            p50, p99, err, n = summary(r.samples)
            p99s[r.name] = (rp99, ap99, p99)
            print(
                f"{r.name:<11} {fmt(r.decision_s):>9} {fmt(r.first_new_s):>8} {fmt(r.all_s):>7} "
                f"{rp50:>7.0f}ms {rp99:>7.0f}ms {rerr:>4}/{rn:<4} {ap99:>8.0f}ms "
                f"{p50:>6.0f}ms {p99:>6.0f}ms {err:>4}/{n:<4}"
            )
        auto, fixed = p99s["autoscaled"], p99s["fixedmax"]
        print(
            f"autoscaled p99 / fixed-max p99: ramp {auto[0] / fixed[0]:.2f}, after the ramp {auto[1] / fixed[1]:.2f}, "
            f"whole step {auto[2] / fixed[2]:.2f}"
            "\n(p50/p99 over the answers with status 200, from when each request was due; errors: 503 after the "
            "500 ms queue wait, or transport errors)"
        )
        print("replicas ran on CPU " + ", ".join(sorted({c for r in results for c in r.replica_cpus})))
        for r in results:
            errors = Counter(status for _, status, _ in r.samples if status != 200)
            worst = sorted(r.samples, key=lambda x: -x[2])[:3]
            print(
                f"  {r.name}: errors by status {dict(errors) or '{}'}; slowest (due at, status, latency): "
                + ", ".join(f"({t:.2f}s, {st}, {lat * 1000:.0f}ms)" for t, st, lat in worst)
            )
        for r in results:
            for e in r.events:
                print(f"  {r.name} scale event: {json.dumps({k: e[k] for k in ('from', 'to', 'utilization')})}")


if __name__ == "__main__":
    main()
