"""The LMHandler: the one server every sub-call of every environment goes through.

An asyncio TCP server on 127.0.0.1 (port 0) running on the shared rlm loop. Each environment
gets a `Session` (a secret token plus its depth, budget, ledger, child-RLM spawner and tools);
a connection proves which session it belongs to with the token in its hello frame. After that
it may send any number of requests, several in flight at once, each answered by id. The host
owns depth, limits and accounting: nothing in a request can change them.

`acomplete` is the single path for every LM call, the RLM loop's own root turns included, so
budget checks, usage ledgers and sub-call records cannot be bypassed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import inspect
import json
import logging
import secrets
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rlm.clients.base import BaseLM
from rlm.core.aio import get_loop, in_loop_thread, on_loop, run_sync, to_thread
from rlm.core.budget import Budget, check_priced
from rlm.core.cache import SubcallCache, cache_key
from rlm.core.router import Router
from rlm.core.types import LMResponse, Prompt, SubcallRecord, Usage, UsageLedger, to_messages
from rlm.environments.base import HandlerEndpoint
from rlm.errors import (
    AuthenticationError,
    ConfigurationError,
    ProtocolError,
    ProviderError,
    RemoteError,
    RLMError,
    error_type_name,
)
from rlm.runtime.protocol import MAX_FRAME_BYTES, PROTOCOL_VERSION, encode_frame, read_frame

logger = logging.getLogger(__name__)

SpawnFn = Callable[[Any, Any, str | None], Awaitable[dict[str, Any]]]
"""(prompt, context, model) -> {"text", "model", "usage", "stop_reason", "value"}: a child RLM."""

RecordCallback = Callable[[SubcallRecord], None]
CallKind = Literal["root", "llm", "rlm"]

HELLO_MAX_BYTES = 4096  # a hello is ~100 bytes; nothing large is read before authentication
# A connection still waiting for its hello this long may be dropped to make room for a new one
# once `max_pending_hellos` are waiting: an honest client says hello within milliseconds, so
# idle connections (a flood of them) give way and new clients are still served.
HELLO_EVICT_AGE = 0.5
# Sub-call records (logs, UIs, replay) keep this much of each prompt: enough to read and to
# match on replay, without holding every large prompt twice in memory.
RECORD_PROMPT_CHARS = 10_000
MAX_ERROR_MESSAGE_CHARS = 10_000
# Sampling arguments a sandbox may set. Anything else (model, base_url, extra headers, ...)
# would let code in the sandbox change who is called and at what price.
WIRE_SAMPLING_KEYS = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "reasoning_effort",
    }
)
REQUEST_TYPES = ("llm", "llm_batch", "rlm", "rlm_batch", "tool", "ping")


@dataclass(eq=False)
class Session:
    """What one environment may do, fixed host-side when its token is issued."""

    token: str = field(repr=False)
    depth: int = 0
    max_depth: int = 1
    budget: Budget | None = None
    ledger: UsageLedger | None = None
    spawn: SpawnFn | None = field(default=None, repr=False)
    tools: dict[str, Callable[..., Any]] = field(default_factory=dict, repr=False)
    on_start: RecordCallback | None = field(default=None, repr=False)
    on_record: RecordCallback | None = field(default=None, repr=False)
    closed: bool = False
    _records: list[SubcallRecord] = field(default_factory=list, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def take_records(self) -> list[SubcallRecord]:
        """Records of the requests completed since the last call (each is returned once)."""
        with self._lock:
            records, self._records = self._records, []
        return records

    def _add_record(self, record: SubcallRecord) -> None:
        with self._lock:
            self._records.append(record)


class _ToolFailure(Exception):
    """An exception raised by a user tool: reported with its own type, not logged as a bug."""

    def __init__(self, original: BaseException) -> None:
        self.original = original
        super().__init__(str(original))


class _Conn:
    """One client connection: its streams, session and in-flight request tasks."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        task: asyncio.Task[Any] | None,
        max_in_flight: int,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.task = task
        self.session: Session | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.write_lock = asyncio.Lock()
        self.slots = asyncio.Semaphore(max_in_flight)
        self.opened = time.monotonic()

    def request_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.slots.release()

    def abort(self) -> list[asyncio.Task[Any]]:
        """Drop the connection now and cancel its work; returns the tasks to wait for."""
        self.writer.transport.abort()
        tasks: list[asyncio.Task[Any]] = list(self.tasks)
        if self.task is not None:
            tasks.append(self.task)
        for task in tasks:
            task.cancel()
        return tasks


