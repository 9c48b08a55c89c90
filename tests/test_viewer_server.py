"""`rlm view`'s HTTP server: serves the app and the logs of LOG_DIR, nothing else, read-only."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm import RLM
from rlm.cli import main as cli
from rlm.logger import RLMLogger
from rlm.viewer.server import STATIC_DIR, ViewerServer, make_server

pytestmark = pytest.mark.timeout(60)

FENCE = "```"
TOKEN = "test-token-0123456789"


def record_run(log_dir: Path) -> Path:
    rlm = RLM(
        backend="scripted",
        backend_kwargs={
            "model_name": "root-model",
            "responses": [
                f"{FENCE}repl\nprint(llm_query('hi'))\n{FENCE}",
                f"{FENCE}repl\nFINAL('the answer')\n{FENCE}",
            ],
        },
        other_backends=["scripted"],
        other_backend_kwargs=[{"model_name": "sub-model", "responses": ["hello"]}],
        logger=RLMLogger(log_dir=log_dir),
    )
    with rlm:
        out = rlm.completion("some context", root_prompt="What does it say?")
    return Path(out.metadata["log_file"])  # type: ignore[index]


class Client:
    def __init__(self, server: ViewerServer) -> None:
        self.server = server

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = TOKEN,
        host: str | None = None,
        body: bytes | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            headers = {"Host": host or f"127.0.0.1:{self.server.port}"}
            if token is not None:
                headers["X-RLM-Token"] = token
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def json(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        status, _, body = self.request("GET", path, **kwargs)
        return status, json.loads(body)


@pytest.fixture
def static(tmp_path: Path) -> Path:
    root = tmp_path / "static"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text('<!doctype html><div id="root"></div>')
    (root / "assets" / "app.js").write_text("console.log(1)")
    return root


def start(log_dir: Path, static: Path) -> tuple[ViewerServer, threading.Thread]:
    server = make_server(log_dir, 0, token=TOKEN, static_dir=static)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    root = tmp_path / "logs"
    root.mkdir()
    return root


@pytest.fixture
def client(logs: Path, static: Path) -> Iterator[Client]:
    server, thread = start(logs, static)
    try:
        yield Client(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_binds_loopback_only(client: Client) -> None:
    assert client.server.server_address[0] == "127.0.0.1"
    assert client.server.url.startswith(f"http://127.0.0.1:{client.server.port}/?token=")


def test_serves_the_app(client: Client) -> None:
    status, headers, body = client.request("GET", "/", token=None)
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert b'<div id="root">' in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, body = client.request("GET", "/assets/app.js", token=None)
    assert (status, body) == (200, b"console.log(1)")
    assert headers["Content-Type"].startswith("text/javascript")
    assert client.request("GET", "/assets/missing.js")[0] == 404


def test_the_package_ships_the_built_app() -> None:
    index = (STATIC_DIR / "index.html").read_text()
    assets = re.findall(r'(?:src|href)="\./(assets/[^"]+)"', index)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        assert (STATIC_DIR / asset).is_file(), asset


def test_lists_logs_with_summaries(client: Client, logs: Path, tmp_path: Path) -> None:
    run = record_run(logs)
    (logs / "bench").mkdir()
    nested = logs / "bench" / "task1.jsonl"
    nested.write_bytes(run.read_bytes())
    (logs / "notes.txt").write_text("not a log")
    (logs / ".hidden.jsonl").write_text("{}")
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes(run.read_bytes())
    (logs / "link.jsonl").symlink_to(outside)
    status, payload = client.json("/api/logs")
    assert status == 200
    assert payload["message"] is None
    assert payload["log_dir"] == str(logs.resolve())
    names = sorted(entry["name"] for entry in payload["logs"])
    assert names == sorted([run.name, "bench/task1.jsonl"])
    entry = next(e for e in payload["logs"] if e["name"] == run.name)
    assert entry["size"] == run.stat().st_size
    summary = entry["summary"]
    assert summary["question"] == "What does it say?"
    assert summary["answer"] == "the answer"
    assert summary["stop_reason"] == "final_answer"
    assert summary["complete"] is True
    assert summary["problem"] is None
    assert set(summary["models"]) == {"root-model", "sub-model"}
    assert summary["calls"] == 3  # two root turns and one llm_query
    assert summary["input_tokens"] > 0 and summary["duration"] > 0


def test_summaries_of_damaged_logs(client: Client, logs: Path) -> None:
    lines = record_run(logs).read_text().splitlines(keepends=True)
    (logs / "cut.jsonl").write_text("".join(lines[:-1]) + lines[-1][:30])
    header = json.loads(lines[0])
    header["version"] = 42
    (logs / "future.jsonl").write_text(json.dumps(header) + "\n" + "".join(lines[1:]))
    (logs / "junk.jsonl").write_text("no json here\n\x00\x01\n")
    (logs / "empty.jsonl").write_text("")
    _, payload = client.json("/api/logs")
    by_name = {e["name"]: e["summary"] for e in payload["logs"]}
    assert by_name["cut.jsonl"]["complete"] is False
    assert by_name["cut.jsonl"]["question"] == "What does it say?"
    assert "version 42" in by_name["future.jsonl"]["problem"]
    assert "not a trajectory" in by_name["junk.jsonl"]["problem"]
    assert by_name["empty.jsonl"]["problem"]


def test_serves_a_log_file(client: Client, logs: Path) -> None:
    run = record_run(logs)
    status, headers, body = client.request("GET", f"/api/logs/{run.name}")
    assert status == 200
    assert body == run.read_bytes()
    assert int(headers["Content-Length"]) == len(body)
    assert headers["Cache-Control"] == "no-store"
    status, headers, body = client.request("HEAD", f"/api/logs/{run.name}")
    assert (status, body) == (200, b"")
    assert int(headers["Content-Length"]) == run.stat().st_size
    # a token in the query works too (a link opened directly)
    status, _, body = client.request("GET", f"/api/logs/{run.name}?token={TOKEN}", token=None)
    assert status == 200 and body == run.read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/api/logs/../secret.jsonl",
        "/api/logs/%2e%2e/secret.jsonl",
        "/api/logs/..%2fsecret.jsonl",
        "/api/logs/%2Fetc%2Fpasswd",
        "/api/logs//etc/passwd",
        "/api/logs/sub/../../secret.jsonl",
        "/api/logs/link.jsonl",
        "/api/logs/linkdir/inner.jsonl",
        "/api/logs/readme.txt",
        "/api/logs/.hidden.jsonl",
        "/api/logs/missing.jsonl",
        "/api/logs/",
        "/api/logs/a%00b.jsonl",
        "/../secret.jsonl",
        "/%2e%2e/secret.jsonl",
        "/assets/../../secret.jsonl",
        "/assets/%2e%2e/%2e%2e/secret.jsonl",
        "/etc/passwd",
        "/api/other",
    ],
)
def test_refuses_anything_outside_log_dir(
    client: Client, logs: Path, tmp_path: Path, path: str
) -> None:
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"type": "header", "secret": "do not serve"}\n')
    (logs / "sub").mkdir()
    (logs / "link.jsonl").symlink_to(secret)
    outside_dir = tmp_path / "elsewhere"
    outside_dir.mkdir()
    (outside_dir / "inner.jsonl").write_text('{"secret": "do not serve"}\n')
    (logs / "linkdir").symlink_to(outside_dir, target_is_directory=True)
    (logs / "readme.txt").write_text("secret: do not serve")
    (logs / ".hidden.jsonl").write_text('{"secret": "do not serve"}\n')
    status, _, body = client.request("GET", path)
    assert status in (403, 404)
    assert b"do not serve" not in body
    _, payload = client.json("/api/logs")
    assert payload["logs"] == []


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_read_only(client: Client, logs: Path, method: str) -> None:
    run = record_run(logs) if method == "PUT" else None
    path = f"/api/logs/{run.name}" if run else "/api/logs"
    before = run.read_bytes() if run else b""
    status, headers, _ = client.request(method, path, body=b"{}")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    if run:
        assert run.read_bytes() == before


def test_wants_the_token(client: Client) -> None:
    assert client.request("GET", "/api/logs", token=None)[0] == 403
    assert client.request("GET", "/api/logs", token="wrong")[0] == 403
    assert client.request("GET", "/api/logs?token=wrong", token=None)[0] == 403
    assert client.request("GET", "/api/logs")[0] == 200


def test_refuses_foreign_host_headers(client: Client) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 must get nothing."""
    port = client.server.port
    assert client.request("GET", "/api/logs", host=f"evil.example:{port}")[0] == 403
    assert client.request("GET", "/", host="evil.example")[0] == 403
    assert client.request("GET", "/api/logs", host=f"localhost:{port}")[0] == 200


