"""`RLMLogger`: one JSON-lines trajectory file per top-level `completion()`.

The format is documented in docs/trajectory-format.md. Each record is one line, written with a
single unbuffered write as soon as the event happens, so a run killed midway leaves a file that
parses up to its last record. A record holds only what is new (the messages a turn added, not
the whole history again), so a file grows linearly with the work done. Every record passes
through the `Redactor` before it is stored anywhere.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from rlm.core.events import Observer, RunInfo
from rlm.core.types import RLMChatCompletion, RLMIteration, SubcallRecord
from rlm.logger.records import (
    Record,
    encode,
    header_record,
    iteration_record,
    run_end_record,
    run_start_record,
    subcall_record,
)
from rlm.logger.redact import Redactor
from rlm.logger.trajectory import reference_trajectory

LOG_FORMATS = ("rlm", "reference")


# ------------------------------------------------------------------------- the logger

_CONTEXT_MODES = {True: "file", False: "none", "file": "file", "inline": "inline", "none": "none"}
_CONTEXT_CHUNK = 8 * 1024 * 1024  # characters encoded per write: no second full copy in memory


def _context_mode(value: Any) -> str:
    mode = _CONTEXT_MODES.get(value) if isinstance(value, (bool, str)) else None
    if mode is None:
        from rlm.errors import ConfigurationError

        raise ConfigurationError(
            f'log_context must be True, False, "file", "inline" or "none", got {value!r}'
        )
    return mode


def load_context_file(log_path: Path, record: Mapping[str, Any]) -> Any:
    """The context a `run_start` record points at with `context_file` (see `RLMLogger`)."""
    path = log_path.with_name(Path(str(record["context_file"])).name)  # beside the log only
    text = path.read_text(encoding="utf-8")
    return text if record.get("context_format") == "text" else json.loads(text)


def _unfinished_end(trace: _Trace, start: Record, stop_reason: str, error: str | None) -> Record:
    """A `run_end` for a run that was cut off: the calls its own records show (its turns and
    the sub-calls its code made), summed."""
    run_id = start.get("run_id")
    calls = [
        r
        for r in trace.records
        if (r.get("type") == "subcall" and r.get("parent_id") == run_id)
        or (r.get("type") == "iteration" and r.get("run_id") == run_id)
    ]
    iterations = [r for r in calls if r.get("type") == "iteration"]
    totals: dict[str, float] = {"calls": len(calls), "input_tokens": 0, "output_tokens": 0}
    cost = 0.0
    for record in calls:
        usage = record.get("usage") or {}
        for key in ("input_tokens", "output_tokens"):
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                totals[key] += value
        value = usage.get("cost")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            cost += value
    totals["cost"] = cost
    started = start.get("t")
    return {
        "type": "run_end",
        "run_id": run_id,
        "parent_id": start.get("parent_id", ""),
        "depth": start.get("depth", 0),
        "answer": None,
        "value": None,
        "stop_reason": stop_reason,
        "error": error,
        "iterations": len(iterations),
        "execution_time": time.time() - started if isinstance(started, (int, float)) else None,
        "usage": {},
        "totals": totals,
        "t": time.time(),
    }


@dataclass
class _Trace:
    """One top-level completion: its records, its file and every run id inside it."""

    root_id: str
    path: Path | None
    handle: IO[bytes] | None
    records: list[Record] = field(default_factory=list)
    run_ids: set[str] = field(default_factory=set)
    context_logged: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    converter: Any = None  # a ReferenceWriter when the file is written in the reference's format


class RLMLogger(Observer):
    """Writes each top-level completion's trajectory to its own JSON-lines file.

    Args:
        log_dir: directory for the files (created if missing); None keeps trajectories in
            memory only (`completion.metadata["trajectory"]`, `get_trajectory()`).
        file_name: file name prefix: `{file_name}_{YYYY-mm-dd_HH-MM-SS}_{root run id}.jsonl`.
        log_context: where the root context goes (`rlm replay --rerun` needs it):
            True or "file" (default): once, into a file beside the log
            (`<log>.context.txt` for a string, `<log>.context.json` otherwise), written
            straight through: a 200 MB context costs about the time to write 200 MB;
            "inline": inside the log's `run_start` record (one self-contained file, but
            every byte is JSON-encoded and scrubbed for secret shapes, slow for big contexts);
            False or "none": not stored (the log can be read but not re-run).
            Without a `log_dir`, "file" keeps no copy of the context.
        max_prompt_chars / max_response_chars: cut sub-call prompts / responses to this many
            characters (None keeps them whole; whole responses keep `--rerun` exact).
        secrets: extra strings to scrub (environment variables that look like keys are
            always scrubbed).
        log_format: "rlm" (docs/trajectory-format.md) or "reference": the file holds the
            reference implementation's lines (`metadata`, then root `iteration`s), for teams
            that open logs with its visualizer. Memory always keeps ours.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] | None = None,
        file_name: str = "rlm",
        *,
        log_context: bool | str = True,
        max_prompt_chars: int | None = 10_000,
        max_response_chars: int | None = None,
        secrets: Iterable[str] = (),
        log_format: str = "rlm",
    ) -> None:
        if log_format not in LOG_FORMATS:
            from rlm.errors import ConfigurationError

            raise ConfigurationError(f"log_format must be one of {LOG_FORMATS}, got {log_format!r}")
        self.log_format = log_format
        for name, value in (
            ("max_prompt_chars", max_prompt_chars),
            ("max_response_chars", max_response_chars),
        ):
            if value is not None and (isinstance(value, bool) or value < 0):
                from rlm.errors import ConfigurationError

                raise ConfigurationError(f"{name} must be None or an int >= 0, got {value!r}")
        self.log_dir = None if log_dir is None else Path(log_dir)
        if self.log_dir is not None:
            try:
                self.log_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                from rlm.errors import ConfigurationError

                raise ConfigurationError(
                    f"cannot use {str(self.log_dir)!r} as the log directory: {exc.strerror or exc}"
                ) from exc
        self.file_name = file_name
        self.context_mode = _context_mode(log_context)
        self.log_context = self.context_mode != "none"
        self.max_prompt_chars = max_prompt_chars
        self.max_response_chars = max_response_chars
        self.redactor = Redactor(secrets)
        self._lock = threading.Lock()
        self._traces: dict[str, _Trace] = {}  # root run id -> trace
        self._root_of: dict[str, str] = {}  # any run id -> its root run id
        self._last: _Trace | None = None
        self.log_file_path: str | None = None  # the most recently opened file (reference name)

    # -- observer hooks ------------------------------------------------------------------

    def on_run_start(self, run: RunInfo) -> None:
        with self._lock:
            root_id = self._root_of.get(run.parent_id) if run.parent_id else None
            if root_id is None or root_id not in self._traces:
                trace = self._open(run.run_id)
                self._traces[run.run_id] = trace
                root_id = run.run_id
            trace = self._traces[root_id]
            self._root_of[run.run_id] = root_id
            trace.run_ids.add(run.run_id)
        record = run_start_record(run)
        context = getattr(run, "context", None)
        if run.run_id == root_id and context is not None:
            self._store_context(trace, record, context)
        self._write(trace, record)

    def on_iteration(self, run: RunInfo, iteration: int, record: RLMIteration) -> None:
        trace = self._trace_of(run.run_id)
        if trace is not None:
            self._write(trace, iteration_record(run, iteration, record))

    def on_subcall(self, run: RunInfo, record: SubcallRecord) -> None:
        trace = self._trace_of(record.parent_id or run.run_id)
        if trace is not None:
            self._write(
                trace,
                subcall_record(
                    record,
                    max_prompt_chars=self.max_prompt_chars,
                    max_response_chars=self.max_response_chars,
                ),
            )

    def on_run_end(self, run: RunInfo, completion: RLMChatCompletion) -> None:
        trace = self._trace_of(run.run_id)
        if trace is None:
            return
        record = run_end_record(run, completion)
        is_root = run.run_id == trace.root_id
        if is_root and not trace.context_logged:
            # The core did not hand the context over at the start: keep it here instead.
            self._store_context(trace, record, completion.prompt)
        self._write(trace, record)
        if not is_root:
            return
        with self._lock:
            self._traces.pop(trace.root_id, None)
            for run_id in trace.run_ids:
                self._root_of.pop(run_id, None)
            self._last = trace
        self._close(trace)
        # The reference's {run_metadata, iterations}, with our flat records alongside.
        completion.metadata = reference_trajectory(trace.records, trace.root_id) or {}
        completion.metadata["trajectory"] = trace.records
        if trace.path is not None:
            completion.metadata["log_file"] = str(trace.path)

    # -- public helpers ------------------------------------------------------------------

    def get_trajectory(self) -> dict[str, Any] | None:
        """The most recently finished top-level completion: the reference's `run_metadata`
        and `iterations`, and our flat `records`."""
        with self._lock:
            last = self._last
        if last is None:
            return None
        records = list(last.records)
        return {**(reference_trajectory(records, last.root_id) or {}), "records": records}

    def close(self, stop_reason: str = "cancelled", error: str | None = None) -> None:
        """End the files of runs that never ended (Ctrl-C, a cancelled task).

        Every run still open gets a `run_end` record (children first) with `stop_reason`, so a
        reader sees how the run ended rather than an incomplete log.
        """
        with self._lock:
            traces = list(self._traces.values())
            self._traces.clear()
            self._root_of.clear()
        for trace in traces:
            ended = {r.get("run_id") for r in trace.records if r.get("type") == "run_end"}
            starts = [r for r in trace.records if r.get("type") == "run_start"]
            for start in sorted(starts, key=lambda r: -int(r.get("depth") or 0)):
                if start.get("run_id") not in ended:
                    self._write(trace, _unfinished_end(trace, start, stop_reason, error))
            self._close(trace)

    @property
    def open_files(self) -> list[str]:
        """The files of runs that have not ended yet."""
        with self._lock:
            return [str(t.path) for t in self._traces.values() if t.path is not None]

    # -- internals -----------------------------------------------------------------------

    def _trace_of(self, run_id: str) -> _Trace | None:
        with self._lock:
            root_id = self._root_of.get(run_id)
            return None if root_id is None else self._traces.get(root_id)

    def _open(self, root_id: str) -> _Trace:
        if self.log_dir is None:
            trace = _Trace(root_id, None, None)
        else:
            stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            path = self.log_dir / f"{self.file_name}_{stamp}_{root_id}.jsonl"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            trace = _Trace(root_id, path, os.fdopen(fd, "ab", buffering=0))
            self.log_file_path = str(path)
            if self.log_format == "reference":
                from rlm.logger.reference_format import ReferenceWriter

                trace.converter = ReferenceWriter()
        self._write(trace, header_record(root_id))
        return trace

    def _store_context(self, trace: _Trace, record: Record, context: Any) -> None:
        trace.context_logged = True
        if self.context_mode == "inline":
            record["context"] = context
        elif self.context_mode == "file" and trace.path is not None and trace.converter is None:
            # (A reference-format log has no field that could point at the file.)
            record.update(self._write_context_file(trace.path, context))

    def _write_context_file(self, log_path: Path, context: Any) -> Record:
        """The context, once, in a file beside the log; only known secret values are scrubbed
        (their exact text, a fast search), never secret-looking shapes: the file must give
        `--rerun` the same context."""
        is_text = isinstance(context, str)
        path = log_path.with_name(log_path.stem + (".context.txt" if is_text else ".context.json"))
        text = context if is_text else json.dumps(context, ensure_ascii=False, default=str)
        text = self.redactor.known(text)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        written = 0
        with os.fdopen(fd, "wb") as handle:
            for start in range(0, len(text), _CONTEXT_CHUNK):
                chunk = text[start : start + _CONTEXT_CHUNK].encode("utf-8", errors="replace")
                handle.write(chunk)
                written += len(chunk)
        return {
            "context_file": path.name,
            "context_format": "text" if is_text else "json",
            "context_bytes": written,
        }

    def _write(self, trace: _Trace, record: Record) -> None:
        clean: Record = self.redactor.data(record)
        with trace.lock:
            trace.records.append(clean)
            if trace.handle is None or trace.handle.closed:
                return
            lines = [clean] if trace.converter is None else trace.converter.feed(clean)
            for line in lines:
                view = memoryview(encode(line))
                while view:  # an unbuffered write may be partial; finish the line
                    written = trace.handle.write(view)
                    if not written:
                        raise OSError(f"could not write to {trace.path}")
                    view = view[written:]

    def _close(self, trace: _Trace) -> None:
        with trace.lock:
            if trace.handle is not None and not trace.handle.closed:
                trace.handle.close()
