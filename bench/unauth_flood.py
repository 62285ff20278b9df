"""A flood of unauthenticated requests on one service, and what it does to an authenticated
client of another service behind the same router (issue 12: the flood is answered 401
quickly; the other client's p99 stays within 2x its quiet value).

    python bench/unauth_flood.py [--duration 10] [--requests 500] [--connections 32]

1. quiet: the measuring client sends ``--requests`` sequential scoring requests (keep-alive)
   to service ``served`` and records each latency;
2. flood: ``wrk`` POSTs without a key to service ``guarded`` for ``--duration`` seconds while
   the measuring client repeats step 1.

Placement: the daemon (router and replicas) on CPU 1 (``sched_setaffinity`` before the
deploy; children inherit it); wrk (one thread) and the measuring client on CPU 0. Prints the
flood's rate and statuses, both p50/p99 and the ratio flood ÷ quiet. Traffic goes only to
127.0.0.1; the cluster is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from _common import cpu_model, wrk_argv
from modelfleet import AksWebservice, Environment, InferenceConfig, Model, Workspace

ROOT = Path(__file__).resolve().parent.parent
SUM = ROOT / "tests" / "e2e_scripts" / "sum"
BODY = json.dumps({"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]})


def latencies_ms(uri: str, key: str, count: int) -> list[float]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    out: list[float] = []
    with httpx.Client(timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            response = client.post(uri, content=BODY, headers=headers)
            out.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.text
    return out


def percentile(values: list[float], pct: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of flood (default 10)")
    parser.add_argument("--requests", type=int, default=500, help="measured requests per phase (default 500)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections of the flood (default 32)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("needs wrk: apt-get install -y wrk")
    tmp = Path(tempfile.mkdtemp(prefix="mf-flood-"))
    ws = Workspace.create("flood", tmp / "ws")
    try:
        ic = InferenceConfig(entry_script="score.py", source_directory=SUM, environment=Environment("flood"))
        dc = AksWebservice.deploy_configuration(num_replicas=1)
        os.sched_setaffinity(0, {1})  # the daemon, router and replicas inherit CPU 1
        guarded = Model.deploy(ws, "guarded", [], ic, dc)
        served = Model.deploy(ws, "served", [], ic, dc)
        guarded.wait_for_deployment()
        served.wait_for_deployment()
        os.sched_setaffinity(0, {0})
        key = served.get_keys()[0]
        latencies_ms(served.scoring_uri, key, 50)  # warm the pools
        quiet = latencies_ms(served.scoring_uri, key, args.requests)

        script = tmp / "flood.lua"
        script.write_text(f"wrk.method = \"POST\"\nwrk.body = '{BODY}'\n")
        flood_out: list[str] = []
        flood = threading.Thread(
            target=lambda: flood_out.append(
                subprocess.run(
                    wrk_argv(guarded.scoring_uri, script, args.connections, args.duration),
                    capture_output=True, text=True, check=True,
                ).stdout
            )
        )  # fmt: skip
        flood.start()
        time.sleep(1)  # the flood is on before measuring
        loud = latencies_ms(served.scoring_uri, key, args.requests)
        flood.join()
    finally:
        ws.cluster().stop()
        shutil.rmtree(tmp, ignore_errors=True)

    out = flood_out[0]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    print(f"# unauthenticated flood, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores ({cpu_model('?')})")
    print("# daemon/router/replicas on CPU 1; wrk -t1 and the measuring client on CPU 0")
    print(f"flood: {rate:.0f} req/s over {args.connections} connections, {total} requests, "
          f"{int(non2xx.group(1)) if non2xx else 0} non-2xx (all should be 401)")  # fmt: skip
    for label, values in (("quiet", quiet), ("during flood", loud)):
        print(f"{label:13}: p50 {percentile(values, 50):6.2f} ms  p99 {percentile(values, 99):6.2f} ms")
    print(f"p99 during flood ÷ quiet: {percentile(loud, 99) / percentile(quiet, 99):.2f} (promise: <= 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
