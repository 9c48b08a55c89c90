"""Token and cost limits hold for concurrent calls, and a budget never silently ignores a model.

Every run here goes over real HTTP to `rlm.testing.ProviderSimulator` through the OpenAI
client, with a priced sub-model, as a user with a wide `llm_query_batched` would. The
simulator counts a token per four characters, so each sub-call below (400 characters in,
400 out) uses about 100 + 100 tokens.
"""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from overlap import Overlap

from rlm import RLM, ConfigurationError
from rlm.clients.pricing import register_price
from rlm.core.events import Observer, RunInfo
from rlm.core.types import RLMIteration, SubcallRecord, Usage
from rlm.errors import BudgetExceededError, TimeoutExceededError, TokenLimitExceededError
from rlm.lm_service.budget import Budget, Limits, Reservation
from rlm.logger import RLMLogger
from rlm.testing import ProviderSimulator, SimRequest

FENCE = "```"
PRICE = 100.0  # USD per 1M tokens, input and output: a sub-call costs about $0.02
SUB_REPLY = "y" * 400


def repl(code: str) -> str:
    return f"{FENCE}repl\n{code}\n{FENCE}"


class CallCosts(Observer):
    """The real usage of every single LM call of a run (root turns and plain sub-calls)."""

    def __init__(self) -> None:
        self.usages: list[Usage] = []
        self._lock = threading.Lock()

    def on_iteration(self, run: RunInfo, iteration: int, record: RLMIteration) -> None:
        with self._lock:
            self.usages.append(record.usage)

    def on_subcall(self, run: RunInfo, record: SubcallRecord) -> None:
        if record.kind == "llm" and record.error is None:
            with self._lock:
                self.usages.append(record.usage)

    def largest_cost(self) -> float:
        return max(u.cost or 0.0 for u in self.usages)

    def largest_tokens(self) -> int:
        return max(u.input_tokens + u.output_tokens for u in self.usages)


def make_reply(code: str, subs: Overlap | None = None) -> Any:
    """Root: run `code`, then finish. A child RLM's turn (it has a system prompt): one
    sub-call, then FINAL. A plain sub-call: 400 characters (inside `subs`, when given)."""

    def reply(request: SimRequest) -> str:
        if request.model == "root-model":
            if any("errors" in m["content"] for m in request.messages):
                return "FINAL(done)"
            return repl(code)
        if request.system:
            return repl("r = llm_query('z' * 400)\nFINAL(r[:3])")
        if subs is not None:
            with subs:
                return SUB_REPLY
        return SUB_REPLY

    return reply


@pytest.fixture(autouse=True)
def prices() -> None:
    register_price("priced-sub", input=PRICE, output=PRICE)
    register_price("root-model", input=0.0, output=0.0)


def make_rlm(sim: ProviderSimulator, observer: CallCosts, **kwargs: Any) -> RLM:
    base = {"base_url": sim.openai_base_url, "api_key": "sk-test"}
    return RLM(
        backend="openai",
        backend_kwargs={"model_name": "root-model", **base},
        other_backends=["openai"],
        other_backend_kwargs=[{"model_name": "priced-sub", **base, **kwargs.pop("sub", {})}],
        max_iterations=3,
        observers=[observer],
        logger=RLMLogger(),  # completion.metadata holds the trajectory
        on_limit="return",  # these tests read the partial completion a limit left
        **kwargs,
    )


def printed(out: Any) -> str:
    iterations = out.metadata["iterations"]
    return "\n".join(block["result"]["stdout"] for it in iterations for block in it["code_blocks"])


BATCH = (
    "rs = llm_query_batched(['x' * 400] * 500)\n"
    "print(sum(r == 'y' * 400 for r in rs), 'answered')\n"
    "print(sorted({r.split(':')[0] for r in rs if r != 'y' * 400}), 'errors')"
)


