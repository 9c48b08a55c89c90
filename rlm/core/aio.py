"""The process-wide event loop that every handler, client and run lives on.

All asynchronous work of `rlm` (LMHandler servers, provider SDK clients, RLM loops) runs on one
event loop in one daemon thread. SDK clients are bound to the loop they first ran on, so one
loop for the life of the process lets them be created once and reused (connection pooling)
no matter whether the user calls `completion()` from plain code or `acompletion()` from their
own event loop. Blocking work (code cells) runs in a shared thread pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
# Cells block while they wait for sub-calls that may start further cells (child RLMs), so the
# pool must be far larger than the core count; threads are created only when needed.
_executor = concurrent.futures.ThreadPoolExecutor(max_workers=512, thread_name_prefix="rlm-worker")


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
                loop.run_forever()

            _thread = threading.Thread(target=run, name="rlm-event-loop", daemon=True)
            _thread.start()
            ready.wait()
            _loop = loop
        return _loop


def in_loop_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run a coroutine on the shared loop from synchronous code and wait for its result."""
    if in_loop_thread():
        coro.close()
        raise RuntimeError("run_sync() called from the rlm event loop thread; await instead")
    future = asyncio.run_coroutine_threadsafe(coro, get_loop())
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
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))


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

    return asyncio.run_coroutine_threadsafe(wrapper(), get_loop())
