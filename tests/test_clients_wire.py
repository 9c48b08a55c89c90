"""The provider clients over the official SDKs, against the provider simulator over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

# LiteLLM fetches its price map from the internet on import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from rlm.aio import run_sync
from rlm.clients import get_client
from rlm.clients._http_errors import is_transport_failure, parse_retry_after
from rlm.clients.anthropic import AnthropicClient, anthropic_usage, to_anthropic
from rlm.clients.azure_openai import AzureOpenAIClient
from rlm.clients.base import AdaptiveLimiter, BaseLM
from rlm.clients.gemini import GeminiClient, gemini_usage
from rlm.clients.litellm import LiteLLMClient
from rlm.clients.openai import (
    OpenAIClient,
    OpenRouterClient,
    VLLMClient,
    chat_completion_response,
)
from rlm.clients.portkey import PortkeyClient
from rlm.clients.vercel import VercelClient
from rlm.core.types import LMResponse, Usage
from rlm.errors import ConfigurationError, ContextWindowExceededError, ProviderError
from rlm.testing.simulator import FaultPlan, ProviderSimulator, SimReply, SimRequest

pytestmark = pytest.mark.timeout(120)

KEY = "sk-test"
KEY_ENV_VARS = (
    "OPENAI_API_KEY",
    "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_ENDPOINT",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "OPENROUTER_API_KEY",
    "AI_GATEWAY_API_KEY",
    "PORTKEY_API_KEY",
    "OPENAI_BASE_URL",
    "VLLM_BASE_URL",
)


_SDK_OF = {"anthropic": "anthropic", "gemini": "google.genai", "portkey": "portkey_ai"}


def _make(kind: str, sim: ProviderSimulator, model: str = "sim-model", **kw: Any) -> BaseLM:
    """A client of `kind`; "<kind>_sdk" is the same client sending every request via its SDK."""
    if kind.endswith("_sdk"):
        return _make(kind.removesuffix("_sdk"), sim, model, direct_http=False, **kw)
    pytest.importorskip(_SDK_OF.get(kind, "litellm" if kind.startswith("litellm") else "openai"))
    if kind == "openai":
        return OpenAIClient(model, api_key=KEY, base_url=sim.openai_base_url, **kw)
    if kind == "azure":
        return AzureOpenAIClient(model, api_key=KEY, azure_endpoint=sim.azure_endpoint, **kw)
    if kind == "openrouter":
        return OpenRouterClient(model, api_key=KEY, base_url=sim.openai_base_url, **kw)
    if kind == "vercel":
        return VercelClient(model, api_key=KEY, base_url=sim.openai_base_url, **kw)
    if kind == "vllm":
        return VLLMClient(model, base_url=sim.openai_base_url, **kw)
    if kind == "anthropic":
        return AnthropicClient(model, api_key=KEY, base_url=sim.anthropic_base_url, **kw)
    if kind == "gemini":
        return GeminiClient(model, api_key=KEY, base_url=sim.gemini_base_url, **kw)
    if kind.startswith("litellm"):
        litellm = pytest.importorskip("litellm")
        litellm.suppress_debug_info = True  # no "Provider List" banners on every error
    if kind == "litellm_openai":
        return LiteLLMClient(f"openai/{model}", api_key=KEY, base_url=sim.openai_base_url, **kw)
    if kind == "litellm_anthropic":
        return LiteLLMClient(f"anthropic/{model}", api_key=KEY, base_url=sim.url, **kw)
    if kind == "portkey":
        return PortkeyClient(
            model, api_key=KEY, base_url=sim.openai_base_url, provider="openai", **kw
        )
    raise AssertionError(kind)


ALL = [
    "openai",
    "openai_sdk",
    "azure",
    "azure_sdk",
    "openrouter",
    "vercel",
    "vllm",
    "anthropic",
    "anthropic_sdk",
    "gemini",
    "litellm_openai",
    "litellm_anthropic",
    "portkey",
]
# One per SDK, and the openai and anthropic clients both sending directly and via their SDK.
SDKS = ["openai", "openai_sdk", "anthropic", "anthropic_sdk", "gemini", "litellm_openai", "portkey"]
WIRE = {k: "openai" for k in ALL} | {
    "anthropic": "anthropic",
    "anthropic_sdk": "anthropic",
    "litellm_anthropic": "anthropic",
    "gemini": "gemini",
}


@pytest.fixture(autouse=True)
def _no_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in KEY_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def _echo(request: SimRequest) -> str:
    return f"echo:{request.messages[-1]['content']}"


# One simulator and one client per (kind, SDK-level options) for the whole module: building an
# SDK client costs a TLS context (~0.2 s on a slow box), and reuse is how rlm runs them anyway.
_POOL: dict[tuple[Any, ...], BaseLM] = {}


@pytest.fixture(scope="module")
def server() -> Iterator[ProviderSimulator]:
    with ProviderSimulator(reply=_echo) as simulator:
        yield simulator
        for client in _POOL.values():
            client.close()
        _POOL.clear()


@pytest.fixture
def sim(server: ProviderSimulator) -> ProviderSimulator:
    """The module's simulator, reset to its defaults for this test."""
    server.reply = _echo
    server.latency = 0.0
    server.faults = FaultPlan()
    server.known_models = None
    server.context_window = None
    server.prompt_cache = True
    server.clear_cache()
    server.requests.clear()
    return server


