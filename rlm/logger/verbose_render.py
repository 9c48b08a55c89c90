"""What the verbose console draws: Rich renderables built from trajectory records.

Pure functions of the records (no state, no console), so the live console
(`verbose.ConsoleView`) and `rlm replay` draw a run the same way. Rich is imported inside
each function: this module imports without the optional extra.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rlm.logger.records import Record
from rlm.parsing import strip_code

if TYPE_CHECKING:
    from rich.console import RenderableType
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


def clip(text: str, limit: int) -> str:
    """Head and tail of a long text, with the number of characters left out."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    return f"{text[:head]}\n… [{len(text) - limit} chars omitted] …\n{text[-tail:]}"


def one_line(text: str, limit: int = 80) -> str:
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


def header(record: Mapping[str, Any]) -> RenderableType:
    """The panel that opens a top-level run: model, environment, context, limits."""
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
        table.add_row("root prompt", clip(str(record["root_prompt"]), 500))
    limits = [f"{k}={settings[k]}" for k in LIMIT_KEYS if settings.get(k) is not None]
    if limits:
        table.add_row("limits", "  ".join(limits))
    title = f"[bold]RLM run[/] {record.get('run_id', '')}"
    if int(record.get("depth", 0)):
        title += f" (depth {record.get('depth')})"
    return Panel(table, title=title, title_align="left", border_style="cyan")


def iteration_parts(
    record: Mapping[str, Any], subcalls: list[Record], *, child: bool, max_chars: int
) -> list[RenderableType]:
    """One iteration: the response's prose, each code block and its output, the sub-calls it
    made and its final answer; a child run's texts get half the room."""
    from rich.panel import Panel
    from rich.rule import Rule
    from rich.syntax import Syntax
    from rich.text import Text

    limit = max_chars // 2 if child else max_chars
    number = record.get("iteration", "?")
    seconds = float(record.get("iteration_time") or 0.0)
    label = f"Iteration {number}"
    if child:
        label += f" · run {record.get('run_id', '')} · depth {record.get('depth', 0)}"
    label += f" · {seconds:.1f}s · {_tokens(record.get('usage'))}"
    parts: list[RenderableType] = [Rule(label, style="magenta" if child else "blue")]
    prose = strip_code(str(record.get("response") or ""))
    if prose:
        parts.append(Panel(Text(clip(prose, limit)), title="Response", border_style="blue"))
    for index, block in enumerate(record.get("code_blocks") or [], start=1):
        seconds = float(block.get("execution_time") or 0.0)
        parts.append(
            Panel(
                Syntax(
                    clip(str(block.get("code", "")), limit),
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
        output = _output(block, limit)
        if output is not None:
            failed = bool(block.get("error") or block.get("timed_out"))
            parts.append(Panel(output, title="Output", border_style="red" if failed else "green"))
    if subcalls:
        parts.append(_subcall_tree(subcalls))
    final = record.get("final_answer")
    if final is not None:
        parts.append(Text.assemble(("✔ final answer: ", "bold green"), one_line(str(final), 120)))
    return parts


def _output(block: Mapping[str, Any], limit: int) -> Text | None:
    from rich.text import Text

    text = Text()
    stdout = str(block.get("stdout") or "")
    stderr = str(block.get("stderr") or "")
    if stdout:
        text.append(clip(stdout.rstrip("\n"), limit))
    if stderr:
        if text:
            text.append("\n")
        text.append(clip(stderr.rstrip("\n"), limit), style="red")
    if block.get("timed_out"):
        text.append(("\n" if text else "") + "cell timed out", style="bold red")
    elif block.get("error") and str(block["error"]) not in stderr:
        text.append(("\n" if text else "") + str(block["error"]), style="bold red")
    return text if text else None


def subcall_line(call: Mapping[str, Any], *, running: bool = False) -> Text:
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
            line.append(f"  {one_line(str(call['error']), 60)}", style="red")
    prompt = one_line(str(call.get("prompt") or ""), 50)
    if prompt:
        line.append(f"  {prompt}", style="dim")
    return line


def _subcall_tree(calls: list[Record]) -> Tree:
    from rich.tree import Tree

    errors = sum(1 for c in calls if c.get("error"))
    label = f"[bold]{len(calls)} sub-call{'s' if len(calls) != 1 else ''}[/]"
    if errors:
        label += f" [red]({errors} failed)[/]"
    tree = Tree(label, guide_style="dim")
    for call in calls[:MAX_TREE_LINES]:
        tree.add(subcall_line(call))
    if len(calls) > MAX_TREE_LINES:
        tree.add(f"[dim]… and {len(calls) - MAX_TREE_LINES} more[/]")
    return tree


def final(
    record: Mapping[str, Any],
    failed: Mapping[str, int] | None = None,
    root_model: str = "",
    *,
    max_chars: int,
) -> RenderableType:
    """The end of a top-level run: its answer (or why it stopped) and the usage table, with a
    row for every model called, even one whose every call failed (`failed`)."""
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
            Text(clip(answer, max_chars * 2) or "(no answer)"),
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
    table.add_column("input tokens", justify="right", footer=f"{totals.get('input_tokens', 0):,}")
    table.add_column("output tokens", justify="right", footer=f"{totals.get('output_tokens', 0):,}")
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
