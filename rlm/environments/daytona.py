"""`DaytonaREPL` (environment="daytona"): the sandbox runtime in a Daytona sandbox.

The runtime bundle is uploaded with the filesystem API (nothing is pip-installed), then the same
worker as everywhere (`python3 -m rlm.runtime.worker`) runs as an asynchronous command of a
process session. The host reaches it only through that command: its input
(`send_session_command_input`, echo suppressed) and its log stream, which the host opens over
the SDK's websocket. Both carry text, so the channel's frames travel as base64 lines. The
sandbox's outbound network is blocked by default (`network_block_all`). Contexts larger than a
frame are uploaded once with the filesystem API and read once by the worker.

Unlike the reference's Daytona environment, nothing listens inside the sandbox and no public
preview URL exists: no broker anyone could poll or answer.

The Daytona API key stays on the host (`api_key=`, or the SDK reads DAYTONA_API_KEY); the
sandbox gets only the channel token and Python settings in its environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import secrets
import threading
from typing import Any, ClassVar

from rlm._optional import require
from rlm.environments.isolated import IsolatedEnv, OutputTail, Transport
from rlm.errors import ConfigurationError, SandboxError
from rlm.runtime.bundle import WORKER_MODULE, bundle_files

_WRITE_CHUNK = 1 << 20
_CLOSED = None  # the log stream ended


class DaytonaTransport(Transport):
    """An async session command's input and log stream; kill = delete the sandbox.

    The SDK offers the log stream only as a coroutine with callbacks, so it runs on its own
    thread and event loop, handing stdout chunks to `read` through a queue."""

    def __init__(self, sandbox: Any, session_id: str, command_id: str) -> None:
        self.sandbox = sandbox
        self.session_id = session_id
        self.command_id = command_id
        self._chunks: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._killed = False
        self._tail = OutputTail()
        threading.Thread(target=self._follow, name="rlm-daytona-logs", daemon=True).start()

    def _follow(self) -> None:
        try:
            asyncio.run(
                self.sandbox.process.get_session_command_logs_async(
                    self.session_id, self.command_id, self._chunks.put, self._tail.add
                )
            )
        except Exception as exc:  # the stream broke: the worker is unreachable
            self._tail.add(f"\n[daytona log stream ended: {exc}]\n")
        finally:
            self._chunks.put(_CLOSED)

    def write(self, data: bytes) -> None:
        if self._killed:
            raise BrokenPipeError("the Daytona sandbox is gone")
        try:
            for i in range(0, len(data), _WRITE_CHUNK):
                self.sandbox.process.send_session_command_input(
                    self.session_id, self.command_id, data[i : i + _WRITE_CHUNK].decode("ascii")
                )
        except Exception as exc:  # SDK errors: the sandbox is unreachable
            raise BrokenPipeError(f"writing to the Daytona sandbox failed: {exc}") from exc

    def read(self) -> bytes:
        while True:
            chunk = self._chunks.get()
            if chunk is _CLOSED:
                self._chunks.put(_CLOSED)  # every later read sees the end too
                return b""
            if chunk:
                return chunk.encode("ascii", "replace")  # base64 lines: anything else is corrupt

    def kill(self) -> None:
        with self._lock:
            if self._killed:
                return
            self._killed = True
        with contextlib.suppress(Exception):
            self.sandbox.delete()
        self._chunks.put(_CLOSED)

    def diagnostics(self) -> str:
        return self._tail.text()


class DaytonaREPL(IsolatedEnv):
    """The sandbox runtime in a Daytona sandbox (see the module docstring).

    Extra keywords: `api_key` (default: DAYTONA_API_KEY), `target` (region, e.g. "us"),
    `snapshot` (a snapshot name; default: Daytona's default, which has python3 >= 3.11) or
    `image` (a `daytona.Image` or image name, built on first use; then `cpu`, `memory` and `disk`
    in cores / GB apply), `name`, `auto_stop_interval` (idle minutes before Daytona stops it,
    60), `network_block_all` (True), `sandbox_timeout` (seconds to wait for creation, 300).
    """

    name: ClassVar[str] = "daytona"
    extra_kwargs: ClassVar[tuple[str, ...]] = (
        "api_key",
        "target",
        "snapshot",
        "image",
        "cpu",
        "memory",
        "disk",
        "name",
        "auto_stop_interval",
        "network_block_all",
        "sandbox_timeout",
    )
    default_start_timeout: ClassVar[float] = 300.0
    base64_lines: ClassVar[bool] = True

    def __init__(
        self,
        *,
        api_key: str | None = None,
        target: str | None = None,
        snapshot: str | None = None,
        image: Any = None,
        cpu: int | None = None,
        memory: int | None = None,
        disk: int | None = None,
        name: str | None = None,
        auto_stop_interval: int = 60,
        network_block_all: bool = True,
        sandbox_timeout: float = 300.0,
        **kwargs: Any,
    ) -> None:
        if snapshot is not None and image is not None:
            raise ConfigurationError(
                "give the Daytona environment a snapshot or an image, not both"
            )
        if image is None and any(v is not None for v in (cpu, memory, disk)):
            raise ConfigurationError(
                "cpu, memory and disk apply to a Daytona sandbox built from an image: pass image="
            )
        if isinstance(auto_stop_interval, bool) or not isinstance(auto_stop_interval, int):
            raise ConfigurationError("auto_stop_interval must be an int of minutes (0: never)")
        self.api_key = api_key
        self.target = target
        self.snapshot = snapshot
        self.image = image
        self.resources = {"cpu": cpu, "memory": memory, "disk": disk}
        self.sandbox_name = name
        self.auto_stop_interval = auto_stop_interval
        self.network_block_all = network_block_all
        self.sandbox_timeout = sandbox_timeout
        self.client: Any = None
        self.sandbox: Any = None
        self._root = f"/tmp/rlm-{secrets.token_hex(4)}"
        super().__init__(**kwargs)

    def _params(self, daytona: Any, env: dict[str, str]) -> Any:
        options: dict[str, Any] = {
            "env_vars": env,
            "labels": {"rlm": "sandbox"},
            "auto_stop_interval": self.auto_stop_interval,
            "network_block_all": self.network_block_all,
        }
        if self.sandbox_name is not None:
            options["name"] = self.sandbox_name
        if self.image is None:
            if self.snapshot is not None:
                options["snapshot"] = self.snapshot
            return daytona.CreateSandboxFromSnapshotParams(**options)
        resources = {k: v for k, v in self.resources.items() if v is not None}
        if resources:
            options["resources"] = daytona.Resources(**resources)
        return daytona.CreateSandboxFromImageParams(image=self.image, **options)

    def _launch(self) -> Transport:
        daytona = require("daytona", extra="daytona")
        bundle = f"{self._root}/bundle"
        env = {**self.worker_env(), "PYTHONPATH": bundle, "HOME": self._root, "TMPDIR": self._root}
        try:
            config = None
            if self.api_key is not None or self.target is not None:
                settings = {"api_key": self.api_key, "target": self.target}
                config = daytona.DaytonaConfig(**{k: v for k, v in settings.items() if v})
            self.client = daytona.Daytona(config)
            self.sandbox = self.client.create(
                self._params(daytona, env), timeout=self.sandbox_timeout
            )
            for name, data in bundle_files().items():
                self.sandbox.fs.upload_file(data, f"{bundle}/{name}")
            session_id = f"rlm-{secrets.token_hex(8)}"
            self.sandbox.process.create_session(session_id)
            request = daytona.SessionExecuteRequest(
                command=f"cd {self._root} && exec python3 -s -m {WORKER_MODULE}",
                run_async=True,
                suppress_input_echo=True,  # the channel's own frames must not come back
            )
            command_id = self.sandbox.process.execute_session_command(session_id, request).cmd_id
        except Exception as exc:
            if self.sandbox is not None:
                with contextlib.suppress(Exception):
                    self.sandbox.delete()
            raise SandboxError(f"could not start the Daytona sandbox: {exc}") from exc
        return DaytonaTransport(self.sandbox, session_id, command_id)

    def _stage(self, name: str, data: bytes) -> tuple[str, bool]:
        path = f"{self._root}/stage/{name}"
        try:
            self.sandbox.fs.upload_file(data, path)
        except Exception as exc:
            raise SandboxError(f"uploading to the Daytona sandbox failed: {exc}") from exc
        return path, True
