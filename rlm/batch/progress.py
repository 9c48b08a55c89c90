"""The progress line of a batch: done, failed, tokens, cost, ETA.

On a terminal it is one line rewritten in place; otherwise (a log file, CI) a full line every
`every` seconds and at the end, so the output stays readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rlm.batch.results import BatchResult


class Progress:
    def __init__(
        self, total: int, stream: TextIO | None = None, *, skipped: int = 0, every: float = 10.0
    ) -> None:
        self.total = total
        self.skipped = skipped
        self.stream = sys.stderr if stream is None else stream
        self.every = every
        self.started = time.monotonic()
        self.done = 0
        self.failed = 0
        self.tokens = 0
        self.cost = 0.0
        self.partial_cost = False
        self._last_line = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, result: BatchResult) -> None:
        self.done += 1
        if not result.ok:
            self.failed += 1
        self.tokens += result.tokens
        if result.usage.get("total_cost") is None and result.tokens:
            self.partial_cost = True
        self.cost += result.cost
        self.show()

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        left = self.total - self.done
        eta = "?" if not self.done else _duration(elapsed / self.done * left)
        cost = f"${self.cost:.4f}" + ("+ (some calls unpriced)" if self.partial_cost else "")
        skipped = f" ({self.skipped} already done)" if self.skipped else ""
        return (
            f"rlm batch: {self.done}/{self.total} done{skipped}, {self.failed} failed, "
            f"{self.tokens:,} tokens, {cost}, elapsed {_duration(elapsed)}, ETA {eta}"
        )

    def show(self, final: bool = False) -> None:
        now = time.monotonic()
        try:
            if self._tty:
                self.stream.write("\r\x1b[2K" + self.line() + ("\n" if final else ""))
                self.stream.flush()
            elif final or now - self._last_line >= self.every:
                self._last_line = now
                self.stream.write(self.line() + "\n")
                self.stream.flush()
        except (BrokenPipeError, ValueError):  # stderr closed: progress is not worth dying for
            pass


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
