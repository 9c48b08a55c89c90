"""`ModalREPL` (environment="modal"): the sandbox runtime in a Modal Sandbox.

The same worker as every other sandbox (`python3 -m rlm.runtime.worker`) is the Sandbox's
command; the host reaches it only through the Sandbox's stdin/stdout streams, which the host
opens (the sandbox dials nothing, and `block_network=True` by default). Those streams carry
text, so the channel's frames travel as base64 lines on this transport. The runtime bundle is
added to the image as a local directory (nothing is pip-installed); contexts larger than a
frame are uploaded once through the Sandbox filesystem API and read once by the worker.

Modal credentials stay on the host (the SDK's own config); the sandbox gets only the channel
token and Python settings in its environment.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

from rlm._optional import require
from rlm.environments.isolated import IsolatedEnv, OutputTail, Transport
from rlm.errors import ConfigurationError, SandboxError
from rlm.runtime.bundle import WORKER_MODULE, bundle_dir

_BUNDLE_PATH = "/opt/rlm"
_WRITE_CHUNK = 1 << 20  # the SDK buffers at most 2 MiB of stdin between drains


def _as_bytes(chunk: Any) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    return str(chunk).encode("ascii", "replace")  # base64 lines: anything else is corruption


class ModalTransport(Transport):
    """A Modal Sandbox's stdin/stdout; kill = terminate the Sandbox."""

    def __init__(self, sandbox: Any) -> None:
        self.sandbox = sandbox
        self._stdout: Iterator[Any] = iter(sandbox.stdout)
        self._lock = threading.Lock()
        self._killed = False
        self._tail = OutputTail()
        threading.Thread(target=self._drain_stderr, name="rlm-modal-stderr", daemon=True).start()

    def _drain_stderr(self) -> None:
        with contextlib.suppress(Exception):
            for chunk in self.sandbox.stderr:
                self._tail.add(chunk)

    def write(self, data: bytes) -> None:
        if self._killed:
            raise BrokenPipeError("the Modal sandbox is gone")
        try:
            for i in range(0, len(data), _WRITE_CHUNK):
                self.sandbox.stdin.write(data[i : i + _WRITE_CHUNK])
                self.sandbox.stdin.drain()
        except Exception as exc:  # SDK errors: the sandbox is unreachable
            raise BrokenPipeError(f"writing to the Modal sandbox failed: {exc}") from exc

    def read(self) -> bytes:
        while True:
            try:
                chunk = next(self._stdout)
            except StopIteration:
                return b""
            except Exception:
                return b""
            data = _as_bytes(chunk)
            if data:
                return data

    def kill(self) -> None:
        with self._lock:
            if self._killed:
                return
            self._killed = True
        with contextlib.suppress(Exception):
            self.sandbox.terminate()

    def describe_exit(self) -> str:
        with contextlib.suppress(Exception):
            code = self.sandbox.poll()
            if code is not None:
                return f"the Modal sandbox exited with status {code}"
        return ""

    def diagnostics(self) -> str:
        return self._tail.text()


class ModalREPL(IsolatedEnv):
    """The sandbox runtime in a Modal Sandbox (see the module docstring).

    Extra keywords: `image` (a `modal.Image` with python3 >= 3.11; default
    `modal.Image.debian_slim()`), `app_name` ("rlm-sandbox"), `sandbox_timeout` (lifetime in
    seconds, 3600), `cpu` (1.0), `block_network` (True), `region`.
    """

    name: ClassVar[str] = "modal"
    extra_kwargs: ClassVar[tuple[str, ...]] = (
        "image",
        "app_name",
        "sandbox_timeout",
        "cpu",
        "block_network",
        "region",
    )
    default_start_timeout: ClassVar[float] = 300.0
    base64_lines: ClassVar[bool] = True

    def __init__(
        self,
        *,
        image: Any = None,
        app_name: str = "rlm-sandbox",
        sandbox_timeout: int = 3600,
        cpu: float = 1.0,
        block_network: bool = True,
        region: str | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(sandbox_timeout, bool) or not isinstance(sandbox_timeout, int):
            raise ConfigurationError("sandbox_timeout must be an int of seconds")
        self.image = image
        self.app_name = app_name
        self.sandbox_timeout = sandbox_timeout
        self.cpu = cpu
        self.block_network = block_network
        self.region = region
        self.sandbox: Any = None
        self._stage_dir = f"/tmp/rlm-stage-{secrets.token_hex(4)}"
        super().__init__(**kwargs)

    def _launch(self) -> Transport:
        modal = require("modal", extra="modal")
        env = {**self.worker_env(), "PYTHONPATH": _BUNDLE_PATH, "HOME": "/tmp", "TMPDIR": "/tmp"}
        try:
            app = modal.App.lookup(self.app_name, create_if_missing=True)
            image = self.image if self.image is not None else modal.Image.debian_slim()
            image = image.add_local_dir(str(bundle_dir()), remote_path=_BUNDLE_PATH)
            options: dict[str, Any] = {
                "app": app,
                "image": image,
                "secrets": [modal.Secret.from_dict(env)],
                "workdir": "/tmp",
                "timeout": self.sandbox_timeout,
                "block_network": self.block_network,
                "cpu": self.cpu,
                "memory": (self.memory_mb or 1024) + 256,
            }
            if self.region is not None:
                options["region"] = self.region
            self.sandbox = modal.Sandbox.create("python3", "-s", "-m", WORKER_MODULE, **options)
        except Exception as exc:
            raise SandboxError(f"could not start the Modal sandbox: {exc}") from exc
        return ModalTransport(self.sandbox)

    def _stage(self, name: str, data: bytes) -> tuple[str, bool]:
        path = f"{self._stage_dir}/{name}"
        try:
            filesystem = getattr(self.sandbox, "filesystem", None)
            if filesystem is not None:
                filesystem.write_bytes(data, path)
            else:  # older SDKs: the file handle API
                self.sandbox.mkdir(self._stage_dir, parents=True)
                with self.sandbox.open(path, "wb") as f:
                    f.write(data)
        except Exception as exc:
            raise SandboxError(f"uploading to the Modal sandbox failed: {exc}") from exc
        return path, True
