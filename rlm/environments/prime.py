"""`PrimeREPL` (environment="prime"): the sandbox runtime in a Prime Intellect sandbox.

A VM sandbox is created from a Docker image with python3 >= 3.11 (`python:3.11-slim` by
default), the runtime bundle is uploaded with the files API (nothing is pip-installed), and the
same worker as everywhere (`python3 -m rlm.runtime.worker`) starts as a live process
(`open_process`). The host reaches it only through that process's stdin and stdout, which
carry bytes, so the channel's frames travel unchanged. Outbound network is off by default (an
empty allowlist). Contexts larger than a frame are uploaded once and read once by the worker.

Unlike the reference's Prime environment, nothing listens inside the sandbox and no port is
exposed: no broker anyone could poll or answer.

The SDK is asyncio-only; each environment runs it on its own event loop thread. The Prime API
key stays on the host (`api_key=`, or the SDK's config / PRIME_API_KEY); the worker process
gets only the channel token and Python settings in its environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import posixpath
import secrets
import threading
from collections.abc import Coroutine
from typing import Any, ClassVar, TypeVar

from rlm._optional import require
from rlm.environments.isolated import IsolatedEnv, OutputTail, Transport
from rlm.errors import ConfigurationError, SandboxError
from rlm.runtime.bundle import WORKER_MODULE, bundle_files

T = TypeVar("T")
_WRITE_CHUNK = 1 << 20
_CLEANUP_SECONDS = 30.0


class _LoopThread:
    """A private event loop on a daemon thread: the SDK's process handle belongs to one loop,
    and the host calls it from the environment's reader and writer threads."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            self.loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the loop and wait for it (raises RuntimeError once closed)."""
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:
            coro.close()
            raise
        return future.result(timeout)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.loop.stop)


class PrimeTransport(Transport):
    """A live process's stdin/stdout in a Prime sandbox; kill = delete the sandbox."""

    def __init__(self, runner: _LoopThread, client: Any, sandbox_id: str, process: Any) -> None:
        self.runner = runner
        self.client = client
        self.sandbox_id = sandbox_id
        self.process = process
        self._lock = threading.Lock()
        self._killed = False
        self._tail = OutputTail()
        runner.spawn(self._drain_stderr())

    async def _drain_stderr(self) -> None:
        with contextlib.suppress(Exception):
            async for chunk in self.process.stderr:
                self._tail.add(chunk)

    async def _next(self) -> bytes:
        try:
            return bytes(await self.process.stdout.__anext__())
        except StopAsyncIteration:
            return b""

    def write(self, data: bytes) -> None:
        if self._killed:
            raise BrokenPipeError("the Prime sandbox is gone")
        try:
            for i in range(0, len(data), _WRITE_CHUNK):
                self.runner.call(self.process.write_stdin(data[i : i + _WRITE_CHUNK]))
        except Exception as exc:  # SDK errors: the sandbox is unreachable
            raise BrokenPipeError(f"writing to the Prime sandbox failed: {exc}") from exc

    def read(self) -> bytes:
        while True:
            try:
                data = self.runner.call(self._next())
            except BaseException:  # the stream failed, or the loop was closed by kill()
                return b""
            if data or self._killed:
                return data

    def kill(self) -> None:
        with self._lock:
            if self._killed:
                return
            self._killed = True
        for step in (self.process.kill, self.process.aclose):
            with contextlib.suppress(BaseException):
                self.runner.call(step(), timeout=_CLEANUP_SECONDS)
        with contextlib.suppress(BaseException):
            self.runner.call(self.client.delete(self.sandbox_id), timeout=_CLEANUP_SECONDS)
        closing = getattr(self.client, "aclose", None)
        if closing is not None:
            with contextlib.suppress(BaseException):
                self.runner.call(closing(), timeout=_CLEANUP_SECONDS)
        self.runner.close()

    def describe_exit(self) -> str:
        code = getattr(self.process, "returncode", None)
        return "" if code is None else f"the Prime sandbox's worker exited with status {code}"

    def diagnostics(self) -> str:
        return self._tail.text()


