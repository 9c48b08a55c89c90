"""The IPython environment's channel to LMHandlers: one protocol, up to two endpoints.

Through `RLM`, every request goes to the run's LMHandler. An `IPythonREPL` built directly with
the reference's constructor may also carry a `subcall_fn` and callable `custom_tools`; those are
served by a private LMHandler of its own (`_ipython_hub`), so `rlm_query` and tool calls are
still protocol requests, recorded host-side, while `llm_query` goes to the handler the user gave.
This module is also imported inside the kernel subprocess: standard library and rlm.runtime only.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping
from typing import Any

from rlm.runtime.protocol import LazyConnection


class RoutedChannel:
    """Sends each request to the endpoint that serves its type (see the module docstring)."""

    def __init__(
        self,
        primary: LazyConnection | None,
        hub: LazyConnection | None = None,
        hub_types: frozenset[str] = frozenset(),
    ) -> None:
        self._primary = primary
        self._hub = hub
        self._hub_types = hub_types

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RoutedChannel:
        """`{"primary": {"host", "port", "token"} | None, "hub": ... | None, "hub_types": [...]}`"""

        def endpoint(spec: Any) -> LazyConnection | None:
            if not spec:
                return None
            address = (str(spec["host"]), int(spec["port"]), str(spec["token"]))
            return LazyConnection(lambda: address)

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
