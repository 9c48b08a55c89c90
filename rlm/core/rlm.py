"""`RLM`: the recursive language model loop.

`completion(prompt, root_prompt)` loads `prompt` into a REPL as `context`, shows the root LM
only its metadata, and loops: root LM -> run its ```repl blocks -> feed back their output,
until the code or the reply gives a final answer or a limit trips. Every LM call (root turns,
sub-calls, child RLMs' turns) goes through the one `LMHandler` path, which routes it, checks
the tree's `Budget` and records its usage.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rlm.clients import get_client
from rlm.clients.base import BaseLM, as_client
from rlm.core.aio import get_loop, in_loop_thread, on_loop, run_sync, spawn, to_thread
from rlm.core.arguments import (
    check_int,
    limit_error,
    normalise_tools,
    validate_context,
    with_sampling_args,
)
from rlm.core.budget import Budget, Ledger, Limits, check_priced
from rlm.core.cache import SubcallCache
from rlm.core.events import CallbackObserver, Events, EventStream, Observer, RunEvent, RunInfo
from rlm.core.lm_handler import LMHandler, Session
from rlm.core.loop import RunLoop, Tree, jsonable_messages
from rlm.core.reference_internals import ReferenceInternals
from rlm.core.types import (
    Message,
    QueryMetadata,
    RLMChatCompletion,
    SubcallRecord,
    Usage,
    UsageLedger,
    _serialize_value,
)
from rlm.environments import environment_class, get_environment
from rlm.environments.base import BaseEnv, ToolSpec
from rlm.environments.pool import SandboxPool, split_pool_kwargs
from rlm.errors import (
    CancellationError,
    ConfigurationError,
    RLMError,
)
from rlm.logger.redact import register_sensitive_values
from rlm.prompts import (
    build_system_prompt,
    context_metadata_message,
)
from rlm.runtime.repl import to_jsonable
from rlm.utils.rlm_utils import filter_sensitive_keys

_normalise_tools = normalise_tools  # the name rlm.environments._reference imports

OnLimit = Literal["raise", "return"]


# Seconds a run may take to wind down after Ctrl-C (cells stopped, environments released).
CANCEL_GRACE = 30.0

CHILD_TASK_PROMPT = "The task is given in `context`: read it and do what it asks."


@dataclass
class _Persistent:
    """The environment and session kept across `completion()` calls when persistent=True."""

    env: BaseEnv
    session: Session
    contexts: int = 0


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
        cache: the sub-call cache (`rlm.core.cache`): a `SubcallCache`, a SQLite file path, or
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
        # The reference's attributes, read by `_subcall` (rlm.core.reference_internals).
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
        self.handler = LMHandler(
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
        self._persistent: _Persistent | None = None
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
        """Release the persistent environment, the handler and the clients' connections."""
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
            state, self._persistent = self._persistent, None
            self.handler.close_session(state.session)
            await to_thread(state.env.cleanup)
        await to_thread(self._sandboxes.close)
        await self.handler.astop()
        await self.handler.aclose_clients()

    # ----------------------------------------------------------------- the loop

    async def _complete(
        self, prompt: Any, root_prompt: str | None, extra_observers: Sequence[Observer] = ()
    ) -> RLMChatCompletion:
        if self._closed:
            raise ConfigurationError("this RLM is closed")
        validate_context(prompt)
        if root_prompt is not None and not isinstance(root_prompt, str):
            raise ConfigurationError("root_prompt must be a str or None")
        check_priced(self.handler.router.clients(), self.limits)
        if self.handler.address is None:
            await self.handler.astart()
        tree = Tree(Budget(self.limits, self.ledger), Events([*self.observers, *extra_observers]))
        if not self.persistent:
            completion = await self._run(
                prompt, root_prompt, self.depth, tree, UsageLedger(), "", None
            )
        else:
            if self._persistent_lock is None:
                self._persistent_lock = asyncio.Lock()
            async with self._persistent_lock:
                completion = await self._run(
                    prompt, root_prompt, self.depth, tree, UsageLedger(), "", None, persistent=True
                )
        if self.on_limit == "raise":
            error = limit_error(completion, tree.budget, self.max_errors)
            if error is not None:
                raise error
        return completion

    async def _run(
        self,
        context: Any,
        root_prompt: str | None,
        depth: int,
        tree: Tree,
        ledger: UsageLedger,
        parent_id: str,
        model: str | None,
        *,
        persistent: bool = False,
    ) -> RLMChatCompletion:
        client = self.handler.router.route(depth, model)
        root_model = client.model_name
        configured = self.backend_kwargs.get("model_name")
        if client is self.root_client and isinstance(configured, str) and configured:
            root_model = configured  # the name the user gave, as the reference reports it
        run_id = uuid.uuid4().hex[:16]
        metadata = QueryMetadata.of(context)
        info = RunInfo(
            run_id=run_id,
            parent_id=parent_id,
            depth=depth,
            root_model=root_model,
            environment=self.environment,
            root_prompt=root_prompt,
            context_type=metadata.context_type,
            context_total_length=metadata.context_total_length,
            context_lengths=metadata.context_lengths,
            settings=self._settings(),
            context=context if depth == self.depth else None,
        )
        started = time.monotonic()
        tools = self.tools if depth == self.depth else self.sub_tools
        specs = self.tool_specs if depth == self.depth else self.sub_tool_specs
        session, env, index = await self._open(
            tree, ledger, depth, run_id, info, tools, specs, persistent
        )
        loop = RunLoop(self, tree, info, session, env, client.model_name if model else None, index)
        cancelled = False
        try:
            # A running cell stops when the tree's time runs out, in every environment.
            env.run_deadline = tree.budget.deadline
            await to_thread(env.load_context, context, index)
            if self.setup_code is not None and index == 0:
                await self._run_setup_code(env)
            tree.events.emit("on_run_start", info)
            first = context_metadata_message(metadata, root_prompt, index=index)
            if self.user_prologue:
                first += "\n\n" + self.user_prologue
            messages: list[Message] = [
                {
                    "role": "system",
                    "content": build_system_prompt(
                        self.custom_system_prompt,
                        specs,
                        max_depth=self.max_depth,
                        depth=depth,
                        orchestrator=self.orchestrator,
                        compaction=self.compaction,
                    ),
                },
                {"role": "user", "content": first},
            ]
            try:
                await loop.run(messages)
            except asyncio.CancelledError:
                cancelled = True
                loop.stop_reason = "cancelled"
        finally:
            if persistent:
                assert self._persistent is not None
                await to_thread(env.add_history, jsonable_messages(loop.transcript), index)
            else:
                self.handler.close_session(session)
                await to_thread(self._sandboxes.discard, env)
        completion = RLMChatCompletion(
            root_model=root_model,
            prompt=context,
            response=loop.answer_text if loop.answer_text is not None else loop.best,
            usage_summary=ledger.summary(),
            execution_time=time.monotonic() - started,
            metadata=None,  # as in the reference: an RLMLogger fills it in (on_run_end)
            stop_reason=loop.stop_reason,
            error=loop.error,
            value=loop.answer_value,
            run_id=run_id,
            iterations=loop.iteration,
        )
        tree.events.emit("on_run_end", info, completion)
        if cancelled:
            current = asyncio.current_task()
            if depth == self.depth and current in self._interrupted:
                self._interrupted.discard(current)  # type: ignore[arg-type]
                raise CancellationError(
                    partial_answer=completion.response or None,
                    message="Execution cancelled by user (Ctrl+C)",
                    completion=completion,
                )
            raise asyncio.CancelledError
        return completion

    async def _run_setup_code(self, env: BaseEnv) -> None:
        """`environment_kwargs["setup_code"]`: run before the first turn; failing is an error."""
        assert self.setup_code is not None
        result = await to_thread(env.execute, self.setup_code)
        if result.error or result.timed_out:
            raise ConfigurationError(
                "environment_kwargs['setup_code'] failed: "
                + (result.stderr.strip() or str(result.error))
            )

    async def _open(
        self,
        tree: Tree,
        ledger: UsageLedger,
        depth: int,
        run_id: str,
        info: RunInfo,
        tools: Mapping[str, Callable[..., Any]],
        specs: Mapping[str, ToolSpec],
        persistent: bool,
    ) -> tuple[Session, BaseEnv, int]:
        """A handler session and an environment for one run (reused when persistent)."""

        def on_start(record: SubcallRecord) -> None:
            record.parent_id = run_id
            tree.events.emit("on_subcall_start", info, record)

        def on_record(record: SubcallRecord) -> None:
            record.parent_id = run_id
            tree.events.emit("on_subcall", info, record)

        async def spawn(prompt: Any, context: Any, model: str | None) -> dict[str, Any]:
            return await self._spawn(tree, ledger, depth, run_id, prompt, context, model)

        if persistent and self._persistent is not None:
            state = self._persistent
            state.contexts += 1
            session = state.session
            session.budget, session.ledger, session.spawn = tree.budget, ledger, spawn
            session.on_start, session.on_record = on_start, on_record
            return session, state.env, state.contexts
        session = self.handler.open_session(
            depth=depth,
            max_depth=self.max_depth,
            budget=tree.budget,
            ledger=ledger,
            spawn=spawn,
            tools=tools,
            on_start=on_start,
            on_record=on_record,
        )
        kwargs = {
            **self.environment_kwargs,
            "handler": self.handler.endpoint(session),
            "depth": depth,
            "tools": specs,
        }
        try:
            direct = self._sandboxes.direct_kwargs(self.environment, kwargs)
            if direct is None:
                env = await to_thread(self._sandboxes.acquire, self.environment, kwargs)
            else:  # through the module-level seam, so a patched get_environment is used
                env = await to_thread(get_environment, self.environment, direct)
        except BaseException:
            self.handler.close_session(session)
            raise
        if persistent:
            self._persistent = _Persistent(env, session)
        return session, env, 0

    async def _spawn(
        self,
        tree: Tree,
        parent_ledger: UsageLedger,
        parent_depth: int,
        parent_id: str,
        prompt: Any,
        context: Any,
        model: str | None,
    ) -> dict[str, Any]:
        """Run a child RLM for `rlm_query`: same handler and budget, its own environment."""
        depth = parent_depth + 1
        if context is None:
            child_context, root_prompt = prompt, CHILD_TASK_PROMPT
        elif isinstance(prompt, str):
            child_context, root_prompt = context, prompt
        else:
            raise ConfigurationError("rlm_query: with a context, the prompt must be a str")
        validate_context(child_context)
        slots = tree.child_slots.setdefault(depth, asyncio.Semaphore(self.max_concurrent_subcalls))
        async with slots:
            ledger = UsageLedger(parent_ledger)
            child = await self._run(
                child_context, root_prompt, depth, tree, ledger, parent_id, model
            )
        if child.stop_reason == "error" and not child.response:
            raise RLMError(f"child RLM failed: {child.error}")
        summary = child.usage_summary
        usage = Usage(
            input_tokens=summary.total_input_tokens,
            output_tokens=summary.total_output_tokens,
            cached_tokens=sum(
                m.total_cached_tokens for m in summary.model_usage_summaries.values()
            ),
            cost=summary.total_cost,
        )
        return {
            "text": child.response,
            "model": child.root_model,
            "usage": usage.to_dict(),
            "stop_reason": child.stop_reason,
            "value": to_jsonable(child.value),
            "run_id": child.run_id,
        }

    def _settings(self) -> dict[str, Any]:
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
