#!/usr/bin/env bash
# Runs all the tests from a fresh clone. It installs what they need itself: the Python packages
# (.venv), the Docker engine and sandbox image, headless Chromium and the visualizer build, and
# the local real model (llama.cpp + the LiteLLM proxy, built on first use). Then it checks style
# and types and runs pytest with every layer required: nothing that needs Docker, the browser
# or the real model may be skipped.
# Extra arguments go to pytest, e.g. scripts/test.sh -k protocol
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
mkdir -p .rlm
step() { echo "== $1 ($(( $(date +%s) - started ))s)"; }

step "python packages"
scripts/bootstrap.sh dev

# The model server builds llama.cpp from source the first time (minutes): it sets up in the
# background while the other layers do.
step "local real model (background)"
scripts/model_server.sh start >.rlm/model-server-setup.log 2>&1 &
model_setup=$!

step "docker engine and sandbox image"
scripts/docker_setup.sh
step "chromium and the visualizer"
scripts/browser_setup.sh
scripts/build_visualizer.sh

step "waiting for the local real model"
if ! wait "$model_setup"; then
  echo "scripts/model_server.sh start failed:" >&2
  cat .rlm/model-server-setup.log >&2
  exit 1
fi
eval "$(scripts/model_server.sh env)"
if [ "${CI:-}" = true ]; then trap 'scripts/model_server.sh stop >/dev/null 2>&1 || true' EXIT; fi
export RLM_REQUIRE_DOCKER=1 RLM_REQUIRE_BROWSER=1 RLM_REQUIRE_REAL_MODEL=1 RLM_REQUIRE_CONFINEMENT=1

step "ruff"
.venv/bin/ruff format --check rlm tests benchmarks examples
.venv/bin/ruff check rlm tests benchmarks examples
step "mypy"
.venv/bin/mypy
step "pytest"
.venv/bin/pytest -q -p no:cacheprovider "$@"
echo "scripts/test.sh: all checks passed in $(( $(date +%s) - started ))s"
