"""Azure OpenAI over the official `openai` SDK's `AsyncAzureOpenAI`.

Same request and response shapes as OpenAI; the URL names a deployment and carries an
`api-version`. The deployment defaults to the model name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

from rlm.clients.openai import OpenAIClient
from rlm.errors import ConfigurationError

DEFAULT_API_VERSION = "2024-10-21"


class AzureOpenAIClient(OpenAIClient):
    """Azure OpenAI: `azure_endpoint` (or AZURE_OPENAI_ENDPOINT), `api_version` (or
    OPENAI_API_VERSION, default 2024-10-21), `azure_deployment` (default: `model_name`)."""

    provider: ClassVar[str] = "azure_openai"
    env_key: ClassVar[str | None] = "AZURE_OPENAI_API_KEY"
    extra: ClassVar[str] = "azure"

    def __init__(
        self,
        model_name: str,
        *,
        api_key: str | None = None,
        azure_endpoint: str | None = None,
        api_version: str | None = None,
        azure_deployment: str | None = None,
        base_url: str | None = None,
        default_headers: Mapping[str, str] | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            model_name,
            api_key=api_key,
            base_url=base_url,
            default_headers=default_headers,
            client_kwargs=client_kwargs,
            **options,
        )
        self.azure_endpoint = azure_endpoint or os.environ.get("AZURE_OPENAI_ENDPOINT")
        if not self.azure_endpoint and not base_url:
            raise ConfigurationError(
                "azure_openai: no endpoint. Pass azure_endpoint=... or set the "
                "AZURE_OPENAI_ENDPOINT environment variable."
            )
        self.api_version = (
            api_version or os.environ.get("OPENAI_API_VERSION") or DEFAULT_API_VERSION
        )
        self.azure_deployment = azure_deployment or model_name

    def _build_sdk_client(self, http_client: Any) -> Any:
        kwargs: dict[str, Any] = {
            "api_key": self._api_key,
            "api_version": self.api_version,
            "timeout": self.timeout,
            "max_retries": 0,
            "http_client": http_client,
            **self.client_kwargs,
        }
        if self.base_url:
            kwargs["base_url"] = self.base_url
        else:
            kwargs["azure_endpoint"] = self.azure_endpoint
            kwargs["azure_deployment"] = self.azure_deployment
        if self.default_headers:
            kwargs["default_headers"] = self.default_headers
        return self._sdk.AsyncAzureOpenAI(**kwargs)

    def _model_param(self) -> str:
        return self.azure_deployment
