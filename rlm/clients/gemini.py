"""Gemini over the official `google-genai` SDK (`client.aio.models.generate_content`).

System messages become `system_instruction`; the other turns use the roles `user` and `model`.
The SDK's retries are off (`HttpRetryOptions(attempts=1)`, which also stops its hidden sleep
before retrying an aiohttp connection error): `BaseLM` retries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from rlm._optional import require
from rlm.clients._configured import ConfiguredLM
from rlm.clients._http_errors import (
    is_transport_failure,
    mentions_context_overflow,
    status_error,
    transport_error,
)
from rlm.core.types import LMResponse, Message, Usage
from rlm.errors import ConfigurationError, ProviderError

# Our names -> GenerateContentConfig's; OpenAI-only names are dropped so one `sampling_args`
# dict can serve several backends.
_RENAMED = {"max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens"}
_UNSUPPORTED = frozenset({"prompt_cache_key", "n", "stream"})


DEFAULT_MODEL = "gemini-2.5-flash"  # the reference's default, when no model_name is given


class GeminiClient(ConfiguredLM):
    """Gemini API. Key: `api_key`, else GEMINI_API_KEY, else GOOGLE_API_KEY.

    `sampling_args` are `GenerateContentConfig` fields (`temperature`, `top_p`, `top_k`, `seed`,
    `max_output_tokens`, `stop_sequences`, `thinking_config`, ...); `max_tokens` and `stop` are
    accepted as aliases.
    """

    provider: ClassVar[str] = "gemini"

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        *,
        api_version: str | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """`api_version` picks the REST version path ("v1beta", "v1"); gateways such as the
        LiteLLM proxy serve generateContent on /v1beta only. `api_key`, `base_url`,
        `default_headers` and the client options: `ConfiguredLM`'s."""
        super().__init__(model_name, **kwargs)
        self._genai = require("google.genai", extra="gemini", package="google-genai")
        self._types = require("google.genai.types", extra="gemini", package="google-genai")
        self._errors = require("google.genai.errors", extra="gemini", package="google-genai")
        self._take_key("GEMINI_API_KEY", "GOOGLE_API_KEY")
        self.api_version = api_version
        self.client_kwargs = dict(client_kwargs or {})

    def _make_client(self) -> Any:
        types = self._types
        http_options = types.HttpOptions(
            base_url=self.base_url,
            api_version=self.api_version,
            headers=self.default_headers or None,
            timeout=None if self.timeout is None else max(1, int(self.timeout * 1000)),
            retry_options=types.HttpRetryOptions(attempts=1),
        )
        return self._genai.Client(
            api_key=self._api_key, http_options=http_options, **self.client_kwargs
        )

    def _config(self, system: str | None, sampling: Mapping[str, Any]) -> Any:
        fields: dict[str, Any] = {}
        for name, value in sampling.items():
            if name in _UNSUPPORTED:
                continue
            if name == "stop":
                if value:
                    fields.setdefault(
                        "stop_sequences", [value] if isinstance(value, str) else list(value)
                    )
                continue
            fields.setdefault(_RENAMED.get(name, name), value)
        if system:
            fields["system_instruction"] = system
        try:
            return self._types.GenerateContentConfig(**fields)
        except Exception as exc:  # pydantic's ValidationError: an unknown or ill-typed field
            raise ConfigurationError(
                f"gemini: bad sampling_args for GenerateContentConfig: {exc}"
            ) from exc

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        client = self._sdk_client()
        system, contents = to_gemini(messages)
        config = self._config(system, sampling)
        try:
            response = await client.aio.models.generate_content(
                model=self.model_name, contents=contents, config=config
            )
        except self._errors.APIError as exc:
            raise self._api_error(exc) from exc
        except Exception as exc:
            if is_transport_failure(exc):
                raise transport_error(self.provider, exc) from exc
            raise
        return self._response(response)

    def _api_error(self, exc: Any) -> ProviderError:
        status = exc.code if isinstance(exc.code, int) else None
        message = exc.message or str(exc)
        lowered = message.lower()
        overflow = (
            status == 400
            and exc.status == "INVALID_ARGUMENT"
            and (
                mentions_context_overflow(message)
                or ("token" in lowered and ("exceed" in lowered or "too long" in lowered))
            )
        )
        headers = getattr(getattr(exc, "response", None), "headers", None)
        return status_error(
            self.provider,
            status,
            f"{exc.status}: {message}" if exc.status else message,
            body=exc.details,
            headers=headers,
            context_overflow=overflow,
        )

    def _response(self, response: Any) -> LMResponse:
        candidates = getattr(response, "candidates", None) or []
        feedback = getattr(response, "prompt_feedback", None)
        reason = getattr(feedback, "block_reason", None)
        if not candidates and reason:
            raise ProviderError(f"prompt blocked: {reason}", provider=self.provider)
        text = ""
        if candidates:
            content = getattr(candidates[0], "content", None)
            text = "".join(
                part.text
                for part in (getattr(content, "parts", None) or [])
                if isinstance(getattr(part, "text", None), str)
                and not getattr(part, "thought", False)
            )
        model = getattr(response, "model_version", None) or self.model_name
        return LMResponse(text, str(model), gemini_usage(getattr(response, "usage_metadata", None)))

    @staticmethod
    async def _close_client(client: Any) -> None:
        await client.aio.aclose()
        client.close()


def to_gemini(messages: list[Message]) -> tuple[str | None, list[dict[str, Any]]]:
    """(system instruction, contents): roles `user`/`model`, consecutive turns merged."""
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    for message in messages:
        text = _text(message.get("content"))
        role = message["role"]
        if role in ("system", "developer"):
            if text:
                system.append(text)
            continue
        role = "model" if role == "assistant" else "user"
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].append({"text": text})
        else:
            contents.append({"role": role, "parts": [{"text": text}]})
    return ("\n\n".join(system) if system else None), contents


def _text(content: Any) -> str:
    """A message's text: its string, or the text of its string and mapping parts."""
    if isinstance(content, list):
        return "".join(
            part if isinstance(part, str) else str(part.get("text", ""))
            for part in content
            if isinstance(part, (str, Mapping))
        )
    return "" if content is None else str(content)


def gemini_usage(usage: Any) -> Usage:
    """Usage of one response: prompt tokens include cached ones; thinking counts as output."""
    if usage is None:
        return Usage()
    prompt = (getattr(usage, "prompt_token_count", None) or 0) + (
        getattr(usage, "tool_use_prompt_token_count", None) or 0
    )
    output = (getattr(usage, "candidates_token_count", None) or 0) + (
        getattr(usage, "thoughts_token_count", None) or 0
    )
    return Usage(
        input_tokens=prompt,
        output_tokens=output,
        cached_tokens=getattr(usage, "cached_content_token_count", None) or 0,
    )
