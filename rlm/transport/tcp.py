"""`LMHandler`: the LM service over TCP, for processes that are not the host.

An asyncio server on 127.0.0.1 (port 0) on the shared rlm loop, speaking the length-prefixed
JSON frames of `rlm.runtime.protocol`. A connection proves which session it belongs to with
the token `endpoint(session)` issued, in its hello frame; after that it may send any number
of requests, several in flight at once, each answered by id with what `LMService.serve`
returns. Environments in this process do not come here: they hold a `ServiceLink`
(`rlm.transport.inprocess`).

Constructed by hand as in the reference (`with LMHandler(client) as handler: ...
handler.address`), it makes a service of its own; `tcp_transport(service)` makes one over
an existing service.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from rlm.aio import get_loop, in_loop_thread, on_loop, run_sync
from rlm.clients.base import BaseLM
from rlm.core.types import LMResponse, Prompt
from rlm.environments.base import HandlerEndpoint
from rlm.errors import AuthenticationError, ConfigurationError, ProtocolError
from rlm.lm_service.cache import SubcallCache
from rlm.lm_service.requests import error_payload
from rlm.lm_service.router import Router
from rlm.lm_service.service import LMService, Session
from rlm.runtime.protocol import MAX_FRAME_BYTES, PROTOCOL_VERSION, encode_frame, read_frame

logger = logging.getLogger(__name__)

HELLO_MAX_BYTES = 4096  # a hello is ~100 bytes; nothing large is read before authentication
# A connection still waiting for its hello this long may be dropped to make room for a new one
# once `max_pending_hellos` are waiting: an honest client says hello within milliseconds, so
# idle connections (a flood of them) give way and new clients are still served.
HELLO_EVICT_AGE = 0.5


class _Conn:
    """One client connection: its streams, session and in-flight request tasks."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        task: asyncio.Task[Any] | None,
        max_in_flight: int,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.task = task
        self.session: Session | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.write_lock = asyncio.Lock()
        self.slots = asyncio.Semaphore(max_in_flight)
        self.opened = time.monotonic()

    def request_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.slots.release()

    def abort(self) -> list[asyncio.Task[Any]]:
        """Drop the connection now and cancel its work; returns the tasks to wait for."""
        self.writer.transport.abort()
        tasks: list[asyncio.Task[Any]] = list(self.tasks)
        if self.task is not None:
            tasks.append(self.task)
        for task in tasks:
            task.cancel()
        return tasks


_RUNNING: weakref.WeakValueDictionary[tuple[str, int], LMHandler] = weakref.WeakValueDictionary()


def running_handler(address: tuple[str, int]) -> LMHandler | None:
    """The started LMHandler of this process listening at `address`, if any.

    How in-process callers that know only an address (the reference's `LocalREPL(
    lm_handler_address=...)`, `send_lm_request`) reach a handler without weakening its
    authentication: they ask it for a session here instead of connecting without a token.
    """
    return _RUNNING.get((str(address[0]), int(address[1])))


def handler_at(address: tuple[str, int]) -> LMHandler:
    """`running_handler`, or a `ConfigurationError` saying how to start one."""
    handler = running_handler(address)
    if handler is None:
        raise ConfigurationError(
            f"no LMHandler of this process is listening at {address[0]}:{address[1]}; start "
            "one (`with LMHandler(client) as handler:`) and pass handler.address"
        )
    return handler