def _error_payload(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, _ToolFailure):
        exc = exc.original
    if isinstance(exc, RemoteError):
        kind, message = exc.error_type, exc.message
    else:
        kind, message = error_type_name(exc), str(exc)
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        message = message[:MAX_ERROR_MESSAGE_CHARS] + "... [truncated]"
    return {"type": kind, "message": message}


def _log_failure(exc: BaseException, what: str) -> None:
    if isinstance(exc, _ToolFailure):
        logger.debug("%s failed in the tool: %s: %s", what, error_type_name(exc.original), exc)
    elif isinstance(exc, RLMError):
        logger.debug("%s failed: %s: %s", what, error_type_name(exc), exc)
    else:
        logger.error("unexpected error serving %s", what, exc_info=exc)


def _prompt_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(message.get("content", "")) for message in prompt)


def _check_prompt(value: Any, what: str = "prompt") -> Prompt:
    if isinstance(value, str):
        return value
    try:
        to_messages(value)
    except TypeError:
        raise ProtocolError(
            f"{what} must be a string or a list of {{'role', 'content'}} messages"
        ) from None
    result: list[dict[str, Any]] = value
    return result


def _optional_model(message: Mapping[str, Any]) -> str | None:
    model = message.get("model")
    if model is not None and not isinstance(model, str):
        raise ProtocolError("'model' must be a string")
    return model


def _wire_sampling(message: Mapping[str, Any]) -> dict[str, Any]:
    sampling = message.get("sampling")
    if sampling is None:
        return {}
    if not isinstance(sampling, dict):
        raise ProtocolError("'sampling' must be an object")
    unknown = sorted(set(sampling) - WIRE_SAMPLING_KEYS)
    if unknown:
        raise ProtocolError(
            f"sampling arguments not allowed from a sandbox: {unknown}; "
            f"allowed: {sorted(WIRE_SAMPLING_KEYS)}"
        )
    return dict(sampling)


def _list_field(message: Mapping[str, Any], name: str) -> list[Any]:
    value = message.get(name)
    if not isinstance(value, list):
        raise ProtocolError(f"{name!r} must be a list")
    return value


def _with_context(prompt: Prompt, context: Any) -> Prompt:
    """A plain LM call standing in for a child RLM: the context goes after the prompt, as text."""
    text = (
        context
        if isinstance(context, str)
        else json.dumps(context, ensure_ascii=False, default=str)
    )
    if isinstance(prompt, str):
        return f"{prompt}\n\n{text}"
    return [*prompt, {"role": "user", "content": text}]


