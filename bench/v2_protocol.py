"""The Open Inference Protocol (V2) against v1 JSON through the router, and against V2 peers,
on one trivial model, in one run.

    python bench/v2_protocol.py [--seconds 5] [--connections 16] [--rounds 2] [--no-peers]
    bash bench/setup_peers.sh mlserver kserve pytriton      # once, for the peers' rows

The model sums each row of a [1, 10] FP64 tensor (``bench/peer_apps/v2/``). modelfleet serves
it from one v1 entry script with inference-schema decorators
(``peer_apps/v2/modelfleet_sum/score.py``), deployed to a local cluster with one replica, key
auth on and v1's default replica_max_concurrent_requests (1), and called through the router:

- ``v1 json``: ``POST /api/v1/service/sum/score`` with ``{"data": [[1, ..., 10]]}``;
- ``v2 rest json``: ``POST /v2/models/sum/infer`` with the tensor as JSON;
- ``v2 rest binary``: the same with the tensor as raw bytes (the binary tensor data extension,
  ``Inference-Header-Content-Length``), as tritonclient sends by default;
- ``v2 grpc``: ``ModelInfer`` on the router's gRPC port, raw tensor contents.

Peers, each with the same model and one worker, called with the same V2 REST JSON body:
MLServer (Seldon), KServe's Python model server and PyTriton (Triton's server), each where its
venv exists (``bench/.venvs/``) and it starts here; a row says why when not.

Placement: every process of the system under test on CPU 1 (affinity inherited by its
children); the load generator on CPU 0: ``wrk`` (one thread) for HTTP, a Python ``grpc.aio``
client for gRPC (no C gRPC load generator is packaged here, so gRPC's requests/s are the
client's limit before the router's: compare its CPU per request, not its rate). CPU per request
is the utime + stime of the whole system under test (router daemon and replica, or the peer's
process tree) over the run, from /proc, divided by the requests answered. Each row is run
``--rounds`` times, interleaved, and the best round is kept. Only 127.0.0.1 is used; everything
started here is stopped by its pid. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _common import cpu_seconds, free_port, kill_pids, loadavg, machine, wrk_argv, wrk_latency_ms

HERE = Path(__file__).resolve().parent
APPS = HERE / "peer_apps" / "v2"
VENVS = HERE / ".venvs"
SUT_CPU = 1
ROW = [float(i) for i in range(1, 11)]
V1_BODY = json.dumps({"data": [ROW]})
V2_JSON = json.dumps({"inputs": [{"name": "data", "shape": [1, 10], "datatype": "FP64", "data": ROW}]})


def v2_binary() -> tuple[bytes, int]:
    head = json.dumps(
        {
            "inputs": [{"name": "data", "shape": [1, 10], "datatype": "FP64", "parameters": {"binary_data_size": 80}}],
            "outputs": [{"name": "output_0", "parameters": {"binary_data": True}}],
        },
        separators=(",", ":"),
    ).encode()
    return head + struct.pack("<10d", *ROW), len(head)


def lua_script(body: bytes, headers: dict[str, str]) -> str:
    """wrk's request: ``body`` written with Lua's decimal escapes, so raw bytes travel as they are."""
    escaped = "".join(f"\\{b}" for b in body)
    lines = ['wrk.method = "POST"', f'wrk.body = "{escaped}"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Result:
    rps: float
    p50_ms: float
    cpu_us: float  # CPU of the system under test per request


def run_wrk(url: str, script: Path, connections: int, seconds: int, pids: Callable[[], list[int]]) -> Result:
    before = cpu_seconds(pids(), skip_gone=True)
    out = subprocess.run(wrk_argv(url, script, connections, seconds), capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pids(), skip_gone=True) - before
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    if "Non-2xx" in out or "Socket errors" in out:
        print("  wrk reported errors:\n" + out, file=sys.stderr)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return Result(rps, wrk_latency_ms(out, "50%"), cpu / max(count, 1) * 1e6)


GRPC_CLIENT = r"""
import asyncio, json, os, struct, sys, time
import grpc
sys.path.insert(0, sys.argv[1])
from modelfleet.oip.grpc_messages import messages
os.sched_setaffinity(0, {0})
address, key, connections, seconds = sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
m = messages()
request = m["ModelInferRequest"](model_name="sum", raw_input_contents=[struct.pack("<10d", *range(1, 11))])
request.inputs.add(name="data", datatype="FP64", shape=[1, 10])
async def main():
    channel = grpc.aio.insecure_channel(address)
    call = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=m["ModelInferRequest"].SerializeToString,
        response_deserializer=m["ModelInferResponse"].FromString,
    )
    meta = [("authorization", "Bearer " + key)]
    done, failed, latencies = 0, 0, []
    end = time.monotonic() + seconds
    async def worker():
        nonlocal done, failed
        while time.monotonic() < end:
            t0 = time.monotonic()
            try:
                await call(request, metadata=meta, timeout=10)
                done += 1
                latencies.append(time.monotonic() - t0)
            except grpc.aio.AioRpcError:
                failed += 1
    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.monotonic() - t0
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    print(json.dumps({"count": done, "failed": failed, "rps": done / elapsed, "p50_ms": p50}))
    await channel.close()
