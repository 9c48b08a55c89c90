"""What a fresh process loads before and during its first completion.

The openai client's direct HTTP path builds the SDK's request itself, so a process that only
talks to an OpenAI-compatible endpoint never imports the SDK (0.3-0.8 s of pydantic types);
clients that need the SDK still get it, and a missing SDK is still a typed error. Speed itself
is measured in benchmarks/run.py (B14), not here.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("openai")
pytest.importorskip("anthropic")
pytest.importorskip("aiohttp")

from rlm.aio import run_sync
from rlm.clients.anthropic import AnthropicClient
from rlm.clients.openai import OpenAIClient
from rlm.errors import MissingDependencyError
from rlm.testing import ProviderSimulator

pytestmark = pytest.mark.timeout(120)

SDKS = ("openai", "anthropic", "google.genai", "litellm", "portkey_ai")

CHILD = """
import json, sys
sdks = {sdks!r}
loaded = lambda: sorted(m for m in sdks if m in sys.modules)
import rlm
after_import = loaded()
kwargs = {{"model_name": "m", "base_url": sys.argv[1], "api_key": "sk-test"}}
rlm_ = rlm.RLM(backend="openai", backend_kwargs=kwargs)
after_build = loaded()
out = rlm_.completion("some context")
after_completion = loaded()
rlm_.close()
print(json.dumps({{"import": after_import, "build": after_build,
                  "completion": after_completion, "answer": out.response}}))
"""


def run_child(base_url: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD.format(sdks=SDKS), base_url],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_direct_http_openai_run_imports_no_provider_sdk() -> None:
    with ProviderSimulator("```repl\nFINAL('done')\n```") as sim:
        seen = run_child(sim.openai_base_url)
        headers = sim.requests[-1].headers
    assert seen == {"import": [], "build": [], "completion": [], "answer": "done"}
    assert headers["authorization"] == "Bearer sk-test"
    assert headers["user-agent"].startswith("AsyncOpenAI/Python ")


def test_a_setting_only_the_sdk_understands_makes_it_build_the_request() -> None:
    """OPENAI_CUSTOM_HEADERS is read by the SDK alone: the SDK is then imported and its
    headers reach the provider."""
    import os

    env = {**os.environ, "OPENAI_CUSTOM_HEADERS": "X-From-Env: yes"}
    with ProviderSimulator("```repl\nFINAL('done')\n```") as sim:
        seen = run_child(sim.openai_base_url, env)
        headers = sim.requests[-1].headers
    assert seen["answer"] == "done" and "openai" in seen["completion"]
    assert headers["x-from-env"] == "yes"


def test_concurrent_first_requests_learn_the_route_once() -> None:
    """Many first requests at once (a 256-way llm_query_batched) ask the SDK for one route,
    not one each."""
    built: list[object] = []

    class Counting(AnthropicClient):
        def _build_sdk_client(self, http_client: Any) -> Any:
            built.append(http_client)
            return super()._build_sdk_client(http_client)

    async def burst(client: AnthropicClient) -> list[str]:
        answers = await asyncio.gather(*(client.arespond(f"q{i}") for i in range(64)))
        return [a.text for a in answers]

    with ProviderSimulator("ok", latency=0.05) as sim:
        client = Counting("m", api_key="sk-test", base_url=sim.anthropic_base_url)
        try:
            assert run_sync(burst(client)) == ["ok"] * 64
            assert run_sync(burst(client.with_model("other"))) == ["ok"] * 64
        finally:
            client.close()
    assert len(built) == 2  # one route per model


@pytest.mark.parametrize("cls", [OpenAIClient, AnthropicClient])
def test_a_missing_sdk_is_still_a_typed_error_when_the_client_is_built(
    cls: type[OpenAIClient] | type[AnthropicClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, cls.sdk_module, None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=f"rlm\\[{cls.extra}\\]"):
        cls("m", api_key="sk-test", base_url="http://127.0.0.1:9/v1")
