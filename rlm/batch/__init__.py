"""Many completions: a file (or iterable) of tasks in, one result per task out.

    from rlm.batch import run_batch
    spec = {"backend": "openai", "backend_kwargs": {"model_name": "gpt-5-mini"}}
    for result in run_batch("tasks.jsonl", spec, out="results.jsonl", concurrency=8):
        print(result.id, result.response)

`executor="local"` (the default) runs the tasks in this process; `executor="ray"` runs them in
Ray actors on a cluster (`ray_address`, `RAY_ADDRESS`, or one started on this machine).
`max_budget` / `max_tokens` bound the whole batch (one ledger, across nodes); the spec's own
limits bound each task. `RLMPredictor` is the same for Ray Data's `map_batches`.
The command line is `rlm batch` (rlm/commands/batch.py); the format of tasks and results is
in rlm/batch/tasks.py and rlm/batch/results.py.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlm.batch.ledger import BatchLedger, LedgerClient
from rlm.batch.results import BatchResult, ResultFile
from rlm.batch.runner import RLMSpec, TaskRunner, spec_with
from rlm.batch.tasks import BadTaskLine, BatchTask, collect_tasks, parse_task, read_tasks
from rlm.errors import ConfigurationError

__all__ = [
    "BadTaskLine",
    "BatchLedger",
    "BatchResult",
    "BatchTask",
    "RLMPredictor",
    "RLMSpec",
    "parse_task",
    "read_tasks",
    "run_batch",
    "spec_with",
]


def _as_tasks(tasks: str | Path | Iterable[BatchTask | Mapping[str, Any]]) -> list[BatchTask]:
    if isinstance(tasks, str | Path):
        return read_tasks(tasks)[0]
    return collect_tasks(tasks)[0]


@dataclass(frozen=True)
class _Plan:
    """How a batch runs: where, how many at once, its logs and its batch-wide limits."""

    executor: str
    concurrency: int
    log_dir: str | None
    max_budget: float | None
    max_tokens: int | None
    ray_address: str | None
    env: dict[str, str]
    max_attempts: int


def run_batch(
    tasks: str | Path | Iterable[BatchTask | Mapping[str, Any]],
    spec: Mapping[str, Any],
    *,
    executor: str = "local",
    concurrency: int = 4,
    out: str | Path | None = None,
    resume: bool = False,
    log_dir: str | Path | None = None,
    max_budget: float | None = None,
    max_tokens: int | None = None,
    ray_address: str | None = None,
    ray_env: Iterable[str] = (),
    max_attempts: int = 3,
) -> Iterator[BatchResult]:
    """Run every task and yield its result as it finishes (in finishing order).

    `out` appends each result to a JSON-lines file as it finishes; with `resume=True` the ids
    already there are skipped (and not yielded). `ray_env` names environment variables of this
    process (API keys, say) to set in every Ray worker of the batch. Once the batch's ledger
    has reached `max_budget` / `max_tokens`, every task's next call fails with that limit's
    error, so the tasks left end at once and are written with it.
    """
    if executor not in ("local", "ray"):
        raise ConfigurationError(f"executor must be 'local' or 'ray', got {executor!r}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigurationError(f"concurrency must be an int >= 1, got {concurrency!r}")
    task_list = _as_tasks(tasks)
    results = ResultFile(out, resume=resume)
    todo = [task for task in task_list if task.id not in results.done]
    env: dict[str, str] = {}
    for name in ray_env:
        if name not in os.environ:
            raise ConfigurationError(f"ray_env: {name} is not set in this environment")
        env[name] = os.environ[name]
    plan = _Plan(
        executor=executor,
        concurrency=concurrency,
        log_dir=None if log_dir is None else str(log_dir),
        max_budget=max_budget,
        max_tokens=max_tokens,
        ray_address=ray_address,
        env=env,
        max_attempts=max_attempts,
    )
    return _drive(todo, dict(spec), results, plan)


def _drive(
    todo: list[BatchTask], spec: RLMSpec, results: ResultFile, plan: _Plan
) -> Iterator[BatchResult]:
    """Run `todo` as `plan` says, writing each result to `results` as it finishes."""
    with results:
        if not todo:
            return
        run = _run_local if plan.executor == "local" else _run_ray
        for result in run(todo, spec, plan):
            if results.write(result):
                yield result


def _ledger(plan: _Plan, make: Any) -> LedgerClient | None:
    """The batch's ledger client when the plan has batch-wide limits; `make(budget, tokens)`
    builds the ledger (in process, or a Ray actor)."""
    if plan.max_budget is None and plan.max_tokens is None:
        return None
    return LedgerClient(make(plan.max_budget, plan.max_tokens))


def _run_local(todo: list[BatchTask], spec: RLMSpec, plan: _Plan) -> Iterator[BatchResult]:
    from rlm.batch.local import run_local

    runner = TaskRunner(spec, log_dir=plan.log_dir, ledger=_ledger(plan, BatchLedger))
    try:
        yield from run_local(todo, runner, plan.concurrency)
    finally:
        runner.close()


def _run_ray(todo: list[BatchTask], spec: RLMSpec, plan: _Plan) -> Iterator[BatchResult]:
    from rlm.batch.ledger import ray_ledger
    from rlm.batch.ray_exec import connect, run_ray

    started = connect(plan.ray_address)
    try:
        yield from run_ray(
            todo,
            spec,
            concurrency=plan.concurrency,
            log_dir=plan.log_dir,
            max_attempts=plan.max_attempts,
            ledger=_ledger(plan, ray_ledger),
            env=plan.env,
        )
    finally:
        if started:
            import ray

            ray.shutdown()


class RLMPredictor:
    """A callable class for Ray Data, the way Ray users run batch LLM inference:

        ds.map_batches(RLMPredictor, fn_constructor_kwargs={"spec": spec}, concurrency=4,
                       batch_size=8)

    Each batch is a dict of columns: `context` (required), `root_prompt` and `id` (optional).
    It returns the columns with `response`, `stop_reason`, `error`, `total_tokens` and
    `total_cost` added. One `RLM` per Ray Data worker, reused across batches; the rows of a
    batch run concurrently.
    """

    def __init__(self, spec: Mapping[str, Any], log_dir: str | None = None) -> None:
        self.runner = TaskRunner(spec, log_dir=log_dir)
        # Ray Data drops a worker's predictor without a call to close: the runner's RLMs (and
        # their sandboxes) close when the predictor is collected, or at interpreter exit.
        self._finalizer = weakref.finalize(self, self.runner.close)

    def close(self) -> None:
        """Close the runner's RLMs now (idempotent)."""
        self._finalizer()

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        from rlm.aio import run_sync

        contexts = list(batch["context"])
        prompts = list(batch.get("root_prompt", [None] * len(contexts)))
        ids = [str(i) for i in batch.get("id", range(len(contexts)))]
        tasks = [
            BatchTask(id=ids[i], root_prompt=_plain(prompts[i]), context=_plain(contexts[i]))
            for i in range(len(contexts))
        ]

        async def all_of() -> list[BatchResult]:
            import asyncio

            return list(await asyncio.gather(*(self.runner.arun(t) for t in tasks)))

        done = run_sync(all_of())
        columns = {key: list(value) for key, value in batch.items()}
        columns["response"] = [r.response or "" for r in done]
        columns["stop_reason"] = [r.stop_reason or "" for r in done]
        columns["error"] = [r.error or "" for r in done]
        columns["total_tokens"] = [r.tokens for r in done]
        columns["total_cost"] = [r.cost for r in done]
        return columns


def _plain(value: Any) -> Any:
    """A numpy scalar or array (Ray Data's batch format) as plain Python data."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else value
