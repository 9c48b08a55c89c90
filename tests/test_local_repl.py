"""LocalREPL and the shared runtime Repl: namespace, helpers, final answers, timeouts, capture."""

from __future__ import annotations

import concurrent.futures
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from rlm.clients.base import BaseLM
from rlm.core.lm_handler import LMHandler
from rlm.core.types import LMResponse, Message
from rlm.environments.base import ToolSpec
from rlm.environments.local import LocalREPL
from rlm.errors import ConfigurationError, ContextLoadError, ProviderError, RemoteError
from rlm.runtime.capture import capture
from rlm.runtime.jsondata import to_jsonable
from rlm.runtime.repl import Repl

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def env() -> Iterator[LocalREPL]:
    with LocalREPL(timeout=10) as e:
        yield e


def run(env: LocalREPL, code: str) -> Any:
    result = env.execute(code)
    assert not result.timed_out, result.stderr
    return result


# --------------------------------------------------------------------------- namespace


def test_variables_persist_and_last_expression_is_echoed(env: LocalREPL) -> None:
    run(env, "x = 20")
    assert run(env, "x + 22").stdout == "42\n"
    assert run(env, "y = x * 2\ny").stdout == "40\n"
    assert run(env, "None").stdout == ""
    assert run(env, "print('a')").stdout == "a\n"  # print returns None: nothing echoed
    assert run(env, "'s'").stdout == "'s'\n"  # repr, like a notebook


def test_function_sees_globals_assigned_by_later_cells(env: LocalREPL) -> None:
    run(env, "def f():\n    return g() + later")
    run(env, "def g():\n    return 1")
    run(env, "later = 41")
    assert run(env, "f()").stdout == "42\n"
    run(env, "later = 1")
    assert run(env, "f()").stdout == "2\n"


def test_raising_cell_keeps_assignments_made_before_the_error(env: LocalREPL) -> None:
    result = env.execute("partial = [1, 2]\nraise ValueError('boom')\nnever = 1")
    assert result.error == "ValueError: boom"
    assert 'File "<cell 1>", line 2' in result.stderr
    assert "raise ValueError('boom')" in result.stderr  # the cell's source line is shown
    assert "rlm/runtime" not in result.stderr  # the runtime's own frames are stripped
    assert env.namespace["partial"] == [1, 2]
    assert "never" not in env.namespace


def test_classes_comprehensions_imports_and_del(env: LocalREPL) -> None:
    code = (
        "import json\n"
        "from collections import Counter\n"
        "class Point:\n"
        "    def __init__(self, x):\n"
        "        self.x = x\n"
        "    def double(self):\n"
        "        return Point(self.x * 2)\n"
        "pts = [Point(i).double().x for i in range(4)]\n"
        "squares = {k: v for k, v in zip('ab', (n * n for n in range(2, 4)))}\n"
        "counts = Counter('aab')\n"
        "json.dumps([pts, squares, counts['a']])"
    )
    assert run(env, code).stdout == '\'[[0, 2, 4, 6], {"a": 4, "b": 9}, 2]\'\n'
    run(env, "del pts")
    assert "pts" not in env.namespace
    assert run(env, "'pts' in globals()").stdout == "False\n"
    assert run(env, "__name__").stdout == "'__main__'\n"


def test_traceback_points_into_the_cell_that_defined_the_function(env: LocalREPL) -> None:
    run(env, "def bad(d):\n    return d['missing']")
    result = env.execute("bad({})")
    assert result.error == "KeyError: 'missing'"
    assert 'File "<cell 2>", line 1' in result.stderr
    assert 'File "<cell 1>", line 2, in bad' in result.stderr
    assert "return d['missing']" in result.stderr


