"""The Ray executor: tasks run in Ray actors, one completion at a time each, `concurrency`
actors at once, on whichever nodes Ray places them.

Each actor builds its own `RLM` from the batch's `RLMSpec`, so its clients and sandboxes
(Docker, Modal, E2B) are made on its own node; API keys reach it as environment variables of
the Ray workers (see docs/scale-out.md). The driver (this process) reads the tasks, ships each
context through Ray's object store, and is the only writer of results, so a result is written
once even when a task ran twice.

Faults: a task whose actor dies (the worker process killed, its node lost) is given to a fresh
actor, up to `max_attempts` tries in all; after that its result line carries the error. A task
that fails inside the run (a provider error, a limit) is not retried: its error is the result.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from rlm._optional import require
from rlm.batch.results import BatchResult
from rlm.batch.runner import error_result
from rlm.batch.tasks import BatchTask, parse_task
from rlm.errors import ConfigurationError

_worker_class: Any = None


def _worker() -> Any:
    """The actor class, defined on first use so `import rlm.batch` does not import ray."""
    global _worker_class
    if _worker_class is not None:
        return _worker_class
    ray = require("ray", extra="ray")

    @ray.remote(max_restarts=0, max_task_retries=0)
    class CompletionWorker:
        def __init__(
            self, spec: Mapping[str, Any], log_dir: str | None, ledger: Any = None
        ) -> None:
            from rlm.batch.runner import TaskRunner

            self.runner = TaskRunner(spec, log_dir=log_dir, ledger=ledger)

        def pid(self) -> int:
            return os.getpid()

        def run(self, task: dict[str, Any], context: Any, attempts: int) -> dict[str, Any]:
            data = {k: v for k, v in task.items() if k not in ("context_file", "json")}
            data["context"] = context
            result = self.runner.run(parse_task(data), attempts)
            return result.to_dict()

        def close(self) -> None:
            self.runner.close()

    _worker_class = CompletionWorker
    return _worker_class


def connect(address: str | None) -> bool:
    """Join the Ray cluster at `address` (or `RAY_ADDRESS`), or start one on this machine.
    True when this call started Ray (the caller shuts it down)."""
    ray = require("ray", extra="ray")
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address is None:
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except ConnectionError as exc:
        raise ConfigurationError(f"cannot reach the Ray cluster at {address}: {exc}") from exc
    return True


def run_ray(
    tasks: Sequence[BatchTask],
    spec: Mapping[str, Any],
    *,
    concurrency: int,
    log_dir: str | None = None,
    max_attempts: int = 3,
    ledger: Any = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[BatchResult]:
    """Yield each task's result as it finishes. `env` is set in every actor's environment
    (API keys from the driver, when the workers were not started with them)."""
    ray = require("ray", extra="ray")
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    worker_cls = _worker()
    pool: list[Any] = []
    options = {"runtime_env": {"env_vars": dict(env)}} if env else {}

    def new_actor() -> Any:
        actor = worker_cls.options(**options).remote(dict(spec), log_dir, ledger)
        pool.append(actor)
        return actor

    idle: deque[Any] = deque(new_actor() for _ in range(min(concurrency, len(tasks)) or 1))
    pending: deque[tuple[BatchTask, int]] = deque((task, 1) for task in tasks)
    in_flight: dict[Any, tuple[BatchTask, int, Any]] = {}
    try:
        while pending or in_flight:
            while pending and idle:
                task, attempts = pending.popleft()
                actor = idle.popleft()
                try:
                    context_ref = ray.put(task.load_context())
                except ConfigurationError as exc:
                    idle.append(actor)
                    yield error_result(task, exc, attempts)
                    continue
                ref = actor.run.remote(task.to_dict(), context_ref, attempts)
                in_flight[ref] = (task, attempts, actor)
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                task, attempts, actor = in_flight.pop(ref)
                try:
                    data = ray.get(ref)
                except (RayActorError, ActorDiedError, ActorUnavailableError) as exc:
                    # The worker died: this actor is gone; the task goes to a fresh one.
                    if actor in pool:
                        pool.remove(actor)
                    idle.append(new_actor())
                    if attempts < max_attempts:
                        pending.appendleft((task, attempts + 1))
                    else:
                        yield error_result(
                            task,
                            RuntimeError(f"the worker died {attempts} times: {exc}"),
                            attempts,
                        )
                    continue
                except Exception as exc:  # a bug in the run itself: reported, not retried
                    idle.append(actor)
                    yield error_result(task, exc, attempts)
                    continue
                idle.append(actor)
                yield BatchResult.from_dict(data)
    finally:
        # Finished: each actor closes its RLM (sandboxes, connections). Stopped early (Ctrl-C,
        # the consumer left): the running completions are abandoned and the actors killed.
        aborted = bool(in_flight)
        for actor in pool:
            if not aborted:
                with contextlib.suppress(Exception):  # a dead actor has nothing left to close
                    ray.get(actor.close.remote(), timeout=60)
            ray.kill(actor, no_restart=True)
