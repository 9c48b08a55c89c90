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
import queue
import secrets
import threading
from typing import Any, ClassVar

from rlm.environments.cloud import CloudSandboxEnv, CloudTransport, require_int, text_chunk
from rlm.environments.sandbox_base import Transport
from rlm.environments.sandbox_parts import keyword_names, quietly
from rlm.errors import ConfigurationError
from rlm.runtime.bundle import WORKER_MODULE

_CLOSED = None  # the log stream ended


class DaytonaTransport(CloudTransport):
    """An async session command's input and log stream; kill = delete the sandbox.

    The SDK offers the log stream only as a coroutine with callbacks, so it runs on its own
    thread and event loop, handing stdout chunks to `read` through a queue."""

    label = "Daytona"

    def __init__(self, sandbox: Any, session_id: str, command_id: str) -> None:
        super().__init__()
        self.sandbox = sandbox
        self.session_id = session_id
        self.command_id = command_id
        self._chunks: queue.Queue[str | None] = queue.Queue()
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

    def _send(self, chunk: bytes) -> None:
        self.sandbox.process.send_session_command_input(
            self.session_id, self.command_id, chunk.decode("ascii")
        )

    def read(self) -> bytes:
        while True:
            chunk = self._chunks.get()
            if chunk is _CLOSED:
                self._chunks.put(_CLOSED)  # every later read sees the end too
                return b""
            if chunk:
                return text_chunk(chunk)

    def _end(self) -> None:
        quietly(self.sandbox.delete)
        self._chunks.put(_CLOSED)


class DaytonaREPL(CloudSandboxEnv):
    """The sandbox runtime in a Daytona sandbox (see the module docstring).

    Extra keywords: `api_key` (default: DAYTONA_API_KEY), `target` (region, e.g. "us"),
    `snapshot` (a snapshot name; default: Daytona's default, which has python3 >= 3.11) or
    `image` (a `daytona.Image` or image name, built on first use; then `cpu`, `memory` and `disk`
    in cores / GB apply), `name`, `auto_stop_interval` (idle minutes before Daytona stops it,
    60), `network_block_all` (True), `sandbox_timeout` (seconds to wait for creation, 300).
    """

    name: ClassVar[str] = "daytona"
    label = "Daytona"
    sdk = ("daytona", "daytona", None)

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
        resources = {"cpu": cpu, "memory": memory, "disk": disk}
        if image is None and any(v is not None for v in resources.values()):
            raise ConfigurationError(
                "cpu, memory and disk apply to a Daytona sandbox built from an image: pass image="
            )
        require_int("auto_stop_interval", auto_stop_interval, " of minutes (0: never)")
        # The client's settings (None: the SDK's own, from DAYTONA_API_KEY and the like).
        self.client_settings: dict[str, Any] | None = None
        if api_key is not None or target is not None:
            self.client_settings = {
                k: v for k, v in (("api_key", api_key), ("target", target)) if v
            }
        # What the create-sandbox parameters hold besides the environment and the image.
        self.create_options: dict[str, Any] = {
            "labels": {"rlm": "sandbox"},
            "auto_stop_interval": auto_stop_interval,
            "network_block_all": network_block_all,
        }
        if name is not None:
            self.create_options["name"] = name
        if snapshot is not None:
            self.create_options["snapshot"] = snapshot
        self.image = image
        self.resources = {k: v for k, v in resources.items() if v is not None}
        self.sandbox_timeout = sandbox_timeout
        self.client: Any = None
        self.sandbox: Any = None
        super().__init__(**kwargs)

    extra_kwargs: ClassVar[tuple[str, ...]] = keyword_names(__init__)

    def _params(self, daytona: Any) -> Any:
        options = {"env_vars": self.sandbox_env(), **self.create_options}
        if self.image is None:
            return daytona.CreateSandboxFromSnapshotParams(**options)
        if self.resources:
            options["resources"] = daytona.Resources(**self.resources)
        return daytona.CreateSandboxFromImageParams(image=self.image, **options)

    def _open(self, daytona: Any) -> Transport:
        config = None
        if self.client_settings is not None:
            config = daytona.DaytonaConfig(**self.client_settings)
        self.client = daytona.Daytona(config)
        self.sandbox = self.client.create(self._params(daytona), timeout=self.sandbox_timeout)
        self.upload_bundle()
        session_id = f"rlm-{secrets.token_hex(8)}"
        self.sandbox.process.create_session(session_id)
        request = daytona.SessionExecuteRequest(
            command=f"cd {self.root} && exec python3 -s -m {WORKER_MODULE}",
            run_async=True,
            suppress_input_echo=True,  # the channel's own frames must not come back
        )
        command_id = self.sandbox.process.execute_session_command(session_id, request).cmd_id
        return DaytonaTransport(self.sandbox, session_id, command_id)

    def _abandon(self) -> None:
        if self.sandbox is not None:
            quietly(self.sandbox.delete)

    def _upload(self, path: str, data: bytes) -> None:
        self.sandbox.fs.upload_file(data, path)
