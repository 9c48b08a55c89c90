"""The log directory as `rlm view` exposes it: which files exist, a summary of each, and the one
safe way to open one.

Only regular `*.jsonl` files found by walking LOG_DIR without following symlinks are ever
opened, so no request can read a path outside LOG_DIR: not with `..`, not with an absolute
path, not through a symlink (symlinks are skipped while listing and refused while opening).
"""

from __future__ import annotations

import json
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from rlm.logger.records import SCHEMA, SCHEMA_VERSION, encode
from rlm.logger.reference_format import from_reference, is_reference_log

LOG_SUFFIX = ".jsonl"
MAX_DEPTH = 4  # subdirectories walked below LOG_DIR (benchmarks write logs/<task>/...)
MAX_FILES = 10_000
TEXT_CUT = 300  # characters of question and answer sent to the run list

# The records the summary parses (others are skipped unparsed). The logger writes
# `{"type": "<kind>", ...`; other spacing is fine while the type is in a line's first 48 bytes.
_SUMMARY_TYPES = (b"run_start", b"run_end")


class LogAccessError(Exception):
    """A requested log name is not a log in LOG_DIR (HTTP 404)."""


@dataclass(frozen=True)
class LogFile:
    name: str  # path relative to LOG_DIR, with "/" separators
    path: Path
    size: int
    mtime: float
    mtime_ns: int


def _visible(name: str) -> bool:
    return not name.startswith(".")


def list_logs(root: Path) -> list[LogFile]:
    """Regular `*.jsonl` files under `root` (symlinks and hidden entries skipped), sorted."""
    found: list[LogFile] = []

    def walk(directory: Path, prefix: str, depth: int) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if len(found) >= MAX_FILES or not _visible(entry.name):
                continue
            try:
                if entry.is_symlink():
                    continue
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            rel = f"{prefix}{entry.name}"
            if stat.S_ISDIR(info.st_mode) and depth < MAX_DEPTH:
                walk(Path(entry.path), f"{rel}/", depth + 1)
            elif stat.S_ISREG(info.st_mode) and entry.name.endswith(LOG_SUFFIX):
                found.append(
                    LogFile(rel, Path(entry.path), info.st_size, info.st_mtime, info.st_mtime_ns)
                )

    walk(root, "", 0)
    return found


def open_log(root: Path, name: str) -> tuple[BinaryIO, LogFile]:
    """Open the log called `name` (relative to `root`) for reading, or raise LogAccessError.

    The name must be one `list_logs` reports; the file is opened without following a symlink
    and checked to be the regular file that was listed.
    """
    if not name or "\x00" in name or "\\" in name or name.startswith("/"):
        raise LogAccessError(name)
    parts = name.split("/")
    if any(p in ("", ".", "..") or not _visible(p) for p in parts) or len(parts) > MAX_DEPTH + 1:
        raise LogAccessError(name)
    log = next((log for log in list_logs(root) if log.name == name), None)
    if log is None:
        raise LogAccessError(name)
    return open_listed(root, log), log


def open_listed(root: Path, log: LogFile) -> BinaryIO:
    """Open a file `list_logs` reported, refusing it if it became a symlink or left `root`."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(log.path, flags)
    except OSError as exc:
        raise LogAccessError(log.name) from exc
    try:
        info = os.fstat(fd)
        real = Path(os.path.realpath(log.path))
        if not stat.S_ISREG(info.st_mode) or not real.is_relative_to(root.resolve()):
            raise LogAccessError(log.name)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# ------------------------------------------------------------------------- summaries


def _record_type(line: bytes) -> bytes | None:
    head = line[:48]
    for kind in _SUMMARY_TYPES:
        if b'"type"' in head and b'"' + kind + b'"' in head:
            return kind
    return None


def _cut(text: Any) -> str | None:
    if text is None:
        return None
    value = text if isinstance(text, str) else json.dumps(text, default=str)
    return value if len(value) <= TEXT_CUT else value[: TEXT_CUT - 1] + "…"


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _first_record(handle: BinaryIO) -> dict[str, Any] | None:
    """The first non-blank line's object (the handle is left at the start)."""
    try:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                return record if isinstance(record, dict) else None
        return None
    except ValueError:
        return None
    finally:
        handle.seek(0)


def reference_records(handle: BinaryIO) -> list[dict[str, Any]] | None:
    """Our records for a log written by the reference implementation, or None (the handle is
    then back at its start) when the file is not one. Lines that do not parse are skipped, as
    the reference's own visualizer skips them."""
    first = _first_record(handle)
    if first is None or not is_reference_log([first]):
        return None
    records: list[dict[str, Any]] = []
    for line in handle:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    if not is_reference_log(records):
        handle.seek(0)
        return None
    return from_reference(records)