def client_for(
    kind: str,
    sim: ProviderSimulator,
    *,
    model: str = "sim-model",
    sampling_args: dict[str, Any] | None = None,
    max_retries: int = 4,
    retry_base_delay: float = 0.001,
    retry_max_delay: float = 0.2,
    max_concurrency: int = 128,
    **sdk_options: Any,
) -> BaseLM:
    """A pooled client of `kind`; the BaseLM settings (retries, limiter, ...) are fresh."""
    key = (kind, model, json.dumps(sdk_options, sort_keys=True))
    client = _POOL.get(key)
    if client is None:
        client = _POOL[key] = _make(kind, sim, model, **sdk_options)
    client.sampling_args = dict(sampling_args or {})
    client.max_retries = max_retries
    client.retry_base_delay = retry_base_delay
    client.retry_max_delay = retry_max_delay
    client.limiter = AdaptiveLimiter(max_concurrency)
    return client


def _gather(client: BaseLM, prompts: list[Any], **sampling: Any) -> list[Any]:
    async def main() -> list[Any]:
        return await asyncio.gather(
            *(client.arespond(p, **sampling) for p in prompts), return_exceptions=True
        )

    return run_sync(main(), timeout=90)


def _system_on_wire(kind: str, body: dict[str, Any]) -> str:
    wire = WIRE[kind]
    if wire == "openai":
        first = body["messages"][0]
        assert first["role"] == "system"
        return str(first["content"])
    if wire == "anthropic":
        system = body["system"]
        return system if isinstance(system, str) else "".join(b["text"] for b in system)
    return "".join(p["text"] for p in body["systemInstruction"]["parts"])


# -- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL)
def test_round_trip_with_a_string_and_with_messages(kind: str, sim: ProviderSimulator) -> None:
    client = client_for(kind, sim)
    out = client.respond("hello")
    assert out.text == "echo:hello"
    assert out.model.endswith("sim-model")
    assert out.usage.input_tokens > 0 and out.usage.output_tokens > 0
    assert sim.requests[-1].wire == WIRE[kind]
    assert sim.requests[-1].messages == [{"role": "user", "content": "hello"}]

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
    ]
    out = client.respond(messages)
    assert out.text == "echo:second"
    seen = sim.requests[-1]
    assert seen.system == "Be brief."
    assert [m["role"] for m in seen.messages] == ["user", "assistant", "user"]
    assert _system_on_wire(kind, seen.body) == "Be brief."
    assert messages[1] == {"role": "user", "content": "first"}  # the caller's list is untouched


@pytest.mark.parametrize("kind", ALL)
def test_sampling_args_reach_the_wire(kind: str, sim: ProviderSimulator) -> None:
    client = client_for(kind, sim, sampling_args={"temperature": 0.25, "seed": 7})
    client.respond("hi", top_p=0.5, max_tokens=77, stop=["STOP"])
    body = sim.requests[-1].body
    wire = WIRE[kind]
    if wire == "openai":
        openai_itself = kind.removesuffix("_sdk") in ("openai", "azure")
        field = "max_completion_tokens" if openai_itself else "max_tokens"
        assert body[field] == 77
        assert (body["temperature"], body["top_p"], body["seed"]) == (0.25, 0.5, 7)
        assert body["stop"] == ["STOP"]
    elif wire == "anthropic":
        assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.25, 0.5, 77)
        assert body["stop_sequences"] == ["STOP"]
        assert "seed" not in body and "stop" not in body  # Anthropic has no seed
    else:
        config = body["generationConfig"]
        assert (config["temperature"], config["topP"], config["seed"]) == (0.25, 0.5, 7)
        assert config["maxOutputTokens"] == 77
        assert config["stopSequences"] == ["STOP"]


