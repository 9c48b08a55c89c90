"""Parts every sandbox kind (process, docker, and the cloud ones in `cloud.py`) shares.

- `SandboxTransport`: a `Transport` whose `kill` runs its sandbox's release steps exactly once,
  whichever thread (the reader seeing EOF, a timeout, cleanup, the finalizer) gets there first,
  and which keeps the tail of the worker's stderr for the error message when it dies.
- `quietly`: release steps that must all run even when one fails (kill never raises).
- `HostStage`: a host directory the sandbox reads staged files from by exact name (process,
  docker), so a large context crosses once as a file rather than through the channel.
- `keyword_names`: an environment's own constructor keywords, read from its signature, so the
  list of accepted keywords (`extra_kwargs`) cannot drift from the constructor.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlm.environments.sandbox_base import OutputTail, Transport
from rlm.runtime.channel import write_all


class SandboxTransport(Transport):
    """A transport killed once: subclasses say how in `_end`, and read `_killed` to refuse
    writes to a sandbox that is gone."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._killed = False
        self._tail = OutputTail()

    @abstractmethod
    def _end(self) -> None:
        """Stop the sandbox and release what it holds; called once, must not raise."""

    def kill(self) -> None:
        with self._lock:
            if self._killed:
                return
            self._killed = True
        self._end()

    def diagnostics(self) -> str:
        return self._tail.text()


def quietly(*steps: Callable[[], object]) -> None:
    """Run every step, ignoring its failure: a release step of a sandbox that may be half gone
    (its SDK raising anything at all) must not keep the later ones from running."""
    for step in steps:
        with contextlib.suppress(Exception):
            step()


class HostStage:
    """A host directory for staged files: listable by nobody else, each file created fresh
    (never through a link an earlier file left), readable by the sandbox's user by name."""

    def __init__(self, path: Path) -> None:
        os.chmod(path, 0o711)  # files are read by exact name; nothing can be listed or added
        self.path = path

    def write(self, name: str, data: bytes) -> Path:
        path = self.path / name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags, 0o600)
        try:
            os.fchmod(fd, 0o644)  # whatever the umask: the sandbox user must read it
            write_all(fd, data)
        finally:
            os.close(fd)
        return path

    def remove(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path / Path(name).name)


def keyword_names(init: Callable[..., Any]) -> tuple[str, ...]:
    """The keyword-only parameters of a constructor (its `**kwargs` go to the base class)."""
    params = inspect.signature(init).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)