def reference_view(handle: BinaryIO) -> bytes | None:
    """A reference log converted to our JSON lines (what the browser reads), or None."""
    records = reference_records(handle)
    return None if records is None else b"".join(encode(r) for r in records)


def summarize(handle: BinaryIO) -> dict[str, Any]:
    """The run-list entry of one log: question, answer, models, time, tokens, cost, stop reason.

    Parses only the first line and the run_start / run_end lines (a 50 MB log is mostly
    iterations and sub-calls), so listing a directory of big logs stays quick. A log written
    by the reference implementation is converted whole first (its lines hold no run records).
    """
    header: dict[str, Any] | None = None
    first = True
    starts: list[dict[str, Any]] = []
    ends: dict[str, dict[str, Any]] = {}
    converted = reference_records(handle)
    lines: Any = handle if converted is None else (encode(r) for r in converted)
    for line in lines:
        if not line.strip() or not (first or _record_type(line)):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a damaged or cut-off line: the browser lists those when the log is opened
        was_first, first = first, False
        if not isinstance(record, dict):
            continue
        if was_first and record.get("type") == "header":
            header = record
        elif record.get("type") == "run_start":
            starts.append(record)
        elif record.get("type") == "run_end":
            ends[str(record.get("run_id", ""))] = record
    problem: str | None = None
    if header is not None:
        version = header.get("version")
        if header.get("schema") != SCHEMA:
            problem = f"not an rlm trajectory (schema {header.get('schema')!r})"
        elif not isinstance(version, int) or isinstance(version, bool) or version < 1:
            problem = f"the header has no valid format version ({version!r})"
        elif version > SCHEMA_VERSION:
            problem = (
                f"trajectory format version {version} is newer than this viewer understands "
                f"(version {SCHEMA_VERSION}); upgrade rlm"
            )
    elif not starts:
        problem = "no header and no run_start record: not a trajectory"

    root_id = str(header.get("root_run_id", "")) if header else ""
    root_start = next((s for s in starts if s.get("run_id") == root_id), None)
    if root_start is None:
        root_start = next((s for s in starts if not s.get("parent_id")), None)
        root_id = str(root_start.get("run_id", "")) if root_start else root_id
    root_end = ends.get(root_id)
    totals = root_end.get("totals") if root_end else None
    totals = totals if isinstance(totals, dict) else {}
    usage = root_end.get("usage") if root_end else None
    summaries = usage.get("model_usage_summaries") if isinstance(usage, dict) else None
    models = list(summaries) if isinstance(summaries, dict) and summaries else []
    if not models:
        models = sorted({str(s.get("root_model")) for s in starts if s.get("root_model")})
    return {
        "root_run_id": root_id,
        "created": header.get("created") if header else None,
        "question": _cut(root_start.get("root_prompt")) if root_start else None,
        "answer": _cut(root_end.get("answer")) if root_end else None,
        "models": models,
        "duration": _num(root_end.get("execution_time")) if root_end else None,
        "input_tokens": _num(totals.get("input_tokens")),
        "output_tokens": _num(totals.get("output_tokens")),
        "calls": _num(totals.get("calls")),
        "cost": _num(totals.get("cost")),
        "unpriced_calls": _num(totals.get("unpriced_calls")),
        "stop_reason": root_end.get("stop_reason") if root_end else None,
        "complete": root_end is not None,
        "runs": len(starts),
        "problem": problem,
        "source": header.get("source") if header else None,
    }


class SummaryCache:
    """Summaries keyed by (name, size, mtime): a finished log is read once per server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}

    def entry(self, root: Path, log: LogFile) -> dict[str, Any]:
        stamp = (log.size, log.mtime_ns)
        with self._lock:
            hit = self._cache.get(log.name)
        if hit is not None and hit[0] == stamp:
            summary = hit[1]
        else:
            try:
                with open_listed(root, log) as handle:
                    summary = summarize(handle)
            except (LogAccessError, OSError) as exc:
                summary = _unreadable(f"cannot read the file ({type(exc).__name__})")
            with self._lock:
                self._cache[log.name] = (stamp, summary)
        return {"name": log.name, "size": log.size, "mtime": log.mtime, "summary": summary}


def _unreadable(problem: str) -> dict[str, Any]:
    return {
        "root_run_id": "",
        "created": None,
        "question": None,
        "answer": None,
        "models": [],
        "duration": None,
        "input_tokens": None,
        "output_tokens": None,
        "calls": None,
        "cost": None,
        "stop_reason": None,
        "complete": False,
        "runs": 0,
        "problem": problem,
        "source": None,
    }
