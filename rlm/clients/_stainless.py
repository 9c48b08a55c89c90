"""`StainlessLM`: what the clients over a Stainless-generated SDK (openai, anthropic) share.

Both SDKs take the same settings (key, base URL, default headers, timeout, an `http_client`)
and expose the same generic `post`, so one base class owns building the SDK client and choosing
how requests go out: directly, over rlm's own HTTP session with the URL and headers the SDK
would send (`rlm.clients._direct_http`, the default), or through the SDK for every request.
Subclasses name their SDK and build and read the request body.

The SDK is imported only when something needs it: importing one costs 0.3-0.8 s. A subclass
that can compute the SDK's request itself (`_static_request`, the openai client) never imports
it on the direct path; otherwise the SDK is imported when the client is built, so the first
completion does not wait for it. The direct path's own transport is loaded then too.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from rlm._optional import require
from rlm.aio import to_thread
from rlm.clients._configured import ConfiguredLM
from rlm.clients._http_errors import wants_direct_http
from rlm.errors import MissingDependencyError

if TYPE_CHECKING:
    from rlm.clients._direct_http import Route


class StainlessLM(ConfiguredLM):
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
        direct_http: bool | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_name, **kwargs)
        self._take_key(self.env_key, default=self.default_api_key)
        self.base_url = self.base_url or self.default_base_url
        self.client_kwargs = dict(client_kwargs or {})
        self.direct_http = wants_direct_http(
            self.provider, direct_http, self.client_kwargs, extra=self.extra
        )
        if self.direct_http:
            # Its transport (aiohttp, ~0.1 s to import) is loaded with the client, as an SDK
            # is, rather than by the first completion.
            importlib.import_module("rlm.clients._direct_http")
        if self.direct_http and self._static_request("/") is not None:  # needs no SDK
            if importlib.util.find_spec(self.sdk_module) is None:  # not imported, only found
                raise MissingDependencyError(self.sdk_module, self.extra)
        else:
            require(self.sdk_module, extra=self.extra)

    @property
    def _sdk(self) -> ModuleType:
        """The SDK module, imported on first use."""
        return require(self.sdk_module, extra=self.extra)

    @staticmethod
    def _error_body(body: Any) -> Any:
        """The `body` the SDK's status errors carry for a decoded error answer."""
        return body

    def _static_request(self, path: str) -> tuple[str, dict[str, str]] | None:
        """The (URL, headers) the SDK would send to `path`, computed without it; None when
        this client cannot tell (the SDK is then asked, see `_learn_route`)."""
        return None

    def _make_client(self) -> Any:
        """The connection for this loop: a `DirectConnection`, or the SDK client itself."""
        if self.direct_http:
            from rlm.clients._direct_http import DirectConnection

            return DirectConnection(
                self._learn_route, self.provider, self.timeout, self._error_body
            )
        from rlm.clients._http_pool import fast_http_client  # httpx: only once an SDK is in use

        return self._build_sdk_client(fast_http_client(self._sdk))

    async def _learn_route(self, path: str, body: Mapping[str, Any]) -> Route:
        """Where the direct path sends a POST of `body` to `path`, and with which headers."""
        from rlm.clients._direct_http import Route, record_route

        static = self._static_request(path)
        if static is not None:
            return Route.to(*static)
        sdk = await to_thread(lambda: self._sdk)  # an import takes long: not on the loop
        return await record_route(self._build_sdk_client, sdk, self.provider, path, body)

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
