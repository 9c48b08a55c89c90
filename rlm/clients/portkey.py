"""Portkey's AI gateway through the official `portkey-ai` SDK (`AsyncPortkey`).

Portkey speaks the OpenAI chat-completions shape (its SDK wraps a vendored `openai`), so the
response and errors translate as OpenAI's do. The gateway routes by `virtual_key`, `provider`
or `config`; `base_url` points the SDK at a self-hosted gateway (then no Portkey key is needed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from rlm._optional import require
from rlm.clients._configured import ConfiguredLM
from rlm.clients._http_errors import openai_style_error
from rlm.clients.openai import chat_completion_response
from rlm.core.types import LMResponse, Message


class PortkeyClient(ConfiguredLM):
    """Portkey. Key: `api_key`, else PORTKEY_API_KEY (required for the hosted gateway).

    `portkey_kwargs` go to `AsyncPortkey` as is (`trace_id`, `metadata`, ...). Sampling names
    the SDK does not list travel in the request body, as in the OpenAI client.
    """

    provider: ClassVar[str] = "portkey"

    def __init__(
        self,
        model_name: str,
        *,
        config: str | Mapping[str, Any] | None = None,
        virtual_key: str | None = None,
        provider: str | None = None,
        portkey_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """`api_key`, `base_url`, `default_headers` and the client options: `ConfiguredLM`'s."""
        super().__init__(model_name, **kwargs)
        self._portkey = require("portkey_ai", extra="portkey", package="portkey-ai")
        self._openai = require("portkey_ai._vendor.openai", extra="portkey", package="portkey-ai")
        self._take_key(None if self.base_url else "PORTKEY_API_KEY")
        self.virtual_key = virtual_key
        self.gateway_provider = provider
        self.config = config
        self.portkey_kwargs = dict(portkey_kwargs or {})

    def _make_client(self) -> Any:
        kwargs: dict[str, Any] = dict(self.portkey_kwargs)
        for name, value in (
            ("api_key", self._api_key),
            ("base_url", self.base_url),
            ("virtual_key", self.virtual_key),
            ("provider", self.gateway_provider),
            ("config", self.config),
        ):
            if value is not None:
                kwargs[name] = value
        client = self._portkey.AsyncPortkey(**kwargs)
        # AsyncPortkey builds its OpenAI client with max_retries=1; BaseLM does the retrying.
        client.openai_client.max_retries = 0
        return client

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        client = self._sdk_client()
        args = dict(sampling)
        args.pop("stream", None)  # a call returns one whole completion
        if self.default_headers:
            args["extra_headers"] = {**self.default_headers, **(args.get("extra_headers") or {})}
        args.setdefault("timeout", self.timeout)
        try:
            response = await client.chat.completions.create(
                model=self.model_name, messages=messages, **args
            )
        except Exception as exc:
            error = openai_style_error(self.provider, exc, self._openai)
            if error is None:
                raise
            raise error from exc
        return chat_completion_response(response, self.model_name, provider=self.provider)

    @staticmethod
    async def _close_client(client: Any) -> None:
        await client.openai_client.close()
        await client.close()
