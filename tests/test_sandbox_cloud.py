"""ModalREPL, E2BREPL, DaytonaREPL and PrimeREPL up to the SDK boundary.

No cloud account is reachable here, so the `modal`, `e2b`, `daytona` and `prime_sandboxes`
modules are replaced by fakes of the SDK objects the environments use. The fakes are thin: each
"sandbox" runs the real worker in a local subprocess behind stdin/stdout streams that behave
like the SDKs' (text chunks out, a bounded stdin buffer, a files API), so the runtime, the
base64-lines transport and the relay to the LMHandler all run for real. Where the real SDK is
installed, the fakes' methods are checked against its signatures
(`test_fakes_match_the_installed_sdk`), so a rename upstream fails here, not in a user's run.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import inspect
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
from rlm.errors import ConfigurationError, MissingDependencyError, SandboxError

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


# ----------------------------------------------------------------------------- daytona


def python3_on_path(env: dict[str, str]) -> dict[str, str]:
    """A shell in the fake sandbox finds this interpreter as `python3`."""
    shim = Path(env["HOME"]) / ".shim"
    shim.mkdir(parents=True, exist_ok=True)
    if not (shim / "python3").exists():
        (shim / "python3").symlink_to(sys.executable)
    return {**env, "PATH": f"{shim}:{os.environ['PATH']}"}


class FakeParams:
    """Stands for the SDK's pydantic request models: keeps the fields it was given."""

    model: ClassVar[str] = ""

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        self.__dict__.update(fields)


def fake_model(name: str) -> type[FakeParams]:
    return type(name, (FakeParams,), {"model": name})


class FakeDaytonaFS:
    def __init__(self, files: FakeFiles) -> None:
        self.files = files

    def upload_file(self, src: str | bytes, dst: str, timeout: int = 1800) -> None:
        assert isinstance(src, bytes)  # bytes are content; a str would be a local path
        self.files.write(dst, src)


class FakeDaytonaProcess:
    def __init__(self, sandbox: FakeDaytonaSandbox) -> None:
        self.sandbox = sandbox
        self.sessions: set[str] = set()
        self.commands: dict[str, LocalWorker] = {}
        self.requests: list[FakeParams] = []
        self.inputs = 0

    def create_session(self, session_id: str, request_timeout: float | None = None) -> None:
        self.sessions.add(session_id)

    def execute_session_command(
        self, session_id: str, req: FakeParams, timeout: int | None = None
    ) -> Any:
        assert session_id in self.sessions and req.fields["run_async"] is True
        self.requests.append(req)
        env = python3_on_path(self.sandbox.env)
        worker = LocalWorker(["/bin/sh", "-c", req.fields["command"]], env, "/")
        command_id = f"cmd-{len(self.commands) + 1}"
        self.commands[command_id] = worker
        return types.SimpleNamespace(cmd_id=command_id, output=None, exit_code=None)

    def send_session_command_input(
        self, session_id: str, command_id: str, data: str, request_timeout: float | None = None
    ) -> None:
        assert isinstance(data, str)  # the API takes text
        self.inputs += 1
        self.commands[command_id].write(data.encode())

    async def get_session_command_logs_async(
        self, session_id: str, command_id: str, on_stdout: Any, on_stderr: Any
    ) -> None:
        worker = self.commands[command_id]
        assert worker.proc.stdout is not None and worker.proc.stderr is not None
        errors = worker.chunks(worker.proc.stderr)
        threading.Thread(target=lambda: [on_stderr(t) for t in errors], daemon=True).start()
        chunks = worker.chunks(worker.proc.stdout)
        loop = asyncio.get_running_loop()
        while (text := await loop.run_in_executor(None, next, chunks, None)) is not None:
            on_stdout(text)


