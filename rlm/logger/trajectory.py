"""The reference's trajectory shape, built from our logger's records.

`RLMLogger` keeps one list of flat records per top-level completion (docs/trajectory-format.md:
`run_start`, `iteration`, `subcall`, `run_end`, ...). Code written for the reference reads
`completion.metadata` and `RLMLogger.get_trajectory()` as

    {"run_metadata": {root_model, max_depth, max_iterations, backend, backend_kwargs,
                      environment_type, environment_kwargs, other_backends, ...},
     "iterations": [{"type": "iteration", "iteration", "timestamp", "prompt", "response",
                     "code_blocks": [{"code", "result": {stdout, stderr, locals,
                                      execution_time, final_answer,
                                      "rlm_calls": [{root_model, prompt, response,
                                                     usage_summary, execution_time,
                                                     "metadata": <a child run's trajectory>}]}}],
                     "final_answer", "iteration_time"}]}

`reference_trajectory` assembles that nested view from the flat records (so it holds exactly
what the log holds, redacted the same way), keeping our fields alongside the reference's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from rlm.core.types import RLMMetadata

Record = dict[str, Any]

__all__ = ["reference_trajectory"]


def _timestamp(record: Mapping[str, Any]) -> str | None:
    t = record.get("t")
    return datetime.fromtimestamp(t).isoformat() if isinstance(t, (int, float)) else None


def run_metadata(start: Mapping[str, Any]) -> Record:
    """A `run_start` record as the reference's `run_metadata` (plus our run fields)."""
    settings: Mapping[str, Any] = start.get("settings") or {}
    reference = RLMMetadata(
        root_model=str(start.get("root_model", "")),
        max_depth=int(settings.get("max_depth", 1)),
        max_iterations=int(settings.get("max_iterations", 0)),
        backend=str(settings.get("backend", "")),
        backend_kwargs=dict(settings.get("backend_kwargs") or {}),
        environment_type=str(start.get("environment", "")),
        environment_kwargs=dict(settings.get("environment_kwargs") or {}),
        other_backends=list(settings.get("other_backends") or []) or None,
    ).to_dict()
    ours = {k: v for k, v in start.items() if k not in ("type", "t", "context")}
    return {**ours, **reference}


def _usage_summary(record: Mapping[str, Any]) -> Record:
    usage: Mapping[str, Any] = record.get("usage") or {}
    model = str(record.get("model", ""))
    summary: Record = {
        "total_calls": 1,
        "total_input_tokens": int(usage.get("input_tokens", 0) or 0),
        "total_output_tokens": int(usage.get("output_tokens", 0) or 0),
    }
    if usage.get("cost") is not None:
        summary["total_cost"] = usage["cost"]
    out: Record = {"model_usage_summaries": {model: summary}}
    if usage.get("cost") is not None:
        out["total_cost"] = usage["cost"]
    return out


class _Index:
    """The records of one top-level completion, looked up by run and by sub-call id."""

    def __init__(self, records: Iterable[Record]) -> None:
        self.starts: dict[str, Record] = {}
        self.iterations: dict[str, list[Record]] = {}
        self.subcalls: dict[str, Record] = {}
        self.ends: dict[str, Record] = {}
        for record in records:
            kind = record.get("type")
            run_id = str(record.get("run_id", ""))
            if kind == "run_start":
                self.starts[run_id] = record
            elif kind == "iteration":
                self.iterations.setdefault(run_id, []).append(record)
            elif kind == "subcall" and record.get("id"):
                self.subcalls[str(record["id"])] = record
            elif kind == "run_end":
                self.ends[run_id] = record

    def trajectory(self, run_id: str, seen: frozenset[str] = frozenset()) -> Record | None:
        start = self.starts.get(run_id)
        if start is None or run_id in seen:
            return None
        seen = seen | {run_id}
        return {
            "run_metadata": run_metadata(start),
            "iterations": [self._iteration(r, seen) for r in self.iterations.get(run_id, [])],
        }

    def _iteration(self, record: Record, seen: frozenset[str]) -> Record:
        ours: Record = {k: record[k] for k in ("run_id", "depth", "usage") if k in record}
        return {
            "type": "iteration",
            "iteration": record.get("iteration"),
            "timestamp": _timestamp(record),
            "prompt": record.get("prompt"),
            "response": record.get("response"),
            "code_blocks": [self._block(b, seen) for b in record.get("code_blocks") or []],
            "final_answer": record.get("final_answer"),
            "iteration_time": record.get("iteration_time"),
            **ours,
        }

    def _block(self, block: Mapping[str, Any], seen: frozenset[str]) -> Record:
        calls = [self.subcalls[i] for i in block.get("subcalls") or [] if i in self.subcalls]
        return {
            "code": block.get("code"),
            "result": {
                "stdout": block.get("stdout", ""),
                "stderr": block.get("stderr", ""),
                "locals": block.get("locals") or {},
                "execution_time": block.get("execution_time"),
                "rlm_calls": [self._call(c, seen) for c in calls],
                "final_answer": block.get("final_answer"),
                "error": block.get("error"),
                "timed_out": block.get("timed_out", False),
            },
        }

    def _call(self, record: Record, seen: frozenset[str]) -> Record:
        call: Record = {
            "root_model": record.get("model", ""),
            "prompt": record.get("prompt"),
            "response": record.get("response", ""),
            "usage_summary": _usage_summary(record),
            "execution_time": record.get("duration"),
        }
        child_id = record.get("child_run_id")
        child = self.trajectory(str(child_id), seen) if child_id else None
        if child is not None:
            call["metadata"] = child
        call["error"] = record.get("error")
        ours = ("kind", "depth", "id", "child_run_id", "started", "ended", "prompt_truncated")
        call.update({k: record[k] for k in ours if k in record})
        return call


def reference_trajectory(records: Iterable[Record], run_id: str | None = None) -> Record | None:
    """`{run_metadata, iterations}` of run `run_id` (default: the first run in `records`),
    with each child run's trajectory nested under the `rlm_query` call that started it."""
    index = _Index(records)
    if run_id is None:
        run_id = next(iter(index.starts), None)
    return None if run_id is None else index.trajectory(run_id)
