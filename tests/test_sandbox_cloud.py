"""ModalREPL and E2BREPL up to the SDK boundary.

No cloud account is reachable here, so the `modal` and `e2b` modules are replaced by fakes of
the SDK objects the environments use. The fakes are thin: each "sandbox" runs the real worker
in a local subprocess behind stdin/stdout streams that behave like the SDKs' (text chunks out,
a bounded stdin buffer, a files API), so the runtime, the base64-lines transport and the relay
to the LMHandler all run for real.
"""

from __future__ import annotations

import codecs
import os
import shutil
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from rlm import RLM
from rlm.clients.base import BaseLM
from rlm.core.lm_handler import LMHandler
from rlm.core.types import LMResponse, Message
from rlm.environments.base import ToolSpec
from rlm.errors import MissingDependencyError, SandboxError

pytestmark = pytest.mark.timeout(120)

FENCE = "```"


class LocalWorker:
    """What runs "inside" a fake sandbox: a local process; output decoded to text like the SDKs."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str) -> None:
        argv = [sys.executable if a == "python3" else a for a in argv]
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": os.environ["PATH"], **env},
            cwd=cwd,
        )

    def chunks(self, stream: Any) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            data = os.read(stream.fileno(), 65536)
            if not data:
                return
            text = decoder.decode(data)
            if text:
                yield text

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


class FakeFiles:
    """A sandbox filesystem: real local paths, removed when the sandbox ends."""

    def __init__(self) -> None:
        self.written: list[str] = []

    def write(self, path: str, data: bytes | str) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data if isinstance(data, bytes) else data.encode())
        self.written.append(path)

    def remove_all(self, roots: list[str]) -> None:
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------- modal


class FakeImage:
    def __init__(self, mounts: dict[str, str] | None = None) -> None:
        self.mounts = dict(mounts or {})

    def add_local_dir(self, local_path: str, remote_path: str) -> FakeImage:
        return FakeImage({**self.mounts, remote_path: local_path})


class FakeStdin:
    """Like modal's StreamWriter: write() buffers (at most 2 MiB), drain() sends."""

    def __init__(self, worker: LocalWorker) -> None:
        self.worker = worker
        self.buffer = bytearray()
        self.max_writes = 0

    def write(self, data: bytes | str) -> None:
        self.buffer += data if isinstance(data, bytes) else data.encode()
        if len(self.buffer) > 2 * 2**20:
            raise BufferError("stdin buffer over 2 MiB: call drain()")
        self.max_writes = max(self.max_writes, len(self.buffer))

    def drain(self) -> None:
        data, self.buffer = bytes(self.buffer), bytearray()
        self.worker.write(data)


class FakeModalSandbox:
    created: ClassVar[list[FakeModalSandbox]] = []

    def __init__(self, args: tuple[str, ...], kwargs: dict[str, Any]) -> None:
        self.args, self.kwargs = args, kwargs
        env: dict[str, str] = {}
        for secret in kwargs["secrets"]:
            env.update(secret.values)
        self.env = env
        mounts = kwargs["image"].mounts
        env["PYTHONPATH"] = mounts[env["PYTHONPATH"]]  # the image's files, here
        self.worker = LocalWorker(list(args), env, kwargs["workdir"])
        assert self.worker.proc.stdout is not None and self.worker.proc.stderr is not None
        self.stdout = self.worker.chunks(self.worker.proc.stdout)
        self.stderr = self.worker.chunks(self.worker.proc.stderr)
        self.stdin = FakeStdin(self.worker)
        self.files = FakeFiles()
        self.filesystem = types.SimpleNamespace(write_bytes=self._write_bytes)
        self.terminated = False
        FakeModalSandbox.created.append(self)

    def _write_bytes(self, data: bytes, path: str) -> None:
        self.files.write(path, data)

    def terminate(self) -> None:
        self.terminated = True
        self.worker.kill()
        self.files.remove_all(sorted({str(Path(p).parent) for p in self.files.written}))

    def poll(self) -> int | None:
        return self.worker.proc.poll()


def fake_modal() -> types.ModuleType:
    module = types.ModuleType("modal")
    module.App = types.SimpleNamespace(  # type: ignore[attr-defined]
        lookup=lambda name, create_if_missing=False: types.SimpleNamespace(
            name=name, create_if_missing=create_if_missing
        )
    )
    module.Image = types.SimpleNamespace(debian_slim=lambda: FakeImage())  # type: ignore[attr-defined]
    module.Secret = types.SimpleNamespace(  # type: ignore[attr-defined]
        from_dict=lambda values: types.SimpleNamespace(values=dict(values))
    )
    module.Sandbox = types.SimpleNamespace(  # type: ignore[attr-defined]
        create=lambda *args, **kwargs: FakeModalSandbox(args, kwargs)
    )
    return module


