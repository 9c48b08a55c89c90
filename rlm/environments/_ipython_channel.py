"""The IPython environment's channel to LMHandlers: one protocol, up to two endpoints.

Through `RLM`, every request goes to the run's LMHandler. An `IPythonREPL` built directly with
the reference's constructor may also carry a `subcall_fn` and callable `custom_tools`; those are
served by a private LMHandler of its own (`_ipython_hub`), so `rlm_query` and tool calls are
still protocol requests, recorded host-side, while `llm_query` goes to the handler the user gave.
This module is also imported inside the kernel subprocess: standard library and rlm.runtime only.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Mapping
from typing import Any

from rlm.runtime.protocol import Connection


class _Lazy:
    """Connects on the first request, so an endpoint nobody calls costs nothing."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self._address = (host, port, token)
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._closed = False

    def submit(self, payload: dict[str, Any]) -> concurrent.futures.Future[dict[str, Any]]:
        with self._lock:
            if self._closed:
                raise ConnectionError("the REPL was cleaned up")
            if self._conn is None or self._conn.closed:
                self._conn = Connection.connect(*self._address)
            conn = self._conn
        return conn.submit(payload)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class RoutedChannel:
    """Sends each request to the endpoint that serves its type (see the module docstring)."""

    def __init__(
        self,
        primary: _Lazy | None,
        hub: _Lazy | None = None,
        hub_types: frozenset[str] = frozenset(),
    ) -> None:
        self._primary = primary
        self._hub = hub
        self._hub_types = hub_types

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RoutedChannel:
        """`{"primary": {"host", "port", "token"} | None, "hub": ... | None, "hub_types": [...]}`"""

        def endpoint(spec: Any) -> _Lazy | None:
            if not spec:
                return None
            return _Lazy(str(spec["host"]), int(spec["port"]), str(spec["token"]))

        return cls(
            endpoint(config.get("primary")),
            endpoint(config.get("hub")),
            frozenset(config.get("hub_types") or ()),
        )

    def submit(self, payload: dict[str, Any]) -> concurrent.futures.Future[dict[str, Any]]:
        target = self._hub if payload.get("type") in self._hub_types else self._primary
        if target is None:
            target = self._hub if self._primary is None else None
        if target is None:
            raise ConnectionError(
                "no LM handler is connected to this REPL (pass lm_handler_address, or run it "
                "through RLM(environment='ipython'))"
            )
        return target.submit(payload)

    def close(self) -> None:
        for endpoint in (self._primary, self._hub):
            if endpoint is not None:
                endpoint.close()
