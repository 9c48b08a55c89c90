"""`StainlessLM`: what the clients over a Stainless-generated SDK (openai, anthropic) share.

Both SDKs take the same settings (key, base URL, default headers, timeout, an `http_client`)
and expose the same generic `post`, so one base class owns building the SDK client and choosing
how requests go out: directly, replaying the request the SDK built once
(`rlm.clients._direct_http`, the default), or through the SDK for every request. Subclasses
name their SDK and build and read the request body.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from rlm._optional import require
from rlm.clients._http_errors import check_options, resolve_api_key, wants_direct_http
from rlm.clients.base import BaseLM
from rlm.errors import ConfigurationError


class StainlessLM(BaseLM):
    """A client over a Stainless SDK; `direct_http` as in `rlm.clients._direct_http`."""

    sdk_module: ClassVar[str]  # the SDK's import name
    sdk_client_class: ClassVar[str]  # its async client class
    extra: ClassVar[str]  # the pip extra that installs it
    env_key: ClassVar[str | None]  # where the key is read from when none is passed
    default_api_key: ClassVar[str | None] = None
    default_base_url: ClassVar[str | None] = None

    def __init__(
        self,
        model_name: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        default_headers: Mapping[str, str] | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
        direct_http: bool | None = None,
        **options: Any,
    ) -> None:
        check_options(self.provider, options)
        super().__init__(model_name, **options)
        self._sdk = require(self.sdk_module, extra=self.extra)
        try:
            self._api_key = resolve_api_key(
                self.provider, api_key, self.env_key, default=self.default_api_key
            )
        except ConfigurationError as exc:  # raised at the first call (BaseLM._sdk_client)
            self._api_key, self._key_error = None, exc
        self.base_url = base_url or self.default_base_url
        self.default_headers = dict(default_headers or {})
        self.client_kwargs = dict(client_kwargs or {})
        self.direct_http = wants_direct_http(
            self.provider, direct_http, self.client_kwargs, extra=self.extra
        )

    @staticmethod
    def _error_body(body: Any) -> Any:
        """The `body` the SDK's status errors carry for a decoded error answer."""
        return body

    def _make_client(self) -> Any:
        """The connection for this loop: a `DirectConnection`, or the SDK client itself."""
        if self.direct_http:
            from rlm.clients._direct_http import DirectConnection

            return DirectConnection(
                self._build_sdk_client, self._sdk, self.provider, self.timeout, self._error_body
            )
        from rlm.clients._http_pool import fast_http_client  # httpx: only once an SDK is in use

        return self._build_sdk_client(fast_http_client(self._sdk))

    def _endpoint(self) -> dict[str, Any]:
        """Where the SDK client sends: `base_url` when one is set."""
        return {"base_url": self.base_url} if self.base_url else {}

    def _build_sdk_client(self, http_client: Any) -> Any:
        """The SDK's async client with this client's settings, sending over `http_client`."""
        kwargs: dict[str, Any] = {
            "api_key": self._api_key,
            "timeout": self.timeout,
            "max_retries": 0,  # BaseLM retries, its adaptive limiter seeing every 429
            "http_client": http_client,
            **self.client_kwargs,
            **self._endpoint(),
        }
        if self.default_headers:
            kwargs["default_headers"] = self.default_headers
        return getattr(self._sdk, self.sdk_client_class)(**kwargs)
