"""The output of a batch: one JSON line per finished task, written the moment it finishes.

    {"id": "q1", "response": "...", "value": null, "stop_reason": "final_answer",
     "usage": {...}, "execution_time": 12.3, "error": null, "attempts": 1, "log_file": "..."}

Each line is appended, flushed and fsynced before the next task's result, so a crash (of the
batch, a worker, or the machine) loses nothing that finished. `ResultFile` writes each id at
most once, so a task retried after a worker died is never written twice; `--resume` reads the
ids already present and skips them.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rlm.errors import ConfigurationError


@dataclass
class BatchResult:
    """What one task came to. `error` is set when the task failed (after its retries) or
    stopped on a limit; `response` then holds the best answer so far, if any."""

    id: str
    response: str | None = None
    value: Any = None
    stop_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    execution_time: float = 0.0
    error: str | None = None
    attempts: int = 1
    log_file: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.stop_reason == "final_answer"

    @property
    def cost(self) -> float:
        return float(self.usage.get("total_cost") or 0.0)

    @property
    def tokens(self) -> int:
        return int(self.usage.get("total_input_tokens", 0)) + int(
            self.usage.get("total_output_tokens", 0)
        )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchResult:
        """A result line read back; absent keys take their defaults."""
        known = {f.name: data[f.name] for f in fields(cls) if data.get(f.name) is not None}
        result = cls(**known)
        result.id = str(result.id)
        result.usage = dict(result.usage)
        result.execution_time = float(result.execution_time)
        result.attempts = int(result.attempts) or 1
        return result


class ResultFile:
    """Append-only JSON-lines results, one line per id, safe to share between threads.

    With `resume=True` an existing file is kept and the ids in it are `done`; otherwise an
    existing non-empty file is refused (a new batch must not mix with an old one's results).
    A last line cut short by a crash is dropped on resume: it was never a finished result.
    """

    def __init__(self, path: str | os.PathLike[str] | None, *, resume: bool = False) -> None:
        self.path = None if path is None else Path(path)
        self.done: dict[str, BatchResult] = {}
        self._lock = threading.Lock()
        self._handle: Any = None
        if self.path is None:
            return
        if self.path.exists() and self.path.stat().st_size > 0:
            if not resume:
                raise ConfigurationError(
                    f"{self.path} already holds results: pass --resume to continue that batch "
                    "or choose another --out"
                )
            self._load()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
        except OSError as exc:
            raise ConfigurationError(f"cannot write results to {self.path}: {exc}") from exc

    def _load(self) -> None:
        assert self.path is not None
        raw = self.path.read_bytes()
        keep = raw.rfind(b"\n") + 1  # a partial last line is dropped
        if keep < len(raw):
            with open(self.path, "r+b") as handle:
                handle.truncate(keep)
        for number, line in enumerate(raw[:keep].decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                result = BatchResult.from_dict(json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ConfigurationError(
                    f"{self.path} line {number} is not a batch result ({exc}); refusing to "
                    "resume into it"
                ) from exc
            self.done[result.id] = result

    def write(self, result: BatchResult) -> bool:
        """Append `result` unless its id is already written; True when it was written."""
        line = json.dumps(result.to_dict(), ensure_ascii=False, default=repr) + "\n"
        with self._lock:
            if result.id in self.done:
                return False
            self.done[result.id] = result
            if self._handle is not None:
                self._handle.write(line)
                self._handle.flush()
                os.fsync(self._handle.fileno())
            return True

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def __enter__(self) -> ResultFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
