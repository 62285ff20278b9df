"""modelfleet against its peers, one trivial model, one run (the project's reference benchmark).

    bash bench/setup_peers.sh        # once: wrk, nginx, and the peers' own venvs in bench/.venvs/
    python bench/peers.py [--seconds 5] [--connections 1,16,64] [--only serve,router,...]

Systems, all serving the same model (body ``{"data": [[1,...,10]]}``, answer ``[55]``):

- ``serve``: ``modelfleet serve`` (one replica, no router);
- ``router``: the same score.py deployed to the local cluster with one replica and key auth
  on, called through the router, with v1's default replica_max_concurrent_requests (1):
  the router queues and hands the replica one request at a time. ``--router-limits 1,64``
  (the default) also runs ``router-64``, the same deployment allowing 64 at once, which
  forwards every connection's request at once as nginx does: the like-for-like row for
  the CPU cost of the hop;
- ``azmlinfsrv``: the v1 reference server (azureml-inference-server-http) with the same
  score.py;
- ``litserve`` and ``ray``: LitServe and Ray Serve with one replica (bench/peer_apps/);
- ``nginx``: Debian's nginx proxying (keep-alive upstream) to ``serve``: what one proxy hop
  costs in C;
- ``haproxy``: Debian's HAProxy in front of ``serve`` with ``maxconn 1`` on the server line
  and ``timeout queue 500ms`` (issue 16's setting): HAProxy queues and hands the replica one
  request at a time, like the router at limit 1 (with no key auth). Skipped with a message
  where haproxy is not installed.

Placement: every process of the system under test on CPU 1 (``taskset -c 1``, its
children inherit it; the cluster daemon is started from a process pinned to CPU 1), ``wrk``
(one thread) on CPU 0. All systems but Ray are started together and idle while another is
measured; after a 1 s warm-up each, every system is driven at each connection count for
``--seconds``, in ``--rounds`` interleaved rounds, and the best round is reported (the
machine is shared: see ``measure_rounds``). Ray Serve runs alone afterwards, one round.
CPU time per request comes from /proc/<pid>/stat (utime + stime) over the same interval as
wrk's run: for the router, the daemon process that runs it; for nginx and HAProxy, their
single process (master_process off; one HAProxy thread); for the others, the whole process
tree. "all µs/req" is the whole system under test (proxy and replica together).

Cold start: process start to the first 200 answer to the scoring request, best of five,
for ``modelfleet serve`` and ``azmlinfsrv``.

Only 127.0.0.1 is used. Everything started here is stopped by its pid (process trees walked
through /proc), also on Ctrl-C; every step has a deadline. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    cpu_model,
    cpu_seconds,
    free_port,
    kill_pids,
    proc_stat,
    wait_gone,
    wrk_argv,
    wrk_latency_ms,
    wrk_post_lua,
)

HERE = Path(__file__).resolve().parent
APPS = HERE / "peer_apps"
VENVS = HERE / ".venvs"
BODY = '{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
ANSWER = [55]
SYSTEMS = ("serve", "router", "azmlinfsrv", "litserve", "ray", "nginx", "haproxy")
SUT_CPU = "1"
LOAD_CPU = "0"


# -- processes ---------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Every descendant of ``pid`` now (from /proc), deepest last."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(proc_stat(int(entry))[1])
        except OSError:
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def stop_tree(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM the process and, after ``grace`` seconds, SIGKILL it and every descendant."""
    pids = [proc.pid, *children_of(proc.pid)]
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    pids += children_of(proc.pid) if proc.poll() is None else []
    kill_pids(pids)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    wait_gone(pids, 5)


