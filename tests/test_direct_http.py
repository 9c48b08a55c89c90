"""The direct HTTP path of the openai, Azure and anthropic clients against their SDK path.

The direct path must put the same request on the wire as the official SDK (the URL and headers
the SDK builds, computed without it for plain openai endpoints, recorded from it otherwise) and
raise the same errors for the same answers; these tests run the two side by side against the
provider simulator over real HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("openai")
pytest.importorskip("anthropic")
pytest.importorskip("aiohttp")

from rlm.clients._direct_http import env_proxy
from rlm.clients.anthropic import AnthropicClient
from rlm.clients.azure_openai import AzureOpenAIClient
from rlm.clients.base import BaseLM
from rlm.clients.openai import OpenAIClient
from rlm.errors import ConfigurationError, ProviderError
from rlm.testing import FaultPlan, ProviderSimulator, SimRequest

pytestmark = pytest.mark.timeout(120)

KEY = "sk-direct-test"
KINDS = ["openai", "azure", "anthropic"]
# Headers each HTTP stack sets for itself, per request or per connection.
TRANSPORT_HEADERS = {"content-length", "accept-encoding", "connection", "host"}


def make(kind: str, sim: ProviderSimulator, *, direct: bool, **kw: Any) -> BaseLM:
    common: dict[str, Any] = {
        "api_key": KEY,
        "direct_http": direct,
        "default_headers": {"X-Team": "rlm"},
        "max_retries": 0,
        **kw,
    }
    if kind == "openai":
        return OpenAIClient("sim-model", base_url=sim.openai_base_url, **common)
    if kind == "azure":
        return AzureOpenAIClient(
            "sim-deployment", azure_endpoint=sim.azure_endpoint, api_version="2024-10-21", **common
        )
    return AnthropicClient("sim-model", base_url=sim.anthropic_base_url, **common)


@pytest.fixture(scope="module")
def sim() -> Iterator[ProviderSimulator]:
    with ProviderSimulator(reply=lambda r: f"echo:{r.messages[-1]['content']}") as simulator:
        yield simulator


@pytest.fixture
def pair(request: pytest.FixtureRequest, sim: ProviderSimulator) -> Iterator[tuple[BaseLM, BaseLM]]:
    """(direct, sdk) clients of one kind, the simulator reset."""
    sim.faults = FaultPlan()
    sim.known_models = None
    sim.context_window = None
    sim.requests.clear()
    kind = request.param
    direct, through_sdk = make(kind, sim, direct=True), make(kind, sim, direct=False)
    yield direct, through_sdk
    direct.close()
    through_sdk.close()


def wire_view(request: SimRequest) -> tuple[str, dict[str, Any], dict[str, str]]:
    headers = {k: v for k, v in request.headers.items() if k not in TRANSPORT_HEADERS}
    return request.path, request.body, headers


@pytest.mark.parametrize("pair", KINDS, indirect=True)
def test_the_same_request_goes_on_the_wire(
    pair: tuple[BaseLM, BaseLM], sim: ProviderSimulator
) -> None:
    direct, through_sdk = pair
    sampling = {"temperature": 0.25, "max_tokens": 50, "stop": ["END"], "vendor_knob": {"a": 1}}
    prompt = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "héllo ✓"},  # non-ASCII survives either encoding
    ]
    for _ in range(2):  # the second direct call replays the learnt route
        assert direct.respond(prompt, **sampling).text == "echo:héllo ✓"
        assert through_sdk.respond(prompt, **sampling).text == "echo:héllo ✓"
    views = [wire_view(r) for r in sim.requests]
    assert len(views) == 4
    assert views[0] == views[1] == views[2] == views[3]
    path, body, headers = views[0]
    assert path.endswith(("/chat/completions", "/v1/messages"))
    assert body["vendor_knob"] == {"a": 1} and "extra_body" not in body
    assert headers["x-team"] == "rlm"
    assert headers["content-type"] == "application/json"
    assert KEY in (
        headers.get("authorization", "") + headers.get("api-key", "") + headers.get("x-api-key", "")
    )
    assert any(name.startswith(("x-stainless", "anthropic-version")) for name in headers)


@pytest.mark.parametrize("pair", KINDS, indirect=True)
@pytest.mark.parametrize("fault", ["429", "500", "401", "unknown-model", "context"])
def test_the_same_error_for_the_same_answer(
    pair: tuple[BaseLM, BaseLM], fault: str, sim: ProviderSimulator
) -> None:
    sim.faults = FaultPlan(retry_after=2.0)
    errors = []
    for client in pair:
        prompt = "hi"
        if fault == "unknown-model":
            sim.known_models = frozenset({"another-model"})
        elif fault == "context":
            sim.context_window = 10
            prompt = "word " * 100
        else:
            sim.fail_next(fault)
        with pytest.raises(ProviderError) as info:
            client.respond(prompt)
        errors.append(info.value)
    direct, through_sdk = errors

    def facts(error: ProviderError) -> tuple[Any, ...]:
        body = dict(error.body) if isinstance(error.body, dict) else error.body
        if isinstance(body, dict):
            body.pop("request_id", None)  # anthropic's: new for every answer
        return (
            type(error),
            str(error),
            error.status_code,
            error.retryable,
            json.dumps(body, sort_keys=True),
            error.retry_after,
        )

    assert facts(direct) == facts(through_sdk)
    assert direct.status_code is not None and direct.status_code >= 400
    if fault == "429":
        assert direct.retry_after == 2.0 and direct.retryable


@pytest.mark.parametrize("kind", KINDS)
def test_a_connection_failure_is_a_retryable_error(kind: str, sim: ProviderSimulator) -> None:
    sim.requests.clear()
    client = make(kind, sim, direct=True, timeout=0.5)
    try:
        sim.faults = FaultPlan(timeout_seconds=3.0)
        sim.fail_next("timeout")
        with pytest.raises(ProviderError) as stalled:
            client.respond("hi")
        sim.fail_next("reset")
        with pytest.raises(ProviderError) as reset:
            client.respond("hi")
    finally:
        client.close()
        sim.faults = FaultPlan()
    for info in (stalled, reset):
        assert info.value.retryable and info.value.status_code is None
        assert "connection failed" in str(info.value)


def test_an_answer_that_is_not_json_is_a_provider_error() -> None:
    with ProviderSimulator("ok") as sim:
        client = OpenAIClient("m", api_key=KEY, base_url=sim.url + "/not-an-api", max_retries=0)
        try:
            with pytest.raises(ProviderError) as info:
                client.respond("hi")
        finally:
            client.close()
    assert info.value.status_code == 404


def test_a_body_that_is_not_json_is_a_configuration_error(sim: ProviderSimulator) -> None:
    client = make("openai", sim, direct=True)
    try:
        with pytest.raises(ConfigurationError, match="not JSON"):
            client.respond("hi", temperature=float("nan"))
        with pytest.raises(ConfigurationError, match="not JSON"):
            client.respond("hi", vendor_knob=object())
    finally:
        client.close()


def test_direct_http_is_off_where_the_sdk_must_send_every_request() -> None:
    httpx = pytest.importorskip("httpx")
    assert OpenAIClient("m", api_key=KEY).direct_http
    assert not OpenAIClient("m", api_key=KEY, direct_http=False).direct_http
    token_provider: Callable[[], str] = lambda: "token"  # noqa: E731
    azure = AzureOpenAIClient(
        "d",
        api_key=KEY,
        azure_endpoint="http://example.invalid",
        client_kwargs={"azure_ad_token_provider": token_provider},
    )
    assert not azure.direct_http
    own = httpx.AsyncClient()
    assert not OpenAIClient("m", api_key=KEY, client_kwargs={"http_client": own}).direct_http
    with pytest.raises(ConfigurationError, match="http_client"):
        OpenAIClient("m", api_key=KEY, client_kwargs={"http_client": own}, direct_http=True)
    assert AnthropicClient("m", api_key=KEY, client_kwargs={"max_retries": 0}).direct_http


@pytest.mark.parametrize("direct", [True, False])
def test_env_proxy_is_used_and_no_proxy_respected(
    direct: bool, sim: ProviderSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both paths reach a host only through HTTP_PROXY (the simulator acts as the proxy)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", sim.url)
    sim.requests.clear()
    client = OpenAIClient(
        "m", api_key=KEY, base_url="http://api.proxied.invalid/v1", direct_http=direct
    )
    try:
        assert client.respond("via proxy").text == "echo:via proxy"
    finally:
        client.close()
    assert sim.requests[-1].headers["host"] == "api.proxied.invalid"
    assert sim.requests[-1].path == "/v1/chat/completions"

    monkeypatch.setenv("NO_PROXY", "proxied.invalid")
    client = OpenAIClient(
        "m",
        api_key=KEY,
        base_url="http://api.proxied.invalid/v1",
        direct_http=direct,
        max_retries=0,
    )
    try:
        with pytest.raises(ProviderError, match="connection failed"):
            client.respond("direct to a host that does not resolve")
    finally:
        client.close()


def test_env_proxy_reads_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    assert env_proxy("https://api.openai.com/v1/chat/completions") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert env_proxy("https://api.openai.com/v1/x") == "http://proxy.example:3128"
    assert env_proxy("http://api.openai.com/v1/x") is None
    monkeypatch.setenv("NO_PROXY", "openai.com,localhost")
    assert env_proxy("https://api.openai.com/v1/x") is None
    assert env_proxy("https://api.anthropic.com/v1/x") == "http://proxy.example:3128"


@pytest.mark.parametrize("kind", KINDS)
def test_a_redirect_is_an_error_and_the_key_goes_nowhere_else(
    kind: str, sim: ProviderSimulator
) -> None:
    """A provider address that redirects elsewhere: the other host never sees the request."""
    import http.server
    import threading

    seen: list[dict[str, str]] = []

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(dict(self.headers))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    elsewhere = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
    target = f"http://127.0.0.1:{elsewhere.server_address[1]}/steal"

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(307)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    redirect = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=redirect.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{redirect.server_address[1]}"
    kwargs: dict[str, Any] = {"api_key": KEY, "direct_http": True, "max_retries": 0}
    if kind == "openai":
        client: BaseLM = OpenAIClient("m", base_url=base + "/v1", **kwargs)
    elif kind == "azure":
        client = AzureOpenAIClient("d", azure_endpoint=base, api_version="2024-10-21", **kwargs)
    else:
        client = AnthropicClient("m", base_url=base, **kwargs)
    try:
        with pytest.raises(ProviderError, match="redirected") as info:
            client.respond("hi")
    finally:
        client.close()
        redirect.shutdown()
        elsewhere.shutdown()
    assert info.value.status_code == 307 and not info.value.retryable
    assert target in str(info.value)
    assert seen == []


@pytest.mark.parametrize(
    ("env", "options"),
    [
        ({"OPENAI_ORG_ID": "org-1", "OPENAI_PROJECT_ID": "proj-1"}, {}),
        ({"OPENAI_BASE_URL": "{sim}"}, {"base_url": None}),
        ({}, {"timeout": None}),
        ({}, {"timeout": 60}),
        ({}, {"default_headers": {"user-agent": "mine", "X-Stainless-Lang": "other"}}),
        ({}, {"base_url": "{sim}/"}),
    ],
)
def test_the_openai_request_built_without_the_sdk_is_the_sdks(
    env: dict[str, str],
    options: dict[str, Any],
    sim: ProviderSimulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The direct openai client computes the SDK's URL and headers itself (no SDK import):
    with the environment variables and settings it models, the wire shows the same request."""
    for name in ("OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(sim=sim.openai_base_url))
    kwargs = {"api_key": KEY, "max_retries": 0, "base_url": sim.openai_base_url}
    kwargs.update(
        {
            k: v.format(sim=sim.openai_base_url) if isinstance(v, str) else v
            for k, v in options.items()
        }
    )
    sim.requests.clear()
    clients = [OpenAIClient("sim-model", direct_http=d, **kwargs) for d in (True, False)]
    assert clients[0]._static_request("/chat/completions") is not None  # built without it
    try:
        for client in clients:
            assert client.respond("hi").text == "echo:hi"
    finally:
        for client in clients:
            client.close()
    direct, through_sdk = (wire_view(r) for r in sim.requests)
    assert direct == through_sdk
    assert direct[0] == "/v1/chat/completions"
