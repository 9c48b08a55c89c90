"""`BaseEnv`: the REPL an RLM's code runs in.

An environment holds the `context`, runs code cells, and gives the code helpers (`llm_query`,
`rlm_query`, custom tools, ...) that are requests to the LM service, sent over its `handler`:
an `LMLink` (what `RLM` gives: straight to the service in this process) or a `HandlerEndpoint`
(an address and token of a TCP `LMHandler`; `rlm.environments.link.open_link` turns either
into a link). The loop never calls a model on the environment's behalf: every sub-call goes
through the service, whatever the environment, which keeps limits and accounting host-side.
"""

from __future__ import annotations

import concurrent.futures
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from rlm.core.types import Message, REPLResult

DEFAULT_CELL_TIMEOUT = 120.0
DEFAULT_MAX_OUTPUT_CHARS = 20_000


@dataclass(frozen=True)
class HandlerEndpoint:
    """Where and how an environment reaches the LMHandler. `token` is secret: never log it."""

    host: str
    port: int
    token: str = field(repr=False)


@runtime_checkable
class LMLink(Protocol):
    """An environment's line to the LM service (`rlm.environments.link`)."""

    def submit(self, payload: Mapping[str, Any]) -> concurrent.futures.Future[dict[str, Any]]:
        """Send one request; the future holds its result or raises its `RemoteError`."""
        ...

    def endpoint(self) -> HandlerEndpoint:
        """Address and token of the same session over TCP, for a process that is elsewhere."""
        ...

    def close(self) -> None: ...


Handler = HandlerEndpoint | LMLink
"""What an environment's `handler` may be."""


@dataclass(frozen=True)
class ToolSpec:
    """A custom tool as the environment sees it: callables run host-side, values are JSON data."""

    name: str
    description: str = ""
    callable: bool = True
    value: Any = None


class BaseEnv(ABC):
    """A REPL session. Subclasses: `LocalREPL` (in-process) and the isolated sandboxes.

    Constructor keywords every environment accepts (the loop passes them; user
    `environment_kwargs` are merged in): `handler`, `depth`, `timeout` (seconds per cell),
    `max_output_chars` (per-stream capture cap), `tools`. Unknown keywords are a
    `ConfigurationError`, never silently ignored.
    """

    name: ClassVar[str] = "base"
    isolated: ClassVar[bool] = False

    def __init__(
        self,
        *,
        handler: Handler | None = None,
        depth: int = 0,
        timeout: float | None = DEFAULT_CELL_TIMEOUT,
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
        tools: Mapping[str, ToolSpec] | None = None,
    ) -> None:
        self.handler = handler
        self.depth = depth
        self.timeout = timeout
        self.max_output_chars = max_output_chars
        self.tools: dict[str, ToolSpec] = dict(tools or {})
        # Monotonic time at which the run's `max_timeout` runs out (set by the RLM per run).
        self.run_deadline: float | None = None

    def timeout_for_next_cell(self) -> float | None:
        """Seconds the next cell may run: its own `timeout` or what the run has left, if less.

        Every environment applies it, so a runaway cell stops at `max_timeout` everywhere.
        """
        if self.run_deadline is None:
            return self.timeout
        left = max(0.001, self.run_deadline - time.monotonic())
        return left if self.timeout is None else min(self.timeout, left)

    @abstractmethod
    def load_context(self, context: Any, index: int = 0) -> None:
        """Bind `context_{index}` (`context` is `context_0`); `ContextLoadError` on failure."""

    @abstractmethod
    def execute(self, code: str) -> REPLResult:
        """Run one cell; never raises for errors in the code itself (they go to stderr/error)."""

    def add_history(self, history: list[Message], index: int = 0) -> None:
        """Bind `history_{index}` (and `history` to the newest) for persistent sessions."""
        raise NotImplementedError(f"environment {self.name!r} does not keep histories")

    def cleanup(self) -> None:  # noqa: B027 - optional hook
        """Release everything the environment holds (processes, containers, temp files)."""

    def __enter__(self) -> BaseEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
