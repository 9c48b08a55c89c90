"""The `rlm view` HTTP server: the built visualizer plus read-only access to one log directory.

Stdlib only, bound to 127.0.0.1. Why each guard exists:
- logs may hold the run's context and answers, so the API wants the random token printed in
  the URL (as a `?token=` query or an `X-RLM-Token` header): other local users and other
  browser tabs cannot read them;
- the Host header must name the loopback address, so a web page cannot reach the server
  through DNS rebinding;
- only GET and HEAD exist (anything else: 405); only `*.jsonl` files found under LOG_DIR are
  served (rlm.viewer.logs), never a path built from the request.
"""

from __future__ import annotations

import errno
import hmac
import json
import mimetypes
import secrets
import shutil
import sys
import threading
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs, unquote, urlsplit

from rlm.viewer.logs import LogAccessError, SummaryCache, list_logs, open_log, reference_view

HOST = "127.0.0.1"
DEFAULT_PORT = 8790
STATIC_DIR = Path(__file__).resolve().parent / "static"
TOKEN_HEADER = "X-RLM-Token"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'none'"
)
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}
NOT_BUILT = """<!doctype html><meta charset="utf-8"><title>rlm view</title>
<p>The visualizer is not built into this checkout of rlm: run
<code>scripts/build_visualizer.sh</code> (needs Node.js) and restart <code>rlm view</code>.</p>
"""


