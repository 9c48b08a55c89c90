"""`BaseLM`: what every provider client implements, and what they share.

A client is created once per configured backend and lives as long as its `RLM` (one SDK client,
one connection pool). `arespond` is the primitive (an `LMResponse` with that call's own usage);
`respond` runs it on the shared loop. `completion`/`acompletion` return the text only and
`get_usage_summary`/`get_last_usage` report usage, as the reference's clients do.

Two kinds of subclass: ours implement `_acomplete` for one provider; a reference-style one
implements `completion` and/or `acompletion` returning `str` (and optionally `get_last_usage`).
`arespond` serves both, so either kind plugs into `RLM` and the `LMService`.
The base class owns what must behave the same for every provider: normalising prompts, merging
sampling arguments, retries with exponential backoff and jitter (honouring Retry-After), the
adaptive concurrency limit, and pricing calls that the provider did not price.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import copy
import inspect
import random
import threading
import time
import weakref
from abc import ABC
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import replace
from typing import Any, ClassVar

from rlm.aio import on_loop, run_sync, to_thread
from rlm.clients.pricing import lookup_price, price_usage
from rlm.core.types import (
    LMResponse,
    Message,
    ModelUsageSummary,
    Prompt,
    Usage,
    UsageSummary,
    to_messages,
)
from rlm.errors import ConfigurationError, ProviderError

DEFAULT_TIMEOUT = 300.0
DEFAULT_MAX_RETRIES = 4
DEFAULT_MAX_CONCURRENCY = 256


class AdaptiveLimiter:
    """Bounds requests in flight: halved on a rate limit, grown back by one per success.

    Waiters queue in FIFO order and a release wakes only as many as there are free slots, so
    a burst of N requests costs O(N) wake-ups (a condition's notify_all would cost O(N^2)).
    Futures are created inside the running loop, so the limiter binds to no loop up front.
    """

    def __init__(self, maximum: int) -> None:
        if maximum < 1:
            raise ConfigurationError(f"max_concurrency must be >= 1, got {maximum}")
        self.maximum = maximum
        self.limit = maximum
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # a release hands its slot over: in_flight already counts us
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # the slot arrived with the cancellation: pass it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    async def release(self, *, rate_limited: bool) -> None:
        if rate_limited:
            self.limit = max(1, self.limit // 2)
        elif self.limit < self.maximum:
            self.limit += 1
        self._release_slot()

    def _release_slot(self) -> None:
        self.in_flight -= 1
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)


class _ClientUsage:
    """Usage of every call one client made, per model, and of its last call (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, ModelUsageSummary] = {}
        self._last = ModelUsageSummary()

    def record(self, model: str, usage: Usage) -> None:
        last = ModelUsageSummary()
        last.add(usage)
        with self._lock:
            self._models.setdefault(model, ModelUsageSummary()).add(usage)
            self._last = last

    def summary(self) -> UsageSummary:
        with self._lock:
            return UsageSummary({k: replace(v) for k, v in self._models.items()})

    def last(self) -> ModelUsageSummary:
        with self._lock:
            return replace(self._last)


def _usage_of(summary: Any) -> Usage:
    """A reference client's `get_last_usage()` (a ModelUsageSummary) as one call's `Usage`."""
    if summary is None:
        return Usage()
    cost = getattr(summary, "total_cost", None)
    return Usage(
        input_tokens=int(getattr(summary, "total_input_tokens", 0) or 0),
        output_tokens=int(getattr(summary, "total_output_tokens", 0) or 0),
        cost=None if cost is None else float(cost),
    )


class BaseLM(ABC):  # noqa: B024 - abstract in spirit: either contract below must be implemented
    """A language-model client.

    Implement either `_acomplete` (our contract: messages in, `LMResponse` with usage out) or,
    as with the reference, `completion` / `acompletion` returning `str`, plus `get_last_usage`
    when the client knows its token counts.
    """

    provider: ClassVar[str] = "base"

    def __init__(
        self,
        model_name: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        sampling_args: Mapping[str, Any] | None = None,
        prices: Mapping[str, float] | None = None,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 30.0,
    ) -> None:
        if not model_name:
            raise ConfigurationError(f"{self.provider}: model_name is required")
        self.model_name = model_name
        self.timeout = timeout
        self.max_retries = max_retries
        self.sampling_args: dict[str, Any] = dict(sampling_args or {})
        self.prices = dict(prices) if prices else None
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.limiter = AdaptiveLimiter(max_concurrency)
        self._client: Any = None  # the SDK client or rlm's own connection, see _sdk_client
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._usage = _ClientUsage()
        self._connection_owner: BaseLM | None = None  # set on a `with_model` twin
        # A missing API key, raised at the first call (as the reference does) rather than when
        # the client is built, so code that builds an RLM without calling it (tests) works.
        self._key_error: ConfigurationError | None = None

    def with_model(self, model_name: str) -> BaseLM:
        """This client asking for another model: same endpoint, key, sampling and retries.

        `llm_query(p, model="X")` / `rlm_query(p, model="X")` with a model nobody registered
        are served this way by the depth's client, so `X` is what the provider is sent. The
        twin uses this client's connection and concurrency limiter (one pool, closed once,
        by this client).
        """
        if not model_name:
            raise ConfigurationError(f"{self.provider}: model_name is required")
        twin = copy.copy(self)
        twin.model_name = model_name
        twin._connection_owner = self._connection_owner or self
        return twin

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        """One request to the provider. Translate SDK errors to `ProviderError` here."""
        raise NotImplementedError(f"{type(self).__name__} implements no completion method")

    @classmethod
    def _is_reference_style(cls) -> bool:
        """True for a subclass written for the reference: it overrides `completion` or
        `acompletion` and not `_acomplete`."""
        return cls._acomplete is BaseLM._acomplete and (
            cls.completion is not BaseLM.completion or cls.acompletion is not BaseLM.acompletion
        )

    def _make_client(self) -> Any:
        """Build the client's connection for the running loop: its SDK's async client, or an
        object of rlm's own with an async `close` (clients that wrap an SDK override this)."""
        raise NotImplementedError(f"{type(self).__name__} has no SDK client")

    @staticmethod
    async def _close_client(client: Any) -> None:
        """Close what `_make_client` built (override when the SDK closes differently)."""
        await client.close()

    def _sdk_client(self) -> Any:
        """The connection `_make_client` builds: once, on the loop of the first call, then reused.

        An SDK client is bound to the event loop it first ran on. rlm makes every call on its
        one shared loop, so this rebuilds only for a caller awaiting from another loop; the
        client of the other loop is then closed there.
        """
        if self._connection_owner is not None:
            return self._connection_owner._sdk_client()
        if self._key_error is not None:
            raise self._key_error
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            if self._finalizer is not None:
                self._finalizer()  # the client of the other loop is abandoned: close it there
            self._client_loop = loop
            self._client = client = self._make_client()
            self._finalizer = weakref.finalize(
                self, _close_abandoned, type(self)._close_client, client, loop
            )
            self._finalizer.atexit = False  # _close_all_at_exit waits for these instead
            _LIVE.add(self)
        return self._client

    async def aclose(self) -> None:
        """Release the client's connections; the next call builds a new client."""
        if self._connection_owner is not None:
            return  # the connection is the owner's, closed with it
        client, self._client = self._client, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if client is not None:
            await self._close_client(client)

    async def arespond(self, prompt: Prompt, **sampling: Any) -> LMResponse:
        """Complete a prompt: the text with this call's usage, retries, concurrency limit and
        pricing included. Every call `rlm` itself makes goes through here."""
        if self._is_reference_style():
            response = await self._arespond_reference(prompt, sampling)
        else:
            response = await self._arespond_own(to_messages(prompt), sampling)
        self._usage.record(response.model or self.model_name, response.usage)
        return response

    async def _arespond_own(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        args = {**self.sampling_args, **sampling}
        attempt = 0
        while True:
            await self.limiter.acquire()
            rate_limited = False
            started = time.monotonic()
            try:
                response = await self._acomplete(messages, args)
            except ProviderError as exc:
                rate_limited = exc.status_code == 429
                if not exc.retryable or attempt >= self.max_retries:
                    raise
                delay = self._backoff(attempt, exc.retry_after)
            else:
                if response.latency == 0.0:
                    response = replace(response, latency=time.monotonic() - started)
                return self._priced(response)
            finally:
                await self.limiter.release(rate_limited=rate_limited)
            attempt += 1
            await asyncio.sleep(delay)

    def max_output_tokens(self, sampling: Mapping[str, Any]) -> int | None:
        """The most output tokens a call with these sampling arguments may produce, when the
        request caps it (None: uncapped). Budgets reserve this much output before a call."""
        args = {**self.sampling_args, **sampling}
        caps = [
            args[key]
            for key in ("max_tokens", "max_completion_tokens", "max_output_tokens")
            if isinstance(args.get(key), int) and not isinstance(args.get(key), bool)
        ]
        return max(caps) if caps else None

    async def _arespond_reference(self, prompt: Prompt, sampling: dict[str, Any]) -> LMResponse:
        """A reference-style subclass's own method, given the prompt as the caller wrote it.

        Its `acompletion` is awaited; a sync-only subclass (no `acompletion`, or one raising
        NotImplementedError) has `completion` run on a worker thread. Usage is its
        `get_last_usage()`, read right after the call, when it has one; the retries are its
        own, and sampling arguments other than its `sampling_args` cannot reach it.
        """
        if sampling:
            raise ConfigurationError(
                f"{type(self).__name__} takes no per-call sampling arguments "
                f"(got {sorted(sampling)}); set them in its sampling_args"
            )
        cls = type(self)
        started = time.monotonic()
        await self.limiter.acquire()
        try:
            text: Any = None
            if cls.acompletion is not BaseLM.acompletion:
                try:
                    text = await self.acompletion(prompt)
                except NotImplementedError:
                    if cls.completion is BaseLM.completion:
                        raise
            if text is None:
                text = await to_thread(self.completion, prompt)
            usage = _usage_of(self.get_last_usage()) if self._reports_last_usage() else Usage()
        finally:
            await self.limiter.release(rate_limited=False)
        if not isinstance(text, str):
            raise ProviderError(
                f"{cls.__name__}.completion returned {type(text).__name__}, not str",
                provider=self.provider,
            )
        return self._priced(
            LMResponse(text, self.model_name, usage, latency=time.monotonic() - started)
        )

    def _reports_last_usage(self) -> bool:
        return type(self).get_last_usage is not BaseLM.get_last_usage

    def respond(self, prompt: Prompt, **sampling: Any) -> LMResponse:
        """Synchronous `arespond` (runs on the shared rlm event loop)."""
        return run_sync(on_loop(self.arespond(prompt, **sampling)))

    async def acompletion(self, prompt: Prompt, **sampling: Any) -> str:
        """The reference's call: the completion's text (`arespond` keeps its usage too)."""
        return (await self.arespond(prompt, **sampling)).text

    def completion(self, prompt: Prompt, **sampling: Any) -> str:
        """The reference's call: the completion's text (`respond` keeps its usage too)."""
        return self.respond(prompt, **sampling).text

    def get_usage_summary(self) -> UsageSummary:
        """Usage of every call this client made, per model that served it."""
        return self._usage.summary()

    def get_last_usage(self) -> ModelUsageSummary:
        """Usage of this client's latest call. Under concurrent calls "latest" is whichever
        finished last: per-call usage is `respond(...).usage`."""
        return self._usage.last()

    def close(self) -> None:
        run_sync(on_loop(self.aclose()))

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with full jitter; a provider's Retry-After wins when it is longer."""
        ceiling = min(self.retry_max_delay, self.retry_base_delay * (2**attempt))
        delay = random.uniform(0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_max_delay))
        return delay

    def price_table(self) -> Mapping[str, float] | None:
        """This client's price per 1M tokens (its own `prices`, else the table's), None when
        unknown. A budget reserves by it and refuses a `max_budget` it cannot price."""
        return self.prices if self.prices else lookup_price(self.model_name)

    def _priced(self, response: LMResponse) -> LMResponse:
        if response.usage.cost is not None:
            return response
        # The model that answered first (a dated snapshot may have its own price), else the
        # price this client was configured with, so a renamed reply is still counted.
        table: Mapping[str, float] | None = self.prices or (
            lookup_price(response.model) if response.model else None
        )
        table = table or self.price_table()
        cost = None if table is None else price_usage(response.model, response.usage, table)
        return response if cost is None else response.with_cost(cost)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_name={self.model_name!r})"


