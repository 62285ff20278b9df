"""What copying model files into a replica's app folder costs, against the hard links it replaced.

A replica's model files are read-only copies of the workspace's blobs (reflinks where the file
system has them), so that a score.py writing to one cannot change the stored model. This
measures, for N single-file models of a given size:

1. the layout step alone: ``Store.materialize_model`` for every model (copies) against
   ``os.link`` of every blob (what it used to do), best of 5 rounds each, wall and CPU time;
2. end to end: a service with all N models deployed to the local cluster, from ``Model.deploy``
   to Healthy (the app folder is written once per generation, whatever the replica count).

    .venv/bin/python bench/model_layout.py [--models 1000] [--kb 1] [--no-deploy]

Prints seconds and ratios; no pass/fail (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from modelfleet import AksWebservice, Environment, InferenceConfig, Model, Workspace
from modelfleet.store.registry import Store

SCRIPT = "def init():\n    pass\n\n\ndef run(raw_data):\n    return 'ok'\n"


def _layout_seconds(store: Store, records: list, link: bool, dest: Path) -> tuple[float, float]:  # type: ignore[type-arg]
    """Best of 5 rounds: (wall seconds, CPU seconds of this process, user + system)."""
    best, best_cpu = float("inf"), float("inf")
    for _ in range(5):
        shutil.rmtree(dest, ignore_errors=True)
        started, cpu = time.perf_counter(), time.process_time()
        for record in records:
            folder = dest / record.name / str(record.version)
            folder.mkdir(parents=True)
            if link:
                for f in record.files:
                    os.link(store.blobs.path(f.digest), folder / f.relpath)
            else:
                store.materialize_model(record, folder)
        best = min(best, time.perf_counter() - started)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--kb", type=int, default=1, help="size of each model file")
    parser.add_argument("--no-deploy", action="store_true", help="measure the layout step only")
    args = parser.parse_args()
    top = Path(tempfile.mkdtemp(prefix="mf-bench-layout-"))
    try:
        ws = Workspace.create("bench", top / "ws")
        files = top / "files"
        files.mkdir()
        started = time.perf_counter()
        models = []
        for i in range(args.models):
            path = files / f"m{i}.bin"
            path.write_bytes(os.urandom(args.kb * 1024))
            models.append(Model.register(ws, model_path=path, model_name=f"m{i}"))
        print(f"registered {args.models} models of {args.kb} KB in {time.perf_counter() - started:.2f} s")
        records = [ws.store.get_model(f"m{i}", 1) for i in range(args.models)]
        linked, linked_cpu = _layout_seconds(ws.store, records, True, top / "linked")
        copied, copied_cpu = _layout_seconds(ws.store, records, False, top / "copied")
        print(f"layout step, wall: hard links {linked:.3f} s, copies {copied:.3f} s, ratio {copied / linked:.2f}x")
        print(
            f"layout step, CPU (less moved by other load): hard links {linked_cpu:.3f} s, copies "
            f"{copied_cpu:.3f} s, ratio {copied_cpu / linked_cpu:.2f}x"
        )
        if args.no_deploy:
            return
        source = top / "src"
        source.mkdir()
        (source / "score.py").write_text(SCRIPT)
        ic = InferenceConfig(entry_script="score.py", source_directory=source, environment=Environment("bench"))
        dc = AksWebservice.deploy_configuration(num_replicas=1, autoscale_enabled=False)
        started = time.perf_counter()
        service = Model.deploy(ws, "many", models, ic, dc)
        service.wait_for_deployment(timeout_sec=300)
        print(f"deploy with {args.models} models to Healthy: {time.perf_counter() - started:.2f} s ({service.state})")
        ws.cluster().stop()
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
