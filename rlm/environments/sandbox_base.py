"""What the host side of every sandbox is built from, apart from `IsolatedEnv` itself: the
`Transport` a sandbox kind carries bytes over, the tail of its output, argument checks, the
scrubbed environment a worker starts with, and the registry of live sandboxes that an
interrupted host kills before it exits.
"""

from __future__ import annotations

import collections
import concurrent.futures.thread  # noqa: F401 - its exit hook must be registered before ours
import os
import shutil
import sys
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Protocol

from rlm.errors import ConfigurationError, ContextLoadError
from rlm.runtime import jsondata


class LiveSandbox(Protocol):
    """What the registry of live sandboxes needs of one (an `IsolatedEnv`)."""

    @property
    def alive(self) -> bool: ...

    def _die(self, reason: str) -> None: ...


class Transport(ABC):
    """Carries the channel's bytes to and from one sandbox worker, and can end it."""

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Send bytes to the worker's stdin (blocking; raises OSError when it is gone)."""

    @abstractmethod
    def read(self) -> bytes:
        """Next bytes from the worker's stdout; b"" once it is closed."""

    @abstractmethod
    def kill(self) -> None:
        """Stop the sandbox for good and release it. Idempotent, thread-safe, never raises."""

    def describe_exit(self) -> str:
        """How the worker ended (exit status, container state), when known."""
        return ""

    def diagnostics(self) -> str:
        """The end of what the worker wrote to its own stderr (startup errors, crashes)."""
        return ""


class OutputTail:
    """The last `limit` bytes (about) a sandbox wrote to its own stderr, for the error message
    when it dies. Thread-safe: a transport's drain thread adds while another thread reads."""

    def __init__(self, limit: int = 16_384) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0

    def add(self, chunk: bytes | str) -> None:
        data = chunk.encode("utf-8", "replace") if isinstance(chunk, str) else bytes(chunk)
        with self._lock:
            self._chunks.append(data)
            self._size += len(data)
            while self._size > self._limit and len(self._chunks) > 1:
                self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        with self._lock:
            return b"".join(self._chunks).decode("utf-8", "replace")


def release(transport: Transport, paths: list[Path]) -> None:
    """Finalizer: never references the env, so it can run when the env is collected."""
    transport.kill()
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def check_json(value: Any, where: str = "context") -> None:
    """ContextLoadError unless `value` is JSON data (`rlm.runtime.jsondata`, as everywhere)."""
    jsondata.check_json(value, where, error=ContextLoadError)


def encode_value(value: Any) -> tuple[bytes, str]:
    """File bytes for a value: a str as raw UTF-8 ("text"), anything else as JSON ("json")."""
    if isinstance(value, str):
        try:
            return value.encode("utf-8"), "text"
        except UnicodeEncodeError:  # lone surrogates: JSON escapes carry them exactly
            return jsondata.json_bytes(value), "json"
    return jsondata.json_bytes(value), "json"


def text_of(value: Any, limit: int | None = None) -> str:
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    return text if limit is None else text[:limit]


def positive(name: str, value: Any, *, allow_none: bool = True, integer: bool = False) -> Any:
    if value is None and allow_none:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        what = "a positive integer" if integer else "a positive number"
        raise ConfigurationError(
            f"{name} must be {what}{' or None' if allow_none else ''}, got {value!r}"
        )
    return value


def register_live(env: LiveSandbox) -> None:
    with _live_lock:
        _live.add(env)


def scrubbed_env(
    extra: Mapping[str, str] | None = None, *, home: str | None = None
) -> dict[str, str]:
    """A child environment built from an allowlist: no provider keys, no tokens of the host."""
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")}
    if home is not None:
        env.update(HOME=home, TMPDIR=home)
    env.update(extra or {})
    return env


_live: weakref.WeakSet[LiveSandbox] = weakref.WeakSet()
_live_lock = threading.Lock()


def live_sandboxes() -> list[LiveSandbox]:
    """The environments of this process whose sandbox is still running."""
    with _live_lock:
        return [env for env in _live if env.alive]


def kill_live_sandboxes(
    reason: str = "the host was interrupted", *, keep: Collection[LiveSandbox] = ()
) -> int:
    """Kill every running sandbox of this process except those in `keep`; returns how many.
    Their environments raise `SandboxError(reason)` from then on."""
    envs = [env for env in live_sandboxes() if env not in keep]
    for env in envs:
        env._die(reason)
    return len(envs)


def _kill_after_interrupt() -> None:
    """At interpreter exit after an unhandled KeyboardInterrupt, before threads are joined: a
    pool thread still waiting on a cell would otherwise hold the exit (and the sandbox)
    until the cell's timeout."""
    if isinstance(getattr(sys, "last_value", None), KeyboardInterrupt):
        kill_live_sandboxes()


# Hooks registered later run first, so this one runs before concurrent.futures joins its pools.
_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(_kill_after_interrupt)