class FakeDaytonaSandbox:
    created: ClassVar[list[FakeDaytonaSandbox]] = []

    def __init__(self, params: FakeParams) -> None:
        self.params = params
        self.env = dict(params.fields["env_vars"])
        self.files = FakeFiles()
        self.fs = FakeDaytonaFS(self.files)
        self.process = FakeDaytonaProcess(self)
        self.deleted = False
        FakeDaytonaSandbox.created.append(self)

    def delete(self, timeout: float | None = 60, wait: bool = False) -> None:
        self.deleted = True
        for worker in self.process.commands.values():
            worker.kill()
        roots = {"/".join(p.split("/")[:3]) for p in self.files.written}  # /tmp/rlm-xxxx
        self.files.remove_all(sorted(roots))


class FakeDaytona:
    instances: ClassVar[list[FakeDaytona]] = []

    def __init__(self, config: FakeParams | None = None) -> None:
        self.config = config
        FakeDaytona.instances.append(self)

    def create(
        self,
        params: FakeParams | None = None,
        *,
        timeout: float = 60,
        on_snapshot_create_logs: Any = None,
    ) -> FakeDaytonaSandbox:
        assert params is not None
        return FakeDaytonaSandbox(params)


DAYTONA_MODELS = (
    "DaytonaConfig",
    "CreateSandboxFromSnapshotParams",
    "CreateSandboxFromImageParams",
    "Resources",
    "SessionExecuteRequest",
)


def fake_daytona() -> types.ModuleType:
    module = types.ModuleType("daytona")
    module.Daytona = FakeDaytona  # type: ignore[attr-defined]
    for name in DAYTONA_MODELS:
        setattr(module, name, fake_model(name))
    return module


# ------------------------------------------------------------------------------- prime


class FakeByteStream:
    """Like the SDK's process streams: an async iterator of bytes chunks."""

    def __init__(self, stream: Any) -> None:
        self.fd = stream.fileno()

    def __aiter__(self) -> FakeByteStream:
        return self

    async def __anext__(self) -> bytes:
        data = await asyncio.get_running_loop().run_in_executor(None, os.read, self.fd, 65536)
        if not data:
            raise StopAsyncIteration
        return data


