"""The walking system's figures for the demo model, measured in one run.

    python bench/demo_service.py [--duration 10]

1. time from ``Model.deploy`` to Healthy (daemon already running, and from cold);
2. a replica's cold start: ``modelfleet serve`` process start to its first 200;
3. requests per second for the demo model through the router (key auth on) at 1 and 16
   connections, beside the same replica called directly, so the router's share shows as
   a ratio. Load from ``wrk`` (Debian), one thread, pinned to CPU 0; the daemon, router and
   replica pinned to CPU 1 (``taskset``).

Traffic goes only to 127.0.0.1; everything started here is stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import free_port, wrk_argv, wrk_latency_ms

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo"
SAMPLE = {"data": [[0.038, 0.051, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003, 0.020, -0.018]]}


def wait_200(url: str, timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic()
        except OSError:
            pass
        time.sleep(0.01)
    raise TimeoutError(url)


def wrk(url: str, connections: int, duration: int, headers: dict[str, str], body_file: Path) -> dict[str, float]:
    script = body_file.with_suffix(".lua")
    header_lines = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
    script.write_text(f'wrk.method = "POST"\nwrk.body = [==[{body_file.read_text()}]==]\n{header_lines}')
    out = subprocess.run(
        wrk_argv(url, script, connections, duration), capture_output=True, text=True, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": wrk_latency_ms(out, "50%"),
        "p99_ms": wrk_latency_ms(out, "99%"),
        "errors": int(non2xx.group(1)) if non2xx else 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is needed: apt-get install -y wrk", file=sys.stderr)
        return 2
    from modelfleet import AksWebservice, Environment, InferenceConfig, Model, Workspace

    sys.path.insert(0, str(DEMO))
    from train import train

    tmp = Path(tempfile.mkdtemp(prefix="mf-bench-"))
    ws = Workspace.create("bench", tmp / "ws")
    body = tmp / "body.json"
    body.write_text(json.dumps(SAMPLE))
    try:
        model = Model.register(ws, train(tmp / "outputs"), "diabetes-ridge")
        ic = InferenceConfig(entry_script="score.py", source_directory=DEMO, environment=Environment("bench"))
        dc = AksWebservice.deploy_configuration(num_replicas=1)

        # the daemon (and so router and replicas) on CPU 1
        os.sched_setaffinity(0, {1})
        started = time.monotonic()
        service = Model.deploy(ws, "bench-cold", [model], ic, dc)
        service.wait_for_deployment()
        cold_deploy = time.monotonic() - started
        started = time.monotonic()
        service = Model.deploy(ws, "bench-demo", [model], ic, dc)
        service.wait_for_deployment()
        warm_deploy = time.monotonic() - started
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))

        # a replica's cold start, and the direct reference: `modelfleet serve` on CPU 1
        model_dir = tmp / "outputs"
        port = free_port()
        t0 = time.monotonic()
        serve = subprocess.Popen(
            [
                "taskset",
                "-c",
                "1",
                sys.executable,
                "-m",
                "modelfleet",
                "serve",
                "--entry_script",
                str(DEMO / "score.py"),
                "--model_dir",
                str(model_dir),
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        cold_start = wait_200(f"http://127.0.0.1:{port}/") - t0

        primary, _ = service.get_keys()
        results = {}
        for connections in (1, 16):
            results[("direct", connections)] = wrk(
                f"http://127.0.0.1:{port}/score", connections, args.duration, {"Content-Type": "application/json"}, body
            )
            results[("router", connections)] = wrk(
                service.scoring_uri,
                connections,
                args.duration,
                {"Content-Type": "application/json", "Authorization": f"Bearer {primary}"},
                body,
            )
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=30)
    finally:
        ws.cluster().stop()
        shutil.rmtree(tmp, ignore_errors=True)

    load = os.getloadavg()[0]
    print(f"# demo model, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, load average {load:.2f} at the end")
    print("# system under test on CPU 1 (taskset), wrk -t1 on CPU 0")
    print(f"deploy to Healthy, cluster not yet running : {cold_deploy:6.2f} s")
    print(f"deploy to Healthy, cluster running         : {warm_deploy:6.2f} s")
    print(f"replica cold start (process start to 200)  : {cold_start:6.2f} s")
    print(f"{'path':8} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    if any(r["errors"] for r in results.values()):
        print("# WARNING: some answers were not 2xx; the rates above are not comparable")
    for (path, connections), r in results.items():
        print(f"{path:8} {connections:5d} {r['rps']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['errors']:8d}")
    for connections in (1, 16):
        ratio = results[("router", connections)]["rps"] / results[("direct", connections)]["rps"]
        print(f"router ÷ direct req/s at {connections:2d} connections: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