class LMHandler:
    """The TCP transport of an `LMService`: authenticated, multiplexed, bounded."""

    def __init__(
        self,
        client: BaseLM | None = None,
        *,
        service: LMService | None = None,
        other_clients: Sequence[BaseLM] = (),
        depth_clients: Mapping[int, BaseLM] | None = None,
        host: str = "127.0.0.1",
        max_frame_bytes: int = MAX_FRAME_BYTES,
        frame_timeout: float = 30.0,
        hello_timeout: float = 10.0,
        max_connections: int = 1024,
        max_in_flight: int = 256,
        max_session_connections: int = 256,
        max_pending_hellos: int = 128,
        cache: SubcallCache | None = None,
        batch_max_concurrent: int | None = None,
    ) -> None:
        limits = (max_connections, max_in_flight, max_session_connections, max_pending_hellos)
        if min(limits) < 1:
            raise ConfigurationError(
                "max_connections, max_in_flight, max_session_connections and "
                "max_pending_hellos must be >= 1"
            )
        if service is None:
            if client is None:
                raise ConfigurationError("LMHandler needs a client (or a service)")
            service = LMService(
                client,
                other_clients=other_clients,
                depth_clients=depth_clients,
                cache=cache,
                batch_max_concurrent=batch_max_concurrent,
            )
        elif client is not None:
            raise ConfigurationError("pass LMHandler a client or a service, not both")
        self.service = service
        self.host = host
        self.max_frame_bytes = max_frame_bytes
        self.frame_timeout = frame_timeout
        self.hello_timeout = hello_timeout
        self.max_connections = max_connections
        self.max_in_flight = max_in_flight
        self.max_session_connections = max_session_connections
        self.max_pending_hellos = max_pending_hellos
        self.address: tuple[str, int] | None = None
        self._server: asyncio.Server | None = None
        self._start_lock = asyncio.Lock()
        self._sessions: dict[str, Session] = {}  # by token: the sessions served over TCP
        self._sessions_lock = threading.Lock()
        self._conns: set[_Conn] = set()  # touched on the loop thread only
        self._pending: dict[_Conn, None] = {}  # no hello yet, oldest first (loop thread only)

    # -- the service, for the reference's callers and ours ----------------------------------

    @property
    def router(self) -> Router:
        return self.service.router

    @property
    def cache(self) -> SubcallCache | None:
        return self.service.cache

    def open_session(self, **settings: Any) -> Session:
        """`LMService.open_session(**settings)`, served over TCP with `session.token` from
        now on."""
        session = self.service.open_session(**settings)
        self._serve(session)
        return session

    def close_session(self, session: Session) -> None:
        """Revoke the session's token and close its open connections."""
        self.service.close_session(session)
        self.forget(session)

    async def acomplete(self, prompt: Prompt, **call: Any) -> LMResponse:
        """`LMService.acomplete`: one LM call on the service's path."""
        return await self.service.acomplete(prompt, **call)

    def completion(self, prompt: Prompt, *, depth: int = 0, model: str | None = None) -> LMResponse:
        """Synchronous `acomplete` without a session (no budget, no records)."""
        return self.service.completion(prompt, depth=depth, model=model)

    async def aclose_clients(self) -> None:
        await on_loop(self.service.aclose_clients())

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        """Start listening (idempotent); returns (host, port). From the loop, await `astart`."""
        return run_sync(self._astart())

    async def astart(self) -> tuple[str, int]:
        return await on_loop(self._astart())

    async def _astart(self) -> tuple[str, int]:
        async with self._start_lock:
            if self._server is None or self.address is None:
                server = await asyncio.start_server(
                    self._on_connect,
                    self.host,
                    0,
                    backlog=min(self.max_connections, socket.SOMAXCONN),
                    limit=1 << 20,
                )
                host, port = server.sockets[0].getsockname()[:2]
                self._server = server
                self.address = (host, port)
                _RUNNING[self.address] = self
            return self.address

    def stop(self) -> None:
        """Close the server and every connection, cancelling requests in flight. Idempotent."""
        if in_loop_thread():
            self._shutdown()
        elif self._server is not None or self._conns:
            run_sync(self._astop(), timeout=10.0)

    async def astop(self) -> None:
        await on_loop(self._astop())

    async def _astop(self) -> None:
        tasks = self._shutdown()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    def _shutdown(self) -> list[asyncio.Task[Any]]:
        server, self._server, address, self.address = self._server, None, self.address, None
        if address is not None and _RUNNING.get(address) is self:
            del _RUNNING[address]
        if server is not None:
            server.close()
        tasks: list[asyncio.Task[Any]] = []
        for conn in list(self._conns):
            tasks.extend(conn.abort())
        self._conns.clear()
        self._pending.clear()
        return tasks

    def __enter__(self) -> LMHandler:
        """Start (as the reference's handler does); `stop()` on exit."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    # -- tokens ------------------------------------------------------------------------------

    def endpoint(self, session: Session) -> HandlerEndpoint:
        """Address and token of `session`, served over TCP from now on."""
        if self.address is None:
            raise ConfigurationError("the LMHandler is not started")
        self._serve(session)
        return HandlerEndpoint(self.address[0], self.address[1], session.token)

    def _serve(self, session: Session) -> None:
        if session.closed:
            raise ConfigurationError("the session is closed")
        with self._sessions_lock:
            self._sessions[session.token] = session

    def forget(self, session: Session) -> None:
        """Revoke the session's token and drop its connections (its session was closed)."""
        with self._sessions_lock:
            if self._sessions.pop(session.token, None) is None:
                return
        if in_loop_thread():
            self._close_connections_of(session)
        elif self._conns:
            get_loop().call_soon_threadsafe(self._close_connections_of, session)

    def _close_connections_of(self, session: Session) -> None:
        for conn in list(self._conns):
            if conn.session is session:
                conn.abort()
                self._conns.discard(conn)

    # -- connections -------------------------------------------------------------------------

    def _admit(self) -> None:
        """Make room for one more connection awaiting its hello. Past `max_pending_hellos`,
        connections idle longer than `HELLO_EVICT_AGE` give way, oldest first; past four
        times that, the oldest gives way whatever its age. The newcomer is always admitted:
        an honest client's hello follows its connect at once, so a flood of idle connections
        can delay it but not lock it out, and never holds more than that many sockets."""
        now = time.monotonic()
        while len(self._pending) >= self.max_pending_hellos:
            oldest = next(iter(self._pending))
            young = now - oldest.opened < HELLO_EVICT_AGE
            if young and len(self._pending) < 4 * self.max_pending_hellos:
                break
            del self._pending[oldest]
            self._conns.discard(oldest)
            oldest.abort()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:
            writer.transport.abort()
            return
        self._admit()
        conn = _Conn(reader, writer, asyncio.current_task(), self.max_in_flight)
        self._conns.add(conn)
        self._pending[conn] = None
        try:
            await self._serve_connection(conn)
        except asyncio.CancelledError:
            pass  # stop() or close_session(): the connection is being dropped
        except (ConnectionError, TimeoutError) as exc:
            logger.debug("LMHandler connection lost: %r", exc)
        except Exception:
            logger.exception("unexpected error on an LMHandler connection")
        finally:
            self._conns.discard(conn)
            self._pending.pop(conn, None)
            for task in list(conn.tasks):
                task.cancel()
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()
            else:
                writer.close()

    async def _serve_connection(self, conn: _Conn) -> None:
        session = await self._handshake(conn)
        if session is None:
            return
        conn.session = session
        while True:
            try:
                message = await read_frame(conn.reader, self.max_frame_bytes, self.frame_timeout)
            except ProtocolError as exc:
                logger.debug("closing an LMHandler connection: %s", exc)
                await self._send_quietly(conn, {"id": None, "error": error_payload(exc)})
                return
            if message is None or session.closed:
                return
            await conn.slots.acquire()
            task = asyncio.create_task(self._serve_request(conn, session, message))
            conn.tasks.add(task)
            task.add_done_callback(conn.request_done)

    async def _handshake(self, conn: _Conn) -> Session | None:
        reason: str
        try:
            async with asyncio.timeout(self.hello_timeout):
                hello = await read_frame(conn.reader, HELLO_MAX_BYTES, None)
        except TimeoutError:
            reason = f"no hello within {self.hello_timeout}s"
        except ProtocolError as exc:
            reason = f"unreadable hello frame: {exc}"
        else:
            self._pending.pop(conn, None)
            if hello is None:
                return None
            session, reason = self._authenticate(hello)
            if session is not None:
                reason = self._over_connection_caps(session)
                if reason:
                    session = None
            if session is not None:
                reply = {"type": "hello", "ok": True, "version": PROTOCOL_VERSION}
                await self._send(conn, {**reply, "depth": session.depth})
                return session
        error = {"type": AuthenticationError.__name__, "message": reason}
        await self._send_quietly(conn, {"type": "error", "id": None, "error": error})
        return None

    def _over_connection_caps(self, session: Session) -> str:
        """Why one more authenticated connection of `session` is refused, or ""."""
        authenticated = [c for c in self._conns if c.session is not None]
        if len(authenticated) >= self.max_connections:
            return f"the LMHandler serves at most {self.max_connections} connections"
        if sum(c.session is session for c in authenticated) >= self.max_session_connections:
            return f"a session may hold at most {self.max_session_connections} connections"
        return ""

    def _authenticate(self, hello: Mapping[str, Any]) -> tuple[Session | None, str]:
        if hello.get("type") != "hello":
            return None, "the first frame must be a hello"
        token = hello.get("token")
        if not isinstance(token, str) or not token:
            return None, "the hello carries no token"
        if hello.get("version") != PROTOCOL_VERSION:
            return None, f"unsupported protocol version; this server speaks {PROTOCOL_VERSION}"
        presented = token.encode("utf-8", "surrogatepass")
        with self._sessions_lock:
            candidates = list(self._sessions.items())
        found = None
        for known, session in candidates:  # compare against every token, in constant time each
            if hmac.compare_digest(known.encode("utf-8"), presented) and found is None:
                found = session
        if found is None or found.closed:
            return None, "invalid token"
        return found, ""

    async def _send(self, conn: _Conn, message: dict[str, Any]) -> None:
        try:
            data = encode_frame(message, self.max_frame_bytes)
        except ProtocolError as exc:  # e.g. a result over the frame cap: report it instead
            data = encode_frame({"id": message.get("id"), "error": error_payload(exc)})
        async with conn.write_lock:
            if conn.writer.transport.is_closing():
                raise ConnectionResetError("the connection is closed")
            conn.writer.write(data)
            async with asyncio.timeout(self.frame_timeout):
                await conn.writer.drain()

    async def _send_quietly(self, conn: _Conn, message: dict[str, Any]) -> None:
        """Best effort before closing: the peer may be gone or not reading."""
        try:
            async with asyncio.timeout(1.0):
                await self._send(conn, message)
        except (OSError, TimeoutError):
            pass

    async def _serve_request(self, conn: _Conn, session: Session, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        reply: dict[str, Any]
        if request_id is not None and (
            isinstance(request_id, bool) or not isinstance(request_id, (str, int))
        ):
            error = ProtocolError("'id' must be a string or an integer")
            reply = {"id": None, "error": error_payload(error)}
        else:
            reply = {"id": request_id, **await self.service.serve(session, message)}
        try:
            await self._send(conn, reply)
        except (OSError, TimeoutError) as exc:
            logger.debug("could not deliver a response, dropping the connection: %r", exc)
            conn.writer.transport.abort()

    def __repr__(self) -> str:
        return f"LMHandler(address={self.address!r}, service={self.service!r})"


_TRANSPORTS: weakref.WeakKeyDictionary[LMService, LMHandler] = weakref.WeakKeyDictionary()
_TRANSPORTS_LOCK = threading.Lock()


def tcp_transport(service: LMService) -> LMHandler:
    """The started TCP transport of `service` (one per service, made on first use): for a
    process that really is elsewhere (an IPython kernel) and needs an address and a token."""
    with _TRANSPORTS_LOCK:
        handler = _TRANSPORTS.get(service)
        if handler is None:
            handler = _TRANSPORTS[service] = LMHandler(service=service)
            service.attach(handler)
    handler.start()
    return handler
