#!/usr/bin/env bash
# Builds the trajectory visualizer (visualizer/, TypeScript + React) into rlm/viewer/static: the
# assets `rlm view` serves and the Python package ships, so users never need Node.js.
# Needs Node.js >= 20.19 and npm (and the npm registry for the first install).
#
#   scripts/build_visualizer.sh            # npm ci if the lockfile changed, unit tests, build
#   scripts/build_visualizer.sh --deps     # only the npm packages (used by browser_setup.sh)
#   scripts/build_visualizer.sh --no-test  # skip the parser unit tests (vitest)
set -euo pipefail
cd "$(dirname "$0")/../visualizer"

deps_only=0
run_tests=1
for arg in "$@"; do
  case "$arg" in
    --deps) deps_only=1 ;;
    --no-test) run_tests=0 ;;
    *) echo "build_visualizer: unknown option $arg" >&2; exit 2 ;;
  esac
done

for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "build_visualizer: $tool is not installed" >&2; exit 1; }
done

# npm ci only when package-lock.json changed since the last install (it wipes node_modules).
stamp=node_modules/.rlm-lock-sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "build_visualizer: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" >"$stamp"
fi
[ "$deps_only" = 1 ] && exit 0

if [ "$run_tests" = 1 ]; then
  echo "build_visualizer: unit tests"
  npx --no-install vitest run --reporter=dot
fi
echo "build_visualizer: type-check and build into rlm/viewer/static"
npm run --silent build -- --logLevel warn
