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
from collections.abc import Iterator
from typing import Any, ClassVar

from rlm.environments.cloud import CloudSandboxEnv, CloudTransport, next_chunk, require_int
from rlm.environments.sandbox_base import Transport
from rlm.environments.sandbox_parts import keyword_names, quietly
from rlm.runtime.bundle import WORKER_MODULE


class E2BTransport(CloudTransport):
    """A background command's stdin/stdout in an E2B sandbox; kill = kill the sandbox."""

    label = "E2B"

    def __init__(self, sandbox: Any, handle: Any) -> None:
        super().__init__()
        self.sandbox = sandbox
        self.handle = handle
        self._events: Iterator[Any] = iter(handle)

    def _send(self, chunk: bytes) -> None:
        self.sandbox.commands.send_stdin(self.handle.pid, chunk.decode("ascii"))

    def read(self) -> bytes:
        while (event := next_chunk(self._events)) is not None:
            stdout, stderr, _ = event
            if stderr:
                self._tail.add(stderr)
            if stdout:
                return str(stdout).encode("ascii", "replace")
        return b""

    def _end(self) -> None:
        quietly(self.handle.kill, self.sandbox.kill)


class E2BREPL(CloudSandboxEnv):
    """The sandbox runtime in an E2B sandbox (see the module docstring).

    Extra keywords: `template` ("base"; any template with python3 >= 3.11), `sandbox_timeout`
    (lifetime in seconds, 3600), `allow_internet_access` (False).
    """

    name: ClassVar[str] = "e2b"
    label = "E2B"
    sdk = ("e2b", "e2b", None)

    def __init__(
        self,
        *,
        template: str = "base",
        sandbox_timeout: int = 3600,
        allow_internet_access: bool = False,
        **kwargs: Any,
    ) -> None:
        require_int("sandbox_timeout", sandbox_timeout, " of seconds")
        # What `e2b.Sandbox.create` gets.
        self.create_options: dict[str, Any] = {
            "template": template,
            "timeout": sandbox_timeout,
            "allow_internet_access": allow_internet_access,
        }
        self.sandbox: Any = None
        super().__init__(**kwargs)

    extra_kwargs: ClassVar[tuple[str, ...]] = keyword_names(__init__)

    def _open(self, e2b: Any) -> Transport:
        create = getattr(e2b.Sandbox, "create", None)  # older SDKs: the constructor
        self.sandbox = (create or e2b.Sandbox)(**self.create_options)
        self.upload_bundle()
        run = self.sandbox.commands.run
        options: dict[str, Any] = {
            "background": True,
            "stdin": True,
            "envs": self.sandbox_env(),
            "cwd": self.root,
            "timeout": 0,  # the command lives as long as the sandbox
        }
        with contextlib.suppress(TypeError, ValueError):
            if "retain_output" in inspect.signature(run).parameters:
                options["retain_output"] = False  # the channel is not kept in memory
        handle = run(f"python3 -s -m {WORKER_MODULE}", **options)
        return E2BTransport(self.sandbox, handle)

    def _abandon(self) -> None:
        if self.sandbox is not None:
            quietly(self.sandbox.kill)

    def _upload(self, path: str, data: bytes) -> None:
        self.sandbox.files.write(path, data)
