#!/usr/bin/env bash
# Runs all the tests from a fresh clone: installs what they need (Python packages, the Docker
# engine and sandbox image, ...), checks style and types, then runs pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -k protocol
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
scripts/bootstrap.sh dev
scripts/docker_setup.sh
export RLM_REQUIRE_DOCKER=1

echo "== ruff"
.venv/bin/ruff format --check rlm tests benchmarks examples
.venv/bin/ruff check rlm tests benchmarks examples
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/pytest -q -p no:cacheprovider "$@"
echo "scripts/test.sh: all checks passed in $(( $(date +%s) - started ))s"
