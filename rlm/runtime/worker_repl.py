"""`WorkerRepl`: the `Repl` as the sandbox worker runs it, and the guards around its cells.

Inside a sandbox a cell's timeout is a SIGALRM that raises `CellTimeout` in the cell and fires
again every `_ALARM_REPEAT` seconds until the cell ends (a single alarm can be lost, e.g. in
`os.fork()`'s at-fork hooks, which swallow exceptions); code that swallows it or blocks inside
C is ended by the host, which kills the whole sandbox after its own deadline. The alarm raises
only while user code is on the stack (`_in_user_code`): raised in the runtime's own code it
would escape the cell's handling. When a cell ends, its fd-level output is collected
(`rlm.runtime.capture.FdCapture`) and the processes it left running are killed
(`rlm.runtime.procgroup`). `guard_exit` and `guard_fork` keep `os._exit()` and fork loops
from ending the worker or outrunning the timeout.

Standard library only (plus `rlm.errors` and sibling runtime modules).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

from .capture import FdCapture, UncapturedOutput
from .procgroup import GroupReaper
from .repl import CellTimeout, Repl

_ALARM_REPEAT = 0.1  # past its deadline, a cell gets CellTimeout again this often
real_exit = os._exit  # the real one, for the worker itself (a cell's is guarded)


class WorkerRepl(Repl):
    """A Repl whose cells are bounded by a repeating SIGALRM, see fd-level output, and leave
    no process running behind them."""

    def __init__(
        self,
        *args: Any,
        fd_capture: FdCapture | None = None,
        uncaptured: tuple[UncapturedOutput, ...] = (),
        reaper: GroupReaper | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fd_capture = fd_capture
        self.uncaptured = uncaptured
        self.reaper = reaper
        self._pid = os.getpid()
        self.cell_timeout: float | None = None
        self.cell_done = True  # cell_finished ran to its end for the last cell
        self._armed = False
        self._deadline: float | None = None
        self._discarded = 0  # fd bytes written between cells, reported by the next cell
        self._uncaptured_seen = self._uncaptured_total()
        signal.signal(signal.SIGALRM, self._on_alarm)

    def _on_alarm(self, signum: int, frame: Any) -> None:
        """Stop the cell; the timer repeats until the cell has ended, in case the exception
        is lost. Only while the cell's code runs: raised in the runtime's own code (a late
        alarm, handled when the interpreter comes back from unwinding a deep stack) it would
        escape the cell's handling."""
        if self._armed and _in_user_code(frame):
            raise CellTimeout

    def disarm(self) -> None:
        self._armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)

    def _uncaptured_total(self) -> int:
        return sum(stream.dropped for stream in self.uncaptured)

    @property
    def overran(self) -> bool:
        """Whether the current (or last) cell ran past its deadline."""
        return self._deadline is not None and time.monotonic() >= self._deadline

    @property
    def expired(self) -> bool:
        """Whether the running cell is past its deadline and should stop."""
        return self._armed and self.overran

    def cell_started(self) -> None:
        self.cell_done = False
        if self.fd_capture is not None:
            self._discarded += self.fd_capture.reset()
        self._deadline = None
        if self.cell_timeout is not None and self.cell_timeout > 0:
            self._deadline = time.monotonic() + self.cell_timeout
            self._armed = True
            signal.setitimer(signal.ITIMER_REAL, self.cell_timeout, _ALARM_REPEAT)

    def cell_finished(self) -> None:
        self.disarm()
        if os.getpid() != self._pid:
            return  # a forked child finishing the cell: it exits right after
        killed = self.end_leftovers()
        notes = []
        if self.fd_capture is not None:
            out, err, dropped = self.fd_capture.collect()
            if out:
                sys.stdout.write(out)  # into this cell's capture buffer, after its own prints
            if err:
                sys.stderr.write(err)
            if dropped:
                notes.append(
                    f"[process output truncated: {dropped} bytes written to fd 1/2 were dropped]"
                )
        if self._discarded:
            notes.append(
                f"[{self._discarded} bytes written to fd 1/2 between cells were discarded]"
            )
            self._discarded = 0
        total = self._uncaptured_total()
        if total > self._uncaptured_seen:
            notes.append(
                f"[{total - self._uncaptured_seen} characters printed by threads other than "
                "the cell's own were not captured]"
            )
            self._uncaptured_seen = total
        if killed:
            notes.append(f"[{killed} process(es) the cell left running were killed]")
        for note in notes:
            sys.stderr.write(note + "\n")
        self.cell_done = True

    def end_leftovers(self) -> int:
        """Kill the processes the cell left running; collected too when it overran."""
        if self.reaper is None:
            return 0
        return self.reaper.end_leftovers(reap=self.overran)


_RUN_CELL = Repl.run_cell.__code__
_FORK_CODES: set[Any] = set()  # the code of the fork guard (see _guard_fork)


def _in_user_code(frame: Any) -> bool:
    """Whether a cell's code is on the stack above `Repl.run_cell` (directly or through the
    libraries and helpers it called), and not inside `os.fork()` (whose at-fork hooks would
    swallow the exception; the fork guard raises it when the fork returns)."""
    while frame is not None:
        code = frame.f_code
        if code.co_filename.startswith("<cell "):
            return True
        if code is _RUN_CELL or code in _FORK_CODES:
            return False
        frame = frame.f_back
    return False


def guard_exit(worker_pid: int) -> None:
    """`os._exit()` in a cell ends the cell (as SystemExit), not the sandbox; forked children
    still exit for real."""

    def _exit(status: int) -> NoReturn:
        if os.getpid() == worker_pid:
            raise SystemExit(status)
        real_exit(status)

    os._exit = _exit
    try:
        import posix

        posix._exit = _exit
    except ImportError:  # pragma: no cover - not POSIX
        pass


def guard_fork(worker_pid: int, running: Callable[[], WorkerRepl | None]) -> None:
    """`os.fork()` in the worker raises CellTimeout once the cell is past its deadline
    (`running()` is the worker's Repl). A signal arriving during a fork is handled inside the
    at-fork hooks, which swallow any exception, so a loop of forks would otherwise rarely see
    its timeout."""
    real_fork = os.fork

    def fork() -> int:
        try:
            return real_fork()
        finally:
            repl = running()
            if os.getpid() == worker_pid and repl is not None and repl.expired:
                # Raised from `finally` on purpose: it replaces the pid or the EAGAIN.
                raise CellTimeout

    _FORK_CODES.add(fork.__code__)
    os.fork = fork
    try:
        import posix

        posix.fork = fork
    except ImportError:  # pragma: no cover - not POSIX
        pass
