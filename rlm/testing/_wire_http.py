"""The HTTP side of the provider simulator: an asyncio HTTP/1.1 server on its own loop thread.

One event loop serves every connection (keep-alive, pipelined requests answered in order), so
hundreds of concurrent requests cost neither a thread each nor the GIL contention of a thread
each, which matters when the simulator shares a process with the code it is measuring. A
callable `reply` runs in a thread pool (it may block); everything else runs on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.utils
import json
import logging
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from rlm.testing._wire_anthropic import AnthropicWire
from rlm.testing._wire_common import Answer, ParsedPrompt, SimRequest, Wire, WireError
from rlm.testing._wire_gemini import GeminiWire
from rlm.testing._wire_openai import OpenAIWire, model_entry, models_list


class Simulated(Protocol):
    """What the server needs of the `ProviderSimulator` it serves (rlm/testing/simulator.py):
    its settings and the request-handling steps, which run on the server's threads."""

    reply: Any
    latency: float
    faults: Any  # a FaultPlan
    known_models: frozenset[str] | None

    def _count_status(self, status: int) -> None: ...

    def _in_flight_scope(self) -> contextlib.AbstractContextManager[None]: ...

    @property
    def _receive(self) -> Callable[..., tuple[ParsedPrompt, SimRequest]]:
        """Parse and record a request: (wire, path, route model, body, headers, received)."""

    def _generate(
        self, wire: Wire, prompt: ParsedPrompt, request: SimRequest, query: dict[str, list[str]]
    ) -> Answer: ...

    def _count_tokens(
        self, wire: Wire, route_model: str, body: dict[str, Any]
    ) -> dict[str, Any]: ...

    def _model_names(self) -> list[str]: ...


logger = logging.getLogger("rlm.testing.simulator")

MAX_BODY_BYTES = 256 * 1024 * 1024
MAX_HEAD_BYTES = 1024 * 1024  # request line + headers
MAX_HEADERS = 200
IDLE_TIMEOUT = 600.0  # an idle keep-alive connection ends eventually
SERVER_NAME = "rlm-provider-simulator"

_OPENAI_PATHS = {"/v1/chat/completions", "/chat/completions", "/openai/v1/chat/completions"}
_AZURE_PATH = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")
_ANTHROPIC_PATHS = {"/v1/messages"}
_GEMINI_PATH = re.compile(r"^/(?:v1|v1beta|v1alpha)/models/([^/:]+):([A-Za-z]+)$")
_MODELS_PATH = re.compile(r"^(?:/v1|/openai/v1|/openai)?/models(?:/([^/]+))?$")
_OPENAI_WIRE = OpenAIWire()
_AZURE_WIRE = OpenAIWire(azure=True)
_ANTHROPIC_WIRE = AnthropicWire()
_GEMINI_WIRE = GeminiWire()


class _BadRequest(Exception):
    """A request that cannot be read: answered with `status`, then the connection closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    close: bool  # the client asked to close after this response


@dataclass
class _Response:
    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    action: str = "send"  # or "reset" (TCP RST, no response) or "stall" (wait, then close)


class _Clock:
    """The Date header, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def date(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second, self._value = now, email.utils.formatdate(now, usegmt=True)
        return self._value


def _status_line(status: int) -> str:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    return f"HTTP/1.1 {status} {reason}\r\n"


def _error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "not_found_error", "code": status}}


