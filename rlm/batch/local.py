"""The default executor: every task in this process, `concurrency` at a time, on the shared
event loop (`RLM.acompletion`). Nothing to install; sandboxes are this machine's."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator, Sequence

from rlm.aio import spawn
from rlm.batch.results import BatchResult
from rlm.batch.runner import TaskRunner
from rlm.batch.tasks import BatchTask

_DONE = object()


def run_local(
    tasks: Sequence[BatchTask], runner: TaskRunner, concurrency: int
) -> Iterator[BatchResult]:
    """Yield each task's result as it finishes. Closing the iterator early (or Ctrl-C in the
    consumer) cancels the tasks still running; their sandboxes are cleaned up by the runs."""
    results: queue.Queue[object] = queue.Queue()
    finished = threading.Event()

    async def drive() -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(task: BatchTask) -> None:
            async with gate:
                results.put(await runner.arun(task))

        try:
            await asyncio.gather(*(one(task) for task in tasks))
        finally:
            results.put(_DONE)
            finished.set()

    future = spawn(drive())
    try:
        while True:
            item = results.get()
            if item is _DONE:
                break
            assert isinstance(item, BatchResult)
            yield item
        future.result()  # a failure of the driver itself surfaces here
    finally:
        if not future.done():
            future.cancel()
            finished.wait(30)  # the cancelled runs clean up their sandboxes first
