"""The records of a trajectory file, built from the run's events; and their encoding.

Shared by the JSON-lines logger (`jsonl.py`), the verbose console, replay and the reference
format's converter (`reference_format.py`), so all of them see the same data. The format is
documented in docs/trajectory-format.md.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from rlm.core.events import RunInfo
from rlm.core.types import CodeBlock, RLMChatCompletion, RLMIteration, SubcallRecord

SCHEMA = "rlm-trajectory"
SCHEMA_VERSION = 1
TRUNCATION_MARK = "…[truncated {n} chars]"

Record = dict[str, Any]


# ------------------------------------------------------------------------- record builders
# Shared with the verbose console and replay, so all three show the same data.


def truncate(text: str, limit: int | None) -> tuple[str, bool]:
    """`text` cut to `limit` characters (plus a marker saying how much was dropped)."""
    if limit is None or len(text) <= limit:
        return text, False
    return text[:limit] + TRUNCATION_MARK.format(n=len(text) - limit), True


def header_record(root_run_id: str) -> Record:
    from rlm import __version__

    return {
        "type": "header",
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "root_run_id": root_run_id,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "rlm_version": __version__,
        "t": time.time(),
    }


def run_start_record(run: RunInfo) -> Record:
    return {"type": "run_start", **run.to_dict(), "t": time.time()}


def iteration_record(run: RunInfo, index: int, record: RLMIteration) -> Record:
    return {
        "type": "iteration",
        "run_id": run.run_id,
        "depth": run.depth,
        "iteration": index,
        "prompt": record.prompt
        if isinstance(record.prompt, str)
        else [dict(m) for m in record.prompt],
        "response": record.response,
        "code_blocks": [_block(b) for b in record.code_blocks],
        "final_answer": record.final_answer,
        "iteration_time": record.iteration_time,
        "usage": record.usage.to_dict(),
        "t": time.time(),
    }


def _block(block: CodeBlock) -> Record:
    result = block.result
    return {
        "code": block.code,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "error": result.error,
        "timed_out": result.timed_out,
        "execution_time": result.execution_time,
        "final_answer": result.final_answer,
        "locals": dict(result.locals),
        # The sub-calls themselves are `subcall` records; a block only points at them.
        "subcalls": [c.id for c in result.rlm_calls if c.id],
    }


def subcall_record(
    record: SubcallRecord,
    *,
    max_prompt_chars: int | None = None,
    max_response_chars: int | None = None,
) -> Record:
    prompt, prompt_cut = truncate(record.prompt_preview, max_prompt_chars)
    response, response_cut = truncate(record.response, max_response_chars)
    return {
        "type": "subcall",
        "id": record.id,
        "parent_id": record.parent_id,
        "kind": record.kind,
        "depth": record.depth,
        "model": record.model,
        "prompt": prompt,
        "prompt_truncated": prompt_cut,
        "response": response,
        "response_truncated": response_cut,
        "response_chars": len(record.response),
        "usage": record.usage.to_dict(),
        "cost": record.usage.cost,
        "started": record.started,
        "ended": record.ended,
        "duration": max(0.0, record.ended - record.started) if record.ended else None,
        "error": record.error,
        "child_run_id": record.child_run_id or None,
    }


def run_end_record(run: RunInfo, completion: RLMChatCompletion) -> Record:
    usage = completion.usage_summary
    return {
        "type": "run_end",
        "run_id": run.run_id,
        "parent_id": run.parent_id,
        "depth": run.depth,
        "answer": completion.response,
        "value": completion.value,
        "stop_reason": completion.stop_reason,
        "error": completion.error,
        "iterations": completion.iterations,
        "execution_time": completion.execution_time,
        "usage": usage.to_dict(),
        "totals": {
            "calls": usage.total_calls,
            "input_tokens": usage.total_input_tokens,
            "output_tokens": usage.total_output_tokens,
            "cost": usage.total_cost,
            # calls whose model has no price: `cost` leaves them out and is then a lower bound
            "unpriced_calls": usage.unpriced_calls,
        },
        "t": time.time(),
    }


def encode(record: Record) -> bytes:
    """One JSON line. Non-finite floats become null and unknown objects their str()."""
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False, default=str)
    except ValueError:
        text = json.dumps(_finite(record), ensure_ascii=False, allow_nan=False, default=str)
    return (text + "\n").encode("utf-8", errors="replace")  # lone surrogates become "?"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
