"""Issue 16: model-aware routing against plain routing, 1,000 models loaded on demand.

One local cluster, two services deployed from the same 1,000 single-file models and the same
script, each with ``--replicas`` replicas that hold at most 100 loaded models
(``model_cache_size=100``, ``replica_max_concurrent_requests=1``). The script loads a model
with ``modelfleet.replica.models.load``; loading reads the model's file and sleeps
``--load-ms`` (the cost of loading a real model, simulated). Requests name models drawn from a
Zipf distribution (``--zipf``, P(rank k) ~ 1/k^s) over the 1,000; the hottest model is a
random one, not m0.

- **affinity**: the model goes in ``x-ms-model``: the router sends it to the first replica with
  a free slot in the model's rendezvous-hash order (router/affinity.py).
- **plain**: the model goes in the body: the router picks the least loaded replica, as for any
  request.

Both get the same request sequence, from closed-loop clients (threads of this process,
keep-alive connections), in alternating rounds after a warm-up round each (the caches start
empty), so machine noise falls on both alike; once for each ``--clients`` count (with 4
replicas of one slot each, 2 clients keep half the slots busy, 4 all of them). Printed: the
replicas' cache hit rate, p50 and p99 latency and requests a second, and the ratios
affinity/plain.

    .venv/bin/python bench/model_affinity.py [--replicas 4] [--requests 3000] [--clients 2 4]

Every process shares the machine's cores (no pinning): the daemon, router, replicas and this
client. Prints figures measured in one run; no pass/fail (the machine is shared).
"""

from __future__ import annotations

import argparse
import bisect
import http.client
import json
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from modelfleet import AksWebservice, Environment, InferenceConfig, Model, Webservice, Workspace

SCRIPT = """\
import json
import time

from modelfleet.replica import models

LOAD_S = {load_s!r}


def init():
    def load(folder):
        data = next(folder.glob("*.bin")).read_bytes()
        time.sleep(LOAD_S)  # a real model takes this long to load
        return len(data)

    models.set_loader(load)


def run(raw_data, request_headers):
    name = request_headers.get("X-Ms-Model") or json.loads(raw_data)["model"]
    misses = models.info()["misses"]
    models.load(name)
    return {{"hit": models.info()["misses"] == misses}}
"""


