"""The LM service: the one path every LM call, child RLM and tool call of a run takes.

`LMService.serve(session, message)` answers one request of an environment (`llm`,
`llm_batch`, `rlm`, `rlm_batch`, `tool`, `ping`) and `acomplete` makes one LM call, the
root turns included, so budget checks, routing, usage ledgers and sub-call records cannot be
bypassed. A `Session` fixes, host-side and for good, what one environment may do: its depth,
budget, ledger, child-RLM spawner and tools; nothing in a request can change them.

How a request reaches the service is a transport's business (`rlm.transport`), as httpx
keeps its client apart from its transports: an environment in this process (the local REPL,
the host side of every sandbox) holds a `ServiceLink` and hands requests over directly, on the
rlm event loop; a process that truly is elsewhere (an IPython kernel, a reference-style client
that only knows an address) connects to the TCP transport, `LMHandler`, which authenticates
it with a session token and calls the same `serve`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol

from rlm.aio import run_sync, to_thread
from rlm.clients.base import BaseLM
from rlm.core.types import (
    ChildResult,
    LMResponse,
    Prompt,
    SubcallRecord,
    Usage,
    UsageLedger,
    to_messages,
)
from rlm.errors import ConfigurationError, ProtocolError, ProviderError, RLMError
from rlm.lm_service.budget import Budget, check_priced
from rlm.lm_service.cache import SubcallCache, cache_key
from rlm.lm_service.requests import (
    ToolFailure,
    check_prompt,
    error_payload,
    list_field,
    log_failure,
    optional_model,
    prompt_text,
    wire_sampling,
    with_context,
)
from rlm.lm_service.router import Router

logger = logging.getLogger(__name__)

SpawnFn = Callable[[Prompt, Any, str | None], Awaitable[ChildResult]]
"""(prompt, context, model) -> the child RLM's result."""

RecordCallback = Callable[[SubcallRecord], None]
CallKind = Literal["root", "llm", "rlm"]
REQUEST_TYPES = ("llm", "llm_batch", "rlm", "rlm_batch", "tool", "ping")
# Sub-call records (logs, UIs, replay) keep this much of each prompt: enough to read and to
# match on replay, without holding every large prompt twice in memory.
RECORD_PROMPT_CHARS = 10_000
# Items of one batch in progress at once when `batch_max_concurrent` is unset: more than any
# provider serves at once (the clients' own limiters queue the rest), fewer than would let a
# huge batch hold a coroutine per item.
BATCH_WINDOW = 1024


class ServiceTransport(Protocol):
    """What the service asks of a transport over it (`rlm.transport.tcp.LMHandler`)."""

    def forget(self, session: Session) -> None:
        """The session was closed: refuse it from now on, drop its connections."""

    async def astop(self) -> None: ...


