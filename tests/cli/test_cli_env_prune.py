"""``modelfleet env prune --dry-run`` says exactly what ``env prune`` then removes, the
machine-wide cache's environments included (``--machine``).

The environment is built for real with uv, offline, from wheels the test writes
(``tests/wheels.py``), into a machine-wide cache in the test's folder.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from modelfleet import Workspace, envs
from modelfleet.control.environments import settings_for
from modelfleet.spec import EnvironmentSpec
from wheels import make_wheel, runtime_wheelhouse


def _prune(ws: Workspace, *flags: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-m", "modelfleet", "-w", str(ws.path), "env", "prune", *flags],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return {m.group(1, 2) for m in re.finditer(r"(?:would remove|removed) ([0-9a-f]{12}) .*\((\w+)\)", result.stdout)}


def test_dry_run_with_machine_lists_what_prune_removes(tmp_path: Path) -> None:
    ws = Workspace.create("prune", tmp_path / "ws")
    store = ws.store
    store.set_setting(envs.SETTING_MACHINE_CACHE, str(tmp_path / "machine-cache"))
    store.set_setting(envs.SETTING_FIND_LINKS, str(runtime_wheelhouse(tmp_path / "runtime-wheels")))
    store.set_setting(envs.SETTING_OFFLINE, "true")
    store.set_setting(envs.SETTING_UV_CACHE, str(tmp_path / "uv-cache"))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "mf-prune-a", "1.0", {"mf_prune_a/__init__.py": "VALUE = 1\n"})
    spec = EnvironmentSpec(name="unused", pip_requirements=(f"--find-links {wheels}", "mf-prune-a==1.0"))
    # built in a process of its own, as the daemon builds (the builder leaves its pipe to the
    # garbage collector, which pytest reports as an unraisable ResourceWarning in-process)
    build = (
        "import json, sys\nfrom modelfleet import Workspace, envs\nfrom modelfleet.spec import EnvironmentSpec\n"
        "from modelfleet.control.environments import settings_for\n"
        "ws = Workspace.get(sys.argv[1])\n"
        "print(envs.resolve(EnvironmentSpec.from_dict(json.loads(sys.argv[2])), settings_for(ws.store)).hash)\n"
    )
    done = subprocess.run([sys.executable, "-c", build, str(ws.path), json.dumps(spec.to_dict())],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    digest = done.stdout.strip().splitlines()[-1]
    settings = settings_for(store)
    assert settings.machine_cache is not None and (settings.machine_cache / digest).is_dir()
    short = digest[:12]

    assert _prune(ws, "--dry-run") == {(short, "workspace")}  # the machine's copy stays without --machine
    would = _prune(ws, "--machine", "--dry-run")
    assert would == {(short, "workspace"), (short, "machine")}
    assert (settings.workspace_cache / digest).exists()  # a dry run removes nothing
    assert _prune(ws, "--machine") == would
    assert not (settings.machine_cache / digest).exists()
