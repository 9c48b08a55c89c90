"""OpenAI chat completions over the official `openai` SDK, plus OpenRouter and vLLM presets.

One connection per client object (an `AsyncOpenAI`, or the direct HTTP session below), created
on the first call (on the shared rlm loop) and reused for its whole life. The SDK's own retries
are off: `BaseLM` retries, with the adaptive concurrency limit seeing every 429.

The body is the JSON `chat.completions.create` would send, built here once per call: the SDK's
`create` re-walks every message against its TypedDicts (milliseconds per call, growing with the
history) and builds pydantic models of the answer. It goes out one of two ways:

- direct HTTP (the default): requests carry the URL and headers the SDK would send (auth,
  version headers, Azure's deployment and api-version) over one aiohttp session, skipping the
  SDK's ~1 ms of per-request CPU; see `rlm.clients._direct_http`. For a plain OpenAI-compatible
  endpoint they are computed without importing the SDK (`_static_request`); otherwise the SDK
  builds the first request for each model and later ones reuse it. Off for `client_kwargs`
  with an `http_client` or a callable (a token provider must run for each request), or with
  `direct_http=False`.
- through the SDK's generic `client.post(path, body=..., cast_to=object)` for every request.

Both raise the same `ProviderError`s for the same answers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

from rlm.clients._fields import count, field
from rlm.clients._http_errors import openai_style_error
from rlm.clients._sdk_request import join_url, stainless_headers
from rlm.clients._stainless import StainlessLM
from rlm.core.types import LMResponse, Message, Usage
from rlm.errors import ProviderError

CHAT_PATH = "/chat/completions"
DEFAULT_BASE_URL = "https://api.openai.com/v1"  # the SDK's, when neither argument nor env sets one
# Environment variables the SDK reads that change a request in ways `_static_request` does not
# model: with one set, the SDK builds the request (see `StainlessLM._learn_route`).
_UNMODELLED_ENV = ("OPENAI_CUSTOM_HEADERS", "OPENAI_ADMIN_KEY")


class OpenAIClient(StainlessLM):
    """OpenAI (or any OpenAI-compatible server given `base_url`).

    `sampling_args` use the chat-completions names (`temperature`, `top_p`, `seed`, `stop`,
    `prompt_cache_key`, ...); `max_tokens` is sent as `max_completion_tokens`, the name current
    OpenAI models require. Names the SDK does not know travel in `extra_body`.

    `direct_http` (default: on when aiohttp is installed and `client_kwargs` leave the SDK's
    transport and credentials alone) sends requests the SDK built once; see the module's
    docstring.
    """

    provider: ClassVar[str] = "openai"
    sdk_module: ClassVar[str] = "openai"
    sdk_client_class: ClassVar[str] = "AsyncOpenAI"
    extra: ClassVar[str] = "openai"
    env_key: ClassVar[str | None] = "OPENAI_API_KEY"
    max_tokens_field: ClassVar[str] = "max_completion_tokens"
    reports_cost: ClassVar[bool] = False

    @staticmethod
    def _error_body(body: Any) -> Any:
        """openai's status errors carry the inner `error` object when there is one."""
        return body.get("error", body) if isinstance(body, Mapping) else body

    def _static_request(self, path: str) -> tuple[str, dict[str, str]] | None:
        """What `AsyncOpenAI` built with this client's settings sends to `path`: the base URL
        (argument, else OPENAI_BASE_URL, else OpenAI's), the bearer key, the organisation and
        project from OPENAI_ORG_ID / OPENAI_PROJECT_ID, the SDK's own headers and the user's.

        None for any other SDK class (Azure), `client_kwargs`, no key, an environment variable
        of `_UNMODELLED_ENV`, or a base URL `join_url` does not take.
        """
        if (
            self.sdk_client_class != "AsyncOpenAI"
            or self.client_kwargs
            or not self._api_key
            or any(os.environ.get(name) is not None for name in _UNMODELLED_ENV)
        ):
            return None
        url = join_url(self.base_url or os.environ.get("OPENAI_BASE_URL", DEFAULT_BASE_URL), path)
        sdk_headers = {
            name: value
            for name, value in (
                ("OpenAI-Organization", os.environ.get("OPENAI_ORG_ID")),
                ("OpenAI-Project", os.environ.get("OPENAI_PROJECT_ID")),
            )
            if value is not None
        }
        headers = stainless_headers(
            self.sdk_client_class,
            self.sdk_module,
            auth={"Authorization": f"Bearer {self._api_key}"},
            sdk_headers=sdk_headers,
            custom=self.default_headers,
            timeout=self.timeout,
        )
        return None if url is None or headers is None else (url, headers)

    def _model_param(self) -> str:
        return self.model_name

    def _request(self, messages: list[Message], sampling: Mapping[str, Any]) -> dict[str, Any]:
        """The JSON body: `model`, `messages`, the sampling arguments, then `extra_body`."""
        args = dict(sampling)
        args.pop("stream", None)  # a call returns one whole completion
        if (
            "max_tokens" in args
            and self.max_tokens_field != "max_tokens"
            and self.max_tokens_field not in args
        ):
            args[self.max_tokens_field] = args.pop("max_tokens")
        extra_body = args.pop("extra_body", None) or {}
        args.pop("model", None)
        args.pop("messages", None)
        return {"model": self._model_param(), "messages": messages, **args, **extra_body}

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        connection = self._sdk_client()
        body = self._request(messages, sampling)
        if self.direct_http:
            data = await connection.post_json(CHAT_PATH, body)
        else:
            try:
                data = await connection.post(CHAT_PATH, body=body, cast_to=object)
            except Exception as exc:
                error = openai_style_error(self.provider, exc, self._sdk)
                if error is None:
                    raise
                raise error from exc
        if not isinstance(data, Mapping):
            raise ProviderError(
                f"expected a JSON chat completion, got {str(data)[:200]!r}", provider=self.provider
            )
        return chat_completion_response(
            data, self.model_name, provider=self.provider, reports_cost=self.reports_cost
        )


