"""Anthropic Messages over the official `anthropic` SDK, with prompt caching on by default.

Requests go out as the OpenAI client's do: by default directly, with the URL and headers the SDK
built for the first request (`rlm.clients._direct_http`); with `direct_http=False`, or
`client_kwargs` that need the SDK on every request, through `messages.create`.

System messages go to the top-level `system`; consecutive turns of one role are merged (the
API wants alternation). With `prompt_caching` (the default) two `cache_control` breakpoints mark
the stable prefix: the last system block, and the last block of the last message, which rolls
forward as the append-only root history grows, so each request reads what the previous wrote.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

from rlm.clients._fields import count, field
from rlm.clients._http_errors import sdk_error
from rlm.clients._stainless import StainlessLM
from rlm.core.types import LMResponse, Message, Usage
from rlm.errors import ConfigurationError, ProviderError

MESSAGES_PATH = "/v1/messages"
DEFAULT_MAX_TOKENS = 4096
MAX_CACHE_BREAKPOINTS = 4
EPHEMERAL: dict[str, str] = {"type": "ephemeral"}
# OpenAI-only sampling names that Anthropic would reject; dropped so one `sampling_args`
# dict can serve several backends. Streaming is not used: a call returns one whole message.
_UNSUPPORTED = frozenset(
    {"seed", "prompt_cache_key", "n", "presence_penalty", "frequency_penalty", "stream"}
)
_UNCACHEABLE_BLOCKS = frozenset({"thinking", "redacted_thinking"})


class AnthropicClient(StainlessLM):
    """Claude over the Messages API.

    `sampling_args`: `max_tokens` (default 4096; the API requires it), `stop` (sent as
    `stop_sequences`), `temperature`, `top_p`, `top_k`, `thinking`, ...; names this SDK version
    does not know are sent in `extra_body`. `prompt_caching` (default on) adds the cache
    breakpoints; `api_key`, `base_url`, `default_headers`, `client_kwargs` and `direct_http` are
    `StainlessLM`'s.
    """

    provider: ClassVar[str] = "anthropic"
    sdk_module: ClassVar[str] = "anthropic"
    sdk_client_class: ClassVar[str] = "AsyncAnthropic"
    extra: ClassVar[str] = "anthropic"
    env_key: ClassVar[str | None] = "ANTHROPIC_API_KEY"

    def __init__(
        self,
        model_name: str,
        *,
        prompt_caching: bool = True,
        max_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        """`max_tokens` here (the reference's spelling) is the default for `sampling_args`."""
        super().__init__(model_name, **kwargs)
        if max_tokens is not None:
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
                raise ConfigurationError(
                    f"anthropic: max_tokens must be an int >= 1, got {max_tokens!r}"
                )
            self.sampling_args.setdefault("max_tokens", max_tokens)
        self.prompt_caching = prompt_caching
        self._create_params: frozenset[str] = frozenset()

    def _make_client(self) -> Any:
        client = super()._make_client()
        if not self.direct_http:  # which names `messages.create` takes, the rest: extra_body
            self._create_params = frozenset(inspect.signature(client.messages.create).parameters)
        return client

    def max_output_tokens(self, sampling: Mapping[str, Any]) -> int | None:
        """The API requires a cap, so a call always has one: this client's default when unset."""
        return super().max_output_tokens(sampling) or DEFAULT_MAX_TOKENS

    def _request(self, messages: list[Message], sampling: Mapping[str, Any]) -> dict[str, Any]:
        system, turns = to_anthropic(messages, caching=self.prompt_caching)
        args = {k: v for k, v in sampling.items() if k not in _UNSUPPORTED}
        if "max_completion_tokens" in args:
            args.setdefault("max_tokens", args.pop("max_completion_tokens"))
        args.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
        if "stop" in args:
            stop = args.pop("stop")
            if stop:
                args.setdefault("stop_sequences", [stop] if isinstance(stop, str) else list(stop))
        extra_body = dict(args.pop("extra_body", None) or {})
        request: dict[str, Any] = {"model": self.model_name, "messages": turns}
        if system:
            request["system"] = system
        for name, value in args.items():
            if name in self._create_params and name not in ("model", "messages"):
                request[name] = value
            else:
                extra_body[name] = value
        if extra_body:
            request["extra_body"] = extra_body
        return request

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        connection = self._sdk_client()
        request = self._request(messages, sampling)
        if self.direct_http:
            body = {name: value for name, value in request.items() if name != "extra_body"}
            body.update(request.get("extra_body") or {})  # where the SDK would put it
            response = await connection.post_json(MESSAGES_PATH, body)
            if not isinstance(response, Mapping):
                raise ProviderError(
                    f"expected a JSON message, got {str(response)[:200]!r}", provider=self.provider
                )
        else:
            response = await self._create(connection, request)
        text = "".join(
            str(field(block, "text") or "")
            for block in (field(response, "content") or [])
            if field(block, "type") == "text"
        )
        model = field(response, "model") or self.model_name
        return LMResponse(text, str(model), anthropic_usage(field(response, "usage")))

    async def _create(self, client: Any, request: dict[str, Any]) -> Any:
        try:
            return await client.messages.create(**request)
        except Exception as exc:
            error = sdk_error(
                self.provider,
                exc,
                status_error_cls=self._sdk.APIStatusError,
                connection_error_cls=self._sdk.APIConnectionError,
                base_cls=self._sdk.AnthropicError,
            )
            if error is None:
                raise
            raise error from exc


def to_anthropic(
    messages: list[Message], *, caching: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, alternating turns) for the Messages API, breakpoints added if `caching`.

    The caller's messages are never mutated: blocks are copied before a marker is added.
    """
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        blocks = _blocks(message.get("content"))
        if not blocks:
            continue
        role = message["role"]
        if role in ("system", "developer"):
            system.extend(blocks)
            continue
        role = "assistant" if role == "assistant" else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if caching:
        budget = MAX_CACHE_BREAKPOINTS - sum(
            1
            for block in [*system, *(b for t in turns for b in t["content"])]
            if "cache_control" in block
        )
        targets = [system[-1]] if system else []
        if turns:
            targets.append(turns[-1]["content"][-1])
        for block in targets:
            if budget <= 0:
                break
            if "cache_control" not in block and block.get("type") not in _UNCACHEABLE_BLOCKS:
                block["cache_control"] = dict(EPHEMERAL)
                budget -= 1
    return system, turns


def _blocks(content: Any) -> list[dict[str, Any]]:
    """Content as a list of fresh block dicts; empty text is dropped (the API rejects it)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list):
        out: list[dict[str, Any]] = []
        for part in content:
            if isinstance(part, str):
                if part:
                    out.append({"type": "text", "text": part})
            elif isinstance(part, Mapping):
                if part.get("type") == "text" and not part.get("text"):
                    continue
                out.append(dict(part))
        return out
    return [{"type": "text", "text": str(content)}]


def anthropic_usage(usage: Any) -> Usage:
    """Usage of one message; input counts every prompt token (fresh + cache read + written)."""
    if usage is None:
        return Usage()
    fresh = count(field(usage, "input_tokens"))
    read = count(field(usage, "cache_read_input_tokens"))
    written = count(field(usage, "cache_creation_input_tokens"))
    return Usage(
        input_tokens=fresh + read + written,
        output_tokens=count(field(usage, "output_tokens")),
        cached_tokens=read,
        cache_write_tokens=written,
    )
