"""What the router costs: the stand-in replica alone vs the same replica behind the router.

Placement: the system under test (stand-in replica, router) pinned to CPU 1, the
load generator (``wrk``, one thread) pinned to CPU 0. Same trivial request for both: POST
``{"data": [[1,...,10]]}`` answered with ``[55]``. For 1 and 16 connections it prints
requests/s, p50 latency, the ratio through-router / direct, and the router's CPU time per
request (utime+stime from /proc/<pid>/stat over the run, divided by the requests wrk counted).

    python bench/router_overhead.py [--seconds 5] [--connections 1,16]

Needs ``wrk`` (``apt-get install -y wrk``) and ``taskset``. Never run inside the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import cpu_user_system, wrk_post_lua, wrk_rps_p50

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

BODY = '{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
KEY = "bench-primary-key"


def serve_router(upstream_port: int) -> None:
    """Child mode: a router alone in its process (uvloop when present), one service."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    from modelfleet.router.auth import KeyAuth
    from modelfleet.router.proxy import Router, ServiceRoute, Upstream

    async def main() -> None:
        router = Router()
        port = await router.start("127.0.0.1", 0)
        router.set_service(ServiceRoute("bench", auth=KeyAuth(KEY), max_concurrent=64, max_wait_s=5))
        router.set_replicas("bench", [Upstream("bench-0", "127.0.0.1", upstream_port)])
        print("PORT", port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", default="1,16")
    ap.add_argument("--serve-router", type=int, metavar="UPSTREAM_PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_router:
        serve_router(args.serve_router)
        return
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("needs wrk and taskset: apt-get install -y wrk util-linux")

    from router_upstream import UpstreamProcess

    upstream = UpstreamProcess(taskset="1")
    router = subprocess.Popen(
        ["taskset", "-c", "1", sys.executable, __file__, "--serve-router", str(upstream.port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert router.stdout is not None
        line = router.stdout.readline()
        assert line.startswith("PORT "), line
        router_port = int(line.split()[1])
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(wrk_post_lua(BODY, {"Authorization": f"Bearer {KEY}"}))
            script = f.name
        direct = f"http://127.0.0.1:{upstream.port}/score"
        through = f"http://127.0.0.1:{router_port}/api/v1/service/bench/score"
        for url in (direct, through):  # warm up both paths (connections, caches)
            wrk_rps_p50(url, 4, 1, script)
        print(f"{'conns':>5} {'direct req/s':>13} {'router req/s':>13} {'ratio':>6} "
              f"{'direct p50':>11} {'router p50':>11} {'router CPU/req':>15}")  # fmt: skip
        for c in (int(x) for x in args.connections.split(",")):
            d_rps, d_p50, _ = wrk_rps_p50(direct, c, args.seconds, script)
            u0, s0 = cpu_user_system(router.pid)
            t0 = time.monotonic()
            r_rps, r_p50, r_count = wrk_rps_p50(through, c, args.seconds, script)
            u1, s1 = cpu_user_system(router.pid)
            cpu = (u1 - u0) + (s1 - s0)
            wall = time.monotonic() - t0
            print(
                f"{c:>5} {d_rps:>13.0f} {r_rps:>13.0f} {r_rps / d_rps:>6.2f} {d_p50:>9.3f}ms {r_p50:>9.3f}ms "
                f"{cpu / r_count * 1e6:>12.1f} µs   (user {(u1 - u0) / r_count * 1e6:.1f} + "
                f"system {(s1 - s0) / r_count * 1e6:.1f} µs; router busy {cpu / wall:.0%} of CPU 1)"
            )
        os.unlink(script)
    finally:
        router.kill()
        router.wait()
        if router.stdout is not None:
            router.stdout.close()
        upstream.stop()


if __name__ == "__main__":
    main()