def test_empty_dir_says_so(client: Client, logs: Path) -> None:
    status, payload = client.json("/api/logs")
    assert status == 200
    assert payload["logs"] == []
    assert "No trajectory logs" in payload["message"]
    assert str(logs.resolve()) in payload["message"]


def test_app_not_built_is_explained(logs: Path, tmp_path: Path) -> None:
    server, thread = start(logs, tmp_path / "no-static")
    try:
        status, _, body = Client(server).request("GET", "/", token=None)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert status == 503
    assert b"scripts/build_visualizer.sh" in body


def test_rlm_view_prints_the_url_and_serves(logs: Path) -> None:
    record_run(logs)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlm.cli", "view", str(logs), "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = ""
        for _ in range(5):
            match = re.search(r"(http://127\.0\.0\.1:(\d+)/\?token=(\S+))", proc.stdout.readline())
            if match:
                url, port, token = match.group(1), int(match.group(2)), match.group(3)
                break
        assert url, "no URL printed"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", f"/api/logs?token={token}")
        response = conn.getresponse()
        assert response.status == 200
        assert len(json.loads(response.read())["logs"]) == 1
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_rlm_view_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["view", str(tmp_path / "missing"), "--no-browser"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli(["view", str(tmp_path), "--port", str(port), "--no-browser"]) == 2
    assert "in use" in capsys.readouterr().err
    assert cli(["view", str(tmp_path), "--port", "70000", "--no-browser"]) == 2


def test_log_files_are_opened_without_following_symlinks(logs: Path, tmp_path: Path) -> None:
    """Even a name that was listed is re-checked when opened (the file may have been swapped)."""
    from rlm.viewer.logs import LogAccessError, list_logs, open_log

    run = record_run(logs)
    assert [log.name for log in list_logs(logs)] == [run.name]
    secret = tmp_path / "secret.jsonl"
    secret.write_text("secret")
    run.unlink()
    os.symlink(secret, run)
    with pytest.raises(LogAccessError):
        open_log(logs, run.name)
