"""The reference implementation's log format (`rlms` 0.1.x), both ways.

The reference's `RLMLogger` writes a JSON-lines file: one `metadata` line (the RLM's settings),
then one `iteration` line per root turn, each holding the *whole* message history sent that turn,
the reply, and the code blocks with their results; a block's `rlm_calls` hold its sub-calls, and
a child RLM's sub-call holds the child's own trajectory in `metadata`. Its visualizer reads every
line that is not `metadata` as an iteration.

Users have runs recorded in that format, and teams that keep the reference's visualizer want to
open ours, so:

- `from_reference(records)` turns a reference file's records into ours (header, runs, iterations
  holding only the messages they added, sub-call records, child runs), so `rlm replay` and
  `rlm view` show them with the same code. The header says `"source": "reference"`.
- `ReferenceWriter` turns our records into the reference's lines as they arrive (used by
  `RLMLogger(log_format="reference")`, which therefore still writes each line as it happens);
  `to_reference(records)` converts a whole log (`rlm export --format reference`).

What the reference's format cannot hold is left out, not invented: it records no root usage, no
per-turn usage, no tool calls, and only the root run at top level. What ours cannot hold from
theirs (full values of locals) is cut to a short text, as our own locals are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from rlm.logger.records import SCHEMA, SCHEMA_VERSION, Record

SOURCE = "reference"
ROOT_RUN_ID = "reference"
LOCAL_CUT = 500  # characters kept of a reference local's value (theirs hold whole contexts)
# The reference writes a failed cell's exception as a last stderr line "\nType: message".
# How the reference's first user message names the question and describes the context.
_QUESTION = re.compile(r"Answer the following: (.+?)(?:\n\n|$)", re.DOTALL)
_CONTEXT = re.compile(r"Your context is an? (\S+) of ([\d,]+) total characters")
_ERROR_LINE = re.compile(r"\n([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)(?::[^\n]*)?)\n?$")


# ------------------------------------------------------------------------- recognising


def is_reference_log(records: Sequence[Mapping[str, Any]]) -> bool:
    """True for the records of a reference log: a `metadata` first line, or (files written
    before the reference logged metadata) only `iteration` records shaped like the reference's,
    whose code blocks carry a `result` object."""
    if not records:
        return False
    first = records[0]
    if first.get("type") == "metadata":
        return True
    if any(r.get("type") not in ("iteration",) for r in records):
        return False
    return all(_reference_shaped(r) for r in records)


def _reference_shaped(record: Mapping[str, Any]) -> bool:
    blocks = record.get("code_blocks")
    return (
        "run_id" not in record
        and isinstance(blocks, list)
        and all(isinstance(b, Mapping) and isinstance(b.get("result"), Mapping) for b in blocks)
    )


# ------------------------------------------------------------------------- reading theirs


def from_reference(records: Sequence[Mapping[str, Any]]) -> list[Record]:
    """Our records for the records of a reference log (see the module docstring)."""
    metadata: Mapping[str, Any] = {}
    iterations: list[Mapping[str, Any]] = []
    for record in records:
        if record.get("type") == "metadata" and not metadata:
            metadata = record
        elif record.get("type") != "metadata":
            iterations.append(record)
    first_t = _epoch(metadata.get("timestamp")) or _epoch(
        iterations[0].get("timestamp") if iterations else None
    )
    out: list[Record] = [
        {
            "type": "header",
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "root_run_id": ROOT_RUN_ID,
            "created": metadata.get("timestamp")
            or (iterations[0].get("timestamp") if iterations else None),
            "rlm_version": None,
            "source": SOURCE,
            "t": first_t,
        }
    ]
    reader = _Reader(out)
    for n, completion in enumerate(_completions(iterations), start=1):
        run_id = ROOT_RUN_ID if n == 1 else f"{ROOT_RUN_ID}-{n}"
        reader.run(run_id, "", 0, metadata, completion, task=None, child_answer=None)
    return out


def _completions(iterations: list[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """The reference's logger appends every completion of one RLM to the same file, numbering
    iterations from 1 again: each restart begins another (top-level) run."""
    groups: list[list[Mapping[str, Any]]] = []
    last = 0
    for iteration in iterations:
        number = _int(iteration.get("iteration"), last + 1)
        if not groups or number <= last:
            groups.append([])
        groups[-1].append(iteration)
        last = number
    return groups or [[]]


class _Reader:
    def __init__(self, out: list[Record]) -> None:
        self.out = out
        self.calls = 0
        self.children = 0

    def run(
        self,
        run_id: str,
        parent_id: str,
        depth: int,
        metadata: Mapping[str, Any],
        iterations: Sequence[Mapping[str, Any]],
        *,
        task: str | None,
        child_answer: str | None,
    ) -> None:
        first_prompt = _messages(iterations[0].get("prompt")) if iterations else []
        text = "\n".join(_text(m.get("content")) for m in first_prompt if m.get("role") == "user")
        question = _QUESTION.search(text)
        context = _CONTEXT.search(text)
        self.out.append(
            {
                "type": "run_start",
                "run_id": run_id,
                "parent_id": parent_id,
                "depth": depth,
                "root_model": metadata.get("root_model"),
                "environment": metadata.get("environment_type"),
                "root_prompt": question.group(1) if question else task,
                "context_type": context.group(1) if context else None,
                "context_total_length": int(context.group(2).replace(",", "")) if context else None,
                "settings": {
                    "backend": metadata.get("backend"),
                    "max_depth": metadata.get("max_depth"),
                    "max_iterations": metadata.get("max_iterations"),
                    "other_backends": metadata.get("other_backends"),
                },
                "t": _epoch(metadata.get("timestamp"))
                or _epoch(iterations[0].get("timestamp") if iterations else None),
            }
        )
        history: list[Mapping[str, Any]] = []
        final: Any = None
        for index, iteration in enumerate(iterations, start=1):
            prompt = _messages(iteration.get("prompt"))
            if len(prompt) >= len(history) and prompt[: len(history)] == history:
                added = prompt[len(history) :]
            else:  # the history was rewritten (compaction): this turn starts afresh
                added = prompt
            response = _text(iteration.get("response"))
            history = [*prompt, {"role": "assistant", "content": response}]
            blocks = [
                self.block(run_id, depth, block)
                for block in _list(iteration.get("code_blocks"))
                if isinstance(block, Mapping)
            ]
            final = _answer(iteration.get("final_answer"))
            self.out.append(
                {
                    "type": "iteration",
                    "run_id": run_id,
                    "depth": depth,
                    "iteration": _int(iteration.get("iteration"), index),
                    "prompt": added,
                    "response": response,
                    "code_blocks": blocks,
                    "final_answer": final,
                    "iteration_time": _number(iteration.get("iteration_time")),
                    "usage": None,
                    "t": _epoch(iteration.get("timestamp")),
                }
            )
        answer = final if final is not None else child_answer
        if answer is None:
            return  # a root without an answer: the run was cut off (or is still running)
        max_iterations = metadata.get("max_iterations")
        over = isinstance(max_iterations, int) and len(iterations) > max_iterations
        self.out.append(
            {
                "type": "run_end",
                "run_id": run_id,
                "parent_id": parent_id,
                "depth": depth,
                "answer": answer,
                "value": answer,
                "stop_reason": "max_iterations" if over else "final_answer",
                "error": None,
                "iterations": len(iterations),
                "execution_time": sum(_number(i.get("iteration_time")) or 0.0 for i in iterations),
                "usage": None,  # the reference records no usage of the root's own turns
                "totals": None,
                "t": _epoch(iterations[-1].get("timestamp")) if iterations else None,
            }
        )

    def block(self, run_id: str, depth: int, block: Mapping[str, Any]) -> Record:
        result = block.get("result")
        result = result if isinstance(result, Mapping) else {}
        stderr = _text(result.get("stderr"))
        error = None
        match = _ERROR_LINE.search(stderr)
        if match:
            error = match.group(1)
            stderr = stderr[: match.start()]
        ids = []
        for call in _list(result.get("rlm_calls")):
            if isinstance(call, Mapping):
                ids.append(self.call(run_id, depth, call))
        locals_ = result.get("locals")
        return {
            "code": _text(block.get("code")),
            "stdout": _text(result.get("stdout")),
            "stderr": stderr,
            "error": error,
            "timed_out": False,
            "execution_time": _number(result.get("execution_time")),
            "final_answer": _answer(result.get("final_answer")),
            "locals": {
                str(k): _short(v)
                for k, v in (locals_ if isinstance(locals_, Mapping) else {}).items()
            },
            "subcalls": ids,
        }

    def call(self, run_id: str, depth: int, call: Mapping[str, Any]) -> str:
        self.calls += 1
        call_id = f"{run_id}:call{self.calls}"
        nested = call.get("metadata")
        child_id = None
        if isinstance(nested, Mapping) and isinstance(nested.get("iterations"), list):
            self.children += 1
            child_id = f"{ROOT_RUN_ID}.{self.children}"
            child_meta = nested.get("run_metadata")
            self.run(
                child_id,
                run_id,
                depth + 1,
                child_meta if isinstance(child_meta, Mapping) else {},
                [i for i in nested["iterations"] if isinstance(i, Mapping)],
                task=_text(call.get("prompt")),
                child_answer=_text(call.get("response")),
            )
        model = _text(call.get("root_model"))
        usage = _usage(call.get("usage_summary"))
        response = _text(call.get("response"))
        self.out.append(
            {
                "type": "subcall",
                "id": call_id,
                "parent_id": run_id,
                "kind": "rlm" if child_id else "llm",
                "depth": depth + 1,
                "model": model,
                "prompt": _text(call.get("prompt")),
                "prompt_truncated": False,
                "response": response,
                "response_truncated": False,
                "response_chars": len(response),
                "usage": usage,
                "cost": usage["cost"],
                "started": None,
                "ended": None,
                "duration": _number(call.get("execution_time")),
                "error": call.get("error"),
                "child_run_id": child_id,
            }
        )
        return call_id


def _messages(prompt: Any) -> list[Mapping[str, Any]]:
    """A reference prompt (a message list, a single message, or a bare string) as messages."""
    if isinstance(prompt, list):
        return [
            m if isinstance(m, Mapping) else {"role": "user", "content": _text(m)} for m in prompt
        ]
    if isinstance(prompt, Mapping):
        return [prompt]
    return [] if prompt is None else [{"role": "user", "content": _text(prompt)}]


def _list(value: Any) -> list[Any]:
    """A field that should hold a list (a file is data: anything else counts as empty)."""
    return value if isinstance(value, list) else []


def _answer(value: Any) -> str | None:
    """Final answers are text, or (older reference versions) a [kind, text] pair."""
    if value is None:
        return None
    if isinstance(value, list) and len(value) == 2:
        return _text(value[1])
    return _text(value)


def _usage(summary: Any) -> Record:
    usage: Record = {"input_tokens": 0, "output_tokens": 0, "cached_tokens": 0, "cost": None}
    models = summary.get("model_usage_summaries") if isinstance(summary, Mapping) else None
    for model in (models or {}).values():
        if not isinstance(model, Mapping):
            continue
        usage["input_tokens"] += _int(model.get("total_input_tokens"), 0)
        usage["output_tokens"] += _int(model.get("total_output_tokens"), 0)
        cost = _number(model.get("total_cost"))
        if cost is not None:
            usage["cost"] = (usage["cost"] or 0.0) + cost
    return usage


def _short(value: Any) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= LOCAL_CUT else text[:LOCAL_CUT] + "…"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    import json

    return json.dumps(value, default=str)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _epoch(stamp: Any) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


# ------------------------------------------------------------------------- writing theirs


class ReferenceWriter:
    """Our records in, the reference's lines out, one record at a time.

    Only the root run becomes top-level lines (the reference's visualizer reads every
    non-metadata line as a root iteration); a child run's iterations travel, as the reference
    nests them, in the `metadata` of the `rlm_calls` entry that started it. Our sub-call and
    child-run records come before the iteration of the cell that made them, so every line can
    be written as soon as its iteration record arrives.
    """

    def __init__(self) -> None:
        self.root_id: str | None = None
        self.starts: dict[str, Record] = {}
        self.subcalls: dict[str, Record] = {}
        self.histories: dict[str, list[Record]] = {}
        self.child_iterations: dict[str, list[Record]] = {}

    def feed(self, record: Mapping[str, Any]) -> list[Record]:
        kind = record.get("type")
        if kind == "header":
            self.root_id = str(record.get("root_run_id") or "") or None
        elif kind == "run_start":
            run_id = str(record.get("run_id", ""))
            self.starts[run_id] = dict(record)
            if self.root_id is None and not record.get("parent_id"):
                self.root_id = run_id
            if run_id == self.root_id:
                return [
                    {"type": "metadata", "timestamp": _iso(record.get("t")), **_metadata(record)}
                ]
        elif kind == "subcall":
            self.subcalls[str(record.get("id", ""))] = dict(record)
        elif kind == "iteration":
            run_id = str(record.get("run_id", ""))
            line = self._iteration(run_id, record)
            if run_id == self.root_id:
                return [line]
            self.child_iterations.setdefault(run_id, []).append(line)
        return []

    def _iteration(self, run_id: str, record: Mapping[str, Any]) -> Record:
        history = self.histories.setdefault(run_id, [])
        history.extend(_message(m) for m in _list(record.get("prompt")) if isinstance(m, Mapping))
        prompt = list(history)
        response = _text(record.get("response"))
        history.append({"role": "assistant", "content": response})
        turn = sum(1 for m in history if m["role"] == "assistant")
        return {
            "type": "iteration",
            "iteration": _int(record.get("iteration"), turn),
            "timestamp": _iso(record.get("t")) or "",  # the reference's reader wants a string
            "prompt": prompt,
            "response": response,
            "code_blocks": [
                self._block(b) for b in _list(record.get("code_blocks")) if isinstance(b, Mapping)
            ],
            "final_answer": record.get("final_answer"),
            "iteration_time": record.get("iteration_time"),
        }

    def _block(self, block: Mapping[str, Any]) -> Record:
        stderr = _text(block.get("stderr"))
        error = block.get("error")
        if error:
            stderr += f"\n{error}"  # where the reference puts a cell's exception
        calls = [self.subcalls.get(str(i)) for i in _list(block.get("subcalls"))]
        return {
            "code": _text(block.get("code")),
            "result": {
                "stdout": _text(block.get("stdout")),
                "stderr": stderr,
                "locals": dict(_mapping(block.get("locals"))),
                "execution_time": block.get("execution_time"),
                "rlm_calls": [
                    self._call(c) for c in calls if c is not None and c.get("kind") != "tool"
                ],
                "final_answer": block.get("final_answer"),
            },
        }

    def _call(self, call: Mapping[str, Any]) -> Record:
        model = _text(call.get("model"))
        usage = _mapping(call.get("usage"))
        summary: Record = {
            "total_calls": 1,
            "total_input_tokens": _int(usage.get("input_tokens"), 0),
            "total_output_tokens": _int(usage.get("output_tokens"), 0),
        }
        if _number(usage.get("cost")) is not None:
            summary["total_cost"] = usage["cost"]
        line: Record = {
            "root_model": model,
            "prompt": call.get("prompt"),
            "response": _text(call.get("response")),
            "usage_summary": {"model_usage_summaries": {model: summary}},
            "execution_time": call.get("duration"),
        }
        child = str(call.get("child_run_id") or "")
        if child in self.starts:
            line["metadata"] = {
                "run_metadata": _metadata(self.starts[child]),
                "iterations": self.child_iterations.pop(child, []),
            }
        if call.get("error"):
            line["error"] = call["error"]
        return line


def _metadata(start: Mapping[str, Any]) -> Record:
    settings = _mapping(start.get("settings"))
    model = start.get("root_model")
    return {
        "root_model": model,
        "max_depth": settings.get("max_depth"),
        "max_iterations": settings.get("max_iterations"),
        "backend": settings.get("backend"),
        "backend_kwargs": {"model_name": model},
        "environment_type": start.get("environment"),
        "environment_kwargs": {},
        "other_backends": settings.get("other_backends"),
    }


def _message(message: Mapping[str, Any]) -> Record:
    """A message as the reference's reader wants it: text role and text content (the text
    parts of a list of parts)."""
    content = message.get("content")
    if isinstance(content, list):
        parts = [p.get("text") if isinstance(p, Mapping) else p for p in content]
        content = "".join(p for p in parts if isinstance(p, str))
    return {"role": _text(message.get("role")), "content": _text(content)}


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _iso(t: Any) -> str | None:
    value = _number(t)
    return None if value is None else datetime.fromtimestamp(value).isoformat()


def to_reference(records: Iterable[Mapping[str, Any]]) -> list[Record]:
    """A whole log of ours as the reference's lines."""
    writer = ReferenceWriter()
    return [line for record in records for line in writer.feed(record)]
