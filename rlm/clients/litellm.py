"""Any model LiteLLM can reach, through `litellm.acompletion`.

LiteLLM keeps its own pooled HTTP clients per provider, so there is no SDK object to hold; its
retries are off (`num_retries=0`, `max_retries=0`) because `BaseLM` retries. Its exceptions
subclass the `openai` SDK's, so they translate the same way, keeping their status codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from rlm._optional import require
from rlm.clients._configured import ConfiguredLM
from rlm.clients._http_errors import openai_style_error, parse_retry_after
from rlm.clients.openai import chat_completion_response
from rlm.core.types import LMResponse, Message
from rlm.errors import ContextWindowExceededError


class LiteLLMClient(ConfiguredLM):
    """`model_name` in LiteLLM's form (`openai/gpt-5-mini`, `anthropic/claude-haiku-4-5`, ...).

    `api_key` is optional: without it LiteLLM reads the provider's own env var. `base_url` is
    sent as `api_base`. `completion_kwargs` are passed to every `acompletion` call. The cost is
    LiteLLM's own price for the call when it knows the model.
    """

    provider: ClassVar[str] = "litellm"

    def __init__(
        self, model_name: str, *, completion_kwargs: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """`api_key` (sent as is), `base_url`, `default_headers`, options: `ConfiguredLM`'s."""
        super().__init__(model_name, **kwargs)
        self._litellm = require("litellm", extra="litellm")
        self._openai = require("openai", extra="litellm")
        self.completion_kwargs = dict(completion_kwargs or {})

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        kwargs: dict[str, Any] = {**self.completion_kwargs, **sampling}
        kwargs.pop("stream", None)  # a call returns one whole completion
        if self.base_url:
            kwargs["api_base"] = self.base_url
        if self._api_key:
            kwargs["api_key"] = self._api_key
        if self.default_headers:
            kwargs["extra_headers"] = {
                **self.default_headers,
                **(kwargs.get("extra_headers") or {}),
            }
        kwargs.update(model=self.model_name, messages=messages, num_retries=0, max_retries=0)
        kwargs.setdefault("drop_params", True)
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = await self._litellm.acompletion(**kwargs)
        except self._litellm.ContextWindowExceededError as exc:
            raise ContextWindowExceededError(
                f"context window exceeded: {getattr(exc, 'message', None) or exc}",
                provider=self.provider,
                status_code=getattr(exc, "status_code", 400),
                body=getattr(exc, "body", None),
            ) from exc
        except Exception as exc:
            error = openai_style_error(self.provider, exc, self._openai)
            if error is None:
                raise
            if error.retryable and error.retry_after is None:
                # LiteLLM rebuilds the response without the provider's headers; it keeps them here.
                error.retry_after = parse_retry_after(
                    getattr(exc, "litellm_response_headers", None)
                )
            raise error from exc
        result = chat_completion_response(response, self.model_name, provider=self.provider)
        cost = self._cost(response)
        return result if cost is None else result.with_cost(cost)

    def _cost(self, response: Any) -> float | None:
        """LiteLLM's price of this response, or None when it does not know the model."""
        hidden = getattr(response, "_hidden_params", None)
        if isinstance(hidden, Mapping) and "response_cost" in hidden:
            cost = hidden["response_cost"]  # LiteLLM priced it already (None: unknown model)
        else:
            try:
                cost = self._litellm.completion_cost(completion_response=response)
            except Exception:  # LiteLLM raises for models missing from its price map
                return None
        if isinstance(cost, (int, float)) and not isinstance(cost, bool) and cost > 0:
            return float(cost)
        return None
