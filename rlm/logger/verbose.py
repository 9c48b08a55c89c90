"""`VerbosePrinter`: a run on a Rich console, as it happens (`RLM(verbose=True)`).

The console draws from the same records the trajectory log stores, through `ConsoleView`, so
`rlm replay` shows a recorded run exactly as it looked live. On a terminal, in-flight sub-calls
are drawn as a live tree; elsewhere (CI logs, pipes) nothing is redrawn and no escape codes are
written: each iteration prints once, with a summary of its sub-calls.

This module imports without `rich`; creating a printer or view without it raises
`MissingDependencyError` naming the "rich" extra.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlm._optional import require
from rlm.core.events import Observer, RunInfo
from rlm.core.types import RLMChatCompletion, RLMIteration, SubcallRecord
from rlm.logger import verbose_render as render
from rlm.logger.records import (
    Record,
    iteration_record,
    run_end_record,
    run_start_record,
    subcall_record,
)
from rlm.logger.redact import Redactor

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.tree import Tree

MAX_TREE_LINES = render.MAX_TREE_LINES
RECENT_LIVE = 5  # finished sub-calls kept in the live tree per run


@dataclass
class _RunState:
    """What the live tree shows of one run."""

    run_id: str
    parent_id: str
    depth: int
    model: str
    started: float
    iteration: int = 0
    inflight: dict[str, Record] = field(default_factory=dict)
    recent: list[Record] = field(default_factory=list)
    started_calls: int = 0  # sub-calls started in the current iteration
    done_calls: int = 0
    children: list[str] = field(default_factory=list)


class ConsoleView:
    """Renders trajectory records (from a live run or a log file) on a Rich console.

    `handle(record)` takes the records of docs/trajectory-format.md, plus two live-only ones:
    `iteration_start` and `subcall_start`. `live=None` draws the live sub-call tree only when
    the console is an interactive terminal.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        max_chars: int = 2_000,
        live: bool | None = None,
        on_closed: Callable[[], None] | None = None,
    ) -> None:
        require("rich", extra="rich")
        from rich.console import Console

        self.console = console if console is not None else Console(highlight=False)
        # Rich's default answer to a broken pipe is SystemExit, raised on whatever thread
        # printed (the event loop's, mid-run): the console goes quiet instead, and `on_closed`
        # decides what else happens (`rlm run` stops when its stdout is gone too).
        self._on_closed = on_closed
        self.console.on_broken_pipe = self._broken_pipe  # type: ignore[method-assign]
        self.max_chars = max_chars
        self._live_enabled = (
            self.console.is_terminal and not self.console.is_dumb_terminal if live is None else live
        )
        self._state_lock = threading.Lock()  # run state; never held while printing
        self._print_lock = threading.RLock()  # keeps one event's lines together
        self._runs: dict[str, _RunState] = {}
        self._roots: list[str] = []
        self._pending: dict[str, list[Record]] = {}  # run id -> finished sub-calls to summarise
        # root run id -> model -> failed calls: the usage summary counts only answered calls,
        # and a model whose every call failed must still show in the usage table.
        self._failed: dict[str, dict[str, int]] = {}
        self._live: Live | None = None  # guarded by the print lock
        self._ticker_stop = threading.Event()

    # -- dispatch -------------------------------------------------------------------------

    def handle(self, record: Mapping[str, Any]) -> None:
        handler = {
            "run_start": self._run_start,
            "iteration_start": self._iteration_start,
            "subcall_start": self._subcall_start,
            "subcall": self._subcall,
            "iteration": self._iteration,
            "run_end": self._run_end,
        }.get(str(record.get("type")))
        if handler is not None:
            handler(record)

    def _broken_pipe(self) -> None:
        self.console.quiet = True
        self._ticker_stop.set()
        if self._on_closed is not None:
            self._on_closed()

    def close(self) -> None:
        """Stop the live display (if any) and drop all state."""
        self._stop_live(force=True)
        with self._state_lock:
            self._runs.clear()
            self._roots.clear()
            self._pending.clear()
            self._failed.clear()

    def print(self, renderable: RenderableType, depth: int = 0) -> None:
        from rich.padding import Padding

        with self._print_lock:
            if depth > 0:
                self.console.print(Padding(renderable, (0, 0, 0, 2 * depth)))
            else:
                self.console.print(renderable)

    # -- events ---------------------------------------------------------------------------

    def _run_start(self, record: Mapping[str, Any]) -> None:
        run_id = str(record.get("run_id", ""))
        parent_id = str(record.get("parent_id", ""))
        depth = int(record.get("depth", 0))
        state = _RunState(
            run_id, parent_id, depth, str(record.get("root_model", "")), time.monotonic()
        )
        with self._state_lock:
            self._runs[run_id] = state
            parent = self._runs.get(parent_id) if parent_id else None
            is_root = parent is None
            if parent is not None:
                parent.children.append(run_id)
            else:
                self._roots.append(run_id)
        if is_root:
            self.print(render.header(record), depth)
            self._start_live()
        else:
            from rich.text import Text

            line = Text.assemble(
                ("↳ child run ", "bold magenta"),
                (run_id, "magenta"),
                f" · depth {depth} · {record.get('root_model', '')} · ",
                render.one_line(str(record.get("root_prompt") or ""), 60),
            )
            self.print(line, depth)

    def _iteration_start(self, record: Mapping[str, Any]) -> None:
        with self._state_lock:
            state = self._runs.get(str(record.get("run_id", "")))
            if state is not None:
                state.iteration = int(record.get("iteration", state.iteration + 1))
                state.started_calls = state.done_calls = 0
                state.recent.clear()

    def _subcall_start(self, record: Mapping[str, Any]) -> None:
        with self._state_lock:
            state = self._runs.get(str(record.get("parent_id", "")))
            if state is not None:
                state.inflight[str(record.get("id", ""))] = dict(record)
                state.started_calls += 1

    def _subcall(self, record: Mapping[str, Any]) -> None:
        parent_id = str(record.get("parent_id", ""))
        with self._state_lock:
            self._pending.setdefault(parent_id, []).append(dict(record))
            state = self._runs.get(parent_id)
            if record.get("error"):
                failed = self._failed.setdefault(self._root_of(parent_id), {})
                model = str(record.get("model") or "?")
                failed[model] = failed.get(model, 0) + 1
            if state is not None:
                if state.inflight.pop(str(record.get("id", "")), None) is None:
                    state.started_calls += 1  # no start event (replay): count it now
                state.done_calls += 1
                state.recent = [*state.recent, dict(record)][-RECENT_LIVE:]

    def _root_of(self, run_id: str) -> str:
        """The top-level run `run_id` belongs to (called under the state lock)."""
        seen: set[str] = set()
        while run_id in self._runs and self._runs[run_id].parent_id and run_id not in seen:
            seen.add(run_id)
            parent = self._runs[run_id].parent_id
            if parent not in self._runs:
                break
            run_id = parent
        return run_id

    def _iteration(self, record: Mapping[str, Any]) -> None:
        run_id = str(record.get("run_id", ""))
        depth = int(record.get("depth", 0))
        with self._state_lock:
            subcalls = self._pending.pop(run_id, [])
            state = self._runs.get(run_id)
            is_child = state is not None and state.parent_id in self._runs
        from rich.console import Group

        parts = render.iteration_parts(
            record, subcalls, child=is_child or depth > 0, max_chars=self.max_chars
        )
        self.print(Group(*parts), depth)

    def _run_end(self, record: Mapping[str, Any]) -> None:
        run_id = str(record.get("run_id", ""))
        depth = int(record.get("depth", 0))
        with self._state_lock:
            state = self._runs.pop(run_id, None)
            self._pending.pop(run_id, None)
            failed = self._failed.pop(run_id, {}) if state is None or not state.parent_id else {}
            root_model = state.model if state is not None else ""
            is_root = run_id in self._roots or state is None or state.parent_id not in self._runs
            if run_id in self._roots:
                self._roots.remove(run_id)
            if state is not None and state.parent_id in self._runs:
                parent = self._runs[state.parent_id]
                parent.children = [c for c in parent.children if c != run_id]
            stop_live = not self._roots
        if stop_live:
            self._stop_live()
        if is_root:
            self.print(render.final(record, failed, root_model, max_chars=self.max_chars), depth)
        else:
            from rich.text import Text

            reason = str(record.get("stop_reason", ""))
            style = "green" if reason == "final_answer" else "yellow"
            line = Text.assemble(
                ("↳ child run ", "bold magenta"),
                (run_id, "magenta"),
                " finished: ",
                (reason, style),
                f" in {float(record.get('execution_time') or 0):.1f}s → ",
                render.one_line(str(record.get("answer") or ""), 80),
            )
            self.print(line, depth)

    # -- live tree ------------------------------------------------------------------------

    def _start_live(self) -> None:
        if not self._live_enabled:
            return
        from rich.live import Live

        with self._print_lock:
            if self._live is not None:
                return
            # Redraws come from our own ticker under the print lock, never from Rich's refresh
            # thread: a redraw racing a print makes Rich erase lines that were not its own.
            live = Live(
                get_renderable=self._live_renderable,
                console=self.console,
                auto_refresh=False,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            live.start(refresh=True)
            self._live = live
            stop = self._ticker_stop = threading.Event()
        threading.Thread(
            target=self._tick, args=(live, stop), name="rlm-verbose-live", daemon=True
        ).start()

    def _tick(self, live: Live, stop: threading.Event) -> None:
        while not stop.wait(0.25):
            with self._print_lock:
                if self._live is not live:
                    return
                live.refresh()

    def _stop_live(self, *, force: bool = False) -> None:
        with self._print_lock:
            with self._state_lock:
                if self._roots and not force:
                    return  # another top-level run started meanwhile
            live, self._live = self._live, None
            self._ticker_stop.set()
            if live is not None:
                live.stop()

    def _live_renderable(self) -> RenderableType:
        """A fresh tree of the runs in flight (built under the lock, rendered without it)."""
        from rich.console import Group

        with self._state_lock:
            trees = [self._live_tree(root) for root in self._roots if root in self._runs]
        return Group(*trees)

    def _live_tree(self, run_id: str, tree: Tree | None = None) -> Tree:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.tree import Tree

        state = self._runs[run_id]
        elapsed = time.monotonic() - state.started
        label = (
            f"[bold]run {run_id}[/] · depth {state.depth} · {state.model} · "
            f"iteration {state.iteration} · {elapsed:.0f}s"
        )
        node = Tree(label, guide_style="dim") if tree is None else tree.add(label)
        if state.started_calls > 1:
            bar = Table.grid(padding=(0, 1))
            bar.add_row(
                ProgressBar(total=state.started_calls, completed=state.done_calls, width=30),
                f"{state.done_calls}/{state.started_calls} sub-calls",
            )
            node.add(bar)
        for call in state.recent:
            node.add(render.subcall_line(call))
        for call in list(state.inflight.values())[:MAX_TREE_LINES]:
            node.add(render.subcall_line(call, running=True))
        for child in state.children:
            if child in self._runs:
                self._live_tree(child, node)
        return node


class VerbosePrinter(Observer):
    """The observer behind `RLM(verbose=True)`: prints each run as it happens.

    Output is redacted like the log. Pass a `rich.console.Console` to choose where it goes
    (`Console(stderr=True)` keeps stdout for the answer, as `rlm run` does). When the
    console's pipe breaks (`| head`), it goes quiet and calls `on_closed`; the run goes on.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        max_chars: int = 2_000,
        secrets: Iterable[str] = (),
        on_closed: Callable[[], None] | None = None,
    ) -> None:
        self.view = ConsoleView(console, max_chars=max_chars, on_closed=on_closed)
        self.redactor = Redactor(secrets)

    @property
    def console(self) -> Console:
        return self.view.console

    def _show(self, record: Record) -> None:
        self.view.handle(self.redactor.data(record))

    def on_run_start(self, run: RunInfo) -> None:
        self._show(run_start_record(run))

    def on_iteration_start(self, run: RunInfo, iteration: int) -> None:
        self._show({"type": "iteration_start", "run_id": run.run_id, "iteration": iteration})

    def on_subcall_start(self, run: RunInfo, record: SubcallRecord) -> None:
        data = subcall_record(record, max_prompt_chars=200, max_response_chars=0)
        data["type"] = "subcall_start"
        self._show(data)

    def on_subcall(self, run: RunInfo, record: SubcallRecord) -> None:
        self._show(subcall_record(record, max_prompt_chars=200, max_response_chars=200))

    def on_iteration(self, run: RunInfo, iteration: int, record: RLMIteration) -> None:
        self._show(iteration_record(run, iteration, record))

    def on_run_end(self, run: RunInfo, completion: RLMChatCompletion) -> None:
        self._show(run_end_record(run, completion))

    def close(self) -> None:
        self.view.close()
