"""OpenAI chat completions over the official `openai` SDK, plus OpenRouter and vLLM presets.

One `AsyncOpenAI` per client object, created on the first call (on the shared rlm loop) and
reused for its whole life. The SDK's own retries are off: `BaseLM` retries, with the adaptive
concurrency limit seeing every 429.

Requests go through the SDK's documented generic `client.post(path, body=..., cast_to=object)`
rather than `chat.completions.create`: the SDK then still authenticates, builds the URL (Azure
deployments included), sends and raises its typed errors, but skips re-walking every message
against the request's TypedDicts (milliseconds per call, growing with the history) and building
pydantic models of the answer. The body is the same JSON `create` would send.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import weakref
from collections.abc import Mapping
from typing import Any, ClassVar

from rlm._optional import require
from rlm.clients._http_errors import check_options, openai_style_error, resolve_api_key
from rlm.clients.base import BaseLM
from rlm.core.types import LMResponse, Message, Usage
from rlm.errors import ProviderError

CHAT_PATH = "/chat/completions"


class OpenAIClient(BaseLM):
    """OpenAI (or any OpenAI-compatible server given `base_url`).

    `sampling_args` use the chat-completions names (`temperature`, `top_p`, `seed`, `stop`,
    `prompt_cache_key`, ...); `max_tokens` is sent as `max_completion_tokens`, the name current
    OpenAI models require. Names the SDK does not know travel in `extra_body`.
    """

    provider: ClassVar[str] = "openai"
    env_key: ClassVar[str | None] = "OPENAI_API_KEY"
    default_api_key: ClassVar[str | None] = None
    default_base_url: ClassVar[str | None] = None
    max_tokens_field: ClassVar[str] = "max_completion_tokens"
    reports_cost: ClassVar[bool] = False
    extra: ClassVar[str] = "openai"

    def __init__(
        self,
        model_name: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        default_headers: Mapping[str, str] | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        check_options(self.provider, options)
        super().__init__(model_name, **options)
        self._sdk = require("openai", extra=self.extra)
        self._api_key = resolve_api_key(
            self.provider, api_key, self.env_key, default=self.default_api_key
        )
        self.base_url = base_url or self.default_base_url
        self.default_headers = dict(default_headers or {})
        self.client_kwargs = dict(client_kwargs or {})
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def _make_client(self) -> Any:
        kwargs: dict[str, Any] = {
            "api_key": self._api_key,
            "timeout": self.timeout,
            "max_retries": 0,
            **self.client_kwargs,
        }
        if self.base_url:
            kwargs["base_url"] = self.base_url
        if self.default_headers:
            kwargs["default_headers"] = self.default_headers
        from rlm.clients._http_pool import fast_http_client  # httpx: only once an SDK is in use

        kwargs.setdefault("http_client", fast_http_client(self._sdk))
        return self._sdk.AsyncOpenAI(**kwargs)

    def _sdk_client(self) -> Any:
        previous = self._client
        client = super()._sdk_client()
        if client is not previous:  # built, or rebuilt for another loop
            if self._finalizer is not None:
                self._finalizer()  # the client of the other loop is abandoned: close it there
            loop = asyncio.get_running_loop()  # the loop the new client is bound to
            self._finalizer = weakref.finalize(self, _close_abandoned, client, loop)
            self._finalizer.atexit = False  # _close_all_at_exit waits for these instead
            _LIVE.add(self)
        return client

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
        client = self._sdk_client()
        body = self._request(messages, sampling)
        try:
            data = await client.post(CHAT_PATH, body=body, cast_to=object)
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

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if client is not None:
            await client.close()


# An SDK client over aiohttp that is never closed logs "Unclosed client session" when it is
# collected or the process exits, and users of the reference API never call close(). So an
# abandoned client is closed on its loop when its owner is collected, and at exit every live
# one is closed before the interpreter goes down.
_LIVE: weakref.WeakSet[OpenAIClient] = weakref.WeakSet()
_CLOSING: set[concurrent.futures.Future[Any]] = set()


def _close_abandoned(sdk_client: Any, loop: asyncio.AbstractEventLoop) -> None:
    if loop.is_closed():
        return
    try:
        future = asyncio.run_coroutine_threadsafe(sdk_client.close(), loop)
    except RuntimeError:  # the loop is shutting down
        return
    _CLOSING.add(future)
    future.add_done_callback(_CLOSING.discard)


@atexit.register
def _close_all_at_exit() -> None:
    for owner in list(_LIVE):
        loop = owner._client_loop
        if owner._client is None or loop is None or loop.is_closed() or not loop.is_running():
            continue
        if loop is _running_loop():
            continue  # exiting from inside the loop: nothing can wait here
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(owner.aclose(), loop).result(timeout=2.0)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


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
    choices = _field(response, "choices") or []
    text = ""
    if choices:
        text = content_text(_field(_field(choices[0], "message"), "content"))
    elif error := _field(response, "error"):
        raise ProviderError(f"no choices in the response: {error}", provider=provider)
    model = _field(response, "model") or fallback_model
    return LMResponse(text, str(model), chat_usage(_field(response, "usage"), reports_cost))


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
    details = _field(usage, "prompt_tokens_details")
    cached = _int(_field(details, "cached_tokens"))
    # Gateways in front of Anthropic (OpenRouter, LiteLLM) report cache writes too.
    written = _int(_field(details, "cache_write_tokens")) or _int(
        _field(usage, "cache_creation_input_tokens")
    )
    cached = cached or _int(_field(usage, "cache_read_input_tokens"))
    cost = _field(usage, "cost") if reports_cost else None
    return Usage(
        input_tokens=_int(_field(usage, "prompt_tokens")),
        output_tokens=_int(_field(usage, "completion_tokens")),
        cached_tokens=cached,
        cache_write_tokens=written,
        cost=float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None,
    )


def _field(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
