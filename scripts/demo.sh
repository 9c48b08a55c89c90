#!/usr/bin/env bash
# The main job: a complete RLM run over a generated long document (`rlm demo`).
# With OPENAI_API_KEY / ANTHROPIC_API_KEY / GEMINI_API_KEY set it uses that provider; otherwise
# it starts the local real model (scripts/model_server.sh; the first time builds llama.cpp,
# several minutes) and says so. Extra arguments go to `rlm demo` (see `rlm demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh "openai,anthropic,gemini,rich"
exec .venv/bin/rlm demo "$@"