def test_anthropic_max_tokens_default_and_openai_passthrough(sim: ProviderSimulator) -> None:
    client_for("anthropic", sim).respond("hi")
    assert sim.requests[-1].body["max_tokens"] == 4096
    openai_client = client_for("openai", sim)
    openai_client.respond("hi", prompt_cache_key="run-1", logit_bias={"50256": -100})
    body = sim.requests[-1].body
    assert body["prompt_cache_key"] == "run-1"
    assert body["logit_bias"] == {"50256": -100}
    openai_client.respond("hi", some_vendor_field={"x": 1})  # unknown: sent via extra_body
    assert sim.requests[-1].body["some_vendor_field"] == {"x": 1}


def test_one_sdk_client_per_object_reused_and_rebuilt_after_close(sim: ProviderSimulator) -> None:
    client = OpenAIClient("m", api_key=KEY, base_url=sim.openai_base_url)
    client.respond("a")
    first = client._client
    client.respond("b")
    assert client._client is first
    client.close()
    assert client._client is None
    assert client.respond("c").text == "echo:c"
    client.close()


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini", "portkey"])
def test_a_call_from_a_foreign_loop_does_not_break_later_calls(
    kind: str, sim: ProviderSimulator
) -> None:
    client = _make(kind, sim)
    try:
        assert asyncio.run(client.arespond("mine")).text == "echo:mine"  # a closed loop after
        assert client.respond("shared").text == "echo:shared"
    finally:
        client.close()


def test_keys_come_from_the_standard_env_vars(
    sim: ProviderSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[BaseLM] = []
    monkeypatch.setenv("OPENAI_API_KEY", "from-openai-env")
    made.append(OpenAIClient("m", base_url=sim.openai_base_url))
    made[-1].respond("hi")
    assert sim.requests[-1].headers["authorization"] == "Bearer from-openai-env"
    monkeypatch.setenv("GOOGLE_API_KEY", "from-google-env")
    made.append(GeminiClient("m", base_url=sim.gemini_base_url))
    made[-1].respond("hi")
    assert sim.requests[-1].headers["x-goog-api-key"] == "from-google-env"
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", sim.azure_endpoint)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "from-azure-env")
    made.append(AzureOpenAIClient("my-deployment", api_version="2024-10-21"))
    made[-1].respond("hi")
    seen = sim.requests[-1]
    assert seen.headers["api-key"] == "from-azure-env"
    assert seen.path == "/openai/deployments/my-deployment/chat/completions"
    client_for("vllm", sim).respond("hi")
    assert sim.requests[-1].headers["authorization"] == "Bearer EMPTY"
    for client in made:
        client.close()


@pytest.mark.parametrize(
    ("factory", "env_var"),
    [
        (lambda: OpenAIClient("m"), "OPENAI_API_KEY"),
        (lambda: AzureOpenAIClient("m", azure_endpoint="http://x"), "AZURE_OPENAI_API_KEY"),
        (lambda: AnthropicClient("m"), "ANTHROPIC_API_KEY"),
        (lambda: GeminiClient("m"), "GEMINI_API_KEY"),
        (lambda: OpenRouterClient("m"), "OPENROUTER_API_KEY"),
        (lambda: VercelClient("m"), "AI_GATEWAY_API_KEY"),
        (lambda: PortkeyClient("m"), "PORTKEY_API_KEY"),
        (lambda: AzureOpenAIClient("m", api_key=KEY), "AZURE_OPENAI_ENDPOINT"),
    ],
)
def test_missing_key_is_a_configuration_error_before_any_request(
    factory: Callable[[], BaseLM], env_var: str, sim: ProviderSimulator
) -> None:
    # As in the reference, a client (and an RLM) can be built without a key; the first call
    # then fails with a ConfigurationError naming the variable, before any request is sent.
    if env_var == "AZURE_OPENAI_ENDPOINT":  # not a key: still checked when the client is built
        with pytest.raises(ConfigurationError, match=env_var):
            factory()
        return
    client = factory()
    with pytest.raises(ConfigurationError, match=env_var):
        client.completion("hi")
    assert sim.requests == []


def test_unknown_options_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="max_retires"):
        OpenAIClient("m", api_key=KEY, max_retires=3)
    with pytest.raises(ConfigurationError, match="tempreature"):
        get_client("anthropic", {"model_name": "m", "api_key": KEY, "tempreature": 0.1})
    client = get_client("gemini", {"model_name": "m", "api_key": KEY, "max_retries": 1})
    assert isinstance(client, GeminiClient) and client.max_retries == 1


