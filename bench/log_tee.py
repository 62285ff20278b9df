"""What the Kubernetes replica's log tee costs (``replica/logtee.py``): a replica's throughput
and CPU per request with ``MODELFLEET_LOG_TEE`` off and on.

    python bench/log_tee.py [--seconds 5] [--rounds 3] [--connections 8]

Two standalone replicas (``python -m modelfleet.replica --access-log``) of a script that
print()s once per request (``tests/e2e_scripts/printing``): every request writes two lines
(the print and the access log). Both have stdout and stderr on a file, as a container
runtime keeps a container's log; ``tee-on`` also copies them through its pipe and thread into
``<folder>/<id>/000001.log``, which the ``ship`` sidecar would upload. Both replicas run on CPU 1
(``taskset``), ``wrk`` (one thread) on CPU 0; rounds alternate off/on so that drift in the
machine's load hits both alike; medians are compared. Printed: requests/s, p50 and the
replica's CPU per request (its threads included, so the tee's), the ratios on/off, and the
bytes each wrote.

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
import time
import urllib.request
from pathlib import Path

from _common import cpu_seconds, free_port, kill_pids, loadavg, machine, wait_gone, wrk_post_lua, wrk_rps_p50

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parent / "tests" / "e2e_scripts" / "printing" / "score.py"


def start(name: str, work: Path, tee: bool) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    env.update({"PYTHONUNBUFFERED": "1", "MODELFLEET_REPLICA_ID": name})
    if tee:
        env["MODELFLEET_LOG_TEE"] = str(work / "tee")
    out = open(work / f"{name}.stdout", "wb")  # noqa: SIM115  # the container log; closed with the process
    argv = ["taskset", "-c", "1", sys.executable, "-m", "modelfleet.replica", "--entry_script", str(SCRIPT)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--access-log"]
    proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=work)
    out.close()
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                r.read()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start; see {work / f'{name}.stdout'}") from None
            time.sleep(0.2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=8)
    args = ap.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("needs wrk and taskset: apt-get install -y wrk util-linux")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {machine()}")
    print(f"load before: {loadavg()}")
    work = Path(tempfile.mkdtemp(prefix="modelfleet-bench-tee-"))
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    results: dict[str, list[tuple[float, float, float]]] = {"tee-off": [], "tee-on": []}
    try:
        for name in results:
            procs[name] = start(name, work, tee=name == "tee-on")
        script = work / "post.lua"
        script.write_text(wrk_post_lua('{"i": 1}', {}))
        for _ in range(args.rounds):
            for name, (proc, port) in procs.items():
                before = cpu_seconds([proc.pid])
                rps, p50, count = wrk_rps_p50(f"http://127.0.0.1:{port}/score", args.connections, args.seconds, script)
                cpu_us = (cpu_seconds([proc.pid]) - before) / max(count, 1) * 1e6
                results[name].append((rps, p50, cpu_us))
                print(f"  {name}: {rps:8.0f} req/s  p50 {p50:6.2f} ms  replica CPU {cpu_us:6.1f} us/req")
    finally:
        for proc, _ in procs.values():
            proc.terminate()
        wait_gone([p.pid for p, _ in procs.values()], 30)
        kill_pids([p.pid for p, _ in procs.values()])
    med = {n: [statistics.median(r[i] for r in rs) for i in range(3)] for n, rs in results.items()}
    for n, (rps, p50, cpu) in med.items():
        print(f"{n}: median {rps:.0f} req/s, p50 {p50:.2f} ms, replica CPU {cpu:.1f} us/req")
    off, on = med["tee-off"], med["tee-on"]
    print(
        f"ratio on/off: throughput {on[0] / off[0]:.3f}, p50 {on[1] / off[1]:.3f}, CPU per request {on[2] / off[2]:.3f}"
    )
    tee_files = sorted((work / "tee" / "tee-on").glob("*.log"))
    sizes = (work / "tee-off.stdout").stat().st_size, (work / "tee-on.stdout").stat().st_size
    teed = sum(f.stat().st_size for f in tee_files)
    print(f"bytes: tee-off stdout {sizes[0]}, tee-on stdout {sizes[1]}, tee-on files {teed}")
    print(f"load after: {loadavg()}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
