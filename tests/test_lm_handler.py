"""The LMHandler server: auth, framing abuse, concurrency, routing, limits, records, shutdown."""

from __future__ import annotations

import asyncio
import collections
import functools
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from overlap import Overlap, wait_event

from rlm.aio import run_sync
from rlm.clients.base import BaseLM
from rlm.core.lm_handler import LMHandler, Session
from rlm.core.types import ChildResult, LMResponse, Message, SubcallRecord, Usage, UsageLedger
from rlm.errors import (
    AuthenticationError,
    ConfigurationError,
    ProtocolError,
    ProviderError,
    RemoteError,
)
from rlm.lm_service.budget import Budget, Limits
from rlm.lm_service.router import Router
from rlm.runtime.protocol import HEADER, Connection, encode_frame, recv_frame, send_frame

pytestmark = pytest.mark.timeout(60)


class FakeLM(BaseLM):
    """Echoes the last message. "sleep:S" in a prompt delays S seconds; "hold:NAME" waits until
    the test sets `gates[NAME]`; "FAIL" fails the call. `inside` counts the calls in the model
    at once; `cancelled` lists the prompts of calls whose task was cancelled."""

    provider = "fake"

    def __init__(self, model_name: str = "root-model") -> None:
        super().__init__(model_name, max_retries=0)
        self.calls: list[str] = []
        self.closed = False
        self.inside = Overlap()
        self.gates: collections.defaultdict[str, threading.Event] = collections.defaultdict(
            threading.Event
        )
        self.cancelled: list[str] = []

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        text = str(messages[-1]["content"])
        self.calls.append(text)
        try:
            async with self.inside:
                await self._wait_as_told(text)
        except asyncio.CancelledError:
            self.cancelled.append(text)
            raise
        if "FAIL" in text:
            raise ProviderError("simulated failure", provider="fake", status_code=500)
        usage = Usage(input_tokens=len(text), output_tokens=3)
        return LMResponse(text=f"{self.model_name}:{text}", model=self.model_name, usage=usage)

    async def _wait_as_told(self, text: str) -> None:
        match = re.search(r"sleep:([\d.]+)", text)
        if match:
            await asyncio.sleep(float(match.group(1)))
        held = re.search(r"hold:(\w+)", text)
        if held and not await wait_event(self.gates[held.group(1)]):
            raise RuntimeError(f"the test never released {held.group(1)!r}")

    async def aclose(self) -> None:
        self.closed = True