def test_a_very_deep_recursion_is_reported_quickly_with_the_middle_left_out() -> None:
    """10^5 frames used to take ~15 s to format (a source lookup per frame)."""
    code = (
        "import sys\nold_limit = sys.getrecursionlimit()\nsys.setrecursionlimit(100_100)\n"
        "def deep(n):\n    return deep(n + 1)\n"
        "try:\n    deep(0)\nfinally:\n    sys.setrecursionlimit(old_limit)"
    )
    started = time.monotonic()
    result = Repl().run_cell(code)
    assert time.monotonic() - started < 10  # a hang guard, not a benchmark
    assert result.error == "RecursionError: maximum recursion depth exceeded"
    lines = result.stderr.splitlines()
    omitted = [line for line in lines if line.startswith("  ... ") and "frames omitted" in line]
    assert len(omitted) == 1 and int(omitted[0].split()[1]) > 99_000
    assert lines[1:3] == ['  File "<cell 1>", line 7, in <module>', "    deep(0)"]
    assert lines[-2].startswith("  [Previous line repeated") and "return deep" in lines[-4]
    assert len(lines) < 100


def test_a_short_traceback_is_kept_whole_through_chained_exceptions() -> None:
    code = (
        "def down(n):\n    if n == 0:\n        raise ValueError('bottom')\n    return down(n - 1)\n"
        "try:\n    down(30)\nexcept ValueError as exc:\n    raise KeyError('top') from exc"
    )
    result = Repl().run_cell(code)
    assert result.error == "KeyError: 'top'"
    assert "frames omitted" not in result.stderr
    assert "ValueError: bottom" in result.stderr and "direct cause" in result.stderr
    assert "raise ValueError('bottom')" in result.stderr


def test_syntax_error_is_reported_like_other_errors(env: LocalREPL) -> None:
    result = env.execute("x = (1,\n")
    assert result.error is not None and result.error.startswith("SyntaxError")
    assert "<cell 1>" in result.stderr
    assert "ast.py" not in result.stderr
    assert run(env, "1 + 1").stdout == "2\n"


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("import sys\nsys.exit(3)", "SystemExit: 3"),
        ("raise SystemExit", "SystemExit"),
        ("raise KeyboardInterrupt('stop')", "KeyboardInterrupt: stop"),
    ],
)
def test_exit_and_interrupt_end_the_cell_not_the_repl(
    env: LocalREPL, code: str, error: str
) -> None:
    result = env.execute("before = 1\n" + code)
    assert result.error == error
    assert error.split(":")[0] in result.stderr
    assert run(env, "before + 1").stdout == "2\n"


