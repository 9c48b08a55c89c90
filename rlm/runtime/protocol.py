"""The LMHandler wire protocol over TCP or a Unix socket, and the client used inside REPLs.

A frame is a 4-byte big-endian length, then that many bytes of strict UTF-8 JSON holding one
object (see docs/protocol.md); encoding and decoding frames is `rlm.runtime.channel`'s (the one
codec, shared with the sandbox channel). Here: reading frames from sockets and streams (the
declared length checked against the cap before the body is buffered), and `Connection`, the
multiplexed client. Shipped into sandboxes: standard library and `rlm` runtime modules only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from rlm.errors import AuthenticationError, IncompleteFrameError, ProtocolError, RemoteError

from .channel import (
    HEADER,
    MAX_FRAME_BYTES,
    FrameDecoder,
    check_cap,
    decode_payload,
    encode_frame,
)

__all__ = [
    "HEADER",
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "Connection",
    "FrameDecoder",
    "LazyConnection",
    "PendingRequests",
    "decode_payload",
    "encode_frame",
    "read_frame",
    "recv_frame",
    "send_frame",
]

PROTOCOL_VERSION = 1
_RECV_CHUNK = 1 << 20


def _recv_exactly(sock: socket.socket, n: int, *, frame_start: bool) -> bytearray | None:
    """Read exactly n bytes, growing the buffer as bytes arrive (never trusting n up front)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), _RECV_CHUNK))
        if not chunk:
            if frame_start and not buf:
                return None
            raise IncompleteFrameError(n, len(buf))
        buf += chunk
    return buf


def send_frame(
    sock: socket.socket, obj: dict[str, Any], max_frame_bytes: int = MAX_FRAME_BYTES
) -> None:
    """Send one message on a blocking socket."""
    sock.sendall(encode_frame(obj, max_frame_bytes))


def recv_frame(
    sock: socket.socket, max_frame_bytes: int = MAX_FRAME_BYTES
) -> dict[str, Any] | None:
    """Read one message from a blocking socket; None on a clean EOF between frames."""
    header = _recv_exactly(sock, HEADER.size, frame_start=True)
    if header is None:
        return None
    (length,) = HEADER.unpack(header)
    check_cap(length, max_frame_bytes)
    body = _recv_exactly(sock, length, frame_start=False) if length else bytearray()
    assert body is not None
    return decode_payload(body)


async def read_frame(
    reader: asyncio.StreamReader,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    frame_timeout: float | None = None,
) -> dict[str, Any] | None:
    """Read one message; None on a clean EOF between frames.

    Waits as long as it takes for a frame to begin; from its first byte the whole frame must
    arrive within `frame_timeout` (one deadline, so a byte-at-a-time sender cannot stretch it).
    """
    try:
        first = await reader.readexactly(1)
    except asyncio.IncompleteReadError:
        return None
    try:
        async with asyncio.timeout(frame_timeout):
            try:
                rest = await reader.readexactly(HEADER.size - 1)
            except asyncio.IncompleteReadError as exc:
                raise IncompleteFrameError(HEADER.size, 1 + len(exc.partial)) from None
            (length,) = HEADER.unpack(first + rest)
            check_cap(length, max_frame_bytes)
            try:
                body = await reader.readexactly(length)
            except asyncio.IncompleteReadError as exc:
                raise IncompleteFrameError(length, len(exc.partial)) from None
    except TimeoutError:
        raise ProtocolError(f"frame not completed within {frame_timeout}s") from None
    return decode_payload(body)


class PendingRequests:
    """The requests of a multiplexed client still waiting for a response, by id.

    Shared by `Connection` (REPL -> LMHandler) and the sandbox worker's channel to the host:
    each request gets a fresh id and a future; a response settles its future with the result or
    a typed `RemoteError`; a dead transport fails every pending and later request.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: dict[int, concurrent.futures.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)  # next() is atomic under the GIL
        self.error: ProtocolError | None = None

    def open(self) -> tuple[int, concurrent.futures.Future[dict[str, Any]]]:
        """A new request id and its future (already failed when the transport is dead)."""
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()  # requests cannot be withdrawn once sent
        request_id = next(self._ids)
        with self._lock:
            if self.error is not None:
                future.set_exception(self.error)
            else:
                self._futures[request_id] = future
        return request_id, future

    def discard(self, request_id: int, error: BaseException) -> None:
        """Fail one request that could not be sent."""
        with self._lock:
            future = self._futures.pop(request_id, None)
        if future is not None:
            future.set_exception(error)

    def settle(self, message: dict[str, Any]) -> None:
        """Complete a request's future from its response: the result, or a typed error."""
        request_id = message.get("id")
        with self._lock:
            future = self._futures.pop(request_id, None) if isinstance(request_id, int) else None
        if future is None:
            return  # not ours (already failed); nothing is waiting for it
        error = message.get("error")
        if error is not None:
            if isinstance(error, dict):
                future.set_exception(
                    RemoteError(
                        str(error.get("type", "RemoteError")), str(error.get("message", ""))
                    )
                )
            else:
                future.set_exception(ProtocolError(f"malformed error in response: {error!r}"))
        elif isinstance(message.get("result"), dict):
            future.set_result(message["result"])
        else:
            future.set_exception(ProtocolError("response carries neither a result nor an error"))

    def fail(self, error: ProtocolError) -> None:
        """The transport died: fail everything pending, and every later request."""
        with self._lock:
            if self.error is None:
                self.error = error
            error = self.error
            futures = list(self._futures.values())
            self._futures.clear()
        for future in futures:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(error)


