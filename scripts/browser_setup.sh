#!/usr/bin/env bash
# Installs what the browser test (tests/test_visualizer_browser.py) needs: Debian's Chromium at
# /usr/bin/chromium when it is missing, and the visualizer's npm packages (playwright-core drives
# that Chromium; no browser is downloaded). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "browser_setup: installing chromium (apt)"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium
fi
scripts/build_visualizer.sh --deps
