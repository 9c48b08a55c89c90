"""The input of a batch: one task per JSON line.

    {"id": "q1", "context": "...", "root_prompt": "Which clauses conflict?"}
    {"id": "q2", "context_file": "docs/contract.txt", "root_prompt": "...", "max_iterations": 10}

A line names its context inline (`context`: any JSON value) or by file (`context_file`: read as
UTF-8 text, relative to the tasks file's folder; `"json": true` parses it as JSON). The other
keys it may carry override the batch's settings for that task only (`OVERRIDES`). A line that
breaks these rules is a `BadTaskLine` carrying its line number: the caller decides whether it
stops the batch or is reported and skipped, never silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlm.errors import ConfigurationError

# Per-task keys -> the RLM argument they set. `model` sets the root backend's model_name.
OVERRIDES: dict[str, str] = {
    "model": "model_name",
    "max_depth": "max_depth",
    "max_iterations": "max_iterations",
    "max_budget": "max_budget",
    "max_timeout": "max_timeout",
    "max_tokens": "max_tokens",
    "max_subcalls": "max_subcalls",
    "max_errors": "max_errors",
}
_KNOWN = {"id", "context", "context_file", "root_prompt", "json", *OVERRIDES}


class BadTaskLine(ConfigurationError):
    """A line of the tasks file that is not a valid task; `line` is its 1-based number."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True)
class BatchTask:
    """One completion to run. `context_file` is resolved when the task runs, not when read,
    so a batch of large documents is not held in memory all at once."""

    id: str
    root_prompt: str | None = None
    context: Any = None
    context_file: str | None = None
    parse_json: bool = False
    overrides: Mapping[str, Any] = field(default_factory=dict)
    line: int = 0

    def load_context(self) -> Any:
        if self.context_file is None:
            return self.context
        return read_document(
            self.context_file,
            as_json=self.parse_json,
            what=f"task {self.id!r}'s {self.context_file}",
        )

    def to_dict(self) -> dict[str, Any]:
        """The task as a JSON line again (used to ship it to a Ray worker)."""
        data: dict[str, Any] = {"id": self.id, **self.overrides}
        if self.root_prompt is not None:
            data["root_prompt"] = self.root_prompt
        if self.context_file is not None:
            data["context_file"] = self.context_file
            data["json"] = self.parse_json
        else:
            data["context"] = self.context
        return data


def parse_task(data: Any, line: int = 0, base: Path | None = None) -> BatchTask:
    """One task from a decoded JSON object; `BadTaskLine` says what is wrong with it."""
    if not isinstance(data, dict):
        raise BadTaskLine(line, f"a task is a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - _KNOWN)
    if unknown:
        raise BadTaskLine(line, f"unknown keys {unknown}; a task may hold {sorted(_KNOWN)}")
    task_id = data.get("id")
    if isinstance(task_id, bool) or not isinstance(task_id, str | int) or task_id == "":
        raise BadTaskLine(line, "'id' must be a non-empty string or an integer")
    has_context, has_file = "context" in data, "context_file" in data
    if has_context == has_file:
        raise BadTaskLine(line, "give exactly one of 'context' and 'context_file'")
    prompt = data.get("root_prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise BadTaskLine(line, "'root_prompt' must be a string")
    parse_json = data.get("json", False)
    if not isinstance(parse_json, bool):
        raise BadTaskLine(line, "'json' must be true or false")
    context_file = None
    if has_file:
        if not isinstance(data["context_file"], str) or not data["context_file"]:
            raise BadTaskLine(line, "'context_file' must be a path")
        path = Path(data["context_file"]).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        if not path.is_file():
            raise BadTaskLine(line, f"context_file {str(path)!r} does not exist")
        context_file = str(path)
    overrides = {key: data[key] for key in OVERRIDES if key in data}
    if "model" in overrides and not isinstance(overrides["model"], str):
        raise BadTaskLine(line, "'model' must be a string")
    return BatchTask(
        id=str(task_id),
        root_prompt=prompt,
        context=data.get("context"),
        context_file=context_file,
        parse_json=parse_json,
        overrides=overrides,
        line=line,
    )


def parse_tasks(
    items: Iterable[str | Mapping[str, Any] | BatchTask], base: Path | None = None
) -> Iterator[BatchTask | BadTaskLine]:
    """Each item (a JSON line, a decoded task or a `BatchTask`; blank lines are passed over)
    as a task, or as the `BadTaskLine` saying why it is not one. A repeated id is a bad line:
    results are keyed by id, so two tasks with one id could never be told apart."""
    seen: set[str] = set()
    for number, item in enumerate(items, start=1):
        if isinstance(item, str) and not item.strip():
            continue
        try:
            task = _task_of(item, number, base)
            if task.id in seen:
                raise BadTaskLine(number, f"duplicate id {task.id!r}")
        except BadTaskLine as bad:
            yield bad
            continue
        seen.add(task.id)
        yield task


def _task_of(
    item: str | Mapping[str, Any] | BatchTask, number: int, base: Path | None
) -> BatchTask:
    if isinstance(item, BatchTask):
        return item
    if isinstance(item, str):
        try:
            return parse_task(json.loads(item), number, base)
        except json.JSONDecodeError as exc:
            raise BadTaskLine(number, f"not JSON ({exc.msg})") from exc
    return parse_task(dict(item) if isinstance(item, Mapping) else item, number, base)


def collect_tasks(
    items: Iterable[str | Mapping[str, Any] | BatchTask],
    on_bad_line: str = "stop",
    base: Path | None = None,
) -> tuple[list[BatchTask], list[BadTaskLine]]:
    """The tasks of `items`, and the bad ones skipped (`on_bad_line="skip"`); with "stop",
    the first bad one is raised."""
    if on_bad_line not in ("stop", "skip"):
        raise ConfigurationError(f"on_bad_line must be 'stop' or 'skip', got {on_bad_line!r}")
    tasks: list[BatchTask] = []
    bad: list[BadTaskLine] = []
    for item in parse_tasks(items, base):
        if isinstance(item, BatchTask):
            tasks.append(item)
        elif on_bad_line == "stop":
            raise item
        else:
            bad.append(item)
    return tasks, bad


def read_tasks(
    path: str | Path, on_bad_line: str = "stop"
) -> tuple[list[BatchTask], list[BadTaskLine]]:
    """All tasks of a file, and the bad lines skipped (`on_bad_line="skip"`); with "stop",
    the first bad line is raised."""
    path = Path(path)
    text = read_document(path, as_json=False, what=f"the tasks file {path}")
    return collect_tasks(text.splitlines(), on_bad_line, base=path.parent)


def read_document(path: str | Path, *, as_json: bool, what: str) -> Any:
    """A UTF-8 file's text, or the JSON value it holds; a `ConfigurationError` naming `what`
    when it cannot be read or parsed. (`rlm run --context FILE` reads its context this way.)"""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read {what}: {exc}") from exc
    return parse_document(text, as_json=as_json, what=what)


def parse_document(text: str, *, as_json: bool, what: str) -> Any:
    if not as_json:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{what} is not valid JSON ({exc})") from exc
