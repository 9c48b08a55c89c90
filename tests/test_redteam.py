"""The red team's reproducers (issue #18), run against the real `process` and `docker`
environments. Each test is the attack as it was reported; it passes only while the attack
does no harm."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from sandbox_kinds import require_kind

from rlm.clients.base import BaseLM
from rlm.core.lm_handler import LMHandler
from rlm.core.types import LMResponse, Message
from rlm.environments.isolated import IsolatedEnv
from rlm.errors import AuthenticationError, SandboxError
from rlm.runtime.protocol import Connection

pytestmark = pytest.mark.timeout(180)

KINDS = ["process", pytest.param("docker", marks=pytest.mark.docker)]


class EchoLM(BaseLM):
    provider = "fake"

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        return LMResponse(text=f"echo:{messages[-1]['content']}", model=self.model_name)


@pytest.fixture
def handler() -> Iterator[LMHandler]:
    lm_handler = LMHandler(EchoLM("echo", max_retries=0))
    lm_handler.start()
    yield lm_handler
    lm_handler.stop()


def make_env(kind: str, **kwargs: Any) -> IsolatedEnv:
    require_kind(kind)
    if kind == "docker":
        from rlm.environments.docker import DockerREPL

        return DockerREPL(**kwargs)
    from rlm.environments.process import ProcessREPL

    return ProcessREPL(**kwargs)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sandbox(kind: str) -> Iterator[IsolatedEnv]:
    env = make_env(kind, timeout=30)
    yield env
    env.cleanup()


# Cell code that finds the worker's private channel descriptor (any object in the worker's
# memory is reachable from a cell) and writes raw frames to it.
FIND_CHANNEL = (
    "import gc, os, struct, signal, time\n"
    "chan = next(o for o in gc.get_objects() if type(o).__name__ == 'FrameWriter').fd\n"
    "def put(data):\n"
    "    view = memoryview(data)\n"
    "    while view:\n"
    "        view = view[os.write(chan, view):]\n"
)


# -------------------------------------------------------------- 3: the timeout is hard


def test_chunks_on_the_channel_cannot_push_the_cell_deadline_out(kind: str) -> None:
    """Ignore SIGALRM, then keep the host's progress window open with a "more" blob chunk
    every half second, for far longer than timeout + 2 * kill_grace: the host kills the
    sandbox at its hard deadline instead of waiting for the cell."""
    env = make_env(kind, timeout=2, kill_grace=1)
    try:
        code = FIND_CHANNEL + (
            "signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
            "chunk = struct.pack('>I', 1 | 0x80000000 | 0x40000000) + b'x'\n"
            "for _ in range(120):\n"
            "    put(chunk)\n"
            "    time.sleep(0.5)\n"
        )
        with pytest.raises(SandboxError, match="did not stop within its timeout"):
            env.execute(code)
    finally:
        env.cleanup()


# ------------------------------------------------- 7: a connection flood starves nobody

FLOOD = """
import subprocess, sys
flood = '''
import socket, sys, time
held = []
for _ in range(220):
    try:
        held.append(socket.create_connection(("127.0.0.1", PORT), timeout=5))
    except OSError:
        pass
print(len(held), flush=True)
time.sleep(120)
'''
floods = [subprocess.Popen([sys.executable, '-c', flood.replace('PORT', str(PORT))],
                           stdout=subprocess.PIPE) for _ in range(5)]
opened = sum(int(p.stdout.readline() or 0) for p in floods)
print(opened)
print(llm_query('first'))
print(llm_query('second'))
"""


def test_a_connection_flood_from_the_sandbox_does_not_starve_its_own_calls(
    handler: LMHandler,
) -> None:
    """5 processes x 220 idle connections to the handler's port, then the same run's first
    llm_query: it is answered, because idle connections without a hello give way."""
    from rlm.environments.process import ProcessREPL

    assert handler.address is not None
    env = ProcessREPL(handler=handler.endpoint(handler.open_session()), timeout=60)
    try:
        result = env.execute(FLOOD.replace("PORT", str(handler.address[1])))
    finally:
        env.cleanup()
    assert result.error is None, result.stderr
    opened, first, second = result.stdout.splitlines()
    assert int(opened) >= 1000  # the flood really happened
    assert (first, second) == ("echo:first", "echo:second")


def test_one_session_cannot_take_every_connection(handler: LMHandler) -> None:
    """A session's connections are capped, so another session still gets in."""
    assert handler.address is not None
    host, port = handler.address
    greedy = handler.open_session()
    mine = handler.open_session()
    held = []
    try:
        with pytest.raises(AuthenticationError, match="at most"):
            for _ in range(handler.max_session_connections + 1):
                held.append(Connection.connect(host, port, greedy.token))
        assert len(held) == handler.max_session_connections
        with Connection.connect(host, port, mine.token) as conn:
            assert conn.request({"type": "ping"}, timeout=10) == {}
    finally:
        for conn in held:
            conn.close()