async def _live_tasks() -> set[asyncio.Task[Any]]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test must leave no task on the shared loop and no protocol reader thread behind."""
    before = run_sync(_live_tasks())
    yield
    deadline = time.monotonic() + 3
    while True:
        tasks = run_sync(_live_tasks()) - before
        readers = [t for t in threading.enumerate() if t.name == "rlm-protocol-reader"]
        if not tasks and not readers:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"leaked tasks {tasks} / reader threads {readers}")
        time.sleep(0.02)


@pytest.fixture
def make_handler() -> Iterator[Callable[..., LMHandler]]:
    handlers: list[LMHandler] = []

    def make(client: BaseLM | None = None, **kwargs: Any) -> LMHandler:
        handler = LMHandler(client or FakeLM(), **kwargs)
        handler.start()
        handlers.append(handler)
        return handler

    yield make
    for handler in handlers:
        handler.stop()


def connect(handler: LMHandler, session: Session) -> Connection:
    assert handler.address is not None
    return Connection.connect(*handler.address, session.token, timeout=10)


def raw_socket(handler: LMHandler) -> socket.socket:
    assert handler.address is not None
    sock = socket.create_connection(handler.address, timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def raw_hello(sock: socket.socket, session: Session) -> None:
    send_frame(sock, {"type": "hello", "token": session.token, "version": 1})
    reply = recv_frame(sock)
    assert reply is not None and reply["ok"] is True


def read_until_closed(sock: socket.socket) -> list[dict[str, Any]]:
    """Frames the server sent before closing; fails (socket timeout) if it never closes."""
    frames: list[dict[str, Any]] = []
    while True:
        try:
            frame = recv_frame(sock)
        except (ConnectionResetError, ProtocolError):
            return frames
        if frame is None:
            return frames
        frames.append(frame)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# -- basics ------------------------------------------------------------------------------------


def test_start_binds_loopback_port_zero(make_handler: Callable[..., LMHandler]) -> None:
    handler = make_handler()
    host, port = handler.start()
    assert host == "127.0.0.1" and port > 0
    assert handler.start() == (host, port) == handler.address


def test_llm_round_trip(make_handler: Callable[..., LMHandler]) -> None:
    handler = make_handler()
    session = handler.open_session()
    with connect(handler, session) as conn:
        assert conn.depth == 0
        result = conn.request({"type": "llm", "prompt": "hello"}, timeout=10)
        assert conn.request({"type": "ping"}, timeout=10) == {}
    assert result["text"] == "root-model:hello"
    assert result["model"] == "root-model"
    assert result["usage"]["input_tokens"] == 5 and result["usage"]["output_tokens"] == 3
    assert set(result) == {"text", "model", "usage", "latency", "cached"}  # no prompt echo


def test_llm_batch_keeps_order_and_fails_one_slot(make_handler: Callable[..., LMHandler]) -> None:
    handler = make_handler()
    session = handler.open_session()
    prompts = [f"p{i}" if i != 37 else "p37 FAIL" for i in range(100)]
    with connect(handler, session) as conn:
        results = conn.request({"type": "llm_batch", "prompts": prompts}, timeout=20)["results"]
    assert len(results) == 100
    for i, item in enumerate(results):
        if i == 37:
            assert item["error"]["type"] == "ProviderError"
            assert "result" not in item
        else:
            assert item["result"]["text"] == f"root-model:p{i}"


def test_untyped_reference_requests(make_handler: Callable[..., LMHandler]) -> None:
    deep = FakeLM("deep")
    handler = make_handler(FakeLM(), depth_clients={5: deep})
    session = handler.open_session()
    with connect(handler, session) as conn:
        single = conn.request({"prompt": "hi", "model": None, "depth": 5}, timeout=10)
        batch = conn.request({"prompts": ["a", "b"], "depth": 5}, timeout=10)
    assert single["text"] == "root-model:hi"  # a request's depth is ignored: 0 + 1, not 5
    assert [r["result"]["text"] for r in batch["results"]] == ["root-model:a", "root-model:b"]
    assert deep.calls == []


def test_token_never_in_reprs(make_handler: Callable[..., LMHandler]) -> None:
    handler = make_handler()
    session = handler.open_session()
    endpoint = handler.endpoint(session)
    assert endpoint.token == session.token and len(session.token) >= 40
    assert (endpoint.host, endpoint.port) == handler.address
    for text in (repr(session), repr(endpoint), repr(handler), str(session)):
        assert session.token not in text


# -- framing abuse -------------------------------------------------------------------------------


def test_frames_written_one_byte_at_a_time(make_handler: Callable[..., LMHandler]) -> None:
    handler = make_handler()
    session = handler.open_session()
    with raw_socket(handler) as sock:
        data = encode_frame({"type": "hello", "token": session.token, "version": 1})
        data += encode_frame({"type": "llm", "prompt": "slow", "id": "x"})
        for i in range(len(data)):
            sock.sendall(data[i : i + 1])
            time.sleep(0.0005)
        assert recv_frame(sock) == {"type": "hello", "ok": True, "version": 1, "depth": 0}
        reply = recv_frame(sock)
    assert reply is not None and reply["id"] == "x"
    assert reply["result"]["text"] == "root-model:slow"


def test_several_frames_in_one_write(make_handler: Callable[..., LMHandler]) -> None:
    handler = make_handler()
    session = handler.open_session()
    with raw_socket(handler) as sock:
        data = encode_frame({"type": "hello", "token": session.token, "version": 1})
        for i in range(3):
            data += encode_frame({"type": "llm", "prompt": f"m{i}", "id": i})
        sock.sendall(data)
        assert recv_frame(sock)["ok"] is True  # type: ignore[index]
        replies = [recv_frame(sock) for _ in range(3)]
    by_id = {r["id"]: r["result"]["text"] for r in replies if r}
    assert by_id == {0: "root-model:m0", 1: "root-model:m1", 2: "root-model:m2"}


def test_oversized_frame_closes_only_that_connection(
    make_handler: Callable[..., LMHandler],
) -> None:
    handler = make_handler(max_frame_bytes=1024)
    session = handler.open_session()
    with raw_socket(handler) as sock:
        raw_hello(sock, session)
        sock.sendall(HEADER.pack(1025) + b"{" * 100)
        frames = read_until_closed(sock)
        assert all(f["id"] is None and "Frame" in f["error"]["type"] for f in frames)
    with raw_socket(handler) as sock:
        raw_hello(sock, session)
        sock.sendall(HEADER.pack(0xFFFFFFFF))
        read_until_closed(sock)
    with connect(handler, session) as conn:
        assert conn.request({"type": "llm", "prompt": "still here"}, timeout=10)["text"]


@pytest.mark.parametrize(
    "body", [b'{"type": "llm", "prompt": ', b'{"a": "\xff"}', b'{"a": NaN}', b"[1]"]
)
def test_unparseable_frame_gets_protocol_error_then_close(
    make_handler: Callable[..., LMHandler], body: bytes
) -> None:
    handler = make_handler()
    session = handler.open_session()
    with raw_socket(handler) as sock:
        raw_hello(sock, session)
        sock.sendall(HEADER.pack(len(body)) + body)
        frames = read_until_closed(sock)
    assert frames == [
        {"id": None, "error": {"type": "ProtocolError", "message": frames[0]["error"]["message"]}}
    ]
    wait_for(lambda: handler.open_connections == 0)


def test_client_disconnect_mid_frame_and_mid_request(
    make_handler: Callable[..., LMHandler],
) -> None:
    client = FakeLM()
    handler = make_handler(client)
    session = handler.open_session()
    with raw_socket(handler) as sock:
        raw_hello(sock, session)
        sock.sendall(HEADER.pack(100) + b'{"type": "llm"')
    with raw_socket(handler) as sock:
        raw_hello(sock, session)
        send_frame(sock, {"type": "llm", "prompt": "sleep:30", "id": 1})
        wait_for(lambda: "sleep:30" in client.calls)
    wait_for(lambda: handler.open_connections == 0)
    records = session.take_records()
    assert [r.error for r in records] == ["CancellationError: request cancelled"]
    with connect(handler, session) as conn:
        assert conn.request({"type": "llm", "prompt": "ok"}, timeout=10)["text"] == "root-model:ok"


# -- authentication ------------------------------------------------------------------------------


def test_wrong_token_is_refused(make_handler: Callable[..., LMHandler]) -> None:
    handler = make_handler()
    handler.open_session()
    assert handler.address is not None
    with pytest.raises(AuthenticationError):
        Connection.connect(*handler.address, "not-the-token", timeout=10)
    with raw_socket(handler) as sock:
        send_frame(sock, {"type": "hello", "token": "x" * 43, "version": 1})
        frames = read_until_closed(sock)
    assert frames[0]["type"] == "error"
    assert frames[0]["error"]["type"] == "AuthenticationError"
    session = handler.open_session()
    with raw_socket(handler) as sock:  # the right token with another protocol version
        send_frame(sock, {"type": "hello", "token": session.token, "version": 2})
        frames = read_until_closed(sock)
    assert [f["error"]["type"] for f in frames] == ["AuthenticationError"]
    assert "version" in frames[0]["error"]["message"]


@pytest.mark.parametrize(
    "first",
    [
        {"type": "llm", "prompt": "hi", "id": 1},
        {"type": "hello", "version": 1},
        {"type": "hello", "token": 123, "version": 1},
        None,  # nothing at all: the hello deadline closes the connection
    ],
    ids=["request-first", "no-token", "token-not-str", "silent"],
)
def test_missing_hello_is_refused(
    make_handler: Callable[..., LMHandler], first: dict[str, Any] | None
) -> None:
    client = FakeLM()
    handler = make_handler(client, hello_timeout=0.3)
    handler.open_session()
    with raw_socket(handler) as sock:
        if first is not None:
            send_frame(sock, first)
        frames = read_until_closed(sock)
    assert [f["error"]["type"] for f in frames] == ["AuthenticationError"]
    assert client.calls == []


def test_oversized_hello_is_refused(make_handler: Callable[..., LMHandler]) -> None:
    handler = make_handler()
    session = handler.open_session()
    with raw_socket(handler) as sock:
        send_frame(sock, {"type": "hello", "token": session.token, "version": 1, "pad": "x" * 5000})
        frames = read_until_closed(sock)
    assert [f["error"]["type"] for f in frames] == ["AuthenticationError"]


def test_close_session_revokes_token_and_closes_connections(
    make_handler: Callable[..., LMHandler],
) -> None:
    handler = make_handler()
    session = handler.open_session()
    other = handler.open_session()
    conn = connect(handler, session)
    other_conn = connect(handler, other)
    try:
        assert conn.request({"type": "ping"}, timeout=10) == {}
        handler.close_session(session)
        wait_for(lambda: conn.closed)
        with pytest.raises(ProtocolError):
            conn.request({"type": "ping"}, timeout=10)
        with pytest.raises(AuthenticationError):
            connect(handler, session)
        assert other_conn.request({"type": "ping"}, timeout=10) == {}
    finally:
        conn.close()
        other_conn.close()


def test_connection_cap(make_handler: Callable[..., LMHandler]) -> None:
    """Authenticated connections are capped; one over the cap is refused at its hello (an
    idle connection without a hello holds no authenticated slot: see test_redteam.py)."""
    handler = make_handler(max_connections=2)
    session = handler.open_session()
    with connect(handler, session) as a, connect(handler, session) as b:
        with pytest.raises(AuthenticationError, match="at most 2 connections"):
            connect(handler, session)
        assert a.request({"type": "ping"}, timeout=10) == {}
        assert b.request({"type": "ping"}, timeout=10) == {}


# -- concurrency ---------------------------------------------------------------------------------


def test_200_concurrent_connections(make_handler: Callable[..., LMHandler]) -> None:
    handler = make_handler()
    session = handler.open_session()
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with connect(handler, session) as conn:
                results[n] = conn.request({"type": "llm", "prompt": f"c{n}"}, timeout=30)["text"]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert results == {n: f"root-model:c{n}" for n in range(200)}


def test_requests_in_flight_answered_out_of_order(make_handler: Callable[..., LMHandler]) -> None:
    client = FakeLM()
    handler = make_handler(client)
    session = handler.open_session()
    order: list[str] = []
    with connect(handler, session) as conn:
        futures = {
            name: conn.submit({"type": "llm", "prompt": f"{name} hold:{name}"})
            for name in ("slow", "mid", "fast")
        }
        for name, future in futures.items():
            future.add_done_callback(functools.partial(lambda n, _: order.append(n), name))
        # All three are at the model together: one connection carries requests in parallel.
        assert client.inside.wait_inside(3), f"at most {client.inside.peak} in flight at once"
        texts = {}
        for name in ("fast", "mid", "slow"):  # each answered as soon as the model is, not FIFO
            client.gates[name].set()
            texts[name] = futures[name].result(10)["text"]
            assert order[-1] == name
    assert order == ["fast", "mid", "slow"]
    assert texts["slow"] == "root-model:slow hold:slow"
    assert texts["fast"] == "root-model:fast hold:fast"


def test_stop_cancels_a_slow_request_and_waits_for_no_hung_client(
    make_handler: Callable[..., LMHandler],
) -> None:
    client = FakeLM()
    handler = make_handler(client, hello_timeout=60)
    session = handler.open_session()
    hung = raw_socket(handler)  # connected, never says hello
    conn = connect(handler, session)
    try:
        future = conn.submit({"type": "llm", "prompt": "hold:never"})
        assert client.inside.wait_inside(1)
        stopping = threading.Thread(target=handler.stop)
        stopping.start()
        # A hang guard only: waiting for the hung client's hello (60 s) or for the held call
        # (never released) would outlast it.
        stopping.join(20)
        assert not stopping.is_alive(), "stop() waited for a hung client or a slow request"
        wait_for(lambda: client.cancelled == ["hold:never"])  # the model call was cancelled
        handler.stop()  # idempotent
        assert handler.address is None
        with pytest.raises(ProtocolError):
            future.result(5)
        hung.settimeout(5)
        assert read_until_closed(hung) == []
    finally:
        conn.close()
        hung.close()
    handler.start()  # a stopped handler can serve again, on a new port
    with connect(handler, session) as again:
        assert again.request({"type": "llm", "prompt": "back"}, timeout=10)["text"]


# -- routing -------------------------------------------------------------------------------------


def test_router_rules() -> None:
    root, sub, deep, zero = FakeLM("root"), FakeLM("sub"), FakeLM("deep"), FakeLM("zero")
    router = Router(root, others=[sub], by_depth={2: deep})
    assert router.route(0, None) is root
    assert router.route(1, None) is sub
    assert router.route(2, None) is deep
    assert router.route(3, None) is sub
    assert router.route(3, "deep") is deep and router.route(0, "sub") is sub
    assert Router(root).route(4, None) is root
    assert Router(root, by_depth={0: zero}).route(0, None) is zero
    assert router.clients() == [root, sub, deep]
    assert Router(root, others=[root, sub], by_depth={1: sub}).clients() == [root, sub]
    # A model nobody registered: the depth's client asks its provider for that model, one twin
    # per (client, model), sharing the client's connection; twins are not registered clients.
    twin = router.route(1, "gpt-unknown")
    assert twin.model_name == "gpt-unknown" and isinstance(twin, FakeLM)
    assert twin._connection_owner is sub and router.route(1, "gpt-unknown") is twin
    assert router.route(0, "gpt-unknown")._connection_owner is root
    assert router.clients() == [root, sub, deep]
    with pytest.raises(ConfigurationError, match="non-empty"):
        router.route(0, "")


def test_routing_over_the_wire(make_handler: Callable[..., LMHandler]) -> None:
    root, sub, deep = FakeLM("root"), FakeLM("sub"), FakeLM("deep")
    handler = make_handler(root, other_clients=[sub], depth_clients={2: deep})
    top = handler.open_session(depth=0)
    child = handler.open_session(depth=1)
    with connect(handler, top) as conn, connect(handler, child) as child_conn:
        assert conn.request({"type": "llm", "prompt": "a"}, timeout=10)["model"] == "sub"
        assert child_conn.request({"type": "llm", "prompt": "b"}, timeout=10)["model"] == "deep"
        by_name = conn.request({"type": "llm", "prompt": "c", "model": "root"}, timeout=10)
        assert by_name["model"] == "root"
        # An unregistered name goes to the depth's client (sub), asking for that model.
        unknown = conn.request({"type": "llm", "prompt": "d", "model": "nope"}, timeout=10)
        assert unknown["model"] == "nope" and sub.calls[-1] == "d"
    assert handler.completion("e").model == "root"
    assert handler.completion("f", depth=1).model == "sub"


def test_sandbox_cannot_pass_arbitrary_sampling(make_handler: Callable[..., LMHandler]) -> None:
    handler = make_handler()
    session = handler.open_session()
    with connect(handler, session) as conn:
        ok = conn.request(
            {"type": "llm", "prompt": "a", "sampling": {"temperature": 0}}, timeout=10
        )
        assert ok["text"] == "root-model:a"
        with pytest.raises(RemoteError) as info:
            conn.request({"type": "llm", "prompt": "a", "sampling": {"base_url": "x"}}, timeout=10)
    assert info.value.error_type == "ProtocolError"


def test_malformed_requests_are_typed_errors(make_handler: Callable[..., LMHandler]) -> None:
    handler = make_handler()
    session = handler.open_session()
    bad: list[dict[str, Any]] = [
        {"type": "dance"},
        {"type": "llm"},
        {"type": "llm", "prompt": 5},
        {"type": "llm_batch", "prompts": "nope"},
        {"type": "tool", "name": 3},
        {"type": "rlm_batch", "prompts": ["a"], "contexts": []},
    ]
    with connect(handler, session) as conn:
        for request in bad:
            with pytest.raises(RemoteError) as info:
                conn.request(request, timeout=10)
            assert info.value.error_type == "ProtocolError", request
        assert conn.request({"type": "ping"}, timeout=10) == {}


# -- limits and accounting -----------------------------------------------------------------------


def test_budget_trips_and_later_requests_fail_fast(make_handler: Callable[..., LMHandler]) -> None:
    client = FakeLM()
    handler = make_handler(client)
    session = handler.open_session(budget=Budget(Limits(max_subcalls=2)), tools={"f": lambda: 1})
    with connect(handler, session) as conn:
        for prompt in ("a", "b"):
            conn.request({"type": "llm", "prompt": prompt}, timeout=10)
        for request in (
            {"type": "llm", "prompt": "c"},
            {"type": "llm", "prompt": "d"},
            {"type": "tool", "name": "f"},
        ):
            with pytest.raises(RemoteError) as info:
                conn.request(request, timeout=10)
            assert info.value.error_type == "SubcallLimitExceededError"
        batch = conn.request({"type": "llm_batch", "prompts": ["e", "f"]}, timeout=10)
    assert [r["error"]["type"] for r in batch["results"]] == ["SubcallLimitExceededError"] * 2
    assert client.calls == ["a", "b"]


def test_usage_ledger_and_records(make_handler: Callable[..., LMHandler]) -> None:
    root, sub = FakeLM("root"), FakeLM("sub")
    handler = make_handler(root, other_clients=[sub])
    ledger = UsageLedger()
    budget = Budget(Limits())
    started: list[SubcallRecord] = []
    finished: list[SubcallRecord] = []
    session = handler.open_session(
        ledger=ledger, budget=budget, on_start=started.append, on_record=finished.append
    )
    with connect(handler, session) as conn:
        conn.request({"type": "llm", "prompt": "x" * 300}, timeout=10)
        conn.request({"type": "llm_batch", "prompts": ["ab", "FAIL"]}, timeout=10)
    run_sync(handler.acomplete("root turn", depth=0, session=session, kind="root"))
    summary = ledger.summary().model_usage_summaries
    assert summary["sub"].total_calls == 2
    assert summary["sub"].total_input_tokens == 302
    assert summary["root"].total_calls == 1
    assert budget.tokens == 300 + 3 + 2 + 3 + 9 + 3
    assert budget.subcalls == 3  # root turns are not sub-calls
    records = session.take_records()
    assert session.take_records() == []
    assert len(records) == 3 and len(started) == 3 and len(finished) == 3
    big = next(r for r in records if r.prompt_preview.startswith("x"))
    assert big.kind == "llm" and big.depth == 1 and big.model == "sub"
    assert big.prompt_preview == "x" * 300  # kept whole: under RECORD_PROMPT_CHARS
    assert big.response == "sub:" + "x" * 300
    assert big.usage == Usage(input_tokens=300, output_tokens=3)
    assert big.ended >= big.started and len(big.id) == 32 and big.error is None
    failed = next(r for r in records if r.prompt_preview == "FAIL")
    assert failed.error is not None and failed.error.startswith("ProviderError")


# -- rlm and tools -------------------------------------------------------------------------------


def test_rlm_spawns_a_child_below_max_depth(make_handler: Callable[..., LMHandler]) -> None:
    client = FakeLM()
    handler = make_handler(client)
    calls: list[tuple[Any, Any, str | None]] = []

    async def spawn(prompt: Any, context: Any, model: str | None) -> ChildResult:
        calls.append((prompt, context, model))
        return ChildResult(f"child:{prompt}", "child", Usage(10, 2), value=[1, 2])

    session = handler.open_session(
        depth=0, max_depth=2, spawn=spawn, budget=Budget(Limits(max_subcalls=5))
    )
    with connect(handler, session) as conn:
        result = conn.request({"type": "rlm", "prompt": "q", "context": {"k": 1}}, timeout=10)
        batch = conn.request(
            {"type": "rlm_batch", "prompts": ["a", "b"], "contexts": ["ca", "cb"]}, timeout=10
        )
        named = conn.request({"type": "rlm", "prompt": "n", "model": "root-model"}, timeout=10)
    assert result == {
        "text": "child:q",
        "model": "child",
        "usage": Usage(10, 2).to_dict(),
        "stop_reason": "final_answer",
        "value": [1, 2],
        "run_id": "",  # the fake spawn names no child run
    }
    assert [r["result"]["text"] for r in batch["results"]] == ["child:a", "child:b"]
    assert named["text"] == "child:n"
    assert calls == [
        ("q", {"k": 1}, None),
        ("a", "ca", None),
        ("b", "cb", None),
        ("n", None, "root-model"),
    ]
    assert client.calls == []
    assert session.budget is not None and session.budget.subcalls == 4
    records = session.take_records()
    assert {r.kind for r in records} == {"rlm"} and len(records) == 4


def test_rlm_at_max_depth_is_a_plain_lm_call(make_handler: Callable[..., LMHandler]) -> None:
    client = FakeLM()
    handler = make_handler(client)
    spawned: list[Any] = []

    async def spawn(prompt: Any, context: Any, model: str | None) -> ChildResult:
        spawned.append(prompt)
        return ChildResult("child", "child")

    at_max = handler.open_session(depth=1, max_depth=2, spawn=spawn)
    no_spawn = handler.open_session(depth=0, max_depth=3)
    with connect(handler, at_max) as conn, connect(handler, no_spawn) as other:
        result = conn.request({"type": "rlm", "prompt": "Q", "context": "CTX"}, timeout=10)
        plain = other.request({"type": "rlm", "prompt": "P"}, timeout=10)
    assert spawned == []
    assert result["text"] == "root-model:Q\n\nCTX"
    assert result["stop_reason"] == "final_answer" and result["value"] is None
    assert plain["text"] == "root-model:P"
    assert client.calls == ["Q\n\nCTX", "P"]


def test_tools(make_handler: Callable[..., LMHandler]) -> None:
    handler = make_handler()

    def add(a: int, b: int = 0) -> int:
        return a + b

    async def shout(text: str) -> dict[str, str]:
        await asyncio.sleep(0)
        return {"loud": text.upper()}

    def broken() -> None:
        raise ValueError("tool says no")

    tools: dict[str, Callable[..., Any]] = {
        "add": add,
        "shout": shout,
        "obj": lambda: object(),
        "broken": broken,
    }
    session = handler.open_session(tools=tools)
    with connect(handler, session) as conn:

        def call(name: str, *args: Any, **kwargs: Any) -> Any:
            request = {"type": "tool", "name": name, "args": list(args), "kwargs": kwargs}
            return conn.request(request, timeout=10)

        assert call("add", 2, b=3) == {"value": 5}
        assert call("shout", "hi") == {"value": {"loud": "HI"}}
        errors = {}
        for name in ("nope", "obj", "broken"):
            with pytest.raises(RemoteError) as info:
                call(name)
            errors[name] = info.value
    assert errors["nope"].error_type == "ConfigurationError"
    assert "add, broken, obj, shout" in errors["nope"].message
    assert errors["obj"].error_type == "TypeError"
    assert (
        errors["broken"].error_type == "ValueError" and "tool says no" in errors["broken"].message
    )
    records = session.take_records()
    assert [r.kind for r in records].count("tool") == 4  # unknown tools are not calls
    added = next(r for r in records if r.prompt_preview.startswith("add"))
    assert added.response == "5" and added.depth == 1


def test_aclose_clients_and_sync_completion(make_handler: Callable[..., LMHandler]) -> None:
    root, sub = FakeLM("root"), FakeLM("sub")
    handler = make_handler(root, other_clients=[sub])
    assert handler.completion("hi").text == "root:hi"
    run_sync(handler.aclose_clients())
    assert root.closed and sub.closed


def test_handler_works_from_the_loop_thread(make_handler: Callable[..., LMHandler]) -> None:
    handler = make_handler()
    session = handler.open_session()

    async def inside() -> str:
        await handler.astart()
        response = await handler.acomplete("x", depth=1, session=session)
        return response.text

    assert run_sync(inside()) == "root-model:x"
    with pytest.raises(RuntimeError):
        run_sync(_call_sync_start(handler))


async def _call_sync_start(handler: LMHandler) -> None:
    handler.start()
