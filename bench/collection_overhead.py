"""What model data collection costs: router throughput with ``collect_model_data`` off and on.

    python bench/collection_overhead.py [--seconds 5] [--rounds 3] [--connections 16]

One local cluster, two services of the same trivial model (body ``{"data": [[1,...,10]]}``,
answer ``[55]``), key auth on, one replica each, autoscaling off: ``coll-off`` and ``coll-on``
(``collect_model_data=True``: every request's input and prediction recorded). The daemon,
router and replicas run on CPU 1 (``taskset``, inherited); ``wrk`` (one thread) on CPU 0.
Rounds alternate off/on so that drift in the machine's load hits both alike; the medians are
compared. Printed: requests/s, p50 and CPU per request (router and replica, from /proc) for
each, the ratio on/off and the overhead (1 - ratio),
with the date, the machine and the load average before and after; after a graceful stop, the
records written for ``coll-on`` beside the answers wrk read from it.

Needs ``wrk`` (``apt-get install -y wrk``) and ``taskset``. Never run inside the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from _common import cpu_seconds, loadavg, machine, wrk_post_lua, wrk_rps_p50

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

BODY = '{"data": [[1,2,3,4,5,6,7,8,9,10]]}'


def wrk(url: str, key: str, connections: int, seconds: int, script_dir: Path) -> tuple[float, float, int]:
    """(requests/s, p50 ms, requests) from one wrk run pinned to CPU 0."""
    script = script_dir / "post.lua"
    script.write_text(wrk_post_lua(BODY, {"Authorization": f"Bearer {key}"}))
    return wrk_rps_p50(url, connections, seconds, script)


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
    from modelfleet.store.registry import META_DIR
    from modelfleet.telemetry.collected import read_records
    from modelfleet.telemetry.data_layout import service_data_dir

    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {machine()}")
    print(f"load average before: {loadavg()}")
    tmp = Path(tempfile.mkdtemp(prefix="mf-bench-collect-"))
    ws = Workspace.create("bench", tmp / "ws")
    try:
        ic = InferenceConfig(
            entry_script="score.py", source_directory=SCRIPTS / "sum", environment=Environment("bench")
        )
        os.sched_setaffinity(0, {1})  # the daemon (router) and the replicas it starts inherit CPU 1
        services = {}
        for name, collect in (("coll-off", False), ("coll-on", True)):
            dc = AksWebservice.deploy_configuration(autoscale_enabled=False, num_replicas=1, collect_model_data=collect)
            services[name] = Model.deploy(ws, name, [], ic, dc)
        for service in services.values():
            service.wait_for_deployment(timeout_sec=120)
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))

        sent_on = 0
        for name, service in services.items():  # warm up both paths (connections, caches)
            _, _, count = wrk(service.scoring_uri, service.get_keys()[0], 4, 1, tmp)
            sent_on += count if name == "coll-on" else 0
        status = ws.cluster().status()
        daemon_pid = int(ws.cluster().info()["pid"])  # type: ignore[index]
        pids = {name: [daemon_pid] + [r["pid"] for r in status["services"][name]["replicas"]] for name in services}
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in services}
        print(f"{'round':>5} {'service':>9} {'req/s':>9} {'p50':>9} {'CPU/request':>12}")
        for r in range(args.rounds):
            for name, service in services.items():
                cpu0 = cpu_seconds(pids[name])
                rps, p50, count = wrk(service.scoring_uri, service.get_keys()[0], args.connections, args.seconds, tmp)
                cpu = (cpu_seconds(pids[name]) - cpu0) / count * 1e6  # daemon (router) + this service's replica
                results[name].append((rps, p50, cpu))
                if name == "coll-on":
                    sent_on += count
                print(f"{r + 1:>5} {name:>9} {rps:>9.0f} {p50:>7.3f}ms {cpu:>9.1f} µs")

        off = statistics.median(x[0] for x in results["coll-off"])
        on = statistics.median(x[0] for x in results["coll-on"])
        print(
            f"\n{args.connections} connections, median of {args.rounds} rounds of {args.seconds} s: "
            f"off {off:.0f} req/s (p50 {statistics.median(x[1] for x in results['coll-off']):.3f} ms), "
            f"on {on:.0f} req/s (p50 {statistics.median(x[1] for x in results['coll-on']):.3f} ms)"
        )
        print(f"ratio on/off: {on / off:.3f}   overhead: {1 - on / off:.1%}   (aim: under 10%)")
        cpu_off = statistics.median(x[2] for x in results["coll-off"])
        cpu_on = statistics.median(x[2] for x in results["coll-on"])
        print(
            f"CPU per request (router + replica, less sensitive to other load on the machine): off {cpu_off:.1f} µs, "
            f"on {cpu_on:.1f} µs, ratio {cpu_on / cpu_off:.3f} (+{cpu_on / cpu_off - 1:.1%})"
        )
        print(f"load average after: {loadavg()}")
    finally:
        stop_cluster(ws)  # graceful: every buffered record is written
    records = read_records(service_data_dir(ws.store.root / META_DIR, "coll-on"))
    inputs = sum(1 for r in records if r["designation"] == "inputs")
    predictions = len(records) - inputs
    # wrk counts the answers it read; requests cut when it stops may still have been scored.
    print(
        f"coll-on: wrk read {sent_on} answers; recorded after a graceful stop: "
        f"{inputs} inputs, {predictions} predictions"
    )
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