class Connection:
    """Thread-safe, multiplexed client of the LMHandler, used by code running in a REPL.

    Many threads may call `request` at once: each request gets its own id, writes are
    serialised, and one reader thread routes responses to their futures by id. When the
    connection dies every pending and later request fails with `ProtocolError`.
    """

    def __init__(
        self,
        sock: socket.socket,
        token: str,
        *,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        hello_timeout: float | None = 10.0,
    ) -> None:
        self._sock = sock
        self.max_frame_bytes = max_frame_bytes
        self.depth = 0
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending = PendingRequests()
        self._closed = False
        try:
            self._hello(token, hello_timeout)
        except BaseException:
            self._close_socket()
            raise
        self._reader = threading.Thread(
            target=self._read_loop, name="rlm-protocol-reader", daemon=True
        )
        self._reader.start()

    @classmethod
    def connect(cls, host: str, port: int, token: str, timeout: float = 10.0) -> Connection:
        sock = socket.create_connection((host, port), timeout=timeout)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, token, hello_timeout=timeout)

    def _hello(self, token: str, timeout: float | None) -> None:
        self._sock.settimeout(timeout)
        hello = {"type": "hello", "token": token, "version": PROTOCOL_VERSION}
        try:
            send_frame(self._sock, hello, self.max_frame_bytes)
            reply = recv_frame(self._sock, self.max_frame_bytes)
        except TimeoutError:
            raise ProtocolError(f"no hello reply from the LMHandler within {timeout}s") from None
        if reply is None:
            raise AuthenticationError("the LMHandler closed the connection during the hello")
        if reply.get("type") != "hello" or reply.get("ok") is not True:
            error = reply.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            raise AuthenticationError(f"the LMHandler refused the hello: {message or reply!r}")
        depth = reply.get("depth", 0)
        self.depth = depth if isinstance(depth, int) and not isinstance(depth, bool) else 0
        self._sock.settimeout(None)

    def submit(self, payload: dict[str, Any]) -> concurrent.futures.Future[dict[str, Any]]:
        """Send one request; the future gets its result or a typed error."""
        if not isinstance(payload, dict):
            raise TypeError(f"a request must be a dict, not {type(payload).__name__}")
        request_id, future = self._pending.open()
        if future.done():
            return future
        try:
            frame = encode_frame({**payload, "id": request_id}, self.max_frame_bytes)
        except ProtocolError as exc:  # this request only (not encodable): the caller's error
            self._pending.discard(request_id, exc)
            raise
        try:
            with self._write_lock:
                self._sock.sendall(frame)
        except OSError as exc:
            self._fail(ProtocolError(f"connection to the LMHandler lost: {exc}"))
        return future

    def request(self, payload: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        return self.submit(payload).result(timeout)

    @property
    def closed(self) -> bool:
        return self._pending.error is not None

    def _read_loop(self) -> None:
        decoder = FrameDecoder(self.max_frame_bytes)
        error: ProtocolError
        try:
            while True:
                data = self._sock.recv(_RECV_CHUNK)
                if not data:
                    if decoder.pending:
                        error = ProtocolError("the LMHandler closed the connection mid-frame")
                    else:
                        error = ProtocolError("the LMHandler closed the connection")
                    break
                for message in decoder.feed(data):
                    self._dispatch(message)
        except ProtocolError as exc:
            error = exc
        except OSError as exc:
            error = ProtocolError(f"connection to the LMHandler lost: {exc}")
        except Exception as exc:  # never leave requests waiting on a dead reader
            error = ProtocolError(f"protocol reader failed: {exc!r}")
        self._fail(error)

    def _dispatch(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        error = message.get("error")
        if request_id is None:
            kind = error.get("type") if isinstance(error, dict) else None
            text = error.get("message") if isinstance(error, dict) else repr(message)
            raise ProtocolError(f"the LMHandler reported {kind or 'an error'}: {text}")
        self._pending.settle(message)

    def _fail(self, error: ProtocolError) -> None:
        self._pending.fail(error)

    def close(self) -> None:
        """Close the connection; pending requests fail with `ProtocolError`. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._fail(ProtocolError("connection closed"))
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=5.0)
        self._close_socket()

    def _close_socket(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"Connection(depth={self.depth}, {state})"


CONNECT_ATTEMPTS = 5


def connect_with_retries(host: str, port: int, token: str) -> Connection:
    """A connection dropped before its hello was answered (the handler sheds idle connections
    when flooded) is tried again; a refused token is not."""
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            return Connection.connect(host, port, token)
        except (OSError, ProtocolError) as exc:
            refused = isinstance(exc, AuthenticationError) and "refused" in str(exc)
            if refused or attempt == CONNECT_ATTEMPTS:
                raise
            time.sleep(0.1 * attempt)
    raise AssertionError("unreachable")


class LazyConnection:
    """A `Connection` opened on the first request, and again after it died, so a REPL that
    never calls costs nothing. `endpoint()` gives (host, port, token) at that time: a REPL
    driven by hand may learn its LMHandler's address late."""

    def __init__(self, endpoint: Callable[[], tuple[str, int, str]]) -> None:
        self._endpoint = endpoint
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._closed = False

    def submit(self, payload: dict[str, Any]) -> concurrent.futures.Future[dict[str, Any]]:
        with self._lock:
            if self._closed:
                raise ConnectionError("the REPL was cleaned up")
            if self._conn is None or self._conn.closed:
                self._conn = connect_with_retries(*self._endpoint())
            conn = self._conn
        return conn.submit(payload)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
