"""`E2BREPL` (environment="e2b"): the sandbox runtime in an E2B sandbox.

The runtime bundle is written into the sandbox with the files API (nothing is pip-installed),
then the same worker as everywhere (`python3 -m rlm.runtime.worker`) runs as a background
command with stdin open. The host reaches it only through that command's stdin (send_stdin)
and stdout stream, which the host opens; internet access is off by default. The SDK decodes
output as text, so the channel's frames travel as base64 lines on this transport. Contexts
larger than a frame are uploaded once with the files API and read once by the worker.

The E2B API key stays on the host (the SDK reads E2B_API_KEY); the sandbox gets only the
channel token and Python settings.
"""

from __future__ import annotations

import contextlib
import inspect
import secrets
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

from rlm._optional import require
from rlm.environments.isolated import IsolatedEnv, OutputTail, Transport
from rlm.errors import ConfigurationError, SandboxError
from rlm.runtime.bundle import WORKER_MODULE, bundle_files

_WRITE_CHUNK = 1 << 20


class E2BTransport(Transport):
    """A background command's stdin/stdout in an E2B sandbox; kill = kill the sandbox."""

    def __init__(self, sandbox: Any, handle: Any) -> None:
        self.sandbox = sandbox
        self.handle = handle
        self._events: Iterator[Any] = iter(handle)
        self._lock = threading.Lock()
        self._killed = False
        self._tail = OutputTail()

    def write(self, data: bytes) -> None:
        if self._killed:
            raise BrokenPipeError("the E2B sandbox is gone")
        try:
            for i in range(0, len(data), _WRITE_CHUNK):
                self.sandbox.commands.send_stdin(
                    self.handle.pid, data[i : i + _WRITE_CHUNK].decode("ascii")
                )
        except Exception as exc:  # SDK errors: the sandbox is unreachable
            raise BrokenPipeError(f"writing to the E2B sandbox failed: {exc}") from exc

    def read(self) -> bytes:
        while True:
            try:
                stdout, stderr, _ = next(self._events)
            except StopIteration:
                return b""
            except Exception:
                return b""
            if stderr:
                self._tail.add(stderr)
            if stdout:
                return str(stdout).encode("ascii", "replace")

    def kill(self) -> None:
        with self._lock:
            if self._killed:
                return
            self._killed = True
        with contextlib.suppress(Exception):
            self.handle.kill()
        with contextlib.suppress(Exception):
            self.sandbox.kill()

    def diagnostics(self) -> str:
        return self._tail.text()


class E2BREPL(IsolatedEnv):
    """The sandbox runtime in an E2B sandbox (see the module docstring).

    Extra keywords: `template` ("base"; any template with python3 >= 3.11), `sandbox_timeout`
    (lifetime in seconds, 3600), `allow_internet_access` (False).
    """

    name: ClassVar[str] = "e2b"
    extra_kwargs: ClassVar[tuple[str, ...]] = (
        "template",
        "sandbox_timeout",
        "allow_internet_access",
    )
    default_start_timeout: ClassVar[float] = 300.0
    base64_lines: ClassVar[bool] = True

    def __init__(
        self,
        *,
        template: str = "base",
        sandbox_timeout: int = 3600,
        allow_internet_access: bool = False,
        **kwargs: Any,
    ) -> None:
        if isinstance(sandbox_timeout, bool) or not isinstance(sandbox_timeout, int):
            raise ConfigurationError("sandbox_timeout must be an int of seconds")
        self.template = template
        self.sandbox_timeout = sandbox_timeout
        self.allow_internet_access = allow_internet_access
        self.sandbox: Any = None
        self._root = f"/tmp/rlm-{secrets.token_hex(4)}"
        super().__init__(**kwargs)

    def _create_sandbox(self, e2b: Any) -> Any:
        cls = e2b.Sandbox
        options = {
            "template": self.template,
            "timeout": self.sandbox_timeout,
            "allow_internet_access": self.allow_internet_access,
        }
        create = getattr(cls, "create", None)
        return create(**options) if create is not None else cls(**options)

    def _launch(self) -> Transport:
        e2b = require("e2b", extra="e2b")
        bundle = f"{self._root}/bundle"
        env = {**self.worker_env(), "PYTHONPATH": bundle, "HOME": self._root, "TMPDIR": self._root}
        try:
            self.sandbox = self._create_sandbox(e2b)
            for name, data in bundle_files().items():
                self.sandbox.files.write(f"{bundle}/{name}", data)
            run = self.sandbox.commands.run
            options: dict[str, Any] = {
                "background": True,
                "stdin": True,
                "envs": env,
                "cwd": self._root,
                "timeout": 0,  # the command lives as long as the sandbox
            }
            with contextlib.suppress(TypeError, ValueError):
                if "retain_output" in inspect.signature(run).parameters:
                    options["retain_output"] = False  # the channel is not kept in memory
            handle = run(f"python3 -s -m {WORKER_MODULE}", **options)
        except Exception as exc:
            if self.sandbox is not None:
                with contextlib.suppress(Exception):
                    self.sandbox.kill()
            raise SandboxError(f"could not start the E2B sandbox: {exc}") from exc
        return E2BTransport(self.sandbox, handle)

    def _stage(self, name: str, data: bytes) -> tuple[str, bool]:
        path = f"{self._root}/stage/{name}"
        try:
            self.sandbox.files.write(path, data)
        except Exception as exc:
            raise SandboxError(f"uploading to the E2B sandbox failed: {exc}") from exc
        return path, True
