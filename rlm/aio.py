"""The process-wide event loop that every handler, client and run lives on.

All asynchronous work of `rlm` (the LM service, provider SDK clients, RLM loops) runs on one
event loop in one daemon thread. SDK clients are bound to the loop they first ran on, so one
loop for the life of the process lets them be created once and reused (connection pooling)
no matter whether the user calls `completion()` from plain code or `acompletion()` from their
own event loop. Blocking work (code cells) runs in a shared thread pool.

Nothing that goes wrong on the loop thread may leave a caller waiting forever: a SystemExit or
KeyboardInterrupt raised by a callback (Rich raises SystemExit when its pipe breaks) ends only
the task that raised it, and if the loop itself ever stops, every future still pending on it
fails with an `RLMError` and the next call starts a fresh loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from rlm.errors import RLMError

log = logging.getLogger("rlm")
T = TypeVar("T")
P = ParamSpec("P")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
# Futures that callers on other threads wait on; failed at once if the loop dies under them.
_pending: set[concurrent.futures.Future[Any]] = set()


# Cells block while they wait for sub-calls that may start further cells (child RLMs), so the
# pool must be far larger than the core count; threads are created only when needed.
class _SharedPool(concurrent.futures.ThreadPoolExecutor):
    """The worker pool, which outlives every loop: a loop that is closed (or collected after
    it died) shuts its default executor down, and this one must keep serving the next loop."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None


_executor = _SharedPool(max_workers=512, thread_name_prefix="rlm-worker")


def get_loop() -> asyncio.AbstractEventLoop:
    """The shared loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            loop.set_default_executor(_executor)
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                _serve(loop)

            _thread = threading.Thread(target=run, name="rlm-event-loop", daemon=True)
            _thread.start()
            ready.wait()
            _loop = loop
        return _loop


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """Run the loop until it is stopped, surviving what a single callback raises."""
    reason = "it was stopped"
    try:
        while True:
            try:
                loop.run_forever()
                break
            except (SystemExit, KeyboardInterrupt) as exc:
                # Raised out of one callback or task; a task keeps it as its own result, so its
                # waiter gets it. The other work on the loop goes on.
                log.warning("rlm event loop: a callback raised %r; the loop goes on", exc)
    except BaseException as exc:
        reason = f"it failed: {exc!r}"
        log.exception("rlm event loop died")
    finally:
        _loop_died(loop, reason)


def _loop_died(loop: asyncio.AbstractEventLoop, reason: str) -> None:
    """Fail every future still waiting on `loop`, and let the next call start a new loop."""
    global _loop
    with _lock:
        if _loop is loop:
            _loop = None
        waiting = list(_pending)
        _pending.clear()
    error = RLMError(f"the rlm event loop ended before this call finished ({reason})")
    for future in waiting:
        if not future.done():
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(error)


def _submit(
    coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop
) -> concurrent.futures.Future[T]:
    """`run_coroutine_threadsafe`, with the future failed if `loop` dies before it is done."""
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    with _lock:
        alive = _loop is loop
        if alive:
            _pending.add(future)
    if not alive:  # died between the two lines above
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            future.set_exception(RLMError("the rlm event loop ended before this call started"))
    future.add_done_callback(_untrack)
    return future


def _untrack(future: concurrent.futures.Future[Any]) -> None:
    with _lock:
        _pending.discard(future)


def in_loop_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run a coroutine on the shared loop from synchronous code and wait for its result."""
    if in_loop_thread():
        coro.close()
        raise RuntimeError("run_sync() called from the rlm event loop thread; await instead")
    future = _submit(coro, get_loop())
    try:
        return future.result(timeout)
    except BaseException:
        future.cancel()
        raise


async def on_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Await a coroutine on the shared loop from any event loop (the caller's own included)."""
    loop = get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        return await coro
    return await asyncio.wrap_future(_submit(coro, loop))


async def to_thread(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run blocking work in the shared pool without blocking the loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor, lambda: func(*args, **kwargs))


def executor() -> concurrent.futures.ThreadPoolExecutor:
    return _executor


def spawn(coro: Awaitable[T]) -> concurrent.futures.Future[T]:
    """Schedule a coroutine on the shared loop and return a thread-safe future."""

    async def wrapper() -> T:
        return await coro

    return _submit(wrapper(), get_loop())
