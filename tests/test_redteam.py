"""The red team's reproducers (issue #18), run against the real `process` and `docker`
environments. Each test is the attack as it was reported; it passes only while the attack
does no harm."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sandbox_kinds import DAEMON, require_confinement, require_kind

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
    "chan = next(o for o in gc.get_objects() if type(o).__name__ == 'HostLink').out_fd\n"
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


# ------------------------------------------- 4: decoding sandbox data costs the host little

AMPLIFY = FIND_CHANNEL + (
    "import json\n"
    "text = ('{\"x\":[' + '[],' * 13_000_000 + '[]]}').encode()\n"
    "put(struct.pack('>I', len(text) | 0x80000000) + text)\n"
    "marker = json.dumps({'type': '$json'}).encode()\n"
    "put(struct.pack('>I', len(marker)) + marker)\n"
    "time.sleep(30)\n"
)


def _host_peak_rss_reset() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak RSS (VmHWM)
        f.write("5")


def _host_peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs clear_refs")
def test_a_json_blob_of_empty_lists_does_not_amplify_into_host_memory(
    sandbox: IsolatedEnv,
) -> None:
    """40 MB of `[],` as a `$json` message once cost the host 1 GB of RSS. Now it is refused
    before parsing: the sandbox broke the protocol and is killed; the host's peak RSS grows by
    a small multiple of the bytes, not by the 25x the values would take."""
    before = _rss()
    _host_peak_rss_reset()
    with pytest.raises(SandboxError) as refused:
        sandbox.execute(AMPLIFY)
    growth = _host_peak_rss() - before
    assert growth < 250 * 2**20, f"host peak RSS grew by {growth / 2**20:.0f} MiB"
    assert "JSON values" in str(refused.value)


def test_a_frame_of_empty_lists_is_refused_before_parsing() -> None:
    """The same bound holds for every frame (LMHandler requests included)."""
    from rlm.errors import ProtocolError
    from rlm.runtime.channel import decode_payload
    from rlm.runtime.jsondata import MAX_JSON_VALUES

    body = b'{"x":[' + b"[]," * MAX_JSON_VALUES + b"[]]}"
    with pytest.raises(ProtocolError, match="JSON values"):
        decode_payload(body)
    fine = b'{"x":[' + b"1," * 1000 + b"1]}"
    assert len(decode_payload(fine)["x"]) == 1001


# ------------------------------------ 1: nothing a cell starts outlives its cell or close()

# The daemon of sandbox_kinds.DAEMON, after clearing the worker's child-subreaper flag, so that
# the orphan goes to init: outside the worker's process group and outside its tree.
ESCAPING_DAEMON = (
    "import ctypes\n"
    "assert ctypes.CDLL(None).prctl(36, 0, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER off\n"
) + DAEMON


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def test_a_daemon_that_cleared_the_subreaper_flag_dies_with_its_cell(
    sandbox: IsolatedEnv,
) -> None:
    result = sandbox.execute(ESCAPING_DAEMON)
    assert result.error is None, result.stderr
    assert "process(es) the cell left running were killed" in result.stderr
    check = sandbox.execute(
        "import os\nprint(os.path.exists(f'/proc/{dm_pid}') and "
        "open(f'/proc/{dm_pid}/stat').read().split(')')[-1].split()[0] not in 'ZX')"
    )
    assert check.stdout == "False\n", check.stderr


def test_nothing_a_cell_started_is_alive_after_close() -> None:
    """A thread of a cell starts a daemon after the cell has ended (so no cell's end sees
    it), after the subreaper flag was cleared: close() kills it with the cgroup."""
    require_confinement()
    from rlm.environments.process import ProcessREPL

    env = ProcessREPL(timeout=30)
    pid_file = env._paths[0] / "work" / "late.pid"
    try:
        result = env.execute(ESCAPING_DAEMON)
        assert result.error is None, result.stderr
        started = env.execute(
            "import subprocess, sys, threading, time\n"
            "def later():\n"
            "    time.sleep(0.5)\n"
            "    p = subprocess.Popen([sys.executable, '-c', dm_code], stdout=subprocess.PIPE)\n"
            "    open('late.pid', 'w').write(p.stdout.readline().decode())\n"
            "threading.Thread(target=later).start()\n"
        )
        assert started.error is None, started.stderr
        for _ in range(200):
            if pid_file.exists() and pid_file.read_text().strip():
                break
            time.sleep(0.05)
        late = int(pid_file.read_text())
        assert pid_alive(late)
    finally:
        env.cleanup()
    assert not pid_alive(late)
    assert env.confinement["cgroup"] and "unavailable" not in str(env.confinement["cgroup"])


# ------------------------------------------------------------ 2: a uid per live sandbox


def test_concurrent_sandboxes_cannot_read_or_signal_each_other() -> None:
    require_confinement()
    from rlm.environments.process import ProcessREPL

    envs = [ProcessREPL(timeout=30) for _ in range(3)]
    try:
        uids = [env.worker_info["uid"] for env in envs]
        assert len(set(uids)) == 3 and 0 not in uids
        for env, other in zip(envs, envs[1:] + envs[:1], strict=True):
            target = other.worker_info["pid"]
            probe = env.execute(
                "import os, signal\n"
                "outcome = []\n"
                f"for path in ('/proc/{target}/mem', '/proc/{target}/environ'):\n"
                "    try:\n"
                "        open(path, 'rb').read(1)\n"
                "        outcome.append('read')\n"
                "    except PermissionError:\n"
                "        outcome.append('denied')\n"
                "try:\n"
                f"    os.kill({target}, signal.SIGCONT)\n"
                "    outcome.append('signalled')\n"
                "except PermissionError:\n"
                "    outcome.append('denied')\n"
                "print(outcome)\n"
            )
            assert probe.stdout == "['denied', 'denied', 'denied']\n", probe.stderr
    finally:
        for env in envs:
            env.cleanup()


# ----------------------------------- 5: memory bounds the sandbox; shared memory is removed

CHILDREN_400MB = (
    "import subprocess, sys, time\n"
    "code = \"b = bytearray(b'x') * (400 * 2**20)\\nprint('ok', flush=True)\\n"
    'import time\\ntime.sleep(120)"\n'
    "kids = []\n"
    "for _ in range(3):\n"
    "    p = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE)\n"
    "    p.stdout.readline()\n"
    "    kids.append(p)\n"
    "time.sleep(1)\n"
    "print(sum(p.poll() is None for p in kids))\n"
)


def test_memory_mb_bounds_the_sandbox_not_each_process() -> None:
    """Three children of 400 MB each under memory_mb=512 (each fits its own RLIMIT_AS): the
    sandbox as a whole may hold memory_mb + 256 MiB, so at most one stays resident."""
    require_confinement()
    from rlm.environments.process import ProcessREPL

    env = ProcessREPL(timeout=60, memory_mb=512)
    try:
        result = env.execute(CHILDREN_400MB)
        assert result.error is None, result.stderr
        assert int(result.stdout) <= 1
        assert env.execute("print(1)").stdout == "1\n"  # the worker itself lives on
    finally:
        env.cleanup()


SHARED_MEMORY = (
    "import ctypes, os\n"
    "with open('/dev/shm/rlm-redteam', 'wb') as f:\n"
    "    f.write(b'x' * (32 * 2**20))\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "shm_id = libc.shmget(0, 16 * 2**20, 0o1000 | 0o600)  # IPC_PRIVATE, IPC_CREAT\n"
    "assert shm_id >= 0, ctypes.get_errno()\n"
    "print(shm_id)\n"
)


def test_shared_memory_does_not_outlive_the_sandbox() -> None:
    require_confinement()
    from rlm.environments.process import ProcessREPL

    env = ProcessREPL(timeout=30)
    try:
        result = env.execute(SHARED_MEMORY)
        assert result.error is None, result.stderr
        shm_id = int(result.stdout)
        uid = env.worker_info["uid"]
        assert os.stat("/dev/shm/rlm-redteam").st_uid == uid
    finally:
        env.cleanup()
    assert not os.path.exists("/dev/shm/rlm-redteam")
    with open("/proc/sysvipc/shm") as f:
        ids = [line.split()[1] for line in f.read().splitlines()[1:]]
    assert str(shm_id) not in ids


# ------------------------- 6: a frame forged on the private channel (a limit, pinned here)

FORGE_RESULT = FIND_CHANNEL + (
    "import json, sys\n"
    "frame = sys._getframe()\n"
    "while not isinstance(frame.f_locals.get('message'), dict):\n"
    "    frame = frame.f_back\n"
    "seq = frame.f_locals['message']['seq']  # the host's request for this cell\n"
    "forged = {'type': 'result', 'seq': seq, 'final': True, 'final_value': 'FORGED',\n"
    "          'stdout': 'y' * 3_000_000, 'stderr': '', 'error': None, 'locals': {},\n"
    "          'duration': -1, 'timed_out': False}\n"
    "body = json.dumps(forged).encode()\n"
    "put(struct.pack('>I', len(body)) + body)\n"
    "time.sleep(0.5)\n"
)


def test_a_forged_result_frame_is_no_more_than_the_cells_own_answer(
    sandbox: IsolatedEnv,
) -> None:
    """Code that finds the channel descriptor can write a `result` for its own cell: that is
    the cell's answer, as FINAL("FORGED") would be (SECURITY.md states this limit). What the
    host takes from it stays within its caps, and the next cell's reply is its own."""
    forged = sandbox.execute(FORGE_RESULT)
    assert forged.final_answer == "FORGED"
    assert isinstance(sandbox, IsolatedEnv)
    assert len(forged.stdout) <= sandbox.capture_chars
    after = sandbox.execute("print('mine')")
    assert (after.stdout, after.final_answer) == ("mine\n", None)