def test_a_batch_of_500_stays_within_max_budget() -> None:
    costs = CallCosts()
    with (
        ProviderSimulator(reply=make_reply(BATCH)) as sim,
        make_rlm(sim, costs, max_budget=0.05) as rlm,
    ):
        out = rlm.completion("ctx")
        sub_requests = sum(r.model == "priced-sub" for r in sim.requests)
    spent = out.usage_summary.total_cost
    assert spent is not None and spent >= 0.05  # the budget was used up...
    assert spent <= 0.05 + costs.largest_cost()  # ...and overshot by one call's worth at most
    assert out.stop_reason == "max_budget"
    answered = int(re.search(r"(\d+) answered", printed(out)).group(1))  # type: ignore[union-attr]
    assert answered == sub_requests and 1 <= answered <= 4
    # The refused items are typed errors in their own slots; the others answered.
    assert "['Error'] errors" in printed(out)
    assert "BudgetExceededError" in str(out.metadata)


def test_a_batch_of_500_stays_within_max_tokens() -> None:
    costs = CallCosts()
    with (
        ProviderSimulator(reply=make_reply(BATCH)) as sim,
        make_rlm(sim, costs, max_tokens=1000) as rlm,
    ):
        out = rlm.completion("ctx")
    used = out.usage_summary.total_tokens
    assert 1000 <= used <= 1000 + costs.largest_tokens()
    assert out.stop_reason == "max_tokens"
    assert "TokenLimitExceededError" in str(out.metadata)


def test_concurrent_async_queries_stay_within_max_budget() -> None:
    code = (
        "fs = [llm_query_async('x' * 400) for _ in range(200)]\n"
        "rs = []\n"
        "for f in fs:\n"
        "    try:\n"
        "        rs.append(f.result())\n"
        "    except Exception as exc:\n"
        "        rs.append('Error: ' + type(exc).__name__)\n"
        "print(sum(r == 'y' * 400 for r in rs), 'answered; errors')"
    )
    costs = CallCosts()
    with (
        ProviderSimulator(reply=make_reply(code), latency=0.01) as sim,
        make_rlm(sim, costs, max_budget=0.1) as rlm,
    ):
        out = rlm.completion("ctx")
    spent = out.usage_summary.total_cost
    assert spent is not None and 0.1 <= spent <= 0.1 + costs.largest_cost()
    assert out.stop_reason == "max_budget"


def test_child_rlms_share_the_budget_and_stay_within_it() -> None:
    code = "rs = rlm_query_batched([f'task {i}' for i in range(40)])\nprint(len(rs), 'errors')"
    costs = CallCosts()
    with (
        ProviderSimulator(reply=make_reply(code)) as sim,
        make_rlm(sim, costs, max_budget=0.5, max_depth=2) as rlm,
    ):
        out = rlm.completion("ctx")
    spent = out.usage_summary.total_cost
    assert spent is not None and 0.5 <= spent <= 0.5 + costs.largest_cost()
    assert out.stop_reason == "max_budget"


def test_an_ample_budget_keeps_calls_concurrent_and_a_tight_one_waits_not_refuses() -> None:
    # Capped output (max_tokens=150): each call reserves ~410 input + 150 output tokens.
    code = "rs = llm_query_batched(['x' * 400] * 100)\nprint(sum(r == 'y' * 400 for r in rs), 'ok')"
    subs = Overlap(hold=11)  # the first sub-calls wait until eleven are at the provider at once
    with ProviderSimulator(reply=make_reply(code, subs)) as sim:
        costs = CallCosts()
        with make_rlm(
            sim, costs, max_budget=100.0, sub={"sampling_args": {"max_tokens": 150}}
        ) as r:
            out = r.completion("ctx")
        assert "100 ok" in printed(out)
    assert subs.peak >= 11 and not subs.broken  # the budget did not serialise the batch
    # A budget with room for ~20 real calls ($0.02 each) but only ~7 worst cases ($0.056 each)
    # at once: calls wait for others to settle instead of being refused, so ~20 answer.
    with ProviderSimulator(reply=make_reply(code), latency=0.02) as sim:
        costs = CallCosts()
        with make_rlm(sim, costs, max_budget=0.4, sub={"sampling_args": {"max_tokens": 150}}) as r:
            out = r.completion("ctx")
        answered = int(re.search(r"(\d+) ok", printed(out)).group(1))  # type: ignore[union-attr]
    assert 19 <= answered <= 21
    spent = out.usage_summary.total_cost
    assert spent is not None and spent <= 0.4 + costs.largest_cost()