class OpenRouterClient(OpenAIClient):
    """OpenRouter: OpenAI-compatible; the cost it reports in `usage.cost` is used as is."""

    provider: ClassVar[str] = "openrouter"
    env_key: ClassVar[str | None] = "OPENROUTER_API_KEY"
    default_base_url: ClassVar[str | None] = "https://openrouter.ai/api/v1"
    max_tokens_field: ClassVar[str] = "max_tokens"
    reports_cost: ClassVar[bool] = True


class VLLMClient(OpenAIClient):
    """A vLLM (or other local OpenAI-compatible) server; no key needed ("EMPTY" is sent)."""

    provider: ClassVar[str] = "vllm"
    env_key: ClassVar[str | None] = None
    default_api_key: ClassVar[str | None] = "EMPTY"
    default_base_url: ClassVar[str | None] = "http://localhost:8000/v1"
    max_tokens_field: ClassVar[str] = "max_tokens"

    def __init__(self, model_name: str, *, base_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(model_name, base_url=base_url or os.environ.get("VLLM_BASE_URL"), **kwargs)


def chat_completion_response(
    response: Any, fallback_model: str, *, provider: str, reports_cost: bool = False
) -> LMResponse:
    """An `LMResponse` from an OpenAI-shaped chat completion: an SDK object or its JSON."""
    choices = field(response, "choices") or []
    text = ""
    if choices:
        text = content_text(field(field(choices[0], "message"), "content"))
    elif error := field(response, "error"):
        raise ProviderError(f"no choices in the response: {error}", provider=provider)
    model = field(response, "model") or fallback_model
    return LMResponse(text, str(model), chat_usage(field(response, "usage"), reports_cost))


def content_text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        text = part.get("text") if isinstance(part, Mapping) else getattr(part, "text", None)
        if isinstance(text, str):
            parts.append(text)
    return "".join(parts)


def chat_usage(usage: Any, reports_cost: bool = False) -> Usage:
    """Usage of one chat completion; a missing usage block counts as zeros."""
    if usage is None:
        return Usage()
    details = field(usage, "prompt_tokens_details")
    cached = count(field(details, "cached_tokens"))
    # Gateways in front of Anthropic (OpenRouter, LiteLLM) report cache writes too.
    written = count(field(details, "cache_write_tokens")) or count(
        field(usage, "cache_creation_input_tokens")
    )
    cached = cached or count(field(usage, "cache_read_input_tokens"))
    cost = field(usage, "cost") if reports_cost else None
    return Usage(
        input_tokens=count(field(usage, "prompt_tokens")),
        output_tokens=count(field(usage, "completion_tokens")),
        cached_tokens=cached,
        cache_write_tokens=written,
        cost=float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None,
    )
