"""What a run reports as it goes, to loggers, the verbose console and user callbacks.

Observers get plain data (the same records the trajectory log stores). A failing observer is
logged with its traceback and the run goes on: a broken progress bar must not cost a paid run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from rlm.aio import get_loop, on_loop
from rlm.core.types import RLMChatCompletion, RLMIteration, SubcallRecord

log = logging.getLogger("rlm")


@dataclass(frozen=True)
class RunInfo:
    """Identity and settings of one (root or child) run."""

    run_id: str
    parent_id: str
    depth: int
    root_model: str
    environment: str
    root_prompt: str | None
    context_type: str
    context_total_length: int
    context_lengths: list[int]
    settings: dict[str, Any] = field(default_factory=dict)
    # The run's context itself, for loggers that record it (replay needs it); not in to_dict().
    context: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "parent_id": self.parent_id,
            "depth": self.depth,
            "root_model": self.root_model,
            "environment": self.environment,
            "root_prompt": self.root_prompt,
            "context_type": self.context_type,
            "context_total_length": self.context_total_length,
            "context_lengths": list(self.context_lengths),
            "settings": dict(self.settings),
        }


class Observer:
    """Base class with no-op hooks; override the ones you need."""

    def on_run_start(self, run: RunInfo) -> None:
        """A root or child run started."""

    def on_iteration_start(self, run: RunInfo, iteration: int) -> None:
        """The root LM is about to be called for turn `iteration` (1-based)."""

    def on_iteration(self, run: RunInfo, iteration: int, record: RLMIteration) -> None:
        """A turn finished: the reply and every code block it ran."""

    def on_subcall_start(self, run: RunInfo, record: SubcallRecord) -> None:
        """Code in the run's REPL started a sub-call (response/usage not known yet)."""

    def on_subcall(self, run: RunInfo, record: SubcallRecord) -> None:
        """A sub-call finished (its record has the response, usage and timing)."""

    def on_compaction(self, run: RunInfo, count: int, summary: str) -> None:
        """The run's root history was summarised into one message (compaction number `count`)."""

    def on_run_end(self, run: RunInfo, completion: RLMChatCompletion) -> None:
        """The run ended, with its answer and stop reason."""


class Events:
    """Fans each hook out to every observer; one observer's failure does not stop the others."""

    def __init__(self, observers: list[Observer]) -> None:
        self.observers = observers

    def emit(self, hook: str, *args: Any) -> None:
        for observer in self.observers:
            try:
                getattr(observer, hook)(*args)
            except Exception:
                log.exception("rlm observer %s.%s failed", type(observer).__name__, hook)


class CallbackObserver(Observer):
    """The reference implementation's callback arguments, as an observer."""

    def __init__(
        self,
        *,
        on_subcall_start: Any = None,
        on_subcall_complete: Any = None,
        on_iteration_start: Any = None,
        on_iteration_complete: Any = None,
    ) -> None:
        self._subcall_start = on_subcall_start
        self._subcall_complete = on_subcall_complete
        self._iteration_start = on_iteration_start
        self._iteration_complete = on_iteration_complete

    def on_subcall_start(self, run: RunInfo, record: SubcallRecord) -> None:
        if self._subcall_start is not None:
            self._subcall_start(record.depth, record.model, record.prompt_preview[:200])

    def on_subcall(self, run: RunInfo, record: SubcallRecord) -> None:
        if self._subcall_complete is not None:
            duration = record.ended - record.started
            self._subcall_complete(record.depth, record.model, duration, record.error)

    def on_iteration_start(self, run: RunInfo, iteration: int) -> None:
        if self._iteration_start is not None:
            self._iteration_start(run.depth, iteration)

    def on_iteration(self, run: RunInfo, iteration: int, record: RLMIteration) -> None:
        if self._iteration_complete is not None:
            self._iteration_complete(run.depth, iteration, record.iteration_time)


@dataclass(frozen=True)
class RunEvent:
    """One thing that happened in a run, as `RLM.events()` yields it.

    `kind` is the Observer hook without its "on_" prefix (run_start, iteration_start,
    iteration, subcall_start, subcall, compaction, run_end) or "completion" for the last event;
    `run` is the run it belongs to (None for "completion"); `data` is the hook's payload.
    """

    kind: str
    run: RunInfo | None
    data: Any = None


class EventStream(Observer):
    """An observer that queues events for one async consumer (`RLM.events()`).

    Hooks fire on the rlm event loop thread or a worker thread; the queue lives on the rlm loop,
    and the consumer may iterate from any event loop.
    """

    _END = object()

    def __init__(self) -> None:
        self._loop = get_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()

    def _put(self, item: Any) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def close(self) -> None:
        self._put(self._END)

    async def _get(self) -> Any:
        return await self._queue.get()

    async def __aiter__(self) -> AsyncIterator[RunEvent]:
        while True:
            item = await on_loop(self._get())
            if item is self._END:
                return
            yield item

    def on_run_start(self, run: RunInfo) -> None:
        self._put(RunEvent("run_start", run))

    def on_iteration_start(self, run: RunInfo, iteration: int) -> None:
        self._put(RunEvent("iteration_start", run, iteration))

    def on_iteration(self, run: RunInfo, iteration: int, record: RLMIteration) -> None:
        self._put(RunEvent("iteration", run, record))

    def on_subcall_start(self, run: RunInfo, record: SubcallRecord) -> None:
        self._put(RunEvent("subcall_start", run, record))

    def on_subcall(self, run: RunInfo, record: SubcallRecord) -> None:
        self._put(RunEvent("subcall", run, record))

    def on_compaction(self, run: RunInfo, count: int, summary: str) -> None:
        self._put(RunEvent("compaction", run, {"count": count, "summary": summary}))

    def on_run_end(self, run: RunInfo, completion: RLMChatCompletion) -> None:
        self._put(RunEvent("run_end", run, completion))
