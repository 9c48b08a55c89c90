"""`RLM`: the recursive language model, as its users hold it.

`completion(prompt, root_prompt)` loads `prompt` into a REPL as `context`, shows the root LM
only its metadata, and loops: root LM -> run its ```repl blocks -> feed back their output,
until the code or the reply gives a final answer or a limit trips. This module checks the
arguments and owns what lives across completions (the clients and their `LMService`, warm
sandboxes, a persistent environment); each completion is a `rlm.core.run.Tree` of runs on
frozen `RunSettings`, every LM call of which (root turns, sub-calls, child RLMs' turns) goes
through the service's one path: routed, checked against the tree's `Budget`, recorded.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Literal

from rlm.aio import get_loop, in_loop_thread, on_loop, run_sync, spawn, to_thread
from rlm.clients import get_client
from rlm.clients.base import BaseLM, as_client
from rlm.core.arguments import (
    check_int,
    limit_error,
    validate_context,
    with_sampling_args,
)
from rlm.core.events import CallbackObserver, Events, EventStream, Observer, RunEvent
from rlm.core.run import Persistent, Tree
from rlm.core.settings import RunSettings, frozen
from rlm.core.types import RLMChatCompletion, UsageLedger, _serialize_value
from rlm.environments import environment_class, get_environment
from rlm.environments.base import BaseEnv
from rlm.environments.pool import SandboxPool, split_pool_kwargs
from rlm.environments.tools import normalise_tools
from rlm.errors import CancellationError, ConfigurationError
from rlm.lm_service.budget import Budget, Ledger, Limits, check_priced
from rlm.lm_service.cache import SubcallCache
from rlm.lm_service.service import LMService
from rlm.logger.redact import register_sensitive_values
from rlm.reference_internals import ReferenceInternals
from rlm.utils.rlm_utils import filter_sensitive_keys

OnLimit = Literal["raise", "return"]


# Seconds a run may take to wind down after Ctrl-C (cells stopped, environments released).
CANCEL_GRACE = 30.0


class RLM(ReferenceInternals):
    """A recursive language model. Argument names follow the reference implementation.

    Args:
        backend / backend_kwargs: the root model's client (see `rlm.clients`); `backend` may also
            be a `BaseLM` instance, e.g. a reference-style subclass (then no backend_kwargs).
        environment / environment_kwargs: where code runs ("local", "process", "docker", ...);
            `environment_kwargs={"timeout": s}` sets the per-cell timeout, and
            `{"setup_code": "..."}` runs code in the REPL before the first turn (a failing
            setup is a `ConfigurationError`, not a silent stderr).
        depth: this RLM's own depth (0 for a root).
        max_depth: 1 = sub-calls are plain LMs; n > 1 lets `rlm_query` start child RLMs
            down to depth n - 1.
        max_iterations: root turns per run before one last "answer now" call.
        max_budget (USD), max_timeout (s), max_tokens, max_subcalls: limits over the whole
            recursion tree, checked host-side, concurrent calls included; `max_timeout` also
            bounds a running cell.
        allow_unpriced_models: with max_budget, a model rlm has no price for is refused before
            the first call (`ConfigurationError`) unless this is True; its calls then count $0.
        ledger: a budget above this RLM's runs that every call also draws from (`rlm.batch`
            holds one per batch, so `max_budget` / `max_tokens` bound a whole batch).
        max_errors: stop after this many consecutive turns whose code raised.
        on_limit: what `completion()` does when a limit stops the run. "raise" (the default,
            as in the reference): raise `TimeoutExceededError`, `TokenLimitExceededError`,
            `BudgetExceededError`, `SubcallLimitExceededError` or `ErrorThresholdExceededError`,
            each with `partial_answer` and `completion` (the `RLMChatCompletion` so far).
            "return": return that completion instead; `stop_reason` says which limit
            stopped it. Ctrl-C always raises `CancellationError` (with the same two fields).
        other_backends / other_backend_kwargs: more clients; the first serves depth >= 1.
        depth_backends: {depth: {"backend": name, "backend_kwargs": {...}}} for finer routing.
        custom_tools / custom_sub_tools: {name: callable | value | {"tool": ..., "description":
            ...}} exposed in the REPL (callables run host-side); sub tools go to child RLMs
            (default: the same as custom_tools).
        max_concurrent_subcalls: child RLMs running at once per depth level.
        max_output_chars: REPL output shown to the root LM per block (head and tail kept).
        compaction / compaction_threshold_pct / context_window: when the root history nears
            that share (0 < pct <= 1) of the root model's window (tokens; known models are
            looked up), older turns are summarised into one message; the full transcript is
            in the REPL's `history` from the first turn on.
        sampling_args / sub_sampling_args: merged into the root client's (resp. the sub-call
            client's) `sampling_args`; with `sub_sampling_args` and no `other_backends`, the
            root backend is mirrored for sub-calls, as in the reference.
        orchestrator: keep the system prompt's strategy section (delegate reading to sub-LLMs,
            filter with code first); False leaves it out.
        user_prologue: text added to the first user message, after the context's metadata.
        observers: extra `rlm.core.events.Observer`s (loggers, UIs).
        cache: the sub-call cache (`rlm.lm_service.cache`): a `SubcallCache`, a SQLite file path, or
            True for the default path. Identical LM requests, root turns included, are answered
            from it at zero cost, so re-running a run makes no provider calls.
    """

    def __init__(
        self,
        backend: str | BaseLM = "openai",
        backend_kwargs: Mapping[str, Any] | None = None,
        environment: str = "local",
        environment_kwargs: Mapping[str, Any] | None = None,
        depth: int = 0,
        max_depth: int = 1,
        max_iterations: int = 30,
        max_budget: float | None = None,
        max_timeout: float | None = None,
        max_tokens: int | None = None,
        max_errors: int | None = None,
        custom_system_prompt: str | None = None,
        other_backends: Sequence[str] | None = None,
        other_backend_kwargs: Sequence[Mapping[str, Any]] | None = None,
        logger: Observer | None = None,
        verbose: bool = False,
        persistent: bool = False,
        custom_tools: Mapping[str, Any] | None = None,
        custom_sub_tools: Mapping[str, Any] | None = None,
        compaction: bool = False,
        compaction_threshold_pct: float = 0.85,
        max_concurrent_subcalls: int = 8,
        on_subcall_start: Callable[..., Any] | None = None,
        on_subcall_complete: Callable[..., Any] | None = None,
        on_iteration_start: Callable[..., Any] | None = None,
        on_iteration_complete: Callable[..., Any] | None = None,
        sampling_args: Mapping[str, Any] | None = None,
        sub_sampling_args: Mapping[str, Any] | None = None,
        orchestrator: bool = True,
        user_prologue: str | None = None,
        *,
        on_limit: OnLimit = "raise",
        max_subcalls: int | None = None,
        depth_backends: Mapping[int, Mapping[str, Any]] | None = None,
        max_output_chars: int = 20_000,
        context_window: int | None = None,
        observers: Sequence[Observer] = (),
        cache: SubcallCache | str | os.PathLike[str] | bool | None = None,
        allow_unpriced_models: bool = False,
        ledger: Ledger | None = None,
    ) -> None:
        if on_limit not in ("raise", "return"):
            raise ConfigurationError(f"on_limit must be 'raise' or 'return', got {on_limit!r}")
        if user_prologue is not None and not isinstance(user_prologue, str):
            raise ConfigurationError("user_prologue must be a str or None")
        backend_kwargs, other_backends, other_backend_kwargs = with_sampling_args(
            backend,
            backend_kwargs,
            other_backends,
            other_backend_kwargs,
            sampling_args,
            sub_sampling_args,
        )
        check_int("depth", depth, minimum=0)
        check_int("max_depth", max_depth, minimum=1)
        check_int("max_iterations", max_iterations, minimum=1)
        check_int("max_concurrent_subcalls", max_concurrent_subcalls, minimum=1)
        check_int("max_output_chars", max_output_chars, minimum=100)
        if max_errors is not None:
            check_int("max_errors", max_errors, minimum=1)
        if context_window is not None:
            check_int("context_window", context_window, minimum=256)
        if (
            isinstance(compaction_threshold_pct, bool)
            or not isinstance(compaction_threshold_pct, (int, float))
            or not 0.0 < compaction_threshold_pct <= 1.0
        ):
            raise ConfigurationError(
                f"compaction_threshold_pct must be in (0, 1], got {compaction_threshold_pct!r}"
            )
        self.ledger = ledger
        self.limits = Limits(
            max_tokens=max_tokens,
            max_budget=max_budget,
            max_timeout=max_timeout,
            max_subcalls=max_subcalls,
            allow_unpriced_models=allow_unpriced_models,
        )
        self.backend = backend
        self.backend_kwargs = dict(backend_kwargs)  # as given (sampling_args merged), as there
        self._logged_backend_kwargs = filter_sensitive_keys(
            backend_kwargs or {}
        )  # for run_metadata
        self.environment = environment
        self.environment_kwargs = dict(environment_kwargs or {})
        self.setup_code = self.environment_kwargs.pop("setup_code", None)
        if self.setup_code is not None and not isinstance(self.setup_code, str):
            raise ConfigurationError(
                "environment_kwargs['setup_code'] must be a str of Python code"
            )
        for key in ("handler", "depth", "tools"):
            if key in self.environment_kwargs:
                raise ConfigurationError(f"environment_kwargs may not set {key!r}: rlm sets it")
        environment_class(environment)  # unknown names fail now, not at the first completion
        split_pool_kwargs(environment, self.environment_kwargs)  # so do bad pool= / pool_size=
        self._sandboxes = SandboxPool()  # warm sandboxes for runs and children
        self.depth = depth
        self.max_depth = max_depth
        self.max_iterations = max_iterations
        self.max_errors = max_errors
        self.custom_system_prompt = custom_system_prompt
        self.orchestrator = orchestrator
        self.user_prologue = user_prologue
        self.on_limit: OnLimit = on_limit
        self.persistent = persistent
        self.max_concurrent_subcalls = max_concurrent_subcalls
        self.max_output_chars = max_output_chars
        self.compaction = compaction
        self.compaction_threshold_pct = compaction_threshold_pct
        self.context_window = context_window

        self.tools, self.tool_specs = normalise_tools(custom_tools)
        if custom_sub_tools is None:
            self.sub_tools, self.sub_tool_specs = self.tools, self.tool_specs
        else:
            self.sub_tools, self.sub_tool_specs = normalise_tools(custom_sub_tools)

        others = list(other_backends or [])
        other_kwargs = list(other_backend_kwargs or [{} for _ in others])
        if len(other_kwargs) != len(others):
            raise ConfigurationError(
                "other_backend_kwargs must have one entry per other_backends entry "
                f"({len(others)} backends, {len(other_kwargs)} kwargs)"
            )
        # The reference's attributes, read by `_subcall` (rlm.reference_internals).
        self.other_backends, self.other_backend_kwargs = others, [dict(k) for k in other_kwargs]
        self.custom_sub_tools = custom_sub_tools if custom_sub_tools is not None else custom_tools
        self.logger = logger
        self.on_subcall_start, self.on_subcall_complete = on_subcall_start, on_subcall_complete
        # Keys given in code have no shape a log scrubber could recognise: register them.
        for kwargs in (backend_kwargs, *other_kwargs, *(depth_backends or {}).values()):
            register_sensitive_values(kwargs)
        # as_client: a reference-style client (or a test double from a patched get_client)
        self.root_client: BaseLM = as_client(get_client(backend, backend_kwargs or {}))
        self.other_clients = [
            as_client(get_client(b, kw)) for b, kw in zip(others, other_kwargs, strict=True)
        ]
        self.depth_clients = {
            int(d): as_client(get_client(spec["backend"], spec.get("backend_kwargs") or {}))
            for d, spec in (depth_backends or {}).items()
        }
        self.service = LMService(
            self.root_client,
            other_clients=self.other_clients,
            depth_clients=self.depth_clients,
            cache=SubcallCache.of(cache),
        )

        observer_list = list(observers)
        if logger is not None:
            observer_list.append(logger)
        if verbose:
            from rlm.logger.verbose import VerbosePrinter

            observer_list.append(VerbosePrinter())
        if any((on_subcall_start, on_subcall_complete, on_iteration_start, on_iteration_complete)):
            observer_list.append(
                CallbackObserver(
                    on_subcall_start=on_subcall_start,
                    on_subcall_complete=on_subcall_complete,
                    on_iteration_start=on_iteration_start,
                    on_iteration_complete=on_iteration_complete,
                )
            )
        self.observers = observer_list
        self._persistent = Persistent() if persistent else None
        self._persistent_lock: asyncio.Lock | None = None
        self._interrupted: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self._closed = False

    # ----------------------------------------------------------------- public API

    def completion(self, prompt: Any, root_prompt: str | None = None) -> RLMChatCompletion:
        """Run the RLM on `prompt` (the context) and return its answer. Blocks until done.

        A limit that stops the run raises its `LimitExceededError` (see `on_limit`); Ctrl-C
        stops the run, releases its environments and raises `CancellationError`, both
        carrying the completion so far.
        """
        if in_loop_thread():
            raise RuntimeError("completion() called from the rlm event loop; use acompletion()")
        started = threading.Event()
        task: list[asyncio.Task[RLMChatCompletion]] = []

        async def run() -> RLMChatCompletion:
            current = asyncio.current_task()
            assert current is not None
            task.append(current)
            started.set()
            return await self._complete(prompt, root_prompt)

        future = asyncio.run_coroutine_threadsafe(run(), get_loop())
        try:
            return future.result()
        except KeyboardInterrupt:
            pass
        # Ctrl-C: cancel the run on the loop and wait for it to wind down (cells are stopped
        # and environments cleaned up by the run's own `finally`), then report what it had.
        started.wait(5)
        if task:

            def interrupt() -> None:
                self._interrupted.add(task[0])
                task[0].cancel()

            get_loop().call_soon_threadsafe(interrupt)
        completion: RLMChatCompletion | None = None
        try:
            completion = future.result(CANCEL_GRACE)  # the run ended before the cancel landed
        except CancellationError:
            raise
        except BaseException:  # the run could not report a completion in time
            future.cancel()
        raise CancellationError(
            partial_answer=completion.response if completion is not None else None,
            message="Execution cancelled by user (Ctrl+C)",
            completion=completion,
        ) from None

    async def acompletion(self, prompt: Any, root_prompt: str | None = None) -> RLMChatCompletion:
        """`completion` for async code; many may run at once on one `RLM`."""
        return await on_loop(self._complete(prompt, root_prompt))

    async def events(self, prompt: Any, root_prompt: str | None = None) -> AsyncIterator[RunEvent]:
        """Run a completion and yield its events as they happen, for UIs.

        Yields `RunEvent`s of kinds run_start, iteration_start, iteration, subcall_start,
        subcall, compaction and run_end (for the root and every child run), then one final
        event of kind "completion" whose `data` is the `RLMChatCompletion`.
        """
        stream = EventStream()
        task = spawn(self._complete(prompt, root_prompt, extra_observers=[stream]))
        task.add_done_callback(lambda _: stream.close())
        async for event in stream:
            yield event
        completion = await asyncio.wrap_future(task)
        yield RunEvent("completion", None, completion)

    @property
    def _persistent_env(self) -> BaseEnv | None:
        """The environment kept across calls when persistent=True (None before the first call
        and after `close()`): the name the reference's users reach for in their tests."""
        return self._persistent.env if self._persistent is not None else None

    def close(self) -> None:
        """Release the persistent environment, warm sandboxes and the clients' connections."""
        if self._closed:
            return
        self._closed = True
        run_sync(self._aclose())

    def __enter__(self) -> RLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _aclose(self) -> None:
        if self._persistent is not None:
            env, self._persistent = self._persistent.env, None
            if env is not None:
                await to_thread(env.cleanup)
        await to_thread(self._sandboxes.close)
        await self.service.aclose()
        await self.service.aclose_clients()

    # ----------------------------------------------------------------- the loop

    async def _complete(
        self, prompt: Any, root_prompt: str | None, extra_observers: Sequence[Observer] = ()
    ) -> RLMChatCompletion:
        if self._closed:
            raise ConfigurationError("this RLM is closed")
        validate_context(prompt)
        if root_prompt is not None and not isinstance(root_prompt, str):
            raise ConfigurationError("root_prompt must be a str or None")
        check_priced(self.service.router.clients(), self.limits)
        if self.persistent and self._persistent is None:  # set after construction, as allowed
            self._persistent = Persistent()
        tree = Tree(
            self.service,
            self.run_settings(),
            Budget(self.limits, self.ledger),
            Events([*self.observers, *extra_observers]),
            self._sandboxes,
            lambda name, kwargs: get_environment(name, kwargs),  # the seam, looked up per call
            self._persistent,
        )
        if self._persistent is None:
            completion, cancelled = await tree.run(prompt, root_prompt, self.depth, UsageLedger())
        else:
            if self._persistent_lock is None:
                self._persistent_lock = asyncio.Lock()
            async with self._persistent_lock:
                completion, cancelled = await tree.run(
                    prompt, root_prompt, self.depth, UsageLedger()
                )
        if cancelled:
            current = asyncio.current_task()
            if current in self._interrupted:
                self._interrupted.discard(current)  # type: ignore[arg-type]
                raise CancellationError(
                    partial_answer=completion.response or None,
                    message="Execution cancelled by user (Ctrl+C)",
                    completion=completion,
                )
            raise asyncio.CancelledError
        if self.on_limit == "raise":
            error = limit_error(completion, tree.budget, self.max_errors)
            if error is not None:
                raise error
        return completion

    def run_settings(self) -> RunSettings:
        """This RLM's attributes as the frozen settings of one completion."""
        configured = self.backend_kwargs.get("model_name")
        return RunSettings(
            environment=self.environment,
            environment_kwargs=frozen(self.environment_kwargs),
            setup_code=self.setup_code,
            depth=self.depth,
            max_depth=self.max_depth,
            max_iterations=self.max_iterations,
            max_errors=self.max_errors,
            max_output_chars=self.max_output_chars,
            max_concurrent_subcalls=self.max_concurrent_subcalls,
            custom_system_prompt=self.custom_system_prompt,
            orchestrator=self.orchestrator,
            user_prologue=self.user_prologue,
            compaction=self.compaction,
            compaction_threshold_pct=self.compaction_threshold_pct,
            context_window=self.context_window,
            persistent=self.persistent,
            tools=frozen(self.tools),
            tool_specs=frozen(self.tool_specs),
            sub_tools=frozen(self.sub_tools),
            sub_tool_specs=frozen(self.sub_tool_specs),
            root_model_name=configured if isinstance(configured, str) and configured else None,
            logged=frozen(self._logged_settings()),
        )

    def _logged_settings(self) -> dict[str, Any]:
        return {
            "backend": self.backend if isinstance(self.backend, str) else repr(self.backend),
            "backend_kwargs": _serialize_value(self._logged_backend_kwargs),
            "environment_kwargs": _serialize_value(filter_sensitive_keys(self.environment_kwargs)),
            "max_depth": self.max_depth,
            "max_iterations": self.max_iterations,
            "max_errors": self.max_errors,
            "max_tokens": self.limits.max_tokens,
            "max_budget": self.limits.max_budget,
            "max_timeout": self.limits.max_timeout,
            "max_subcalls": self.limits.max_subcalls,
            "max_concurrent_subcalls": self.max_concurrent_subcalls,
            "max_output_chars": self.max_output_chars,
            "persistent": self.persistent,
            "other_models": [c.model_name for c in self.other_clients],
        }
