"""The red team's reproducers (issue #18), run against the real `process` and `docker`
environments. Each test is the attack as it was reported; it passes only while the attack
does no harm."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from sandbox_kinds import require_kind

from rlm.environments.isolated import IsolatedEnv
from rlm.errors import SandboxError

pytestmark = pytest.mark.timeout(180)

KINDS = ["process", "docker"]


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
