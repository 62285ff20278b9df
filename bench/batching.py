"""Dynamic batching: one scikit-learn model served unbatched (run() per request) and batched
(``run_batch`` over up to 64 requests), 64 connections each, in one run; prints req/s, p50
latency and the ratio batched / unbatched.

The model is a LogisticRegression over 20 features predicting one row per request: most of a
call's cost is scikit-learn's fixed overhead (input checks, array set-up), which a batch pays
once for all its rows. The same replica process kind serves both (``python -m
modelfleet.replica``, one worker thread, ``--max-concurrent 0``: requests wait rather than
get 503), the batched one with ``--max-batch-size 64 --max-batch-delay-ms 2``.

Placement (2 CPUs): the replica under test pinned to CPU 1 with ``taskset``, the load generator
(``wrk``, one thread, 64 connections) pinned to CPU 0. The two replicas run one after the
other, never together; each is measured ``--rounds`` times, alternating, and the best round of
each is compared (other work on a shared machine only ever slows a round down).

    python bench/batching.py [--seconds 5] [--rounds 2]

Needs ``wrk`` and ``taskset``, and scikit-learn in this environment (the ``test`` extra).
Never run inside the test suite.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import free_port, kill_pids, loadavg, machine, wrk_post_lua, wrk_rps_p50

FEATURES = 20
BODY = '{"data": [' + ", ".join(f"{0.05 * i:.2f}" for i in range(FEATURES)) + "]}"

SCORE = """
import json
import os
import pickle

import numpy as np

model = None


def init():
    global model
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model.pkl"), "rb") as f:
        model = pickle.load(f)


def run(raw_data):
    row = np.asarray([json.loads(raw_data)["data"]], dtype=float)
    return model.predict(row).tolist()


def run_batch(items):
    rows = np.asarray([json.loads(item)["data"] for item in items], dtype=float)
    return [[p] for p in model.predict(rows).tolist()]
"""


def train(folder: Path) -> None:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, FEATURES))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    with open(folder / "model.pkl", "wb") as f:
        pickle.dump(LogisticRegression().fit(x, y), f)


def start(folder: Path, batched: bool) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    argv = ["taskset", "-c", "1", sys.executable, "-m", "modelfleet.replica"]
    argv += ["--entry_script", str(folder / "score.py")]
    argv += ["--model_dir", str(folder), "--host", "127.0.0.1", "--port", str(port), "--worker_count", "1"]
    if batched:
        argv += ["--max-batch-size", "64", "--max-batch-delay-ms", "2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZUREML_", "AML_", "WORKER_", "MODELFLEET_"))}
    env["MODELFLEET_STATS_FILE"] = str(folder / "stats.json")  # batch sizes, written at the stop
    with open(folder / "replica.log", "ab") as log:
        proc = subprocess.Popen(argv, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"replica exited with {proc.returncode}:\n{(folder / 'replica.log').read_text()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("POST", "/score", BODY, {"Content-Type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            conn.close()
            if answer.status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("replica not ready in 60 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp:
        folder = Path(tmp)
        train(folder)
        (folder / "score.py").write_text(SCORE)
        lua = folder / "post.lua"
        lua.write_text(wrk_post_lua(BODY, {}))
        print(machine())
        print(f"load average before: {loadavg()}")
        best: dict[str, tuple[float, float]] = {}
        for r in range(args.rounds):
            for kind in ("unbatched", "batched"):
                proc, port = start(folder, batched=kind == "batched")
                try:
                    rps, p50, _ = wrk_rps_p50(f"http://127.0.0.1:{port}/score", 64, args.seconds, lua)
                finally:
                    proc.send_signal(signal.SIGTERM)  # a graceful stop writes the stats file
                    try:
                        proc.wait(15)
                    except subprocess.TimeoutExpired:
                        kill_pids([proc.pid])
                        proc.wait(10)
                sizes = ""
                if kind == "batched":
                    stats = json.loads((folder / "stats.json").read_text())
                    sizes = f"  mean batch {stats['batch_size_sum'] / max(1, stats['batch_count']):.1f}"
                print(f"round {r + 1} {kind:>9}: {rps:9.0f} req/s  p50 {p50:7.2f} ms{sizes}")
                if kind not in best or rps > best[kind][0]:
                    best[kind] = (rps, p50)
        (u_rps, u_p50), (b_rps, b_p50) = best["unbatched"], best["batched"]
        print(f"best unbatched: {u_rps:.0f} req/s, p50 {u_p50:.2f} ms")
        print(f"best batched:   {b_rps:.0f} req/s, p50 {b_p50:.2f} ms (max_batch_size 64, max_batch_delay_ms 2)")
        print(f"ratio batched / unbatched: {b_rps / u_rps:.2f}x req/s (64 connections)")
        print(f"load average after: {loadavg()}")


if __name__ == "__main__":
    main()
