"""Per-thread capture of `sys.stdout` and `sys.stderr`, bounded at capture time.

Swapping `sys.stdout` for the length of a cell is process-global: two REPLs running in two
threads would capture each other's output, and so would any host thread that prints meanwhile.
Instead one routing stream is installed for good; each write goes to the capture buffer of the
thread that wrote it, or to the stream it replaced when that thread captures nothing.

Buffers keep the first `cap` characters and only count the rest, so a cell printing a gigabyte
costs no more memory than the cap.

Known limit: threads started by a cell have no capture target of their own, so their output
goes to the replaced stream (the isolated environments capture those at the process level).

Standard library only: this module is shipped into sandboxes.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

_install_lock = threading.Lock()
_targets = threading.local()


class CaptureBuffer:
    """Text sink that keeps the first `cap` characters and counts what it drops."""

    def __init__(self, cap: int) -> None:
        if cap < 0:
            raise ValueError("cap must be >= 0")
        self.cap = cap
        self.dropped = 0
        self._size = 0
        self._parts: list[str] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        n = len(text)
        with self._lock:
            room = self.cap - self._size
            if n <= room:
                self._parts.append(text)
                self._size += n
            else:
                if room > 0:
                    self._parts.append(text[:room])
                    self._size = self.cap
                self.dropped += n - max(room, 0)
        return n

    def getvalue(self) -> str:
        with self._lock:
            value = "".join(self._parts)
            self._parts = [value] if value else []
            return value

    def __len__(self) -> int:
        return self._size


class _RoutingStream:
    """Stands in for sys.stdout / sys.stderr; routes each write by the writing thread."""

    def __init__(self, name: str, fallback: TextIO | None) -> None:
        self._name = name
        self._fallback = fallback

    def _target(self) -> CaptureBuffer | None:
        return getattr(_targets, self._name, None)

    def write(self, text: str) -> int:
        target = self._target()
        if target is not None:
            return target.write(text)
        if self._fallback is None:  # e.g. pythonw: there is no console
            return len(text)
        return self._fallback.write(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._target() is None and self._fallback is not None:
            self._fallback.flush()

    def isatty(self) -> bool:
        if self._target() is not None or self._fallback is None:
            return False
        return self._fallback.isatty()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return getattr(self._fallback, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str:
        return getattr(self._fallback, "errors", None) or "strict"

    def __getattr__(self, name: str) -> Any:
        # fileno(), buffer, ... of the real stream: code that needs them gets the real thing.
        if self._fallback is None:
            raise AttributeError(name)
        return getattr(self._fallback, name)


def install() -> None:
    """Put routing streams in place of sys.stdout/sys.stderr (again if someone replaced them)."""
    with _install_lock:
        if not isinstance(sys.stdout, _RoutingStream):
            sys.stdout = _RoutingStream("stdout", sys.stdout)
        if not isinstance(sys.stderr, _RoutingStream):
            sys.stderr = _RoutingStream("stderr", sys.stderr)


@contextmanager
def capture(cap: int) -> Iterator[tuple[CaptureBuffer, CaptureBuffer]]:
    """Capture this thread's stdout and stderr into two buffers of `cap` characters each."""
    install()
    out, err = CaptureBuffer(cap), CaptureBuffer(cap)
    previous = (getattr(_targets, "stdout", None), getattr(_targets, "stderr", None))
    _targets.stdout, _targets.stderr = out, err
    try:
        yield out, err
    finally:
        _targets.stdout, _targets.stderr = previous
