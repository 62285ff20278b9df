"""Scale to zero: the first request's latency after a service went to zero replicas, against
the same replica's plain process cold start, in the same run.

- **from zero**: a service with ``scale_to_zero_after_seconds=1`` (min 1, max 1 replica) on the
  local cluster sits idle until it has no replica; then one request is timed from send to
  answer. That covers the router holding it, the autoscaler's next sample seeing it, the
  target starting the process, ``init()``, the readiness probe, and the answer.
- **plain**: ``python -m modelfleet.replica`` of the same entry script started by hand, timed
  from ``Popen`` to its first 200 answer (process start + imports + ``init()`` + answer).

The script's ``init()`` sleeps ``--init-ms`` (a stand-in for loading a model); ``run()`` sums a
row. Each is measured ``--rounds`` times and the medians compared (from zero ÷ plain).

Placement (2-core machine): the cluster (daemon, router, replicas) and the plain replica on
CPU 1 (started from a thread pinned there, or with taskset); this harness and its client on
CPU 0.

    python bench/cold_start.py [--rounds 3] [--init-ms 200]

Never run inside the test suite; traffic goes only to 127.0.0.1; about 30 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

SCORE = """
import time


def init():
    time.sleep({init_s})


def run(raw_data):
    return [sum(range(10))]
"""
BODY = '{"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]}'


def plain_cold_start(source: Path, tmp: Path) -> float:
    """Seconds from Popen to the first 200 of a replica started by hand on CPU 1."""
    port_file = tmp / f"port-{time.monotonic_ns()}"
    argv = ["taskset", "-c", "1", sys.executable, "-m", "modelfleet.replica", "--entry_script", "score.py"]
    argv += ["--port", "0", "--port-file", str(port_file)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZUREML_", "AML_"))}
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=source, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the replica exited with {proc.returncode}")
            text = port_file.read_text().strip() if port_file.exists() else ""
            if text:
                try:
                    r = httpx.post(f"http://127.0.0.1:{int(text)}/score", content=BODY, timeout=10)
                    if r.status_code == 200:
                        return time.monotonic() - t0
                except httpx.TransportError:
                    pass
            if time.monotonic() - t0 > 60:
                raise RuntimeError("the replica did not answer within 60 s")
            time.sleep(0.002)
    finally:
        proc.kill()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--init-ms", type=float, default=200.0)
    args = parser.parse_args()
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs two CPUs (cluster on CPU 1, client on CPU 0)")

    from modelfleet import AksWebservice, Environment, InferenceConfig, Model, Workspace

    with tempfile.TemporaryDirectory(prefix="mf-cold-") as tmp_name:
        tmp = Path(tmp_name)
        source = tmp / "model"
        source.mkdir()
        (source / "score.py").write_text(SCORE.replace("{init_s}", repr(args.init_ms / 1000.0)))
        ws = Workspace.create("bench", tmp / "ws")
        starter = threading.Thread(target=lambda: (os.sched_setaffinity(0, {1}), ws.cluster().ensure_running()))
        starter.start()
        starter.join()
        os.sched_setaffinity(0, {0})
        print(
            f"# {time.strftime('%Y-%m-%d %H:%M %Z')}  init() {args.init_ms:g} ms, {args.rounds} rounds; "
            "cluster and plain replica on CPU 1, client on CPU 0"
        )
        from_zero: list[float] = []
        plain: list[float] = []
        try:
            ic = InferenceConfig(entry_script="score.py", source_directory=source, environment=Environment("bench"))
            dc = AksWebservice.deploy_configuration(
                auth_enabled=False,
                autoscale_min_replicas=1,
                autoscale_max_replicas=1,
                scale_to_zero_after_seconds=1,
            )
            service = Model.deploy(ws, "cold", [], ic, dc)
            service.wait_for_deployment(timeout_sec=120)

            def replicas() -> int:
                return len(ws.cluster().status()["services"]["cold"]["replicas"])

            with httpx.Client(timeout=60) as client:
                for _ in range(args.rounds):
                    deadline = time.monotonic() + 60
                    while replicas() != 0:
                        if time.monotonic() > deadline:
                            raise RuntimeError("the service did not scale to zero within 60 s")
                        time.sleep(0.1)
                    time.sleep(0.3)  # the last replica's process is gone, not just unlisted
                    t0 = time.monotonic()
                    r = client.post(service.scoring_uri, content=BODY, headers={"content-type": "application/json"})
                    took = time.monotonic() - t0
                    if r.status_code != 200:
                        raise RuntimeError(f"from zero: {r.status_code} {r.text}")
                    from_zero.append(took)
                    plain.append(plain_cold_start(source, tmp))
                    print(f"from zero {from_zero[-1] * 1000:7.0f} ms   plain process {plain[-1] * 1000:7.0f} ms")
        finally:
            ws.cluster().stop()
        zero_ms, plain_ms = statistics.median(from_zero) * 1000, statistics.median(plain) * 1000
        print(
            f"median: first request from zero {zero_ms:.0f} ms, plain process cold start {plain_ms:.0f} ms; "
            f"ratio {zero_ms / plain_ms:.2f}"
        )


if __name__ == "__main__":
    main()
