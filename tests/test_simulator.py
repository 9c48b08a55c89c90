"""The provider simulator over plain HTTP: shapes, usage, errors, faults, caching, concurrency."""

from __future__ import annotations

import http.client
import json
import math
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from rlm.testing import FaultPlan, ProviderSimulator, SimReply, SimRequest

pytestmark = pytest.mark.timeout(60)

OPENAI_AUTH = {"Authorization": "Bearer sk-test"}
ANTHROPIC_AUTH = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
GEMINI_AUTH = {"x-goog-api-key": "g-test"}


def call(
    sim: ProviderSimulator,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One request; returns (status, lower-cased headers, parsed JSON body)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection(sim.url.removeprefix("http://"), timeout=10)
    try:
        data = body if isinstance(body, bytes) else None if body is None else json.dumps(body)
        conn.request(
            method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})}
        )
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(raw)
    finally:
        if own:
            conn.close()


def openai_body(model: str = "gpt-4o", text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def anthropic_body(
    model: str = "claude-haiku-4-5", text: str = "hello", **extra: Any
) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def gemini_body(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}], **extra}


# (wire name, path, body factory, auth headers)
WIRES = {
    "openai": ("/v1/chat/completions", openai_body, OPENAI_AUTH),
    "anthropic": ("/v1/messages", anthropic_body, ANTHROPIC_AUTH),
    "gemini": (
        "/v1beta/models/gemini-2.5-flash:generateContent",
        lambda model="gemini-2.5-flash", text="hello", **kw: gemini_body(text, **kw),
        GEMINI_AUTH,
    ),
}


def gemini_path(model: str) -> str:
    return f"/v1beta/models/{model}:generateContent"


@pytest.fixture
def sim() -> Iterator[ProviderSimulator]:
    with ProviderSimulator(reply="simulated answer") as s:
        yield s


# -- shapes and usage ------------------------------------------------------------------------


def test_openai_chat_completion_shape_and_usage(sim: ProviderSimulator) -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]},
        ],
    }
    status, headers, data = call(sim, "POST", "/v1/chat/completions", body, OPENAI_AUTH)
    assert status == 200
    assert headers["x-request-id"].startswith("req_")
    assert data["id"].startswith("chatcmpl-")
    assert data["object"] == "chat.completion"
    assert isinstance(data["created"], int)
    assert data["model"] == "gpt-4o"
    choice = data["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": "simulated answer",
        "refusal": None,
        "annotations": [],
    }
    assert choice["finish_reason"] == "stop"
    prompt_tokens = math.ceil(len("You are terse.What is 2+2?") / 4)
    usage = data["usage"]
    assert usage["prompt_tokens"] == prompt_tokens
    assert usage["completion_tokens"] == math.ceil(len("simulated answer") / 4)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0

    req = sim.requests[-1]
    assert req.wire == "openai" and req.path == "/v1/chat/completions" and req.model == "gpt-4o"
    assert req.system == "You are terse."
    assert req.messages == [{"role": "user", "content": "What is 2+2?"}]
    assert req.body == body
    assert req.headers["authorization"] == "Bearer sk-test"


def test_openai_alias_path_and_azure_deployment(sim: ProviderSimulator) -> None:
    status, _, data = call(sim, "POST", "/chat/completions", openai_body(), OPENAI_AUTH)
    assert status == 200 and data["choices"][0]["message"]["content"] == "simulated answer"

    path = "/openai/deployments/my-deploy/chat/completions?api-version=2024-10-21"
    status, _, data = call(
        sim, "POST", path, {"messages": [{"role": "user", "content": "x"}]}, {"api-key": "k"}
    )
    assert status == 200
    assert data["model"] == "my-deploy"
    assert sim.requests[-1].model == "my-deploy"
    assert sim.requests[-1].path == "/openai/deployments/my-deploy/chat/completions"


