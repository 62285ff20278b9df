"""Issue 16: many services on one machine: what each replica costs, and how the cluster copes.

For each count N (default 10 and 100): N services deployed one after another (the trivial
``sum`` entry script, one replica each, ``cpu_cores=0.001``, ``memory_gb=0.02``, so that N fit
the room check), then:

- the time of the Nth deploy to Healthy (and the median and the longest of the last 20),
  ``service list`` and ``cluster status`` (the CLI, as a user runs it: warm, the median of 5 runs);
- each replica's memory from ``/proc/<pid>/smaps_rollup``: PSS (shared pages split among the
  processes sharing them) and USS (pages only it has), mean and median over all replicas;
- every service answered once;
- the daemon SIGKILLed (its replicas die with it) and started again: seconds until all N are
  Healthy and answer again;
- the idle daemon's CPU (10 s with no request);
- the router's CPU per request (the daemon's CPU seconds over a 5 s ``wrk -t1 -c8`` run,
  divided by the requests wrk counted) scoring the first service with all N deployed, against
  the same in a second cluster (its own workspace and daemon) with that one service alone,
  started once the N are up: ``--rounds`` alternated rounds each, medians and their ratio (the
  daemon's background work for N services, probes and reconcile passes, counts against it).

    .venv/bin/python bench/many_services.py [--counts 10 100] [--replica-start fork|exec] [--rounds 3]

``--replica-start`` is the cluster's setting of that name (``MODELFLEET_FORK_SERVER`` 1 or 0 for
the daemon): ``fork``, the default, forks replicas from a server per interpreter that imported
the replica runtime once (``targets/forkserver.py``); ``exec`` starts each as a new interpreter.
Run it both ways to compare.

Prints figures measured in one run; no pass/fail (the machine is shared). The script's ``init()``
loads nothing, so a replica's PSS here is its cost before a user's model.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from _common import cpu_seconds, wrk_post_lua, wrk_rps_p50
from modelfleet import AksWebservice, Environment, InferenceConfig, Model, Webservice, Workspace

SUM = Path(__file__).resolve().parent.parent / "tests" / "e2e_scripts" / "sum"
BODY = '{"data": [[1, 2, 3]]}'


def _memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, USS) of one process in KiB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0])
    return fields["Pss"], fields["Private_Clean"] + fields["Private_Dirty"]


def _cli(ws: Workspace, *args: str, runs: int = 5) -> float:
    """The median of ``runs`` warm runs of the CLI (after one more), as a user's installed
    package runs: with its bytecode cached (PYTHONDONTWRITEBYTECODE, set in some shells and
    CI, would compile every module changed since the last cache write on each run)."""
    argv = [sys.executable, "-m", "modelfleet", "-w", str(ws.path), *args]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(argv, check=True, capture_output=True, env=env)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _all_answer(ws: Workspace, names: list[str]) -> int:
    ok = 0
    with requests.Session() as s:
        for name in names:
            service = Webservice(ws, name)
            headers = {"Authorization": f"Bearer {service.get_keys()[0]}", "Content-Type": "application/json"}
            ok += s.post(service.scoring_uri, data=BODY, headers=headers, timeout=30).status_code == 200
    return ok


def _until_all_answer(ws: Workspace, names: list[str], deadline: float) -> int:
    ok = 0
    with requests.Session() as s:
        for name in names:
            service = Webservice(ws, name)
            headers = {"Authorization": f"Bearer {service.get_keys()[0]}", "Content-Type": "application/json"}
            while time.perf_counter() < deadline:
                try:
                    if s.post(service.scoring_uri, data=BODY, headers=headers, timeout=30).status_code == 200:
                        ok += 1
                        break
                except requests.ConnectionError:
                    pass  # the router is not listening yet
                time.sleep(0.1)
    return ok


def _router_cost(ws: Workspace, name: str, folder: Path, seconds: int = 5) -> tuple[float, float]:
    """(requests/s, daemon CPU µs per request) of a wrk run scoring ``name``."""
    service = Webservice(ws, name)
    script = folder / "score.lua"
    script.write_text(wrk_post_lua(BODY, {"Authorization": f"Bearer {service.get_keys()[0]}"}))
    info = ws.cluster().info()
    assert info is not None
    daemon = int(info["pid"])
    before = cpu_seconds([daemon])
    rps, _, count = wrk_rps_p50(service.scoring_uri, 8, seconds, script)
    return rps, (cpu_seconds([daemon]) - before) / count * 1e6


def _configs() -> tuple[InferenceConfig, Any]:
    """The trivial ``sum`` service's inference and deployment settings: one replica, sized so
    that a thousand fit the room check."""
    ic = InferenceConfig(entry_script="score.py", source_directory=SUM, environment=Environment("bench"))
    return ic, AksWebservice.deploy_configuration(num_replicas=1, cpu_cores=0.001, memory_gb=0.02)


def _router_ratio(ws: Workspace, name: str, top: Path, n: int, rounds: int) -> str:
    """The first service's router cost with all ``n`` deployed against one alone in a second
    cluster, alternated rounds (medians)."""
    solo = Workspace.create(f"solo{n}", top / f"solo{n}")
    ic, dc = _configs()
    try:
        Model.deploy(solo, name, [], ic, dc).wait_for_deployment(timeout_sec=120)
        _router_cost(solo, name, top, seconds=2)  # warm-up, as the crowded one had its answers
        crowded: list[tuple[float, float]] = []
        alone: list[tuple[float, float]] = []
        for k in range(rounds):
            for which in ("crowded", "alone") if k % 2 == 0 else ("alone", "crowded"):
                if which == "crowded":
                    crowded.append(_router_cost(ws, name, top))
                else:
                    alone.append(_router_cost(solo, name, top))
    finally:
        solo.cluster().stop(timeout=120)
    c_us, a_us = statistics.median(c for _, c in crowded), statistics.median(c for _, c in alone)
    c_rps, a_rps = statistics.median(r for r, _ in crowded), statistics.median(r for r, _ in alone)
    rounds_seen = ", ".join(f"{c:.0f}/{a:.0f}" for (_, c), (_, a) in zip(crowded, alone, strict=True))
    return (
        f"router CPU per request {c_us:.0f} µs ({c_rps:.0f} req/s) against {a_us:.0f} µs ({a_rps:.0f} req/s) "
        f"with one service in a cluster of its own: ratio {c_us / a_us:.2f} (medians of {rounds} alternated "
        f"rounds; µs with {n} / alone: {rounds_seen})"
    )


def one(top: Path, n: int, rounds: int) -> None:
    ws = Workspace.create(f"svc{n}", top / f"ws{n}")
    ic, dc = _configs()
    names = [f"s{i:04d}" for i in range(n)]
    try:
        took: list[float] = []
        for name in names:
            started = time.perf_counter()
            Model.deploy(ws, name, [], ic, dc).wait_for_deployment(timeout_sec=120)
            took.append(time.perf_counter() - started)
        tail = took[-20:]
        listing, status = _cli(ws, "service", "list"), _cli(ws, "cluster", "status")
        pids = [r["pid"] for s in ws.cluster().status()["services"].values() for r in s["replicas"] if r["pid"]]
        pss, uss = zip(*(_memory_kib(p) for p in pids), strict=True)
        print(
            f"{n:>5} services: deploy of the last {took[-1]:.2f} s (the last {len(tail)}: median "
            f"{statistics.median(tail):.2f} s, max {max(tail):.2f} s), service list {listing:.2f} s, cluster status "
            f"{status:.2f} s",
            flush=True,
        )
        print(
            f"{n:>5} services: per replica PSS mean {statistics.mean(pss) / 1024:.1f} MiB, median "
            f"{statistics.median(pss) / 1024:.1f} MiB; USS mean {statistics.mean(uss) / 1024:.1f} MiB "
            f"({len(pids)} replicas, {sum(pss) / 1024**2:.2f} GiB PSS in all)",
            flush=True,
        )
        print(f"{n:>5} services: {_all_answer(ws, names)}/{n} answered", flush=True)
        info = ws.cluster().info()
        assert info is not None
        before = cpu_seconds([int(info["pid"])])
        time.sleep(10)
        idle = (cpu_seconds([int(info["pid"])]) - before) / 10
        print(f"{n:>5} services: the idle daemon uses {idle:.1%} of a core", flush=True)
        print(f"{n:>5} services: {_router_ratio(ws, names[0], top, n, rounds)}", flush=True)
        info = ws.cluster().info()
        assert info is not None
        os.kill(int(info["pid"]), signal.SIGKILL)
        started = time.perf_counter()
        ws.cluster().ensure_running()
        back = _until_all_answer(ws, names, started + 600)  # a stored Healthy may be stale: ask each
        print(f"{n:>5} services: after SIGKILL of the daemon, {back}/{n} answering again in "
              f"{time.perf_counter() - started:.1f} s")  # fmt: skip
    finally:
        ws.cluster().stop(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--replica-start", choices=("fork", "exec"), default="fork", help="how replicas start")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds of the router's cost")
    parser.add_argument("--fork-server", action="store_true", help=argparse.SUPPRESS)  # the old name of fork
    args = parser.parse_args()
    fork = args.replica_start == "fork" or args.fork_server
    os.environ["MODELFLEET_FORK_SERVER"] = "1" if fork else "0"  # the daemon inherits it
    print(f"replicas start: {'fork' if fork else 'exec'}")
    top = Path(tempfile.mkdtemp(prefix="mf-bench-services-"))
    try:
        for n in args.counts:
            one(top, n, args.rounds)
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
