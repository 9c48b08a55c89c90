"""`rlm demo`: a complete RLM run over a generated long document.

The document is a seeded needle-in-a-haystack text (rlm.bench.sniah) longer than the sub-model
reads at once. Which models run depends on what is available, and the output says so:
1. a provider key (OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY/GOOGLE_API_KEY): that
   provider's model is the root and answers the sub-calls;
2. otherwise (or with --offline) the local real model, SmolLM2-135M-Instruct behind llama.cpp's
   OpenAI-compatible server (started with scripts/model_server.sh when it is not running),
   answers the sub-calls, and a scripted root writes the code a good root model would write.
Exit status: 0 when the answer contains the needle's value, 1 when it does not, 2 when the demo
could not run (bad arguments, no model to talk to).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from rlm.core.types import Message

PROVIDERS = [
    ("OPENAI_API_KEY", "openai", "gpt-5-mini"),
    ("ANTHROPIC_API_KEY", "anthropic", "claude-haiku-4-5"),
    ("GEMINI_API_KEY", "gemini", "gemini-2.5-flash"),
    ("GOOGLE_API_KEY", "gemini", "gemini-2.5-flash"),
]
DEFAULT_MODEL_PORT = 8765
LOCAL_URL = os.environ.get("RLM_LOCAL_MODEL_URL", f"http://127.0.0.1:{DEFAULT_MODEL_PORT}/v1")
LOCAL_MODEL = os.environ.get("RLM_LOCAL_MODEL_NAME", "smollm2")
LOCAL_DESCRIPTION = "SmolLM2-135M-Instruct via llama.cpp"
# The scripted root's chunk size. The local server's window is 8,192 tokens and this prose
# runs about 5 characters per SmolLM2 token, so a chunk is ~1,000 tokens: far inside the
# window, and short enough for a 135M model to find one sentence in and for two CPU cores to
# read in seconds.
CHUNK_CHARS = 5_000
LOCAL_MAX_TOKENS = 32  # the answer is a 7-digit number; a cap keeps a rambling reply short
SERVER_START_TIMEOUT = 3_600.0  # the first start builds llama.cpp from source

FENCE = "```"

DESCRIPTION = "A complete RLM run over a generated long document with one hidden fact."
EPILOG = f"""\
models:
  With OPENAI_API_KEY, ANTHROPIC_API_KEY or GEMINI_API_KEY (or GOOGLE_API_KEY) set, that
  provider's model writes the root code and answers the sub-calls (checked in that order).
  Without a key, or with --offline, a scripted root LM writes the code a good model would
  write, and the local real model ({LOCAL_DESCRIPTION}) answers every
  sub-call. When nothing answers at RLM_LOCAL_MODEL_URL ({LOCAL_URL}),
  scripts/model_server.sh starts it; the first start builds llama.cpp from source (20-40
  minutes on 2 cores). It keeps running afterwards: scripts/model_server.sh stop ends it.

exit status:
  0 the answer contains the hidden value, 1 it does not, 2 the demo could not run.

