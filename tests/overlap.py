"""Prove concurrency by counting overlapping calls, not by timing them.

A test that asserts "20 calls took less than 20 x their latency" fails on a loaded machine and
passes on a serial implementation that happens to be fast. Instead a fake model (or tool, or
child) runs its body inside an `Overlap`: it counts how many calls are inside at once and
remembers the maximum. With `hold=N` each call waits inside until N calls are in together, a
barrier of N parties, so `peak == N` holds exactly when the code under test really runs N
calls at the same time. A serial implementation never brings the second call in while the
first waits: the first call's `guard` runs out, the gate breaks open for everyone (so the test
does not hang call after call) and `peak` stays below N, so the test fails. The guard is only
a hang guard; no assertion is ever made about how long anything took.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import TracebackType

GUARD = 30.0  # seconds a held call waits for its partners before the gate breaks open


async def wait_event(event: threading.Event, guard: float = GUARD) -> bool:
    """`event.wait(guard)` for a coroutine on an event loop: polls without blocking the loop,
    and stays cancellable (a cancelled request's task ends here)."""
    deadline = time.monotonic() + guard
    while not event.is_set():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.005)
    return True


class Overlap:
    """Counts the calls inside it at once; with `hold=N`, holds them until N are inside.

    Use it as `with overlap:` in threads or `async with overlap:` on an event loop.
    """

    def __init__(self, hold: int = 0, guard: float = GUARD) -> None:
        self.hold = hold
        self.guard = guard
        self.current = 0
        self.peak = 0
        self.calls = 0
        self.broken = False  # the guard ran out before `hold` calls were inside together
        self._lock = threading.Condition()
        self._gate = threading.Event()
        if hold <= 0:
            self._gate.set()

    def release(self) -> None:
        """Open the gate by hand: every held call, and every later one, goes on."""
        self._gate.set()

    def wait_inside(self, n: int, timeout: float | None = None) -> bool:
        """Wait until at least `n` calls are inside at once; False if the guard ran out."""
        with self._lock:
            return self._lock.wait_for(
                lambda: self.current >= n, self.guard if timeout is None else timeout
            )

    def _enter(self) -> None:
        with self._lock:
            self.calls += 1
            self.current += 1
            self.peak = max(self.peak, self.current)
            if self.current >= self.hold:
                self._gate.set()
            self._lock.notify_all()

    def _leave(self) -> None:
        with self._lock:
            self.current -= 1
            self._lock.notify_all()

    def _break(self) -> None:
        self.broken = True
        self._gate.set()

    def __enter__(self) -> Overlap:
        self._enter()
        try:
            if not self._gate.wait(self.guard):
                self._break()
        except BaseException:
            self._leave()  # interrupted while held: no longer inside
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._leave()

    async def __aenter__(self) -> Overlap:
        self._enter()
        try:
            if not await wait_event(self._gate, self.guard):
                self._break()
        except BaseException:
            self._leave()  # cancelled while held: no longer inside
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._leave()