@pytest.mark.parametrize("kind", SDKS)
def test_default_headers_reach_the_wire(kind: str, sim: ProviderSimulator) -> None:
    client_for(kind, sim, default_headers={"X-Team": "rlm"}).respond("hi")
    assert sim.requests[-1].headers.get("x-team") == "rlm"


# -- usage ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [*SDKS, "azure", "litellm_anthropic"])
def test_usage_is_per_call_under_concurrency(kind: str, sim: ProviderSimulator) -> None:
    def reply(request: SimRequest) -> str:
        n = int(request.messages[-1]["content"].split()[-1])
        return "x" * (4 * n)

    sim.reply = reply
    sim.latency = 0.02
    sizes = [1 + (i * 7) % 50 for i in range(48)]
    results = _gather(client_for(kind, sim), [f"give me {n}" for n in sizes])
    for n, result in zip(sizes, results, strict=True):
        assert isinstance(result, LMResponse), result
        assert result.usage.output_tokens == n
        assert len(result.text) == 4 * n


LONG = "The quick brown fox jumps over the lazy dog. " * 200  # ~2250 tokens


@pytest.mark.parametrize("kind", ["openai", "azure", "gemini", "portkey"])
def test_cached_tokens_reported_on_a_repeated_long_prefix(
    kind: str, sim: ProviderSimulator
) -> None:
    client = client_for(kind, sim)
    history = [{"role": "system", "content": LONG}, {"role": "user", "content": "q1"}]
    first = client.respond(history)
    assert first.usage.cached_tokens == 0
    history += [{"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    second = client.respond(history)
    assert second.usage.cached_tokens >= 1024
    assert second.usage.input_tokens > second.usage.cached_tokens  # input counts every token


def test_anthropic_cache_breakpoints_and_usage(sim: ProviderSimulator) -> None:
    client = client_for("anthropic", sim)
    history = [{"role": "system", "content": LONG}, {"role": "user", "content": "q1"}]
    first = client.respond(history)
    body = sim.requests[-1].body
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert json.dumps(body).count("cache_control") == 2
    assert first.usage.cache_write_tokens > 0 and first.usage.cached_tokens == 0
    assert first.usage.input_tokens >= first.usage.cache_write_tokens

    history += [{"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    second = client.respond(history)
    assert second.usage.cached_tokens >= first.usage.cache_write_tokens
    assert second.usage.input_tokens > second.usage.cached_tokens
    assert "cache_control" not in history[0]  # markers go on copies

    sim.clear_cache()
    plain = client_for("anthropic", sim, prompt_caching=False)
    plain.respond(history)
    plain_usage = plain.respond(history).usage
    assert "cache_control" not in json.dumps(sim.requests[-1].body)
    assert plain_usage.cached_tokens == 0 and plain_usage.cache_write_tokens == 0


def test_anthropic_request_shape_rules() -> None:
    user_marked = {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "s1"},
        {"role": "system", "content": "s2"},
        {"role": "user", "content": [dict(user_marked), dict(user_marked), dict(user_marked)]},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": ""},
    ]
    system, turns = to_anthropic(messages, caching=True)
    assert [b["text"] for b in system] == ["s1", "s2"]
    assert [t["role"] for t in turns] == ["user"]  # merged; the empty assistant turn dropped
    markers = sum("cache_control" in b for b in [*system, *turns[0]["content"]])
    assert markers == 4  # three from the caller + one more allowed: never over four
    assert "cache_control" in system[-1] and "cache_control" not in turns[0]["content"][-1]
    assert "cache_control" not in messages[0]


def test_usage_without_a_usage_block_is_zeros_and_openrouter_cost_is_read() -> None:
    openai = pytest.importorskip("openai")
    base = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "served-model",
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}
        ],
    }
    bare = openai.types.chat.ChatCompletion.model_validate(base)
    out = chat_completion_response(bare, "asked", provider="openai")
    assert (out.text, out.model, out.usage) == ("hi", "served-model", Usage())
    usage = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12, "cost": 0.0042}
    priced = openai.types.chat.ChatCompletion.model_validate({**base, "usage": usage})
    reported = chat_completion_response(priced, "m", provider="openrouter", reports_cost=True)
    assert reported.usage.cost == 0.0042
    assert chat_completion_response(priced, "m", provider="openai").usage.cost is None
    assert anthropic_usage(None) == Usage() and gemini_usage(None) == Usage()