class PrimeREPL(IsolatedEnv):
    """The sandbox runtime in a Prime Intellect sandbox (see the module docstring).

    Extra keywords: `api_key` (default: the SDK's config), `docker_image`
    ("python:3.11-slim"), `name` ("rlm-sandbox"), `timeout_minutes` (sandbox lifetime, 60),
    `cpu_cores` (1), `memory_gb` (default: the worker's memory_mb plus headroom, rounded up),
    `network_access` (False), `region`, `team_id`.
    """

    name: ClassVar[str] = "prime"
    extra_kwargs: ClassVar[tuple[str, ...]] = (
        "api_key",
        "docker_image",
        "name",
        "timeout_minutes",
        "cpu_cores",
        "memory_gb",
        "network_access",
        "region",
        "team_id",
    )
    default_start_timeout: ClassVar[float] = 300.0

    def __init__(
        self,
        *,
        api_key: str | None = None,
        docker_image: str = "python:3.11-slim",
        name: str = "rlm-sandbox",
        timeout_minutes: int = 60,
        cpu_cores: float = 1.0,
        memory_gb: float | None = None,
        network_access: bool = False,
        region: str | None = None,
        team_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(timeout_minutes, bool) or not isinstance(timeout_minutes, int):
            raise ConfigurationError("timeout_minutes must be an int")
        self.api_key = api_key
        self.docker_image = docker_image
        self.sandbox_name = name
        self.timeout_minutes = timeout_minutes
        self.cpu_cores = cpu_cores
        self.memory_gb = memory_gb
        self.network_access = network_access
        self.region = region
        self.team_id = team_id
        self.client: Any = None
        self.sandbox_id: str | None = None
        self._runner: _LoopThread | None = None
        self._root = f"/tmp/rlm-{secrets.token_hex(4)}"
        super().__init__(**kwargs)

    def _create_request(self, prime: Any) -> Any:
        memory = self.memory_gb
        if memory is None:  # the worker's address-space limit, plus room for the OS
            memory = float(max(1, math.ceil(((self.memory_mb or 1024) + 256) / 1024)))
        options: dict[str, Any] = {
            "name": self.sandbox_name,
            "docker_image": self.docker_image,
            "cpu_cores": self.cpu_cores,
            "memory_gb": memory,
            "timeout_minutes": self.timeout_minutes,
            "labels": ["rlm"],
        }
        if not self.network_access:
            options["network_allowlist"] = []  # nothing allowed out
        for key in ("region", "team_id"):
            if getattr(self, key) is not None:
                options[key] = getattr(self, key)
        return prime.CreateSandboxRequest(**options)

    async def _start(self, prime: Any) -> tuple[Any, str, Any]:
        self.client = prime.AsyncSandboxClient(api_key=self.api_key)
        sandbox = await self.client.create(self._create_request(prime))
        self.sandbox_id = str(sandbox.id)
        await self.client.wait_for_creation(self.sandbox_id)
        bundle = f"{self._root}/bundle"
        for name, data in bundle_files().items():
            path = f"{bundle}/{name}"
            await self.client.upload_bytes(self.sandbox_id, path, data, posixpath.basename(path))
        env = {**self.worker_env(), "PYTHONPATH": bundle, "HOME": self._root, "TMPDIR": self._root}
        process = await self.client.open_process(
            self.sandbox_id, f"python3 -s -m {WORKER_MODULE}", working_dir=self._root, env=env
        )
        return self.client, self.sandbox_id, process

    async def _abandon(self) -> None:
        """Delete a sandbox whose start failed half-way."""
        if self.client is not None and self.sandbox_id is not None:
            with contextlib.suppress(Exception):
                await self.client.delete(self.sandbox_id)

    def _launch(self) -> Transport:
        prime = require("prime_sandboxes", extra="prime", package="prime-sandboxes")
        runner = _LoopThread("rlm-prime")
        self._runner = runner
        try:
            client, sandbox_id, process = runner.call(self._start(prime))
        except Exception as exc:
            with contextlib.suppress(BaseException):
                runner.call(self._abandon(), timeout=_CLEANUP_SECONDS)
            runner.close()
            raise SandboxError(f"could not start the Prime sandbox: {exc}") from exc
        return PrimeTransport(runner, client, sandbox_id, process)

    def _stage(self, name: str, data: bytes) -> tuple[str, bool]:
        path = f"{self._root}/stage/{name}"
        if self._runner is None or self.sandbox_id is None:
            raise SandboxError("the Prime sandbox is not running")
        try:
            self._runner.call(self.client.upload_bytes(self.sandbox_id, path, data, name))
        except Exception as exc:
            raise SandboxError(f"uploading to the Prime sandbox failed: {exc}") from exc
        return path, True