def test_openai_models_listing() -> None:
    with ProviderSimulator(known_models=["m-b", "m-a"]) as sim:
        status, _, data = call(sim, "GET", "/v1/models", headers=OPENAI_AUTH)
        assert status == 200 and data["object"] == "list"
        assert [m["id"] for m in data["data"]] == ["m-a", "m-b"]
        status, _, data = call(sim, "GET", "/v1/models/m-a", headers=OPENAI_AUTH)
        assert status == 200 and data["id"] == "m-a"
        status, _, data = call(sim, "GET", "/v1/models/nope", headers=OPENAI_AUTH)
        assert status == 404 and data["error"]["code"] == "model_not_found"


def test_anthropic_message_shape_and_usage(sim: ProviderSimulator) -> None:
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 256,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "first"}]},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": "second"},
        ],
    }
    status, headers, data = call(sim, "POST", "/v1/messages", body, ANTHROPIC_AUTH)
    assert status == 200
    assert headers["request-id"].startswith("req_")
    assert data["type"] == "message" and data["role"] == "assistant"
    assert data["id"].startswith("msg_")
    assert data["model"] == "claude-haiku-4-5"
    assert data["content"] == [{"type": "text", "text": "simulated answer"}]
    assert data["stop_reason"] == "end_turn" and data["stop_sequence"] is None
    usage = data["usage"]
    assert usage["input_tokens"] == math.ceil(len("Be brief.firstreplysecond") / 4)
    assert usage["output_tokens"] == math.ceil(len("simulated answer") / 4)
    assert usage["cache_creation_input_tokens"] == 0
    assert usage["cache_read_input_tokens"] == 0

    req = sim.requests[-1]
    assert req.wire == "anthropic" and req.system == "Be brief."
    assert [m["role"] for m in req.messages] == ["user", "assistant", "user"]
    assert req.messages[0]["content"] == "first"