def test_litellm_reports_its_own_cost(sim: ProviderSimulator) -> None:
    out = client_for("litellm_openai", sim, model="gpt-4o-mini").respond("hi")
    assert out.usage.cost is not None and out.usage.cost > 0


def test_sim_reply_token_counts_pass_through(sim: ProviderSimulator) -> None:
    sim.reply = SimReply("x", input_tokens=1234, output_tokens=56)
    for kind in ("openai", "anthropic", "gemini"):
        usage = client_for(kind, sim).respond("hi").usage
        assert (usage.input_tokens, usage.output_tokens) == (1234, 56), kind


# -- retries and errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "count"),
    # The three SDKs with their own HTTP stacks take the full load; LiteLLM and Portkey wrap
    # the openai SDK and cost more CPU per call, so they take a quarter of it.
    [("openai", 256), ("anthropic", 256), ("gemini", 256), ("litellm_openai", 64), ("portkey", 64)],
)
def test_all_answered_under_thirty_percent_faults(
    kind: str, count: int, sim: ProviderSimulator
) -> None:
    sim.faults = FaultPlan(
        rate=0.3,
        kinds=("429", "500", "reset", "timeout"),
        retry_after=0.02,
        timeout_seconds=3.0,
    )
    client = client_for(
        kind, sim, timeout=1.5, max_retries=12, retry_base_delay=0.01, max_concurrency=32
    )
    before = dict(sim.stats["faults"])
    results = _gather(client, [f"p{i}" for i in range(count)])
    errors = [r for r in results if not isinstance(r, LMResponse)]
    assert errors == []
    assert [r.text for r in results] == [f"echo:p{i}" for i in range(count)]
    after = sim.stats["faults"]
    assert {k for k in after if after[k] > before.get(k, 0)} == {"429", "500", "reset", "timeout"}


@pytest.mark.parametrize("kind", ALL)
def test_retry_after_is_honoured(kind: str, sim: ProviderSimulator) -> None:
    sim.faults = FaultPlan(retry_after=0.3)
    client = client_for(kind, sim, retry_max_delay=5.0)
    sim.fail_next("429")
    assert client.respond("hi").text == "echo:hi"
    first, second = sim.requests[-2:]
    assert second.time - first.time >= 0.28  # backoff alone would be ~1 ms


@pytest.mark.parametrize("kind", ALL)
def test_server_error_after_retries_keeps_status_and_message(
    kind: str, sim: ProviderSimulator
) -> None:
    client = client_for(kind, sim, max_retries=2)
    sim.fail_next("500", n=3)
    with pytest.raises(ProviderError) as info:
        client.respond("hi")
    assert info.value.status_code == 500
    assert info.value.retryable
    assert "server had an error" in str(info.value)
    assert len(sim.requests) == 3


@pytest.mark.parametrize("kind", ALL)
def test_unknown_model_is_a_404_with_the_providers_message(
    kind: str, sim: ProviderSimulator
) -> None:
    sim.known_models = frozenset({"another-model"})
    with pytest.raises(ProviderError) as info:
        client_for(kind, sim).respond("hi")
    assert len(sim.requests) == 1  # not retried
    assert info.value.status_code == 404
    assert not info.value.retryable
    assert "sim-model" in str(info.value)
    assert not isinstance(info.value, ContextWindowExceededError)


@pytest.mark.parametrize("kind", ALL)
def test_context_window_overflow_is_its_own_error(kind: str, sim: ProviderSimulator) -> None:
    sim.context_window = 100
    with pytest.raises(ContextWindowExceededError) as info:
        client_for(kind, sim).respond("word " * 400)
    assert len(sim.requests) == 1
    assert info.value.status_code == 400
    assert "context window exceeded" in str(info.value)
    assert re.search(r"token|context", str(info.value))


