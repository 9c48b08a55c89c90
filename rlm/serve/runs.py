"""One RLM run per request on a shared `RLM`: per-request settings within the server's limits,
progress as it happens, and a one-line usage summary.

Every request runs on a per-request view of the server's one `RLM`: a shallow copy that shares
its LM service, clients (so connection pools and adaptive concurrency limits are shared by all
requests) and loggers, with its own depth, iteration and tree limits. The view is never closed;
the server closes the shared `RLM` once, at shutdown.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from rlm.core.events import Observer, RunInfo
from rlm.core.rlm import RLM
from rlm.core.types import RLMChatCompletion, RLMIteration, SubcallRecord
from rlm.serve.chat_request import RequestError

LIMIT_NAMES = ("max_tokens", "max_budget", "max_timeout", "max_subcalls")


def server_bounds(rlm: RLM) -> dict[str, int | float | None]:
    """The settings a request may lower but never raise (None: the server sets no limit)."""
    return {
        "max_depth": rlm.max_depth,
        "max_iterations": rlm.max_iterations,
        "max_errors": rlm.max_errors,
        **{name: getattr(rlm.limits, name) for name in LIMIT_NAMES},
    }


def request_rlm(
    base: RLM, settings: Mapping[str, int | float], observers: Sequence[Observer] = ()
) -> RLM:
    """A view of `base` for one request. A setting above the server's own bound is refused
    (a 400 naming the bound) rather than clamped, so a client never gets silently less than
    it asked for."""
    bounds = server_bounds(base)
    for name, value in settings.items():
        bound = bounds[name]
        if bound is not None and value > bound:
            raise RequestError(
                f"{name}={value} exceeds this server's limit of {bound}",
                param=name,
                code="limit_exceeded",
            )
    view = copy.copy(base)
    view.max_depth = int(settings.get("max_depth", base.max_depth))
    view.max_iterations = int(settings.get("max_iterations", base.max_iterations))
    if "max_errors" in settings:
        view.max_errors = int(settings["max_errors"])
    limits: dict[str, Any] = {n: settings[n] for n in LIMIT_NAMES if n in settings}
    view.limits = dataclasses.replace(base.limits, **limits)
    view.observers = [*base.observers, *observers]
    return view


class ProgressQueue(Observer):
    """Run progress as small dicts on an asyncio queue of the consumer's loop.

    Hooks fire on the rlm loop thread or worker threads, so every put goes through
    `call_soon_threadsafe`. Reported: runs starting and ending (child runs included), root-LM
    turns and sub-calls starting.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def _put(self, item: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def on_run_start(self, run: RunInfo) -> None:
        self._put({"kind": "run_start", "run_id": run.run_id, "depth": run.depth})

    def on_iteration_start(self, run: RunInfo, iteration: int) -> None:
        self._put(
            {"kind": "iteration", "run_id": run.run_id, "depth": run.depth, "iteration": iteration}
        )

    def on_iteration(self, run: RunInfo, iteration: int, record: RLMIteration) -> None:
        """Turn ends are not reported: the next turn's start says as much."""

    def on_subcall_start(self, run: RunInfo, record: SubcallRecord) -> None:
        self._put(
            {
                "kind": "subcall",
                "run_id": run.run_id,
                "depth": record.depth,
                "type": record.kind,
                "model": record.model,
            }
        )

    def on_run_end(self, run: RunInfo, completion: RLMChatCompletion) -> None:
        self._put(
            {
                "kind": "run_end",
                "run_id": run.run_id,
                "depth": run.depth,
                "stop_reason": completion.stop_reason,
            }
        )


def describe(event: Mapping[str, Any]) -> str:
    """One line for a progress event, for SSE comments and MCP progress messages."""
    kind, depth = event["kind"], event["depth"]
    if kind == "iteration":
        return f"iteration {event['iteration']} (depth {depth})"
    if kind == "subcall":
        return f"sub-call {event['type']} to {event['model']} (depth {depth})"
    if kind == "run_start":
        return f"run {event['run_id']} started (depth {depth})"
    return f"run {event['run_id']} ended: {event['stop_reason']} (depth {depth})"


def usage_line(completion: RLMChatCompletion) -> str:
    """`stop=final_answer, 3 iterations, 5 LM calls, 1200 in / 80 out tokens, $0.0012`."""
    usage = completion.usage_summary
    parts = [
        f"stop={completion.stop_reason}",
        f"{completion.iterations} iterations",
        f"{usage.total_calls} LM calls",
        f"{usage.total_input_tokens} in / {usage.total_output_tokens} out tokens",
    ]
    if usage.total_cost is not None:
        parts.append(f"${usage.total_cost:.4f}")
    parts.append(f"{completion.execution_time:.1f}s")
    return ", ".join(parts)
