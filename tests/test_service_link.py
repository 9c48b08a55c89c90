"""The LM service reached in-process: what `RLM` gives every environment it builds.

A sandbox's request goes from the host's reader thread straight to `LMService.serve` (no
loopback TCP); these tests pin what the TCP transport used to guarantee on that path too: a
bounded number of requests in flight per environment, requests cancelled when the run's
session closes, typed errors, and that an environment needs nothing but a link (a fake one
serves an isolated environment's cells).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from overlap import Overlap

from rlm.aio import run_sync
from rlm.clients.base import BaseLM
from rlm.core.types import LMResponse, Message, Usage
from rlm.environments.base import HandlerEndpoint
from rlm.environments.process import ProcessREPL
from rlm.errors import RemoteError
from rlm.lm_service.service import LMService
from rlm.transport.inprocess import ServiceLink


class HeldLM(BaseLM):
    """Every call waits inside `inside` until the test releases it (or 100 are inside)."""

    provider = "fake"

    def __init__(self) -> None:
        super().__init__("held", max_retries=0)
        self.inside = Overlap(hold=100)
        self.cancelled = 0

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        try:
            async with self.inside:
                pass
        except BaseException:
            self.cancelled += 1
            raise
        text = str(messages[-1]["content"])
        return LMResponse(text=f"echo:{text}", model="held", usage=Usage(1, 1))


@pytest.fixture
def held() -> Iterator[HeldLM]:
    client = HeldLM()
    yield client
    client.inside.release()


def test_a_link_serves_at_most_its_in_flight_cap(held: HeldLM) -> None:
    """Five requests from five threads through a link capped at two: never more than two
    inside the model at once (the others wait for a slot), and every one is answered."""
    service = LMService(held)
    link = ServiceLink(service, service.open_session(), max_in_flight=2)
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        futures = [
            pool.submit(link.request, {"type": "llm", "prompt": f"p{i}"}, 60) for i in range(5)
        ]
        assert held.inside.wait_inside(2)
        held.inside.release()
        answers = sorted(f.result(60)["text"] for f in futures)
    assert answers == [f"echo:p{i}" for i in range(5)]
    assert held.inside.peak == 2


def test_closing_the_session_cancels_its_requests_in_flight(held: HeldLM) -> None:
    """A run that ended makes no more calls: its session's requests still inside the model
    are cancelled, their callers get a CancellationError, later requests are refused."""
    service = LMService(held)
    session = service.open_session()
    link = ServiceLink(service, session)
    pending = [link.submit({"type": "llm", "prompt": f"p{i}"}) for i in range(3)]
    assert held.inside.wait_inside(3)
    service.close_session(session)
    for future in pending:
        with pytest.raises(RemoteError) as caught:
            future.result(30)
        assert caught.value.error_type == "CancellationError"
    assert held.cancelled == 3
    with pytest.raises(RemoteError, match="the session is closed"):
        link.request({"type": "llm", "prompt": "late"}, 30)


@pytest.mark.parametrize(
    ("payload", "error_type"),
    [
        ({"type": "llm", "prompt": 42}, "ProtocolError"),
        ({"type": "llm_batch", "prompts": "not a list"}, "ProtocolError"),
        ({"type": "llm", "prompt": "x", "sampling": {"base_url": "http://evil"}}, "ProtocolError"),
        ({"type": "tool", "name": "missing", "args": [], "kwargs": {}}, "ConfigurationError"),
        ({"type": "nonsense"}, "ProtocolError"),
    ],
)
def test_bad_requests_are_typed_errors_over_the_link(
    held: HeldLM, payload: dict[str, Any], error_type: str
) -> None:
    held.inside.release()
    service = LMService(held)
    link = ServiceLink(service, service.open_session())
    with pytest.raises(RemoteError) as caught:
        link.request(payload, 30)
    assert caught.value.error_type == error_type


class FakeLink:
    """An LM service stand-in for environment tests: records what arrives, answers it."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def submit(self, payload: Mapping[str, Any]) -> concurrent.futures.Future[dict[str, Any]]:
        with self._lock:
            self.requests.append(dict(payload))
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        if payload.get("prompt") == "fail":
            future.set_exception(RemoteError("ProviderError", "the fake said no"))
        else:
            future.set_result({"text": f"fake:{payload.get('prompt')}", "model": "fake"})
        return future

    def endpoint(self) -> HandlerEndpoint:
        raise AssertionError("an isolated environment never needs a TCP endpoint")

    def close(self) -> None:
        pass


