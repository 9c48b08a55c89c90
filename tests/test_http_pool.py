"""The HTTP layer under the SDK clients: small pools under load, one SSL context, no leaks."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from rlm.clients._http_pool import PooledTransport, fast_http_client  # noqa: E402
from rlm.clients._tls import shared_ssl_context  # noqa: E402
from rlm.clients.openai import OpenAIClient  # noqa: E402
from rlm.testing import ProviderSimulator  # noqa: E402

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_concurrent_requests_spread_over_small_pools() -> None:
    transport = PooledTransport(requests_per_pool=8, max_pools=4)

    async def main(url: str) -> list[int]:
        async with httpx.AsyncClient(transport=transport) as client:

            async def one() -> int:
                response = await client.post(url, json=BODY, headers={"authorization": "Bearer x"})
                return response.status_code

            sequential = [await one() for _ in range(5)]
            assert transport.pools == 1  # one at a time: one pool, its connection reused
            concurrent = await asyncio.gather(*(one() for _ in range(100)))
            assert transport.pools == 4  # grew to the cap, then queued within the pools
            assert sum(transport._load) == 0  # every slot came back
            return sequential + list(concurrent)

    with ProviderSimulator("ok", latency=0.05) as sim:
        statuses = asyncio.run(main(sim.openai_base_url + "/chat/completions"))
        assert sim.stats["max_in_flight"] <= 32
    assert statuses == [200] * 105


def test_a_failed_request_returns_its_slot() -> None:
    transport = PooledTransport()

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get("http://127.0.0.1:9/")  # the discard port: refused
        assert sum(transport._load) == 0

    asyncio.run(main())


def test_one_ssl_context_for_every_client() -> None:
    first, second = fast_http_client(openai), fast_http_client(openai)
    try:
        assert shared_ssl_context() is shared_ssl_context()
        assert first is not second
    finally:
        asyncio.run(first.aclose())
        asyncio.run(second.aclose())


CLIENTS = {
    "openai": 'OpenAIClient("m", base_url=sim.openai_base_url, api_key="x")',
    "openai_sdk": 'OpenAIClient("m", base_url=sim.openai_base_url, api_key="x", direct_http=False)',
    "anthropic": 'AnthropicClient("m", base_url=sim.anthropic_base_url, api_key="x")',
    "anthropic_sdk": (
        'AnthropicClient("m", base_url=sim.anthropic_base_url, api_key="x", direct_http=False)'
    ),
    "gemini": 'GeminiClient("m", base_url=sim.gemini_base_url, api_key="x")',
}


@pytest.mark.skipif(
    importlib.util.find_spec("httpx_aiohttp") is None, reason="httpx-aiohttp not installed"
)
@pytest.mark.parametrize("kind", list(CLIENTS))
def test_unclosed_clients_leave_no_unclosed_session_warnings(kind: str) -> None:
    pytest.importorskip("anthropic" if kind.startswith("anthropic") else "openai")
    pytest.importorskip("google.genai" if kind == "gemini" else "openai")
    script = f"""
import gc, time
from rlm import RLM
from rlm.clients.anthropic import AnthropicClient
from rlm.clients.gemini import GeminiClient
from rlm.clients.openai import OpenAIClient
from rlm.testing import ProviderSimulator
sim = ProviderSimulator("FINAL(ok)")
sim.start()
client = {CLIENTS[kind]}
print(client.respond("hi").text)
del client  # never closed: collected
gc.collect()
time.sleep(0.3)
client = {CLIENTS[kind]}
print(client.respond("hi").text)  # never closed: still alive at exit
rlm = RLM(backend="openai", backend_kwargs={{"model_name": "m", "base_url": sim.openai_base_url,
          "api_key": "x"}})
print(rlm.completion("ctx").response)  # never closed: still alive at exit
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["FINAL(ok)", "FINAL(ok)", "ok"]
    assert "Unclosed" not in done.stderr, done.stderr[:500]


def test_a_client_rebuilt_for_another_loop_closes_the_old_one() -> None:
    with ProviderSimulator("ok") as sim:
        client = OpenAIClient("m", base_url=sim.openai_base_url, api_key="x")
        try:
            assert client.respond("a").text == "ok"  # the shared rlm loop
            first = client._client
            assert asyncio.run(client.arespond("b")).text == "ok"  # a private loop
            assert client._client is not first
            assert client.respond("c").text == "ok"  # back on the shared loop
        finally:
            client.close()
        assert client._client is None and client._finalizer is None
