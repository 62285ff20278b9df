#!/usr/bin/env bash
# Install modelfleet and the demo's needs into .venv (idempotent), then run the demo:
# train a scikit-learn model, register it, deploy it to the local cluster, score it.
#   ./scripts/demo.sh [WORKSPACE_FOLDER]     (default ./demo-workspace)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --disable-pip-version-check uv  # uv: the same versions, much faster
.venv/bin/uv pip install -q --python .venv/bin/python -e ".[demo]"
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python examples/demo/run_demo.py "$@"