class FakePrimeProcess:
    def __init__(self, worker: LocalWorker) -> None:
        self.worker = worker
        assert worker.proc.stdout is not None and worker.proc.stderr is not None
        self.stdout = FakeByteStream(worker.proc.stdout)
        self.stderr = FakeByteStream(worker.proc.stderr)
        self.writes = 0
        self.closed = False

    @property
    def returncode(self) -> int | None:
        return self.worker.proc.poll()

    async def write_stdin(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        if self.worker.proc.poll() is not None:
            raise BrokenPipeError("process has exited")
        self.writes += 1
        self.worker.write(data)

    async def kill(self) -> None:
        self.worker.kill()

    async def aclose(self) -> None:
        self.closed = True
        self.worker.kill()


class FakePrimeClient:
    created: ClassVar[list[FakePrimeClient]] = []

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.requests: list[FakeParams] = []
        self.files = FakeFiles()
        self.processes: list[tuple[str, dict[str, Any], FakePrimeProcess]] = []
        self.deleted: list[str] = []
        self.waited: list[str] = []
        self.closed = False
        FakePrimeClient.created.append(self)

    async def create(self, request: FakeParams) -> Any:
        self.requests.append(request)
        return types.SimpleNamespace(id=f"sbx-{len(self.requests)}", status="PENDING")

    async def wait_for_creation(
        self,
        sandbox_id: str,
        max_attempts: int = 60,
        stability_checks: int = 1,
        image_build_timeout_seconds: int = 3000,
    ) -> None:
        self.waited.append(sandbox_id)

    async def upload_bytes(
        self,
        sandbox_id: str,
        file_path: str,
        file_bytes: bytes,
        filename: str,
        timeout: int | None = None,
    ) -> Any:
        assert sandbox_id in self.waited and isinstance(file_bytes, bytes)
        self.files.write(file_path, file_bytes)
        return types.SimpleNamespace(success=True, path=file_path)

    async def open_process(
        self,
        sandbox_id: str,
        command: str,
        working_dir: str | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ) -> FakePrimeProcess:
        assert sandbox_id in self.waited
        options = {"working_dir": working_dir, "env": dict(env or {}), "user": user}
        process = FakePrimeProcess(
            LocalWorker(command.split(), dict(env or {}), working_dir or "/")
        )
        self.processes.append((command, options, process))
        return process

    async def delete(self, sandbox_id: str) -> dict[str, Any]:
        self.deleted.append(sandbox_id)
        for _, _, process in self.processes:
            process.worker.kill()
        roots = {"/".join(p.split("/")[:3]) for p in self.files.written}
        self.files.remove_all(sorted(roots))
        return {"deleted": sandbox_id}

    async def aclose(self) -> None:
        self.closed = True


def fake_prime() -> types.ModuleType:
    module = types.ModuleType("prime_sandboxes")
    module.AsyncSandboxClient = FakePrimeClient  # type: ignore[attr-defined]
    module.CreateSandboxRequest = fake_model("CreateSandboxRequest")  # type: ignore[attr-defined]
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
    monkeypatch.setitem(sys.modules, "daytona", fake_daytona())
    monkeypatch.setitem(sys.modules, "prime_sandboxes", fake_prime())
    FakeModalSandbox.created.clear()
    FakeE2BSandbox.created.clear()
    FakeDaytonaSandbox.created.clear()
    FakeDaytona.instances.clear()
    FakePrimeClient.created.clear()


def make(kind: str, lm_handler: LMHandler, **kwargs: Any) -> Any:
    from rlm.environments import environment_class

    calls: list[int] = []
    session = lm_handler.open_session(tools={"double": lambda x: calls.append(x) or 2 * x})
    tools = {"double": ToolSpec("double", "doubles")}
    return environment_class(kind)(handler=lm_handler.endpoint(session), tools=tools, **kwargs)


CLOUD = ["modal", "e2b", "daytona", "prime"]
SDK_MODULE = {"prime": "prime_sandboxes"}


def sandbox_of(kind: str) -> Any:
    created: list[Any] = {  # type: ignore[assignment]
        "modal": FakeModalSandbox.created,
        "e2b": FakeE2BSandbox.created,
        "daytona": FakeDaytonaSandbox.created,
        "prime": FakePrimeClient.created,  # one client per sandbox
    }[kind]
    assert len(created) == 1
    return created[0]


def worker_of(kind: str) -> LocalWorker:
    sandbox = sandbox_of(kind)
    if kind == "modal":
        return sandbox.worker  # type: ignore[no-any-return]
    if kind == "daytona":
        (worker,) = sandbox.process.commands.values()
        return worker  # type: ignore[no-any-return]
    if kind == "prime":
        ((_, _, process),) = sandbox.processes
        return process.worker  # type: ignore[no-any-return]
    (handle,) = sandbox.commands.handles.values()
    return handle.worker  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", CLOUD)
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


@pytest.mark.parametrize("kind", CLOUD)
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


RELEASE = {  # the SDK call that ends a sandbox, per kind
    "modal": (FakeModalSandbox, "terminate"),
    "e2b": (FakeE2BSandbox, "kill"),
    "daytona": (FakeDaytonaSandbox, "delete"),
    "prime": (FakePrimeClient, "delete"),
}


@pytest.mark.parametrize("kind", CLOUD)
def test_a_sandbox_killed_from_many_threads_is_released_once(
    kind: str, handler: LMHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader seeing EOF, a timeout, cleanup and an interrupt may all end a sandbox at
    once: the SDK is asked to end it once, and nothing more is written to it."""
    cls, method = RELEASE[kind]
    release = getattr(cls, method)
    calls: list[int] = []

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return release(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, counted)
    env = make(kind, handler, timeout=20)
    assert env.execute("print(1)").stdout == "1\n"
    transport = env._transport
    threads = [threading.Thread(target=transport.kill) for _ in range(8)]
    threads.append(threading.Thread(target=env.cleanup))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [1]
    with pytest.raises(BrokenPipeError, match="sandbox is gone"):
        transport.write(b"x\n")
    with pytest.raises(SandboxError):
        env.execute("1")


@pytest.mark.parametrize("kind", CLOUD)
def test_a_missing_sdk_names_the_extra_to_install(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rlm.environments import environment_class

    monkeypatch.setitem(sys.modules, SDK_MODULE.get(kind, kind), None)
    with pytest.raises(MissingDependencyError, match=rf"pip install 'rlm\[{kind}\]'"):
        environment_class(kind)()


def test_an_sdk_failure_at_start_is_a_sandbox_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlm.environments.modal import ModalREPL

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("quota exceeded")

    monkeypatch.setattr(sys.modules["modal"].Sandbox, "create", refuse)
    with pytest.raises(SandboxError, match="quota exceeded"):
        ModalREPL()


@pytest.mark.parametrize("kind", CLOUD)
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


def test_daytona_sdk_calls(handler: LMHandler) -> None:
    env = make("daytona", handler, timeout=20)
    try:
        env.execute("1")
    finally:
        env.cleanup()
    sandbox = sandbox_of("daytona")
    params = sandbox.params
    assert params.model == "CreateSandboxFromSnapshotParams"
    assert params.fields["network_block_all"] is True
    assert params.fields["env_vars"]["RLM_CHANNEL_TOKEN"] == env.channel_token
    assert params.fields["env_vars"]["RLM_CHANNEL_ENCODING"] == "base64"
    (request,) = sandbox.process.requests
    assert request.model == "SessionExecuteRequest"
    assert request.fields["suppress_input_echo"] is True  # our frames must not come back
    assert request.fields["command"].endswith("exec python3 -s -m rlm.runtime.worker")
    assert env.channel_token not in request.fields["command"]
    assert any(p.endswith("bundle/rlm/runtime/worker.py") for p in sandbox.files.written)
    assert sandbox.process.inputs >= 2 and sandbox.deleted
    assert FakeDaytona.instances[0].config is None  # the SDK reads DAYTONA_API_KEY itself


def test_daytona_options_reach_the_sdk(handler: LMHandler) -> None:
    env = make(
        "daytona",
        handler,
        timeout=20,
        api_key="dtn-key",
        target="eu",
        image="python:3.12-slim",
        cpu=2,
        memory=4,
        network_block_all=False,
    )
    env.cleanup()
    params = sandbox_of("daytona").params
    assert params.model == "CreateSandboxFromImageParams"
    assert params.fields["image"] == "python:3.12-slim"
    assert params.fields["resources"].fields == {"cpu": 2, "memory": 4}
    assert params.fields["network_block_all"] is False
    assert FakeDaytona.instances[0].config.fields == {"api_key": "dtn-key", "target": "eu"}
    assert "dtn-key" not in str(params.fields["env_vars"])  # the key stays on the host


def test_daytona_resources_need_an_image() -> None:
    from rlm.environments.daytona import DaytonaREPL

    with pytest.raises(ConfigurationError, match="image"):
        DaytonaREPL(cpu=2)
    assert FakeDaytonaSandbox.created == []


def test_prime_sdk_calls(handler: LMHandler) -> None:
    env = make("prime", handler, timeout=20, api_key="pk-test", memory_mb=2048)
    try:
        env.execute("1")
    finally:
        env.cleanup()
    client = sandbox_of("prime")
    assert client.api_key == "pk-test"
    (request,) = client.requests
    assert request.fields["docker_image"] == "python:3.11-slim"
    assert request.fields["network_allowlist"] == []  # no egress by default
    assert request.fields["memory_gb"] == 3.0  # the worker's 2048 MB plus headroom
    ((command, options, process),) = client.processes
    assert command == "python3 -s -m rlm.runtime.worker" and env.channel_token not in command
    assert options["env"]["RLM_CHANNEL_TOKEN"] == env.channel_token
    assert "RLM_CHANNEL_ENCODING" not in options["env"]  # bytes travel as they are
    assert "pk-test" not in str(options["env"])
    assert process.writes >= 2 and process.closed
    assert client.deleted == ["sbx-1"] and client.closed


def test_prime_start_failure_deletes_the_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlm.environments.prime import PrimeREPL

    async def refuse(self: FakePrimeClient, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("image pull failed")

    monkeypatch.setattr(FakePrimeClient, "open_process", refuse)
    with pytest.raises(SandboxError, match="image pull failed"):
        PrimeREPL()
    (client,) = FakePrimeClient.created
    assert client.deleted == ["sbx-1"]


@pytest.mark.parametrize("kind", ["daytona", "prime"])
def test_rlm_fan_out_and_recursion_in_new_cloud_sandboxes(kind: str) -> None:
    """A run whose code fans out sub-calls and starts child RLMs, each child in a sandbox of
    its own, all of them ended when the run ends."""

    def root(messages: list[Message]) -> str:
        turn = sum(1 for m in messages if m["role"] == "assistant")
        if "query, using the context: Count letters" in str(messages[1]["content"]):
            return [
                f"{FENCE}repl\nn = len(context)\n{FENCE}",
                f"{FENCE}repl\nFINAL(str(n))\n{FENCE}",
            ][turn]
        return [
            f"{FENCE}repl\nechoes = llm_query_batched([f'q{{i}}' for i in range(8)])\n"
            f"kids = rlm_query_batched(['Count letters'] * 2, contexts=['abc', 'abcdef'])\n"
            f"print(len(echoes), kids)\n{FENCE}",
            f"{FENCE}repl\nFINAL(f'{{len(context)}} ' + ' '.join(kids))\n{FENCE}",
        ][turn]

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": root},
        environment=kind,
        max_depth=2,
    )
    context = "x" * (50 * 2**20)  # 50 MB: uploaded once, read once by the worker
    with rlm:
        result = rlm.completion(context, root_prompt="Fan out.")
    assert result.response == f"{len(context)} 3 6"
    created = FakeDaytonaSandbox.created if kind == "daytona" else FakePrimeClient.created
    assert len(created) == 3  # the root and two children, each in its own sandbox
    workers: list[LocalWorker] = []
    for sandbox in created:
        if kind == "daytona":
            workers.extend(sandbox.process.commands.values())
        else:
            workers.extend(process.worker for _, _, process in sandbox.processes)
    assert all(w.proc.poll() is not None for w in workers)


# ------------------------------------------------------------- the fakes against the real SDKs


def _compatible(fake: Any, real: Any) -> list[str]:
    """Why a call shaped for `fake` would not fit `real`: every parameter the fake declares
    exists in the real signature with the same kind (and position, when positional), every
    parameter the real one requires is declared by the fake, and both are sync or both async."""
    problems = []
    if inspect.iscoroutinefunction(fake) != inspect.iscoroutinefunction(real):
        problems.append("sync/async differs")
    theirs = list(inspect.signature(real).parameters.values())
    ours = list(inspect.signature(fake).parameters.values())
    by_name = {p.name: p for p in theirs}
    for index, param in enumerate(ours):
        other = by_name.get(param.name)
        if other is None:
            problems.append(f"no parameter {param.name!r}")
        elif other.kind != param.kind:
            problems.append(f"{param.name!r} is {other.kind.description}")
        elif param.kind is param.POSITIONAL_OR_KEYWORD and theirs.index(other) != index:
            problems.append(f"{param.name!r} moved to position {theirs.index(other)}")
    names = {p.name for p in ours}
    for param in theirs:
        required = param.default is param.empty and param.kind not in (
            param.VAR_POSITIONAL,
            param.VAR_KEYWORD,
        )
        if required and param.name not in names:
            problems.append(f"required parameter {param.name!r} missing from the fake")
    return problems


def _fields(model: Any) -> set[str]:
    fields = getattr(model, "model_fields", None)
    if fields is not None:
        return set(fields)
    return set(inspect.signature(model).parameters)


def _daytona_pairs(daytona: Any) -> list[tuple[str, Any, Any]]:
    import typing

    sandbox = daytona.Sandbox
    fs_cls = typing.get_type_hints(inspect.getattr_static(sandbox, "fs").fget)["return"]
    process_cls = typing.get_type_hints(inspect.getattr_static(sandbox, "process").fget)["return"]
    return [
        ("Daytona()", FakeDaytona.__init__, daytona.Daytona.__init__),
        ("Daytona.create", FakeDaytona.create, daytona.Daytona.create),
        ("Sandbox.delete", FakeDaytonaSandbox.delete, sandbox.delete),
        ("Sandbox.fs.upload_file", FakeDaytonaFS.upload_file, fs_cls.upload_file),
        *(
            (
                f"Sandbox.process.{name}",
                getattr(FakeDaytonaProcess, name),
                getattr(process_cls, name),
            )
            for name in (
                "create_session",
                "execute_session_command",
                "send_session_command_input",
                "get_session_command_logs_async",
            )
        ),
    ]


def _prime_pairs(prime: Any) -> list[tuple[str, Any, Any]]:
    client = prime.AsyncSandboxClient
    process = prime.AsyncSandboxProcess
    pairs = [("AsyncSandboxClient()", FakePrimeClient.__init__, client.__init__)]
    for name in ("create", "wait_for_creation", "upload_bytes", "open_process", "delete", "aclose"):
        pairs.append(
            (f"AsyncSandboxClient.{name}", getattr(FakePrimeClient, name), getattr(client, name))
        )
    for name in ("write_stdin", "kill", "aclose"):
        pairs.append(
            (f"AsyncSandboxProcess.{name}", getattr(FakePrimeProcess, name), getattr(process, name))
        )
    return pairs


@contextlib.contextmanager
def _installed(module: str) -> Iterator[Any]:
    """The real SDK while the block runs (the autouse fixture put a fake in sys.modules; the
    real one loads submodules lazily, so it must be in place while it is inspected), or a
    skip saying why."""
    fake = sys.modules.pop(module)
    try:
        yield pytest.importorskip(module, reason=f"{module} is not installed: signatures unchecked")
    finally:
        sys.modules[module] = fake


@pytest.mark.parametrize("kind", ["daytona", "prime"])
def test_fakes_match_the_installed_sdk(kind: str, handler: LMHandler) -> None:
    """The fakes stand in for the real SDK only while they have its shape: the methods and
    model fields DaytonaREPL and PrimeREPL use must exist upstream as the fakes declare them."""
    env = make(
        kind, handler, timeout=20, **({"image": "img", "cpu": 1} if kind == "daytona" else {})
    )
    env.cleanup()
    if kind == "daytona":
        sandbox = sandbox_of("daytona")
        used = {
            "CreateSandboxFromImageParams": sandbox.params,
            "Resources": sandbox.params.fields["resources"],
            "SessionExecuteRequest": sandbox.process.requests[0],
        }
    else:
        used = {"CreateSandboxRequest": sandbox_of("prime").requests[0]}
    with _installed("daytona" if kind == "daytona" else "prime_sandboxes") as real:
        pairs = _daytona_pairs(real) if kind == "daytona" else _prime_pairs(real)
        problems = {
            label: why for label, fake, theirs in pairs if (why := _compatible(fake, theirs))
        }
        assert problems == {}
        _check_fields(kind, real, used)


def _check_fields(kind: str, real: Any, used: dict[str, FakeParams]) -> None:
    """Every model field our code filled in exists in the real model."""
    unknown = {
        model: sorted(set(params.fields) - _fields(getattr(real, model)))
        for model, params in used.items()
    }
    assert all(not fields for fields in unknown.values()), unknown
    if kind == "daytona":
        assert {"api_key", "target"} <= _fields(real.DaytonaConfig)
        assert "snapshot" in _fields(real.CreateSandboxFromSnapshotParams)
        assert "cmd_id" in _fields(real.SessionExecuteResponse)


def test_the_reference_import_paths_work_without_the_sdks(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    monkeypatch.setitem(sys.modules, "daytona", None)
    monkeypatch.setitem(sys.modules, "prime_sandboxes", None)
    from rlm.environments.daytona import DaytonaREPL
    from rlm.environments.prime import PrimeREPL

    assert importlib.import_module("rlm.environments.prime_repl").PrimeREPL is PrimeREPL
    assert importlib.import_module("rlm.environments.daytona_repl").DaytonaREPL is DaytonaREPL
