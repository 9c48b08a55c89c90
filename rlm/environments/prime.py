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
import threading
from collections.abc import Coroutine
from typing import Any, ClassVar, TypeVar

from rlm.environments.cloud import CloudSandboxEnv, CloudTransport, require_int
from rlm.environments.sandbox_base import Transport
from rlm.environments.sandbox_parts import keyword_names
from rlm.errors import SandboxError
from rlm.runtime.bundle import WORKER_MODULE

T = TypeVar("T")
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


class PrimeTransport(CloudTransport):
    """A live process's stdin/stdout in a Prime sandbox; kill = delete the sandbox."""

    label = "Prime"

    def __init__(self, runner: _LoopThread, client: Any, sandbox_id: str, process: Any) -> None:
        super().__init__()
        self.runner = runner
        self.client = client
        self.sandbox_id = sandbox_id
        self.process = process
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

    def _send(self, chunk: bytes) -> None:
        self.runner.call(self.process.write_stdin(chunk))

    def read(self) -> bytes:
        while True:
            try:
                data = self.runner.call(self._next())
            except BaseException:  # the stream failed, or the loop was closed by kill()
                return b""
            if data or self._killed:
                return data

    def _end(self) -> None:
        steps = [
            self.process.kill,
            self.process.aclose,
            lambda: self.client.delete(self.sandbox_id),
        ]
        closing = getattr(self.client, "aclose", None)
        if closing is not None:
            steps.append(closing)
        for step in steps:
            with contextlib.suppress(BaseException):
                self.runner.call(step(), timeout=_CLEANUP_SECONDS)
        self.runner.close()

    def describe_exit(self) -> str:
        code = getattr(self.process, "returncode", None)
        return "" if code is None else f"the Prime sandbox's worker exited with status {code}"


class PrimeREPL(CloudSandboxEnv):
    """The sandbox runtime in a Prime Intellect sandbox (see the module docstring).

    Extra keywords: `api_key` (default: the SDK's config), `docker_image`
    ("python:3.11-slim"), `name` ("rlm-sandbox"), `timeout_minutes` (sandbox lifetime, 60),
    `cpu_cores` (1), `memory_gb` (default: the worker's memory_mb plus headroom, rounded up),
    `network_access` (False), `region`, `team_id`.
    """

    name: ClassVar[str] = "prime"
    label = "Prime"
    sdk = ("prime_sandboxes", "prime", "prime-sandboxes")
    base64_lines = False  # the process's streams carry bytes: frames travel unchanged

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
        require_int("timeout_minutes", timeout_minutes)
        self.api_key = api_key
        self.memory_gb = memory_gb
        # What `CreateSandboxRequest` holds besides the memory (known once limits are).
        self.request_options: dict[str, Any] = {
            "name": name,
            "docker_image": docker_image,
            "cpu_cores": cpu_cores,
            "timeout_minutes": timeout_minutes,
            "labels": ["rlm"],
        }
        if not network_access:
            self.request_options["network_allowlist"] = []  # nothing allowed out
        for key, value in (("region", region), ("team_id", team_id)):
            if value is not None:
                self.request_options[key] = value
        self.client: Any = None
        self.sandbox_id: str | None = None
        self._runner: _LoopThread | None = None
        super().__init__(**kwargs)

    extra_kwargs: ClassVar[tuple[str, ...]] = keyword_names(__init__)

    def _create_request(self, prime: Any) -> Any:
        memory = self.memory_gb
        if memory is None:  # the worker's address-space limit, plus room for the OS
            memory = float(max(1, math.ceil(((self.memory_mb or 1024) + 256) / 1024)))
        return prime.CreateSandboxRequest(memory_gb=memory, **self.request_options)

    async def _create(self, prime: Any) -> None:
        self.client = prime.AsyncSandboxClient(api_key=self.api_key)
        sandbox = await self.client.create(self._create_request(prime))
        self.sandbox_id = str(sandbox.id)
        await self.client.wait_for_creation(self.sandbox_id)

    def _open(self, prime: Any) -> Transport:
        self._runner = runner = _LoopThread("rlm-prime")
        runner.call(self._create(prime))
        assert self.sandbox_id is not None
        self.upload_bundle()
        process = runner.call(
            self.client.open_process(
                self.sandbox_id,
                f"python3 -s -m {WORKER_MODULE}",
                working_dir=self.root,
                env=self.sandbox_env(),
            )
        )
        return PrimeTransport(runner, self.client, self.sandbox_id, process)

    def _abandon(self) -> None:
        """Delete a sandbox whose start failed half-way, and end the loop."""
        if self._runner is None:
            return
        if self.client is not None and self.sandbox_id is not None:
            with contextlib.suppress(BaseException):
                self._runner.call(self.client.delete(self.sandbox_id), timeout=_CLEANUP_SECONDS)
        self._runner.close()

    def _upload(self, path: str, data: bytes) -> None:
        if self._runner is None or self.sandbox_id is None:
            raise SandboxError("the Prime sandbox is not running")
        name = posixpath.basename(path)
        self._runner.call(self.client.upload_bytes(self.sandbox_id, path, data, name))
