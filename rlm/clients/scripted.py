"""`ScriptedLM`: a language model that answers from a script, for offline tests of RLM pipelines.

No network, no key, deterministic. Give it the replies in order, or a function of the messages:

    from rlm import RLM
    from rlm.clients import ScriptedLM

    root = ScriptedLM(responses=[
        "```repl\\nprint(len(context))\\n```",
        "```repl\\nanswer['content'] = 'done'\\nanswer['ready'] = True\\n```",
    ])
    sub = ScriptedLM("sub", responses=lambda messages: messages[-1]["content"].upper())
    # or by name: RLM(backend="scripted", backend_kwargs={"responses": [...]})

    root.calls  # the message lists it received, for assertions

A list is consumed in order, safely from many threads and tasks; an item that is an exception
instance is raised instead of answered (e.g. a retryable `ProviderError` to exercise retries).
Running out of replies raises a non-retryable `ProviderError`.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from rlm.aio import to_thread
from rlm.clients.base import BaseLM
from rlm.core.types import LMResponse, Message, Usage
from rlm.errors import ConfigurationError, ProviderError

ScriptFunction = Callable[[list[Message]], Any]  # returns a str (or an awaitable of one)


def count_tokens(text: str) -> int:
    """Simulated token count: one token per four characters, rounded up."""
    return math.ceil(len(text) / 4)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts [{"type": "text", "text": ...}]
        return "".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else str(content)


class ScriptedLM(BaseLM):
    """Answers from a list of replies (in order) or from a function of the message list.

    Usage per call: input tokens = ceil(characters of all message contents / 4), output tokens
    = ceil(len(reply) / 4); cost only when `prices` (USD per 1M tokens: "input", "output",
    optionally "cached_input") are given, else None.
    """

    provider: ClassVar[str] = "scripted"

    def __init__(
        self,
        model_name: str = "scripted",
        *,
        responses: Sequence[str | BaseException] | ScriptFunction,
        latency: float = 0.0,
        prices: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_name, prices=prices, **kwargs)
        if latency < 0:
            raise ConfigurationError(f"scripted: latency must be >= 0, got {latency}")
        if isinstance(responses, str | bytes) or not (
            callable(responses) or isinstance(responses, Sequence)
        ):
            raise ConfigurationError("scripted: responses must be a list of replies or a callable")
        self.latency = latency
        self._script: list[str | BaseException] | None = (
            None if callable(responses) else list(responses)
        )
        self._function: ScriptFunction | None = responses if callable(responses) else None
        self._lock = threading.Lock()
        self._next = 0
        self.calls: list[list[Message]] = []

    @property
    def remaining(self) -> int | None:
        """Replies left in the list (None for a callable script)."""
        if self._script is None:
            return None
        with self._lock:
            return len(self._script) - self._next

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        received = [dict(m) for m in messages]
        # A `with_model` twin reads the same script as its owner: one position, one call log.
        state = self._connection_owner if isinstance(self._connection_owner, ScriptedLM) else self
        with state._lock:
            state.calls.append(received)
            item: str | BaseException | None = None
            if state._script is not None:
                if state._next >= len(state._script):
                    raise ProviderError(
                        f"scripted responses exhausted after {len(state._script)} replies",
                        provider=self.provider,
                    )
                item = state._script[state._next]
                state._next += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        text = await self._reply(item, received)
        prompt_chars = sum(len(_content_text(m.get("content"))) for m in received)
        usage = Usage(input_tokens=math.ceil(prompt_chars / 4), output_tokens=count_tokens(text))
        return LMResponse(text=text, model=self.model_name, usage=usage)

    async def _reply(self, item: str | BaseException | None, messages: list[Message]) -> str:
        if isinstance(item, BaseException):
            raise item
        if item is not None:
            return str(item)
        assert self._function is not None
        try:
            if inspect.iscoroutinefunction(self._function):
                value = await self._function(messages)
            else:
                # A plain function may block (sleep, I/O): keep it off the shared event loop.
                value = await to_thread(self._function, messages)
                if inspect.isawaitable(value):
                    value = await value
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(
                f"scripted response function failed: {type(exc).__name__}: {exc}",
                provider=self.provider,
            ) from exc
        if not isinstance(value, str):
            raise ProviderError(
                f"scripted response function returned {type(value).__name__}, not str",
                provider=self.provider,
            )
        return value

    def price_table(self) -> Mapping[str, float] | None:
        return self.prices  # only explicit prices, as `_priced`

    def _priced(self, response: LMResponse) -> LMResponse:
        # Only explicit prices: a scripted model named like a real one must not look billed.
        return super()._priced(response) if self.prices is not None else response
