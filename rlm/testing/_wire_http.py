"""The HTTP side of the provider simulator: routing, a lean HTTP/1.1 handler, a worker pool.

Built on `http.server` (keep-alive, daemon threads). The handler parses headers itself and the
server reuses worker threads: both cost more than answering a simulated request otherwise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import secrets
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from rlm.testing._wire_anthropic import AnthropicWire
from rlm.testing._wire_common import Answer, Wire, WireError
from rlm.testing._wire_gemini import GeminiWire
from rlm.testing._wire_openai import OpenAIWire, model_entry, models_list

if TYPE_CHECKING:
    from rlm.testing.simulator import ProviderSimulator

logger = logging.getLogger("rlm.testing.simulator")

MAX_BODY_BYTES = 256 * 1024 * 1024

_OPENAI_PATHS = {"/v1/chat/completions", "/chat/completions", "/openai/v1/chat/completions"}
_AZURE_PATH = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")
_ANTHROPIC_PATHS = {"/v1/messages"}
_GEMINI_PATH = re.compile(r"^/(?:v1|v1beta|v1alpha)/models/([^/:]+):([A-Za-z]+)$")
_MODELS_PATH = re.compile(r"^(?:/v1|/openai/v1|/openai)?/models(?:/([^/]+))?$")
_OPENAI_WIRE = OpenAIWire()
_AZURE_WIRE = OpenAIWire(azure=True)
_ANTHROPIC_WIRE = AnthropicWire()
_GEMINI_WIRE = GeminiWire()


class WorkerPool:
    """Daemon threads that serve connections and are reused between them.

    Starting a thread per connection costs more than answering a simulated request; idle
    workers wait for the next connection and end after `idle_timeout` seconds without one.
    """

    def __init__(self, serve: Callable[[Any], None], idle_timeout: float = 30.0) -> None:
        self._serve = serve
        self._idle_timeout = idle_timeout
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._workers = 0

    def close(self) -> None:
        """Let every worker end once it has finished its current connection."""
        with self._lock:
            workers = self._workers
        for _ in range(workers):
            self._queue.put(None)

    def submit(self, item: Any) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1  # reserve an idle worker for this item
        self._queue.put(item)
        if spawn:
            with self._lock:
                self._workers += 1
            threading.Thread(target=self._work, name="rlm-simulator-worker", daemon=True).start()

    def _work(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._idle_timeout)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # not reserved: leave
                        self._idle -= 1
                        self._workers -= 1
                        return
                continue  # reserved just now: its item is on the way
            if item is None:
                with self._lock:
                    self._workers -= 1
                return
            self._serve(item)
            with self._lock:
                self._idle += 1


class SimServer(ThreadingHTTPServer):
    """Serves each accepted connection on a pooled daemon thread."""

    daemon_threads = True
    request_queue_size = 1024  # bursts of hundreds of concurrent connections
    sim: ProviderSimulator
    pool: WorkerPool

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS lookup that can stall offline.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.pool = WorkerPool(self._serve_connection)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.pool.submit((request, client_address))

    def _serve_connection(self, item: tuple[Any, Any]) -> None:
        request, client_address = item
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return  # the client went away
        logger.exception("simulator request from %s failed", client_address)


class SimHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rlm-provider-simulator"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 600  # idle keep-alive connections end eventually
    server: SimServer
    fields: dict[str, str]  # request headers, lower-case names
    raw_requestline: bytes

    def setup(self) -> None:
        super().setup()
        self.server.sim._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sim._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def parse_request(self) -> bool:
        """A lean request parser: `email`-based header parsing costs more than the answer."""
        self.command = ""
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3 or not words[2].startswith("HTTP/1."):
            self.send_error(400, f"Bad request line {self.requestline!r}")
            return False
        self.command, self.path, self.request_version = words
        fields: dict[str, str] = {}
        for _ in range(200):
            line = self.rfile.readline(65537)
            if len(line) > 65536:
                self.send_error(431, "Header line too long")
                return False
            if line in (b"\r\n", b"\n", b""):
                break
            name, sep, value = line.decode("iso-8859-1").partition(":")
            if not sep:
                self.send_error(400, "Malformed header line")
                return False
            fields[name.strip().lower()] = value.strip()
        else:
            self.send_error(431, "Too many headers")
            return False
        self.fields = fields
        connection = fields.get("connection", "").lower()
        keep_alive = self.request_version != "HTTP/1.0" or connection == "keep-alive"
        self.close_connection = connection == "close" or not keep_alive
        if (
            fields.get("expect", "").lower() == "100-continue"
            and self.request_version != "HTTP/1.0"
        ):
            self.send_response_only(100)
            self.end_headers()
        return True

    # -- routing ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        match = _MODELS_PATH.match(parts.path)
        sim = self.server.sim
        if match is None:
            self._send_plain_error(404, f"no route for GET {parts.path}")
        elif match.group(1) is None:
            self._send_json(200, models_list(sim._model_names()))
        else:
            name = unquote(match.group(1))
            if sim.known_models is not None and name not in sim.known_models:
                err = WireError("not_found", _OPENAI_WIRE.not_found_message(name))
                self._send_json(404, _OPENAI_WIRE.error(err))
            else:
                self._send_json(200, model_entry(name))

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path
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
                self._read_body()
                self._send_plain_error(404, f"unknown Gemini method {m.group(2)!r}")
                return
        else:
            self._read_body()
            self._send_plain_error(404, f"no route for POST {path}")
            return
        raw = self._read_body()
        if raw is None:
            return
        self._serve(wire, path, route_model, raw, parse_qs(parts.query))

    def _serve(
        self,
        wire: Wire,
        path: str,
        route_model: str | None,
        raw: bytes,
        query: dict[str, list[str]],
    ) -> None:
        sim = self.server.sim
        headers = dict(self.fields)
        with sim._in_flight_scope():
            received = time.time()
            body: dict[str, Any] = {}
            bad_json: WireError | None = None
            try:
                loaded = json.loads(raw)
                if not isinstance(loaded, dict):
                    raise ValueError("the request body must be a JSON object")
                body = loaded
            except ValueError as exc:
                bad_json = WireError("invalid_request", f"invalid JSON body: {exc}")
            counting = path.endswith(":countTokens")
            recorded = None
            if bad_json is None and not counting:
                recorded = sim._receive(wire, path, route_model, body, headers, received)
            if sim.latency and sim._stopping.wait(sim.latency):
                self.close_connection = True
                return
            try:
                if bad_json is not None:
                    raise bad_json
                if counting:
                    if not wire.authorized(headers, query):
                        raise WireError("authentication", "No API key provided.")
                    answer = Answer(body=sim._count_tokens(wire, route_model or "", body))
                else:
                    assert recorded is not None
                    answer = sim._generate(wire, *recorded, query)
            except WireError as err:
                self._send_error(wire, err)
                return
            if answer.action == "reset":
                self._reset()
            elif answer.action == "stall":
                sim._stopping.wait(sim.faults.timeout_seconds)
                self.close_connection = True
            else:
                extra = {}
                if wire.request_id_header:
                    extra[wire.request_id_header] = f"req_{secrets.token_hex(12)}"
                self._send_json(answer.status, answer.body, extra)

    # -- I/O -------------------------------------------------------------------------------

    def _read_body(self) -> bytes | None:
        """The request body (Content-Length or chunked); None after answering an error."""
        if "chunked" in self.fields.get("transfer-encoding", "").lower():
            return self._read_chunked()
        try:
            length = int(self.fields.get("content-length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self._send_plain_error(413 if length > 0 else 400, "bad or oversized Content-Length")
            return None
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes | None:
        data = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                size = -1
            if size < 0 or len(data) + size > MAX_BODY_BYTES:
                self.close_connection = True
                self._send_plain_error(400, "bad chunked body")
                return None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(data)
            data += self.rfile.read(size)
            self.rfile.readline(1024)

    def _send_json(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
        self.server.sim._count_status(status)

    def _send_error(self, wire: Wire, err: WireError) -> None:
        self._send_json(err.status, wire.error(err), err.headers)

    def _send_plain_error(self, status: int, message: str) -> None:
        self._send_json(
            status, {"error": {"message": message, "type": "not_found_error", "code": status}}
        )

    def _reset(self) -> None:
        """Abort the connection with a TCP RST and no response."""
        self.close_connection = True
        sock = self.connection
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # drop the makefile reference so close() really closes the fd
            sock.close()
