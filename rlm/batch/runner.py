"""Running one task: the RLM settings of a batch, and a task's completion as a `BatchResult`.

A batch's settings travel as an `RLMSpec`, a plain JSON-able dict of `RLM` arguments, rather
than as an `RLM` object: a Ray worker on another machine builds its own `RLM` (and so its own
clients, handler and sandboxes) from it. `TaskRunner` keeps one `RLM` per distinct set of
per-task overrides, so tasks that share settings share clients and connection pools.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Mapping
from typing import Any

from rlm.batch.results import BatchResult
from rlm.batch.tasks import OVERRIDES, BatchTask
from rlm.commands.rlm_options import PLAIN_SETTINGS
from rlm.errors import RLMError

RLMSpec = dict[str, Any]

# RLM arguments a spec may hold: JSON-able ones only, as `rlm_settings` makes them.
SPEC_KEYS = PLAIN_SETTINGS


def spec_with(spec: Mapping[str, Any], overrides: Mapping[str, Any]) -> RLMSpec:
    """`spec` with a task's overrides applied (`model` sets the root backend's model_name)."""
    merged: RLMSpec = json.loads(json.dumps(dict(spec)))  # a deep, JSON-only copy
    for key, value in overrides.items():
        target = OVERRIDES[key]
        if target == "model_name":
            merged["backend_kwargs"] = {**merged.get("backend_kwargs", {}), "model_name": value}
        else:
            merged[target] = value
    return merged


def result_of(task: BatchTask, completion: Any, attempts: int) -> BatchResult:
    """A finished completion (answered or stopped on a limit) as a result line."""
    stop_reason = getattr(completion, "stop_reason", "final_answer")
    error = getattr(completion, "error", None)
    if error is None and stop_reason != "final_answer":
        error = f"stopped: {stop_reason}"
    metadata = getattr(completion, "metadata", None) or {}
    return BatchResult(
        id=task.id,
        response=completion.response,
        value=_jsonable(completion.value),
        stop_reason=stop_reason,
        usage=completion.usage_summary.to_dict(),
        execution_time=round(float(completion.execution_time), 6),
        error=error,
        attempts=attempts,
        log_file=metadata.get("log_file") if isinstance(metadata, dict) else None,
    )


def error_result(task: BatchTask, exc: BaseException, attempts: int) -> BatchResult:
    """A task that raised: the error's type and message; usage if the error carries a
    completion (a limit error carries the run so far)."""
    completion = getattr(exc, "completion", None)
    if completion is not None:
        result = result_of(task, completion, attempts)
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    return BatchResult(
        id=task.id,
        stop_reason="error",
        error=f"{type(exc).__name__}: {exc}",
        attempts=attempts,
    )


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


class TaskRunner:
    """Runs tasks on `RLM`s built from one spec; one `RLM` per distinct override set.

    `log_dir` gives every task its own trajectory file there; `observers` (a progress
    display, say) watch every run; `ledger` is the batch-wide budget every run draws from.
    """

    def __init__(
        self,
        spec: Mapping[str, Any],
        *,
        log_dir: str | None = None,
        ledger: Any = None,
    ) -> None:
        unknown = set(spec) - SPEC_KEYS
        if unknown:
            from rlm.errors import ConfigurationError

            raise ConfigurationError(f"not batch settings: {sorted(unknown)}")
        self.spec = dict(spec)
        self.log_dir = log_dir
        self.ledger = ledger
        self._rlms: dict[str, Any] = {}
        self._lock = threading.Lock()

    def rlm_for(self, task: BatchTask) -> Any:
        from rlm.core.rlm import RLM
        from rlm.logger.jsonl import RLMLogger

        spec = spec_with(self.spec, task.overrides)
        key = json.dumps(spec, sort_keys=True)
        with self._lock:
            rlm = self._rlms.get(key)
            if rlm is None:
                logger = None if self.log_dir is None else RLMLogger(self.log_dir, "task")
                # A stopped task keeps its partial answer and says which limit stopped it.
                rlm = RLM(**{"on_limit": "return", **spec}, logger=logger, ledger=self.ledger)
                self._rlms[key] = rlm
            return rlm

    async def arun(self, task: BatchTask, attempts: int = 1) -> BatchResult:
        """Run one task; every failure becomes a result with its error (never raised), except
        cancellation, which propagates so the batch can stop."""
        try:
            rlm = self.rlm_for(task)
            context = await asyncio.to_thread(task.load_context)
            completion = await rlm.acompletion(context, root_prompt=task.root_prompt)
        except RLMError as exc:
            return error_result(task, exc, attempts)
        return result_of(task, completion, attempts)

    def run(self, task: BatchTask, attempts: int = 1) -> BatchResult:
        from rlm.aio import run_sync

        return run_sync(self.arun(task, attempts))

    def close(self) -> None:
        with self._lock:
            rlms, self._rlms = list(self._rlms.values()), {}
        for rlm in rlms:
            rlm.close()
