"""The ipython environment: what IPython adds (magics, `_` history, rich display), hard
timeouts in both modes, sub-calls and custom tools recorded host-side, the reference's hooks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("IPython")
pytest.importorskip("ipykernel")
pytest.importorskip("jupyter_client")

from rlm import RLM
from rlm.clients.base import BaseLM
from rlm.core.lm_handler import LMHandler
from rlm.core.types import LMResponse, Message, UsageSummary
from rlm.environments import get_environment
from rlm.environments.ipython import IPythonREPL
from rlm.errors import ConfigurationError
from rlm.logger import RLMLogger

pytestmark = pytest.mark.timeout(240)
MODES = ["in_process", "subprocess"]
FENCE = "```"


class EchoLM(BaseLM):
    provider = "fake"

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        return LMResponse(text=f"echo:{messages[-1]['content']}", model=self.model_name)


@pytest.fixture(scope="module")
def handler() -> Iterator[LMHandler]:
    lm_handler = LMHandler(EchoLM("echo", max_retries=0))
    lm_handler.start()
    yield lm_handler
    lm_handler.stop()


@pytest.fixture(scope="module", params=MODES)
def env(request: pytest.FixtureRequest, handler: LMHandler) -> Iterator[IPythonREPL]:
    session = handler.open_session(depth=0, max_depth=1)
    environment = IPythonREPL(handler=handler.endpoint(session), kernel_mode=request.param)
    environment.session = session  # type: ignore[attr-defined]
    yield environment
    environment.cleanup()


def test_magics_history_and_display(env: IPythonREPL) -> None:
    assert env.execute("6 * 7").stdout == "42\n"
    assert env.execute("_ + 1").stdout == "43\n"
    assert env.execute("%time mg_x = 5").error is None
    assert env.execute("mg_x").stdout == "5\n"
    shown = env.execute("from IPython.display import display\ndisplay({'k': 1})")
    assert shown.stdout == "{'k': 1}\n"
    shell = env.execute("!echo from-the-shell")
    assert "from-the-shell" in shell.stdout
    assert "mg_x" in env.execute("%who").stdout


def test_a_magic_error_is_a_cell_error(env: IPythonREPL) -> None:
    result = env.execute("%no_such_magic")
    assert result.error is not None and result.error.startswith("UsageError")


def test_sub_calls_go_through_the_handler_and_are_recorded_host_side(
    env: IPythonREPL,
) -> None:
    session = env.session  # type: ignore[attr-defined]
    session.take_records()
    result = env.execute(
        "sc = llm_query('hi')\nsc_b = llm_query_batched(['a', 'b'])\nprint(sc, sc_b)"
    )
    assert result.stdout == "echo:hi ['echo:a', 'echo:b']\n"
    records = session.take_records()
    assert sorted(r.prompt_preview for r in records) == ["a", "b", "hi"]
    assert all(r.kind == "llm" for r in records)


@pytest.mark.parametrize("mode", MODES)
def test_a_runaway_cell_is_stopped_and_the_namespace_survives(mode: str) -> None:
    with IPythonREPL(kernel_mode=mode, timeout=1) as repl:
        repl.execute("kept = 'yes'")
        result = repl.execute("while True:\n    pass")
        assert result.timed_out and result.error == "TimeoutError: cell exceeded 1s"
        assert repl.execute("kept").stdout == "'yes'\n"


def test_a_kernel_cell_that_swallows_the_interrupt_is_ended_by_a_restart() -> None:
    """The kernel's timer and the host's SIGINT are both caught: the host restarts the kernel,
    says so, and loads the contexts again."""
    with IPythonREPL(kernel_mode="subprocess", timeout=1) as repl:
        repl.load_context("ctx-text")
        repl.execute("lost = 1")
        stubborn = (
            "while True:\n"
            "    try:\n"
            "        while True:\n"
            "            pass\n"
            "    except BaseException:\n"
            "        pass"
        )
        result = repl.execute(stubborn)
        assert result.timed_out
        assert "the kernel was restarted" in result.stderr
        after = repl.execute("print(context, 'lost' in globals())")
        assert after.stdout == "ctx-text False\n"


def test_reference_hooks_subcall_fn_and_custom_tools_are_recorded_per_cell() -> None:
    calls: list[tuple[str, str | None]] = []

    def subcall(prompt: str, model: str | None = None) -> Any:
        calls.append((prompt, model))
        from rlm.core.types import RLMChatCompletion

        return RLMChatCompletion("child", prompt, f"child:{prompt}", UsageSummary(), 0.0)

    seen: list[int] = []

    def double(n: int) -> int:
        seen.append(threading.get_ident())
        return 2 * n

    for mode in MODES:
        calls.clear()
        with IPythonREPL(
            kernel_mode=mode, subcall_fn=subcall, custom_tools={"double": double, "K": 3}
        ) as repl:
            result = repl.execute("print(rlm_query('p'), double(K))")
            assert result.stdout == "child:p 6\n"
            assert calls == [("p", None)]
            assert sorted(r.kind for r in result.rlm_calls) == ["rlm", "tool"]
            assert repl.execute("print('none')").rlm_calls == []
    assert threading.get_ident() not in seen  # the tool ran host-side, behind the handler


def test_registry_and_bad_arguments() -> None:
    env = get_environment("ipython", {"kernel_mode": "in_process"})
    try:
        assert isinstance(env, IPythonREPL)
    finally:
        env.cleanup()
    with pytest.raises(ConfigurationError, match="kernel_mode"):
        IPythonREPL(kernel_mode="remote")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="unknown keyword"):
        IPythonREPL(no_such_option=1)


@pytest.mark.parametrize("mode", MODES)
def test_rlm_completion_with_fan_out_and_recursion(mode: str) -> None:
    def model(messages: list[Message]) -> str:
        if len(messages) > 1 and "ROOT" in messages[1]["content"]:
            return (
                f"{FENCE}repl\n"
                "parts = llm_query_batched([f'q{i}' for i in range(5)])\n"
                "child = rlm_query('give 7')\n"
                "FINAL(f'{len(parts)}|{parts[0]}|{child}')\n"
                f"{FENCE}"
            )
        if len(messages) == 1:  # a plain sub-LM call
            return "part"
        return f"{FENCE}repl\nFINAL(7)\n{FENCE}"

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"model_name": "m", "responses": model},
        environment="ipython",
        environment_kwargs={"kernel_mode": mode},
        max_depth=2,
        logger=RLMLogger(),  # completion.metadata holds the trajectory only with a logger
    )
    with rlm:
        out = rlm.completion("ignored", root_prompt="ROOT")
    assert out.response == "5|part|7", out
    calls = out.metadata["iterations"][0]["code_blocks"][0]["result"]["rlm_calls"]  # type: ignore[index]
    assert sorted(c["kind"] for c in calls) == ["llm"] * 5 + ["rlm"]


def test_the_kernel_gets_no_provider_keys_and_a_private_cwd(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret")
    with IPythonREPL(kernel_mode="subprocess") as repl:
        result = repl.execute("import os\nprint(os.environ.get('OPENAI_API_KEY'), os.getcwd())")
        assert result.stdout == f"None {repl.temp_dir}\n"


def test_a_kernel_that_exits_is_restarted_with_its_contexts() -> None:
    with IPythonREPL(kernel_mode="subprocess", context_payload="ctx") as repl:
        repl.execute("gone = 1")
        died = repl.execute("import os\nos._exit(3)")
        assert died.error == "SandboxError: the IPython kernel died during the cell"
        assert "the kernel was restarted" in died.stderr
        assert repl.execute("print(context, 'gone' in globals())").stdout == "ctx False\n"


@pytest.mark.parametrize("mode", MODES)
def test_subcall_timeout_bounds_the_wait_for_a_sub_call(mode: str) -> None:
    release = threading.Event()

    def slow(prompt: str, model: str | None = None) -> str:
        release.wait(30)
        return "late"

    try:
        with IPythonREPL(kernel_mode=mode, subcall_fn=slow, subcall_timeout=0.5) as repl:
            result = repl.execute("print(rlm_query('x'))")
            assert (
                result.stdout == "Error: TimeoutError: no answer from the LM handler within 0.5s\n"
            )
    finally:
        release.set()