asyncio.run(main())
"""


def run_grpc(address: str, key: str, connections: int, seconds: int, pids: Callable[[], list[int]]) -> Result:
    before = cpu_seconds(pids(), skip_gone=True)
    argv = [sys.executable, "-c", GRPC_CLIENT, str(HERE.parent / "src"), address, key, str(connections), str(seconds)]
    out = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout)
    cpu = cpu_seconds(pids(), skip_gone=True) - before
    if out["failed"]:
        print(f"  grpc client: {out['failed']} calls failed", file=sys.stderr)
    return Result(out["rps"], out["p50_ms"], cpu / max(out["count"], 1) * 1e6)


def tree(pid: int) -> list[int]:
    """``pid`` and every descendant, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def wait_http(url: str, timeout: float, ok: Callable[[int], bool] = lambda s: s == 200) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if ok(r.status):
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False


def on_sut_cpu() -> None:
    os.sched_setaffinity(0, {SUT_CPU})


# -- the systems ------------------------------------------------------------------------------


@dataclass
class System:
    name: str
    url: str  # the V2 infer URL (or /score for v1)
    pids: Callable[[], list[int]]
    headers: dict[str, str]
    stop: Callable[[], None]


def start_modelfleet(tmp: Path) -> tuple[System, str, str, Callable[[], list[int]]]:
    """A local cluster on CPU 1 with the model deployed; (system, router base, key, pids)."""
    sys.path.insert(0, str(HERE.parent / "src"))
    from modelfleet import AksWebservice, Environment, InferenceConfig, Model, Workspace

    ws_path = tmp / "ws"
    ws = Workspace.create("v2bench", ws_path)
    runtime = ws_path / ".modelfleet" / "runtime"
    runtime.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "modelfleet.control.daemon", "--detach", "--workspace", str(ws_path)]
    subprocess.run(argv + ["--log-file", str(runtime / "daemon.log")], check=True, timeout=60, preexec_fn=on_sut_cpu)
    ic = InferenceConfig(
        entry_script="score.py", source_directory=APPS / "modelfleet_sum", environment=Environment("b")
    )
    dc = AksWebservice.deploy_configuration(num_replicas=1, autoscale_enabled=False, cpu_cores=0.1, memory_gb=0.2)
    service = Model.deploy(ws, "sum", [], ic, dc)
    service.wait_for_deployment(timeout_sec=120)
    info = ws.cluster().info()
    daemon = int(info["pid"])
    key = service.get_keys()[0]
    base = service.scoring_uri.split("/api/")[0]

    def stop() -> None:
        ws.cluster().stop()

    def pids() -> list[int]:
        return tree(daemon)

    system = System("modelfleet", f"{base}/v2/models/sum/infer", pids, {"Authorization": f"Bearer {key}"}, stop)
    return system, base, key, pids


