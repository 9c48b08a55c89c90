"""`ServiceLink`: the in-process transport, what every environment `RLM` builds holds.

A request goes from the environment's thread (a cell of the local REPL, the reader thread
of a sandbox's host side) straight to `LMService.serve` on the rlm loop: no socket, no
token, no encoding. Its future behaves as a TCP `Connection`'s does (a result dict, or a
`RemoteError` naming the error's type; bounded in flight; completed off the event loop), so
environments cannot tell the two apart.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from rlm.aio import get_loop
from rlm.environments.base import HandlerEndpoint
from rlm.errors import RemoteError
from rlm.lm_service.service import LMService, Session

if TYPE_CHECKING:
    from rlm.transport.tcp import LMHandler

_IDLE = 2.0  # seconds a delivery thread waits for more answers before it ends
_MAX_DELIVERERS = 8  # delivery threads of one link at most


class ServiceLink:
    """An environment's line to the service, in this process: `submit` hands a request to
    `LMService.serve` on the rlm loop and returns a future of its result, which fails with a
    `RemoteError` carrying the error's type, exactly as a TCP `Connection`'s does.

    `rebind` points the line at a new session: a persistent environment keeps its line across
    completions while each completion has a session of its own. At most `max_in_flight`
    requests are in flight at once, served or waiting to be delivered: the next `submit` waits
    for a slot, which holds back the sandbox's reader (or the cell) as a full TCP connection
    would. Answers are delivered from a
    thread of the link's own, never from the rlm loop: whatever runs when a future completes
    (a relay writing to a sandbox that does not read, a cell's callback) holds up this link
    only, not every run of the process; and a callback that waits for another answer of the
    same link (a cell's `llm_query` inside a done-callback) does not wait for itself.
    """

    def __init__(self, service: LMService, session: Session, max_in_flight: int = 256) -> None:
        self.service = service
        self.session = session
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._ready: collections.deque[tuple[concurrent.futures.Future[dict[str, Any]], Any]]
        self._ready = collections.deque()
        self._ready_lock = threading.Condition()
        self._deliverers = 0  # delivery threads alive
        self._idle = 0  # of which waiting for an answer

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
            outcome: Any
            if done.cancelled():
                outcome = RemoteError("CancellationError", "request cancelled")
            else:
                try:
                    reply = done.result()
                except BaseException as exc:  # the loop is shutting down
                    outcome = RemoteError(type(exc).__name__, str(exc))
                else:
                    error = reply.get("error")
                    outcome = (
                        reply["result"]
                        if error is None
                        else RemoteError(error["type"], error["message"])
                    )
            self._deliver(future, outcome)

        served.add_done_callback(settle)
        return future

    def _deliver(self, future: concurrent.futures.Future[dict[str, Any]], outcome: Any) -> None:
        with self._ready_lock:
            self._ready.append((future, outcome))
            if self._idle:
                self._ready_lock.notify()
                return
            if self._deliverers >= _MAX_DELIVERERS:
                return  # one of the busy ones takes it when it is free
            self._deliverers += 1
        threading.Thread(target=self._delivery, name="rlm-link-delivery", daemon=True).start()

    def _delivery(self) -> None:
        """Complete futures; the thread ends after a while with nothing to do. An answer that
        arrives while every delivery thread is busy (in a callback that waits for another
        answer of this link, say) gets a thread of its own, up to `_MAX_DELIVERERS`."""
        while True:
            with self._ready_lock:
                if not self._ready:
                    self._idle += 1
                    self._ready_lock.wait(_IDLE)
                    self._idle -= 1
                if not self._ready:
                    self._deliverers -= 1
                    return
                future, outcome = self._ready.popleft()
            try:
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
            finally:  # a slot is free once its answer is delivered: undelivered ones count too
                self._slots.release()

    def request(self, payload: Mapping[str, Any], timeout: float | None = None) -> dict[str, Any]:
        return self.submit(payload).result(timeout)

    def endpoint(self) -> HandlerEndpoint:
        """A TCP endpoint (address and token) for the same session, for another process."""
        from rlm.transport.tcp import tcp_transport

        return tcp_transport(self.service).endpoint(self.session)

    def close(self) -> None:
        """Nothing to release here: the session is its owner's to close (which cancels its
        requests in flight); the delivery thread ends by itself once idle."""

    @property
    def closed(self) -> bool:
        return self.session.closed


class AddressLink:
    """A link to the LMHandler this process runs at an address (what the reference's callers
    know: `lm_handler_address`, `send_lm_request(address, ...)`): a session of that handler,
    taken on the first request and taken again if it was closed or another handler now
    listens there; requests go to the handler's service in this process, never through its
    socket unauthenticated. `close` releases the session."""

    def __init__(
        self, address: tuple[str, int], tools: Mapping[str, Callable[..., Any]] | None = None
    ) -> None:
        self.address = (str(address[0]), int(address[1]))
        self._tools = dict(tools or {})
        self._lock = threading.Lock()
        self._handler: LMHandler | None = None
        self._link: ServiceLink | None = None

    def link(self) -> ServiceLink:
        from rlm.transport.tcp import handler_at

        handler = handler_at(self.address)
        with self._lock:
            if self._link is None or self._link.closed or handler is not self._handler:
                self._handler = handler
                self._link = ServiceLink(handler.service, handler.open_session(tools=self._tools))
            return self._link

    @property
    def session(self) -> Session | None:
        """The session taken so far (None before the first request)."""
        return None if self._link is None else self._link.session

    def submit(self, payload: Mapping[str, Any]) -> concurrent.futures.Future[dict[str, Any]]:
        return self.link().submit(payload)

    def request(self, payload: Mapping[str, Any], timeout: float | None = None) -> dict[str, Any]:
        return self.link().request(payload, timeout)

    def endpoint(self) -> HandlerEndpoint:
        """The handler's address with this link's token, for another process."""
        link = self.link()
        assert self._handler is not None
        return self._handler.endpoint(link.session)

    def close(self) -> None:
        with self._lock:
            handler, link = self._handler, self._link
            self._handler = self._link = None
        if handler is not None and link is not None:
            handler.close_session(link.session)
