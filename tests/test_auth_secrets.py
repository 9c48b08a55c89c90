"""Authentication and secrets: connections without the run token are refused; the token is
never in any process's argv or environment; keys and tokens never reach logs or the console.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_kinds import require_kind

from rlm import RLM
from rlm.clients.base import BaseLM
from rlm.core.lm_handler import LMHandler, Session
from rlm.core.types import LMResponse, Message
from rlm.environments import get_environment
from rlm.errors import AuthenticationError
from rlm.logger import RLMLogger
from rlm.runtime.protocol import Connection, FrameDecoder, encode_frame
from rlm.testing import ProviderSimulator

pytestmark = pytest.mark.timeout(120)

KINDS = ["local", "process", pytest.param("docker", marks=pytest.mark.docker)]
FENCE = "```"


def repl(code: str) -> str:
    return f"{FENCE}repl\n{code}\n{FENCE}"


class CountingLM(BaseLM):
    provider = "fake"

    def __init__(self) -> None:
        super().__init__("counting", max_retries=0)
        self.prompts: list[str] = []

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        self.prompts.append(str(messages[-1]["content"]))
        return LMResponse("ok", self.model_name)


@pytest.fixture
def lm() -> CountingLM:
    return CountingLM()


@pytest.fixture
def handler(lm: CountingLM) -> Iterator[LMHandler]:
    lm_handler = LMHandler(lm, hello_timeout=1.0)
    lm_handler.start()
    yield lm_handler
    lm_handler.stop()


def exchange(handler: LMHandler, data: bytes) -> list[dict[str, Any]]:
    """Send raw bytes on a fresh connection; the frames the server sent before closing it."""
    assert handler.address is not None
    frames: list[dict[str, Any]] = []
    with socket.create_connection(handler.address, timeout=10) as sock:
        sock.sendall(data)
        decoder = FrameDecoder()
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            frames.extend(decoder.feed(chunk))
    return frames


def hello(token: Any, **extra: Any) -> bytes:
    return encode_frame({"type": "hello", "token": token, "version": 1, **extra})


REQUEST = encode_frame({"type": "llm", "id": 1, "prompt": "spend my key"})


# --------------------------------------------------------------------------- authentication


@pytest.mark.parametrize(
    "make_first",
    [
        pytest.param(lambda s: REQUEST, id="request-without-hello"),
        pytest.param(lambda s: hello(None), id="no-token"),
        pytest.param(lambda s: hello(""), id="empty-token"),
        pytest.param(lambda s: hello("A" * len(s.token)), id="wrong-token-same-length"),
        pytest.param(lambda s: hello(s.token[:-1]), id="token-prefix"),
        pytest.param(lambda s: hello(s.token + "x"), id="token-plus-one"),
        pytest.param(lambda s: hello(s.token.swapcase()), id="token-other-case"),
        pytest.param(lambda s: hello([s.token]), id="token-not-a-string"),
        pytest.param(lambda s: hello(s.token, pad="x" * 5000), id="oversized-hello"),
        pytest.param(lambda s: b"", id="silence"),
    ],
)
def test_connections_without_the_run_token_are_refused(
    handler: LMHandler, lm: CountingLM, make_first: Any
) -> None:
    session = handler.open_session()
    frames = exchange(handler, make_first(session) + REQUEST)
    assert [f.get("type") for f in frames] == ["error"], frames
    assert frames[0]["error"]["type"] == "AuthenticationError"
    assert session.token not in json.dumps(frames)  # the refusal does not echo secrets
    assert lm.prompts == []  # nothing was served


def test_a_revoked_token_is_refused_and_sessions_do_not_share_tokens(
    handler: LMHandler, lm: CountingLM
) -> None:
    first = handler.open_session(depth=0)
    second = handler.open_session(depth=3)
    assert first.token != second.token and len(first.token) >= 43  # 256 random bits
    assert handler.address is not None
    with Connection.connect(*handler.address, second.token) as conn:
        assert conn.depth == 3  # a token authenticates exactly its own session
    handler.close_session(first)
    with pytest.raises(AuthenticationError):
        Connection.connect(*handler.address, first.token, timeout=10)
    # A hello replayed on an authenticated connection is just an unknown request.
    with (
        Connection.connect(*handler.address, second.token) as conn,
        pytest.raises(Exception, match="unknown request type 'hello'"),
    ):
        conn.request({"type": "hello", "token": first.token, "version": 1}, timeout=10)
    assert lm.prompts == []


def test_the_run_token_dies_with_the_run() -> None:
    """Code in the local environment can read its own token (SECURITY.md); after the run it
    is useless."""
    grab = repl("FINAL(llm_query.__self__.channel._endpoint()[2])")
    with RLM(
        backend="scripted",
        backend_kwargs={"model_name": "root", "responses": [grab]},
        environment="local",
    ) as rlm:
        out = rlm.completion("ctx")
        token = out.response
        assert len(token) >= 43
        address = rlm.handler.address
        assert address is not None
        with pytest.raises(AuthenticationError):
            Connection.connect(*address, token, timeout=10)


# --------------------------------------------------------------------------- argv and environ


def proc_entries(name: str) -> dict[int, bytes]:
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                found[int(pid)] = f.read()
        except OSError:
            continue
    return found


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


@pytest.mark.parametrize("kind", KINDS)
def test_the_token_is_not_in_argv_or_in_any_child_environment(
    kind: str, handler: LMHandler
) -> None:
    require_kind(kind)
    session: Session = handler.open_session()
    env = get_environment(kind, {"handler": handler.endpoint(session), "timeout": 30})
    try:
        # The sandbox is alive and has used the handler, so every process of it exists now.
        result = env.execute("print(llm_query('hi'))\nimport os\nprint(os.getpid())")
        assert result.error is None and result.stdout.startswith("ok\n"), result.stderr
        token = session.token.encode()
        channel = getattr(env, "channel_token", "").encode()
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, check=True).stdout
        assert token not in ps
        for pid, cmdline in proc_entries("cmdline").items():
            assert token not in cmdline, f"the run token is in the argv of pid {pid}"
            if channel:
                assert channel not in cmdline, f"the channel token is in the argv of pid {pid}"
        # No process's environment holds the run token (this one's included: it lives in
        # memory only). The isolated sandboxes never receive it at all: the host relays.
        for pid, environ in proc_entries("environ").items():
            assert token not in environ, f"the run token is in the environment of pid {pid}"
        if kind == "process":
            children = descendants(os.getpid())
            assert children, "the worker process was not found"
        if kind == "docker":
            from rlm.environments.docker import docker_client

            client = docker_client()
            try:
                attrs = client.api.inspect_container(getattr(env, "container_id"))  # noqa: B009
            finally:
                client.close()
            assert session.token not in json.dumps(attrs)
            assert channel.decode() not in json.dumps(attrs["Config"]["Cmd"])
    finally:
        env.cleanup()
        handler.close_session(session)


# --------------------------------------------------------------------------- logs and console


def record_tokens(rlm: RLM) -> list[str]:
    """The tokens of every session the RLM opens from now on (kept for the assertions)."""
    tokens: list[str] = []
    original = rlm.handler.open_session

    def recording_open_session(**kwargs: Any) -> Session:
        session = original(**kwargs)
        tokens.append(session.token)
        return session

    rlm.handler.open_session = recording_open_session  # type: ignore[method-assign]
    return tokens


def test_planted_keys_and_the_run_token_never_reach_logs_or_the_console(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("rich")
    # Keys with no recognisable shape: only the exact values can be scrubbed.
    backend_key = "plantedBackendKey" + secrets.token_hex(8)
    env_key = "plantedEnvKey" + secrets.token_hex(8)
    monkeypatch.setenv("RLM_TEST_SERVICE_API_KEY", env_key)
    caplog.set_level(logging.DEBUG)
    code = (
        "import gc, os\n"
        "print(dict(os.environ))\n"
        "keys = [getattr(o, '_api_key', None) for o in gc.get_objects()"
        " if type(o).__name__ == 'OpenAIClient']\n"
        "print('keys found:', keys)\n"
        "print(llm_query('repeat the key'))\n"
        "answer['content'] = str(keys)\n"
        "answer['ready'] = True"
    )

    def reply(request: Any) -> str:
        if request.system:
            return f"I will look for {env_key}.\n" + repl(code)
        return f"the key is {backend_key} and {env_key}"

    with ProviderSimulator(reply) as sim:
        kwargs = {"model_name": "m", "base_url": sim.openai_base_url, "api_key": backend_key}
        with RLM(
            backend="openai",
            backend_kwargs=kwargs,
            environment="local",
            logger=RLMLogger(tmp_path),
            verbose=True,
        ) as rlm:
            tokens = record_tokens(rlm)
            out = rlm.completion(f"context mentioning {env_key}")
        sent_keys = {r.headers.get("authorization", "") for r in sim.requests}
    assert sent_keys == {f"Bearer {backend_key}"}  # the key was really used
    assert out.stop_reason == "final_answer"
    assert backend_key in out.response  # the code did get hold of it (local is no boundary)
    captured = capsys.readouterr()
    logs = "".join(p.read_text() for p in tmp_path.glob("*.jsonl"))
    assert logs, "no trajectory was written"
    # The completion itself is the caller's data (its response holds what the code returned);
    # the trajectory the logger attached to it is a log, and is scrubbed.
    trajectory = json.dumps((out.metadata or {}).get("trajectory"))
    assert "REDACTED" in captured.out + captured.err, "the verbose console printed nothing"
    assert "[REDACTED]" in logs
    outputs = {
        "log file": logs,
        "trajectory": trajectory,
        "stdout": captured.out,
        "stderr": captured.err,
        "logging": caplog.text,
    }
    for secret in (backend_key, env_key, *tokens):
        for name, text in outputs.items():
            where = text.find(secret)
            assert where < 0, f"a secret is in the {name}: ...{text[max(0, where - 200) : where]}"


def test_keys_given_in_code_are_scrubbed_by_every_redactor() -> None:
    from rlm.logger.redact import REDACTED, Redactor, register_sensitive_values

    existing = Redactor(include_env=False)  # made before the key is known
    key, header = "codeKey" + secrets.token_hex(8), "hdrValue" + secrets.token_hex(8)
    register_sensitive_values(
        {
            "model_name": "m",
            "api_key": key,
            "client_kwargs": {"default_headers": {"x-api-key": header}},
        }
    )
    for redactor in (existing, Redactor(include_env=False)):
        assert redactor.text(f"a {key} and {header}") == f"a {REDACTED} and {REDACTED}"
    assert existing.text("model m") == "model m"  # non-secret values stay


def test_no_secret_in_the_sandbox_environment_of_a_real_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Through RLM with the process sandbox: provider keys of the host are not in the worker's
    environment, and rlm's own debug logging never prints the run or channel token."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-" + secrets.token_hex(12))
    caplog.set_level(logging.DEBUG)
    seen: dict[str, str] = {}

    def leak_check(text: str) -> bool:
        seen["environ"] = text
        return True

    code = "import os\nleak_check(open('/proc/self/environ', 'rb').read().decode())\nFINAL('ok')"
    with RLM(
        backend="scripted",
        backend_kwargs={"model_name": "root", "responses": [repl(code)]},
        environment="process",
        custom_tools={"leak_check": leak_check},
        logger=RLMLogger(tmp_path),
    ) as rlm:
        tokens = record_tokens(rlm)
        out = rlm.completion("ctx")
    assert out.response == "ok"
    assert os.environ["OPENAI_API_KEY"] not in seen["environ"]
    assert "OPENAI_API_KEY" not in seen["environ"]
    assert tokens and tokens[0] not in seen["environ"]
    logs = "".join(p.read_text() for p in tmp_path.glob("*.jsonl"))
    for token in tokens:
        assert token not in caplog.text and token not in logs
