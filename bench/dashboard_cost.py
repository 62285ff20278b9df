"""What the live dashboard costs scoring: router throughput with the dashboard off and on.

    python bench/dashboard_cost.py [--seconds 5] [--rounds 3] [--connections 16]

Two local clusters, each with one service of the same trivial model (body
``{"data": [[1,...,10]]}``, answer ``[55]``), key auth on, one replica, autoscaling off:
``off`` is a daemon started with ``--no-dashboard``; ``on`` serves the dashboard, samples its
ring buffer every second, and has a logged-in viewer on the service's page the whole time
(the event stream ``/api/feed?service=...``, one overview and one service view a second),
which is the dashboard's heaviest ordinary use. Every daemon, router and replica runs on
CPU 1 (``taskset``-style affinity, inherited); ``wrk`` (one thread) on CPU 0. Rounds
alternate off/on so that drift in the machine's load hits both alike; medians are compared.
Printed: requests/s, p50 and CPU per request (daemon + replica, from /proc) for each, the
ratio on/off, and the events the viewer received.

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
import threading
import time
from pathlib import Path

from _common import cpu_seconds, loadavg, machine, wrk_post_lua, wrk_rps_p50

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

BODY = '{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
SERVICE = "cost"


def start_daemon(ws_path: Path, dashboard: bool) -> None:
    """Start a workspace's daemon on CPU 1 as ``cluster start`` would, ``--no-dashboard`` for off."""
    runtime = ws_path / ".modelfleet" / "runtime"
    runtime.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "modelfleet.control.daemon", "--detach", "--workspace", str(ws_path)]
    argv += ["--log-file", str(runtime / "daemon.log")] + ([] if dashboard else ["--no-dashboard"])
    subprocess.run(argv, check=True, timeout=60, preexec_fn=lambda: os.sched_setaffinity(0, {1}))


class Viewer(threading.Thread):
    """A logged-in browser's event stream on the service's page, read until stopped."""

    def __init__(self, ws: object) -> None:
        super().__init__(daemon=True)
        from modelfleet.control.dashboard.login import issue_code

        cluster = ws.cluster()  # type: ignore[attr-defined]
        port = cluster.info()["dashboard_port"]
        self.base = f"http://127.0.0.1:{port}"
        self.code = issue_code(cluster.paths.admin_token.read_text().strip(), time.time())
        self.events = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.base, timeout=30.0) as http:
            http.get(f"/login?code={self.code}", follow_redirects=False)
            with http.stream("GET", "/api/feed", params={"service": SERVICE}) as stream:
                for line in stream.iter_lines():
                    if line.startswith("event: "):
                        self.events += 1
                    if self.stopping.is_set():
                        return


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("needs wrk and taskset: apt-get install -y wrk util-linux")

    from e2e_support import SCRIPTS, stop_cluster
    from modelfleet import AksWebservice, Environment, InferenceConfig, Model, Workspace

    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {machine()}")
    print(f"load average before: {loadavg()}")
    tmp = Path(tempfile.mkdtemp(prefix="mf-bench-dashboard-"))
    workspaces = {name: Workspace.create(f"bench-{name}", tmp / name) for name in ("off", "on")}
    viewer = None
    try:
        env = Environment("bench")
        ic = InferenceConfig(entry_script="score.py", source_directory=SCRIPTS / "sum", environment=env)
        dc = AksWebservice.deploy_configuration(autoscale_enabled=False, num_replicas=1)
        services = {}
        for name, ws in workspaces.items():
            start_daemon(ws.path, dashboard=name == "on")
            services[name] = Model.deploy(ws, SERVICE, [], ic, dc)
        for service in services.values():
            service.wait_for_deployment(timeout_sec=120)
        script = tmp / "post.lua"
        pids = {}
        for name, service in services.items():
            script.write_text(wrk_post_lua(BODY, {"Authorization": f"Bearer {service.get_keys()[0]}"}))
            wrk_rps_p50(service.scoring_uri, 4, 1, script)  # warm up (connections, caches)
            cluster = workspaces[name].cluster()
            daemon = int(cluster.info()["pid"])  # type: ignore[index]
            pids[name] = [daemon] + [r["pid"] for r in cluster.status()["services"][SERVICE]["replicas"]]
        viewer = Viewer(workspaces["on"])
        viewer.start()

        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in services}
        print(f"{'round':>5} {'dashboard':>9} {'req/s':>9} {'p50':>9} {'CPU/request':>12}")
        for r in range(args.rounds):
            for name, service in services.items():
                script.write_text(wrk_post_lua(BODY, {"Authorization": f"Bearer {service.get_keys()[0]}"}))
                cpu0 = cpu_seconds(pids[name])
                rps, p50, count = wrk_rps_p50(service.scoring_uri, args.connections, args.seconds, script)
                cpu = (cpu_seconds(pids[name]) - cpu0) / count * 1e6
                results[name].append((rps, p50, cpu))
                print(f"{r + 1:>5} {name:>9} {rps:>9.0f} {p50:>7.3f}ms {cpu:>9.1f} µs")

        def median(name: str, i: int) -> float:
            return statistics.median(x[i] for x in results[name])

        off, on = median("off", 0), median("on", 0)
        print(
            f"\n{args.connections} connections, median of {args.rounds} rounds of {args.seconds} s: "
            f"off {off:.0f} req/s (p50 {median('off', 1):.3f} ms), on {on:.0f} req/s (p50 {median('on', 1):.3f} ms)"
        )
        print(f"ratio on/off: {on / off:.3f}   cost: {1 - on / off:+.1%}")
        cpu_off, cpu_on = median("off", 2), median("on", 2)
        print(
            f"CPU per request (daemon + replica): off {cpu_off:.1f} µs, on {cpu_on:.1f} µs, "
            f"ratio {cpu_on / cpu_off:.3f}"
        )
        print(f"viewer: {viewer.events} events received (overview + service, one each a second)")
        print(f"load average after: {loadavg()}")
    finally:
        if viewer is not None:
            viewer.stopping.set()
        for ws in workspaces.values():
            stop_cluster(ws)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
