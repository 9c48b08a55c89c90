"""ScriptedLM: scripted replies, usage, pricing, errors, concurrency."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

from rlm.aio import run_sync
from rlm.clients import ScriptedLM, get_client
from rlm.errors import ProviderError

pytestmark = pytest.mark.timeout(30)


def test_list_is_consumed_in_order_and_calls_are_recorded() -> None:
    lm = ScriptedLM(responses=["one", "two"])
    assert lm.respond("first").text == "one"
    assert lm.respond([{"role": "user", "content": "second"}]).text == "two"
    assert lm.calls == [
        [{"role": "user", "content": "first"}],
        [{"role": "user", "content": "second"}],
    ]
    assert lm.remaining == 0
    assert lm.provider == "scripted" and lm.model_name == "scripted"


def test_exhausted_script_raises_a_non_retryable_provider_error() -> None:
    lm = ScriptedLM(responses=["only"], max_retries=3)
    lm.respond("a")
    with pytest.raises(ProviderError, match="exhausted after 1 replies") as info:
        lm.respond("b")
    assert info.value.provider == "scripted"
    assert info.value.retryable is False
    assert len(lm.calls) == 2  # not retried


def test_callable_gets_the_messages() -> None:
    lm = ScriptedLM("echo", responses=lambda messages: messages[-1]["content"][::-1])
    prompt = [{"role": "system", "content": "sys"}, {"role": "user", "content": "abc"}]
    response = lm.respond(prompt)
    assert response.text == "cba"
    assert response.model == "echo"
    assert lm.calls == [prompt]
    assert lm.remaining is None


def test_async_callable_is_awaited() -> None:
    async def reply(messages: list[dict[str, str]]) -> str:
        await asyncio.sleep(0)
        return "awaited"

    assert ScriptedLM(responses=reply).respond("x").text == "awaited"


def test_callable_failure_becomes_provider_error() -> None:
    def reply(messages: list[dict[str, str]]) -> str:
        raise KeyError("boom")

    with pytest.raises(ProviderError, match="KeyError") as info:
        ScriptedLM(responses=reply, max_retries=0).respond("x")
    assert info.value.retryable is False
    with pytest.raises(ProviderError, match="returned int"):
        ScriptedLM(responses=lambda m: 42, max_retries=0).respond("x")


def test_exception_items_are_raised_and_retryable_ones_retried() -> None:
    flaky = ProviderError("try again", provider="scripted", status_code=429, retryable=True)
    lm = ScriptedLM(responses=[flaky, "after retry"], max_retries=2, retry_base_delay=0.001)
    assert lm.respond("x").text == "after retry"
    assert len(lm.calls) == 2


def test_usage_counts_characters_over_four() -> None:
    lm = ScriptedLM(responses=["r" * 9])
    prompt = [{"role": "system", "content": "s" * 5}, {"role": "user", "content": "u" * 6}]
    usage = lm.respond(prompt).usage
    assert usage.input_tokens == math.ceil(11 / 4) == 3
    assert usage.output_tokens == math.ceil(9 / 4) == 3
    assert usage.cost is None


def test_cost_only_from_explicit_prices() -> None:
    prices = {"input": 1.0, "output": 2.0}
    priced = ScriptedLM(responses=["abcd"], prices=prices).respond("abcdefgh")
    assert priced.usage.cost == pytest.approx((2 * 1.0 + 1 * 2.0) / 1_000_000)
    # A scripted model named like a real one is not priced from the table.
    unpriced = ScriptedLM("gpt-5", responses=["abcd"]).respond("abcdefgh")
    assert unpriced.usage.cost is None


def test_concurrent_acompletion_hands_out_each_reply_once() -> None:
    n = 200
    lm = ScriptedLM(responses=[f"reply-{i}" for i in range(n)], latency=0.01)

    async def many() -> list[str]:
        results = await asyncio.gather(*(lm.arespond(f"q{i}") for i in range(n)))
        return [r.text for r in results]

    texts = run_sync(many(), timeout=20)
    assert sorted(texts) == sorted(f"reply-{i}" for i in range(n))
    assert len(lm.calls) == n


def test_threads_share_one_script_safely() -> None:
    lm = ScriptedLM(responses=[str(i) for i in range(64)])
    out: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(8):
            text = lm.respond("x").text
            with lock:
                out.append(text)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(out, key=int) == [str(i) for i in range(64)]


def test_latency_is_applied() -> None:
    lm = ScriptedLM(responses=["slow"], latency=0.05)
    assert lm.respond("x").latency >= 0.04


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="responses"):
        ScriptedLM(responses="not a list")
    with pytest.raises(ValueError, match="latency"):
        ScriptedLM(responses=["x"], latency=-1)


def test_registered_as_scripted() -> None:
    lm = get_client("scripted", {"responses": ["via registry"]})
    assert isinstance(lm, ScriptedLM)
    assert lm.respond("x").text == "via registry"
