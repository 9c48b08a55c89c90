"""A closed stdout or stderr ends an `rlm` command quietly, as it ends any Unix tool.

`rlm run -v ... | head -3`: once the reader is gone nobody sees the rest, so the command stops
(a paid run is cancelled, not finished for nobody) and exits with 141 (128 + SIGPIPE), the
status a shell reports for `yes | head`, with no traceback. Output may break on any thread (the
verbose console prints from the event loop): `output_closed()` then interrupts the main thread,
which cancels the run through the same path as Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE

_closed = threading.Event()


def is_closed() -> bool:
    """True once a write to stdout or stderr found its reader gone."""
    return _closed.is_set()


def output_closed() -> None:
    """Record the broken pipe, silence both streams, and stop the main thread's work."""
    first = not _closed.is_set()
    _closed.set()
    _silence()
    main = threading.main_thread()
    if first and threading.current_thread() is not main and main.ident is not None:
        signal.pthread_kill(main.ident, signal.SIGINT)


def stderr_closed() -> None:
    """The verbose console's stderr broke. When stdout is the same pipe (`2>&1 | head`) the
    command is done; otherwise only the console goes quiet and the answer still comes."""
    try:
        out, err = os.fstat(1), os.fstat(2)
        same = (out.st_dev, out.st_ino) == (err.st_dev, err.st_ino)
    except OSError:
        same = True
    if same:
        output_closed()
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
    finally:
        os.close(devnull)


def _silence() -> None:
    """Point stdout and stderr at /dev/null, so later writes and the interpreter's final
    flush do not raise (or print "Exception ignored ... BrokenPipeError")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.__stdout__, sys.__stderr__):
            if stream is None:
                continue
            with contextlib.suppress(OSError, ValueError):
                os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


def reset() -> None:
    """Forget a previous broken pipe (tests that run several commands in one process)."""
    _closed.clear()