def test_stdout_and_stderr_are_captured_separately(env: LocalREPL) -> None:
    result = run(env, "import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert result.error is None


# ----------------------------------------------------------------------------- timeout


def test_infinite_loop_times_out_and_the_repl_keeps_working() -> None:
    with LocalREPL(timeout=0.5) as env:
        result = env.execute("kept = 'yes'\nwhile True:\n    pass")
        assert result.timed_out
        assert result.error == "TimeoutError: cell exceeded 0.5s"
        assert "TimeoutError: cell exceeded 0.5s" in result.stderr
        assert "<cell 1>" in result.stderr  # where the cell was when it was stopped
        after = env.execute("kept")
        assert not after.timed_out and after.stdout == "'yes'\n"


def test_timeout_interrupts_a_cell_waiting_on_a_sub_call() -> None:
    class Stuck:
        def submit(self, payload: dict[str, Any]) -> concurrent.futures.Future[Any]:
            return concurrent.futures.Future()  # never completes

    with LocalREPL(timeout=0.5) as env:
        env._repl.channel = Stuck()  # the sub-call never answers: only the timeout ends it
        result = env.execute("llm_query('hi')")
        assert result.timed_out and result.error == "TimeoutError: cell exceeded 0.5s"
        result = env.execute("f = llm_query_async('hi')\nf.result()")
        assert result.timed_out and result.error == "TimeoutError: cell exceeded 0.5s"


def test_timeouts_racing_cell_ends_never_leak_into_host_code() -> None:
    # Cells that end right around their deadline: the watchdog must never hit host code.
    with LocalREPL(timeout=0.02) as env:
        for _ in range(40):
            env.execute("import time\ntime.sleep(0.019)\nfor _ in range(2000): pass")
            for _ in range(20_000):  # host bytecode where a stray CellTimeout would surface
                pass
        assert env.execute("1").stdout == "1\n"


# ------------------------------------------------------------------------------ output


def test_output_is_capped_at_capture_time_with_bounded_memory() -> None:
    with LocalREPL(timeout=30, max_output_chars=1000) as env:
        tracemalloc.start()
        try:
            result = env.execute("chunk = 'x' * 1_000_000\nfor _ in range(50):\n    print(chunk)")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert len(result.stdout) == 1_000_000  # the cap is max(1_000_000, 10 * max_output_chars)
    assert f"{50 * 1_000_001 - 1_000_000} chars" in result.stderr  # dropped chars reported
    assert peak < 20_000_000  # 50 MB printed, a few MB held


def test_capture_buffer_counts_dropped_chars() -> None:
    with capture(5) as (out, err):
        print("abcdefgh", end="")
        print("ij", end="")
    assert out.getvalue() == "abcde"
    assert out.dropped == 5 and err.dropped == 0


def test_parallel_repls_in_threads_never_mix_output() -> None:
    envs = [LocalREPL(timeout=30), LocalREPL(timeout=30)]
    barrier = threading.Barrier(2)
    results: dict[int, Any] = {}

    def work(i: int) -> None:
        envs[i].load_context(f"ctx{i}")
        barrier.wait()
        code = f"for n in range(3000):\n    print('repl{i}', context)\n"
        code += f"import sys\n_ = sys.stderr.write('e{i}')"
        results[i] = envs[i].execute(code)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for i in range(2):
        lines = results[i].stdout.splitlines()
        assert len(lines) == 3000 and set(lines) == {f"repl{i} ctx{i}"}
        assert results[i].stderr == f"e{i}"
        envs[i].cleanup()


# ------------------------------------------------------------------------ final answers


def test_final_stops_the_cell_and_keeps_the_real_value(env: LocalREPL) -> None:
    result = run(env, "print('a')\nFINAL({'k': [1, 2]})\nprint('never')")
    assert result.stdout == "a\n"
    assert result.final_value == {"k": [1, 2]}
    assert result.final_answer == "{'k': [1, 2]}"
    assert result.error is None


def test_final_var_by_name_by_value_and_missing(env: LocalREPL) -> None:
    result = run(env, "summary = 'the answer'\nFINAL_VAR('summary')")
    assert result.final_answer == "the answer" and result.final_value == "the answer"
    result = run(env, "FINAL_VAR([1, 2])")
    assert result.final_value == [1, 2] and result.final_answer == "[1, 2]"
    result = env.execute("FINAL_VAR('nothing_here')")
    assert result.final_answer is None and result.final_value is None
    assert result.error is not None and result.error.startswith("NameError")
    assert "nothing_here" in result.stderr


def test_answer_dict_in_every_form(env: LocalREPL) -> None:
    assert run(env, "answer['content'] = 'draft'").final_answer is None
    assert run(env, "answer['ready'] = True").final_answer == "draft"
    env2 = LocalREPL()
    assert run(env2, "answer.update(content='via update', ready=True)").final_answer == (
        "via update"
    )
    env3 = LocalREPL()
    result = run(env3, "answer = {'content': 7, 'ready': True}")
    assert result.final_value == 7 and result.final_answer == "7"
    assert "reserved" not in result.stderr  # answer is meant to be assigned


def test_final_inside_except_base_exception_is_not_lost(env: LocalREPL) -> None:
    code = "try:\n    FINAL('caught')\nexcept BaseException:\n    print('swallowed')"
    result = run(env, code)
    assert result.stdout == "swallowed\n"
    assert result.final_answer == "caught"


def test_to_jsonable_keeps_json_and_stringifies_the_rest() -> None:
    loop: list[Any] = []
    loop.append(loop)
    value = {"a": [1, 2.5, None, True], 3: {1, 2}, "t": (1, "x"), "nan": float("nan")}
    assert to_jsonable(value) == {
        "a": [1, 2.5, None, True],
        "3": "{1, 2}",
        "t": [1, "x"],
        "nan": "nan",
    }
    assert to_jsonable(loop) == [str(loop)]


# ---------------------------------------------------------------- reserved names, vars


def test_reserved_names_are_restored_with_a_note(env: LocalREPL) -> None:
    env.load_context("the context")
    result = run(env, "llm_query = 'oops'\ncontext = 'mine'\ndel FINAL")
    for name in ("llm_query", "context", "FINAL"):
        assert f"'{name}' is a reserved name" in result.stderr
    assert run(env, "callable(llm_query), context, callable(FINAL)").stdout == (
        "(True, 'the context', True)\n"
    )


def test_show_vars_hides_helpers_modules_and_dunders(env: LocalREPL) -> None:
    env.load_context("c")
    result = run(env, "import os\nn = 1\ndef fn(): pass\nv = SHOW_VARS()")
    assert env.namespace["v"] == {"n": "int", "fn": "function"}
    assert "n (int)" in result.stdout and "os" not in result.stdout
    assert result.locals == {"n": "int", "fn": "function", "v": "dict"}


# --------------------------------------------------------------------------- context


@pytest.mark.parametrize(
    "value",
    [
        "a long document",
        {"title": "t", "pages": ["p1", "p2"], "n": 3},
        ["chunk 1", "chunk 2"],
        [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}],
        42,
        None,
    ],
)
def test_context_loads_json_compatible_values(env: LocalREPL, value: Any) -> None:
    env.load_context(value)
    assert env.namespace["context"] == value and env.namespace["context_0"] == value
    assert run(env, "type(context).__name__").stdout == f"'{type(value).__name__}'\n"


