"""The RLM loop end to end with the scripted LM: final-answer forms, limits, recursion, history."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from typing import Any

import pytest
from overlap import Overlap

from rlm import RLM, ConfigurationError, ContextLoadError
from rlm.core.types import Message
from rlm.errors import (
    ErrorThresholdExceededError,
    SubcallLimitExceededError,
    TimeoutExceededError,
)
from rlm.logger import RLMLogger

FENCE = "```"


def repl(code: str) -> str:
    return f"{FENCE}repl\n{code}\n{FENCE}"


def last_user(messages: list[Message]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def scripted(root: Any, sub: Any = None, **kwargs: Any) -> RLM:
    """An RLM whose root replies come from `root` and sub-calls from `sub` (both scripted)."""
    other: dict[str, Any] = {}
    if sub is not None:
        other = {
            "other_backends": ["scripted"],
            "other_backend_kwargs": [{"model_name": "sub", "responses": sub}],
        }
    kwargs.setdefault("logger", RLMLogger())  # completion.metadata holds the trajectory
    return RLM(
        backend="scripted",
        backend_kwargs={"model_name": "root", "responses": root},
        **other,
        **kwargs,
    )


def test_context_is_inspected_and_answer_dict_finishes() -> None:
    rlm = scripted(
        [
            repl("n = len(context)\nprint('chars', n)"),
            repl('answer["content"] = f"{n} chars"\nanswer["ready"] = True'),
        ]
    )
    with rlm:
        out = rlm.completion("x" * 1234, root_prompt="How long?")
    assert out.response == "1234 chars"
    assert out.stop_reason == "final_answer"
    assert out.root_model == "root"
    iterations = out.metadata["iterations"]  # type: ignore[index]
    assert iterations[0]["code_blocks"][0]["result"]["stdout"].strip() == "chars 1234"
    # The root saw the metadata, never the context itself.
    first_prompt = " ".join(m["content"] for m in iterations[0]["prompt"])
    assert "1234 total characters" in first_prompt and "xxxx" not in first_prompt
    assert out.usage_summary.model_usage_summaries["root"].total_calls == 2


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (repl("FINAL('forty two')"), "forty two"),
        (repl("result = 'from var'\nFINAL_VAR('result')"), "from var"),
        ("I am sure now.\nFINAL(plain (nested) text)", "plain (nested) text"),
        (repl("x = 'prose var'") + "\nFINAL_VAR(x)", "prose var"),
        (repl("answer.update(content='updated', ready=True)"), "updated"),
    ],
)
def test_every_final_answer_form(reply: str, expected: str) -> None:
    with scripted([reply]) as rlm:
        out = rlm.completion("ctx")
    assert out.response == expected
    assert out.stop_reason == "final_answer"
    assert out.iterations == 1


def test_final_var_keeps_typed_value() -> None:
    with scripted([repl("d = {'a': [1, 2]}\nFINAL_VAR('d')")]) as rlm:
        out = rlm.completion("ctx")
    assert out.value == {"a": [1, 2]}
    assert out.response == str({"a": [1, 2]})


def test_batched_sub_calls_over_100_chunks_with_one_failing_item() -> None:
    def sub(messages: list[Message]) -> str:
        prompt = last_user(messages)
        if "chunk 13:" in prompt:
            raise RuntimeError("sub-model broke on chunk 13")
        return str(prompt.count("word "))

    code = (
        "chunks = [context[i:i + 50] for i in range(0, len(context), 50)]\n"
        "prompts = [f'chunk {i}: count words in: {c}' for i, c in enumerate(chunks)]\n"
        "answers = llm_query_batched(prompts)\n"
        "errors = [a for a in answers if a.startswith('Error:')]\n"
        "total = sum(int(a) for a in answers if not a.startswith('Error:'))\n"
        "print(len(answers), len(errors), errors[0])\n"
        "FINAL(total)"
    )
    context = "word " * 1000  # 5000 chars -> 100 chunks of 50, 10 words each
    with scripted([repl(code)], sub) as rlm:
        out = rlm.completion(context)
    assert out.response == str(99 * 10)
    stdout = out.metadata["iterations"][0]["code_blocks"][0]["result"]["stdout"]  # type: ignore[index]
    assert stdout.startswith("100 1 Error:")
    assert "sub-model broke on chunk 13" in stdout
    subs = out.usage_summary.model_usage_summaries["sub"]
    assert subs.total_calls == 99  # the failed one has no usage
    calls = out.metadata["iterations"][0]["code_blocks"][0]["result"]["rlm_calls"]  # type: ignore[index]
    assert len(calls) == 100 and sum(1 for c in calls if c["error"]) == 1


def test_reply_without_code_gets_a_reminder_and_python_fences_are_named() -> None:
    seen: list[str] = []

    def root(messages: list[Message]) -> str:
        seen.append(last_user(messages))
        if len(seen) == 1:
            return f"Let me think.\n{FENCE}python\nprint(1)\n{FENCE}"
        return "FINAL(done)"

    with scripted(root) as rlm:
        out = rlm.completion("ctx")
    assert out.response == "done"
    assert "no ```repl code" in seen[1] and "```python" in seen[1]


def test_max_iterations_ends_with_one_answer_now_call() -> None:
    calls: list[str] = []

    def root(messages: list[Message]) -> str:
        calls.append(last_user(messages))
        if "used all your turns" in calls[-1]:
            return "FINAL(best effort)"
        return repl("print('still working')")

    with scripted(root, max_iterations=3) as rlm:
        out = rlm.completion("ctx")
    assert len(calls) == 4
    assert out.stop_reason == "max_iterations"
    assert out.response == "best effort"


def test_max_errors_stops_after_consecutive_failing_turns() -> None:
    rlm = scripted(lambda m: repl("1 / 0"), max_errors=2, max_iterations=10)
    with rlm, pytest.raises(ErrorThresholdExceededError) as caught:
        rlm.completion("ctx")
    assert (caught.value.error_count, caught.value.threshold) == (2, 2)
    assert "ZeroDivisionError" in (caught.value.last_error or "")
    out = caught.value.completion
    assert out.stop_reason == "max_errors"
    assert out.iterations == 2
    assert (
        "ZeroDivisionError" in out.metadata["iterations"][0]["code_blocks"][0]["result"]["stderr"]
    )  # type: ignore[index]


def test_max_tokens_counts_sub_calls_and_returns_best_answer() -> None:
    def root(messages: list[Message]) -> str:
        return "Partial: probably 7.\n" + repl("r = llm_query('x' * 4000)\nprint(r[:20])")

    with scripted(
        root, sub=lambda m: "y" * 400, max_tokens=3000, max_iterations=10, on_limit="return"
    ) as rlm:
        out = rlm.completion("ctx")
    assert out.stop_reason == "max_tokens"
    assert out.response == "Partial: probably 7."
    assert out.usage_summary.total_input_tokens + out.usage_summary.total_output_tokens >= 3000


def test_max_subcalls_trips_and_code_sees_error_strings() -> None:
    code = "rs = [llm_query(f'q{i}') for i in range(5)]\nprint(rs)"
    rlm = scripted(lambda m: repl(code), sub=lambda m: "ok", max_subcalls=3)
    with rlm, pytest.raises(SubcallLimitExceededError) as caught:
        rlm.completion("ctx")
    assert (caught.value.subcalls, caught.value.limit) == (3, 3)
    out = caught.value.completion
    assert out.stop_reason == "max_subcalls"
    stdout = out.metadata["iterations"][0]["code_blocks"][0]["result"]["stdout"]  # type: ignore[index]
    assert stdout.count("'ok'") == 3 and "SubcallLimitExceededError" in stdout


def test_max_timeout_ends_a_run_stuck_in_a_slow_model() -> None:
    turns: list[int] = []

    def root(messages: list[Message]) -> str:
        turns.append(len(messages))
        time.sleep(0.3)  # a slow model: the run's second runs out long before its 50 turns
        return repl("print('again')")

    rlm = scripted(root, max_timeout=1.0, max_iterations=50)
    with rlm, pytest.raises(TimeoutExceededError) as caught:
        rlm.completion("ctx")
    assert caught.value.timeout == 1.0 and caught.value.elapsed >= 1.0
    out = caught.value.completion
    assert out.stop_reason == "max_timeout"
    assert 1 <= len(turns) < 50 and len(out.metadata["iterations"]) < 50  # type: ignore[arg-type]


def test_max_budget_with_priced_model() -> None:
    prices = {"input": 1000.0, "output": 1000.0}  # USD per 1M tokens: expensive on purpose
    rlm = RLM(
        backend="scripted",
        backend_kwargs={
            "model_name": "root",
            "responses": lambda m: repl("x = 1"),
            "prices": prices,
        },
        max_budget=0.05,
        max_iterations=100,
        on_limit="return",
    )
    with rlm:
        out = rlm.completion("c" * 2000)
    assert out.stop_reason == "max_budget"
    assert out.usage_summary.total_cost is not None and out.usage_summary.total_cost >= 0.05


def test_cell_timeout_and_namespace_survive() -> None:
    replies = [
        repl("kept = 41\nwhile True:\n    pass"),
        repl("FINAL(kept + 1)"),
    ]
    with scripted(replies, environment_kwargs={"timeout": 0.5}) as rlm:
        out = rlm.completion("ctx")
    assert out.response == "42"
    result = out.metadata["iterations"][0]["code_blocks"][0]["result"]  # type: ignore[index]
    assert result["timed_out"] is True


def test_namespace_persists_across_turns_and_failing_cells_keep_assignments() -> None:
    replies = [
        repl("def total():\n    return base + extra\nbase = 40"),
        repl("extra = 2\nraise ValueError('after assigning')"),
        repl("FINAL(total())"),
    ]
    with scripted(replies) as rlm:
        out = rlm.completion("ctx")
    assert out.response == "42"


def test_root_history_is_append_only() -> None:
    requests: list[list[Message]] = []

    def root(messages: list[Message]) -> str:
        requests.append([dict(m) for m in messages])
        if len(requests) < 5:
            return repl(f"print('turn {len(requests)}' * 3)")
        return "FINAL(ok)"

    with scripted(root) as rlm:
        rlm.completion("ctx", root_prompt="q")
    assert len(requests) == 5
    for previous, current in itertools.pairwise(requests):
        assert current[: len(previous)] == previous
        assert json.dumps(current).startswith(json.dumps(previous)[:-1])


def test_long_output_is_truncated_once_with_a_marker() -> None:
    seen: list[str] = []

    def root(messages: list[Message]) -> str:
        seen.append(last_user(messages))
        return repl("print('a' * 50000 + 'TAIL')") if len(seen) == 1 else "FINAL(x)"

    with scripted(root, max_output_chars=1000) as rlm:
        rlm.completion("ctx")
    assert "characters omitted" in seen[1] and seen[1].count("a") < 1100 and "TAIL" in seen[1]


def test_parallel_recursion_children_answer_their_own_prompts() -> None:
    """rlm_query_batched over 8 prompts at max_depth=2: each child runs its own loop."""
    children = Overlap(hold=8)  # each child's first call waits until all eight are in

    def model(messages: list[Message]) -> str:
        system = messages[0]["content"]
        user = messages[1]["content"]
        if "Recursion is enabled" in system and "Which numbers" in user:  # the root
            if len(messages) == 2:
                return repl(
                    "qs = [f'Return the square of {i}' for i in range(8)]\n"
                    "rs = rlm_query_batched(qs)\nprint(rs)\nFINAL_VAR('rs')"
                )
            return "FINAL(unexpected)"
        # a child: its context is the prompt; it reads it with code, then answers
        if len(messages) == 2:
            with children:
                return repl("n = int(context.split()[-1])\nFINAL(n * n)")
        return "FINAL(child confused)"

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"model_name": "m", "responses": model},
        max_depth=2,
        max_concurrent_subcalls=8,
    )
    with rlm:
        out = rlm.completion("ignored", root_prompt="Which numbers?")
    assert out.value == [str(i * i) for i in range(8)]
    # every child's two root calls plus the root's are counted in the root's usage
    assert out.usage_summary.model_usage_summaries["m"].total_calls == 1 + 8
    assert children.peak == 8 and not children.broken  # all eight children ran at once


def test_rlm_query_at_max_depth_is_a_plain_call() -> None:
    with scripted([repl("FINAL(rlm_query('hi'))")], sub=lambda m: "plain") as rlm:
        out = rlm.completion("ctx")
    assert out.response == "plain"


def test_custom_tools_run_host_side() -> None:
    host_thread: list[str] = []

    def lookup(key: str) -> str:
        host_thread.append(threading.current_thread().name)
        return key.upper()

    rlm = scripted(
        [repl("FINAL(lookup('abc') + str(LIMIT))")],
        custom_tools={"lookup": lookup, "LIMIT": {"tool": 5, "description": "a number"}},
    )
    with rlm:
        out = rlm.completion("ctx")
    assert out.response == "ABC5"
    assert host_thread


def test_bad_input_is_typed_and_early() -> None:
    with pytest.raises(ConfigurationError, match="scripted"):
        RLM(backend="no-such-backend")
    with pytest.raises(ConfigurationError, match="local"):
        RLM(backend="scripted", backend_kwargs={"responses": ["x"]}, environment="nowhere")
    with pytest.raises(ConfigurationError, match="reserved"):
        scripted(["x"], custom_tools={"llm_query": len})
    calls: list[int] = []
    rlm = scripted(lambda m: calls.append(1) or "FINAL(x)")
    with rlm, pytest.raises(ContextLoadError):
        rlm.completion({"a": {1, 2}})
    assert calls == []


def test_prompt_forms_list_dict_messages() -> None:
    code = "FINAL(type(context).__name__ + ':' + str(len(context)))"
    for prompt, expected in [
        (["a", "bb"], "list:2"),
        ({"k": "v"}, "dict:1"),
        ([{"role": "user", "content": "hello"}], "list:1"),
    ]:
        with scripted([repl(code)]) as rlm:
            assert rlm.completion(prompt).response == expected


def test_persistent_sessions_keep_contexts_and_histories() -> None:
    rlm = scripted(
        [
            repl("kept = context\nFINAL('first')"),
            repl("FINAL(kept + '|' + context_1 + '|' + str(len(history_0)))"),
        ],
        persistent=True,
    )
    with rlm:
        assert rlm.completion("one").response == "first"
        second = rlm.completion("two")
    assert re.fullmatch(r"one\|two\|\d+", second.response)


def test_callbacks_are_called() -> None:
    events: list[tuple[str, Any]] = []
    rlm = scripted(
        [repl("llm_query('q')"), "FINAL(ok)"],
        sub=lambda m: "a",
        on_iteration_start=lambda depth, i: events.append(("it_start", i)),
        on_iteration_complete=lambda depth, i, t: events.append(("it_done", i)),
        on_subcall_start=lambda depth, model, preview: events.append(("sub_start", model)),
        on_subcall_complete=lambda depth, model, duration, error: events.append(
            ("sub_done", error)
        ),
    )
    with rlm:
        rlm.completion("ctx")
    assert ("it_start", 1) in events and ("it_done", 2) in events
    assert ("sub_start", "sub") in events and ("sub_done", None) in events


def test_persistent_set_after_construction_keeps_the_environment() -> None:
    """As in the reference, `rlm.persistent = True` after construction makes the next
    completions share one environment (each run still frozen on its own settings)."""
    responses = [repl("x = 41\nFINAL('set')"), repl("FINAL(str(x + 1) + ':' + context_1)")]
    with RLM(backend="scripted", backend_kwargs={"responses": responses}) as rlm:
        rlm.persistent = True
        assert rlm.completion("first").response == "set"
        assert rlm.completion("second").response == "42:second"