def _spawn_result(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise TypeError(f"spawn must return a dict, got {type(raw).__name__}")
    usage = raw.get("usage")
    if isinstance(usage, Usage):
        usage = usage.to_dict()
    result = {
        "text": str(raw.get("text", "")),
        "model": str(raw.get("model", "")),
        "usage": Usage.from_dict(usage or {}).to_dict(),
        "stop_reason": str(raw.get("stop_reason", "final_answer")),
        "value": raw.get("value"),
        "run_id": str(raw.get("run_id", "")),
    }
    try:
        json.dumps(result["value"], allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise TypeError(
            f"the child RLM's value ({type(result['value']).__name__}) is not JSON-serialisable"
        ) from None
    return result


def _endpoint(client: BaseLM) -> str | None:
    """Where a client sends requests (part of a sub-call cache key), when it says."""
    endpoint = getattr(client, "base_url", None) or getattr(client, "azure_endpoint", None)
    return endpoint if isinstance(endpoint, str) else None


def _call_back(callback: RecordCallback | None, record: SubcallRecord) -> None:
    if callback is None:
        return
    try:
        callback(record)
    except Exception:
        logger.exception("a sub-call callback raised; the request itself is unaffected")


async def _gather_items(
    items: Sequence[Coroutine[Any, Any, dict[str, Any]]], limit: int | None = None
) -> dict[str, Any]:
    """Run batch items concurrently (at most `limit` at once); one failing item is an error in
    its own slot only."""
    slots = asyncio.Semaphore(limit) if limit else None

    async def one(item: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
        try:
            if slots is None:
                return {"result": await item}
            async with slots:
                return {"result": await item}
        except Exception as exc:
            _log_failure(exc, "a batch item")
            return {"error": _error_payload(exc)}

    return {"results": list(await asyncio.gather(*(one(item) for item in items)))}


_RUNNING: weakref.WeakValueDictionary[tuple[str, int], LMHandler] = weakref.WeakValueDictionary()


def running_handler(address: tuple[str, int]) -> LMHandler | None:
    """The started LMHandler of this process listening at `address`, if any.

    How in-process callers that know only an address (the reference's `LocalREPL(
    lm_handler_address=...)`, `send_lm_request`) reach a handler without weakening its
    authentication: they ask it for a session here instead of connecting without a token.
    """
    return _RUNNING.get((str(address[0]), int(address[1])))


class LMHandler:
    """Serves LM calls, child RLMs and tools to environments; routes, limits and accounts them."""

    def __init__(
        self,
        client: BaseLM,
        *,
        other_clients: Sequence[BaseLM] = (),
        depth_clients: Mapping[int, BaseLM] | None = None,
        host: str = "127.0.0.1",
        max_frame_bytes: int = MAX_FRAME_BYTES,
        frame_timeout: float = 30.0,
        hello_timeout: float = 10.0,
        max_connections: int = 1024,
        max_in_flight: int = 256,
        max_session_connections: int = 256,
        max_pending_hellos: int = 128,
        cache: SubcallCache | None = None,
        batch_max_concurrent: int | None = None,
    ) -> None:
        limits = (max_connections, max_in_flight, max_session_connections, max_pending_hellos)
        if min(limits) < 1:
            raise ConfigurationError(
                "max_connections, max_in_flight, max_session_connections and "
                "max_pending_hellos must be >= 1"
            )
        if batch_max_concurrent is not None and batch_max_concurrent < 1:
            raise ConfigurationError("batch_max_concurrent must be >= 1")
        self.batch_max_concurrent = batch_max_concurrent  # items of one batch at once (None: all)
        self.router = Router(client, others=other_clients, by_depth=depth_clients)
        self.cache = cache  # the sub-call cache (rlm.core.cache), None when off
        self.host = host
        self.max_frame_bytes = max_frame_bytes
        self.frame_timeout = frame_timeout
        self.hello_timeout = hello_timeout
        self.max_connections = max_connections
        self.max_in_flight = max_in_flight
        self.max_session_connections = max_session_connections
        self.max_pending_hellos = max_pending_hellos
        self.address: tuple[str, int] | None = None
        self._server: asyncio.Server | None = None
        self._start_lock = asyncio.Lock()
        self._sessions: set[Session] = set()
        self._sessions_lock = threading.Lock()
        self._conns: set[_Conn] = set()  # touched on the loop thread only
        self._pending: dict[_Conn, None] = {}  # no hello yet, oldest first (loop thread only)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        """Start listening (idempotent); returns (host, port). From the loop, await `astart`."""
        return run_sync(self._astart())

    async def astart(self) -> tuple[str, int]:
        return await on_loop(self._astart())

    async def _astart(self) -> tuple[str, int]:
        async with self._start_lock:
            if self._server is None or self.address is None:
                server = await asyncio.start_server(
                    self._on_connect,
                    self.host,
                    0,
                    backlog=min(self.max_connections, socket.SOMAXCONN),
                    limit=1 << 20,
                )
                host, port = server.sockets[0].getsockname()[:2]
                self._server = server
                self.address = (host, port)
                _RUNNING[self.address] = self
            return self.address

    def stop(self) -> None:
        """Close the server and every connection, cancelling requests in flight. Idempotent."""
        if in_loop_thread():
            self._shutdown()
        elif self._server is not None or self._conns:
            run_sync(self._astop(), timeout=10.0)

    async def astop(self) -> None:
        await on_loop(self._astop())

    async def _astop(self) -> None:
        tasks = self._shutdown()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    def _shutdown(self) -> list[asyncio.Task[Any]]:
        server, self._server, address, self.address = self._server, None, self.address, None
        if address is not None and _RUNNING.get(address) is self:
            del _RUNNING[address]
        if server is not None:
            server.close()
        tasks: list[asyncio.Task[Any]] = []
        for conn in list(self._conns):
            tasks.extend(conn.abort())
        self._conns.clear()
        self._pending.clear()
        return tasks

    def __enter__(self) -> LMHandler:
        """Start (as the reference's handler does); `stop()` on exit."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    async def aclose_clients(self) -> None:
        """Close every routed client's SDK connections; raises the first failure after all ran."""

        async def close_all() -> list[BaseException | None]:
            return await asyncio.gather(
                *(client.aclose() for client in self.router.clients()), return_exceptions=True
            )

        for outcome in await on_loop(close_all()):
            if isinstance(outcome, BaseException):
                raise outcome

    # -- sessions ----------------------------------------------------------------------------

    def open_session(
        self,
        *,
        depth: int = 0,
        max_depth: int = 1,
        budget: Budget | None = None,
        ledger: UsageLedger | None = None,
        spawn: SpawnFn | None = None,
        tools: Mapping[str, Callable[..., Any]] | None = None,
        on_start: RecordCallback | None = None,
        on_record: RecordCallback | None = None,
    ) -> Session:
        """Issue a token for one environment; depth, budget and tools are fixed here."""
        if depth < 0 or max_depth < 0:
            raise ConfigurationError("depth and max_depth must be >= 0")
        tools = dict(tools or {})
        for name, tool in tools.items():
            if not isinstance(name, str) or not callable(tool):
                raise ConfigurationError(f"tool {name!r} must be a callable under a str name")
        session = Session(
            token=secrets.token_urlsafe(32),
            depth=depth,
            max_depth=max_depth,
            budget=budget,
            ledger=ledger,
            spawn=spawn,
            tools=tools,
            on_start=on_start,
            on_record=on_record,
        )
        with self._sessions_lock:
            self._sessions.add(session)
        return session

    def close_session(self, session: Session) -> None:
        """Revoke the session's token and close its open connections."""
        with self._sessions_lock:
            self._sessions.discard(session)
        session.closed = True
        if in_loop_thread():
            self._close_connections_of(session)
        elif self._server is not None or self._conns:
            asyncio.run_coroutine_threadsafe(self._aclose_connections_of(session), get_loop())

    async def _aclose_connections_of(self, session: Session) -> None:
        self._close_connections_of(session)

    def _close_connections_of(self, session: Session) -> None:
        for conn in list(self._conns):
            if conn.session is session:
                conn.abort()
                self._conns.discard(conn)

    def endpoint(self, session: Session) -> HandlerEndpoint:
        if self.address is None:
            raise ConfigurationError("the LMHandler is not started")
        return HandlerEndpoint(self.address[0], self.address[1], session.token)

    # -- LM calls ----------------------------------------------------------------------------

    async def acomplete(
        self,
        prompt: Prompt,
        *,
        depth: int,
        model: str | None = None,
        session: Session | None = None,
        sampling: Mapping[str, Any] | None = None,
        kind: CallKind = "llm",
    ) -> LMResponse:
        """Make one LM call: budget, routing, the call, usage accounting and the sub-call record."""
        try:
            to_messages(prompt)
        except TypeError as exc:
            raise ConfigurationError(str(exc)) from None
        budget = session.budget if session is not None else None
        client = self.router.route(depth, model)
        record = None
        if session is not None and kind != "root":
            record = self._begin(session, kind, depth, client.model_name, _prompt_text(prompt))
        if budget is not None:
            try:  # a refused sub-call is still a record in the trajectory, with its error
                budget.check()
                check_priced([client], budget.limits)  # `model=` may name an unpriced model
                if kind != "root":
                    budget.start_subcall()
            except BaseException as exc:
                if session is not None and record is not None:
                    self._finish(session, record, error=exc)
                raise
        reservation = None  # set once the budget holds this call's worst case
        try:
            if budget is not None:  # reserve first, so concurrent calls cannot overrun a limit
                worst = budget.estimate(client, prompt, sampling or {})
                await budget.reserve(worst)
                reservation = worst
            try:
                response = await self._call_client(client, prompt, sampling or {})
            except (RLMError, asyncio.CancelledError):
                raise
            except Exception as exc:  # a client bug, not a provider answer: still typed
                raise ProviderError(
                    f"{type(exc).__name__}: {exc}", provider=client.provider
                ) from exc
        except BaseException as exc:
            if budget is not None and reservation is not None:
                budget.release(reservation)
            if session is not None and record is not None:
                self._finish(session, record, error=exc)
            raise
        served_by = response.model or client.model_name
        if budget is not None:
            budget.settle(reservation, response.usage)
        if session is not None and session.ledger is not None:
            session.ledger.record(served_by, response.usage, cached=response.cached)
        if session is not None and record is not None:
            self._finish(
                session, record, response=response.text, model=served_by, usage=response.usage
            )
        return response

    async def _call_client(
        self, client: BaseLM, prompt: Prompt, sampling: Mapping[str, Any]
    ) -> LMResponse:
        """The provider call, or the sub-call cache's stored answer to the same request."""
        cache = self.cache
        key = None
        if cache is not None:
            key = cache_key(
                provider=client.provider,
                model=client.model_name,
                endpoint=_endpoint(client),
                prompt=prompt,
                sampling={**client.sampling_args, **sampling},
            )
            if key is not None and (hit := await cache.aget(key)) is not None:
                return hit
        response = await client.arespond(prompt, **sampling)
        if cache is not None and key is not None:
            await cache.aput(key, response)
        return response

    def completion(self, prompt: Prompt, *, depth: int = 0, model: str | None = None) -> LMResponse:
        """Synchronous `acomplete` without a session (no budget, no records)."""
        return run_sync(self.acomplete(prompt, depth=depth, model=model))

    def _begin(
        self,
        session: Session,
        kind: Literal["llm", "rlm", "tool", "root"],
        depth: int,
        model: str,
        preview: str,
    ) -> SubcallRecord:
        record = SubcallRecord(
            kind="llm" if kind == "root" else kind,
            depth=depth,
            model=model,
            prompt_preview=preview[:RECORD_PROMPT_CHARS],
            response="",
            usage=Usage(),
            started=time.time(),
            ended=0.0,
            id=uuid.uuid4().hex,
        )
        _call_back(session.on_start, dataclasses.replace(record))
        return record

    def _finish(
        self,
        session: Session,
        record: SubcallRecord,
        *,
        response: str = "",
        model: str | None = None,
        usage: Usage | None = None,
        error: BaseException | None = None,
    ) -> None:
        record.ended = time.time()
        record.response = response
        if model:
            record.model = model
        if usage is not None:
            record.usage = usage
        if error is not None:
            payload = _error_payload(error)
            if isinstance(error, asyncio.CancelledError):
                payload = {"type": "CancellationError", "message": "request cancelled"}
            record.error = f"{payload['type']}: {payload['message']}"
        session._add_record(record)
        _call_back(session.on_record, record)

    # -- connections -------------------------------------------------------------------------

    def _admit(self) -> None:
        """Make room for one more connection awaiting its hello. Past `max_pending_hellos`,
        connections idle longer than `HELLO_EVICT_AGE` give way, oldest first; past four
        times that, the oldest gives way whatever its age. The newcomer is always admitted:
        an honest client's hello follows its connect at once, so a flood of idle connections
        can delay it but not lock it out, and never holds more than that many sockets."""
        now = time.monotonic()
        while len(self._pending) >= self.max_pending_hellos:
            oldest = next(iter(self._pending))
            young = now - oldest.opened < HELLO_EVICT_AGE
            if young and len(self._pending) < 4 * self.max_pending_hellos:
                break
            del self._pending[oldest]
            self._conns.discard(oldest)
            oldest.abort()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:
            writer.transport.abort()
            return
        self._admit()
        conn = _Conn(reader, writer, asyncio.current_task(), self.max_in_flight)
        self._conns.add(conn)
        self._pending[conn] = None
        try:
            await self._serve_connection(conn)
        except asyncio.CancelledError:
            pass  # stop() or close_session(): the connection is being dropped
        except (ConnectionError, TimeoutError) as exc:
            logger.debug("LMHandler connection lost: %r", exc)
        except Exception:
            logger.exception("unexpected error on an LMHandler connection")
        finally:
            self._conns.discard(conn)
            self._pending.pop(conn, None)
            for task in list(conn.tasks):
                task.cancel()
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()
            else:
                writer.close()

    async def _serve_connection(self, conn: _Conn) -> None:
        session = await self._handshake(conn)
        if session is None:
            return
        conn.session = session
        while True:
            try:
                message = await read_frame(conn.reader, self.max_frame_bytes, self.frame_timeout)
            except ProtocolError as exc:
                logger.debug("closing an LMHandler connection: %s", exc)
                await self._send_quietly(conn, {"id": None, "error": _error_payload(exc)})
                return
            if message is None or session.closed:
                return
            await conn.slots.acquire()
            task = asyncio.create_task(self._serve_request(conn, session, message))
            conn.tasks.add(task)
            task.add_done_callback(conn.request_done)

    async def _handshake(self, conn: _Conn) -> Session | None:
        reason: str
        try:
            async with asyncio.timeout(self.hello_timeout):
                hello = await read_frame(conn.reader, HELLO_MAX_BYTES, None)
        except TimeoutError:
            reason = f"no hello within {self.hello_timeout}s"
        except ProtocolError as exc:
            reason = f"unreadable hello frame: {exc}"
        else:
            self._pending.pop(conn, None)
            if hello is None:
                return None
            session, reason = self._authenticate(hello)
            if session is not None:
                reason = self._over_connection_caps(session)
                if reason:
                    session = None
            if session is not None:
                await self._send(
                    conn,
                    {
                        "type": "hello",
                        "ok": True,
                        "version": PROTOCOL_VERSION,
                        "depth": session.depth,
                    },
                )
                return session
        error = {"type": AuthenticationError.__name__, "message": reason}
        await self._send_quietly(conn, {"type": "error", "id": None, "error": error})
        return None

    def _over_connection_caps(self, session: Session) -> str:
        """Why one more authenticated connection of `session` is refused, or ""."""
        authenticated = [c for c in self._conns if c.session is not None]
        if len(authenticated) >= self.max_connections:
            return f"the LMHandler serves at most {self.max_connections} connections"
        if sum(c.session is session for c in authenticated) >= self.max_session_connections:
            return f"a session may hold at most {self.max_session_connections} connections"
        return ""

    def _authenticate(self, hello: Mapping[str, Any]) -> tuple[Session | None, str]:
        if hello.get("type") != "hello":
            return None, "the first frame must be a hello"
        token = hello.get("token")
        if not isinstance(token, str) or not token:
            return None, "the hello carries no token"
        if hello.get("version") != PROTOCOL_VERSION:
            return None, f"unsupported protocol version; this server speaks {PROTOCOL_VERSION}"
        presented = token.encode("utf-8", "surrogatepass")
        with self._sessions_lock:
            candidates = list(self._sessions)
        found = None
        for session in candidates:  # compare against every session, in constant time each
            if hmac.compare_digest(session.token.encode("utf-8"), presented) and found is None:
                found = session
        if found is None or found.closed:
            return None, "invalid token"
        return found, ""

    async def _send(self, conn: _Conn, message: dict[str, Any]) -> None:
        try:
            data = encode_frame(message, self.max_frame_bytes)
        except ProtocolError as exc:  # e.g. a result over the frame cap: report it instead
            data = encode_frame({"id": message.get("id"), "error": _error_payload(exc)})
        async with conn.write_lock:
            if conn.writer.transport.is_closing():
                raise ConnectionResetError("the connection is closed")
            conn.writer.write(data)
            async with asyncio.timeout(self.frame_timeout):
                await conn.writer.drain()

    async def _send_quietly(self, conn: _Conn, message: dict[str, Any]) -> None:
        """Best effort before closing: the peer may be gone or not reading."""
        try:
            async with asyncio.timeout(1.0):
                await self._send(conn, message)
        except (OSError, TimeoutError):
            pass

    async def _serve_request(self, conn: _Conn, session: Session, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        reply: dict[str, Any]
        if request_id is not None and (
            isinstance(request_id, bool) or not isinstance(request_id, (str, int))
        ):
            error = ProtocolError("'id' must be a string or an integer")
            reply = {"id": None, "error": _error_payload(error)}
        else:
            try:
                reply = {"id": request_id, "result": await self._dispatch(session, message)}
            except Exception as exc:
                _log_failure(exc, f"request {message.get('type', '(untyped)')!r}")
                reply = {"id": request_id, "error": _error_payload(exc)}
        try:
            await self._send(conn, reply)
        except (OSError, TimeoutError) as exc:
            logger.debug("could not deliver a response, dropping the connection: %r", exc)
            conn.writer.transport.abort()

    # -- requests ----------------------------------------------------------------------------

    async def _dispatch(self, session: Session, message: Mapping[str, Any]) -> dict[str, Any]:
        kind = message.get("type")
        if kind is None:  # the reference's untyped requests
            kind = "llm_batch" if "prompts" in message else "llm" if "prompt" in message else None
        if session.closed:
            raise ProtocolError("the session is closed")
        depth = session.depth + 1
        if kind == "ping":
            return {}
        if kind == "llm":
            return await self._llm(session, message.get("prompt"), message)
        if kind == "llm_batch":
            prompts = _list_field(message, "prompts")
            _wire_sampling(message)  # a bad sampling argument fails the request, not each item
            items = [self._llm(session, p, message) for p in prompts]
            return await _gather_items(items, self.batch_max_concurrent)
        if kind == "rlm":
            return await self._rlm(
                session,
                message.get("prompt"),
                message.get("context"),
                "context" in message,
                message,
            )
        if kind == "rlm_batch":
            prompts = _list_field(message, "prompts")
            if message.get("contexts") is None:
                items = [self._rlm(session, p, None, False, message) for p in prompts]
            else:
                contexts = _list_field(message, "contexts")
                if len(contexts) != len(prompts):
                    raise ProtocolError("'contexts' must have one entry per prompt")
                items = [
                    self._rlm(session, p, c, True, message)
                    for p, c in zip(prompts, contexts, strict=True)
                ]
            return await _gather_items(items, self.batch_max_concurrent)
        if kind == "tool":
            return await self._tool(session, depth, message)
        raise ProtocolError(f"unknown request type {kind!r}; expected one of {REQUEST_TYPES}")

    async def _llm(
        self, session: Session, prompt: Any, message: Mapping[str, Any]
    ) -> dict[str, Any]:
        response = await self.acomplete(
            _check_prompt(prompt),
            depth=session.depth + 1,
            model=_optional_model(message),
            session=session,
            sampling=_wire_sampling(message),
        )
        return response.to_dict()

    async def _rlm(
        self,
        session: Session,
        prompt: Any,
        context: Any,
        has_context: bool,
        message: Mapping[str, Any],
    ) -> dict[str, Any]:
        """A child RLM below max depth; at max depth a plain LM call stands in for it."""
        prompt = _check_prompt(prompt)
        model = _optional_model(message)
        depth = session.depth + 1
        if session.spawn is None or depth >= session.max_depth:
            response = await self.acomplete(
                _with_context(prompt, context) if has_context else prompt,
                depth=depth,
                model=model,
                session=session,
            )
            return {
                "text": response.text,
                "model": response.model,
                "usage": response.usage.to_dict(),
                "stop_reason": "final_answer",
                "value": None,
            }
        client = self.router.route(depth, model)  # an unregistered name: the depth's backend
        record = self._begin(session, "rlm", depth, client.model_name, _prompt_text(prompt))
        try:
            if session.budget is not None:
                session.budget.check()
                check_priced([client], session.budget.limits)
                session.budget.start_subcall()
            result = _spawn_result(
                await session.spawn(prompt, context if has_context else None, model)
            )
        except BaseException as exc:
            self._finish(session, record, error=exc)
            raise
        record.child_run_id = result["run_id"]
        self._finish(
            session,
            record,
            response=result["text"],
            model=result["model"],
            usage=Usage.from_dict(result["usage"]),
        )
        return result

    async def _tool(
        self, session: Session, depth: int, message: Mapping[str, Any]
    ) -> dict[str, Any]:
        name = message.get("name")
        if not isinstance(name, str):
            raise ProtocolError("a tool request needs a 'name' string")
        args = message.get("args", [])
        kwargs = message.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ProtocolError("tool 'args' must be a list and 'kwargs' an object")
        tool = session.tools.get(name)
        if tool is None:
            known = ", ".join(sorted(session.tools)) or "(none)"
            raise ConfigurationError(f"unknown tool {name!r}; known tools: {known}")
        if session.budget is not None:
            session.budget.check()
        preview = f"{name}(*{json.dumps(args, ensure_ascii=False)}, **{json.dumps(kwargs)})"
        record = self._begin(session, "tool", depth, "", preview)
        try:
            try:
                if inspect.iscoroutinefunction(tool):
                    value = await tool(*args, **kwargs)
                else:
                    value = await to_thread(tool, *args, **kwargs)
                    if inspect.isawaitable(value):
                        value = await value
            except Exception as exc:
                raise _ToolFailure(exc) from exc
            try:
                text = json.dumps(value, allow_nan=False, ensure_ascii=False)
            except (TypeError, ValueError, RecursionError):
                error = TypeError(
                    f"tool {name!r} returned a {type(value).__name__}, which is not "
                    "JSON-serialisable"
                )
                raise _ToolFailure(error) from None
        except BaseException as exc:
            self._finish(session, record, error=exc)
            raise
        self._finish(session, record, response=text)
        return {"value": value}

    def __repr__(self) -> str:
        return f"LMHandler(address={self.address!r}, router={self.router!r})"
