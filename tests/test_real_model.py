"""Every provider client on a real wire, against a real model: full `RLM.completion()` runs.

The root is scripted (its code is fixed), the sub-calls are answered by SmolLM2-135M-Instruct
served by llama.cpp, directly or through the LiteLLM proxy, which also speaks the Anthropic
Messages and Gemini generateContent APIs (scripts/model_server.sh starts both). Each test
asserts what only a real server can show: the model's own text came back through the client's
SDK, with the server's token counts, and the `max_tokens` the client sent was honoured.

Marked `realmodel` (`pytest -m "not realmodel"` leaves them out). Skipped when the servers do
not answer, unless RLM_REQUIRE_REAL_MODEL=1 (CI sets it): then that is a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rlm import RLM
from rlm.core.types import RLMChatCompletion

pytestmark = [pytest.mark.realmodel, pytest.mark.timeout(240)]

# LiteLLM fetches its price map from the internet on import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

LOCAL_URL = os.environ.get("RLM_LOCAL_MODEL_URL", "http://127.0.0.1:8765/v1")
MODEL = os.environ.get("RLM_LOCAL_MODEL_NAME", "smollm2")
PROXY_URL = os.environ.get("RLM_LITELLM_PROXY_URL", "http://127.0.0.1:8766")
PROXY_KEY = os.environ.get("RLM_LITELLM_PROXY_KEY", "sk-rlm-local-proxy")
REQUIRED = os.environ.get("RLM_REQUIRE_REAL_MODEL", "") not in ("", "0")
ROOT = "scripted-root"
MAX_TOKENS = 16
FENCE = "```"
CONTEXT = "Paris is the capital of France. Rome is the capital of Italy. Oslo is in Norway."
# One single call and a batch of two: both sub-call paths of the REPL, three requests in all.
# Each asks for more text than MAX_TOKENS allows, so every reply is cut at the cap.
ROOT_CODE = (
    f"{FENCE}repl\n"
    "facts = context.split('. ')\n"
    "first = llm_query('Write a long story about this: ' + facts[0])\n"
    "rest = llm_query_batched(['Write a long poem about this: ' + f for f in facts[1:3]])\n"
    "replies = [first, *rest]\n"
    "print(replies)\n"
    "FINAL_VAR('replies')\n"
    f"{FENCE}"
)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(200 <= response.status < 300)
    except OSError:
        return False


def _need(url: str, what: str) -> None:
    """Skip (fail under RLM_REQUIRE_REAL_MODEL=1) unless `url` answers."""
    if _answers(url):
        return
    message = f"{what} does not answer at {url} (start it: scripts/model_server.sh start)"
    if REQUIRED:
        pytest.fail(f"RLM_REQUIRE_REAL_MODEL is set but {message}")
    pytest.skip(message)


@pytest.fixture(scope="module")
def model_server() -> None:
    _need(LOCAL_URL + "/models", "the llama.cpp server")


@pytest.fixture(scope="module")
def proxy(model_server: None) -> None:
    _need(PROXY_URL + "/health/liveliness", "the LiteLLM proxy")


@dataclass(frozen=True)
class Case:
    """One client kind: its backend name, how it reaches the model, and whether via the proxy."""

    id: str
    backend: str
    kwargs: Callable[[], dict[str, Any]]
    via_proxy: bool


def _common(**sampling: Any) -> dict[str, Any]:
    return {
        "timeout": 120.0,
        "max_retries": 1,
        "sampling_args": {"temperature": 0.0, **sampling},
    }


CASES = [
    Case(
        "openai-direct",
        "openai",
        # The OpenAI client sends `max_completion_tokens` (current OpenAI models require it);
        # llama.cpp's server only reads `max_tokens`, so that one travels in the body too.
        lambda: {
            "model_name": MODEL,
            "base_url": LOCAL_URL,
            "api_key": "none",
            **_common(max_tokens=MAX_TOKENS, extra_body={"max_tokens": MAX_TOKENS}),
        },
        via_proxy=False,
    ),
    Case(
        "vllm-preset",
        "vllm",
        lambda: {"model_name": MODEL, "base_url": LOCAL_URL, **_common(max_tokens=MAX_TOKENS)},
        via_proxy=False,
    ),
    Case(
        "litellm-direct",
        "litellm",
        lambda: {
            "model_name": f"hosted_vllm/{MODEL}",
            "base_url": LOCAL_URL,
            **_common(max_tokens=MAX_TOKENS),
        },
        via_proxy=False,
    ),
    Case(
        "litellm-sdk-to-proxy",
        "litellm",
        lambda: {
            "model_name": f"litellm_proxy/{MODEL}",
            "base_url": PROXY_URL,
            "api_key": PROXY_KEY,
            **_common(max_tokens=MAX_TOKENS),
        },
        via_proxy=True,
    ),
    Case(
        "openai-via-proxy",
        "openai",
        lambda: {
            "model_name": MODEL,
            "base_url": PROXY_URL + "/v1",
            "api_key": PROXY_KEY,
            **_common(max_tokens=MAX_TOKENS),
        },
        via_proxy=True,
    ),
    Case(
        "anthropic-via-proxy",
        "anthropic",
        lambda: {
            "model_name": MODEL,
            "base_url": PROXY_URL,
            "api_key": PROXY_KEY,
            **_common(max_tokens=MAX_TOKENS),
        },
        via_proxy=True,
    ),
    Case(
        "gemini-via-proxy",
        "gemini",
        lambda: {
            "model_name": MODEL,
            "base_url": PROXY_URL,
            "api_key": PROXY_KEY,
            # google-genai >= 3 calls /v1/models/...; the proxy serves generateContent on /v1beta.
            "api_version": "v1beta",
            **_common(max_tokens=MAX_TOKENS),
        },
        via_proxy=True,
    ),
    Case(
        "portkey-via-proxy",
        "portkey",
        # The Portkey SDK puts its own key in x-portkey-api-key and a placeholder in
        # Authorization; the proxy authenticates by Authorization, so the key goes there.
        lambda: {
            "model_name": MODEL,
            "base_url": PROXY_URL + "/v1",
            "api_key": PROXY_KEY,
            "default_headers": {"Authorization": f"Bearer {PROXY_KEY}"},
            **_common(max_tokens=MAX_TOKENS),
        },
        via_proxy=True,
    ),
]


def _run(backend: str, kwargs: dict[str, Any]) -> RLMChatCompletion:
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"model_name": ROOT, "responses": [ROOT_CODE]},
        other_backends=[backend],
        other_backend_kwargs=[kwargs],
        max_iterations=2,
        max_timeout=200,
    )
    with rlm:
        return rlm.completion(CONTEXT, root_prompt="Which cities and countries are named?")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_full_completion_with_the_real_model_answering_sub_calls(
    case: Case, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue("proxy" if case.via_proxy else "model_server")
    out = _run(case.backend, case.kwargs())

    assert out.stop_reason == "final_answer", out.error
    replies = out.value
    assert isinstance(replies, list) and len(replies) == 3, replies
    for reply in replies:
        assert isinstance(reply, str) and reply.strip(), replies
        assert not reply.startswith("Error:"), replies

    usage = out.usage_summary.model_usage_summaries
    assert usage[ROOT].total_calls == 1
    sub = [summary for name, summary in usage.items() if name != ROOT]
    assert sum(s.total_calls for s in sub) == 3, usage
    assert all(s.total_input_tokens > 0 and s.total_output_tokens > 0 for s in sub), usage
    # The server's own counts: each prompt is a chat-templated request of 10+ tokens, and
    # each reply was cut at the max_tokens this client sent, so the cap crossed the wire.
    assert sum(s.total_input_tokens for s in sub) >= 3 * 10, usage
    assert sum(s.total_output_tokens for s in sub) == 3 * MAX_TOKENS, usage


def test_rlm_demo_without_a_key_runs_the_local_model_end_to_end(model_server: None) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")
    }
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "rlm.cli", "demo", "--length", "2048"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    output = result.stdout
    assert result.returncode in (0, 1), output + result.stderr
    assert "Running with the local model: no provider key is set" in output, output
    assert "SmolLM2-135M-Instruct via llama.cpp" in output, output
    assert "Starting the local model server" not in output, output  # it was already up
    assert "Answer: " in output and "Expected: " in output, output
    assert "Stop reason: final_answer" in output, output
    summary = output[output.index("Stop reason:") :]
    assert f"  {MODEL}: " in summary, output  # the sub-calls' usage, as the server reported it
