"""Code written for the reference implementation (alexzhang13/rlm, `rlms` 0.1.3) runs unchanged.

Each test is what a user of the reference writes: its import paths, its client contract (a
`BaseLM` subclass returning `str`), `LocalREPL` driven by hand against an `LMHandler` they
started, and the result/trajectory shapes they read.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
import threading
from typing import Any

import pytest
from overlap import Overlap
from sandbox_kinds import require_kind

from rlm import RLM
from rlm.clients.base_lm import BaseLM
from rlm.clients.scripted import ScriptedLM
from rlm.core.comms_utils import (
    LMRequest,
    send_lm_request,
    send_lm_request_batched,
    socket_recv,
    socket_send,
)
from rlm.core.lm_handler import LMHandler
from rlm.core.types import (
    ModelUsageSummary,
    QueryMetadata,
    REPLResult,
    RLMChatCompletion,
    RLMMetadata,
    UsageSummary,
)
from rlm.environments.local_repl import LocalREPL
from rlm.errors import ConfigurationError
from rlm.logger.rlm_logger import RLMLogger

FENCE = "```"


def repl(code: str) -> str:
    return f"{FENCE}repl\n{code}\n{FENCE}"


class ReferenceStyleLM(BaseLM):
    """A user's client written against the reference: str out, usage from get_last_usage."""

    def __init__(self, replies: list[str], model_name: str = "mine") -> None:
        super().__init__(model_name=model_name)
        self.replies = list(replies)
        self.prompts: list[Any] = []
        self.calls = 0

    def completion(self, prompt: Any) -> str:
        self.prompts.append(prompt)
        self.calls += 1
        if isinstance(prompt, str) and prompt.startswith("fail"):
            raise RuntimeError(f"cannot answer {prompt}")
        return self.replies.pop(0) if self.replies else f"echo {prompt}"

    async def acompletion(self, prompt: Any) -> str:
        return self.completion(prompt)

    def get_usage_summary(self) -> UsageSummary:
        return UsageSummary({self.model_name: ModelUsageSummary(self.calls, 7 * self.calls, 3)})

    def get_last_usage(self) -> ModelUsageSummary:
        return ModelUsageSummary(1, 7, 3, 0.25)


class SyncOnlyLM(BaseLM):
    """The smallest reference-style client: `completion` alone."""

    def __init__(self) -> None:
        super().__init__(model_name="sync-only")
        self.threads: set[str] = set()

    def completion(self, prompt: Any) -> str:
        self.threads.add(threading.current_thread().name)
        return f"sync {prompt}"


# ------------------------------------------------------------------------ 1. module paths


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("rlm.clients.base_lm", ["BaseLM"]),
        ("rlm.clients.openai", ["OpenAIClient"]),
        ("rlm.clients.anthropic", ["AnthropicClient"]),
        ("rlm.clients.portkey", ["PortkeyClient"]),
        ("rlm.clients.gemini", ["GeminiClient"]),
        ("rlm.clients.azure_openai", ["AzureOpenAIClient"]),
        ("rlm.environments.base_env", ["BaseEnv", "IsolatedEnv", "NonIsolatedEnv"]),
        ("rlm.environments.local_repl", ["LocalREPL"]),
        ("rlm.environments.docker_repl", ["DockerREPL"]),
        ("rlm.environments.modal_repl", ["ModalREPL"]),
        ("rlm.environments.e2b_repl", ["E2BREPL"]),
        ("rlm.core.comms_utils", ["LMRequest", "LMResponse", "send_lm_request"]),
        ("rlm.logger.rlm_logger", ["RLMLogger"]),
        ("rlm.utils.parsing", ["find_code_blocks", "format_iteration"]),
        ("rlm.utils.prompts", ["RLM_SYSTEM_PROMPT", "build_rlm_system_prompt"]),
        ("rlm.utils.exceptions", ["TimeoutExceededError", "BudgetExceededError"]),
        ("rlm.utils.rlm_utils", ["filter_sensitive_keys"]),
    ],
)
def test_reference_module_paths_import(module: str, names: list[str]) -> None:
    loaded = importlib.import_module(module)
    for name in names:
        assert getattr(loaded, name) is not None


def test_reference_paths_are_our_classes_not_copies() -> None:
    from rlm.environments import LocalREPL as registry_local
    from rlm.environments.base import BaseEnv
    from rlm.environments.base_env import BaseEnv as reference_base
    from rlm.environments.docker import DockerREPL as ours
    from rlm.environments.docker_repl import DockerREPL
    from rlm.logger import RLMLogger as ours_logger

    assert LocalREPL is registry_local and reference_base is BaseEnv
    assert issubclass(DockerREPL, ours) and RLMLogger is ours_logger


