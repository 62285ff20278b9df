#!/usr/bin/env bash
# Install everything the tests need into .venv (idempotent), then lint (ruff check and format),
# check the import layering and run the tests.
#   ./scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Debian's packages, installed in the background while the Python packages install (they do not
# depend on each other): headless Chromium and its driver (the same build) for the dashboard's
# browser tests, PostgreSQL's server binaries (tests/store start their own cluster) and npm for
# Azurite, the Azure Storage emulator. The tests fail, not skip, without them.
apt_needed=()
{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || apt_needed+=(chromium chromium-driver)
[ -x /usr/lib/postgresql/15/bin/initdb ] || apt_needed+=(postgresql)
command -v npm >/dev/null || apt_needed+=(nodejs npm)
# tests/envs and tests/k8s: a real OCI registry for the image look-up, and skopeo to put an image into it (no engine)
[ -x /usr/bin/docker-registry ] || apt_needed+=(docker-registry)
command -v skopeo >/dev/null || apt_needed+=(skopeo)
apt_log=$(mktemp)
apt_pid=""
if [ ${#apt_needed[@]} -gt 0 ]; then
    sudo_="" && [ "$(id -u)" -ne 0 ] && sudo_="sudo"
    { $sudo_ apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${apt_needed[@]}"; } \
        >"$apt_log" 2>&1 &
    apt_pid=$!
fi

# uv installs the same versions pip resolves (checked: identical package sets), in seconds where
# pip took minutes on this 2-core machine.
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --disable-pip-version-check uv
.venv/bin/uv pip install -q --python .venv/bin/python -e ".[test,parquet,otel]"

# The v1 reference server (azmlinfsrv), for the parity tests, in a venv of its own so its
# dependencies never mix with ours.
if [ ! -x .venv-reference/bin/azmlinfsrv ]; then
    "$PY" -m venv .venv-reference
    .venv/bin/uv pip install -q --python .venv-reference/bin/python azureml-inference-server-http numpy
fi
export MODELFLEET_REFERENCE_SERVER="$PWD/.venv-reference/bin/azmlinfsrv"

if [ -n "$apt_pid" ] && ! wait "$apt_pid"; then
    cat "$apt_log" >&2
    echo "scripts/test.sh: installing ${apt_needed[*]} with apt-get failed (above)" >&2
    exit 1
fi
rm -f "$apt_log"
export MODELFLEET_BROWSER_REQUIRED=1
AZ_PREFIX="${XDG_CACHE_HOME:-$HOME/.cache}/modelfleet/npm"
[ -x "$AZ_PREFIX/node_modules/.bin/azurite-blob" ] || npm install --no-audit --no-fund --prefix "$AZ_PREFIX" azurite@3
export MODELFLEET_AZURITE="$AZ_PREFIX/node_modules/.bin/azurite-blob"

# A real Kubernetes 1.20 control plane for tests/k8s: etcd, and kube-apiserver,
# kube-controller-manager and kube-scheduler built from Debian's sources once per machine into a
# cache outside the clone (about 8 minutes the first time; nothing after). The tests fail, not
# skip, when it is missing. After the apt-get above: its own first build uses apt-get too.
bash scripts/k8s-control-plane.sh
export MODELFLEET_K8S_REQUIRED=1
export MODELFLEET_REGISTRY_REQUIRED=1

.venv/bin/ruff check src tests bench examples
.venv/bin/ruff format --check -q src tests bench examples
.venv/bin/lint-imports  # the one-way layering of pyproject's [tool.importlinter]
.venv/bin/mypy          # --strict over src/modelfleet (pyproject's [tool.mypy])
# pytest-randomly (the test extra) runs the tests in a new random order each time, so a test that
# relies on what another left behind fails. The run's first lines say "Using --randomly-seed=N":
# `./scripts/test.sh --randomly-seed=N` replays that order (--randomly-seed=last: the previous
# run's); `-p no:randomly` runs them in file order.
.venv/bin/python -m pytest "$@"
