"""`Watchdog`: stops a cell running in a thread of this process when its time is up.

Used by the environments whose cells run in the host's own process (`local`, and `ipython`
off the main thread): a timer thread injects `CellTimeout` into the cell's thread with
`PyThreadState_SetAsyncExc`. Python checks for such an exception only between bytecodes, so a
call blocked inside C (``time.sleep(10**6)``, a blocking socket read) is not interrupted, and
neither is code that catches `BaseException` and carries on; the isolated environments kill
their worker instead.
"""

from __future__ import annotations

import ctypes
import threading

from rlm.runtime.repl import CellTimeout


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    """Raise `exc` in the thread at its next bytecode (None clears a pending one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
    )


class Watchdog:
    """Injects `CellTimeout` once into one thread, unless disarmed first.

    Race-free: `disarm` stops the watchdog and joins it, so no injection can follow, then
    clears anything still pending, retrying if the (single) injection lands during the join.
    After `disarm` returns no `CellTimeout` can reach the thread's later (host) code.
    """

    def __init__(self, thread_id: int, seconds: float) -> None:
        self._thread_id = thread_id
        self._seconds = seconds
        self._done = threading.Event()
        self.fired = False
        self._thread = threading.Thread(target=self._run, name="rlm-cell-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if not self._done.wait(self._seconds):
            self.fired = True
            _set_async_exc(self._thread_id, CellTimeout)

    def disarm(self) -> None:
        self._done.set()
        while True:
            try:
                self._thread.join()
                if self.fired:
                    _set_async_exc(self._thread_id, None)
                return
            except CellTimeout:  # the injection arrived just now; nothing more can follow
                continue