class SimServer:
    """Serves one `ProviderSimulator` on 127.0.0.1 (or `host`) from a daemon loop thread."""

    def __init__(self, sim: Simulated, host: str, port: int) -> None:
        self.sim = sim
        self.host = host
        self.port = port
        self.server_name = host
        self.server_port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._clock = _Clock()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve; returns once the port is known (errors binding are raised here)."""
        loop = asyncio.new_event_loop()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:
                started.set_exception(exc)
                loop.close()
                return
            started.set_result(None)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="rlm-simulator", daemon=True)
        self._thread.start()
        started.result()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._serve_connection, self.host, self.port, backlog=1024, limit=MAX_HEAD_BYTES
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        self.server_name, self.server_port = str(host), int(port)

    def stop(self) -> None:
        """Close the listener and every connection at once (stalled requests included)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError, concurrent.futures.TimeoutError):
                asyncio.run_coroutine_threadsafe(self._aclose(), loop).result(5)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._conns)
        for task, writer in list(self._conns.items()):
            writer.transport.abort()
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)

    # -- connections -------------------------------------------------------------------------

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = writer
        try:
            while True:
                try:
                    async with asyncio.timeout(IDLE_TIMEOUT):
                        request = await self._read_request(reader, writer)
                except _BadRequest as exc:
                    self._write(writer, exc.status, _error_body(exc.status, str(exc)), None, True)
                    await writer.drain()
                    return
                if request is None:
                    return
                if not await self._respond(request, writer):
                    return
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or idled out
        except asyncio.CancelledError:
            pass  # stop()
        except Exception:
            logger.exception("simulator connection failed")
        finally:
            self._conns.pop(task, None)
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()
            else:
                writer.close()

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Request | None:
        """The next request on the connection; None on a clean EOF between requests."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise _BadRequest(400, "incomplete request head") from None
            return None
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "request head too large") from None
        lines = head.decode("iso-8859-1").split("\r\n")
        words = lines[0].split()
        if len(words) != 3 or not words[2].startswith("HTTP/1."):
            raise _BadRequest(400, f"bad request line {lines[0]!r}")
        method, target, version = words
        headers: dict[str, str] = {}
        fields = [line for line in lines[1:] if line]
        if len(fields) > MAX_HEADERS:
            raise _BadRequest(431, "too many headers")
        for line in fields:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest(400, "malformed header line")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        close = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
        if headers.get("expect", "").lower() == "100-continue" and version != "HTTP/1.0":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked(reader)
        else:
            try:
                length = int(headers.get("content-length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY_BYTES:
                raise _BadRequest(413 if length > 0 else 400, "bad or oversized Content-Length")
            body = await reader.readexactly(length) if length else b""
        return _Request(method, target, version, headers, body, close)

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        data = bytearray()
        while True:
            line = await reader.readline()
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                size = -1
            if size < 0 or len(data) + size > MAX_BODY_BYTES:
                raise _BadRequest(400, "bad chunked body")
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(data)
            data += await reader.readexactly(size)
            await reader.readline()

    def _write(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None,
        close: bool,
    ) -> None:
        payload = json.dumps(body).encode()
        head = [
            _status_line(status),
            f"Server: {SERVER_NAME}\r\nDate: {self._clock.date()}\r\n",
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n",
        ]
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}\r\n")
        if close:
            head.append("Connection: close\r\n")
        head.append("\r\n")
        writer.write("".join(head).encode("iso-8859-1") + payload)
        self.sim._count_status(status)

    async def _respond(self, request: _Request, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; whether the connection stays open."""
        response = await self._route(request)
        if response.action == "reset":
            sock = writer.get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if response.action == "stall":
            await asyncio.sleep(self.sim.faults.timeout_seconds)
            return False
        assert response.body is not None
        self._write(writer, response.status, response.body, response.headers, request.close)
        await writer.drain()
        return not request.close

    # -- routing -----------------------------------------------------------------------------

    async def _route(self, request: _Request) -> _Response:
        parts = urlsplit(request.target)
        path = parts.path
        if request.method == "GET":
            return self._get(path)
        if request.method != "POST":
            return _Response(501, _error_body(501, f"method {request.method} not supported"))
        route_model: str | None = None
        wire: Wire
        if path in _OPENAI_PATHS:
            wire = _OPENAI_WIRE
        elif (m := _AZURE_PATH.match(path)) is not None:
            wire, route_model = _AZURE_WIRE, unquote(m.group(1))
        elif path in _ANTHROPIC_PATHS:
            wire = _ANTHROPIC_WIRE
        elif (m := _GEMINI_PATH.match(path)) is not None:
            wire, route_model = _GEMINI_WIRE, unquote(m.group(1))
            if m.group(2) not in ("generateContent", "streamGenerateContent", "countTokens"):
                return _Response(404, _error_body(404, f"unknown Gemini method {m.group(2)!r}"))
        else:
            return _Response(404, _error_body(404, f"no route for POST {path}"))
        return await self._generation(wire, path, route_model, request, parse_qs(parts.query))

    def _get(self, path: str) -> _Response:
        match = _MODELS_PATH.match(path)
        sim = self.sim
        if match is None:
            return _Response(404, _error_body(404, f"no route for GET {path}"))
        if match.group(1) is None:
            return _Response(200, models_list(sim._model_names()))
        name = unquote(match.group(1))
        if sim.known_models is not None and name not in sim.known_models:
            err = WireError("not_found", _OPENAI_WIRE.not_found_message(name))
            return _Response(404, _OPENAI_WIRE.error(err))
        return _Response(200, model_entry(name))

    async def _generation(
        self,
        wire: Wire,
        path: str,
        route_model: str | None,
        request: _Request,
        query: dict[str, list[str]],
    ) -> _Response:
        sim = self.sim
        headers = request.headers
        with sim._in_flight_scope():
            received = time.time()
            body: dict[str, Any] = {}
            bad_json: WireError | None = None
            try:
                loaded = json.loads(request.body)
                if not isinstance(loaded, dict):
                    raise ValueError("the request body must be a JSON object")
                body = loaded
            except ValueError as exc:
                bad_json = WireError("invalid_request", f"invalid JSON body: {exc}")
            counting = path.endswith(":countTokens")
            recorded = None
            if bad_json is None and not counting:
                try:
                    recorded = sim._receive(wire, path, route_model, body, headers, received)
                except WireError as err:
                    bad_json = err
            if sim.latency:
                await asyncio.sleep(sim.latency)
            try:
                if bad_json is not None:
                    raise bad_json
                if counting:
                    if not wire.authorized(headers, query):
                        raise WireError("authentication", "No API key provided.")
                    answer = Answer(body=sim._count_tokens(wire, route_model or "", body))
                else:
                    assert recorded is not None
                    answer = await self._generate(wire, recorded, query)
            except WireError as err:
                return _Response(err.status, wire.error(err), err.headers)
        if answer.action != "send":
            return _Response(action=answer.action)
        extra = dict(answer.headers)
        if wire.request_id_header:
            extra[wire.request_id_header] = f"req_{secrets.token_hex(12)}"
        return _Response(answer.status, answer.body, extra)

    async def _generate(
        self, wire: Wire, recorded: tuple[ParsedPrompt, SimRequest], query: dict[str, list[str]]
    ) -> Answer:
        """`sim._generate`, off the loop when the reply is a function (it may block)."""
        prompt, sim_request = recorded
        if not callable(self.sim.reply):
            return self.sim._generate(wire, prompt, sim_request, query)
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=256, thread_name_prefix="rlm-simulator-reply"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, self.sim._generate, wire, prompt, sim_request, query
        )