def test_a_sandbox_needs_only_a_link() -> None:
    """A process sandbox's cells reach whatever link the environment holds: the request
    arrives as the cell made it (no id, no token), the answer and a failure come back."""
    link = FakeLink()
    env = ProcessREPL(handler=link)
    try:
        result = env.execute("print(llm_query('hi'))\nprint(llm_query('fail'))")
    finally:
        env.cleanup()
    assert result.error is None, result.stderr
    first, second = result.stdout.splitlines()
    assert first == "fake:hi"
    assert "ProviderError" in second and "the fake said no" in second
    assert [r["prompt"] for r in link.requests] == ["hi", "fail"]
    assert all("id" not in r and r["type"] == "llm" for r in link.requests)


class EchoLM(BaseLM):
    provider = "fake"

    def __init__(self) -> None:
        super().__init__("echo", max_retries=0)
        self.calls = 0

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        self.calls += 1
        text = str(messages[-1]["content"])
        if text == "slow":  # the cell attaches its callback before the answer arrives
            await asyncio.sleep(2)
        return LMResponse(text=text, model="echo", usage=Usage(1, 1))


def test_a_sandbox_that_stops_reading_does_not_hold_the_event_loop() -> None:
    """A cell stalls its worker's channel reader (a callback that waits for the test) and
    keeps asking for large answers: the host's writes to the sandbox block, but only that
    environment's link waits; the rlm loop, which every run of the process shares, keeps
    serving meanwhile."""
    client = EchoLM()
    service = LMService(client)
    env = ProcessREPL(handler=ServiceLink(service, service.open_session()), timeout=120)
    shared = tempfile.mkdtemp(prefix="rlm-release-")
    os.chmod(shared, 0o755)  # the sandbox's own user looks for the release file here
    release = os.path.join(shared, "release")
    code = (
        "import os, time\n"
        "def stall(_):  # runs on the channel reader: nothing more is read until it returns\n"
        "    for _ in range(12000):\n"
        f"        if os.path.exists({release!r}):\n"
        "            return\n"
        "        time.sleep(0.01)\n"
        "first = llm_query_async('slow')\n"
        "first.add_done_callback(stall)\n"
        "while not first.done():\n"
        "    time.sleep(0.01)\n"
        "rest = [llm_query_async('x' * 50000) for _ in range(100)]\n"
    )
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            cell = pool.submit(env.execute, code)
            # Every request reaches the service while the reader is stalled. Were the loop
            # writing the answers itself, it would be stuck on the full pipe until release.
            deadline = time.monotonic() + 60  # a hang guard
            while client.calls < 101 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.calls == 101
            assert run_sync(asyncio.sleep(0, result="served"), timeout=30) == "served"
            with open(release, "w"):
                pass
            assert cell.result(60).error is None
    finally:
        env.cleanup()
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.parametrize(
    "sampling",
    [
        {"temperature": "hot"},
        {"max_tokens": -5},
        {"max_tokens": 10**30},
        {"stop": {"a": 1}},
        {"seed": 1.5},
    ],
)
def test_bad_sampling_values_are_refused_before_the_provider(sampling: dict[str, Any]) -> None:
    client = EchoLM()
    service = LMService(client)
    link = ServiceLink(service, service.open_session())
    with pytest.raises(RemoteError) as caught:
        link.request({"type": "llm", "prompt": "x", "sampling": sampling}, 30)
    assert caught.value.error_type == "ProtocolError"
    assert client.calls == 0


def test_unregistered_model_names_are_bounded() -> None:
    """`model=` may name a model the user did not register (it is served by the depth's
    backend, as in the reference), but code cannot make the host hold a client per name: the
    router keeps the most recently used few, and every name keeps working."""
    from rlm.lm_service.router import MAX_TWINS

    service = LMService(EchoLM())
    link = ServiceLink(service, service.open_session())
    for i in range(3 * MAX_TWINS):
        reply = link.request({"type": "llm", "prompt": "x", "model": f"m{i}"}, 30)
        assert reply["text"] == "x" and reply["model"] == "echo"
    assert len(service.router._twins) == MAX_TWINS
    with pytest.raises(RemoteError, match="longer than"):
        link.request({"type": "llm", "prompt": "x", "model": "m" * 1000}, 30)