class _SessionState:
    """The only moving parts of a session: its records so far, the requests it is being served
    (cancelled when it closes) and whether it is closed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: list[SubcallRecord] = []
        self.serving: set[asyncio.Task[Any]] = set()
        self.closed = False


@dataclass(frozen=True, eq=False)
class Session:
    """What one environment may do, fixed when the session is opened. `token` is what a TCP
    client presents for it (`rlm.transport.tcp`): secret, never logged."""

    token: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    depth: int = 0
    max_depth: int = 1
    budget: Budget | None = None
    ledger: UsageLedger | None = None
    spawn: SpawnFn | None = field(default=None, repr=False)
    tools: Mapping[str, Callable[..., Any]] = field(
        default_factory=lambda: MappingProxyType({}), repr=False
    )
    on_start: RecordCallback | None = field(default=None, repr=False)
    on_record: RecordCallback | None = field(default=None, repr=False)
    _state: _SessionState = field(default_factory=_SessionState, repr=False)

    @property
    def closed(self) -> bool:
        return self._state.closed

    def take_records(self) -> list[SubcallRecord]:
        """Records of the requests completed since the last call (each is returned once)."""
        with self._state.lock:
            records, self._state.records = self._state.records, []
        return records

    def _add_record(self, record: SubcallRecord) -> None:
        with self._state.lock:
            self._state.records.append(record)


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
    make: Callable[[Any], Coroutine[Any, Any, dict[str, Any]]],
    items: Sequence[Any],
    limit: int | None = None,
) -> dict[str, Any]:
    """Run `make(item)` for every item of a batch, at most `limit` at once (`BATCH_WINDOW`
    when unset: a batch of 100,000 prompts holds that many coroutines only while they run,
    not all at once); one failing item is an error in its own slot only."""
    results: list[dict[str, Any]] = [{} for _ in items]
    pending = iter(range(len(items)))

    async def worker() -> None:
        for index in pending:  # shared: each worker takes the next item not yet started
            try:
                results[index] = {"result": await make(items[index])}
            except Exception as exc:
                log_failure(exc, "a batch item")
                results[index] = {"error": error_payload(exc)}

    await asyncio.gather(*(worker() for _ in range(min(limit or BATCH_WINDOW, len(items)))))
    return {"results": results}


class LMService:
    """Routes, limits and accounts LM calls, child RLMs and tools for the sessions it opens."""

    def __init__(
        self,
        client: BaseLM,
        *,
        other_clients: Sequence[BaseLM] = (),
        depth_clients: Mapping[int, BaseLM] | None = None,
        cache: SubcallCache | None = None,
        batch_max_concurrent: int | None = None,
    ) -> None:
        if batch_max_concurrent is not None and batch_max_concurrent < 1:
            raise ConfigurationError("batch_max_concurrent must be >= 1")
        # Items of one batch in progress at once (None: BATCH_WINDOW).
        self.batch_max_concurrent = batch_max_concurrent
        self.router = Router(client, others=other_clients, by_depth=depth_clients)
        self.cache = cache  # the sub-call cache (rlm.lm_service.cache), None when off
        self._transports: list[ServiceTransport] = []  # attached by the transports themselves

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
        """A session for one environment; depth, budget and tools are fixed here."""
        if depth < 0 or max_depth < 0:
            raise ConfigurationError("depth and max_depth must be >= 0")
        tools = dict(tools or {})
        for name, tool in tools.items():
            if not isinstance(name, str) or not callable(tool):
                raise ConfigurationError(f"tool {name!r} must be a callable under a str name")
        return Session(
            depth=depth,
            max_depth=max_depth,
            budget=budget,
            ledger=ledger,
            spawn=spawn,
            tools=MappingProxyType(tools),
            on_start=on_start,
            on_record=on_record,
        )

    def close_session(self, session: Session) -> None:
        """End the session: requests in flight are cancelled (a run that ended makes no more
        calls), later ones refused, its TCP connections dropped."""
        state = session._state
        with state.lock:
            state.closed = True
            serving, state.serving = state.serving, set()
        for task in serving:
            task.get_loop().call_soon_threadsafe(task.cancel)
        for transport in list(self._transports):
            transport.forget(session)

    def attach(self, transport: ServiceTransport) -> None:
        """A transport serving this service: told of closed sessions, stopped by `aclose`."""
        self._transports.append(transport)

    async def aclose(self) -> None:
        """Stop the transports attached to this service; the clients stay open."""
        transports, self._transports = self._transports, []
        for transport in transports:
            await transport.astop()

    async def aclose_clients(self) -> None:
        """Close every routed client's SDK connections; raises the first failure after all ran."""
        outcomes = await asyncio.gather(
            *(client.aclose() for client in self.router.clients()), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

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
            record = self._begin(session, kind, depth, client.model_name, prompt_text(prompt))
        try:
            if budget is not None:
                budget.check()
                check_priced([client], budget.limits)  # `model=` may name an unpriced model
                if kind != "root":
                    budget.start_subcall()
                # Reserve the call's worst case first, so concurrent calls cannot overrun.
                reservation = budget.estimate(client, prompt, sampling or {})
                await budget.reserve(reservation)
            try:
                response = await self._call_client(client, prompt, sampling or {})
            except BaseException:
                if budget is not None:
                    budget.release(reservation)
                raise
        except (RLMError, asyncio.CancelledError) as exc:
            # A refused or failed call is still a record in the trajectory, with its error.
            if session is not None and record is not None:
                self._finish(session, record, error=exc)
            raise
        except Exception as exc:  # a client bug, not a provider answer: still typed
            error = ProviderError(f"{type(exc).__name__}: {exc}", provider=client.provider)
            if session is not None and record is not None:
                self._finish(session, record, error=error)
            raise error from exc
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
        kind: Literal["llm", "rlm", "tool"],
        depth: int,
        model: str,
        preview: str,
    ) -> SubcallRecord:
        record = SubcallRecord(
            kind=kind,
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
            payload = error_payload(error)
            if isinstance(error, asyncio.CancelledError):
                payload = {"type": "CancellationError", "message": "request cancelled"}
            record.error = f"{payload['type']}: {payload['message']}"
        session._add_record(record)
        _call_back(session.on_record, record)

    # -- requests ----------------------------------------------------------------------------

    async def serve(self, session: Session, message: Mapping[str, Any]) -> dict[str, Any]:
        """Answer one request: {"result": ...} or {"error": {"type", "message"}}, never raises
        for what the request or the call did wrong. Cancelled when the session closes."""
        state = session._state
        task = asyncio.current_task()
        assert task is not None
        with state.lock:
            if not state.closed:
                state.serving.add(task)
        try:
            return {"result": await self.dispatch(session, message)}
        except Exception as exc:
            log_failure(exc, f"request {message.get('type', '(untyped)')!r}")
            return {"error": error_payload(exc)}
        finally:
            with state.lock:
                state.serving.discard(task)

    async def dispatch(self, session: Session, message: Mapping[str, Any]) -> dict[str, Any]:
        """Answer one request or raise its error."""
        kind = message.get("type")
        if kind is None:  # the reference's untyped requests
            kind = "llm_batch" if "prompts" in message else "llm" if "prompt" in message else None
        if session.closed:
            raise ProtocolError("the session is closed")
        if kind == "ping":
            return {}
        if kind == "llm":
            return await self._llm(session, message.get("prompt"), message)
        if kind == "llm_batch":
            prompts = list_field(message, "prompts")
            wire_sampling(message)  # a bad sampling argument fails the request, not each item
            return await _gather_items(
                lambda p: self._llm(session, p, message), prompts, self.batch_max_concurrent
            )
        if kind == "rlm":
            context = message.get("context")
            return await self._rlm(session, message.get("prompt"), context, message)
        if kind == "rlm_batch":
            prompts = list_field(message, "prompts")
            contexts = [None] * len(prompts)
            if message.get("contexts") is not None:
                contexts = list_field(message, "contexts")
                if len(contexts) != len(prompts):
                    raise ProtocolError("'contexts' must have one entry per prompt")
            return await _gather_items(
                lambda pc: self._rlm(session, pc[0], pc[1], message),
                list(zip(prompts, contexts, strict=True)),
                self.batch_max_concurrent,
            )
        if kind == "tool":
            return await self._tool(session, message)
        raise ProtocolError(f"unknown request type {kind!r}; expected one of {REQUEST_TYPES}")

    async def _llm(
        self, session: Session, prompt: Any, message: Mapping[str, Any]
    ) -> dict[str, Any]:
        response = await self.acomplete(
            check_prompt(prompt),
            depth=session.depth + 1,
            model=optional_model(message),
            session=session,
            sampling=wire_sampling(message),
        )
        return response.to_dict()

    async def _rlm(
        self, session: Session, prompt: Any, context: Any, message: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A child RLM below max depth; at max depth a plain LM call stands in for it."""
        prompt = check_prompt(prompt)
        model = optional_model(message)
        depth = session.depth + 1
        if session.spawn is None or depth >= session.max_depth:
            response = await self.acomplete(
                with_context(prompt, context) if context is not None else prompt,
                depth=depth,
                model=model,
                session=session,
            )
            child = ChildResult(response.text, response.model, response.usage)
            return child.to_dict()
        client = self.router.route(depth, model)  # an unregistered name: the depth's backend
        record = self._begin(session, "rlm", depth, client.model_name, prompt_text(prompt))
        try:
            if session.budget is not None:
                session.budget.check()
                check_priced([client], session.budget.limits)
                session.budget.start_subcall()
            child = await session.spawn(prompt, context, model)
        except BaseException as exc:
            self._finish(session, record, error=exc)
            raise
        record.child_run_id = child.run_id
        self._finish(session, record, response=child.text, model=child.model, usage=child.usage)
        return child.to_dict()

    async def _tool(self, session: Session, message: Mapping[str, Any]) -> dict[str, Any]:
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
        record = self._begin(session, "tool", session.depth + 1, "", preview)
        try:
            try:
                if inspect.iscoroutinefunction(tool):
                    value = await tool(*args, **kwargs)
                else:
                    value = await to_thread(tool, *args, **kwargs)
                    if inspect.isawaitable(value):
                        value = await value
            except Exception as exc:
                raise ToolFailure(exc) from exc
            try:
                text = json.dumps(value, allow_nan=False, ensure_ascii=False)
            except (TypeError, ValueError, RecursionError):
                error = TypeError(
                    f"tool {name!r} returned a {type(value).__name__}, which is not "
                    "JSON-serialisable"
                )
                raise ToolFailure(error) from None
        except BaseException as exc:
            self._finish(session, record, error=exc)
            raise
        self._finish(session, record, response=text)
        # The caller gets a copy, as over a wire: the tool keeps its own object to itself.
        return {"value": json.loads(text)}

    def __repr__(self) -> str:
        return f"LMService(router={self.router!r})"
