"""Sending exactly what a Stainless-generated SDK (openai, anthropic) would send, without its
per-request work.

Why: those SDKs rebuild every request from scratch (copy the options, merge and encode the
headers, parse and join the URL, build an httpx request and pass it through httpx to the
transport). That is about 1.1 ms of CPU per call, against 0.35 ms for the HTTP exchange itself:
most of a 256-way `llm_query_batched` against a 100 ms provider (B2 in BENCHMARKS.md).

How: the SDK still decides what goes on the wire. For each endpoint and model the client
learns a `Route` once: the URL and headers the SDK would send (Azure's deployment path and
api-version, the auth header, the SDK's version headers, the user's default headers). Either
the client computes it without the SDK (`rlm.clients._sdk_request`, for the settings modelled
there) or `record_route` has a twin of the client's SDK client (same arguments, an httpx client
whose transport records instead of sending) make the first request through its public `post`.
Every request's JSON body then goes out over one aiohttp session. Concurrent first requests
wait for one learning, not one each. Error answers become `ProviderError`s through the same
helper that translates the SDK's exceptions, so a caller cannot tell the two paths apart by
what they raise.

Only for clients whose SDK client rlm configures from static settings: credentials that change
per request (a token provider) or a user's own `http_client` need the SDK on every request.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import ssl
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import aiohttp

from rlm.aio import to_thread
from rlm.clients._http_errors import http_status_error, transport_error
from rlm.clients._tls import KEEPALIVE_EXPIRY, shared_ssl_context
from rlm.errors import ConfigurationError, ProviderError

# Set by aiohttp for each request (length, host, its own decoders) or tied to one connection.
_PER_REQUEST_HEADERS = frozenset(
    {"content-length", "host", "accept-encoding", "connection", "transfer-encoding"}
)


@dataclass(frozen=True)
class Route:
    """Where one endpoint's requests go and the headers they carry, as the SDK builds them."""

    url: str
    headers: Mapping[str, str]
    proxy: str | None  # from HTTP(S)_PROXY / NO_PROXY when the route was learnt

    @classmethod
    def to(cls, url: str, headers: Mapping[str, str]) -> Route:
        """The route to `url` with `headers` minus those aiohttp sets per request."""
        kept = {k: v for k, v in headers.items() if k.lower() not in _PER_REQUEST_HEADERS}
        return cls(url, kept, env_proxy(url))


LearnRoute = Callable[[str, Mapping[str, Any]], Awaitable[Route]]


def _recording_client(sdk: ModuleType) -> tuple[Any, list[Any]]:
    """An httpx client whose transport keeps each request and answers `{}`, with no network.

    Built from the httpx package the SDK is built on (newer anthropic releases use the
    `httpx2` fork, whose classes the SDK requires): the one its `DefaultAsyncHttpxClient`
    subclasses.
    """
    roots = {cls.__module__.partition(".")[0] for cls in sdk.DefaultAsyncHttpxClient.__mro__}
    package = importlib.import_module("httpx2" if "httpx2" in roots else "httpx")
    requests: list[Any] = []

    class Recorder(package.AsyncBaseTransport):  # type: ignore[name-defined]
        async def handle_async_request(self, request: Any) -> Any:
            requests.append(request)
            return package.Response(200, json={}, request=request)

    # trust_env=False: an env proxy would mount its own transport in place of the recorder
    return package.AsyncClient(transport=Recorder(), trust_env=False), requests


def _unchanged(body: Any) -> Any:
    return body


