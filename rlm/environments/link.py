"""How an environment reaches the LM service: a link with `submit(request) -> future`.

Two kinds, one contract (the future's result is the request's result dict; a failed request
raises `RemoteError` with the error's type name):
- `rlm.transport.inprocess.ServiceLink`: in this process, straight to the service on the rlm loop.
  What `RLM` gives every environment it builds, the host side of the sandboxes included.
- `TcpLink`: a TCP connection to an `LMHandler`, opened on the first request; for an
  environment built with a `HandlerEndpoint` (an address and a token), e.g. by hand.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from rlm.environments.base import Handler, HandlerEndpoint, LMLink
from rlm.errors import AuthenticationError, ProtocolError, SandboxError
from rlm.runtime.protocol import Connection

_CONNECT_ATTEMPTS = 5


def _connect_with_retries(endpoint: HandlerEndpoint) -> Connection:
    """A connection dropped before its hello was answered (the handler sheds idle connections
    when flooded) is tried again; a refused token is not."""
    for attempt in range(1, _CONNECT_ATTEMPTS + 1):
        try:
            return Connection.connect(endpoint.host, endpoint.port, endpoint.token)
        except (OSError, ProtocolError) as exc:
            refused = isinstance(exc, AuthenticationError) and "refused" in str(exc)
            if refused or attempt == _CONNECT_ATTEMPTS:
                raise
            time.sleep(0.1 * attempt)
    raise AssertionError("unreachable")


class TcpLink:
    """A link over TCP, connected on the first request (an env that never calls costs
    nothing) and again if the connection dropped. `endpoint` may be a function that finds the
    endpoint then (a reference-style `lm_handler_address`)."""

    def __init__(self, endpoint: HandlerEndpoint | Callable[[], HandlerEndpoint]) -> None:
        self._endpoint = endpoint
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._closed = False

    def _connection(self) -> Connection:
        with self._lock:
            if self._closed:
                raise SandboxError("the environment was cleaned up")
            if self._conn is None or self._conn.closed:
                if self._conn is not None:
                    self._conn.close()
                endpoint = self._endpoint
                if not isinstance(endpoint, HandlerEndpoint):
                    endpoint = endpoint()
                self._conn = _connect_with_retries(endpoint)
            return self._conn

    def submit(self, payload: Mapping[str, Any]) -> concurrent.futures.Future[dict[str, Any]]:
        return self._connection().submit(dict(payload))

    def endpoint(self) -> HandlerEndpoint:
        endpoint = self._endpoint
        return endpoint if isinstance(endpoint, HandlerEndpoint) else endpoint()

    def request(self, payload: Mapping[str, Any], timeout: float | None = None) -> dict[str, Any]:
        return self.submit(payload).result(timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def open_link(handler: Handler | None) -> LMLink | None:
    """The link for what an environment was given as its `handler`."""
    if handler is None or not isinstance(handler, HandlerEndpoint):
        return handler
    return TcpLink(handler)