def test_a_batch_holds_at_most_its_window_in_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    import rlm.lm_service.service as service_module

    monkeypatch.setattr(service_module, "BATCH_WINDOW", 3)
    held = HeldLM()
    service = LMService(held)
    link = ServiceLink(service, service.open_session())
    future = link.submit({"type": "llm_batch", "prompts": [f"p{i}" for i in range(10)]})
    assert held.inside.wait_inside(3)
    held.inside.release()
    results = future.result(30)["results"]
    assert [r["result"]["text"] for r in results] == [f"echo:p{i}" for i in range(10)]
    assert held.inside.peak == 3


def test_an_odd_request_from_a_sandbox_is_a_typed_error_not_a_dead_sandbox() -> None:
    """Requests with an unknown or missing type, sent raw on the worker's channel, are
    answered with the service's error; the sandbox lives on."""
    service = LMService(EchoLM())
    env = ProcessREPL(handler=ServiceLink(service, service.open_session()), timeout=60)
    code = (
        "import gc\n"
        "link = next(o for o in gc.get_objects() if type(o).__name__ == 'HostLink')\n"
        "for payload in ({'type': 5}, {'type': 'root'}, {'prompts': ['a', 'b']}):\n"
        "    try:\n"
        "        print('ok', sorted(link.submit(payload).result(30)))\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, getattr(exc, 'error_type', ''))\n"
    )
    try:
        result = env.execute(code)
        assert result.error is None, result.stderr
        assert result.stdout.splitlines() == [
            "RemoteError ProtocolError",
            "RemoteError ProtocolError",
            "ok ['results']",
        ]
        assert env.execute("print(llm_query('still here'))").stdout.strip() == "still here"
    finally:
        env.cleanup()


def test_a_callback_that_waits_for_another_answer_does_not_wait_for_itself() -> None:
    """In the local REPL a future's callbacks run on the link's delivery thread: one that
    makes a synchronous `llm_query` gets its answer from another delivery thread, and the
    link keeps serving the cell afterwards."""
    from rlm.environments.local import LocalREPL

    service = LMService(EchoLM())
    env = LocalREPL(handler=ServiceLink(service, service.open_session()), timeout=30)
    code = (
        "import time\n"
        "box = []\n"
        "first = llm_query_async('a')\n"
        "first.add_done_callback(lambda _: box.append(llm_query('b')))\n"
        "for _ in range(2000):\n"
        "    if box:\n"
        "        break\n"
        "    time.sleep(0.01)\n"
        "print(box, llm_query('c'))\n"
    )
    try:
        result = env.execute(code)
    finally:
        env.cleanup()
    assert result.error is None and not result.timed_out, result.stderr
    assert result.stdout.strip() == "['b'] c"


class ParentAndChildLM(BaseLM):
    """The root writes code that starts a child RLM in a thread and answers without waiting
    for it; the child's own model call is held until cancelled."""

    provider = "fake"

    def __init__(self) -> None:
        super().__init__("pc", max_retries=0)
        self.child_inside = Overlap(hold=100)
        self.cancelled = 0

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        if any("The task is given in `context`" in str(m["content"]) for m in messages):
            try:
                async with self.child_inside:
                    pass
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            return LMResponse(text="FINAL(late)", model="pc")
        code = (
            "```repl\n"
            "import threading, time\n"
            "threading.Thread(target=lambda: rlm_query('CHILD-TASK'), daemon=True).start()\n"
            "while not child_started():\n"
            "    time.sleep(0.01)\n"
            "FINAL('parent done')\n"
            "```"
        )
        return LMResponse(text=code, model="pc")


def test_a_child_still_running_when_its_parent_ends_is_cancelled() -> None:
    from rlm import RLM
    from rlm.core.events import Observer

    client = ParentAndChildLM()
    ends: list[tuple[int, str]] = []

    class Ends(Observer):
        def on_run_end(self, run: Any, completion: Any) -> None:
            ends.append((run.depth, completion.stop_reason))

    with RLM(
        backend=client,
        environment="local",
        max_depth=2,
        custom_tools={"child_started": lambda: client.child_inside.current > 0},
        observers=[Ends()],
    ) as rlm:
        out = rlm.completion("ctx")
        deadline = time.monotonic() + 30  # a hang guard: the cancellation follows at once
        while (1, "cancelled") not in ends and time.monotonic() < deadline:
            time.sleep(0.02)
    assert out.response == "parent done"
    assert (1, "cancelled") in ends
    assert client.cancelled == 1
    assert client.child_inside.peak == 1 and not client.child_inside.broken