@pytest.mark.parametrize("kind", SDKS)
def test_auth_errors_are_not_retried(kind: str, sim: ProviderSimulator) -> None:
    sim.fail_next("401")
    with pytest.raises(ProviderError) as info:
        client_for(kind, sim).respond("hi")
    assert info.value.status_code == 401
    assert not info.value.retryable
    assert "Incorrect API key" in str(info.value)
    assert len(sim.requests) == 1


@pytest.mark.parametrize("kind", [*SDKS, "azure", "litellm_anthropic"])
def test_limiter_drops_on_429_and_recovers_on_success(kind: str, sim: ProviderSimulator) -> None:
    sim.faults = FaultPlan(retry_after=0.001)
    client = client_for(kind, sim, max_concurrency=16, max_retries=6)
    sim.fail_next("429", n=3)
    assert client.respond("hi").text == "echo:hi"
    assert client.limiter.limit == 16 // 8 + 1  # halved three times, then one success
    seen = [client.limiter.limit]
    for _ in range(5):
        client.respond("hi")
        seen.append(client.limiter.limit)
    assert seen == list(range(3, 9))


def test_a_stalled_request_times_out_as_a_retryable_error(sim: ProviderSimulator) -> None:
    released = threading.Event()
    sim.reply = lambda request: "late" if released.wait(60) else "never released"
    client = client_for("openai", sim, timeout=0.5, max_retries=0)
    try:
        with pytest.raises(ProviderError) as info:
            client.respond("hi")
        # The provider still holds its answer: the client's own timeout ended the call.
        assert sim.stats["in_flight"] == 1
    finally:
        released.set()
    assert info.value.retryable and info.value.status_code is None
    assert len(sim.requests) == 1


# -- helpers and packaging -----------------------------------------------------------------------


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    later = datetime.now(UTC) + timedelta(seconds=30)
    waited = parse_retry_after({"retry-after": format_datetime(later, usegmt=True)})
    assert waited is not None and 25 <= waited <= 31
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None and parse_retry_after(None) is None


def test_importing_the_client_modules_imports_no_sdk() -> None:
    code = (
        "import sys\n"
        "import rlm.clients.openai, rlm.clients.azure_openai, rlm.clients.anthropic\n"
        "import rlm.clients.gemini, rlm.clients.litellm, rlm.clients.portkey\n"
        "bad = [m for m in ('openai', 'anthropic', 'google.genai', 'litellm', 'portkey_ai')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_transport_failures_are_recognised_across_http_stacks() -> None:
    httpx = pytest.importorskip("httpx")
    aiohttp = pytest.importorskip("aiohttp")
    assert is_transport_failure(httpx.ReadTimeout("slow"))
    assert is_transport_failure(httpx.ConnectError("refused"))
    assert is_transport_failure(aiohttp.ServerDisconnectedError())
    assert is_transport_failure(TimeoutError())
    assert not is_transport_failure(ValueError("bad"))


def test_stream_is_never_requested(sim: ProviderSimulator) -> None:
    for kind in ("openai", "anthropic", "gemini"):
        assert client_for(kind, sim).respond("hi", stream=True).text == "echo:hi"
        assert "stream" not in sim.requests[-1].body, kind


def test_vercel_reads_the_gateway_key_and_sends_max_tokens_by_that_name(
    sim: ProviderSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference's `backend="vercel"` kwargs and key variable work unchanged."""
    assert VercelClient.default_base_url == "https://ai-gateway.vercel.sh/v1"
    monkeypatch.setenv("AI_GATEWAY_API_KEY", "from-gateway-env")
    client = get_client(
        "vercel",
        {
            "model_name": "anthropic/claude-sonnet-4.5",
            "base_url": sim.openai_base_url,
            "sampling_args": {"max_tokens": 7},
        },
    )
    try:
        assert isinstance(client, VercelClient)
        assert client.respond("hi").text == "echo:hi"
        seen = sim.requests[-1]
        assert seen.headers["authorization"] == "Bearer from-gateway-env"
        assert seen.model == "anthropic/claude-sonnet-4.5"
        assert seen.body["max_tokens"] == 7 and "max_completion_tokens" not in seen.body
    finally:
        client.close()
