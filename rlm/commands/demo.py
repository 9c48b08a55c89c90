"""`rlm demo`: a complete RLM run over a generated long document.

The document is a seeded needle-in-a-haystack text (rlm.bench.sniah) far longer than the
sub-model's window. Which models run depends on what is available, and the output says so:
1. a provider key (OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY/GOOGLE_API_KEY): that
   provider's model is the root and answers the sub-calls;
2. otherwise the local real model (SmolLM2-135M-Instruct behind llama.cpp's OpenAI-compatible
   server, started by scripts/model_server.sh when it is not running) answers the sub-calls,
   and a scripted root writes the decomposition code a good model would write.
Exit status: 0 when the answer contains the needle's value, 1 when it does not, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import os
import shutil
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
LOCAL_URL = os.environ.get("RLM_LOCAL_MODEL_URL", "http://127.0.0.1:8765/v1")
LOCAL_MODEL = os.environ.get("RLM_LOCAL_MODEL_NAME", "smollm2")
CHUNK_CHARS = 12_000  # fits SmolLM2's 8K-token window with room for the question

FENCE = "```"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--length", type=int, default=16_384, help="document length in tokens")
    parser.add_argument("--seed", type=int, default=0, help="which generated document")
    parser.add_argument("--environment", default="local", help="where the code runs")
    parser.add_argument("--log-dir", default=None, help="write the trajectory here (JSONL)")
    parser.add_argument("--quiet", action="store_true", help="no live console view")
    parser.add_argument(
        "--offline",
        action="store_true",
        help="ignore provider keys and use the local real model",
    )


def main(args: argparse.Namespace) -> int:
    from rlm import RLM
    from rlm.bench import sniah

    task = sniah.generate(args.length, args.seed)
    print(
        f"rlm demo: a {len(task.context):,}-character document (~{task.approx_tokens:,} tokens) "
        f"with one hidden fact.\nQuestion: {task.question}\n"
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
        if not _ensure_local_model():
            return 2
        print(
            "No provider key is set (OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY), so this\n"
            f"demo runs a scripted root LM, and the real local model {LOCAL_MODEL} "
            f"(SmolLM2-135M-Instruct\nvia llama.cpp at {LOCAL_URL}) answers every sub-call. "
            "Set a key to use a real provider.\n"
        )
        kwargs.update(
            backend="scripted",
            backend_kwargs={"model_name": "scripted-root", "responses": _scripted_root},
            other_backends=["vllm"],
            other_backend_kwargs=[
                {"model_name": LOCAL_MODEL, "base_url": LOCAL_URL, "timeout": 300.0}
            ],
        )
    if args.log_dir:
        from rlm.logger import RLMLogger

        kwargs["logger"] = RLMLogger(log_dir=args.log_dir)
    if not args.quiet:
        kwargs["verbose"] = True
    with RLM(**kwargs) as rlm:
        out = rlm.completion(task.context, root_prompt=task.question)
    correct = task.score(out.response) == 1.0
    print(f"\nAnswer: {out.response}")
    print(f"Expected: {task.gold} -> {'correct' if correct else 'not correct'}")
    print(f"Stop reason: {out.stop_reason}; {out.iterations} turns; {out.execution_time:.1f} s")
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


def _ensure_local_model() -> bool:
    """Start the local model server with scripts/model_server.sh when it is not running."""
    if _answers(LOCAL_URL):
        return True
    script = Path.cwd() / "scripts" / "model_server.sh"
    if not script.exists() or shutil.which("bash") is None:
        print(
            f"rlm demo: no provider key is set and no local model answers at {LOCAL_URL}.\n"
            "Run scripts/model_server.sh start from an rlm checkout, or set a provider key.",
            file=sys.stderr,
        )
        return False
    print("Starting the local model server (scripts/model_server.sh start)...", flush=True)
    subprocess.run(["bash", str(script), "start"], check=True)
    return _answers(LOCAL_URL)


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
            "    f'Reply with only the special magic number for {key} in this text.\\n\\n{c}'\n"
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
