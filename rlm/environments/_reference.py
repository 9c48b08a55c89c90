"""The reference's REPL methods and constructor arguments, on top of `BaseEnv`.

Users of the reference drive REPLs by hand (its `examples/lm_in_repl.py`): `execute_code`,
numbered contexts and histories with `add_context` / `add_history` returning the index,
`get_context_count`, and `lm_handler_address=(host, port)` naming an `LMHandler` they started.
Our environments take a link to the LM service instead; `HandlerLease` is one made from an
address: it asks the handler this process started there for a session and hands requests to
that handler's service directly, so nothing goes through the handler's socket unauthenticated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rlm.core.types import (
    Message,
    ModelUsageSummary,
    REPLResult,
    RLMChatCompletion,
    SubcallRecord,
    UsageSummary,
)
from rlm.environments.base import BaseEnv, ToolSpec
from rlm.errors import ConfigurationError
from rlm.transport.inprocess import AddressLink

Address = tuple[str, int]


class HandlerLease(AddressLink):
    """A session on the LMHandler this process runs at an address (`AddressLink`), and the
    sub-calls made through it in the reference's shape."""

    def take_calls(self) -> list[RLMChatCompletion]:
        """The sub-calls made through this lease since the last call, as the reference's
        `RLMChatCompletion` records (what its `REPLResult.rlm_calls` holds)."""
        session = self.session
        return [] if session is None else [_as_completion(r) for r in session.take_records()]


def _as_completion(record: SubcallRecord) -> RLMChatCompletion:
    usage = record.usage
    summary = ModelUsageSummary(1, usage.input_tokens, usage.output_tokens, usage.cost)
    return RLMChatCompletion(
        root_model=record.model,
        prompt=record.prompt_preview,
        response=record.response,
        usage_summary=UsageSummary({record.model: summary}),
        execution_time=max(0.0, record.ended - record.started),
        error=record.error,
    )


def split_custom_tools(
    custom_tools: Mapping[str, Any] | None,
) -> tuple[dict[str, Callable[..., Any]], dict[str, ToolSpec]]:
    """The reference's `custom_tools` ({name: callable | JSON value | {"tool", "description"}})
    as host-side callables and the specs an environment binds."""
    from rlm.environments.tools import normalise_tools

    return normalise_tools(custom_tools)


class ReferenceREPLMethods(BaseEnv):
    """`execute_code`, `add_context`, counters and `update_handler_address` for any BaseEnv.

    Subclasses call `_init_reference_state()` in their constructor and record the indices
    their `load_context` / `add_history` bind with `_note_context` / `_note_history`.
    """

    lm_handler_address: Address | None

    def _init_reference_state(self) -> None:
        self._context_indices: set[int] = set()
        self._history_indices: set[int] = set()

    def execute_code(self, code: str) -> REPLResult:
        """The reference's name for `execute`."""
        return self.execute(code)

    def add_context(self, context_payload: Any, context_index: int | None = None) -> int:
        """Bind `context_{i}` (`context` for i = 0) at the next free index, or `context_index`;
        returns the index used."""
        index = len(self._context_indices) if context_index is None else context_index
        self.load_context(context_payload, index)
        return index

    def get_context_count(self) -> int:
        return len(self._context_indices)

    def get_history_count(self) -> int:
        return len(self._history_indices)

    def _note_context(self, index: int) -> None:
        self._context_indices.add(index)

    def _note_history(self, index: int) -> None:
        self._history_indices.add(index)

    def _next_history_index(self, index: int | None) -> int:
        return len(self._history_indices) if index is None else index


class ReferenceIsolatedREPL(ReferenceREPLMethods):
    """The reference's constructor and methods for one of our sandboxes.

    Used as `class DockerREPL(ReferenceIsolatedREPL, docker.DockerREPL)`. The reference's
    `timeout` of the cloud sandboxes is the sandbox's lifetime; `lifetime_kwarg` names ours.
    """

    lifetime_kwarg: str | None = None

    def __init__(
        self,
        *,
        lm_handler_address: Address | None = None,
        context_payload: Any = None,
        setup_code: str | None = None,
        persistent: bool = False,
        depth: int = 0,
        subcall_fn: Callable[..., Any] | None = None,
        custom_tools: Mapping[str, Any] | None = None,
        custom_sub_tools: Mapping[str, Any] | None = None,
        compaction: bool = False,
        max_concurrent_subcalls: int = 4,
        **kwargs: Any,
    ) -> None:
        if subcall_fn is not None:
            raise ConfigurationError(
                "subcall_fn is not supported: child RLMs are started by the LMHandler session "
                "(use RLM(max_depth=2) for rlm_query)"
            )
        if lm_handler_address is not None and kwargs.get("handler") is not None:
            raise ConfigurationError("pass either handler or lm_handler_address, not both")
        del persistent, custom_sub_tools, max_concurrent_subcalls  # sandboxes always persist
        if self.lifetime_kwarg is not None and "timeout" in kwargs:
            kwargs.setdefault(self.lifetime_kwarg, kwargs.pop("timeout"))
        callables, specs = split_custom_tools(custom_tools)
        self._init_reference_state()
        self.lm_handler_address = lm_handler_address
        self._lease: HandlerLease | None = None
        if lm_handler_address is not None:
            self._lease = HandlerLease(lm_handler_address, callables)
            kwargs["handler"] = self._lease
        elif callables:
            raise ConfigurationError(
                "callable custom_tools run on the host through the LMHandler: "
                "pass lm_handler_address too"
            )
        kwargs["tools"] = {**specs, **dict(kwargs.get("tools") or {})}
        super().__init__(depth=depth, **kwargs)
        try:
            if compaction:
                self.add_history([], 0)
            if context_payload is not None:
                self.load_context(context_payload)
            if setup_code:
                result = self.execute(setup_code)
                if result.error is not None or result.timed_out:
                    raise ConfigurationError(f"setup_code failed: {result.stderr.strip()}")
        except BaseException:
            self.cleanup()
            raise

    def load_context(self, context: Any, index: int = 0) -> None:
        super().load_context(context, index)  # type: ignore[safe-super]
        self._note_context(index)

    def execute(self, code: str) -> REPLResult:
        result = super().execute(code)  # type: ignore[safe-super]
        if self._lease is not None:  # driven by hand: the calls it made, reference-shaped
            result.rlm_calls = [*result.rlm_calls, *self._lease.take_calls()]
        return result

    def add_history(self, history: list[Message], index: int | None = None) -> int:  # type: ignore[override]
        index = self._next_history_index(index)
        super().add_history(history, index)
        self._note_history(index)
        return index

    def update_handler_address(self, address: Address) -> None:
        """Relay later sub-calls to the LMHandler this process started at `address`."""
        lease = HandlerLease(address, self._lease._tools if self._lease else None)
        self.handler = lease
        old, self._lease = self._lease, lease
        self.lm_handler_address = lease.address
        if old is not None:
            old.close()

    def cleanup(self) -> None:
        super().cleanup()
        lease = getattr(self, "_lease", None)
        if lease is not None:
            lease.close()