def test_context_is_a_copy_the_code_cannot_use_to_mutate_the_caller(env: LocalREPL) -> None:
    caller = ["a", {"inner": ["b"]}]
    env.load_context(caller)
    run(env, "context.append('x')\ncontext[1]['inner'].append('y')")
    assert caller == ["a", {"inner": ["b"]}]
    env.load_context("second", index=1)
    assert run(env, "context_1, len(context_0)").stdout == "('second', 3)\n"


@pytest.mark.parametrize(
    "value",
    [{1, 2}, object(), ["ok", {"k": b"bytes"}], {1: "int key"}, float("inf")],
    ids=["set", "object", "nested-bytes", "int-key", "inf"],
)
def test_non_json_context_is_a_context_load_error(env: LocalREPL, value: Any) -> None:
    with pytest.raises(ContextLoadError, match="JSON"):
        env.load_context(value)


def test_history_binding(env: LocalREPL) -> None:
    first: list[Message] = [{"role": "user", "content": "q1"}]
    env.add_history(first, 0)
    env.add_history([{"role": "user", "content": "q2"}], 1)
    assert run(env, "history[0]['content'], history_0[0]['content']").stdout == "('q2', 'q1')\n"


# --------------------------------------------------------------------- configuration


def test_unknown_keyword_is_a_configuration_error() -> None:
    # `persistent` is the reference's argument now (accepted); a made-up one is still refused.
    with pytest.raises(ConfigurationError, match=r"persistant.*accepted: handler, depth"):
        LocalREPL(persistant=True)


def test_helpers_without_a_handler_return_error_strings(env: LocalREPL) -> None:
    result = run(env, "r = llm_query('hi')\nrb = llm_query_batched(['a', 'b'])")
    assert env.namespace["r"].startswith("Error: ") and "handler" in env.namespace["r"]
    assert len(env.namespace["rb"]) == 2
    assert result.error is None


@pytest.mark.parametrize(
    "call",
    [
        "llm_query(123)",
        "llm_query([{'no_role': 1}])",
        "llm_query_batched('not a list')",
        "llm_query('x', model=5)",
        "rlm_query('x', context={1, 2})",
        "rlm_query_batched(['a'], contexts=['c', 'd'])",
    ],
)
def test_helper_arguments_are_validated(env: LocalREPL, call: str) -> None:
    result = env.execute(call)
    assert result.error is not None and result.error.startswith("TypeError"), result.stderr


# --------------------------------------------------------------- fake channel (Repl)