def zipf_sequence(n_models: int, s: float, count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    names = [f"m{i}" for i in range(n_models)]
    rng.shuffle(names)  # rank 1 is a random model
    cum: list[float] = []
    total = 0.0
    for k in range(1, n_models + 1):
        total += 1.0 / k**s
        cum.append(total)
    return [names[min(bisect.bisect_left(cum, rng.random() * total), n_models - 1)] for _ in range(count)]


def run_round(service: Webservice, by_header: bool, names: list[str], clients: int) -> list[tuple[float, bool]]:
    """Send ``names`` (one request each) from ``clients`` threads; (seconds, hit) per request."""
    assert service.scoring_uri is not None
    url = urlsplit(service.scoring_uri)
    key = service.get_keys()[0]
    out: list[tuple[float, bool]] = []
    lock = threading.Lock()
    it = iter(names)

    def client() -> None:
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
        mine: list[tuple[float, bool]] = []
        while True:
            with lock:
                name = next(it, None)
            if name is None:
                break
            headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            if by_header:
                headers["x-ms-model"] = name
                body = b"{}"
            else:
                body = json.dumps({"model": name}).encode()
            started = time.perf_counter()
            conn.request("POST", url.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            took = time.perf_counter() - started
            if resp.status != 200:
                raise RuntimeError(f"{resp.status}: {data[:300]!r}")
            mine.append((took, bool(json.loads(data)["hit"])))
        conn.close()
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--cache", type=int, default=100, help="model_cache_size per replica")
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--load-ms", type=float, default=20.0)
    ap.add_argument("--requests", type=int, default=3000, help="measured requests per mode and client count")
    ap.add_argument("--warmup", type=int, default=1500, help="requests per mode before measuring")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--clients", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--seed", type=int, default=16)
    args = ap.parse_args()

    top = Path(tempfile.mkdtemp(prefix="mf-affinity-"))
    ws = Workspace.create("affinity-bench", top / "ws")
    try:
        t0 = time.perf_counter()
        files = top / "files"
        files.mkdir()
        models = []
        for i in range(args.models):
            path = files / f"m{i}.bin"
            path.write_bytes(os.urandom(1024))
            models.append(Model.register(ws, model_path=path, model_name=f"m{i}"))
        source = top / "src"
        source.mkdir()
        (source / "score.py").write_text(SCRIPT.format(load_s=args.load_ms / 1000))
        ic = InferenceConfig(entry_script="score.py", source_directory=source, environment=Environment("bench"))
        dc = AksWebservice.deploy_configuration(
            num_replicas=args.replicas,
            cpu_cores=0.05,
            memory_gb=0.1,
            model_cache_size=args.cache,
            replica_max_concurrent_requests=1,
            max_request_wait_time=30000,
            scoring_timeout_ms=60000,
        )
        services = {mode: Model.deploy(ws, f"{mode}-svc", models, ic, dc) for mode in ("affinity", "plain")}
        for s in services.values():
            s.wait_for_deployment(timeout_sec=300)
        setup = time.perf_counter() - t0

        warm = zipf_sequence(args.models, args.zipf, args.warmup, args.seed)
        for mode in services:
            run_round(services[mode], mode == "affinity", warm, max(args.clients))
        print(
            f"{args.models} models, Zipf s={args.zipf}, {args.replicas} replicas x model_cache_size={args.cache} "
            f"(one slot each), load {args.load_ms:g} ms, {args.rounds} alternating rounds after {args.warmup} "
            f"warm-up requests each; setup {setup:.1f} s; all processes share the machine's {os.cpu_count()} cores"
        )
        print(f"{'clients':>7} {'routing':<9} {'hit rate':>9} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
        ratios = []
        for level, clients in enumerate(args.clients):
            seq = zipf_sequence(args.models, args.zipf, args.requests, args.seed + 1 + level)
            results: dict[str, list[tuple[float, bool]]] = {"affinity": [], "plain": []}
            walls = {"affinity": 0.0, "plain": 0.0}
            per = -(-len(seq) // args.rounds)
            for r in range(args.rounds):
                chunk = seq[r * per : (r + 1) * per]
                for mode in ("affinity", "plain") if r % 2 == 0 else ("plain", "affinity"):
                    started = time.perf_counter()
                    results[mode] += run_round(services[mode], mode == "affinity", chunk, clients)
                    walls[mode] += time.perf_counter() - started
            rows = {}
            for mode, res in results.items():
                lat = [t for t, _ in res]
                hits = sum(h for _, h in res) / len(res)
                rows[mode] = (hits, statistics.median(lat) * 1000, pct(lat, 0.99) * 1000, len(res) / walls[mode])
                p50, p99, rate = rows[mode][1:]
                print(f"{clients:>7} {mode:<9} {hits:>9.3f} {p50:>8.2f} {p99:>8.2f} {rate:>8.1f}")
            a, p = rows["affinity"], rows["plain"]
            ratios.append(
                f"{clients} clients, affinity/plain: hit rate {a[0] / p[0]:.2f}x, "
                f"miss rate {(1 - a[0]) / (1 - p[0]):.2f}x, "
                f"p50 {a[1] / p[1]:.2f}x, p99 {a[2] / p[2]:.2f}x, req/s {a[3] / p[3]:.2f}x "
                f"({len(set(seq))} distinct models in {len(seq)} requests)"
            )
        print("\n".join(ratios))
    finally:
        try:
            ws.cluster().stop()
        except Exception as exc:  # report, but still remove the folder
            print(f"stopping the cluster: {exc}")
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