def start_peer(name: str, tmp: Path) -> System | str:
    """A V2 peer on CPU 1 serving the model, or why it could not be."""
    python = VENVS / name / "bin" / "python"
    if not python.exists():
        return f"not installed (bash bench/setup_peers.sh {name})"
    port = free_port()
    if name == "mlserver":
        folder = tmp / "mlserver"
        (folder / "sum").mkdir(parents=True)
        (folder / "settings.json").write_text(
            json.dumps(
                {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port(), "parallel_workers": 0}
            )
        )
        (folder / "sum" / "model-settings.json").write_text(
            json.dumps({"name": "sum", "implementation": "mlserver_sum.SumModel"})
        )
        argv = [str(VENVS / name / "bin" / "mlserver"), "start", str(folder)]
        model = "sum"
    elif name == "kserve":
        argv = [str(python), str(APPS / "kserve_sum.py"), str(port)]
        model = "sum"
    else:
        argv = [str(python), str(APPS / "pytriton_sum.py"), str(port), str(free_port()), str(free_port())]
        model = "sum"
    log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
    env = {**os.environ, "PYTHONPATH": str(APPS)}
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=on_sut_cpu)

    def stop() -> None:
        kill_pids(tree(proc.pid))
        log.close()

    ready = f"http://127.0.0.1:{port}/v2/models/{model}/ready"
    if not wait_http(ready, 120) or proc.poll() is not None:
        stop()
        tail = (tmp / f"{name}.log").read_text(errors="replace").strip().splitlines()[-3:]
        return "did not start here: " + " | ".join(line[:200] for line in tail)
    return System(name, f"http://127.0.0.1:{port}/v2/models/{model}/infer", lambda: tree(proc.pid), {}, stop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-peers", action="store_true")
    args = parser.parse_args()
    print(f"bench/v2_protocol.py, {datetime.date.today()}, {machine()}")
    print(f"load average before: {loadavg()}; SUT on CPU {SUT_CPU}, load generator on CPU 0")
    with tempfile.TemporaryDirectory(prefix="mf-v2bench-") as tmp_name:
        tmp = Path(tmp_name)
        mf, base, key, mf_pids = start_modelfleet(tmp)
        peers: list[System] = []
        skipped: dict[str, str] = {}
        try:
            if not args.no_peers:
                for name in ("mlserver", "kserve", "pytriton"):
                    started = start_peer(name, tmp)
                    if isinstance(started, str):
                        skipped[name] = started
                    else:
                        peers.append(started)
            auth = {"Authorization": f"Bearer {key}"}
            binary, header_length = v2_binary()
            scripts = {
                "v1 json": (
                    f"{base}/api/v1/service/sum/score",
                    V1_BODY.encode(),
                    {"Content-Type": "application/json", **auth},
                ),
                "v2 rest json": (mf.url, V2_JSON.encode(), {"Content-Type": "application/json", **auth}),
                "v2 rest binary": (
                    mf.url,
                    binary,
                    {
                        "Content-Type": "application/octet-stream",
                        "Inference-Header-Content-Length": str(header_length),
                        **auth,
                    },
                ),
            }
            for peer in peers:
                scripts[peer.name] = (peer.url, V2_JSON.encode(), {"Content-Type": "application/json"})
            paths: dict[str, Path] = {}
            for row, (_, body, headers) in scripts.items():
                paths[row] = tmp / f"{row.replace(' ', '_')}.lua"
                paths[row].write_text(lua_script(body, headers))
            pids_of = {row: mf_pids for row in ("v1 json", "v2 rest json", "v2 rest binary", "v2 grpc")}
            pids_of.update({p.name: p.pids for p in peers})
            grpc_address = mf.url.split("//")[1].split("/")[0].rsplit(":", 1)[0] + ":" + str(_grpc_port(tmp))
            best: dict[str, Result] = {}
            for _ in range(args.rounds):
                for row in [*scripts, "v2 grpc"]:
                    if row == "v2 grpc":
                        result = run_grpc(grpc_address, key, args.connections, args.seconds, pids_of[row])
                    else:
                        url = scripts[row][0]
                        result = run_wrk(url, paths[row], args.connections, args.seconds, pids_of[row])
                    if row not in best or result.rps > best[row].rps:
                        best[row] = result
        finally:
            for peer in peers:
                peer.stop()
            mf.stop()
    reference = best["v1 json"]
    print(f"\n{args.connections} connections, {args.seconds} s, best of {args.rounds} rounds; ratios against v1 json")
    print(f"{'row':<16}{'req/s':>9}{'p50 ms':>9}{'CPU us/req':>12}{'req/s ratio':>13}{'CPU ratio':>11}")
    for row, r in best.items():
        print(
            f"{row:<16}{r.rps:>9.0f}{r.p50_ms:>9.2f}{r.cpu_us:>12.0f}"
            f"{r.rps / reference.rps:>13.2f}{r.cpu_us / reference.cpu_us:>11.2f}"
        )
    for name, why in skipped.items():
        print(f"{name:<16}skipped: {why}")
    print(f"load average after: {loadavg()}")
    return 0


def _grpc_port(tmp: Path) -> int:
    info = json.loads((tmp / "ws" / ".modelfleet" / "runtime" / "cluster.json").read_text())
    return int(info["grpc_port"])


if __name__ == "__main__":
    sys.exit(main())