# An SDK client over aiohttp that is never closed logs "Unclosed client session" when it is
# collected or the process exits, and users of the reference API never call close(). So an
# abandoned client is closed on its loop when its owner is collected, and at exit every live
# one is closed before the interpreter goes down.
_LIVE: weakref.WeakSet[BaseLM] = weakref.WeakSet()
_CLOSING: set[concurrent.futures.Future[Any]] = set()


def _close_abandoned(
    close: Callable[[Any], Coroutine[Any, Any, None]], client: Any, loop: asyncio.AbstractEventLoop
) -> None:
    if loop.is_closed():
        return
    closing = close(client)
    try:
        future = asyncio.run_coroutine_threadsafe(closing, loop)
    except RuntimeError:  # the loop is shutting down
        closing.close()
        return
    _CLOSING.add(future)
    future.add_done_callback(_CLOSING.discard)


@atexit.register
def _close_all_at_exit() -> None:
    for owner in list(_LIVE):
        loop = owner._client_loop
        if owner._client is None or loop is None or loop.is_closed() or not loop.is_running():
            continue
        if loop is _running_loop():
            continue  # exiting from inside the loop: nothing can wait here
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(owner.aclose(), loop).result(timeout=2.0)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _DuckTypedClient(BaseLM):
    """Any object with the reference's client methods (`completion`, optionally `acompletion`
    and `get_last_usage`), e.g. a test double returned from a patched `get_client`."""

    provider: ClassVar[str] = "duck-typed"

    def __init__(self, target: Any) -> None:
        name = getattr(target, "model_name", None)
        super().__init__(model_name=name if isinstance(name, str) and name else "unknown")
        self.target = target

    def completion(self, prompt: Prompt, **sampling: Any) -> str:
        return self.target.completion(prompt)

    async def acompletion(self, prompt: Prompt, **sampling: Any) -> str:
        method = getattr(self.target, "acompletion", None)
        if method is None or not inspect.iscoroutinefunction(method):
            raise NotImplementedError  # the sync `completion` then runs on a worker thread
        return await method(prompt)

    def get_last_usage(self) -> ModelUsageSummary:
        method = getattr(self.target, "get_last_usage", None)
        return method() if callable(method) else ModelUsageSummary()


def as_client(obj: Any) -> BaseLM:
    """`obj` as a `BaseLM`: itself when it is one, else wrapped if it has a `completion` method
    (the reference's client contract); anything else is a ConfigurationError."""
    if isinstance(obj, BaseLM):
        return obj
    if callable(getattr(obj, "completion", None)):
        return _DuckTypedClient(obj)
    raise ConfigurationError(f"{obj!r} is not a language-model client (no completion method)")
