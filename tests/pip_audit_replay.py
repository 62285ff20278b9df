"""Stands in for the pip-audit command in tests (``MODELFLEET_PIP_AUDIT``): checks that it was
called as modelfleet calls pip-audit, with the pin named by ``REPLAY_EXPECT_PIN`` in the
requirements file, then answers with ``tests/data/pip_audit_answer.json`` (exit 1, as
pip-audit does when it finds something)."""

import os
import sys
from pathlib import Path

args = sys.argv[1:]
requirements = Path(args[args.index("-r") + 1]).read_text()
if not ({"--no-deps", "--disable-pip"} <= set(args) and args[args.index("-f") + 1] == "json"):
    sys.exit(f"called with unexpected arguments: {args}")
if os.environ.get("REPLAY_EXPECT_PIN", "") not in requirements.splitlines():
    sys.exit(f"the requirements file lacks {os.environ.get('REPLAY_EXPECT_PIN')!r}:\n{requirements}")
sys.stdout.write((Path(__file__).parent / "data" / "pip_audit_answer.json").read_text())
sys.exit(1)