class DirectConnection:
    """One aiohttp session on the running event loop, and the routes learnt for it.

    Built by a client on the loop of its first call (see `BaseLM._sdk_client`) and closed with
    the client. `learn_route(path, body)` returns the route of a POST of `body` to `path`
    (called once per path and model); `error_body` maps a decoded error answer to the `body`
    the SDK's exception would carry (openai keeps the inner `error` object, anthropic the
    whole document).
    """

    def __init__(
        self,
        learn_route: LearnRoute,
        provider: str,
        timeout: float | None,
        error_body: Callable[[Any], Any] = _unchanged,
    ) -> None:
        self.provider = provider
        self._learn_route = learn_route
        self._error_body = error_body
        self._routes: dict[tuple[str, str], Route] = {}
        self._learning: dict[tuple[str, str], asyncio.Future[Route]] = {}
        self._ssl: ssl.SSLContext | bool = True  # the shared context once a route is https
        connector = aiohttp.TCPConnector(
            limit=0,  # the client's adaptive limiter bounds requests in flight
            keepalive_timeout=KEEPALIVE_EXPIRY,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=timeout, sock_connect=timeout, sock_read=timeout
            ),
            trust_env=False,  # reads the environment and ~/.netrc per request; see env_proxy
        )

    async def post_json(self, path: str, body: Mapping[str, Any]) -> Any:
        """POST `body` as JSON to `path` and return the decoded JSON answer.

        Raises `ProviderError` for an error answer or a failed exchange (retryable when no
        answer came), `ConfigurationError` for a body that is not JSON.
        """
        try:
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"{self.provider}: the request is not JSON: {exc}") from exc
        key = (path, str(body.get("model")))
        route = self._routes.get(key) or await self._route(key, path, body)
        try:
            async with self._session.post(
                route.url,
                data=data.encode(),
                headers=route.headers,
                proxy=route.proxy,
                ssl=self._ssl,
                allow_redirects=False,  # a redirect would carry the key to wherever it points
            ) as response:
                raw = await response.read()
                status = response.status
                headers = response.headers
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise transport_error(self.provider, exc) from exc
        if 300 <= status < 400:
            raise ProviderError(
                f"{route.url} redirected ({status}) to {headers.get('location')!r}; requests "
                "carrying the API key do not follow redirects: set base_url to the final address",
                provider=self.provider,
                status_code=status,
            )
        if status >= 400:
            decoded = _decode(raw)
            raise http_status_error(
                self.provider,
                status,
                self._error_body(decoded),
                headers=headers,
                fallback=f"Error code: {status} - {decoded}",
            )
        try:
            return json.loads(raw)
        except ValueError:
            raise ProviderError(
                f"expected a JSON answer, got {raw[:200]!r}", provider=self.provider
            ) from None

    async def _route(self, key: tuple[str, str], path: str, body: Mapping[str, Any]) -> Route:
        """The route for `key`, learnt once however many requests ask at the same time.

        A failed learning is not kept: the next request tries again.
        """
        learning = self._learning.get(key)
        if learning is None or learning.done():  # done here: it failed, try again
            learning = self._learning[key] = asyncio.ensure_future(self._learn(key, path, body))
        try:
            return await asyncio.shield(learning)  # one waiter cancelled: the others still wait
        finally:
            if learning.done() and self._learning.get(key) is learning:
                del self._learning[key]

    async def _learn(self, key: tuple[str, str], path: str, body: Mapping[str, Any]) -> Route:
        route = await self._learn_route(path, body)
        if route.url.lower().startswith("https:") and self._ssl is True:
            self._ssl = await to_thread(shared_ssl_context)  # reads the CA bundle: off the loop
        self._routes[key] = route
        return route

    async def close(self) -> None:
        await self._session.close()


async def record_route(
    build_sdk_client: Callable[[Any], Any],
    sdk: ModuleType,
    provider: str,
    path: str,
    body: Mapping[str, Any],
) -> Route:
    """The URL and headers the SDK (module `sdk`) sends for a POST of `body` to `path`, from
    a request it makes through `build_sdk_client(http_client)` and that never leaves."""
    http_client, requests = _recording_client(sdk)
    try:
        async with http_client:
            await build_sdk_client(http_client).post(path, body=body, cast_to=object)
    except Exception as exc:  # the SDK refused its own settings (no key, bad URL, ...)
        raise ConfigurationError(
            f"{provider}: the SDK could not build a request: {type(exc).__name__}: {exc}"
        ) from exc
    if len(requests) != 1:
        raise ConfigurationError(
            f"{provider}: the SDK made {len(requests)} requests for one POST {path}"
        )
    return Route.to(str(requests[0].url), dict(requests[0].headers.items()))


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTP_PROXY, HTTPS_PROXY, NO_PROXY), as httpx
    and the SDKs honour it; read once per route rather than on every request."""
    proxies = urllib.request.getproxies_environment()
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    return proxies.get(parts.scheme) or proxies.get("all")


def _decode(raw: bytes) -> Any:
    """An error answer's body: its JSON when it is JSON, else its text."""
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text
