"""A private LMHandler for an `IPythonREPL` used on its own, with the reference's hooks.

The reference's `IPythonREPL(subcall_fn=..., custom_tools={...})` calls Python callables from
the cell. Here they run host-side behind an LMHandler session like every other sub-call: the
cell (in process or in the kernel) sends `rlm`/`rlm_batch`/`tool` requests, the handler calls
`subcall_fn` (at most `max_concurrent` at once) or the tool, and records each request. Records
are attributed to the cell during which the request *started*, so a sub-call that finishes
after its cell timed out never shows up in a later cell's `rlm_calls`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from typing import Any

from rlm.aio import to_thread
from rlm.clients.base import BaseLM
from rlm.core.types import ChildResult, LMResponse, Message, SubcallRecord, Usage
from rlm.environments.base import HandlerEndpoint
from rlm.errors import ConfigurationError
from rlm.lm_service.service import Session
from rlm.transport.tcp import LMHandler

SubcallFn = Callable[[str, str | None], Any]


class _NoLM(BaseLM):
    """The hub's router needs a client; this one says why no LM is reachable from here."""

    provider = "none"

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        raise ConfigurationError(
            "this IPythonREPL has no LM handler for llm_query: pass lm_handler_address "
            "(a handler endpoint with its token), or run it through RLM(environment='ipython')"
        )


class Hub:
    """The private handler, its one session, and per-cell attribution of its records."""

    def __init__(
        self,
        *,
        depth: int,
        subcall_fn: SubcallFn | None,
        tools: Mapping[str, Callable[..., Any]],
        max_concurrent: int,
        subcall_threads: set[int],
        threads_lock: threading.Lock,
    ) -> None:
        self._subcall_fn = subcall_fn
        self._max_concurrent = max(1, max_concurrent)
        self._slots: asyncio.Semaphore | None = None
        self._subcall_threads = subcall_threads
        self._threads_lock = threads_lock
        self._cell = 0
        self._started_in: dict[str, int] = {}
        self._lock = threading.Lock()
        self.handler = LMHandler(_NoLM("none", max_retries=0))
        self.handler.start()
        self.session: Session = self.handler.open_session(
            depth=depth,
            max_depth=depth + 2,  # a child is always subcall_fn's to run, never a plain LM call
            spawn=self._spawn if subcall_fn is not None else None,
            tools=dict(tools),
            on_start=self._on_start,
        )

    @property
    def endpoint(self) -> HandlerEndpoint:
        return self.handler.endpoint(self.session)

    def begin_cell(self) -> None:
        """A new cell starts: requests from now on belong to it."""
        with self._lock:
            self._cell += 1

    def take_cell_records(self) -> list[SubcallRecord]:
        """This cell's finished records; stragglers of earlier cells are dropped."""
        records = self.session.take_records()
        with self._lock:
            mine = [r for r in records if self._started_in.pop(r.id, -1) == self._cell]
        return mine

    def _on_start(self, record: SubcallRecord) -> None:
        with self._lock:
            self._started_in[record.id] = self._cell

    async def _spawn(self, prompt: Any, context: Any, model: str | None) -> ChildResult:
        assert self._subcall_fn is not None
        if context is not None:
            raise ConfigurationError(
                "subcall_fn takes (prompt, model): rlm_query's context= is not supported here"
            )
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_concurrent)
        async with self._slots:
            completion = await to_thread(self._run, prompt, model)
        summary = getattr(completion, "usage_summary", None)
        usage = Usage(
            input_tokens=int(getattr(summary, "total_input_tokens", 0) or 0),
            output_tokens=int(getattr(summary, "total_output_tokens", 0) or 0),
            cost=getattr(summary, "total_cost", None),
        )
        return ChildResult(
            text=str(getattr(completion, "response", completion)),
            model=str(getattr(completion, "root_model", model or "")),
            usage=usage,
            stop_reason=getattr(completion, "stop_reason", None) or "final_answer",
            run_id=str(getattr(completion, "run_id", "")),
        )

    def _run(self, prompt: Any, model: str | None) -> Any:
        """Call subcall_fn, registering this thread so it cannot re-enter the REPL."""
        assert self._subcall_fn is not None
        me = threading.get_ident()
        with self._threads_lock:
            self._subcall_threads.add(me)
        try:
            return self._subcall_fn(prompt, model)
        finally:
            with self._threads_lock:
                self._subcall_threads.discard(me)

    def close(self) -> None:
        self.handler.close_session(self.session)
        self.handler.stop()
