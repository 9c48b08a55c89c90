"""How an environment reaches the LM service: a link with `submit(request) -> future`.

Two kinds, one contract (the future's result is the request's result dict; a failed request
raises `RemoteError` with the error's type name):
- `rlm.transport.inprocess.ServiceLink`: in this process, straight to the service on the rlm
  loop. What `RLM` gives every environment it builds, the host side of the sandboxes included.
- `TcpLink`: a TCP connection to an `LMHandler`, opened on the first request; for an
  environment built with a `HandlerEndpoint` (an address and a token), e.g. by hand.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Mapping
from typing import Any

from rlm.environments.base import Handler, HandlerEndpoint, LMLink
from rlm.runtime.protocol import LazyConnection


class TcpLink:
    """A link over TCP, connected on the first request (an env that never calls costs
    nothing) and again if the connection dropped. `endpoint` may be a function that finds the
    endpoint then (a reference-style `lm_handler_address`)."""

    def __init__(self, endpoint: HandlerEndpoint | Callable[[], HandlerEndpoint]) -> None:
        self._endpoint = endpoint
        self._conn = LazyConnection(self._address)

    def _address(self) -> tuple[str, int, str]:
        endpoint = self.endpoint()
        return endpoint.host, endpoint.port, endpoint.token

    def endpoint(self) -> HandlerEndpoint:
        endpoint = self._endpoint
        return endpoint if isinstance(endpoint, HandlerEndpoint) else endpoint()

    def submit(self, payload: Mapping[str, Any]) -> concurrent.futures.Future[dict[str, Any]]:
        return self._conn.submit(dict(payload))

    def close(self) -> None:
        self._conn.close()


def open_link(handler: Handler | None) -> LMLink | None:
    """The link for what an environment was given as its `handler`."""
    if handler is None or not isinstance(handler, HandlerEndpoint):
        return handler
    return TcpLink(handler)
