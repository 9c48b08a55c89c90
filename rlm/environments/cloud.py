"""What the cloud sandboxes (modal, e2b, daytona, prime) do alike.

Each one starts a sandbox through its SDK, puts the runtime bundle in it, runs the same worker
(`python3 -m rlm.runtime.worker`) and reaches it only through streams the host opens. They
differ in the SDK calls; the rest is here:

- `CloudTransport`: writes in chunks the SDKs accept (a failing SDK call is a broken pipe, so
  the environment reports a dead sandbox), killed once (`SandboxTransport`).
- `CloudSandboxEnv`: the SDK imported on first use (the extra to install named when missing),
  a start that fails half-way releases what it made and is a `SandboxError`, the bundle and
  staged contexts uploaded under a per-sandbox directory, and the worker's environment.

The SDK credentials stay on the host; the sandbox gets only the channel token and Python
settings in its environment.
"""

from __future__ import annotations

import secrets
from abc import abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

from rlm._optional import require
from rlm.environments.isolated import IsolatedEnv
from rlm.environments.sandbox_base import Transport
from rlm.environments.sandbox_parts import SandboxTransport
from rlm.errors import ConfigurationError, SandboxError
from rlm.runtime.bundle import bundle_files

WRITE_CHUNK = 1 << 20  # the SDKs buffer a few MiB of input at most (modal: 2 MiB)


def require_int(name: str, value: Any, unit: str = "") -> None:
    """ConfigurationError unless `value` is an int (a bool is not): the SDKs take whole units."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an int{unit}")


def text_chunk(chunk: Any) -> bytes:
    """A chunk of a text stream as bytes: base64 lines are ASCII, anything else is corrupt
    (and is caught as such by the channel decoder)."""
    if isinstance(chunk, bytes):
        return chunk
    return str(chunk).encode("ascii", "replace")


def next_chunk(chunks: Iterator[Any]) -> Any:
    """The next item of an SDK's output stream, or None once it ends or breaks."""
    try:
        return next(chunks)
    except Exception:  # StopIteration, or the SDK's error: either way the worker is gone
        return None


class CloudTransport(SandboxTransport):
    """A cloud sandbox's input and output streams; `label` names it in error messages."""

    label: ClassVar[str] = "cloud"

    @abstractmethod
    def _send(self, chunk: bytes) -> None:
        """Hand one chunk (at most WRITE_CHUNK bytes) to the worker's stdin."""

    def write(self, data: bytes) -> None:
        if self._killed:
            raise BrokenPipeError(f"the {self.label} sandbox is gone")
        try:
            for i in range(0, len(data), WRITE_CHUNK):
                self._send(data[i : i + WRITE_CHUNK])
        except Exception as exc:  # SDK errors: the sandbox is unreachable
            raise BrokenPipeError(f"writing to the {self.label} sandbox failed: {exc}") from exc


class CloudSandboxEnv(IsolatedEnv):
    """Base of the cloud environments: subclasses open the sandbox (`_open`), upload one file
    (`_upload`) and release a half-started sandbox (`_abandon`)."""

    label: ClassVar[str] = "cloud"  # the provider's name in messages ("Modal")
    sdk: ClassVar[tuple[str, str, str | None]] = ("", "", None)  # module, extra, pip package
    default_start_timeout: ClassVar[float] = 300.0
    base64_lines: ClassVar[bool] = True  # the SDKs' streams carry text

    def __init__(self, **kwargs: Any) -> None:
        self.root = f"/tmp/rlm-{secrets.token_hex(4)}"  # the sandbox's files, HOME and cwd
        super().__init__(**kwargs)

    @abstractmethod
    def _open(self, sdk: Any) -> Transport:
        """Create the sandbox, put the bundle in it, start the worker; return its streams."""

    @abstractmethod
    def _upload(self, path: str, data: bytes) -> None:
        """Write `data` to `path` inside the running sandbox."""

    def _abandon(self) -> None:
        """Release a sandbox whose start failed half-way (best effort; must not raise)."""

    def _launch(self) -> Transport:
        module, extra, package = self.sdk
        sdk = require(module, extra=extra, package=package)
        try:
            return self._open(sdk)
        except Exception as exc:
            self._abandon()
            raise SandboxError(f"could not start the {self.label} sandbox: {exc}") from exc

    @property
    def bundle_root(self) -> str:
        return f"{self.root}/bundle"

    def upload_bundle(self) -> None:
        for name, data in bundle_files().items():
            self._upload(f"{self.bundle_root}/{name}", data)

    def sandbox_env(self, home: str | None = None) -> dict[str, str]:
        """The worker's environment: `worker_env`, the bundle on its path, home (and temp
        files) in `home`, by default the sandbox's root."""
        home = home or self.root
        return {**self.worker_env(), "PYTHONPATH": self.bundle_root, "HOME": home, "TMPDIR": home}

    def _stage(self, name: str, data: bytes) -> tuple[str, bool]:
        path = f"{self.root}/stage/{name}"
        try:
            self._upload(path, data)
        except Exception as exc:
            raise SandboxError(f"uploading to the {self.label} sandbox failed: {exc}") from exc
        return path, True
