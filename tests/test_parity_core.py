"""Code written for the reference implementation (alexzhang13/rlm) runs unchanged on ours.

Each test is written as a reference user's code would be: limits caught as the documented
exceptions, `model=` in REPL code, the reference's constructor arguments, the seams its users'
tests patch. The model is `ScriptedLM`; nothing here needs a network.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any
from unittest.mock import patch

import pytest

import rlm.core.rlm as rlm_module
from rlm import RLM
from rlm.clients import get_client
from rlm.clients.scripted import ScriptedLM
from rlm.core.events import Observer, RunInfo
from rlm.core.types import Message, RLMIteration, SubcallRecord
from rlm.errors import (
    BudgetExceededError,
    CancellationError,
    ConfigurationError,
    ContextLoadError,
    ErrorThresholdExceededError,
    TimeoutExceededError,
    TokenLimitExceededError,
)

FENCE = "```"


def repl(code: str) -> str:
    return f"{FENCE}repl\n{code}\n{FENCE}"


def final(text: str) -> str:
    return repl(f"answer['content'] = {text!r}\nanswer['ready'] = True")


class Seen(Observer):
    """What the top-level run did, read from the events (not from the trajectory's shape)."""

    def __init__(self) -> None:
        self.subcalls: list[SubcallRecord] = []
        self.turns: list[RLMIteration] = []

    def on_subcall(self, run: RunInfo, record: SubcallRecord) -> None:
        if run.depth == 0:
            self.subcalls.append(record)

    def on_iteration(self, run: RunInfo, iteration: int, record: RLMIteration) -> None:
        if run.depth == 0:
            self.turns.append(record)

    def stdout(self, turn: int = 0, block: int = 0) -> str:
        return self.turns[turn].code_blocks[block].result.stdout


def scripted(root: Any, sub: Any = None, seen: Seen | None = None, **kwargs: Any) -> RLM:
    other: dict[str, Any] = {}
    if sub is not None:
        other = {
            "other_backends": ["scripted"],
            "other_backend_kwargs": [{"model_name": "sub", "responses": sub}],
        }
    return RLM(
        backend="scripted",
        backend_kwargs={"model_name": "root", "responses": root},
        observers=[seen] if seen is not None else [],
        **other,
        **kwargs,
    )


# ------------------------------------------------------------- point 4: limits raise


def test_timeout_is_raised_with_partial_answer_and_completion() -> None:
    def root(messages: list[Message]) -> str:
        time.sleep(0.4)
        return "The answer is probably 41.\n" + repl("print('still looking')")

    rlm = scripted(root, max_timeout=1.0, max_iterations=50)
    try:
        rlm.completion("ctx", root_prompt="What is it?")
    except TimeoutExceededError as e:
        assert e.partial_answer == "The answer is probably 41."
        assert e.timeout == 1.0 and e.elapsed >= 1.0
        assert e.completion.stop_reason == "max_timeout"
        assert e.completion.usage_summary.model_usage_summaries["root"].total_calls >= 2
        assert e.completion.response == e.partial_answer
    else:
        pytest.fail("TimeoutExceededError was not raised")
    finally:
        rlm.close()


def test_token_limit_and_budget_carry_the_reference_attributes() -> None:
    def root(messages: list[Message]) -> str:
        return "Maybe 7.\n" + repl("print(llm_query('x' * 4000)[:5])")

    with (
        scripted(root, sub=lambda m: "y" * 400, max_tokens=3000) as rlm,
        pytest.raises(TokenLimitExceededError) as tokens,
    ):
        rlm.completion("ctx")
    assert tokens.value.token_limit == 3000 and tokens.value.tokens_used >= 3000
    assert tokens.value.partial_answer == "Maybe 7."
    usage = tokens.value.completion.usage_summary
    assert usage.total_input_tokens + usage.total_output_tokens == tokens.value.tokens_used

    priced = RLM(
        backend="scripted",
        backend_kwargs={
            "model_name": "root",
            "responses": lambda m: repl("x = 1"),
            "prices": {"input": 1000.0, "output": 1000.0},
        },
        max_budget=0.05,
    )
    with priced, pytest.raises(BudgetExceededError) as budget:
        priced.completion("c" * 2000)
    assert budget.value.budget == 0.05 and budget.value.spent >= 0.05
    assert budget.value.completion.usage_summary.total_cost == pytest.approx(budget.value.spent)


def test_error_threshold_names_the_last_error() -> None:
    with (
        scripted(lambda m: repl("{}['missing']"), max_errors=3) as rlm,
        pytest.raises(ErrorThresholdExceededError) as caught,
    ):
        rlm.completion("ctx")
    assert (caught.value.error_count, caught.value.threshold) == (3, 3)
    assert "KeyError" in (caught.value.last_error or "")
    assert caught.value.completion.stop_reason == "max_errors"
    assert caught.value.completion.iterations == 3


def test_on_limit_return_keeps_the_partial_completion() -> None:
    with scripted(lambda m: repl("{}['missing']"), max_errors=2, on_limit="return") as rlm:
        out = rlm.completion("ctx")
    assert out.stop_reason == "max_errors" and out.iterations == 2
    with pytest.raises(ConfigurationError, match="on_limit"):
        scripted(["x"], on_limit="ignore")


def test_ctrl_c_raises_cancellation_error_with_the_completion_so_far() -> None:
    calls: list[int] = []

    def root(messages: list[Message]) -> str:
        calls.append(1)
        if len(calls) == 1:
            return "It might be 41.\n" + repl("x = 41")
        time.sleep(3)  # the second turn is slow: Ctrl-C arrives while it is pending
        return final("late")

    def ctrl_c() -> None:  # a real SIGINT to the main thread, as the terminal sends it
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    timer = threading.Timer(0.8, ctrl_c)
    seen = Seen()
    with scripted(root, seen=seen) as rlm:
        timer.start()
        try:
            rlm.completion("ctx")
        except CancellationError as e:
            assert e.partial_answer == "It might be 41."
            assert e.completion.stop_reason == "cancelled"
            assert len(seen.turns) == 1  # the finished turn
        else:
            pytest.fail("CancellationError was not raised")
        finally:
            timer.cancel()
        # The RLM is still usable after an interrupted run.
        rlm.backend  # noqa: B018


# ------------------------------------------------------------- point 5: model= in REPL code


def test_rlm_query_with_an_unregistered_model_starts_a_child_on_that_model() -> None:
    def root(messages: list[Message]) -> str:
        if messages[1]["content"].startswith("Your context is a str of 3 "):
            code = (
                "answers = rlm_query_batched(['q1', 'q2'], model='child-model')\n"
                "one = rlm_query('q3', model='child-model')\n"
                "print(len([a for a in answers + [one] if a == 'child says hi']))"
            )
            return repl(code) if len(messages) == 2 else final(messages[-1]["content"])
        return final("child says hi")  # a child's first (and only) turn

    seen = Seen()
    with scripted(root, seen=seen, max_depth=2) as rlm:
        out = rlm.completion("ctx")
    assert "3" in out.response
    children = [r for r in seen.subcalls if r.kind == "rlm"]
    assert len(children) == 3
    assert all(r.model == "child-model" and r.error is None for r in children)
    assert out.usage_summary.model_usage_summaries["child-model"].total_calls == 3


def test_llm_query_with_an_unregistered_model_records_that_model() -> None:
    prompts: list[str] = []

    def sub(messages: list[Message]) -> str:
        prompts.append(str(messages[-1]["content"]))
        return "sub answer"

    code = "print(llm_query('hello', model='gpt-x'))"
    replies = [repl(code), final("done")]
    seen = Seen()
    with scripted(replies, sub=sub, seen=seen) as rlm:
        out = rlm.completion("ctx")
    (record,) = seen.subcalls
    assert record.model == "gpt-x" and record.response == "sub answer"
    assert prompts == ["hello"]  # served by the depth-1 backend
    assert set(out.usage_summary.model_usage_summaries) == {"root", "gpt-x"}


def test_failed_sub_calls_still_appear_in_the_trajectory() -> None:
    code = "print(llm_query('a'))\nprint(rlm_query('b'))"
    replies = [repl(code), final("done")]
    failing = [RuntimeError("provider down"), RuntimeError("provider down again")]
    seen = Seen()
    with scripted(replies, sub=failing, seen=seen, max_depth=2) as rlm:
        rlm.completion("ctx")
    assert [r.kind for r in seen.subcalls] == ["llm", "rlm"]
    assert all(r.error for r in seen.subcalls)
    stdout = seen.stdout()
    assert [line.split(":")[0] for line in stdout.splitlines()] == ["Error", "Error"]


# ------------------------------------------------------------- point 6: arguments


def test_setup_code_runs_before_the_first_turn() -> None:
    replies = [repl("print(helper(2))"), final("ok")]
    seen = Seen()
    setup = {"setup_code": "def helper(x):\n    return x * 21"}
    with scripted(replies, seen=seen, environment_kwargs=setup) as rlm:
        rlm.completion("ctx")
    assert seen.stdout().strip() == "42"
    broken = scripted(["x"], environment_kwargs={"setup_code": "1 / 0"})
    with broken, pytest.raises(ConfigurationError, match="ZeroDivisionError"):
        broken.completion("ctx")


def test_compaction_takes_a_low_threshold_and_history_exists_from_turn_one() -> None:
    replies = [
        repl("print(type(history).__name__, len(history), history[0]['role'])"),
        final("done"),
    ]
    seen = Seen()
    with scripted(
        replies + ["summary"] * 3, seen=seen, compaction=True, compaction_threshold_pct=0.02
    ) as rlm:
        out = rlm.completion("ctx")
    first = seen.stdout()
    assert first.startswith("list ") and first.strip().endswith("system")
    assert out.response == "done"


def test_reference_signature_sampling_prologue_orchestrator() -> None:
    rlm = RLM(
        "scripted",
        {"model_name": "root", "responses": [final("ok")]},
        sampling_args={"temperature": 0.1},
        sub_sampling_args={"temperature": 0.9},
        user_prologue="Tip: the answer is short.",
        orchestrator=False,
    )
    with rlm:
        assert rlm.root_client.sampling_args == {"temperature": 0.1}
        (sub,) = rlm.other_clients
        assert sub.model_name == "root" and sub.sampling_args == {"temperature": 0.9}
        rlm.completion("ctx")
        assert isinstance(rlm.root_client, ScriptedLM)
        system, first = rlm.root_client.calls[0][:2]
    assert "Strategy:" not in system["content"]
    assert first["content"].endswith("Tip: the answer is short.")


def test_backend_kwargs_the_reference_takes() -> None:
    client = get_client("anthropic", {"model_name": "claude-x", "api_key": "k", "max_tokens": 1000})
    assert client.sampling_args["max_tokens"] == 1000
    assert get_client("gemini", {"api_key": "k"}).model_name == "gemini-2.5-flash"


def test_missing_api_key_fails_at_the_first_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    rlm = RLM(backend="openai", backend_kwargs={"model_name": "gpt-x"})  # no error yet
    with rlm, pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        rlm.completion("ctx")


# ------------------------------------------------------------- seams


def test_get_client_and_get_environment_are_the_seams_rlm_uses() -> None:
    made: list[tuple[str, dict[str, Any]]] = []
    original_env = rlm_module.get_environment

    def fake_client(backend: str, kwargs: dict[str, Any]) -> ScriptedLM:
        return ScriptedLM(kwargs["model_name"], responses=[final("from the seam")])

    def spy_environment(name: str, kwargs: dict[str, Any]) -> Any:
        made.append((name, dict(kwargs)))
        return original_env(name, kwargs)

    with (
        patch.object(rlm_module, "get_client", side_effect=fake_client),
        patch.object(rlm_module, "get_environment", side_effect=spy_environment),
    ):
        rlm = RLM(backend="openai", backend_kwargs={"model_name": "patched"})
        with rlm:
            out = rlm.completion("ctx")
    assert out.response == "from the seam" and out.root_model == "patched"
    assert [name for name, _ in made] == ["local"]


# ------------------------------------------------------------- issue 17: reliability


def test_self_referencing_context_is_refused_at_once() -> None:
    a: list[Any] = []
    a.append(a)
    d: dict[str, Any] = {"k": [1, 2]}
    d["k"].append(d)
    shared = ["x"]
    with scripted([final("ok")] * 2) as rlm:
        for bad in (a, d):
            with pytest.raises(ContextLoadError, match="cycle"):
                rlm.completion(bad)
        assert rlm.completion([shared, shared]).response == "ok"  # shared is not a cycle
        with pytest.raises(ContextLoadError, match="nested"):
            deep: list[Any] = []
            for _ in range(600):
                deep = [deep]
            rlm.completion(deep)


def test_local_runaway_cell_stops_at_max_timeout() -> None:
    ticks: list[int] = []
    code = "while True:\n    tick()"
    rlm = scripted(
        [repl(code)],
        environment="local",
        environment_kwargs={"timeout": None},
        custom_tools={"tick": lambda: ticks.append(1)},
        max_timeout=2,
    )
    with rlm, pytest.raises(TimeoutExceededError):
        rlm.completion("ctx")
    assert ticks  # the cell ran
    stopped_at = len(ticks)
    time.sleep(0.5)
    assert len(ticks) == stopped_at  # and it is no longer running


def test_sub_calls_refused_by_a_limit_are_recorded_with_their_error() -> None:
    code = "rs = [llm_query(f'q{i}') for i in range(5)]\nprint(rs)"
    seen = Seen()
    rlm = scripted(
        lambda m: repl(code), sub=lambda m: "ok", seen=seen, max_subcalls=3, on_limit="return"
    )
    with rlm:
        rlm.completion("ctx")
    calls = seen.subcalls
    assert len(calls) == 5
    assert [bool(c.error) for c in calls] == [False, False, False, True, True]
    assert "SubcallLimitExceededError" in (calls[-1].error or "")


def test_persistent_env_is_kept_across_calls_and_released_on_close() -> None:
    replies = [repl("kept = 84"), final("one"), repl("print(kept + 10)"), final("two")]
    seen = Seen()
    with scripted(replies, seen=seen, persistent=True) as rlm:
        assert rlm._persistent_env is None
        rlm.completion("first")
        env = rlm._persistent_env
        assert env is not None
        rlm.completion("second")
        assert rlm._persistent_env is env
    assert rlm._persistent_env is None
    assert seen.stdout(turn=2).strip() == "94"


def test_a_persistent_session_does_not_end_on_the_previous_answer() -> None:
    replies = [
        final("first answer"),
        repl("note = 'looking at the second context'"),
        final("second answer"),
    ]
    with scripted(replies, persistent=True) as rlm:
        assert rlm.completion("one").response == "first answer"
        second = rlm.completion("two")
    assert second.response == "second answer" and second.iterations == 2


# ------------------------------------------------------------- the reference's private entry points


def test_subcall_runs_a_child_or_a_leaf_call_as_the_reference_does() -> None:
    def model(messages: list[Message]) -> str:
        if messages[0]["role"] != "system":
            return "leaf says hi"  # a plain LM call
        return final("child says hi")

    with scripted(model, max_depth=3) as parent:
        child = parent._subcall("a sub-task", model="child-model")
        assert (child.response, child.root_model) == ("child says hi", "child-model")
        assert parent.backend_kwargs["model_name"] == "root"  # the parent's kwargs unchanged
        parent._completion_start_time = time.perf_counter() - 10
        parent.limits = type(parent.limits)(max_timeout=5)
        assert parent._subcall("late").response.startswith("Error: Timeout exhausted")
    with scripted(model, depth=1, max_depth=2) as leaf_parent:
        leaf = leaf_parent._subcall("a question")
        assert leaf.response == "leaf says hi" and leaf.metadata is None


def test_reference_limit_checks_raise_with_their_attributes() -> None:
    from rlm.core.types import CodeBlock, REPLResult, UsageSummary

    with scripted(["x"], max_timeout=10.0, max_errors=2, max_tokens=100) as rlm:
        with pytest.raises(TimeoutExceededError) as late:
            rlm._check_timeout(0, time.perf_counter() - 15.0)
        assert late.value.elapsed > 10.0 and late.value.timeout == 10.0
        rlm._check_timeout(0, time.perf_counter() - 1.0)

        class Handler:
            def get_usage_summary(self) -> UsageSummary:
                return UsageSummary()

        bad = RLMIteration([], "code", [CodeBlock("x", REPLResult(stderr="SyntaxError"))], None, 0)
        rlm._check_iteration_limits(bad, 0, Handler())
        with pytest.raises(ErrorThresholdExceededError) as errors:
            rlm._check_iteration_limits(bad, 1, Handler())
        assert (errors.value.error_count, errors.value.threshold) == (2, 2)
