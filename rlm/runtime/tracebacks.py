"""Tracebacks of cell code as the model reads them.

A cell's error shows the user's frames only: frames before the first cell frame (the runtime
calling in) and frames of the runtime's own modules are dropped, lines come from the cell's
source (cells have no file), and a traceback of 10^5 frames (a deep recursion) keeps its first
`_TB_HEAD` and last `_TB_TAIL` frames: formatting costs time per frame. Shared by every
environment through `Repl`.

Standard library only: this module is shipped into sandboxes.
"""

from __future__ import annotations

import collections
import os
import traceback
import types
from collections.abc import Mapping

_RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))
# A traceback longer than this keeps its first _TB_HEAD and last _TB_TAIL frames: formatting
# costs time per frame, and a deep recursion has 10^5 or more of them.
_TB_HEAD = 10
_TB_TAIL = 50
_TB_MAX = _TB_HEAD + _TB_TAIL + 20


def format_cell_exception(exc: BaseException, sources: Mapping[str, list[str]]) -> str:
    """Traceback of user code: cell line numbers and source (`sources`: a cell's file name,
    e.g. "<cell 3>", to its lines), runtime frames removed, and the middle of a very long one
    left out."""
    cuts: dict[int, tuple[int, int]] = {}  # id(exception) -> (frames kept before, omitted)
    originals = _shorten_tracebacks(exc, cuts)
    try:
        te = traceback.TracebackException.from_exception(exc, lookup_lines=False)
    finally:
        for shortened, tb in originals:
            shortened.__traceback__ = tb
    seen: set[int] = set()
    stack: list[tuple[traceback.TracebackException | None, BaseException | None]] = [(te, exc)]
    while stack:
        node, error = stack.pop()
        if node is None or error is None or id(node) in seen:
            continue
        seen.add(id(node))
        head, omitted = cuts.get(id(error), (0, 0))
        frames: list[traceback.FrameSummary] = []
        in_cell = False  # frames before the first cell frame are the runtime calling in
        for i, fs in enumerate(node.stack):
            if omitted and i == head:
                frames.append(_Omitted(omitted))
            in_cell = in_cell or fs.filename.startswith("<cell ")
            if not in_cell or os.path.dirname(fs.filename) == _RUNTIME_DIR:
                continue
            lines = sources.get(fs.filename)
            if lines is not None and fs.lineno is not None and 0 < fs.lineno <= len(lines):
                fs = traceback.FrameSummary(
                    fs.filename,
                    fs.lineno,
                    fs.name,
                    lookup_line=False,
                    line=lines[fs.lineno - 1],
                    end_lineno=fs.end_lineno,
                    colno=fs.colno,
                    end_colno=fs.end_colno,
                )
            frames.append(fs)
        node.stack = _Stack(frames)
        stack.append((node.__cause__, error.__cause__))
        stack.append((node.__context__, error.__context__))
        if node.exceptions and isinstance(error, BaseExceptionGroup):
            stack.extend(zip(node.exceptions, error.exceptions, strict=False))
    return "".join(te.format())


class _Omitted(traceback.FrameSummary):
    """Stands where the middle of a very long traceback was left out."""

    def __init__(self, count: int) -> None:
        super().__init__("<omitted>", None, "", lookup_line=False, line="")
        self.count = count


class _Stack(traceback.StackSummary):
    def format_frame_summary(self, frame_summary: traceback.FrameSummary) -> str:
        if isinstance(frame_summary, _Omitted):
            return f"  ... {frame_summary.count} frames omitted ...\n"
        return super().format_frame_summary(frame_summary)


def _shorten_tracebacks(
    exc: BaseException, cuts: dict[int, tuple[int, int]]
) -> list[tuple[BaseException, types.TracebackType | None]]:
    """Give every exception of the chain with a long traceback a copy of its first and last
    frames (recorded in `cuts`); returns the originals to put back."""
    originals: list[tuple[BaseException, types.TracebackType | None]] = []
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        pending += [error.__cause__, error.__context__]
        if isinstance(error, BaseExceptionGroup):
            pending += list(error.exceptions)
        head: list[types.TracebackType] = []
        tail: collections.deque[types.TracebackType] = collections.deque(maxlen=_TB_TAIL)
        count = 0
        tb = error.__traceback__
        while tb is not None:
            if count < _TB_HEAD:
                head.append(tb)
            else:
                tail.append(tb)
            count += 1
            tb = tb.tb_next
        if count <= _TB_MAX:
            continue
        short: types.TracebackType | None = None
        for entry in reversed([*head, *tail]):
            short = types.TracebackType(short, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
        originals.append((error, error.__traceback__))
        error.__traceback__ = short
        cuts[id(error)] = (_TB_HEAD, count - _TB_HEAD - _TB_TAIL)
    return originals
