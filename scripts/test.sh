#!/usr/bin/env bash
# Install everything the tests need into .venv (idempotent), then lint (ruff check and format),
# check the import layering and run the tests.
#   ./scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,parquet,otel]"

# The v1 reference server (azmlinfsrv), for the parity tests, in a venv of its own so its
# dependencies never mix with ours.
if [ ! -x .venv-reference/bin/azmlinfsrv ]; then
    "$PY" -m venv .venv-reference
    .venv-reference/bin/python -m pip install -q --disable-pip-version-check azureml-inference-server-http numpy
fi
export MODELFLEET_REFERENCE_SERVER="$PWD/.venv-reference/bin/azmlinfsrv"

# A real Kubernetes 1.20 control plane for tests/k8s: etcd, and kube-apiserver,
# kube-controller-manager and kube-scheduler built from Debian's sources once per machine into a
# cache outside the clone (about 8 minutes the first time; nothing after). The tests fail, not
# skip, when it is missing.
bash scripts/k8s-control-plane.sh
export MODELFLEET_K8S_REQUIRED=1

# Debian's headless Chromium and its driver (the same build) for the dashboard's browser tests;
# the tests fail, not skip, without them.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    sudo_="" && [ "$(id -u)" -ne 0 ] && sudo_="sudo"
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends chromium chromium-driver
fi
export MODELFLEET_BROWSER_REQUIRED=1

# PostgreSQL's server binaries (tests/store start their own cluster) and npm for Azurite, the
# Azure Storage emulator, installed into a cache outside the clone.
if [ ! -x /usr/lib/postgresql/15/bin/initdb ] || ! command -v npm >/dev/null; then
    sudo_="" && [ "$(id -u)" -ne 0 ] && sudo_="sudo"
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends postgresql nodejs npm
fi
AZ_PREFIX="${XDG_CACHE_HOME:-$HOME/.cache}/modelfleet/npm"
[ -x "$AZ_PREFIX/node_modules/.bin/azurite-blob" ] || npm install --no-audit --no-fund --prefix "$AZ_PREFIX" azurite@3
export MODELFLEET_AZURITE="$AZ_PREFIX/node_modules/.bin/azurite-blob"

.venv/bin/ruff check src tests bench examples
.venv/bin/ruff format --check -q src tests bench examples
.venv/bin/lint-imports  # the one-way layering of pyproject's [tool.importlinter]
.venv/bin/mypy          # --strict over src/modelfleet (pyproject's [tool.mypy])
.venv/bin/python -m pytest "$@"