def test_no_name_is_exported_by_two_packages() -> None:
    import rlm.clients
    import rlm.environments
    import rlm.logger

    seen: dict[str, str] = {}
    for module in (rlm, rlm.clients, rlm.environments, rlm.logger):
        for name in module.__all__:
            assert hasattr(module, name)
            assert name not in seen, f"{name} exported by {seen.get(name)} and {module.__name__}"
            seen[name] = module.__name__
    from rlm import BaseLM as top_level  # still importable from the top, just not in __all__

    assert top_level is BaseLM


def test_import_rlm_imports_no_sdk() -> None:
    import subprocess
    import sys

    code = (
        "import sys, rlm, rlm.utils.parsing, rlm.core.comms_utils, rlm.environments.local_repl;"
        "print(sorted(m for m in ('openai','anthropic','docker','modal','e2b') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------- 2. client contract


def test_our_client_answers_str_and_keeps_the_rich_response() -> None:
    lm = ScriptedLM("gpt-test", responses=["one", "two", "three"])
    assert lm.completion("hello there") == "one"
    last = lm.get_last_usage()
    assert last.total_calls == 1 and last.total_input_tokens > 0
    rich = lm.respond("again")  # our LMResponse path is intact
    assert rich.text == "two" and rich.usage.input_tokens > 0
    summary = lm.get_usage_summary()
    assert summary.model_usage_summaries["gpt-test"].total_calls == 2


def test_acompletion_returns_str() -> None:
    lm = ScriptedLM("gpt-test", responses=["async answer"])
    assert asyncio.run(lm.acompletion("q")) == "async answer"


def test_reference_style_subclass_is_an_rlm_backend() -> None:
    lm = ReferenceStyleLM([repl("x = 6 * 7"), repl("FINAL(x)")])
    with RLM(backend=lm) as rlm:
        out = rlm.completion("some context")
    assert out.response == "42"
    # Our loop sent it chat messages; usage is its get_last_usage(), once per call.
    assert all(isinstance(p, list) for p in lm.prompts)
    usage = out.usage_summary.model_usage_summaries["mine"]
    assert (usage.total_calls, usage.total_input_tokens, usage.total_output_tokens) == (2, 14, 6)
    assert usage.total_cost == pytest.approx(0.5)


def test_client_instance_with_backend_kwargs_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="configure it directly"):
        RLM(backend=ReferenceStyleLM([]), backend_kwargs={"model_name": "x"})


# --------------------------------------------- the reference's LMHandler and comms helpers


def test_send_lm_request_reaches_a_handler_the_user_started() -> None:
    lm = ReferenceStyleLM(["hello back"])
    with LMHandler(client=lm) as handler:
        reply = send_lm_request(handler.address, LMRequest(prompt="hello"))
        batch = send_lm_request_batched(handler.address, ["a", "fail-b", "c"])
    assert reply.success and reply.chat_completion is not None
    assert reply.chat_completion.response == "hello back"
    assert reply.chat_completion.usage_summary.model_usage_summaries["mine"].total_input_tokens == 7
    assert lm.prompts[0] == "hello"  # a reference client gets the prompt as the caller wrote it
    assert [r.success for r in batch] == [True, False, True]
    assert batch[0].chat_completion is not None and batch[0].chat_completion.response == "echo a"
    assert batch[1].error is not None and "cannot answer fail-b" in batch[1].error


def test_batch_max_concurrent_bounds_one_batch() -> None:
    # The first calls wait inside until a third joins them, which the bound never lets in:
    # the guard breaks the gate with exactly two inside. Unbounded, a third would come in.
    inside = Overlap(hold=3, guard=3.0)

    class Slow(SyncOnlyLM):
        def completion(self, prompt: Any) -> str:
            with inside:
                return str(prompt)

    with LMHandler(client=Slow(), batch_max_concurrent=2) as handler:
        out = send_lm_request_batched(handler.address, [str(i) for i in range(8)])
    assert [r.chat_completion.response for r in out if r.chat_completion] == [
        str(i) for i in range(8)
    ]
    assert inside.peak == 2 and inside.broken  # two at once, and no third ever joined them


def test_the_handler_still_refuses_unauthenticated_frames() -> None:
    with LMHandler(client=ReferenceStyleLM(["never"])) as handler:
        assert handler.address is not None
        with socket.create_connection(handler.address, timeout=5) as sock:
            socket_send(sock, {"prompt": "hi"})  # the reference's wire request, no token
            reply = socket_recv(sock)
    assert reply.get("error", {}).get("type") == "AuthenticationError"


def test_send_lm_request_to_no_handler_is_an_error_reply() -> None:
    reply = send_lm_request(("127.0.0.1", 9), LMRequest(prompt="hi"))
    assert not reply.success and "no LMHandler" in (reply.error or "")