# -- models without a price ----------------------------------------------------------------------


def test_a_budget_on_an_unpriced_model_is_refused_before_any_call() -> None:
    with ProviderSimulator(reply="FINAL(x)") as sim:
        base = {"base_url": sim.openai_base_url, "api_key": "sk-test"}
        rlm = RLM(
            backend="openai", backend_kwargs={"model_name": "o3-unlisted", **base}, max_budget=1.0
        )
        with rlm, pytest.raises(ConfigurationError) as info:
            rlm.completion("ctx")
        assert sim.requests == []
        message = str(info.value)
        assert "'o3-unlisted'" in message and "register_price" in message
        assert "allow_unpriced_models=True" in message and '"prices"' in message
        # A price given through backend_kwargs is enough.
        priced = {**base, "prices": {"input": 1.0, "output": 2.0}}
        with RLM(
            backend="openai", backend_kwargs={"model_name": "o3-unlisted", **priced}, max_budget=1.0
        ) as rlm:
            assert rlm.completion("ctx").response == "x"


def test_opting_in_runs_the_unpriced_model_and_marks_the_total_partial() -> None:
    with ProviderSimulator(reply=make_reply("r = llm_query('q')\nprint('errors')")) as sim:
        base = {"base_url": sim.openai_base_url, "api_key": "sk-test"}
        rlm = RLM(
            backend="openai",
            backend_kwargs={"model_name": "root-model", **base},
            other_backends=["openai"],
            other_backend_kwargs=[{"model_name": "unlisted-sub", **base}],
            max_budget=1.0,
            allow_unpriced_models=True,
        )
        with rlm:
            out = rlm.completion("ctx")
    summary = out.usage_summary
    assert out.response == "done"
    assert summary.unpriced_calls == 1 and summary.cost_is_partial
    assert summary.to_dict()["cost_is_partial"] is True
    assert summary.model_usage_summaries["unlisted-sub"].unpriced_calls == 1


def test_partial_totals_are_marked_in_the_log_console_viewer_and_bench(tmp_path: Any) -> None:
    import io
    import json

    from rich.console import Console

    from rlm.bench.runner import BenchConfig, BenchResults, format_table
    from rlm.logger import RLMLogger
    from rlm.logger.verbose import VerbosePrinter
    from rlm.viewer.logs import summarize

    out_text = io.StringIO()
    logger = RLMLogger(log_dir=str(tmp_path))
    printer = VerbosePrinter(Console(file=out_text, width=200, force_terminal=False))
    with ProviderSimulator(reply=make_reply("r = llm_query('q')\nprint('errors')")) as sim:
        base = {"base_url": sim.openai_base_url, "api_key": "sk-test"}
        register_price("root-model", input=1.0, output=1.0)  # priced root, unpriced sub
        with RLM(
            backend="openai",
            backend_kwargs={"model_name": "root-model", **base},
            other_backends=["openai"],
            other_backend_kwargs=[{"model_name": "unlisted-sub", **base}],
            logger=logger,
            observers=[printer],
        ) as rlm:
            out = rlm.completion("ctx")
    assert out.usage_summary.cost_is_partial and out.usage_summary.unpriced_calls == 1
    # The trajectory log's totals say how many calls the cost leaves out...
    assert logger.log_file_path is not None
    lines = Path(logger.log_file_path).read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    run_end = next(r for r in records if r["type"] == "run_end")
    assert run_end["totals"]["unpriced_calls"] == 1 and run_end["usage"]["cost_is_partial"]
    # ...and so does the viewer's run list, which the web app shows as "≥ $x".
    with open(logger.log_file_path, "rb") as handle:
        assert summarize(handle)["unpriced_calls"] == 1
    # The console marks the total as a lower bound.
    console = out_text.getvalue()
    assert "≥ $" in console and "no price" in console and "lower bound" in console
    # The bench report stars a partial cost and says why.
    results = BenchResults(BenchConfig(benchmarks=["sniah"]))
    task = {"score": 1.0, "exact": True, "latency": 1.0, "subcalls": 1}
    results.tasks = [
        {
            "benchmark": "sniah",
            "length": 1000,
            "rlm": {**task, "cost": 0.01, "cost_is_partial": True},
        }
    ]
    table = format_table(results)
    assert "$0.0100*" in table and "* partial cost" in table


