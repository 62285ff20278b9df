"""The short soak (issue 12): 30 s of mixed traffic through the router with autoscaling on,
a key regenerated and the service updated midway. ``bench/soak.py`` checks every answer and
the growth of memory and open files itself; this test runs it and requires it to pass."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.timeout(300)
def test_short_soak_passes(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, str(BENCH / "soak.py"), "--duration", "30", "--workers", "4", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(out.read_text())
    counts = figures["counts"]
    # every kind of traffic really ran, so a pass means something
    for kind in ("valid 200", "unauth 401", "unknown 404", "bad 400", "fail 500", "slow 200", "aborted sent"):
        assert counts.get(kind, 0) > 0, counts
    assert not figures["unexpected"] and not figures["over_bounds"]
    assert any("regenerated" in e for e in figures["events"]) and any("update" in e for e in figures["events"])