# --------------------------------------------------------------------------------- e2b


class FakeHandle:
    def __init__(self, worker: LocalWorker) -> None:
        self.worker = worker
        self.pid = worker.proc.pid
        self.killed = False

    def __iter__(self) -> Iterator[tuple[str | None, str | None, None]]:
        assert self.worker.proc.stdout is not None and self.worker.proc.stderr is not None
        errors = self.worker.chunks(self.worker.proc.stderr)
        tail: list[str] = []
        threading.Thread(target=lambda: tail.extend(errors), daemon=True).start()
        for text in self.worker.chunks(self.worker.proc.stdout):
            yield text, None, None
        self.worker.proc.wait()
        yield None, "".join(tail) or None, None

    def kill(self) -> bool:
        self.killed = True
        self.worker.kill()
        return True


class FakeCommands:
    def __init__(self, sandbox: FakeE2BSandbox) -> None:
        self.sandbox = sandbox
        self.handles: dict[int, FakeHandle] = {}
        self.runs: list[tuple[str, dict[str, Any]]] = []
        self.stdin_calls = 0

    def run(
        self,
        cmd: str,
        background: bool = False,
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
        stdin: bool = False,
        timeout: float = 60,
        *,
        retain_output: bool = True,
    ) -> FakeHandle:
        options = {"background": background, "envs": envs, "cwd": cwd, "stdin": stdin}
        options.update(timeout=timeout, retain_output=retain_output)
        self.runs.append((cmd, options))
        assert background and stdin
        handle = FakeHandle(LocalWorker(cmd.split(), dict(envs or {}), cwd or "/"))
        self.handles[handle.pid] = handle
        return handle

    def send_stdin(self, pid: int, data: str | bytes) -> None:
        self.stdin_calls += 1
        assert isinstance(data, str)  # text only, as older SDKs require
        self.handles[pid].worker.write(data.encode())


class FakeE2BSandbox:
    created: ClassVar[list[FakeE2BSandbox]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.files = FakeFiles()
        self.commands = FakeCommands(self)
        self.killed = False
        FakeE2BSandbox.created.append(self)

    @classmethod
    def create(cls, **kwargs: Any) -> FakeE2BSandbox:
        return cls(**kwargs)

    def kill(self) -> None:
        self.killed = True
        for handle in self.commands.handles.values():
            handle.worker.kill()
        roots = {"/".join(p.split("/")[:3]) for p in self.files.written}  # /tmp/rlm-xxxx
        self.files.remove_all(sorted(roots))


def fake_e2b() -> types.ModuleType:
    module = types.ModuleType("e2b")
    module.Sandbox = FakeE2BSandbox  # type: ignore[attr-defined]
    return module


# ------------------------------------------------------------------------------- tests


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


@pytest.fixture(autouse=True)
def fake_sdks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "modal", fake_modal())
    monkeypatch.setitem(sys.modules, "e2b", fake_e2b())
    FakeModalSandbox.created.clear()
    FakeE2BSandbox.created.clear()


def make(kind: str, lm_handler: LMHandler, **kwargs: Any) -> Any:
    from rlm.environments import environment_class

    calls: list[int] = []
    session = lm_handler.open_session(tools={"double": lambda x: calls.append(x) or 2 * x})
    tools = {"double": ToolSpec("double", "doubles")}
    return environment_class(kind)(handler=lm_handler.endpoint(session), tools=tools, **kwargs)


def sandbox_of(kind: str) -> Any:
    created: list[Any] = FakeModalSandbox.created if kind == "modal" else FakeE2BSandbox.created  # type: ignore[assignment]
    assert len(created) == 1
    return created[0]


def worker_of(kind: str) -> LocalWorker:
    sandbox = sandbox_of(kind)
    if kind == "modal":
        return sandbox.worker  # type: ignore[no-any-return]
    (handle,) = sandbox.commands.handles.values()
    return handle.worker  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["modal", "e2b"])
