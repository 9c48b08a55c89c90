"""The escape checklist (E1-E20 of the security notes) as parametrised tests.

Every payload runs in every environment. The host plants canaries first: an environment
variable, a file only the host user may read, a world-readable file, a TCP listener on the
host's loopback (the "network"), and the LMHandler session token. A payload uses its technique
to reach `os`, host objects, frames or the network, and prints whatever it finds; the test
looks for the canary values in everything the cell returned.

- "docker": no canary is ever disclosed, and the network is unreachable.
- "process": the host's environment, its private files and the session token are never
  disclosed; world-readable files and the network are (documented in SECURITY.md).
- "local": not a boundary. The test records which escapes work and pins the list that
  SECURITY.md publishes, so the document cannot drift from the behaviour.

Runaway and resource escapes (E15, E16) are bounded here and covered in depth by
tests/test_runaway.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sandbox_kinds import require_kind

from rlm.clients.base import BaseLM
from rlm.core.lm_handler import LMHandler, Session
from rlm.core.types import LMResponse, Message
from rlm.environments import get_environment
from rlm.environments.base import BaseEnv
from rlm.errors import SandboxError

pytestmark = pytest.mark.timeout(300)

KINDS = ["local", "process", pytest.param("docker", marks=pytest.mark.docker)]
ISOLATED = ["process", pytest.param("docker", marks=pytest.mark.docker)]
SECURITY_MD = Path(__file__).resolve().parent.parent / "SECURITY.md"

# What works in the in-process environment (kept in sync with SECURITY.md by a test below).
LOCAL_ESCAPES_THAT_WORK = frozenset(
    {
        "E1", "E2", "E3", "E4", "E5", "E6", "E7", "E8", "E9", "E10", "E11", "E12", "E13",
        "E14", "E15", "E16", "E18", "E19", "E20",
    }
)  # fmt: skip


# ------------------------------------------------------------------------------ canaries


@dataclass
class Canaries:
    """Values planted on the host that no sandbox may disclose (each starts "rlmcanary")."""

    env_name: str
    env_value: str
    private_path: str
    private_value: str
    public_path: str
    public_value: str
    net_port: int
    net_value: str
    net_hits: list[str] = field(default_factory=list)

    def found(self, text: str, token: str) -> set[str]:
        values = {
            "env": self.env_value,
            "private": self.private_value,
            "public": self.public_value,
            "net": self.net_value,
            "token": token,
        }
        return {label for label, value in values.items() if value in text}


def _serve_banner(server: socket.socket, banner: bytes, hits: list[str]) -> None:
    while True:
        try:
            conn, peer = server.accept()
        except OSError:
            return
        hits.append(str(peer))
        with conn, contextlib.suppress(OSError):
            conn.sendall(banner)


@pytest.fixture(scope="module")
def canaries() -> Iterator[Canaries]:
    root = Path(tempfile.mkdtemp(prefix="rlm-canary-"))
    os.chmod(root, 0o755)
    private, public = root / "private.txt", root / "public.txt"
    values = {name: f"rlmcanary-{name}-{secrets.token_hex(8)}" for name in ("env", "p", "w", "n")}
    private.write_text(values["p"])
    os.chmod(private, 0o600)
    public.write_text(values["w"])
    os.chmod(public, 0o644)
    env_name = "RLM_ESCAPE_CANARY_SECRET"
    old = os.environ.get(env_name)
    os.environ[env_name] = values["env"]
    server = socket.create_server(("127.0.0.1", 0))
    planted = Canaries(
        env_name,
        values["env"],
        str(private),
        values["p"],
        str(public),
        values["w"],
        server.getsockname()[1],
        values["n"],
    )
    threading.Thread(
        target=_serve_banner,
        args=(server, values["n"].encode(), planted.net_hits),
        daemon=True,
    ).start()
    try:
        yield planted
    finally:
        server.close()
        if old is None:
            os.environ.pop(env_name, None)
        else:
            os.environ[env_name] = old
        shutil.rmtree(root, ignore_errors=True)


class CountingLM(BaseLM):
    provider = "fake"

    def __init__(self) -> None:
        super().__init__("counting", max_retries=0)
        self.prompts: list[str] = []

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        self.prompts.append(str(messages[-1]["content"]))
        return LMResponse("ok", self.model_name)


@pytest.fixture(scope="module")
def lm() -> CountingLM:
    return CountingLM()


@pytest.fixture(scope="module")
def handler(lm: CountingLM) -> Iterator[LMHandler]:
    lm_handler = LMHandler(lm)
    lm_handler.start()
    yield lm_handler
    lm_handler.stop()


# ------------------------------------------------------------------------------ payloads

HELPERS = r'''
def _leak(ns):
    """Read every canary through an `os`-like namespace (a module's dict)."""
    got = []
    env = ns.get("environ")
    got.append(repr(dict(env)) if env is not None else "no environ")
    for path in (@PRIVATE@, @PUBLIC@):
        try:
            fd = ns["open"](path, ns["O_RDONLY"])
            try:
                got.append(ns["read"](fd, 4096).decode("utf-8", "replace"))
            finally:
                ns["close"](fd)
        except Exception as exc:
            got.append(f"{path}: {type(exc).__name__}")
    print(got)


def _hunt(objects):
    """Print secret-looking attributes one or two hops from these objects."""
    seen = []
    names = ("token", "_token", "api_key", "_api_key", "handler", "_endpoint", "channel")
    for obj in objects:
        for name in names:
            try:
                value = getattr(obj, name)
            except Exception:
                continue
            seen.append(f"{type(obj).__name__}.{name}={value!r}")
            for inner in ("token", "_endpoint", "_api_key"):
                try:
                    seen.append(f"  .{inner}={getattr(value, inner)!r}")
                except Exception:
                    pass
    print(seen)
'''

PAYLOADS: dict[str, str] = {
    # Walk from any literal to object.__subclasses__() and on to os._wrap_close's globals.
    "E1": """
ns = None
for cls in ().__class__.__base__.__subclasses__():
    if cls.__name__ == "_wrap_close":
        ns = cls.__init__.__globals__
_leak(ns)
""",
    # The same walk to warnings.catch_warnings, then its module's __builtins__.__import__.
    "E2": """
cw = [c for c in ().__class__.__mro__[-1].__subclasses__() if c.__name__ == "catch_warnings"][0]
b = cw()._module.__builtins__
imp = b["__import__"] if isinstance(b, dict) else b.__import__
_leak(vars(imp("os")))
""",
    # BuiltinImporter.load_module("posix").
    "E3": """
import warnings
warnings.simplefilter("ignore")
bi = [c for c in object.__subclasses__() if c.__name__ == "BuiltinImporter"][0]
_leak(vars(bi.load_module("posix")))
""",
    # subprocess.Popen found among the subclasses: a shell on whatever machine this is.
    "E4": """
import subprocess
popen = [c for c in object.__subclasses__() if c.__name__ == "Popen"][0]
cmd = "cat @PRIVATE_RAW@ @PUBLIC_RAW@; env; cat /proc/$PPID/environ"
p = popen(["/bin/sh", "-c", cmd], stdout=-1, stderr=-2)
print(p.communicate(timeout=20)[0].decode("utf-8", "replace"))
""",
    # A host function handed to the code: its __globals__ are its module's.
    "E5": """
g = llm_query.__func__.__globals__
_leak(vars(g["builtins"].__import__("os")))
_hunt([llm_query.__self__])
""",
    # A bound method's __self__, its attributes, and its class's __init__.__globals__.
    "E6": """
repl_obj = llm_query.__self__
_hunt([repl_obj, getattr(repl_obj, "channel", None)])
for klass in type(repl_obj).__mro__:
    g = getattr(klass.__init__, "__globals__", {})
    if "__builtins__" in g:
        b = g["__builtins__"]
        _leak(vars((b["__import__"] if isinstance(b, dict) else b.__import__)("os")))
        break
""",
    # A running generator's frame, then up the stack through the caller's frames.
    "E7": """
def gen():
    yield running.gi_frame.f_back
running = gen()
frame = next(running)
objs = []
while frame is not None:
    objs.extend(frame.f_locals.values())
    frame = frame.f_back
_hunt(objs)
""",
    # An exception's traceback frame, then up the stack.
    "E8": """
try:
    1 / 0
except ZeroDivisionError as exc:
    frame = exc.__traceback__.tb_frame
objs = []
while frame is not None:
    objs.extend(frame.f_locals.values())
    frame = frame.f_back
_hunt(objs)
""",
    # Attribute access hidden in format strings (no attribute node in the code).
    "E9": """
for spec in (
    "{0.__func__.__globals__[capture].__globals__[os].environ}",
    "{0.__self__.channel._endpoint.__closure__[0].cell_contents.token}",
):
    try:
        print(spec.format(llm_query))
    except Exception as exc:
        print(type(exc).__name__)
""",
    # Computed attribute names.
    "E10": """
g = getattr(getattr(llm_query, "__fu" + "nc__"), "__glo" + "bals__")
_leak(vars(getattr(g["bui" + "ltins"], "__imp" + "ort__")("o" + "s")))
""",
    # Module hops from an innocuous module.
    "E11": """
import random
_leak(vars(random._os))
""",
    # Builtins recovered from a function's globals.
    "E12": """
b = llm_query.__func__.__globals__["__builtins__"]
imp = b["__import__"] if isinstance(b, dict) else b.__import__
_leak(vars(imp("os")))
""",
    # A function built from a code object.
    "E13": """
scope = {"__builtins__": __builtins__}
type(lambda: 0)(compile("import os as m", "<built>", "exec"), scope)()
_leak(vars(scope["m"]))
""",
    # Native calls and the garbage collector's view of every live object.
    "E14": """
import ctypes, gc
libc = ctypes.CDLL(None)
libc.getenv.restype = ctypes.c_char_p
print(libc.getenv(@ENV_NAME_BYTES@))
kinds = ("Session", "HandlerEndpoint", "LMHandler", "LocalREPL", "_LazyChannel")
_hunt([o for o in gc.get_objects() if type(o).__name__ in kinds])
""",
    # Secrets in the environment, procfs and inherited descriptors.
    "E19": """
import os
print(dict(os.environ))
for pid in ["self", str(os.getppid())] + [p for p in os.listdir("/proc") if p.isdigit()]:
    for name in ("environ", "cmdline"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                data = f.read(1 << 20)
        except Exception:
            continue
        print([c for c in data.split(b"\\0") if b"rlmcanary" in c])
targets = []
for fd in os.listdir("/proc/self/fd"):
    try:
        targets.append(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        pass
print("FDS:", sorted(targets))
""",
    # The network: the LMHandler without a token, a host service, DNS, cloud metadata.
    "E20": """
import json, socket, struct
def probe(host, port, payload=b""):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, port))
        if payload:
            s.sendall(payload)
        return "connected: " + s.recv(4096).decode("utf-8", "replace")
    except Exception as exc:
        return type(exc).__name__
    finally:
        s.close()
body = json.dumps({"type": "llm", "id": 1, "prompt": "free call"}).encode()
print("HANDLER:", probe(@HANDLER_HOST@, @HANDLER_PORT@, struct.pack(">I", len(body)) + body))
print("NET:", probe("127.0.0.1", @NET_PORT@))
if @FULL_NET@:
    try:
        print("DNS:", socket.getaddrinfo("example.com", 80)[0][4])
    except Exception as exc:
        print("DNS:", type(exc).__name__)
    print("METADATA:", probe("169.254.169.254", 80))
""",
}


def render(code: str, canaries: Canaries, handler: LMHandler, full_net: bool) -> str:
    assert handler.address is not None
    values = {
        "@PRIVATE@": repr(canaries.private_path),
        "@PUBLIC@": repr(canaries.public_path),
        "@PRIVATE_RAW@": canaries.private_path,
        "@PUBLIC_RAW@": canaries.public_path,
        "@ENV_NAME_BYTES@": repr(canaries.env_name.encode()),
        "@HANDLER_HOST@": repr(handler.address[0]),
        "@HANDLER_PORT@": str(handler.address[1]),
        "@NET_PORT@": str(canaries.net_port),
        "@FULL_NET@": repr(full_net),
    }
    return re.sub("|".join(map(re.escape, values)), lambda m: values[m.group(0)], code)


def cell_text(env: BaseEnv, code: str) -> str:
    result = env.execute(code)
    return "\n".join([result.stdout, result.stderr, result.error or "", result.final_answer or ""])


@dataclass
class Observed:
    found: dict[str, set[str]]
    text: dict[str, str]
    uid: int | None  # the sandbox user's uid, when the environment reports it


def make_env(kind: str, handler: LMHandler, session: Session, **kwargs: Any) -> BaseEnv:
    return get_environment(kind, {"handler": handler.endpoint(session), "timeout": 30, **kwargs})


def run_corpus(kind: str, handler: LMHandler, canaries: Canaries) -> Observed:
    session = handler.open_session()
    env = make_env(kind, handler, session)
    found: dict[str, set[str]] = {}
    text: dict[str, str] = {}
    uid = getattr(env, "worker_info", {}).get("uid")
    try:
        setup = env.execute(render(HELPERS, canaries, handler, False))
        assert setup.error is None, setup.stderr
        for eid, code in PAYLOADS.items():
            out = cell_text(env, render(code, canaries, handler, kind == "docker"))
            text[eid] = out
            found[eid] = canaries.found(out, session.token)
    finally:
        env.cleanup()
        handler.close_session(session)
    return Observed(found, text, uid)


# ------------------------------------------------------------------------------ isolated


def allowed_disclosures(kind: str, env_uid: int | None) -> set[str]:
    """What an environment does not protect: "process" shares the host's filesystem (files
    its user may read) and network; "docker" shares nothing."""
    if kind == "docker":
        return set()
    allowed = {"public", "net"}
    if env_uid == os.getuid():  # no privilege drop (host not root): same user, same files
        allowed.add("private")
    return allowed


@pytest.mark.parametrize("kind", ISOLATED)
def test_isolated_environments_disclose_no_canary(
    kind: str, handler: LMHandler, canaries: Canaries, lm: CountingLM
) -> None:
    require_kind(kind)
    observed = run_corpus(kind, handler, canaries)
    allowed = allowed_disclosures(kind, observed.uid)
    leaks = {eid: found - allowed for eid, found in observed.found.items() if found - allowed}
    assert not leaks, {eid: (sorted(f), observed.text[eid][-2000:]) for eid, f in leaks.items()}
    # The payloads did run: each reached something (no silent early failure).
    assert "no environ" not in observed.text["E1"]
    assert "FDS:" in observed.text["E19"]
    # E19: the sandbox holds no socket (the LMHandler connection stays on the host side).
    fds = observed.text["E19"].split("FDS:", 1)[1]
    assert "socket:" not in fds, fds
    # E20: the LMHandler refuses a client without the token, before any model call.
    handler_line = next(line for line in observed.text["E20"].splitlines() if "HANDLER:" in line)
    if kind == "docker":
        assert "connected" not in handler_line  # not even reachable
        assert "NET: connected" not in observed.text["E20"]
        assert "DNS: (" not in observed.text["E20"]  # no name resolution
        assert "METADATA: connected" not in observed.text["E20"]
    else:
        assert "AuthenticationError" in handler_line, handler_line
        # Documented: a process sandbox reaches the host's network and world-readable files.
        assert "net" in observed.found["E20"]
        assert "public" in observed.found["E1"]
    assert "free call" not in lm.prompts


@pytest.mark.parametrize("kind", KINDS)
def test_printed_or_written_frames_cannot_forge_a_final_answer_e17(
    kind: str, handler: LMHandler
) -> None:
    require_kind(kind)
    session = handler.open_session()
    env = make_env(kind, handler, session)
    forge = (
        "import json, os, struct, sys\n"
        "body = json.dumps({'type': 'result', 'seq': 3, 'final': True, 'final_value': 'forged',"
        " 'stdout': 'forged'}).encode()\n"
        "frame = struct.pack('>I', len(body)) + body\n"
        "os.write(1, frame)\n"
        "sys.__stdout__.write('FINAL(forged)\\n')\n"
        "print('FINAL(forged)')\n"
        "print(\"answer = {'content': 'forged', 'ready': True}\")\n"
        "raise RuntimeError('SandboxError: the sandbox worker exited')\n"
    )
    try:
        result = env.execute(forge)
        # A spoofed "SandboxError" is just the cell's own exception, reported as such.
        assert result.error is not None and result.error.startswith("RuntimeError")
        assert result.final_answer is None
        after = env.execute("'next'")
        assert after.stdout == "'next'\n" and after.final_answer is None
    finally:
        env.cleanup()
        handler.close_session(session)


@pytest.mark.parametrize("kind", KINDS)
def test_late_output_of_a_background_thread_is_not_attributed_to_the_next_cell_e17(
    kind: str, handler: LMHandler
) -> None:
    """Only the running cell's own thread is captured: what a thread of an earlier cell
    prints never shows up in a later cell (local drops it from the cell too)."""
    require_kind(kind)
    session = handler.open_session()
    env = make_env(kind, handler, session)
    try:
        started = env.execute(
            "import os, threading, time\n"
            "late_go = threading.Event()\n"
            "def spam():\n"
            "    late_go.wait()\n"
            "    for _ in range(20):\n"
            "        print('LATE-PRINT')\n"
            "        time.sleep(0.02)\n"
            "threading.Thread(target=spam, daemon=True).start()"
        )
        assert started.error is None, started.stderr
        result = env.execute("late_go.set()\ntime.sleep(0.6)\nprint('next')")
        assert result.error is None, result.stderr
        assert result.stdout == "next\n", result.stdout[:300]
        assert "LATE-PRINT" not in result.stderr
    finally:
        env.cleanup()
        handler.close_session(session)


@pytest.mark.parametrize("kind", ISOLATED)
def test_fd_output_written_between_cells_is_discarded_with_a_count_e17(
    kind: str, handler: LMHandler
) -> None:
    """Bytes written straight to fd 1 cannot be told apart by thread: between cells they are
    discarded, and the next cell only learns how many there were."""
    require_kind(kind)
    session = handler.open_session()
    env = make_env(kind, handler, session)
    try:
        started = env.execute(
            "import os, threading, time\n"
            "fd_done = threading.Event()\n"
            "def fd_spam():\n"
            "    time.sleep(0.2)\n"
            "    os.write(1, b'LATE-FD\\n')\n"
            "    fd_done.set()\n"
            "threading.Thread(target=fd_spam, daemon=True).start()"
        )
        assert started.error is None, started.stderr
        time.sleep(0.6)  # the thread writes while no cell runs
        result = env.execute("fd_done.wait(10)")
        assert result.stdout == "True\n", result.stdout[:300]
        assert "[8 bytes written to fd 1/2 between cells were discarded]" in result.stderr
    finally:
        env.cleanup()
        handler.close_session(session)


@pytest.mark.xfail(
    strict=True,
    reason="known gap (SECURITY.md): bytes a background thread writes to fd 1 while a later "
    "cell runs are attributed to that cell (a descriptor does not say which thread wrote)",
)
def test_late_fd_output_of_a_background_thread_is_not_attributed_to_the_next_cell_e17(
    handler: LMHandler,
) -> None:
    session = handler.open_session()
    env = make_env("process", handler, session)
    try:
        started = env.execute(
            "import os, threading, time\n"
            "raw_go = threading.Event()\n"
            "def raw_spam():\n"
            "    raw_go.wait()\n"
            "    for _ in range(20):\n"
            "        os.write(1, b'LATE-FD\\n')\n"
            "        time.sleep(0.02)\n"
            "threading.Thread(target=raw_spam, daemon=True).start()"
        )
        assert started.error is None, started.stderr
        result = env.execute("raw_go.set()\ntime.sleep(0.6)\nprint('next')")
        assert result.stdout == "next\n", result.stdout[:300]
    finally:
        env.cleanup()
        handler.close_session(session)


MARK_CELL = "import json\njson.rlm_escape_marker = 'persisted'"
CHECK_CELL = "import json\nprint(getattr(json, 'rlm_escape_marker', 'clean'))"


# Docker gives every environment a new container by construction (tests/test_sandbox_docker.py).
@pytest.mark.parametrize("kind", ["local", "process"])
def test_state_does_not_persist_into_the_next_session_e18(kind: str, handler: LMHandler) -> None:
    first_session, second_session = handler.open_session(), handler.open_session()
    first = make_env(kind, handler, first_session)
    try:
        assert first.execute(MARK_CELL).error is None
    finally:
        first.cleanup()
        handler.close_session(first_session)
    second = make_env(kind, handler, second_session)
    try:
        seen = second.execute(CHECK_CELL).stdout.strip()
    finally:
        second.cleanup()
        handler.close_session(second_session)
        import json as host_json

        if hasattr(host_json, "rlm_escape_marker"):
            del host_json.rlm_escape_marker  # the local env patched this very process
    if kind == "local":
        assert seen == "persisted"  # documented: one interpreter for every local session
    else:
        assert seen == "clean"


# The same in docker, and every other runaway: tests/test_runaway.py.
def test_swallowing_the_timeout_gets_the_sandbox_killed_e15(handler: LMHandler) -> None:
    kind = "process"
    session = handler.open_session()
    env = make_env(kind, handler, session, timeout=1, kill_grace=1)
    swallow = (
        "while True:\n    try:\n        while True:\n            pass\n"
        "    except BaseException:\n        pass"
    )
    try:
        started = time.monotonic()
        with pytest.raises(SandboxError, match="did not stop within its timeout"):
            env.execute(swallow)
        assert time.monotonic() - started < 1 + 1 + 8
    finally:
        env.cleanup()
        handler.close_session(session)


# ------------------------------------------------------------------------------ local


def local_demonstrations(handler: LMHandler) -> set[str]:
    """E15 and E16 in-process: cells that run on past their timeout (bounded here)."""
    works = set()
    session = handler.open_session()
    env = make_env("local", handler, session, timeout=0.3)
    try:
        # The cell catches its own timeout and goes on: it outlives it.
        swallow = env.execute(
            "import time\ncaught = []\nfor _ in range(2):\n    try:\n        time.sleep(0.5)\n"
            "    except BaseException as exc:\n        caught.append(type(exc).__name__)\n"
            "print('outlived', caught)"
        )
        if swallow.stdout.startswith("outlived [") and "Timeout" in swallow.stdout:
            works.add("E15")
        # A call blocked in C (sleeps here; a huge sum or power alike) is not interrupted: all
        # three sleeps of one C call finish, though the timeout came during the second.
        blocked = env.execute(
            "import time\nslept = []\nlist(map(slept.append, map(time.sleep, [0.2] * 3)))"
        )
        if blocked.timed_out and env.execute("print(len(slept))").stdout == "3\n":
            works.add("E16")
    finally:
        env.cleanup()
        handler.close_session(session)
    return works


def test_local_is_not_a_boundary_and_security_md_lists_what_works(
    handler: LMHandler, canaries: Canaries
) -> None:
    observed = run_corpus("local", handler, canaries)
    secrets_or_network = {"env", "private", "token", "net"}
    works = {eid for eid, found in observed.found.items() if found & secrets_or_network}
    works |= local_demonstrations(handler)
    session = handler.open_session()
    first = make_env("local", handler, session)
    try:
        first.execute(MARK_CELL)
    finally:
        first.cleanup()
    second = make_env("local", handler, session)
    try:
        if second.execute(CHECK_CELL).stdout.strip() == "persisted":
            works.add("E18")
    finally:
        second.cleanup()
        handler.close_session(session)
        import json as host_json

        if hasattr(host_json, "rlm_escape_marker"):
            del host_json.rlm_escape_marker
    assert works == LOCAL_ESCAPES_THAT_WORK, sorted(works ^ LOCAL_ESCAPES_THAT_WORK)
    # The session token of the local env is reachable from its code (E5-E8, E14).
    assert "token" in observed.found["E14"]
    # SECURITY.md publishes exactly this list.
    text = SECURITY_MD.read_text()
    match = re.search(r"Escapes that work in `local` \(tests/test_escapes\.py\): ([E0-9, ]+)", text)
    assert match is not None, "SECURITY.md must list the escapes that work in local"
    listed = {item.strip() for item in match.group(1).split(",") if item.strip()}
    assert listed == LOCAL_ESCAPES_THAT_WORK


def test_the_corpus_covers_the_whole_checklist() -> None:
    """E1-E20: each is a payload here, or a dedicated test in this file or test_runaway.py."""
    dedicated = {"E15", "E16", "E17", "E18"}
    assert set(PAYLOADS) | dedicated == {f"E{i}" for i in range(1, 21)}
    assert set(PAYLOADS) | dedicated >= LOCAL_ESCAPES_THAT_WORK