class FakeChannel:
    """Answers requests in-process and records the payloads."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []

    def submit(self, payload: dict[str, Any]) -> concurrent.futures.Future[dict[str, Any]]:
        self.payloads.append(payload)
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        if payload["type"] == "rlm_batch":
            items: list[dict[str, Any]] = [
                {"result": {"text": f"{p}|{c}", "value": None}}
                for p, c in zip(payload["prompts"], payload["contexts"], strict=True)
            ]
            items[-1] = {"error": {"type": "SubcallLimitExceededError", "message": "too many"}}
            future.set_result({"results": items})
        elif payload["type"] == "rlm":
            future.set_exception(RemoteError("ProviderError", "down"))
        else:
            future.set_result({"text": "ok"})
        return future


def test_repl_sends_protocol_payloads_and_maps_errors() -> None:
    channel = FakeChannel()
    repl = Repl(channel, tools={"k": {"description": "d", "callable": False, "value": [1]}})
    cell = repl.run_cell(
        "a = rlm_query_batched(['p1', 'p2'], 'm', contexts=['c1', {'x': 1}])\n"
        "b = rlm_query('q', context=[1])\n"
        "c = llm_query([{'role': 'user', 'content': 'hi'}])\n"
        "d = k"
    )
    assert cell.error is None, cell.stderr
    assert repl.get("a") == ["p1|c1", "Error: SubcallLimitExceededError: too many"]
    assert repl.get("b") == "Error: ProviderError: down"
    assert repl.get("c") == "ok" and repl.get("d") == [1]
    assert channel.payloads[0] == {
        "type": "rlm_batch",
        "prompts": ["p1", "p2"],
        "contexts": ["c1", {"x": 1}],
        "model": "m",
    }
    assert channel.payloads[1] == {"type": "rlm", "prompt": "q", "context": [1]}


# ------------------------------------------------------------------ live LMHandler


class EchoLM(BaseLM):
    """Echoes the prompt; prompts containing 'fail' raise a provider error."""

    provider = "fake"

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        text = str(messages[-1]["content"])
        if "fail" in text:
            raise ProviderError("simulated outage", provider="fake", status_code=500)
        return LMResponse(text=f"echo:{text}", model=self.model_name)


@pytest.fixture
def live_env() -> Iterator[LocalREPL]:
    handler = LMHandler(EchoLM("echo", max_retries=0))
    handler.start()
    calls: list[tuple[Any, ...]] = []

    def add(a: int, b: int = 0) -> int:
        calls.append((a, b))
        return a + b

    session = handler.open_session(depth=0, max_depth=1, tools={"add": add})
    tools = {
        "add": ToolSpec("add", "adds two numbers"),
        "limits": ToolSpec("limits", "a value", callable=False, value={"max": 3}),
    }
    env = LocalREPL(handler=handler.endpoint(session), tools=tools, timeout=20)
    try:
        yield env
    finally:
        env.cleanup()
        env.cleanup()  # idempotent
        handler.stop()
    assert calls == [(2, 3)]


def test_sub_calls_and_tools_through_a_live_handler(live_env: LocalREPL) -> None:
    code = (
        "one = llm_query('hello')\n"
        "many = llm_query_batched(['a', 'please fail', 'c'])\n"
        "fut = llm_query_async('later')\n"
        "later = fut.result()\n"
        "total = add(2, b=3)\n"
        "cap = limits['max']\n"
        "child = rlm_query('sub task')\n"
    )
    result = live_env.execute(code)
    assert result.error is None, result.stderr
    ns = live_env.namespace
    assert ns["one"] == "echo:hello"
    assert ns["many"][0] == "echo:a" and ns["many"][2] == "echo:c"
    assert ns["many"][1].startswith("Error: ProviderError:")
    assert "simulated outage" in ns["many"][1]
    assert ns["later"] == "echo:later"
    assert ns["total"] == 5 and ns["cap"] == 3
    assert ns["child"].startswith("echo:") and "sub task" in ns["child"]
    failed = live_env.execute("r = llm_query('fail now')\nr")
    assert failed.error is None and failed.stdout.startswith("'Error: ProviderError")