def test_sync_only_subclass_runs_off_the_event_loop() -> None:
    lm = SyncOnlyLM()
    with LMHandler(client=lm) as handler:
        reply = send_lm_request(handler.address, LMRequest(prompt="ping"))
    assert reply.chat_completion is not None and reply.chat_completion.response == "sync ping"
    assert not any("asyncio" in name for name in lm.threads)
    assert lm.get_usage_summary().model_usage_summaries["sync-only"].total_calls == 1


# ------------------------------------------------------------ 3. REPL classes used by hand


def test_local_repl_driven_by_hand_like_the_reference_example() -> None:
    lm = ReferenceStyleLM(["4"])
    with LMHandler(client=lm) as handler:
        with LocalREPL(
            lm_handler_address=handler.address,
            context_payload="The magic number is 4.",
            setup_code='secret = "1424424"',
            custom_tools={"double": lambda n: 2 * n, "LIMIT": {"tool": 3, "description": "a cap"}},
        ) as env:
            result = env.execute_code(
                "response = llm_query('What is 2 + 2?')\n"
                "print(response, context, secret, double(LIMIT))"
            )
            assert isinstance(result, REPLResult) and result.stderr == ""
            assert result.stdout.strip() == "4 The magic number is 4. 1424424 6"
            assert env.locals["response"] == "4"
            (call,) = result.rlm_calls  # the reference's RLMChatCompletion record of the call
            assert (call.root_model, call.response, call.prompt) == ("mine", "4", "What is 2 + 2?")
            assert call.usage_summary.model_usage_summaries["mine"].total_input_tokens == 7
            sessions = len(handler._sessions)
        assert len(handler._sessions) == sessions - 1  # cleanup released its session
    assert env.locals == {}


def test_local_repl_numbered_contexts_and_histories() -> None:
    env = LocalREPL()
    assert env.add_context("first") == 0 and env.add_context({"k": "second"}) == 1
    assert env.add_history([{"role": "user", "content": "q1"}]) == 0
    assert (env.get_context_count(), env.get_history_count()) == (2, 1)
    out = env.execute_code("print(context, context_1['k'], history_0[0]['content'])")
    assert out.stdout.strip() == "first second q1"
    folder = env.temp_dir
    assert os.path.isdir(folder)
    env.cleanup()
    assert not os.path.exists(folder)


def test_local_repl_follows_update_handler_address() -> None:
    env = LocalREPL(lm_handler_address=("127.0.0.1", 9))  # nothing there: resolved lazily
    env.execute_code("r = llm_query('hi')")
    assert env.locals["r"].startswith("Error:") and "no LMHandler" in env.locals["r"]
    with LMHandler(client=ReferenceStyleLM(["now connected"])) as handler:
        assert handler.address is not None
        env.update_handler_address(handler.address)
        env.execute_code("r = llm_query('hi')")
        assert env.locals["r"] == "now connected"
    env.cleanup()


def test_local_repl_setup_code_that_fails_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match=r"(?s)setup_code failed.*ZeroDivisionError"):
        LocalREPL(setup_code="1 / 0")


def test_subcall_fn_serves_rlm_query_when_driven_by_hand() -> None:
    def child(prompt: str, model: str | None) -> RLMChatCompletion:
        if prompt == "bad":
            raise RuntimeError("child failed")
        return RLMChatCompletion(model or "m", prompt, prompt.upper(), UsageSummary(), 0.1)

    env = LocalREPL(subcall_fn=child, max_concurrent_subcalls=2)
    out = env.execute_code("a = rlm_query_batched(['x', 'bad', 'y'], model='big')")
    assert env.locals["a"][0::2] == ["X", "Y"] and "child failed" in env.locals["a"][1]
    assert [c.root_model for c in out.rlm_calls] == ["big", "big"]
    env.execute_code("rlm_query = None")  # restored after the cell, like every helper
    env.execute_code("b = rlm_query('z')")
    assert env.locals["b"] == "Z"
    env.cleanup()


def test_docker_repl_takes_the_reference_arguments() -> None:
    require_kind("docker")
    from rlm.environments.docker_repl import DockerREPL

    with LMHandler(client=ReferenceStyleLM(["from the host"])) as handler:
        assert handler.address is not None
        with DockerREPL(
            lm_handler_address=handler.address,
            context_payload={"n": 20},
            setup_code="base = 1",
        ) as env:
            env.add_context("second")
            result = env.execute_code("print(llm_query('q'), context['n'] + base, context_1)")
            assert result.stdout.strip() == "from the host 21 second"
            assert env.get_context_count() == 2
            assert [c.response for c in result.rlm_calls] == ["from the host"]


# --------------------------------------------------------------- 7. results and trajectories


