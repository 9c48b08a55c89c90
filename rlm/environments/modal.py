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
import posixpath
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

from rlm.environments.cloud import (
    CloudSandboxEnv,
    CloudTransport,
    next_chunk,
    require_int,
    text_chunk,
)
from rlm.environments.sandbox_base import Transport
from rlm.environments.sandbox_parts import keyword_names, quietly
from rlm.runtime.bundle import WORKER_MODULE, bundle_dir


class ModalTransport(CloudTransport):
    """A Modal Sandbox's stdin/stdout; kill = terminate the Sandbox."""

    label = "Modal"

    def __init__(self, sandbox: Any) -> None:
        super().__init__()
        self.sandbox = sandbox
        self._stdout: Iterator[Any] = iter(sandbox.stdout)
        threading.Thread(target=self._drain_stderr, name="rlm-modal-stderr", daemon=True).start()

    def _drain_stderr(self) -> None:
        with contextlib.suppress(Exception):
            for chunk in self.sandbox.stderr:
                self._tail.add(chunk)

    def _send(self, chunk: bytes) -> None:
        self.sandbox.stdin.write(chunk)
        self.sandbox.stdin.drain()  # the SDK buffers at most 2 MiB of stdin between drains

    def read(self) -> bytes:
        while (chunk := next_chunk(self._stdout)) is not None:
            data = text_chunk(chunk)
            if data:
                return data
        return b""

    def _end(self) -> None:
        quietly(self.sandbox.terminate)

    def describe_exit(self) -> str:
        with contextlib.suppress(Exception):
            code = self.sandbox.poll()
            if code is not None:
                return f"the Modal sandbox exited with status {code}"
        return ""


class ModalREPL(CloudSandboxEnv):
    """The sandbox runtime in a Modal Sandbox (see the module docstring).

    Extra keywords: `image` (a `modal.Image` with python3 >= 3.11; default
    `modal.Image.debian_slim()`), `app_name` ("rlm-sandbox"), `sandbox_timeout` (lifetime in
    seconds, 3600), `cpu` (1.0), `block_network` (True), `region`.
    """

    name: ClassVar[str] = "modal"
    label = "Modal"
    sdk = ("modal", "modal", None)

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
        require_int("sandbox_timeout", sandbox_timeout, " of seconds")
        self.image = image
        self.app_name = app_name
        # What `modal.Sandbox.create` gets besides the app, the image and the environment.
        self.create_options: dict[str, Any] = {
            "workdir": "/tmp",
            "timeout": sandbox_timeout,
            "block_network": block_network,
            "cpu": cpu,
        }
        if region is not None:
            self.create_options["region"] = region
        self.sandbox: Any = None
        super().__init__(**kwargs)

    extra_kwargs: ClassVar[tuple[str, ...]] = keyword_names(__init__)

    @property
    def bundle_root(self) -> str:
        return "/opt/rlm"  # added to the image, not uploaded

    def _open(self, modal: Any) -> Transport:
        app = modal.App.lookup(self.app_name, create_if_missing=True)
        image = self.image if self.image is not None else modal.Image.debian_slim()
        self.sandbox = modal.Sandbox.create(
            "python3",
            "-s",
            "-m",
            WORKER_MODULE,
            app=app,
            image=image.add_local_dir(str(bundle_dir()), remote_path=self.bundle_root),
            secrets=[modal.Secret.from_dict(self.sandbox_env(home="/tmp"))],
            memory=(self.memory_mb or 1024) + 256,
            **self.create_options,
        )
        return ModalTransport(self.sandbox)

    def _abandon(self) -> None:
        if self.sandbox is not None:
            quietly(self.sandbox.terminate)

    def _upload(self, path: str, data: bytes) -> None:
        filesystem = getattr(self.sandbox, "filesystem", None)
        if filesystem is not None:
            filesystem.write_bytes(data, path)
            return
        self.sandbox.mkdir(posixpath.dirname(path), parents=True)  # older SDKs: file handles
        with self.sandbox.open(path, "wb") as f:
            f.write(data)
