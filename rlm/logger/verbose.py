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
from rlm.logger.records import (
    Record,
    iteration_record,
    run_end_record,
    run_start_record,
    subcall_record,
)
from rlm.logger.redact import Redactor
from rlm.parsing import strip_code

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.text import Text
    from rich.tree import Tree

LIMIT_KEYS = (
    "max_depth",
    "max_iterations",
    "max_errors",
    "max_tokens",
    "max_budget",
    "max_timeout",
    "max_subcalls",
)
MAX_TREE_LINES = 20  # sub-calls listed per iteration summary before "… N more"
RECENT_LIVE = 5  # finished sub-calls kept in the live tree per run


def _clip(text: str, limit: int) -> str:
    """Head and tail of a long text, with the number of characters left out."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    return f"{text[:head]}\n… [{len(text) - limit} chars omitted] …\n{text[-tail:]}"


def _one_line(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _tokens(usage: Mapping[str, Any] | None) -> str:
    usage = usage or {}
    return f"{usage.get('input_tokens', 0)}→{usage.get('output_tokens', 0)} tok"


def _cost(value: Any, unpriced: Any = 0) -> str:
    """A cost; "≥" when some calls had no price, so the sum is only a lower bound."""
    if value is None:
        return "no price" if unpriced else "—"
    return f"{'≥ ' if unpriced else ''}${float(value):.4f}"


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
        kind = record.get("type")
        if kind == "run_start":
            self._run_start(record)
        elif kind == "iteration_start":
            self._iteration_start(record)
        elif kind == "subcall_start":
            self._subcall_start(record)
        elif kind == "subcall":
            self._subcall(record)
        elif kind == "iteration":
            self._iteration(record)
        elif kind == "run_end":
            self._run_end(record)

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
            self.print(self._header(record), depth)
            self._start_live()
        else:
            from rich.text import Text

            line = Text.assemble(
                ("↳ child run ", "bold magenta"),
                (run_id, "magenta"),
                f" · depth {depth} · {record.get('root_model', '')} · ",
                _one_line(str(record.get("root_prompt") or ""), 60),
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

        parts = self._iteration_parts(record, subcalls, child=is_child or depth > 0)
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
            self.print(self._final(record, failed, root_model), depth)
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
                _one_line(str(record.get("answer") or ""), 80),
            )
            self.print(line, depth)

    # -- renderables ----------------------------------------------------------------------

    def _header(self, record: Mapping[str, Any]) -> RenderableType:
        from rich.panel import Panel
        from rich.table import Table

        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        settings = record.get("settings") or {}
        lengths = record.get("context_lengths") or []
        table.add_row("model", str(record.get("root_model", "")))
        others = settings.get("other_models") or []
        if others:
            table.add_row("sub-call models", ", ".join(str(m) for m in others))
        table.add_row("environment", str(record.get("environment", "")))
        table.add_row(
            "context",
            f"{record.get('context_type', '')}, {record.get('context_total_length', 0):,} chars"
            + (f" in {len(lengths)} chunks" if len(lengths) > 1 else ""),
        )
        if record.get("root_prompt"):
            table.add_row("root prompt", _clip(str(record["root_prompt"]), 500))
        limits = [f"{k}={settings[k]}" for k in LIMIT_KEYS if settings.get(k) is not None]
        if limits:
            table.add_row("limits", "  ".join(limits))
        title = f"[bold]RLM run[/] {record.get('run_id', '')}"
        if int(record.get("depth", 0)):
            title += f" (depth {record.get('depth')})"
        return Panel(table, title=title, title_align="left", border_style="cyan")

    def _iteration_parts(
        self, record: Mapping[str, Any], subcalls: list[Record], *, child: bool
    ) -> list[RenderableType]:
        from rich.panel import Panel
        from rich.rule import Rule
        from rich.syntax import Syntax
        from rich.text import Text

        limit = self.max_chars // 2 if child else self.max_chars
        number = record.get("iteration", "?")
        seconds = float(record.get("iteration_time") or 0.0)
        label = f"Iteration {number}"
        if child:
            label += f" · run {record.get('run_id', '')} · depth {record.get('depth', 0)}"
        label += f" · {seconds:.1f}s · {_tokens(record.get('usage'))}"
        parts: list[RenderableType] = [Rule(label, style="magenta" if child else "blue")]
        prose = strip_code(str(record.get("response") or ""))
        if prose:
            parts.append(Panel(Text(_clip(prose, limit)), title="Response", border_style="blue"))
        for index, block in enumerate(record.get("code_blocks") or [], start=1):
            seconds = float(block.get("execution_time") or 0.0)
            parts.append(
                Panel(
                    Syntax(
                        _clip(str(block.get("code", "")), limit),
                        "python",
                        theme="ansi_dark",
                        word_wrap=True,
                        background_color="default",
                    ),
                    title=f"Code {index}",
                    subtitle=f"{seconds:.2f}s",
                    subtitle_align="right",
                    border_style="cyan",
                )
            )
            output = self._output(block, limit)
            if output is not None:
                failed = bool(block.get("error") or block.get("timed_out"))
                parts.append(
                    Panel(output, title="Output", border_style="red" if failed else "green")
                )
        if subcalls:
            parts.append(self._subcall_tree(subcalls))
        final = record.get("final_answer")
        if final is not None:
            parts.append(
                Text.assemble(("✔ final answer: ", "bold green"), _one_line(str(final), 120))
            )
        return parts

    def _output(self, block: Mapping[str, Any], limit: int) -> Text | None:
        from rich.text import Text

        text = Text()
        stdout = str(block.get("stdout") or "")
        stderr = str(block.get("stderr") or "")
        if stdout:
            text.append(_clip(stdout.rstrip("\n"), limit))
        if stderr:
            if text:
                text.append("\n")
            text.append(_clip(stderr.rstrip("\n"), limit), style="red")
        if block.get("timed_out"):
            text.append(("\n" if text else "") + "cell timed out", style="bold red")
        elif block.get("error") and str(block["error"]) not in stderr:
            text.append(("\n" if text else "") + str(block["error"]), style="bold red")
        return text if text else None

    def _subcall_line(self, call: Mapping[str, Any], *, running: bool = False) -> Text:
        from rich.text import Text

        kind = str(call.get("kind", "llm"))
        model = str(call.get("model") or "")
        line = Text.assemble((f"{kind} ", "bold"), f"d{call.get('depth', '?')} ", (model, "cyan"))
        if running:
            started = call.get("started")
            elapsed = time.time() - float(started) if started else 0.0
            line.append(f"  running {elapsed:.1f}s", style="yellow")
        else:
            duration = call.get("duration")
            if duration is not None:
                line.append(f"  {float(duration):.2f}s")
            line.append(f"  {_tokens(call.get('usage'))}")
            if call.get("cost") is not None:
                line.append(f"  {_cost(call.get('cost'))}")
            if call.get("error"):
                line.append(f"  {_one_line(str(call['error']), 60)}", style="red")
        prompt = _one_line(str(call.get("prompt") or ""), 50)
        if prompt:
            line.append(f"  {prompt}", style="dim")
        return line

    def _subcall_tree(self, calls: list[Record]) -> Tree:
        from rich.tree import Tree

        errors = sum(1 for c in calls if c.get("error"))
        label = f"[bold]{len(calls)} sub-call{'s' if len(calls) != 1 else ''}[/]"
        if errors:
            label += f" [red]({errors} failed)[/]"
        tree = Tree(label, guide_style="dim")
        for call in calls[:MAX_TREE_LINES]:
            tree.add(self._subcall_line(call))
        if len(calls) > MAX_TREE_LINES:
            tree.add(f"[dim]… and {len(calls) - MAX_TREE_LINES} more[/]")
        return tree

    def _final(
        self,
        record: Mapping[str, Any],
        failed: Mapping[str, int] | None = None,
        root_model: str = "",
    ) -> RenderableType:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        reason = str(record.get("stop_reason", ""))
        parts: list[RenderableType] = []
        answer = str(record.get("answer") or "")
        style = "green" if reason == "final_answer" else "yellow"
        parts.append(
            Panel(
                Text(_clip(answer, self.max_chars * 2) or "(no answer)"),
                title="Final answer" if reason == "final_answer" else f"Answer ({reason})",
                border_style=style,
            )
        )
        if reason != "final_answer":
            message = f"stopped: {reason}"
            if record.get("error"):
                message += f" — {record['error']}"
            parts.append(Text(message, style="bold yellow"))
        usage = record.get("usage") or {}
        models: dict[str, Any] = dict(usage.get("model_usage_summaries") or {})
        failed = dict(failed or {})
        for model in [root_model, *failed]:
            if model and model not in models:  # every call to it failed: still a row
                models[model] = {}
        table = Table(title="Usage", title_justify="left", show_footer=len(models) > 1)
        totals = record.get("totals") or {}
        table.add_column("model", footer="total")
        table.add_column("calls", justify="right", footer=str(totals.get("calls", "")))
        table.add_column(
            "input tokens", justify="right", footer=f"{totals.get('input_tokens', 0):,}"
        )
        table.add_column(
            "output tokens", justify="right", footer=f"{totals.get('output_tokens', 0):,}"
        )
        table.add_column("cached", justify="right")
        unpriced = totals.get("unpriced_calls") or 0
        table.add_column("cost", justify="right", footer=_cost(totals.get("cost"), unpriced))
        if failed:
            table.add_column("failed", justify="right", footer=str(sum(failed.values())))
        for model, summary in models.items():
            row = [
                model,
                str(summary.get("total_calls", 0)),
                f"{summary.get('total_input_tokens', 0):,}",
                f"{summary.get('total_output_tokens', 0):,}",
                f"{summary.get('total_cached_tokens', 0):,}",
                _cost(summary.get("total_cost"), summary.get("unpriced_calls")),
            ]
            if failed:
                row.append(str(failed.get(model, 0)))
            table.add_row(*row)
        parts.append(table)
        if unpriced and totals.get("cost") is not None:
            parts.append(
                Text(
                    f"cost is a lower bound: {unpriced} call(s) to models without a price are "
                    "not counted (rlm.clients.pricing.register_price)",
                    style="yellow",
                )
            )
        seconds = float(record.get("execution_time") or 0.0)
        parts.append(
            Text(
                f"{record.get('iterations', 0)} iterations · {seconds:.1f}s · "
                f"run {record.get('run_id', '')}",
                style="dim",
            )
        )
        return Group(*parts)

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
            node.add(self._subcall_line(call))
        for call in list(state.inflight.values())[:MAX_TREE_LINES]:
            node.add(self._subcall_line(call, running=True))
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
