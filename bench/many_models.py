"""Issue 16: deployments of 10, 100 and 1,000 models, and a redeploy that keeps them.

For each N: register N single-file models, deploy them (one replica) and time ``Model.deploy``
to Healthy; then update the service with one model more (N-1 kept + 1 new, so 1,000 stays
within v1's limit: the update swaps one model) and time it to Healthy again, while a client
scores without pause and counts failed requests. Then the disk: bytes the service's folders
hold (each inode once) against the models' total size. A second table times the layout step
alone (``control/layout.prepare_app``) for a first generation and a redeploy of the same
models, CPU seconds of this process (less moved by other load than wall time).

    .venv/bin/python bench/many_models.py [--counts 10 100 1000] [--kb 1]

Prints seconds and ratios measured in one run; no pass/fail (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path

import requests

from modelfleet import AksWebservice, Environment, InferenceConfig, Model, Workspace
from modelfleet.control.layout import prepare_app

SCRIPT = "def init():\n    pass\n\n\ndef run(raw_data):\n    return 'ok'\n"


def _disk_bytes(folder: Path) -> tuple[int, int]:
    """(bytes of the files, bytes of the blocks they take), each inode counted once. A folder or
    file that goes while it is read (the generation an update replaced, removed by the daemon)
    is skipped."""
    seen: set[int] = set()
    size = blocks = 0
    for root, _, files in os.walk(folder):  # os.walk skips a folder that is gone
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_ino not in seen:
                seen.add(st.st_ino)
                size, blocks = size + st.st_size, blocks + st.st_blocks * 512
    return size, blocks


def _layout_cpu(ws: Workspace, config: dict, generation: int) -> float:  # type: ignore[type-arg]
    started = time.process_time()
    prepare_app(ws.store, "layout", generation, config)
    return time.process_time() - started


def one(top: Path, n: int, kb: int) -> None:
    ws = Workspace.create(f"bench{n}", top / f"ws{n}")
    files = top / f"files{n}"
    files.mkdir()
    models = []
    for i in range(n + 1):
        path = files / f"m{i}.bin"
        path.write_bytes(os.urandom(kb * 1024))
        models.append(Model.register(ws, model_path=path, model_name=f"m{i}"))
    source = top / f"src{n}"
    source.mkdir()
    (source / "score.py").write_text(SCRIPT)
    ic = InferenceConfig(entry_script="score.py", source_directory=source, environment=Environment("bench"))
    dc = AksWebservice.deploy_configuration(num_replicas=1, cpu_cores=0.05, memory_gb=0.1)
    try:
        started = time.perf_counter()
        service = Model.deploy(ws, "many", models[:n], ic, dc)
        service.wait_for_deployment(timeout_sec=300)
        first = time.perf_counter() - started
        headers = {"Authorization": f"Bearer {service.get_keys()[0]}"}
        failed, answered, stop = [0], [0], threading.Event()

        def score() -> None:
            with requests.Session() as s:
                while not stop.is_set():
                    ok = s.post(service.scoring_uri, json={}, headers=headers, timeout=30).status_code == 200
                    answered[0] += ok
                    failed[0] += not ok

        client = threading.Thread(target=score)
        client.start()
        started = time.perf_counter()
        service.update(models=models[1 : n + 1])  # one out, one in: N-1 kept
        service.wait_for_deployment(timeout_sec=300)
        update = time.perf_counter() - started
        stop.set()
        client.join()
        services = ws.store.runtime_dir / "services" / "many"
        size = n * kb * 1024
        disk, blocks = _disk_bytes(services)  # every generation's app folder and the shared copies
        print(
            f"{n:>5} models: deploy to Healthy {first:6.2f} s | update keeping {n - 1} to Healthy {update:6.2f} s, "
            f"{answered[0]} answered, {failed[0]} failed during it | the service's folders hold {disk / 1024:.0f} KiB "
            f"({blocks / 1024:.0f} KiB of blocks) for {size / 1024:.0f} KiB of models ({disk / size:.2f}x)"
        )
    finally:
        ws.cluster().stop()
    config = dict(ws.store.get_service("many").config)
    g1, g2 = _layout_cpu(ws, config, 1), _layout_cpu(ws, config, 2)
    print(f"{n:>5} models: layout step, CPU: first {g1:.3f} s, redeploy {g2:.3f} s ({g1 / max(g2, 1e-9):.1f}x less)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--kb", type=int, default=1, help="size of each model file")
    args = parser.parse_args()
    top = Path(tempfile.mkdtemp(prefix="mf-bench-many-"))
    try:
        for n in args.counts:
            one(top, n, args.kb)
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
