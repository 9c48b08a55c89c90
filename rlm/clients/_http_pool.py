"""An httpx transport that spreads concurrent requests over several small connection pools.

httpcore's pool re-examines every connection it holds whenever a request starts or ends (and
polls each idle socket while doing so), so its cost per request grows with the pool size: at
a few hundred concurrent requests one pool spends seconds of CPU on bookkeeping. Many small
pools keep that scan short. Sequential use touches one pool only, exactly like the default.

Imported only by the clients that build an httpx-based SDK client (httpx comes with the SDK).
"""

from __future__ import annotations

import importlib.util
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from rlm.clients._tls import KEEPALIVE_EXPIRY, shared_ssl_context

REQUESTS_PER_POOL = 16  # a pool grows past this only when no new pool may be added
MAX_POOLS = 64  # MAX_POOLS * REQUESTS_PER_POOL connections at most, like the SDKs' 1000


class _ReleasingStream(httpx.AsyncByteStream):
    """The response body; closing it returns the request's slot to its pool's count."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class PooledTransport(httpx.AsyncBaseTransport):
    """Routes each request to the least busy of up to `max_pools` small httpcore pools.

    A new pool is opened only when every open one already carries `requests_per_pool`
    requests, so connections are reused as much as with a single pool.
    """

    def __init__(
        self,
        *,
        requests_per_pool: int = REQUESTS_PER_POOL,
        max_pools: int = MAX_POOLS,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        verify: ssl.SSLContext | None = None,
        **transport_kwargs: Any,
    ) -> None:
        if requests_per_pool < 1 or max_pools < 1:
            raise ValueError("requests_per_pool and max_pools must be >= 1")
        self.requests_per_pool = requests_per_pool
        self.max_pools = max_pools
        self._limits = httpx.Limits(
            max_connections=requests_per_pool,
            max_keepalive_connections=requests_per_pool,
            keepalive_expiry=keepalive_expiry,
        )
        self._verify = verify
        self._kwargs = transport_kwargs
        self._pools: list[httpx.AsyncHTTPTransport] = []
        self._load: list[int] = []

    @property
    def pools(self) -> int:
        return len(self._pools)

    def _pick(self) -> int:
        """Index of the pool for the next request (opening one when all are busy)."""
        load = self._load
        best = min(range(len(load)), key=load.__getitem__) if load else -1
        if best < 0 or (load[best] >= self.requests_per_pool and len(load) < self.max_pools):
            if self._verify is None:
                self._verify = shared_ssl_context()
            self._pools.append(
                httpx.AsyncHTTPTransport(verify=self._verify, limits=self._limits, **self._kwargs)
            )
            self._load.append(0)
            best = len(load) - 1
        return best

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = self._pick()
        load = self._load  # aclose() swaps the list: a late release must not touch the new one
        load[index] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                load[index] -= 1

        try:
            response = await self._pools[index].handle_async_request(request)
        except BaseException:
            release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_ReleasingStream(response.stream, release),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        pools, self._pools, self._load = self._pools, [], []
        for pool in pools:
            await pool.aclose()


def fast_http_client(sdk: Any) -> Any:
    """The HTTP client for an OpenAI or Anthropic SDK client, chosen for concurrency.

    The SDK's own aiohttp-backed client when `httpx-aiohttp` is installed (about a third of
    httpx's CPU per request); otherwise its default httpx client over a `PooledTransport`,
    which keeps httpcore's per-request pool scan short. Both share one SSL context per process.
    Pass `client_kwargs={"http_client": ...}` to choose another.
    """
    ssl_context = shared_ssl_context()
    aiohttp_client = getattr(sdk, "DefaultAioHttpClient", None)
    if aiohttp_client is not None and importlib.util.find_spec("httpx_aiohttp") is not None:
        return aiohttp_client(verify=ssl_context)
    transport = PooledTransport(verify=ssl_context)
    return sdk.DefaultAsyncHttpxClient(transport=transport, verify=ssl_context)