examples:
  rlm demo                           # a 16K-token document, live console view
  rlm demo --length 2048 --quiet     # a short document, only the summary
  rlm demo --offline --log-dir logs  # the local model even with a key set; keep the trajectory
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--length",
        type=_positive,
        default=16_384,
        help="document length in nominal tokens, ~4 characters each (default: 16384)",
    )
    parser.add_argument("--seed", type=int, default=0, help="which generated document (default: 0)")
    parser.add_argument(
        "--environment",
        default="local",
        help="where the root's code runs: local, process, docker, ... (default: local)",
    )
    parser.add_argument("--log-dir", default=None, help="write the trajectory here (JSONL)")
    parser.add_argument(
        "--quiet", action="store_true", help="no live console view, only the summary"
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="ignore provider keys and use the local real model",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(args: argparse.Namespace) -> int:
    from rlm import RLM
    from rlm.bench import sniah

    task = sniah.generate(args.length, args.seed)
    print(
        f"rlm demo: a {len(task.context):,}-character document (~{task.approx_tokens:,} tokens) "
        f"with one hidden fact.\nQuestion: {task.question}\n",
        flush=True,
    )
    provider = None if args.offline else _provider_from_env()
    kwargs: dict[str, Any] = {"environment": args.environment, "max_iterations": 12}
    if provider is not None:
        env_var, backend, model = provider
        print(f"Using {backend} ({model}) for the root and the sub-calls: {env_var} is set.\n")
        kwargs.update(
            backend=backend,
            backend_kwargs={"model_name": model},
            other_backends=[backend],
            other_backend_kwargs=[{"model_name": model}],
        )
    else:
        why = (
            "--offline is set"
            if args.offline
            else "no provider key is set (OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY)"
        )
        local_url = _ensure_local_model()
        if local_url is None:
            return 2
        print(
            f"Running with the local model: {why}.\n"
            f"A scripted root LM writes the code, and the real local model {LOCAL_MODEL!r} "
            f"({LOCAL_DESCRIPTION}\nat {local_url}) answers every sub-call. "
            "Set a provider key to use a real root model.\n",
            flush=True,
        )
        kwargs.update(
            backend="scripted",
            backend_kwargs={"model_name": "scripted-root", "responses": _scripted_root},
            other_backends=["vllm"],
            other_backend_kwargs=[
                {
                    "model_name": LOCAL_MODEL,
                    "base_url": local_url,
                    "timeout": 300.0,
                    "max_retries": 1,
                    "sampling_args": {"max_tokens": LOCAL_MAX_TOKENS, "temperature": 0.0},
                }
            ],
        )
    if args.log_dir:
        from rlm.logger import RLMLogger

        kwargs["logger"] = RLMLogger(log_dir=args.log_dir)
    if not args.quiet:
        from rlm.commands import output
        from rlm.logger.verbose import VerbosePrinter

        # `rlm demo | head`: once the reader is gone the run stops (exit 141), quietly.
        kwargs["observers"] = [VerbosePrinter(on_closed=output.output_closed)]
    kwargs["on_limit"] = "return"  # the demo reports the stop reason with the partial answer
    with RLM(**kwargs) as rlm:
        out = rlm.completion(task.context, root_prompt=task.question)
    correct = task.score(out.response) == 1.0
    print(f"\nAnswer: {out.response}")
    print(f"Expected: {task.gold} -> {'correct' if correct else 'not correct'}")
    print(f"Stop reason: {out.stop_reason}; {out.iterations} turns; {out.execution_time:.1f} s")
    if out.error:
        print(f"Error: {out.error}")
    for model, usage in out.usage_summary.model_usage_summaries.items():
        cost = "n/a" if usage.total_cost is None else f"${usage.total_cost:.4f}"
        print(
            f"  {model}: {usage.total_calls} calls, {usage.total_input_tokens:,} in / "
            f"{usage.total_output_tokens:,} out tokens, cost {cost}"
        )
    return 0 if correct else 1


def _provider_from_env() -> tuple[str, str, str] | None:
    for env_var, backend, model in PROVIDERS:
        if os.environ.get(env_var):
            return env_var, backend, model
    return None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/models", timeout=3):
            return True
    except OSError:
        return False


def _server_script() -> Path | None:
    """scripts/model_server.sh of the checkout this package runs from, else of the cwd."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        script = root / "scripts" / "model_server.sh"
        if script.is_file():
            return script
    return None


def _port_taken(port: int) -> bool:
    """True when something on this machine already listens on `port` (127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _server_ports() -> tuple[str, dict[str, str]]:
    """The URL the demo's model server will answer at, and the script's environment.

    The default port may be held by another program (not a model server, or the URL would
    have answered): then the server starts on free ports instead of failing to bind. A URL the
    user chose (RLM_LOCAL_MODEL_URL, RLM_MODEL_PORT) is kept as given.
    """
    env = dict(os.environ)
    chosen = "RLM_LOCAL_MODEL_URL" in os.environ or "RLM_MODEL_PORT" in os.environ
    if chosen or not _port_taken(DEFAULT_MODEL_PORT):
        return LOCAL_URL, env
    model_port, proxy_port = _free_port(), _free_port()
    env["RLM_MODEL_PORT"], env["RLM_PROXY_PORT"] = str(model_port), str(proxy_port)
    print(
        f"Port {DEFAULT_MODEL_PORT} is taken by another program: the model server uses port "
        f"{model_port} instead.",
        flush=True,
    )
    return f"http://127.0.0.1:{model_port}/v1", env


def _ensure_local_model() -> str | None:
    """The URL of a local model that answers, started with scripts/model_server.sh if needed;
    None (after saying why) when there is none."""
    if _answers(LOCAL_URL):
        return LOCAL_URL
    script = _server_script()
    bash = shutil.which("bash")
    if script is None or bash is None:
        _fail(
            f"no local model answers at {LOCAL_URL}, and scripts/model_server.sh (which starts "
            "one) is not here: run rlm demo from an rlm checkout, point RLM_LOCAL_MODEL_URL at "
            "an OpenAI-compatible server, or set a provider key."
        )
        return None
    url, env = _server_ports()
    if url != LOCAL_URL and _answers(url):
        return url
    print(
        f"Starting the local model server ({script.parent.name}/{script.name} start model).\n"
        "The first start builds llama.cpp from source (20-40 minutes on 2 cores); later "
        "starts take seconds.",
        flush=True,
    )
    logs = script.parents[1] / ".rlm" / "model-server"
    try:
        subprocess.run(
            [bash, str(script), "start", "model"],
            check=True,
            timeout=SERVER_START_TIMEOUT,
            env=env,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        _fail(f"the local model server did not start ({exc}); its logs are in {logs}/.")
        return None
    if not _answers(url):
        _fail(
            f"the model server started but nothing answers at {url}; check "
            f"RLM_LOCAL_MODEL_URL and RLM_MODEL_PORT, and the logs in {logs}/."
        )
        return None
    print("The local model server is running (stop it with scripts/model_server.sh stop).\n")
    return url


def _fail(message: str) -> None:
    print(f"rlm demo: {message}", file=sys.stderr, flush=True)


def _scripted_root(messages: list[Message]) -> str:
    """The code a good model writes for a needle search: filter in Python, ask, verify."""
    from rlm.bench import sniah

    question = messages[1]["content"]
    turn = sum(1 for m in messages if m["role"] == "assistant")
    if turn == 0:
        return (
            "First I look at the shape of the context.\n"
            f"{FENCE}repl\nprint(type(context).__name__, len(context))\n"
            f"print(context[:300])\n{FENCE}"
        )
    if turn == 1:
        key = sniah.parse_question(question)
        return (
            "The document is too long to read at once. I split it into chunks, keep the ones "
            "that mention the key, and ask a sub-LLM to read each of them.\n"
            f"{FENCE}repl\n"
            f"key = {key!r}\n"
            f"size = {CHUNK_CHARS}\n"
            "chunks = [context[i:i + size] for i in range(0, len(context), size)]\n"
            "candidates = [c for c in chunks if key in c] or chunks\n"
            "print(len(chunks), 'chunks,', len(candidates), 'mention the key')\n"
            "replies = llm_query_batched([\n"
            "    f'{c}\\n\\nWhat is the special magic number for {key} in the text above? '\n"
            "    'Reply with the number only.'\n"
            "    for c in candidates\n"
            "])\n"
            "print(replies)\n"
            f"{FENCE}"
        )
    return (
        "I check the sub-LLM's answers against the text itself before answering.\n"
        f"{FENCE}repl\n"
        "import re\n"
        "said = [n for r in replies for n in re.findall(r'\\d{7}', r)]\n"
        "found = re.findall(re.escape(key) + r' is: (\\d+)', context)\n"
        "print('sub-LLM said:', said, '| verified in the text:', found)\n"
        "FINAL(found[0] if found else (said[0] if said else 'not found'))\n"
        f"{FENCE}"
    )