def test_anthropic_validation_like_the_real_api(sim: ProviderSimulator) -> None:
    body = anthropic_body()
    del body["max_tokens"]
    status, _, data = call(sim, "POST", "/v1/messages", body, ANTHROPIC_AUTH)
    assert status == 400
    assert data["type"] == "error"
    assert data["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in data["error"]["message"]

    body = anthropic_body()
    body["messages"].insert(0, {"role": "system", "content": "nope"})
    status, _, data = call(sim, "POST", "/v1/messages", body, ANTHROPIC_AUTH)
    assert status == 400 and "system" in data["error"]["message"]


def test_gemini_generate_content_shape_and_usage(sim: ProviderSimulator) -> None:
    body = {
        "systemInstruction": {"parts": [{"text": "Short answers."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "model", "parts": [{"text": "hello"}]},
            {"role": "user", "parts": [{"text": "again"}]},
        ],
        "generationConfig": {"temperature": 0.1},
    }
    status, _, data = call(sim, "POST", gemini_path("gemini-2.5-flash"), body, GEMINI_AUTH)
    assert status == 200
    candidate = data["candidates"][0]
    assert candidate["content"] == {"parts": [{"text": "simulated answer"}], "role": "model"}
    assert candidate["finishReason"] == "STOP"
    meta = data["usageMetadata"]
    assert meta["promptTokenCount"] == math.ceil(len("Short answers.hihelloagain") / 4)
    assert meta["candidatesTokenCount"] == math.ceil(len("simulated answer") / 4)
    assert meta["totalTokenCount"] == meta["promptTokenCount"] + meta["candidatesTokenCount"]
    assert "cachedContentTokenCount" not in meta  # the real API omits it when nothing is cached
    assert data["modelVersion"] == "gemini-2.5-flash"

    req = sim.requests[-1]
    assert req.wire == "gemini" and req.model == "gemini-2.5-flash"
    assert req.system == "Short answers."
    assert req.messages[1] == {"role": "assistant", "content": "hello"}


def test_gemini_v1_path_query_key_and_count_tokens(sim: ProviderSimulator) -> None:
    status, _, data = call(
        sim, "POST", "/v1/models/gemini-pro:generateContent?key=abc", gemini_body()
    )
    assert (
        status == 200 and data["candidates"][0]["content"]["parts"][0]["text"] == "simulated answer"
    )
    status, _, data = call(
        sim, "POST", "/v1beta/models/gemini-pro:countTokens", gemini_body("abcdefgh"), GEMINI_AUTH
    )
    assert status == 200 and data["totalTokens"] == 2


def test_reply_callable_sees_the_request_and_can_set_token_counts() -> None:
    seen: list[SimRequest] = []

    def reply(req: SimRequest) -> str | SimReply:
        seen.append(req)
        text = req.messages[-1]["content"]
        if text == "counted":
            return SimReply("x", input_tokens=1234, output_tokens=56)
        return text.upper()

    with ProviderSimulator(reply) as sim:
        _, _, data = call(
            sim, "POST", "/v1/chat/completions", openai_body(text="shout"), OPENAI_AUTH
        )
        assert data["choices"][0]["message"]["content"] == "SHOUT"
        _, _, data = call(
            sim, "POST", "/v1/messages", anthropic_body(text="counted"), ANTHROPIC_AUTH
        )
        assert data["usage"]["input_tokens"] == 1234 and data["usage"]["output_tokens"] == 56
    assert [r.wire for r in seen] == ["openai", "anthropic"]


def test_reply_exception_becomes_500_with_its_message() -> None:
    def reply(req: SimRequest) -> str:
        raise RuntimeError("no answer for you")

    with ProviderSimulator(reply) as sim:
        for wire, (path, make, auth) in WIRES.items():
            status, _, data = call(sim, "POST", path, make(), auth)
            assert status == 500, wire
            assert "no answer for you" in json.dumps(data)


def test_reply_longer_than_max_tokens_is_truncated() -> None:
    with ProviderSimulator("a" * 400) as sim:
        _, _, data = call(
            sim, "POST", "/v1/chat/completions", openai_body(max_tokens=10), OPENAI_AUTH
        )
        assert data["choices"][0]["finish_reason"] == "length"
        assert data["choices"][0]["message"]["content"] == "a" * 40
        assert data["usage"]["completion_tokens"] == 10
        body = anthropic_body()
        body["max_tokens"] = 5
        _, _, data = call(sim, "POST", "/v1/messages", body, ANTHROPIC_AUTH)
        assert data["stop_reason"] == "max_tokens" and data["usage"]["output_tokens"] == 5
        body = gemini_body(generationConfig={"maxOutputTokens": 3})
        _, _, data = call(sim, "POST", gemini_path("g"), body, GEMINI_AUTH)
        assert data["candidates"][0]["finishReason"] == "MAX_TOKENS"


# -- errors ----------------------------------------------------------------------------------


def test_missing_api_key_is_401_in_each_wire_shape(sim: ProviderSimulator) -> None:
    status, _, data = call(sim, "POST", "/v1/chat/completions", openai_body())
    assert status == 401 and data["error"]["type"] == "invalid_request_error"
    status, _, data = call(
        sim, "POST", "/v1/chat/completions", openai_body(), {"Authorization": "Bearer "}
    )
    assert status == 401
    status, _, data = call(
        sim, "POST", "/v1/messages", anthropic_body(), {"anthropic-version": "2023-06-01"}
    )
    assert status == 401 and data["error"]["type"] == "authentication_error"
    status, _, data = call(sim, "POST", gemini_path("g"), gemini_body())
    assert status == 401 and data["error"]["status"] == "UNAUTHENTICATED"


def test_unknown_model_is_404_in_each_wire_shape() -> None:
    with ProviderSimulator(known_models={"gpt-4o", "claude-haiku-4-5", "gemini-2.5-flash"}) as sim:
        status, _, data = call(
            sim, "POST", "/v1/chat/completions", openai_body("gpt-9"), OPENAI_AUTH
        )
        assert status == 404 and data["error"]["code"] == "model_not_found"
        status, _, data = call(
            sim, "POST", "/v1/messages", anthropic_body("claude-9"), ANTHROPIC_AUTH
        )
        assert status == 404 and data["error"]["type"] == "not_found_error"
        status, _, data = call(sim, "POST", gemini_path("gemini-9"), gemini_body(), GEMINI_AUTH)
        assert status == 404 and data["error"]["status"] == "NOT_FOUND"
        path = "/openai/deployments/nope/chat/completions?api-version=1"
        status, _, data = call(sim, "POST", path, openai_body(), {"api-key": "k"})
        assert status == 404 and data["error"]["code"] == "DeploymentNotFound"
        # known models are served
        status, _, _ = call(sim, "POST", "/v1/chat/completions", openai_body("gpt-4o"), OPENAI_AUTH)
        assert status == 200


def test_prompt_over_the_context_window_is_400_in_each_wire_shape() -> None:
    long_text = "x" * 400  # 100 tokens
    with ProviderSimulator(context_window=99) as sim:
        status, _, data = call(
            sim, "POST", "/v1/chat/completions", openai_body(text=long_text), OPENAI_AUTH
        )
        assert status == 400 and data["error"]["code"] == "context_length_exceeded"
        status, _, data = call(
            sim, "POST", "/v1/messages", anthropic_body(text=long_text), ANTHROPIC_AUTH
        )
        assert status == 400 and data["error"]["type"] == "invalid_request_error"
        assert "prompt is too long" in data["error"]["message"]
        status, _, data = call(sim, "POST", gemini_path("g"), gemini_body(long_text), GEMINI_AUTH)
        assert status == 400 and data["error"]["status"] == "INVALID_ARGUMENT"
        status, _, _ = call(
            sim, "POST", "/v1/chat/completions", openai_body(text="x" * 396), OPENAI_AUTH
        )
        assert status == 200


def test_streaming_is_refused_with_an_explanation(sim: ProviderSimulator) -> None:
    status, _, data = call(
        sim, "POST", "/v1/chat/completions", openai_body(stream=True), OPENAI_AUTH
    )
    assert status == 400 and "stream" in data["error"]["message"]
    status, _, data = call(sim, "POST", "/v1/messages", anthropic_body(stream=True), ANTHROPIC_AUTH)
    assert status == 400 and "stream" in data["error"]["message"]
    path = "/v1beta/models/g:streamGenerateContent"
    status, _, data = call(sim, "POST", path, gemini_body(), GEMINI_AUTH)
    assert status == 400 and "stream" in data["error"]["message"]


def test_bad_json_and_unknown_routes(sim: ProviderSimulator) -> None:
    status, _, data = call(sim, "POST", "/v1/chat/completions", b"{not json", OPENAI_AUTH)
    assert status == 400 and data["error"]["type"] == "invalid_request_error"
    status, _, _ = call(sim, "POST", "/v1/nothing", {}, OPENAI_AUTH)
    assert status == 404
    status, _, _ = call(sim, "GET", "/nothing")
    assert status == 404


# -- faults ----------------------------------------------------------------------------------


def test_fail_next_429_carries_retry_after_in_each_wire_shape() -> None:
    with ProviderSimulator(faults=FaultPlan(retry_after=0.25)) as sim:
        sim.fail_next("429", n=3)
        status, headers, data = call(
            sim, "POST", "/v1/chat/completions", openai_body(), OPENAI_AUTH
        )
        assert status == 429 and headers["retry-after"] == "0.25"
        assert headers["retry-after-ms"] == "250"
        assert data["error"]["code"] == "rate_limit_exceeded"
        status, headers, data = call(sim, "POST", "/v1/messages", anthropic_body(), ANTHROPIC_AUTH)
        assert status == 429 and data["error"]["type"] == "rate_limit_error"
        status, headers, data = call(sim, "POST", gemini_path("g"), gemini_body(), GEMINI_AUTH)
        assert status == 429 and data["error"]["status"] == "RESOURCE_EXHAUSTED"
        assert headers["retry-after"] == "0.25"
        status, _, _ = call(sim, "POST", "/v1/chat/completions", openai_body(), OPENAI_AUTH)
        assert status == 200
        assert sim.stats["faults"] == {"429": 3}


@pytest.mark.parametrize(
    ("kind", "status", "openai_type"),
    [
        ("500", 500, "server_error"),
        ("400", 400, "invalid_request_error"),
        ("401", 401, "invalid_request_error"),
    ],
)
def test_fail_next_http_errors(
    sim: ProviderSimulator, kind: str, status: int, openai_type: str
) -> None:
    sim.fail_next(kind)
    got, _, data = call(sim, "POST", "/v1/chat/completions", openai_body(), OPENAI_AUTH)
    assert got == status and data["error"]["type"] == openai_type
    got, _, _ = call(sim, "POST", "/v1/chat/completions", openai_body(), OPENAI_AUTH)
    assert got == 200


def test_fail_next_reset_aborts_the_connection(sim: ProviderSimulator) -> None:
    sim.fail_next("reset")
    with pytest.raises(ConnectionResetError) as info:
        call(sim, "POST", "/v1/chat/completions", openai_body(), OPENAI_AUTH)
    # An RST, not an orderly close (which http.client reports as RemoteDisconnected).
    assert not isinstance(info.value, http.client.RemoteDisconnected)
    status, _, _ = call(sim, "POST", "/v1/chat/completions", openai_body(), OPENAI_AUTH)
    assert status == 200
    assert sim.stats["faults"] == {"reset": 1}


def test_fail_next_timeout_stalls_then_closes_without_a_response() -> None:
    with ProviderSimulator(faults=FaultPlan(timeout_seconds=0.3)) as sim:
        sim.fail_next("timeout")
        started = time.monotonic()
        with pytest.raises(http.client.RemoteDisconnected):
            call(sim, "POST", "/v1/chat/completions", openai_body(), OPENAI_AUTH)
        assert time.monotonic() - started >= 0.25
        status, _, _ = call(sim, "POST", "/v1/chat/completions", openai_body(), OPENAI_AUTH)
        assert status == 200


def test_stop_ends_a_stalled_request_promptly() -> None:
    sim = ProviderSimulator(faults=FaultPlan(timeout_seconds=60))
    sim.start()
    sim.fail_next("timeout")
    errors: list[BaseException] = []

    def stalled() -> None:
        try:
            call(sim, "POST", "/v1/chat/completions", openai_body(), OPENAI_AUTH)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=stalled)
    thread.start()
    deadline = time.monotonic() + 5
    while sim.stats["in_flight"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    sim.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert errors and isinstance(errors[0], ConnectionError)


def test_fail_next_rejects_unknown_kinds(sim: ProviderSimulator) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        sim.fail_next("418")
    with pytest.raises(ValueError):
        FaultPlan(rate=1.5)


def _statuses(plan: FaultPlan, n: int) -> list[int]:
    with ProviderSimulator(faults=plan) as sim:
        conn = http.client.HTTPConnection(sim.url.removeprefix("http://"), timeout=10)
        try:
            return [
                call(sim, "POST", "/v1/chat/completions", openai_body(), OPENAI_AUTH, conn)[0]
                for _ in range(n)
            ]
        finally:
            conn.close()


def test_fault_rate_is_roughly_right_and_seeded() -> None:
    plan = FaultPlan(rate=0.3, kinds=("429", "500"), seed=7)
    statuses = _statuses(plan, 200)
    faults = sum(s != 200 for s in statuses)
    assert 35 <= faults <= 85  # binomial(200, 0.3): mean 60, sd 6.5
    assert {429, 500} <= set(statuses) <= {200, 429, 500}
    assert _statuses(FaultPlan(rate=0.3, kinds=("429", "500"), seed=7), 200) == statuses


# -- prompt caching --------------------------------------------------------------------------


def test_openai_prompt_cache_reports_the_longest_seen_prefix() -> None:
    system = {"role": "system", "content": "s" * 20_000}  # 5000 tokens
    first = [system, {"role": "user", "content": "q1"}]
    second = [*first, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    with ProviderSimulator() as sim:

        def cached(messages: list[dict[str, str]], model: str = "gpt-4o") -> int:
            body = {"model": model, "messages": messages}
            _, _, data = call(sim, "POST", "/v1/chat/completions", body, OPENAI_AUTH)
            return int(data["usage"]["prompt_tokens_details"]["cached_tokens"])

        assert cached(first) == 0
        prefix_tokens = math.ceil(20_002 / 4)  # system + q1
        assert cached(second) == prefix_tokens // 128 * 128
        assert cached(second) == math.ceil(20_006 / 4) // 128 * 128  # now all of it was seen
        assert cached(second, model="gpt-4o-mini") == 0  # caches are per model
        short = [{"role": "user", "content": "short"}]
        cached(short)
        assert cached(short) == 0  # under 1024 tokens: never cached


def test_prompt_cache_can_be_disabled() -> None:
    messages = [{"role": "user", "content": "p" * 20_000}]
    with ProviderSimulator(prompt_cache=False) as sim:
        for _ in range(2):
            _, _, data = call(
                sim,
                "POST",
                "/v1/chat/completions",
                {"model": "m", "messages": messages},
                OPENAI_AUTH,
            )
            assert data["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_gemini_implicit_cache_follows_the_prefix_rule() -> None:
    body = gemini_body("g" * 8_000)  # 2000 tokens
    with ProviderSimulator() as sim:
        _, _, data = call(sim, "POST", gemini_path("g"), body, GEMINI_AUTH)
        assert "cachedContentTokenCount" not in data["usageMetadata"]
        _, _, data = call(sim, "POST", gemini_path("g"), body, GEMINI_AUTH)
        assert data["usageMetadata"]["cachedContentTokenCount"] == 2000 // 128 * 128
        assert data["usageMetadata"]["promptTokenCount"] == 2000


def test_anthropic_cache_control_writes_then_reads() -> None:
    marked_system = [{"type": "text", "text": "s" * 20_000, "cache_control": {"type": "ephemeral"}}]

    def body(messages: list[dict[str, Any]], system: Any = marked_system) -> dict[str, Any]:
        return {
            "model": "claude-haiku-4-5",
            "max_tokens": 50,
            "system": system,
            "messages": messages,
        }

    simulator = ProviderSimulator()

    def usage(payload: dict[str, Any]) -> dict[str, int]:
        _, _, data = call(simulator, "POST", "/v1/messages", payload, ANTHROPIC_AUTH)
        u = data["usage"]
        return {
            k: u[k]
            for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        }

    with simulator:
        q = [{"role": "user", "content": "question"}]
        total = math.ceil(20_008 / 4)
        assert usage(body(q)) == {
            "input_tokens": total - 5000,
            "cache_creation_input_tokens": 5000,
            "cache_read_input_tokens": 0,
        }
        assert usage(body(q)) == {
            "input_tokens": total - 5000,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 5000,
        }
        # No breakpoint: no caching at all.
        plain = usage(body(q, system="s" * 20_000))
        assert plain == {
            "input_tokens": total,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }

        # A moving breakpoint on an append-only history reads the old prefix, writes the new part.
        def turn(text: str) -> dict[str, Any]:
            return {
                "role": "user",
                "content": [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}],
            }

        history = [{"role": "user", "content": [{"type": "text", "text": "u" * 8_000}]}]
        first = body([*history[:-1], turn("u" * 8_000)], system="sys")
        u1 = usage(first)
        assert u1["cache_creation_input_tokens"] == math.ceil(8_003 / 4)
        second = body(
            [
                {"role": "user", "content": [{"type": "text", "text": "u" * 8_000}]},
                {"role": "assistant", "content": "a" * 400},
                turn("next"),
            ],
            system="sys",
        )
        total2 = math.ceil((3 + 8_000 + 400 + 4) / 4)
        assert usage(second) == {
            "input_tokens": 0,
            "cache_creation_input_tokens": total2 - u1["cache_creation_input_tokens"],
            "cache_read_input_tokens": u1["cache_creation_input_tokens"],
        }


def test_anthropic_top_level_cache_control_marks_the_last_block() -> None:
    payload = {
        "model": "claude-haiku-4-5",
        "max_tokens": 50,
        "cache_control": {"type": "ephemeral"},
        "messages": [{"role": "user", "content": "m" * 4_000}],
    }
    with ProviderSimulator() as sim:
        _, _, data = call(sim, "POST", "/v1/messages", payload, ANTHROPIC_AUTH)
        assert data["usage"]["cache_creation_input_tokens"] == 1000
        _, _, data = call(sim, "POST", "/v1/messages", payload, ANTHROPIC_AUTH)
        assert data["usage"]["cache_read_input_tokens"] == 1000
        assert data["usage"]["input_tokens"] == 0


# -- transport -------------------------------------------------------------------------------


def test_keep_alive_reuses_one_connection(sim: ProviderSimulator) -> None:
    conn = http.client.HTTPConnection(sim.url.removeprefix("http://"), timeout=10)
    try:
        call(sim, "POST", "/v1/chat/completions", openai_body(), OPENAI_AUTH, conn)
        first_socket = conn.sock
        for _ in range(3):
            status, _, _ = call(
                sim, "POST", "/v1/chat/completions", openai_body(), OPENAI_AUTH, conn
            )
            assert status == 200
        assert conn.sock is first_socket
    finally:
        conn.close()


def test_256_concurrent_requests_with_latency_are_all_answered() -> None:
    def reply(req: SimRequest) -> str:
        return "answer-" + req.messages[-1]["content"]

    with ProviderSimulator(reply, latency=0.1) as sim:

        def one(i: int) -> str:
            _, _, data = call(
                sim, "POST", "/v1/chat/completions", openai_body(text=str(i)), OPENAI_AUTH
            )
            return str(data["choices"][0]["message"]["content"])

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=256) as pool:
            answers = list(pool.map(one, range(256)))
        elapsed = time.monotonic() - started
        print(f"256 concurrent requests at 100 ms latency: {elapsed:.3f} s")
        assert answers == [f"answer-{i}" for i in range(256)]
        assert sim.stats["requests"] == 256
        assert sim.stats["status"] == {200: 256}
        assert len(sim.requests) == 256


def test_latency_delays_answers_and_requests_are_recorded_on_arrival() -> None:
    with ProviderSimulator(latency=0.3) as sim:
        sent = time.time()
        status, _, _ = call(sim, "POST", "/v1/chat/completions", openai_body(), OPENAI_AUTH)
        answered = time.time()
        assert status == 200
        assert answered - sent >= 0.25
        assert sim.requests[0].time - sent < answered - sent - 0.2


def test_start_is_idempotent_and_url_needs_a_running_server() -> None:
    sim = ProviderSimulator()
    with pytest.raises(RuntimeError):
        _ = sim.url
    url = sim.start()
    try:
        assert sim.start() == url == sim.url
        assert sim.openai_base_url == url + "/v1"
        assert sim.anthropic_base_url == sim.gemini_base_url == sim.azure_endpoint == url
    finally:
        sim.stop()
    sim.stop()  # stopping twice is harmless


def test_openai_sdk_round_trip(sim: ProviderSimulator) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=sim.openai_base_url, api_key="x", max_retries=0)
    try:
        resp = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "ping"}]
        )
    finally:
        client.close()
    assert resp.choices[0].message.content == "simulated answer"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.prompt_tokens == 1
    assert sim.requests[-1].headers["authorization"] == "Bearer x"


def test_command_line_serves_until_interrupted() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlm.testing.simulator", "--port", "0", "--reply", "from the cli"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        url = first.split(" on ")[-1].strip()
        assert url.startswith("http://127.0.0.1:")
        conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
        conn.request("POST", "/v1/messages", json.dumps(anthropic_body()), ANTHROPIC_AUTH)
        data = json.loads(conn.getresponse().read())
        conn.close()
        assert data["content"][0]["text"] == "from the cli"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