# -- the Budget itself ---------------------------------------------------------------------------


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_cancelled_waiter_gives_its_place_back() -> None:
    budget = Budget(Limits(max_tokens=100))
    big, small = Reservation("m", 80, 0.0), Reservation("m", 30, 0.0)

    async def scenario() -> None:
        await budget.reserve(big)  # alone: admitted
        waiter = asyncio.ensure_future(budget.reserve(small))  # 80 + 30 > 100: waits
        await asyncio.sleep(0.01)
        assert not waiter.done() and budget.in_flight == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        budget.release(big)
        assert budget.in_flight == 0 and budget.reserved_tokens == 0
        await budget.reserve(small)
        budget.settle(small, Usage(input_tokens=20, output_tokens=10))
        assert budget.tokens == 30 and budget.reserved_tokens == 0

    run(scenario())


def test_waiters_are_refused_with_the_limit_error_once_it_is_reached() -> None:
    budget = Budget(Limits(max_tokens=100))
    first, rest = Reservation("m", 90, 0.0), [Reservation("m", 50, 0.0) for _ in range(3)]

    async def scenario() -> list[Any]:
        await budget.reserve(first)
        waiters = [asyncio.ensure_future(budget.reserve(r)) for r in rest]
        await asyncio.sleep(0.01)
        budget.settle(first, Usage(input_tokens=60, output_tokens=45))  # 105 >= 100: tripped
        return await asyncio.gather(*waiters, return_exceptions=True)

    outcomes = run(scenario())
    assert all(isinstance(o, TokenLimitExceededError) for o in outcomes)
    assert budget.in_flight == 0


def test_waiting_ends_at_the_trees_deadline() -> None:
    budget = Budget(Limits(max_budget=1.0, max_timeout=0.2))

    async def scenario() -> None:
        held = Reservation("m", 10, 0.9)
        await budget.reserve(held)
        with pytest.raises(TimeoutExceededError):
            await budget.reserve(Reservation("m", 10, 0.5))
        budget.release(held)

    run(scenario())
    assert isinstance(budget.tripped, TimeoutExceededError)


def test_budget_error_is_raised_for_new_calls_after_the_budget_is_spent() -> None:
    budget = Budget(Limits(max_budget=0.01))

    async def scenario() -> None:
        r = Reservation("m", 10, 0.02)
        await budget.reserve(r)
        budget.settle(r, Usage(input_tokens=5, output_tokens=5, cost=0.011))
        with pytest.raises(BudgetExceededError):
            await budget.reserve(Reservation("m", 10, 0.001))

    run(scenario())


# -- the price table -----------------------------------------------------------------------------


def test_current_models_are_priced_and_variants_are_not_guessed() -> None:
    from rlm.clients.pricing import lookup_price, price_usage

    for model in ("o3", "o4-mini", "gpt-5.1", "claude-opus-4-5", "gemini-3-pro-preview"):
        assert lookup_price(model) is not None, model
    # Dated snapshots and provider prefixes resolve to the listed model...
    assert lookup_price("claude-opus-4-5-20251101") == lookup_price("claude-opus-4-5")
    assert lookup_price("openai/gpt-5.1-2025-11-13") == lookup_price("gpt-5.1")
    # ...a different model that merely shares a prefix does not: it would be under-counted.
    assert lookup_price("o3-pro") is None
    assert lookup_price("gpt-4o-audio-preview") is None
    # Gemini Pro charges more for prompts over 200K tokens.
    short = price_usage("gemini-3-pro-preview", Usage(input_tokens=200_000, output_tokens=1000))
    long = price_usage("gemini-3-pro-preview", Usage(input_tokens=200_001, output_tokens=1000))
    assert short == pytest.approx((200_000 * 2.0 + 1000 * 12.0) / 1e6)
    assert long == pytest.approx((200_001 * 4.0 + 1000 * 18.0) / 1e6)