class ViewerServer(ThreadingHTTPServer):
    """Serves one log directory; `url` is the address to open (it carries the token)."""

    daemon_threads = True
    allow_reuse_address = False  # a second `rlm view` on the same port must fail, not share it

    def __init__(self, log_dir: Path, port: int, token: str, static_dir: Path = STATIC_DIR) -> None:
        self.log_dir = log_dir
        self.token = token
        self.static_dir = static_dir
        self.summaries = SummaryCache()
        super().__init__((HOST, port), ViewerHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/?token={self.token}"

    def allowed_hosts(self) -> set[str]:
        return {f"{HOST}:{self.port}", f"localhost:{self.port}"}

    def list_payload(self) -> dict[str, Any]:
        logs = [self.summaries.entry(self.log_dir, log) for log in list_logs(self.log_dir)]
        message = None
        if not logs:
            message = f"No trajectory logs (*.jsonl) in {self.log_dir}."
        return {"log_dir": str(self.log_dir), "logs": logs, "message": message}


class ViewerHandler(BaseHTTPRequestHandler):
    server: ViewerServer
    server_version = "rlm-view"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    # ------------------------------------------------------------------ methods

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _refuse_method(self) -> None:
        self._send_json(
            HTTPStatus.METHOD_NOT_ALLOWED,
            {"error": "rlm view is read-only: only GET and HEAD"},
            extra={"Allow": "GET, HEAD"},
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the terminal shows the URL, not a line per request."""

    # ------------------------------------------------------------------ routing

    def _dispatch(self, head: bool) -> None:
        host = self.headers.get("Host", "")
        if host not in self.server.allowed_hosts():
            self._send_json(HTTPStatus.FORBIDDEN, {"error": "unexpected Host header"}, head=head)
            return
        url = urlsplit(self.path)
        path = unquote(url.path)
        if path.startswith("/api/"):
            if not self._authorised(url.query):
                self._send_json(
                    HTTPStatus.FORBIDDEN,
                    {"error": "missing or wrong token: open the URL `rlm view` printed"},
                    head=head,
                )
                return
            if path == "/api/logs":
                self._send_json(HTTPStatus.OK, self.server.list_payload(), head=head)
            elif path.startswith("/api/logs/"):
                self._send_log(path[len("/api/logs/") :], head)
            else:
                self._send_json(HTTPStatus.NOT_FOUND, {"error": "no such API"}, head=head)
            return
        self._send_static(path, head)

    def _authorised(self, query: str) -> bool:
        given = self.headers.get(TOKEN_HEADER) or next(iter(parse_qs(query).get("token", [])), "")
        return hmac.compare_digest(given.encode(), self.server.token.encode())

    # ------------------------------------------------------------------ responses

    def _headers(self, status: int, content_type: str, length: int, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Content-Security-Policy", CSP)
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()

    def _send_json(
        self,
        status: int,
        payload: Any,
        *,
        head: bool = False,
        extra: dict[str, str] | None = None,
    ) -> None:
        body = json.dumps(payload, ensure_ascii=False, allow_nan=False, default=str).encode()
        headers = {"Cache-Control": "no-store", **(extra or {})}
        self._headers(status, "application/json; charset=utf-8", len(body), headers)
        if not head:
            self.wfile.write(body)

    def _send_log(self, name: str, head: bool) -> None:
        try:
            handle, _ = open_log(self.server.log_dir, name)
        except LogAccessError:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": "no such log in LOG_DIR"}, head=head)
            return
        with handle:
            converted = reference_view(handle)
            if converted is not None:  # the reference's format: the browser reads ours
                self._headers(
                    HTTPStatus.OK,
                    "text/plain; charset=utf-8",
                    len(converted),
                    {"Cache-Control": "no-store", "X-RLM-Converted-From": "reference"},
                )
                if not head:
                    self.wfile.write(converted)
                return
            size = handle.seek(0, 2)
            handle.seek(0)
            self._headers(
                HTTPStatus.OK,
                "text/plain; charset=utf-8",
                size,
                {"Cache-Control": "no-store", "Content-Disposition": "inline"},
            )
            if not head:
                # Send exactly the advertised length, even if the file grows meanwhile.
                remaining = size
                while remaining > 0:
                    chunk = handle.read(min(1 << 20, remaining))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    remaining -= len(chunk)

    def _send_static(self, path: str, head: bool) -> None:
        root = self.server.static_dir
        if path in ("/", "/index.html"):
            target = root / "index.html"
            if not target.is_file():
                body = NOT_BUILT.encode()
                self._headers(HTTPStatus.SERVICE_UNAVAILABLE, TYPES[".html"], len(body), {})
                if not head:
                    self.wfile.write(body)
                return
        else:
            found = _static_file(root, path)
            if found is None:
                self._send_json(HTTPStatus.NOT_FOUND, {"error": "not found"}, head=head)
                return
            target = found
        content_type = TYPES.get(target.suffix) or (
            mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        )
        cache = "no-cache" if target.name == "index.html" else "max-age=31536000, immutable"
        with target.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(0)
            self._headers(HTTPStatus.OK, content_type, size, {"Cache-Control": cache})
            if not head:
                shutil.copyfileobj(handle, self.wfile)


def _static_file(root: Path, path: str) -> Path | None:
    """The built asset for a URL path, only when it is a regular file inside `root`."""
    parts = [p for p in path.split("/") if p]
    if not parts or any(p in (".", "..") or p.startswith(".") or "\\" in p for p in parts):
        return None
    if "\x00" in path:
        return None
    target = root.joinpath(*parts)
    try:
        real = target.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_relative_to(root.resolve()) or not real.is_file():
        return None
    return real


def make_server(
    log_dir: str | Path,
    port: int = 0,
    *,
    token: str | None = None,
    static_dir: Path = STATIC_DIR,
) -> ViewerServer:
    """Bind the server (port 0: any free port) without starting it; raises OSError if busy."""
    root = Path(log_dir).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(errno.ENOENT, "not a directory", str(log_dir))
    return ViewerServer(root, port, token or secrets.token_urlsafe(24), static_dir)


def serve(
    log_dir: str | Path,
    port: int | None = DEFAULT_PORT,
    open_browser: bool = True,
    *,
    out: TextIO | None = None,
) -> None:
    """Serve `log_dir` until interrupted. `port=None`: DEFAULT_PORT, or any free port if taken."""
    stream = out or sys.stdout
    if port is None:
        try:
            server = make_server(log_dir, DEFAULT_PORT)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            server = make_server(log_dir, 0)
    else:
        server = make_server(log_dir, port)
    count = len(list_logs(server.log_dir))
    print(
        f"rlm view: {count} log{'s' if count != 1 else ''} in {server.log_dir}\n"
        f"rlm view: open {server.url}\n"
        "rlm view: press Ctrl+C to stop",
        file=stream,
        flush=True,
    )
    if open_browser:
        threading.Thread(target=webbrowser.open, args=(server.url,), daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
