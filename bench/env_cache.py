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
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "examples" / "demo"
sys.path.insert(0, str(DEMO))

from modelfleet import AksWebservice, Environment, InferenceConfig, Model, Workspace, envs  # noqa: E402

SAMPLE = {"data": [[0.038, 0.051, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003, 0.020, -0.018]]}
PACKAGES = ("scikit-learn", "joblib", "numpy")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}"


def workspace(root: Path, name: str, machine_cache: Path, uv_cache: Path) -> Workspace:
    ws = Workspace.create(name, root / name)
    ws.store.set_setting(envs.SETTING_MACHINE_CACHE, str(machine_cache))
    ws.store.set_setting(envs.SETTING_UV_CACHE, str(uv_cache))
    ws.cluster().ensure_running()  # started before the clock: rows time the deploy alone
    return ws


def deploy(ws: Workspace, name: str, model_file: Path, requirements: Path) -> tuple[float, str]:
    """Seconds from Model.deploy to deployed, and where the environment came from."""
    model = Model.register(ws, model_path=model_file, model_name="diabetes-ridge")
    env = Environment.from_pip_requirements("demo-env", requirements)
    ic = InferenceConfig(entry_script="score.py", source_directory=DEMO, environment=env)
    dc = AksWebservice.deploy_configuration(num_replicas=1)
    started = time.monotonic()
    service = Model.deploy(ws, name, [model], ic, dc, overwrite=True)
    service.wait_for_deployment(timeout_sec=900)
    seconds = time.monotonic() - started
    answer = service.run(json.dumps(SAMPLE))
    assert isinstance(answer, list) and len(answer) == 1, answer
    events = ws.store.list_events(name, kind="build")
    source = next((e["source"] for e in reversed(events) if "source" in e), "?")
    return seconds, source


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
        cold, cold_source = deploy(first, "cold", model_file, requirements)
        assert cold_source == "built", cold_source

        other_machine = workspace(root, "bench-b", root / "machine-cache-2", uv_cache)
        workspaces.append(other_machine)
        rebuilt, rebuilt_source = deploy(other_machine, "uv-warm", model_file, requirements)
        assert rebuilt_source == "built", rebuilt_source

        machine_hits, workspace_hits = [], []
        for i in range(args.warm_rounds):
            ws = workspace(root, f"bench-m{i}", machine_cache, uv_cache)
            workspaces.append(ws)
            seconds, source = deploy(ws, "machine-hit", model_file, requirements)
            assert source == "machine", source
            machine_hits.append(seconds)
            seconds, source = deploy(first, f"warm-{i}", model_file, requirements)
            assert source == "workspace", source
            workspace_hits.append(seconds)
        builds = envs.builds(machine_cache)
    finally:
        for ws in workspaces:
            ws.cluster().stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    warm = statistics.median(workspace_hits)
    machine_warm = statistics.median(machine_hits)
    print(f"modelfleet env_cache bench, {started_at:%Y-%m-%d %H:%M %Z}")
    print(f"machine: {machine()}")
    print(f"python {platform.python_version()}, uv {metadata.version('uv')}")
    print(f"environment: {', '.join(requirements_text(PACKAGES))} and the replica runtime")
    print(f"builds in the first machine cache: {len(builds)} (the cold deploy's)")
    print()
    print(f"{'deploy, Model.deploy to Healthy':<58}{'seconds':>9}{'÷ warm':>9}")
    rows = [
        ("1. cold: no caches, packages from the index", cold),
        ("2. environment cache cold, uv download cache warm", rebuilt),
        (f"3. machine-wide cache hit, new workspace (median of {len(machine_hits)})", machine_warm),
        (f"4. warm: workspace cache hit (median of {len(workspace_hits)})", warm),
    ]
    for label, seconds in rows:
        print(f"{label:<58}{seconds:>9.2f}{seconds / warm:>8.1f}x")
    print()
    print(f"cold {cold:.2f} s, warm {warm:.2f} s: cold/warm = {cold / warm:.1f}")
    return 0


def requirements_text(packages: tuple[str, ...]) -> list[str]:
    return [f"{p}=={metadata.version(p)}" for p in packages]


if __name__ == "__main__":
    sys.exit(main())
