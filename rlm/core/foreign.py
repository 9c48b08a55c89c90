"""Clients that are not `BaseLM`s: what a reference user's code hands `RLM` through `get_client`.

The reference's users patch `rlm.core.rlm.get_client` in their tests to return their own
object (often a `unittest.mock.Mock`) whose `completion(prompt)` returns a str and whose
`get_last_usage()` reports the call's tokens. `ForeignClient` puts such an object behind our
one LM-call path, so budget, records and usage accounting still apply to it.
"""

from __future__ import annotations

import inspect
from typing import Any

from rlm.clients.base import BaseLM
from rlm.core.aio import to_thread
from rlm.core.types import LMResponse, Message, Usage
from rlm.errors import ConfigurationError, ProviderError


def as_client(obj: Any, model_name: str | None) -> BaseLM:
    """`obj` itself when it is a `BaseLM`, else a `ForeignClient` around it."""
    if isinstance(obj, BaseLM):
        return obj
    if not callable(getattr(obj, "completion", None)):
        raise ConfigurationError(
            f"get_client returned {type(obj).__name__}, which has no completion(prompt) method"
        )
    return ForeignClient(obj, model_name)


class ForeignClient(BaseLM):
    """A duck-typed client: `completion(prompt) -> str` (or `async acompletion`), and
    optionally `get_last_usage()` returning a usage summary with token counts."""

    provider = "foreign"

    def __init__(self, obj: Any, model_name: str | None = None) -> None:
        own = getattr(obj, "model_name", None)
        name = model_name or (own if isinstance(own, str) and own else "unknown")
        super().__init__(name, max_retries=0)
        self.wrapped = obj

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        acompletion = getattr(self.wrapped, "acompletion", None)
        try:
            if inspect.iscoroutinefunction(acompletion):
                text = await acompletion(messages)
            else:
                text = await to_thread(self.wrapped.completion, messages)
        except Exception as exc:
            raise ProviderError(f"{type(exc).__name__}: {exc}", provider=self.provider) from exc
        if not isinstance(text, str):
            raise ProviderError(
                f"the client's completion returned {type(text).__name__}, not str",
                provider=self.provider,
            )
        return LMResponse(text=text, model=self.model_name, usage=self._last_usage())

    def _last_usage(self) -> Usage:
        """The wrapped client's report of its last call (a usage summary of either shape)."""
        getter = getattr(self.wrapped, "get_last_usage", None)
        report = getter() if callable(getter) else None
        summaries = getattr(report, "model_usage_summaries", None)
        parts = list(summaries.values()) if isinstance(summaries, dict) else [report]

        def number(part: Any, name: str) -> int:
            value = getattr(part, name, 0)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        costs = [getattr(p, "total_cost", None) for p in parts]
        priced = [c for c in costs if isinstance(c, (int, float)) and not isinstance(c, bool)]
        return Usage(
            input_tokens=sum(number(p, "total_input_tokens") for p in parts),
            output_tokens=sum(number(p, "total_output_tokens") for p in parts),
            cost=float(sum(priced)) if priced else None,
        )