def test_types_keep_the_reference_shapes() -> None:
    assert ModelUsageSummary(2, 10, 5, 0.5).total_cost == 0.5  # total_cost is the fourth field
    meta = QueryMetadata(["ab", "cde"])
    assert (meta.context_type, meta.context_total_length, meta.context_lengths) == (
        "list",
        5,
        [2, 3],
    )
    bare = RLMChatCompletion("m", "p", "r", UsageSummary(), 1.0)
    assert "metadata" not in bare.to_dict()
    assert str(REPLResult(stdout="hi")).startswith("REPLResult(stdout=hi")
    run = RLMMetadata("m", 2, 10, "openai", {"api_key": "sk-x", "base_url": "u"}, "local", {})
    assert run.to_dict()["backend_kwargs"] == {"base_url": "u"}


def _run_with_child(logger: RLMLogger | None) -> RLMChatCompletion:
    def model(messages: list[dict[str, Any]]) -> str:
        if "The task is given in `context`" in str(messages):  # the child run
            return repl("FINAL(49 if 'square of 7' in context else 0)")
        return repl("r = rlm_query('Return the square of 7')\nFINAL(r)")

    with RLM(
        backend="scripted",
        backend_kwargs={"model_name": "m", "responses": model},
        max_depth=2,
        logger=logger,
    ) as rlm:
        return rlm.completion("ctx", root_prompt="square?")


def test_metadata_is_none_without_a_logger() -> None:
    assert _run_with_child(None).metadata is None


def test_metadata_and_trajectory_have_the_reference_shape() -> None:
    logger = RLMLogger()
    out = _run_with_child(logger)
    assert out.response == "49"
    meta = out.metadata
    assert meta is not None and set(meta) >= {"run_metadata", "iterations", "trajectory"}
    run = meta["run_metadata"]
    assert run["backend"] == "scripted" and run["environment_type"] == "local"
    assert (run["max_depth"], run["root_model"]) == (2, "m")
    assert run["max_iterations"] > 0 and run["backend_kwargs"]["model_name"] == "m"
    first = meta["iterations"][0]
    assert (first["type"], first["iteration"]) == ("iteration", 1)
    assert isinstance(first["timestamp"], str)
    call = first["code_blocks"][0]["result"]["rlm_calls"][0]
    assert call["root_model"] == "m" and "square of 7" in call["prompt"]
    assert call["response"] == "49" and call["execution_time"] >= 0
    assert call["usage_summary"]["model_usage_summaries"]["m"]["total_calls"] == 1
    child = call["metadata"]  # the child's own trajectory, nested
    assert child["run_metadata"]["depth"] == 1
    assert child["iterations"][0]["response"].startswith(FENCE)
    trajectory = logger.get_trajectory()
    assert trajectory is not None
    assert trajectory["run_metadata"] == run and trajectory["iterations"] == meta["iterations"]


def test_a_duck_typed_client_from_a_patched_get_client_serves_a_run() -> None:
    from unittest import mock

    class Plain:  # no BaseLM base class at all: the reference's tests patch such objects in
        model_name = "plain"

        def __init__(self) -> None:
            self.replies = [repl("FINAL(7)")]

        def completion(self, prompt: Any) -> str:
            return self.replies.pop(0)

        def get_last_usage(self) -> ModelUsageSummary:
            return ModelUsageSummary(1, 5, 1)

    with (
        mock.patch("rlm.core.rlm.get_client", return_value=Plain()),
        RLM(backend="openai", backend_kwargs={"model_name": "x"}) as rlm,
    ):
        out = rlm.completion("c")
    assert out.response == "7"
    assert out.usage_summary.model_usage_summaries["plain"].total_input_tokens == 5


def test_lm_in_repl_example_with_our_openai_client() -> None:
    from rlm.clients.openai import OpenAIClient
    from rlm.testing import ProviderSimulator

    code = (
        'response = llm_query("What is 2 + 2? Reply with just the number.")\n'
        "print(response)\nprint(type(response))\nprint(context)\n"
        'print("Secret from setup code: ", secret)\n'
    )
    with ProviderSimulator("4") as sim:
        client = OpenAIClient(api_key="x", model_name="gpt-4.1-mini", base_url=sim.openai_base_url)
        with (
            LMHandler(client=client) as handler,
            LocalREPL(
                lm_handler_address=handler.address,
                context_payload="The magic number is 4.",
                setup_code='secret = "1424424"',
            ) as env,
        ):
            result = env.execute_code(code)
    assert result.stdout.splitlines() == [
        "4",
        "<class 'str'>",
        "The magic number is 4.",
        "Secret from setup code:  1424424",
    ]
    assert result.stderr == "" and env.locals == {}
    assert client.get_usage_summary().model_usage_summaries["gpt-4.1-mini"].total_calls == 1