def start(
    argv: list[str], log: Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[Any]:
    with open(log, "ab") as f:
        return subprocess.Popen(
            ["taskset", "-c", SUT_CPU, *argv],
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # a Ctrl-C in the terminal reaches only us; we stop it
        )


def post(url: str, headers: dict[str, str], timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=BODY.encode(), headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def wait_answer(url: str, headers: dict[str, str], proc: subprocess.Popen[Any] | None, timeout: float) -> float:
    """Poll until the scoring request answers 200 with [55]; returns when (monotonic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before answering")
        status, body = post(url, headers, timeout=2)
        if status == 200:
            got = json.loads(body)
            if got != ANSWER:
                raise RuntimeError(f"answered {got!r}, expected {ANSWER!r}")
            return time.monotonic()
        time.sleep(0.005)
    raise TimeoutError(f"no 200 from {url} within {timeout:.0f} s")


# -- the systems -------------------------------------------------------------------------


@dataclass
class Running:
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    cpu_pids: Callable[[], list[int]] = list  # whose CPU time counts per request ("CPU µs/req")
    cpu_label: str = "tree"
    sut_pids: Callable[[], list[int]] | None = None  # the whole system under test, when more than that


def score_dir(tmp: Path) -> Path:
    d = tmp / "app"
    if not d.exists():
        d.mkdir()
        shutil.copy(APPS / "score.py", d / "score.py")
    return d


def start_serve(tmp: Path, port: int) -> subprocess.Popen[Any]:
    return start(
        [sys.executable, "-m", "modelfleet", "serve", "--entry_script", "score.py", "--port", str(port)],
        tmp / "serve.log",
        cwd=score_dir(tmp),
    )


def start_azmlinfsrv(tmp: Path, port: int) -> subprocess.Popen[Any]:
    exe = VENVS / "azmlinfsrv" / "bin" / "azmlinfsrv"
    if not exe.exists():
        raise FileNotFoundError(f"{exe} missing: run bash bench/setup_peers.sh azmlinfsrv")
    return start([str(exe), "--entry_script", "score.py", "--port", str(port)], tmp / "azmlinfsrv.log", score_dir(tmp))


def tree(proc: subprocess.Popen[Any]) -> Callable[[], list[int]]:
    return lambda: [proc.pid, *children_of(proc.pid)]


@contextlib.contextmanager
def run_process_system(
    tmp: Path, name: str, starter: Callable[[Path, int], subprocess.Popen[Any]], path: str, timeout: float = 60
) -> Iterator[Running]:
    port = free_port()
    proc = starter(tmp, port)
    try:
        url = f"http://127.0.0.1:{port}{path}"
        wait_answer(url, {}, proc, timeout)
        yield Running(url, cpu_pids=tree(proc))
    finally:
        stop_tree(proc)


@contextlib.contextmanager
def system_serve(tmp: Path, args: argparse.Namespace) -> Iterator[Running]:
    with run_process_system(tmp, "serve", start_serve, "/score") as r:
        yield r


@contextlib.contextmanager
def system_azmlinfsrv(tmp: Path, args: argparse.Namespace) -> Iterator[Running]:
    with run_process_system(tmp, "azmlinfsrv", start_azmlinfsrv, "/score") as r:
        yield r


@contextlib.contextmanager
def system_litserve(tmp: Path, args: argparse.Namespace) -> Iterator[Running]:
    py = VENVS / "litserve" / "bin" / "python"
    if not py.exists():
        raise FileNotFoundError(f"{py} missing: run bash bench/setup_peers.sh litserve")

    def starter(t: Path, port: int) -> subprocess.Popen[Any]:
        return start([str(py), str(APPS / "litserve_app.py"), str(port)], t / "litserve.log", cwd=t)

    with run_process_system(tmp, "litserve", starter, "/predict", timeout=90) as r:
        yield r


@contextlib.contextmanager
def system_ray(tmp: Path, args: argparse.Namespace) -> Iterator[Running]:
    py = VENVS / "ray" / "bin" / "python"
    if not py.exists():
        raise FileNotFoundError(f"{py} missing: run bash bench/setup_peers.sh ray")

    def starter(t: Path, port: int) -> subprocess.Popen[Any]:
        # Ray keeps its session files under a short temp dir of its own; nothing outside tmp.
        env = {"RAY_TMPDIR": str(t / "ray"), "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
        (t / "ray").mkdir(exist_ok=True)
        return start([str(py), str(APPS / "ray_app.py"), str(port)], t / "ray.log", cwd=t, env=env)

    try:
        with run_process_system(tmp, "ray", starter, "/", timeout=180) as r:
            yield r
    except (RuntimeError, TimeoutError) as exc:
        log = (tmp / "ray.log").read_text(errors="replace").strip().splitlines()
        raise RuntimeError(f"{exc}; last lines of its log:\n    " + "\n    ".join(log[-8:])) from exc


@contextlib.contextmanager
def system_nginx(tmp: Path, args: argparse.Namespace) -> Iterator[Running]:
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(exe):
        raise FileNotFoundError("nginx missing: run bash bench/setup_peers.sh")
    with run_process_system(tmp, "serve", start_serve, "/score") as upstream:
        port = free_port()
        up_port = upstream.url.split(":")[2].split("/")[0]
        root = tmp / "nginx"
        root.mkdir(exist_ok=True)
        temps = "".join(
            f"    {k}_temp_path {root}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (root / "nginx.conf").write_text(
            f"""worker_processes 1;
master_process off;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temps}    upstream serve {{ server 127.0.0.1:{up_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://serve;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
        )
        proc = start(
            [exe, "-p", str(root), "-c", str(root / "nginx.conf"), "-e", str(root / "error.log")], root / "out.log"
        )
        try:
            url = f"http://127.0.0.1:{port}/score"
            wait_answer(url, {}, proc, 20)
            yield Running(
                url,
                cpu_pids=lambda: [proc.pid],
                cpu_label="nginx",
                sut_pids=lambda: [proc.pid, *upstream.cpu_pids()],
            )
        finally:
            stop_tree(proc)


@contextlib.contextmanager
def system_haproxy(tmp: Path, args: argparse.Namespace) -> Iterator[Running]:
    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.path.exists(exe):
        raise FileNotFoundError("haproxy missing: run bash bench/setup_peers.sh (Debian's haproxy)")
    with run_process_system(tmp, "serve", start_serve, "/score") as upstream:
        port = free_port()
        up_port = upstream.url.split(":")[2].split("/")[0]
        root = tmp / "haproxy"
        root.mkdir(exist_ok=True)
        # One thread, one process (no master: -db keeps it in the foreground); the server
        # line's maxconn 1 makes HAProxy queue and send one request at a time, as the router
        # does at v1's default limit; http-reuse always keeps the replica's connection.
        (root / "haproxy.cfg").write_text(
            f"""global
    nbthread 1
    maxconn 4096
    pidfile {root}/haproxy.pid

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout queue 500ms

frontend fe
    bind 127.0.0.1:{port}
    default_backend replica

backend replica
    server serve 127.0.0.1:{up_port} maxconn 1
"""
        )
        proc = start([exe, "-db", "-f", str(root / "haproxy.cfg")], root / "out.log")
        try:
            url = f"http://127.0.0.1:{port}/score"
            wait_answer(url, {}, proc, 20)
            yield Running(
                url,
                cpu_pids=lambda: [proc.pid],
                cpu_label="haproxy",
                sut_pids=lambda: [proc.pid, *upstream.cpu_pids()],
            )
        finally:
            stop_tree(proc)


@contextlib.contextmanager
def system_router(tmp: Path, args: argparse.Namespace) -> Iterator[Running]:
    sys.path.insert(0, str(HERE.parent / "src"))
    from modelfleet import AksWebservice, Environment, InferenceConfig, Model, Workspace

    tmp.mkdir(exist_ok=True)
    ws = Workspace.create("bench", tmp / "ws")
    everything = set(range(os.cpu_count() or 1))
    os.sched_setaffinity(0, {int(SUT_CPU)})  # the daemon started on demand inherits CPU 1
    pids: list[int] = []
    try:
        ic = InferenceConfig(entry_script="score.py", source_directory=score_dir(tmp), environment=Environment("bench"))
        dc = AksWebservice.deploy_configuration(
            num_replicas=1, auth_enabled=True, replica_max_concurrent_requests=args.router_limit
        )
        print(f"bench: router with replica_max_concurrent_requests={args.router_limit}", file=sys.stderr)
        service = Model.deploy(ws, "bench", [], ic, dc)
        os.sched_setaffinity(0, everything)
        service.wait_for_deployment(timeout_sec=120)
        info = ws.cluster().info()
        assert info is not None
        daemon = int(info["pid"])
        pids = [daemon, *children_of(daemon)]
        headers = {"Authorization": f"Bearer {service.get_keys()[0]}"}
        url = service.scoring_uri or ""
        wait_answer(url, headers, None, 30)
        yield Running(
            url, headers, cpu_pids=lambda: [daemon], cpu_label="router", sut_pids=lambda: [daemon, *children_of(daemon)]
        )
    finally:
        os.sched_setaffinity(0, everything)
        with contextlib.suppress(Exception):
            info = ws.cluster().info()
            if info is not None:
                pids = list({*pids, int(info["pid"]), *children_of(int(info["pid"]))})
            ws.cluster().stop()
        wait_gone(pids, 30)
        kill_pids(pids)


STARTERS = {
    "serve": system_serve,
    "router": system_router,
    "azmlinfsrv": system_azmlinfsrv,
    "litserve": system_litserve,
    "ray": system_ray,
    "nginx": system_nginx,
    "haproxy": system_haproxy,
}


# -- load --------------------------------------------------------------------------------


def wrk_script(tmp: Path, headers: dict[str, str]) -> Path:
    script = tmp / f"wrk-{abs(hash(tuple(headers.items())))}.lua"
    script.write_text(wrk_post_lua(BODY, headers))
    return script


def wrk(url: str, script: Path, connections: int, seconds: float) -> dict[str, Any]:
    cmd = wrk_argv(url, script, connections, round(seconds), cpu=LOAD_CPU, extra=("--timeout", "10s"))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    out = done.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "requests": int(count.group(1)) if count else 0,
        "p50_ms": wrk_latency_ms(out, "50%", missing=float("nan")),
        "p99_ms": wrk_latency_ms(out, "99%", missing=float("nan")),
        "errors": (int(non2xx.group(1)) if non2xx else 0) + (sum(int(x) for x in sock.groups()) if sock else 0),
    }


def measure_once(run: Running, script: Path, connections: int, seconds: float) -> dict[str, Any]:
    """One wrk run, with the CPU time the measured process (and the whole system) spent."""
    pids = run.cpu_pids()
    sut = run.sut_pids() if run.sut_pids is not None else pids
    cpu0, sut0 = cpu_seconds(pids, skip_gone=True), cpu_seconds(sut, skip_gone=True)
    r = wrk(run.url, script, connections, seconds)
    cpu = cpu_seconds(pids, skip_gone=True) - cpu0
    sut_cpu = cpu_seconds(sut, skip_gone=True) - sut0
    n = r["requests"]
    r["cpu_us"] = cpu / n * 1e6 if n else float("nan")
    r["sut_us"] = sut_cpu / n * 1e6 if n else float("nan")
    r["cpu_of"] = run.cpu_label
    return r


def measure_rounds(
    running: dict[str, Running], tmp: Path, connections: list[int], seconds: float, rounds: int
) -> dict[str, dict[int, dict[str, Any]]]:
    """Every system, every connection count, ``rounds`` times, interleaved; the best round
    (highest req/s, with its own latencies and CPU) is kept. Other engineers' work on this
    shared machine comes and goes: interleaving puts every system under the same spells of
    it, and the best round is the one it disturbed least."""
    scripts = {name: wrk_script(tmp, run.headers) for name, run in running.items()}
    for name, run in running.items():
        wrk(run.url, scripts[name], max(connections), 1)  # warm-up: connections, caches, lazy imports
    best: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in running}
    for k in range(rounds):
        print(f"bench: round {k + 1} of {rounds}", file=sys.stderr, flush=True)
        for name, run in running.items():
            for c in connections:
                r = measure_once(run, scripts[name], c, seconds)
                old = best[name].get(c)
                r["rps_seen"] = [*(old["rps_seen"] if old else []), r["rps"]]
                if old is None or r["rps"] > old["rps"]:
                    best[name][c] = r
                else:
                    old["rps_seen"] = r["rps_seen"]
    return best


def cold_start(tmp: Path, starter: Callable[[Path, int], subprocess.Popen[Any]], path: str, n: int = 5) -> float:
    """Seconds from process start to the first 200 of the scoring request: the best of ``n``
    (like the rounds above, the start least disturbed by other work on the machine)."""
    times = []
    for _ in range(n):
        port = free_port()
        t0 = time.monotonic()
        proc = starter(tmp, port)
        try:
            times.append(wait_answer(f"http://127.0.0.1:{port}{path}", {}, proc, 60) - t0)
        finally:
            stop_tree(proc)
    return min(times)


# -- report ------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or a != a or b != b:
        return "n/a"
    return f"{a / b:.2f}"


def report(
    results: dict[str, Any], failures: dict[str, str], colds: dict[str, float], args: argparse.Namespace
) -> None:
    conns = args.connections
    cpu = cpu_model("unknown CPU")
    print(f"\n# modelfleet vs peers, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, {cpu}")
    print(f"# system under test on CPU {SUT_CPU} (taskset), wrk -t1 on CPU {LOAD_CPU}; {args.seconds:g} s per run,")
    print(f"# best of {args.rounds} interleaved rounds (req/s of every round in the last column)")
    print(f"# load average: {results['load_before']:.2f} before, {os.getloadavg()[0]:.2f} after")
    limits = ", ".join(f"{router_name(i, n)}: {n}" for i, n in enumerate(args.router_limits))
    print(f"# router: one replica, key auth on; replica_max_concurrent_requests {limits}")
    print(
        f"{'system':11} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'CPU µs/req':>11} "
        f"{'of':7} {'all µs/req':>10}  req/s per round"
    )
    for name in all_names(args):
        if name in failures:
            print(f"{name:11}  could not run: {failures[name]}")
            continue
        for c in conns:
            r = results.get(name, {}).get(c)
            if r is None:
                continue
            print(
                f"{name:11} {c:5d} {r['rps']:9.0f} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['errors']:7d} "
                f"{r['cpu_us']:11.1f} {r['cpu_of']:7} {r['sut_us']:10.1f}  "
                f"{'/'.join(f'{x:.0f}' for x in r.get('rps_seen', []))}"
            )

    def get(name: str, c: int, key: str) -> float | None:
        r = results.get(name, {}).get(c)
        return None if r is None else r[key]

    def line(label: str, value: str, target: str = "", note: str = "") -> None:
        print(f"  {label:44}: {value:>8}" + (f"  [{target}]" if target else "") + (f" {note}" if note else ""))

    print("\nratios (targets in brackets), from req/s")
    azml_16 = get("azmlinfsrv", 16, "rps")
    line("router end to end ÷ azmlinfsrv, 16 conns", ratio(get("router", 16, "rps"), azml_16), ">= 5")
    for i, n in enumerate(args.router_limits[1:], 1):
        row = router_name(i, n)
        line(f"{row} end to end ÷ azmlinfsrv, 16 conns", ratio(get(row, 16, "rps"), azml_16))
    for c, target in ((1, 4), (16, 6)):
        value = ratio(get("serve", c, "rps"), get("azmlinfsrv", c, "rps"))
        line(f"serve ÷ azmlinfsrv, {c} conns", value, f">= {target}")
    for i, n in enumerate(args.router_limits):
        row = router_name(i, n)
        for c in conns:
            value = ratio(get(row, c, "cpu_us"), get("nginx", c, "cpu_us"))
            line(f"{row} CPU/req ÷ nginx CPU/req, {c} conns", value, "<= 1.6" if c == 16 else "")
    s1, n1 = get("serve", 1, "p50_ms"), get("nginx", 1, "p50_ms")
    for i, n in enumerate(args.router_limits):
        row = router_name(i, n)
        r1 = get(row, 1, "p50_ms")
        added = f"{r1 - s1:.3f} ms" if r1 is not None and s1 is not None else "n/a"
        line(f"p50 added by {row}, 1 conn", added, "<= 0.1 ms" if i == 0 else "")
    line("p50 added by nginx, 1 conn (reference)", f"{n1 - s1:.3f} ms" if n1 is not None and s1 is not None else "n/a")
    if "serve" in colds and "azmlinfsrv" in colds:
        note = f"({colds['serve'] * 1000:.0f} ms vs {colds['azmlinfsrv'] * 1000:.0f} ms, best of 5)"
        line("cold start, serve ÷ azmlinfsrv", ratio(colds["serve"], colds["azmlinfsrv"]), "<= 0.5", note)
    hap = "haproxy"
    for c in conns:
        if get(hap, c, "rps") is None:
            continue
        value = ratio(get("router", c, "rps"), get(hap, c, "rps"))
        line(f"router ÷ HAProxy maxconn 1, req/s, {c} conns", value, ">= 1")
        value = ratio(get("router", c, "cpu_us"), get(hap, c, "cpu_us"))
        line(f"router CPU/req ÷ HAProxy's, {c} conns", value, "<= 1")
        value = ratio(get("router", c, "sut_us"), get(hap, c, "sut_us"))
        line(f"router CPU/req ÷ HAProxy's, all, {c} conns", value, "<= 1")
    print("\nthe same ratios from CPU time per request of the whole system (1 ÷ all µs/req: less moved by other load)")
    azml_cap = get("azmlinfsrv", 16, "sut_us")
    for i, n in enumerate(args.router_limits):
        row = router_name(i, n)
        value = ratio(azml_cap, get(row, 16, "sut_us"))
        line(f"{row} end to end ÷ azmlinfsrv, 16 conns", value, ">= 5" if i == 0 else "")
    for c, target in ((1, 4), (16, 6)):
        value = ratio(get("azmlinfsrv", c, "sut_us"), get("serve", c, "sut_us"))
        line(f"serve ÷ azmlinfsrv, {c} conns", value, f">= {target}")


def router_name(index: int, limit: int) -> str:
    return "router" if index == 0 else f"router-{limit}"


def all_names(args: argparse.Namespace) -> list[str]:
    names: list[str] = []
    for s in SYSTEMS:
        names += [router_name(i, n) for i, n in enumerate(args.router_limits)] if s == "router" else [s]
    return names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of them is kept")
    ap.add_argument("--connections", default="1,16,64")
    ap.add_argument("--only", default=",".join(SYSTEMS), help="comma-separated subset of " + ",".join(SYSTEMS))
    ap.add_argument(
        "--router-limits",
        default="1,64",
        help="replica_max_concurrent_requests for each router run; the first is the 'router' row",
    )
    ap.add_argument("--no-cold-start", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    args.connections = [int(x) for x in args.connections.split(",")]
    args.router_limits = [int(x) for x in args.router_limits.split(",")]
    only = [s for s in args.only.split(",") if s]
    unknown = set(only) - set(SYSTEMS)
    if unknown:
        ap.error(f"--only: unknown system(s) {sorted(unknown)}; choose from {','.join(SYSTEMS)}")
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is needed; run bash bench/setup_peers.sh", file=sys.stderr)
            return 2
    if (os.cpu_count() or 1) < 2:
        print("bench: needs two CPUs (system under test on CPU 1, wrk on CPU 0)", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="mf-peers-"))
    results: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    failures: dict[str, str] = {}
    colds: dict[str, float] = {}
    try:
        runs: list[tuple[str, str, argparse.Namespace]] = []
        for system in [s for s in SYSTEMS if s in only]:
            if system == "router":
                for i, n in enumerate(args.router_limits):
                    runs.append((router_name(i, n), system, argparse.Namespace(**{**vars(args), "router_limit": n})))
            else:
                runs.append((system, system, args))
        with contextlib.ExitStack() as stack:
            running: dict[str, Running] = {}
            for name, system, run_args in runs:
                if system == "ray":
                    continue  # alone, below: its own background processes would disturb the others
                print(f"bench: starting {name}", file=sys.stderr, flush=True)
                try:
                    where = tmp / name if system == "router" else tmp
                    running[name] = stack.enter_context(STARTERS[system](where, run_args))
                except Exception as exc:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
                    failures[name] = f"{type(exc).__name__}: {exc}"
            results.update(measure_rounds(running, tmp, args.connections, args.seconds, args.rounds))
        if "ray" in only:
            print("bench: starting ray (alone)", file=sys.stderr, flush=True)
            try:
                with system_ray(tmp, args) as run:
                    results.update(measure_rounds({"ray": run}, tmp, args.connections, args.seconds, 1))
            except Exception as exc:  # noqa: BLE001
                failures["ray"] = f"{type(exc).__name__}: {exc}"
        if not args.no_cold_start:
            for name, starter in (("serve", start_serve), ("azmlinfsrv", start_azmlinfsrv)):
                if name in only and name not in failures:
                    colds[name] = cold_start(tmp, starter, "/score")
    finally:
        if os.environ.get("BENCH_KEEP_TMP"):
            print(f"bench: logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report(results, failures, colds, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        data = {k: {str(c): r for c, r in v.items()} if isinstance(v, dict) else v for k, v in results.items()}
        args.json.write_text(json.dumps({"results": data, "failures": failures, "cold_start_s": colds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