def test_the_real_worker_runs_behind_the_fake_sdk(kind: str, handler: LMHandler) -> None:
    env = make(kind, handler, timeout=20)
    try:
        env.load_context({"doc": "small"})
        big = "ü\x00\"'" * 400_000  # over the inline limit: uploaded with the files API
        env.load_context(big, 1)
        result = env.execute(
            "n = len(context_1)\n"
            "same = context_1 == 'ü\\x00\"\\'' * 400_000\n"
            "r = llm_query('hi')\n"
            "d = double(21)\n"
            "print(context['doc'], n, same, r, d)"
        )
        assert result.error is None, result.stderr
        assert result.stdout == "small 1600000 True echo:hi 42\n"
        final = env.execute("FINAL_VAR({'n': n, 'big': context_1})")
        assert final.final_value == {"n": 1_600_000, "big": big}
        env.timeout = 1.0
        looped = env.execute("while True:\n    pass")
        assert looped.timed_out and looped.error == "TimeoutError: cell exceeded 1s"
        assert env.execute("n").stdout == "1600000\n"
    finally:
        env.cleanup()
    worker = worker_of(kind)
    assert worker.proc.poll() is not None  # the sandbox was ended at cleanup
    assert not [p for p in sandbox_of(kind).files.written if Path(p).exists()]


def test_modal_sdk_calls(handler: LMHandler) -> None:
    env = make("modal", handler, timeout=20)
    try:
        env.execute("1")
    finally:
        env.cleanup()
    sandbox = sandbox_of("modal")
    kwargs = sandbox.kwargs
    assert kwargs["block_network"] is True
    assert kwargs["app"].create_if_missing is True
    assert sandbox.args == ("python3", "-s", "-m", "rlm.runtime.worker")
    assert env.channel_token not in " ".join(sandbox.args)
    assert sandbox.env["RLM_CHANNEL_TOKEN"] == env.channel_token  # a secret, not argv
    assert sandbox.env["RLM_CHANNEL_ENCODING"] == "base64"
    assert "/opt/rlm" in kwargs["image"].mounts
    assert sandbox.terminated and sandbox.stdin.max_writes <= 2**20 + 1024


def test_e2b_sdk_calls(handler: LMHandler) -> None:
    env = make("e2b", handler, timeout=20)
    try:
        env.execute("1")
    finally:
        env.cleanup()
    sandbox = sandbox_of("e2b")
    assert sandbox.kwargs["allow_internet_access"] is False
    ((cmd, options),) = sandbox.commands.runs
    assert cmd == "python3 -s -m rlm.runtime.worker" and env.channel_token not in cmd
    assert options["envs"]["RLM_CHANNEL_TOKEN"] == env.channel_token
    assert options["background"] and options["stdin"] and options["timeout"] == 0
    assert options["retain_output"] is False
    assert any(p.endswith("bundle/rlm/runtime/worker.py") for p in sandbox.files.written)
    assert sandbox.commands.stdin_calls >= 2 and sandbox.killed


@pytest.mark.parametrize("kind", ["modal", "e2b"])
def test_a_dead_worker_is_a_terminal_sandbox_error(kind: str, handler: LMHandler) -> None:
    env = make(kind, handler, timeout=20)
    try:
        worker_of(kind).kill()
        with pytest.raises(SandboxError):
            env.execute("1")
        with pytest.raises(SandboxError):
            env.execute("1")
    finally:
        env.cleanup()


@pytest.mark.parametrize("kind", ["modal", "e2b"])
def test_a_missing_sdk_names_the_extra_to_install(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rlm.environments import environment_class

    monkeypatch.setitem(sys.modules, kind, None)
    with pytest.raises(MissingDependencyError, match=rf"pip install 'rlm\[{kind}\]'"):
        environment_class(kind)()


def test_an_sdk_failure_at_start_is_a_sandbox_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlm.environments.modal import ModalREPL

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("quota exceeded")

    monkeypatch.setattr(sys.modules["modal"].Sandbox, "create", refuse)
    with pytest.raises(SandboxError, match="quota exceeded"):
        ModalREPL()


@pytest.mark.parametrize("kind", ["modal", "e2b"])
def test_persistent_rlm_keeps_one_cloud_sandbox(kind: str) -> None:
    replies = [
        f"{FENCE}repl\nkept = context\nFINAL('first')\n{FENCE}",
        f"{FENCE}repl\nFINAL(kept + '|' + context_1 + '|' + str(len(history_0) > 0))\n{FENCE}",
    ]
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": replies},
        environment=kind,
        persistent=True,
    )
    with rlm:
        assert rlm.completion("one").response == "first"
        assert rlm.completion("two").response == "one|two|True"
    assert worker_of(kind).proc.poll() is not None  # closed with the RLM
