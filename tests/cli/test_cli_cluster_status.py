"""`modelfleet cluster status` finds a workspace folder without opening its store (issue 16:
at 1,000 services it must answer within 0.5 s, and loading the SDK and SQLAlchemy alone took
0.7-1.0 s here): the same answer, from the folder itself, a folder below it or `-w`, with
neither imported; a v1 config.json still finds its workspace the full way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from e2e_support import deploy, stop_cluster
from modelfleet import Workspace


def _status(cwd: Path, *args: str) -> tuple[dict, str]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "modelfleet", *args, "cluster", "status", "-o", "json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    return json.loads(result.stdout), " ".join(sorted(imported))


def test_status_reads_no_store_and_says_what_the_full_way_says(tmp_path: Path) -> None:
    ws = Workspace.create("status", tmp_path / "ws")
    deploy(ws, "summer", "sum")
    try:
        below = ws.path / "project" / "src"
        below.mkdir(parents=True)
        for cwd, args in ((ws.path, ()), (below, ()), (tmp_path, ("-w", str(ws.path)))):
            data, imported = _status(cwd, *args)
            assert data["running"] is True and list(data["services"]) == ["summer"], data
            assert data["services"]["summer"]["replicas"][0]["state"] == "Ready"
            assert "sqlalchemy" not in imported and "modelfleet.sdk.workspace" not in imported, imported
        v1 = tmp_path / "elsewhere"
        v1.mkdir()
        (v1 / "config.json").write_text(json.dumps({"workspace_name": "status", "workspace_path": str(ws.path)}))
        data, imported = _status(v1)
        assert data["running"] is True and list(data["services"]) == ["summer"], data
        assert "modelfleet.sdk.workspace" in imported  # a v1 config names its workspace: read the full way
    finally:
        stop_cluster(ws)
    data, _ = _status(ws.path)
    assert data == {"running": False}
