"""`ServiceLink`: the in-process transport, what every environment `RLM` builds holds.

A request goes from the environment's thread (a cell of the local REPL, the reader thread
of a sandbox's host side) straight to `LMService.serve` on the rlm loop: no socket, no
token, no encoding. Its future behaves as a TCP `Connection`'s does, so environments cannot
tell the two apart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Mapping
from typing import Any

from rlm.aio import get_loop
from rlm.environments.base import HandlerEndpoint
from rlm.errors import RemoteError
from rlm.lm_service.service import LMService, Session


class ServiceLink:
    """An environment's line to the service, in this process: `submit` hands a request to
    `LMService.serve` on the rlm loop and returns a future of its result, which fails with a
    `RemoteError` carrying the error's type, exactly as a TCP `Connection`'s does.

    `rebind` points the line at a new session: a persistent environment keeps its line across
    completions while each completion has a session of its own. At most `max_in_flight`
    requests are served at once: the next `submit` waits for a slot, which holds back the
    sandbox's reader (or the cell) as a full TCP connection would.
    """

    def __init__(self, service: LMService, session: Session, max_in_flight: int = 256) -> None:
        self.service = service
        self.session = session
        self._slots = threading.BoundedSemaphore(max_in_flight)

    def rebind(self, session: Session) -> None:
        self.session = session

    def submit(self, payload: Mapping[str, Any]) -> concurrent.futures.Future[dict[str, Any]]:
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()  # requests cannot be withdrawn once sent
        self._slots.acquire()
        try:
            served = asyncio.run_coroutine_threadsafe(
                self.service.serve(self.session, payload), get_loop()
            )
        except BaseException:
            self._slots.release()
            raise

        def settle(done: concurrent.futures.Future[dict[str, Any]]) -> None:
            self._slots.release()
            if done.cancelled():
                future.set_exception(RemoteError("CancellationError", "request cancelled"))
                return
            try:
                reply = done.result()
            except BaseException as exc:  # the loop is shutting down
                future.set_exception(RemoteError(type(exc).__name__, str(exc)))
                return
            error = reply.get("error")
            if error is not None:
                future.set_exception(RemoteError(error["type"], error["message"]))
            else:
                future.set_result(reply["result"])

        served.add_done_callback(settle)
        return future

    def request(self, payload: Mapping[str, Any], timeout: float | None = None) -> dict[str, Any]:
        return self.submit(payload).result(timeout)

    def endpoint(self) -> HandlerEndpoint:
        """A TCP endpoint (address and token) for the same session, for another process."""
        from rlm.transport.tcp import tcp_transport

        return tcp_transport(self.service).endpoint(self.session)

    def close(self) -> None:
        """Nothing to release: the session is its owner's to close."""

    @property
    def closed(self) -> bool:
        return self.session.closed
