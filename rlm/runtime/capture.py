"""Per-thread capture of `sys.stdout` and `sys.stderr`, bounded at capture time.

Swapping `sys.stdout` for the length of a cell is process-global: two REPLs running in two
threads would capture each other's output, and so would any host thread that prints meanwhile.
Instead one routing stream is installed for good; each write goes to the capture buffer of the
thread that wrote it, or to the stream it replaced when that thread captures nothing.

Buffers keep the first `cap` characters and only count the rest, so a cell printing a gigabyte
costs no more memory than the cap.

Known limit: threads started by a cell have no capture target of their own, so their output
goes to the replaced stream (the isolated environments capture those at the process level).

The process level, used by the sandbox worker only: `FdCapture` points fds 1 and 2 at pipes
drained into bounded per-cell sinks (`os.write(1, ...)`, C extensions, child processes), and
`UncapturedOutput` stands for `sys.stdout`/`sys.stderr` in threads other than the cell's.

Standard library only: this module is shipped into sandboxes.
"""

from __future__ import annotations

import contextlib
import io
import os
import selectors
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

_SYNC_WAIT = 0.1  # how long a cell's end waits for process-level output still in the pipes
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


# ------------------------------------------------------------------ process-level output (worker)


class _Sink:
    """The first `cap` bytes written to one descriptor; the rest only counted."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))

    def clear(self) -> int:
        """Forget what was kept; returns how many bytes were written (kept or not)."""
        written = len(self.data) + self.dropped
        self.data, self.dropped = bytearray(), 0
        return written

    def take(self) -> tuple[str, int]:
        text = self.data.decode("utf-8", "replace")
        dropped = self.dropped
        self.data, self.dropped = bytearray(), 0
        return text, dropped


def _pending_bytes(fd: int) -> int:
    try:
        import fcntl
        import termios

        buf = bytearray(4)
        fcntl.ioctl(fd, termios.FIONREAD, buf)
        return int.from_bytes(buf, sys.byteorder)
    except (ImportError, OSError):
        return 0


class FdCapture:
    """Points fds 1 and 2 at pipes; a thread drains them into bounded per-cell sinks.

    Catches what `sys.stdout` capture cannot: `os.write(1, ...)`, C extensions, child
    processes, threads of earlier cells. Output written between cells is dropped at the next
    cell's start, never attributed to it.
    """

    def __init__(self, cap: int) -> None:
        self._lock = threading.Lock()
        self._sinks: dict[int, _Sink] = {}
        for target in (1, 2):
            read_end, write_end = os.pipe()
            os.dup2(write_end, target)
            os.close(write_end)
            self._sinks[read_end] = _Sink(cap)
        self._order = list(self._sinks)
        self._child = False
        self._thread = threading.Thread(target=self._drain, name="rlm-fd-capture", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        selector = selectors.DefaultSelector()
        for fd in self._sinks:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            for key, _ in selector.select():
                with self._lock:
                    try:
                        chunk = os.read(key.fd, 1 << 16)
                    except OSError:
                        chunk = b""
                    if chunk:
                        self._sinks[key.fd].add(chunk)
                    else:
                        selector.unregister(key.fd)

    def after_fork_in_child(self) -> None:
        """A forked child has no drain thread: its own output goes to the parent's pipes."""
        self._lock = threading.Lock()  # the drain thread may have held it at the fork
        self._child = True

    def set_cap(self, cap: int) -> None:
        with self._lock:
            for sink in self._sinks.values():
                sink.cap = cap

    def reset(self) -> int:
        """Discard what was written since the last cell; returns how many bytes that was."""
        discarded = 0
        with self._lock:
            for sink in self._sinks.values():
                discarded += sink.clear()
        return discarded

    def collect(self) -> tuple[str, str, int]:
        """(stdout, stderr, dropped bytes) written since `reset`, once the pipes are drained."""
        if self._child:
            return "", "", 0
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            with contextlib.suppress(Exception):
                if stream is not None:
                    stream.flush()
        deadline = time.monotonic() + _SYNC_WAIT
        while True:
            with self._lock:
                pending = sum(_pending_bytes(fd) for fd in self._order)
                if pending == 0 or time.monotonic() > deadline:
                    (out, d1), (err, d2) = (self._sinks[fd].take() for fd in self._order)
                    return out, err, d1 + d2
            time.sleep(0.001)


class UncapturedOutput:
    """`sys.stdout`/`sys.stderr` as threads other than the running cell's see them: their
    text is dropped and counted (in the local environment it goes to the host's console,
    never into a cell). Everything else (`fileno`, `buffer`, ...) is the real fd stream."""

    def __init__(self, stream: io.TextIOWrapper) -> None:
        self._stream = stream
        self.dropped = 0  # characters; no lock: a forked child must never block on one

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.dropped += len(text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
