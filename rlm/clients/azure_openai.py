"""Azure OpenAI over the official `openai` SDK's `AsyncAzureOpenAI`.

Same request and response shapes as OpenAI; the URL names a deployment and carries an
`api-version`. The deployment defaults to the model name.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from rlm.clients.openai import OpenAIClient
from rlm.errors import ConfigurationError

DEFAULT_API_VERSION = "2024-10-21"


class AzureOpenAIClient(OpenAIClient):
    """Azure OpenAI: `azure_endpoint` (or AZURE_OPENAI_ENDPOINT), `api_version` (or
    OPENAI_API_VERSION, default 2024-10-21), `azure_deployment` (default: `model_name`)."""

    provider: ClassVar[str] = "azure_openai"
    env_key: ClassVar[str | None] = "AZURE_OPENAI_API_KEY"
    sdk_client_class: ClassVar[str] = "AsyncAzureOpenAI"
    extra: ClassVar[str] = "azure"

    def __init__(
        self,
        model_name: str,
        *,
        azure_endpoint: str | None = None,
        api_version: str | None = None,
        azure_deployment: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_name, **kwargs)
        self.azure_endpoint = azure_endpoint or os.environ.get("AZURE_OPENAI_ENDPOINT")
        if not self.azure_endpoint and not self.base_url:
            raise ConfigurationError(
                "azure_openai: no endpoint. Pass azure_endpoint=... or set the "
                "AZURE_OPENAI_ENDPOINT environment variable."
            )
        self.api_version = (
            api_version or os.environ.get("OPENAI_API_VERSION") or DEFAULT_API_VERSION
        )
        self.azure_deployment = azure_deployment or model_name

    def _endpoint(self) -> dict[str, Any]:
        """The API version, and `base_url` or the endpoint and deployment."""
        if self.base_url:
            return {"api_version": self.api_version, "base_url": self.base_url}
        return {
            "api_version": self.api_version,
            "azure_endpoint": self.azure_endpoint,
            "azure_deployment": self.azure_deployment,
        }

    def _model_param(self) -> str:
        return self.azure_deployment
