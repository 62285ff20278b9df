"""Deploy time of the demo model with its environment cold and warm, side by side in one run.

    python bench/env_cache.py [--warm-rounds 3] [--keep]

The demo model (examples/demo: a scikit-learn Ridge regression, loaded with joblib, fed
with numpy) deployed with ``Environment.from_pip_requirements`` naming scikit-learn, joblib
and numpy (pinned to the versions this interpreter has, so the model unpickles as trained).
Each row is the time from ``Model.deploy`` to ``wait_for_deployment()`` returning (the
cluster already running), then one scoring request checks the answer:

1. cold: empty environment caches and an empty uv download cache, so the packages come
   from the package index;
2. environment cache cold, uv's download cache warm (what uv alone would save);
3. machine-wide cache hit from a new workspace (a symlink, no build);
4. workspace cache hit (a second service of the same environment).

It prints each (median of ``--warm-rounds`` for rows 3 and 4), and the ratio cold ÷ warm.
Needs the package index (row 1 downloads). Nothing is pinned to a CPU: there is no load
generator here, and uv uses both cores alike in every row. All caches and workspaces live
in a temporary folder that is removed at the end (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from _common import cpu_model, kill_pids

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "examples" / "demo"
sys.path.insert(0, str(DEMO))

from modelfleet import AksWebservice, Environment, InferenceConfig, Model, Workspace, envs  # noqa: E402

SAMPLE = {"data": [[0.038, 0.051, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003, 0.020, -0.018]]}
PACKAGES = ("scikit-learn", "joblib", "numpy")


def machine() -> str:
    cpu = cpu_model("unknown CPU")
    return f"{platform.node()}: {os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}"


def workspace(root: Path, name: str, machine_cache: Path, uv_cache: Path) -> Workspace:
    ws = Workspace.create(name, root / name)
    ws.store.set_setting(envs.SETTING_MACHINE_CACHE, str(machine_cache))
    ws.store.set_setting(envs.SETTING_UV_CACHE, str(uv_cache))
    ws.cluster().ensure_running()  # started before the clock: rows time the deploy alone
    return ws


@dataclass(frozen=True)
class Deploy:
    seconds: float  # Model.deploy to deployed
    env_seconds: float  # Model.deploy to the environment found or built (its build event)
    source: str  # where the environment came from: built | machine | workspace


def deploy(ws: Workspace, name: str, model_file: Path, requirements: Path) -> Deploy:
    model = Model.register(ws, model_path=model_file, model_name="diabetes-ridge")
    env = Environment.from_pip_requirements("demo-env", requirements)
    ic = InferenceConfig(entry_script="score.py", source_directory=DEMO, environment=env)
    dc = AksWebservice.deploy_configuration(num_replicas=1)
    started, wall = time.monotonic(), time.time()
    service = Model.deploy(ws, name, [model], ic, dc, overwrite=True)
    service.wait_for_deployment(timeout_sec=900)
    seconds = time.monotonic() - started
    answer = service.run(json.dumps(SAMPLE))
    assert isinstance(answer, list) and len(answer) == 1, answer
    events = ws.store.list_events(name, kind="build")
    outcome = next(e for e in reversed(events) if "source" in e)
    return Deploy(seconds, outcome["time"] - wall, outcome["source"])


def expect(source: str, wanted: str, row: str) -> None:
    # a different source means a different hash: the runtime's files changed during the run
    if source != wanted:
        raise SystemExit(f"{row}: the environment was {source}, not {wanted}; were modelfleet's files edited? rerun")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm-rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    from train import train

    root = Path(tempfile.mkdtemp(prefix="modelfleet-env-bench-"))
    started_at = datetime.datetime.now().astimezone()
    workspaces: list[Workspace] = []
    try:
        model_file = train(root / "outputs")
        requirements = root / "requirements.txt"
        requirements.write_text("".join(f"{p}=={metadata.version(p)}\n" for p in PACKAGES))
        machine_cache, uv_cache = root / "machine-cache", root / "uv-cache"

        first = workspace(root, "bench-a", machine_cache, uv_cache)
        workspaces.append(first)
        cold = deploy(first, "cold", model_file, requirements)
        expect(cold.source, "built", "cold")

        other_machine = workspace(root, "bench-b", root / "machine-cache-2", uv_cache)
        workspaces.append(other_machine)
        rebuilt = deploy(other_machine, "uv-warm", model_file, requirements)
        expect(rebuilt.source, "built", "uv cache warm")

        machine_hits, workspace_hits = [], []
        for i in range(args.warm_rounds):
            ws = workspace(root, f"bench-m{i}", machine_cache, uv_cache)
            workspaces.append(ws)
            machine_hits.append(deploy(ws, "machine-hit", model_file, requirements))
            expect(machine_hits[-1].source, "machine", "machine-wide cache hit")
            workspace_hits.append(deploy(first, f"warm-{i}", model_file, requirements))
            expect(workspace_hits[-1].source, "workspace", "workspace cache hit")
        builds = envs.builds(machine_cache)
    finally:
        for ws in workspaces:
            stop(ws)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    warm = median(workspace_hits)
    machine_warm = median(machine_hits)
    print(f"modelfleet env_cache bench, {started_at:%Y-%m-%d %H:%M %Z}")
    print(f"machine: {machine()}")
    print(f"python {platform.python_version()}, uv {metadata.version('uv')}")
    print(f"environment: {', '.join(requirements_text(PACKAGES))} and the replica runtime")
    print(f"builds in the first machine cache: {len(builds)} (the cold deploy's)")
    print()
    print(f"{'deploy (seconds from Model.deploy)':<58}{'Healthy':>9}{'÷ warm':>9}{'env ready':>11}")
    rows = [
        ("1. cold: no caches, packages from the index", cold),
        ("2. environment cache cold, uv download cache warm", rebuilt),
        (f"3. machine-wide cache hit, new workspace (median of {len(machine_hits)})", machine_warm),
        (f"4. warm: workspace cache hit (median of {len(workspace_hits)})", warm),
    ]
    for label, row in rows:
        print(f"{label:<58}{row.seconds:>9.2f}{row.seconds / warm.seconds:>8.1f}x{row.env_seconds:>11.2f}")
    print()
    print(f"cold {cold.seconds:.2f} s, warm {warm.seconds:.2f} s: cold/warm = {cold.seconds / warm.seconds:.1f}")
    print("(env ready: when the environment was found or built; the rest is the replica starting)")
    return 0


def stop(ws: Workspace) -> None:
    """Stop a cluster this run started; if it does not stop, kill its daemon by pid (its
    replicas die with it)."""
    cluster = ws.cluster()
    info = cluster.info()
    try:
        cluster.stop()
    except Exception as exc:  # noqa: BLE001 - cleanup goes on whatever went wrong
        print(f"warning: {exc}; killing the daemon", file=sys.stderr)
        if info is not None:
            kill_pids([int(info["pid"])])


def median(rows: list[Deploy]) -> Deploy:
    seconds = statistics.median(r.seconds for r in rows)
    return Deploy(seconds, statistics.median(r.env_seconds for r in rows), rows[0].source)


def requirements_text(packages: tuple[str, ...]) -> list[str]:
    return [f"{p}=={metadata.version(p)}" for p in packages]


if __name__ == "__main__":
    sys.exit(main())
