"""`modelfleet model deploy --compute-target NAME`: the CLI's way to v1's `deployment_target`.
An unknown target is refused in one line before anything is deployed (the deploy itself to an
attached cluster is covered in tests/k8s/test_target_deploy.py)."""

from __future__ import annotations

import json
from pathlib import Path

from e2e_support import SCRIPTS, cli
from modelfleet import Workspace


def test_an_unknown_compute_target_is_refused_before_anything_is_deployed(tmp_path: Path) -> None:
    ws = Workspace.create("targets", tmp_path / "ws")
    (tmp_path / "m.json").write_text("{}")
    cli(ws, "model", "register", "-n", "m", "-p", str(tmp_path / "m.json"))
    ic = tmp_path / "inferenceconfig.json"
    ic.write_text(json.dumps({"entryScript": "score.py", "sourceDirectory": str(SCRIPTS / "sum")}))
    result = cli(ws, "model", "deploy", "-n", "elsewhere", "-m", "m:1", "--ic", str(ic),
                 "--compute-target", "nope", check=False)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and "nope" in result.stderr
    assert json.loads(cli(ws, "service", "list", "-o", "json").stdout) == []
    assert ws.cluster().info() is None  # no local cluster was started for it either
