"""Reading trajectory logs back: render them, or re-execute their code and compare.

`rerun` answers "does this recorded run still behave the same?": it runs the recorded context
through a fresh environment with a `ScriptedLM` that serves the recorded replies (no provider,
no key), and compares every code cell's output with the recording. Root replies are served per
run in order; sub-call replies are matched by prompt, falling back to recording order.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlm.core.types import Message, RLMChatCompletion
from rlm.errors import ConfigurationError, ProviderError
from rlm.logger.records import SCHEMA, SCHEMA_VERSION, TRUNCATION_MARK, Record
from rlm.logger.reference_format import SOURCE as REFERENCE_SOURCE
from rlm.logger.reference_format import from_reference, is_reference_log

if TYPE_CHECKING:
    from rich.console import Console

EXHAUSTED_REPLY = (
    "The recording has no further reply for this run.\nFINAL(rerun: no recorded reply)"
)
COMPARED_FIELDS = ("code", "stdout", "stderr", "error", "timed_out")


class LogFormatError(ConfigurationError):
    """A file is not a trajectory log this version of rlm can read."""


# ------------------------------------------------------------------------- reading


@dataclass
class Trajectory:
    """The records of one log file, in order."""

    path: Path | None
    records: list[Record]
    truncated: bool = False  # the last line was cut off mid-write (the run was killed)

    @property
    def header(self) -> Record | None:
        first = self.records[0] if self.records else None
        return first if first is not None and first.get("type") == "header" else None

    @property
    def from_reference(self) -> bool:
        """The file was written by the reference implementation (read through a conversion)."""
        header = self.header
        return header is not None and header.get("source") == REFERENCE_SOURCE

    @property
    def root_run_id(self) -> str:
        header = self.header
        if header is not None:
            return str(header.get("root_run_id", ""))
        starts = self.of_type("run_start")
        return str(starts[0]["run_id"]) if starts else ""

    def of_type(self, kind: str) -> list[Record]:
        return [r for r in self.records if r.get("type") == kind]

    def run_start(self, run_id: str) -> Record | None:
        return next((r for r in self.of_type("run_start") if r.get("run_id") == run_id), None)

    def run_end(self, run_id: str) -> Record | None:
        return next((r for r in self.of_type("run_end") if r.get("run_id") == run_id), None)

    def iterations(self, run_id: str) -> list[Record]:
        return [r for r in self.of_type("iteration") if r.get("run_id") == run_id]

    def subcalls(self, parent_id: str | None = None) -> list[Record]:
        calls = self.of_type("subcall")
        return calls if parent_id is None else [c for c in calls if c.get("parent_id") == parent_id]

    @property
    def complete(self) -> bool:
        """The root run reached its final record."""
        return not self.truncated and self.run_end(self.root_run_id) is not None

    @property
    def context(self) -> Any:
        """The root context, if the log stored it (raises when it did not)."""
        root = self.root_run_id
        for record in (self.run_start(root), self.run_end(root)):
            if record is not None and "context" in record:
                return record["context"]
            if record is not None and "context_file" in record and self.path is not None:
                from rlm.logger.jsonl import load_context_file

                try:
                    return load_context_file(self.path, record)
                except (OSError, ValueError) as exc:
                    raise LogFormatError(
                        f"cannot read the context file {record['context_file']!r} kept beside "
                        f"{self.path}: {exc}"
                    ) from exc
        raise LogFormatError(
            "this log has no context (it was written with RLMLogger(log_context=False), or the "
            "run was cut off before the context was stored), so it cannot be re-run"
        )


def iter_records(lines: Sequence[str], source: str = "<log>") -> Iterator[tuple[int, Record]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LogFormatError(f"{source}:{number}: not a JSON line ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("type"), str):
            raise LogFormatError(f"{source}:{number}: a record must be an object with a 'type'")
        yield number, record


def parse_log(text: str, source: str = "<log>") -> Trajectory:
    """Parse a log's text. A last line without its newline (a killed writer) is dropped."""
    lines = text.split("\n")
    tail = lines.pop()  # "" when the text ends with a newline
    truncated = False
    if tail.strip():
        try:
            json.loads(tail)
            lines.append(tail)
        except json.JSONDecodeError:
            truncated = True
    records = [record for _, record in iter_records(lines, source)]
    if not records:
        raise LogFormatError(f"{source}: empty log")
    if is_reference_log(records):
        records = from_reference(records)
    header = records[0]
    if header.get("type") == "header":
        if header.get("schema") != SCHEMA:
            raise LogFormatError(
                f"{source}: not an rlm trajectory (schema {header.get('schema')!r})"
            )
        version = header.get("version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise LogFormatError(
                f"{source}: trajectory format version {version!r} is newer than this rlm "
                f"understands ({SCHEMA_VERSION}); upgrade rlm"
            )
    elif not any(r.get("type") == "run_start" for r in records):
        raise LogFormatError(f"{source}: no header and no run_start record")
    return Trajectory(None, records, truncated)


def read_log(path: str | Path) -> Trajectory:
    """Read a trajectory file written by `RLMLogger`."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigurationError(f"cannot read {file}: {exc.strerror or exc}") from exc
    trajectory = parse_log(text, str(file))
    trajectory.path = file
    return trajectory


# ------------------------------------------------------------------------- rendering


def render(
    trajectory: Trajectory, console: Console | None = None, *, max_chars: int = 2_000
) -> None:
    """Print a recorded run the way `verbose=True` showed it live."""
    from rlm.logger.verbose import ConsoleView

    view = ConsoleView(console, max_chars=max_chars, live=False)
    if trajectory.path is not None:
        view.console.print(
            f"replaying {trajectory.path}", style="dim", soft_wrap=True, markup=False
        )
    if trajectory.from_reference:
        view.console.print(
            "[bold cyan]This log was written by the reference implementation (rlms):[/] it "
            "records no usage of the root's turns and no tool calls; sub-calls are shown as "
            "far as it holds them."
        )
    for record in trajectory.records:
        view.handle(record)
    if not trajectory.complete:
        why = "its last line was cut off" if trajectory.truncated else "it has no final record"
        view.console.print(f"[bold yellow]The log ends early ({why}): the run was interrupted.[/]")
    view.close()


# ------------------------------------------------------------------------- re-running


@dataclass
class _Run:
    """One run's recorded turns, as the scripted LM and the comparison need them."""

    run_id: str
    depth: int
    iterations: list[Record]
    key: str | None  # the context-metadata message the run opened with
    history: list[Message]  # every message of the run, replies included

    @property
    def responses(self) -> list[str]:
        return [str(r.get("response", "")) for r in self.iterations]

    @classmethod
    def of(cls, trajectory: Trajectory, start: Record) -> _Run:
        run_id = str(start.get("run_id", ""))
        iterations = trajectory.iterations(run_id)
        history: list[Message] = []
        for record in iterations:
            history.extend(dict(m) for m in record.get("prompt") or [])
            history.append({"role": "assistant", "content": str(record.get("response", ""))})
        key = _opening_key(history)
        return cls(run_id, int(start.get("depth", 0)), iterations, key, history)


def _opening_key(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """A run opens with a system prompt and the context-metadata message; the latter names it."""
    if len(messages) >= 2 and messages[0].get("role") == "system":
        second = messages[1]
        if second.get("role") == "user":
            return str(second.get("content", ""))
    return None


def _matches(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> int:
    """How many messages agree, position by position, after the system prompt."""
    return sum(
        1
        for x, y in zip(a[1:], b[1:], strict=False)
        if x.get("role") == y.get("role") and x.get("content") == y.get("content")
    )


def _prompt_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text a sub-call record's prompt preview was cut from."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        return str(messages[0].get("content", ""))
    return "\n".join(str(m.get("content", "")) for m in messages)


def _recorded_prompt(call: Mapping[str, Any]) -> str:
    prompt = str(call.get("prompt") or "")
    if call.get("prompt_truncated"):
        marker = TRUNCATION_MARK.split("{", 1)[0]
        prompt = prompt[: prompt.rfind(marker)] if marker in prompt else prompt
    return prompt


class _Script:
    """The scripted LM's brain: which recorded reply answers these messages."""

    def __init__(self, runs: list[_Run], calls: list[Record], tools: list[Record]) -> None:
        self.runs = runs
        self.by_key: dict[str, list[_Run]] = {}
        for run in runs:
            if run.key is not None:
                self.by_key.setdefault(run.key, []).append(run)
        self.system_prompts = {
            str(r.history[0].get("content")) for r in runs if r.history and r.key is not None
        }
        self.calls = calls
        self.tools = tools
        self.used: set[int] = set()
        self.used_tools: set[int] = set()
        self.claims: dict[str, int] = {}
        self.notes: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, messages: list[Message]) -> str:
        with self.lock:
            key = _opening_key(messages)
            if key is not None and (
                key in self.by_key or str(messages[0].get("content")) in self.system_prompts
            ):
                return self._root_reply(key, messages)
            return self._subcall_reply(messages)

    def _root_reply(self, key: str, messages: list[Message]) -> str:
        candidates = self.by_key.get(key) or self.runs
        turn = sum(1 for m in messages if m.get("role") == "assistant")
        if turn == 0:
            claimed = self.claims.get(key, 0)
            self.claims[key] = claimed + 1
            run = candidates[claimed % len(candidates)]
        else:
            run = max(candidates, key=lambda r: _matches(messages, r.history))
        if turn < len(run.iterations):
            return str(run.iterations[turn].get("response", ""))
        self.notes.append(
            f"run {run.run_id} asked for turn {turn + 1}, but the recording has "
            f"{len(run.iterations)}; it was told to stop"
        )
        return EXHAUSTED_REPLY

    def _subcall_reply(self, messages: list[Message]) -> str:
        text = _prompt_text(messages)
        matching = [
            i for i, call in enumerate(self.calls) if _prompt_matches(text, _recorded_prompt(call))
        ]
        fresh = [i for i in matching if i not in self.used]
        if fresh:
            index = fresh[0]
        elif matching:
            index = matching[-1]
            self.notes.append(f"sub-call asked more often than recorded: {text[:80]!r}")
        else:
            unused = [i for i in range(len(self.calls)) if i not in self.used]
            if not unused:
                self.notes.append(f"no recorded reply left for sub-call {text[:80]!r}")
                return ""
            index = unused[0]
            self.notes.append(
                f"no recorded sub-call has this prompt, served in order: {text[:80]!r}"
            )
        self.used.add(index)
        call = self.calls[index]
        if call.get("error"):
            raise ProviderError(f"recorded error: {call['error']}", provider="replay")
        if call.get("response_truncated"):
            self.notes.append(f"sub-call reply was truncated in the log: {text[:80]!r}")
        return str(call.get("response", ""))

    def tool(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        preview = (
            f"{name}(*{json.dumps(list(args), ensure_ascii=False)}, **{json.dumps(dict(kwargs))})"
        )
        with self.lock:
            for index, call in enumerate(self.tools):
                if index in self.used_tools:
                    continue
                if _prompt_matches(preview, _recorded_prompt(call)):
                    self.used_tools.add(index)
                    break
            else:
                self.notes.append(f"no recorded result for tool call {preview[:80]!r}")
                raise RuntimeError(f"replay: no recorded result for {preview[:80]}")
        if call.get("error"):
            raise RuntimeError(str(call["error"]))
        return json.loads(str(call.get("response") or "null"))


def _prompt_matches(text: str, recorded: str) -> bool:
    """Equal, or the recording holds only a prefix (previews and truncation cut prompts)."""
    if text == recorded:
        return True
    return len(recorded) >= 100 and text.startswith(recorded)


@dataclass(frozen=True)
class CellDifference:
    """One cell (or a whole missing/extra turn) that did not reproduce."""

    run_id: str
    depth: int
    iteration: int
    block: int  # 1-based; 0 when the whole iteration is missing or extra
    field: str
    expected: Any
    got: Any

    def describe(self) -> str:
        where = f"run {self.run_id} (depth {self.depth}) iteration {self.iteration}"
        if self.block:
            where += f" block {self.block}"
        return (
            f"{where}: {self.field} differs\n"
            f"  expected: {self.expected!r}\n"
            f"  got:      {self.got!r}"
        )


@dataclass
class RerunReport:
    """What `rerun` found: every differing cell, plus notes on how replies were served."""

    differences: list[CellDifference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cells: int = 0  # recorded cells compared
    completion: RLMChatCompletion | None = None
    recorded_answer: str | None = None

    @property
    def reproduced(self) -> bool:
        return not self.differences

    def format(self) -> str:
        lines = [
            f"{len(self.differences)} of {self.cells} recorded cells differ"
            if self.differences
            else f"all {self.cells} recorded cells reproduced"
        ]
        lines.extend(d.describe() for d in self.differences)
        if self.completion is not None and self.completion.response != self.recorded_answer:
            lines.append(
                f"final answer differs\n  expected: {self.recorded_answer!r}\n"
                f"  got:      {self.completion.response!r}"
            )
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def rerun(
    trajectory: Trajectory,
    *,
    environment: str | None = None,
    environment_kwargs: Mapping[str, Any] | None = None,
) -> RerunReport:
    """Re-execute a recorded run's code with its recorded LM replies and compare the cells."""
    from rlm.core.rlm import RLM
    from rlm.logger.jsonl import RLMLogger

    if trajectory.from_reference:
        raise LogFormatError(
            "this log was written by the reference implementation: it can be shown "
            "(rlm replay, rlm view) but not re-run (it holds neither the context nor our prompts)"
        )
    root_id = trajectory.root_run_id
    root = trajectory.run_start(root_id)
    if root is None:
        raise LogFormatError("the log has no run_start record for its root run")
    context = trajectory.context
    recorded = [_Run.of(trajectory, start) for start in trajectory.of_type("run_start")]
    calls = [c for c in trajectory.subcalls() if c.get("kind") == "llm"]
    tool_calls = [c for c in trajectory.subcalls() if c.get("kind") == "tool"]
    script = _Script(recorded, calls, tool_calls)

    settings: Mapping[str, Any] = root.get("settings") or {}
    root_model = str(root.get("root_model") or "scripted")
    other_models = [str(m) for m in settings.get("other_models") or []]
    logger = RLMLogger(None, log_context=False, max_prompt_chars=None, secrets=())
    options: dict[str, Any] = {}
    for name in ("max_iterations", "max_errors", "max_subcalls", "max_output_chars"):
        if settings.get(name) is not None:
            options[name] = settings[name]
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"model_name": root_model, "responses": script},
        environment=environment or str(root.get("environment") or "local"),
        environment_kwargs=environment_kwargs,
        depth=int(root.get("depth", 0)),
        max_depth=int(settings.get("max_depth") or 1),
        other_backends=["scripted"] * len(other_models),
        other_backend_kwargs=[{"model_name": m, "responses": script} for m in other_models],
        custom_tools=_tools(script),
        max_concurrent_subcalls=int(settings.get("max_concurrent_subcalls") or 8),
        logger=logger,
        **options,
    )
    try:
        completion = rlm.completion(context, root_prompt=root.get("root_prompt"))
    finally:
        rlm.close()
    rerun_log = parse_log(
        "".join(
            json.dumps(r, default=str) + "\n"
            for r in (logger.get_trajectory() or {}).get("records", [])
        )
    )
    report = compare(trajectory, rerun_log)
    report.notes[:0] = script.notes
    report.completion = completion
    end = trajectory.run_end(root_id)
    report.recorded_answer = None if end is None else str(end.get("answer", ""))
    return report


def _tools(script: _Script) -> dict[str, Any]:
    """Recorded host-side tools, answered from the recording."""
    names = {str(c.get("prompt") or "").split("(*", 1)[0] for c in script.tools}
    tools: dict[str, Any] = {}
    for name in sorted(n for n in names if n.isidentifier()):

        def tool(*args: Any, _name: str = name, **kwargs: Any) -> Any:
            return script.tool(_name, args, kwargs)

        tools[name] = {"tool": tool, "description": "recorded tool (replay)"}
    return tools


def compare(expected: Trajectory, got: Trajectory) -> RerunReport:
    """Pair the runs of two trajectories and list every cell whose output differs."""
    report = RerunReport()
    old = [_Run.of(expected, s) for s in expected.of_type("run_start")]
    new = [_Run.of(got, s) for s in got.of_type("run_start")]
    unpaired = list(old)
    pairs: list[tuple[_Run, _Run | None]] = []
    for run in new:
        same_key = [r for r in unpaired if r.key == run.key and r.depth == run.depth]
        pool = same_key or [r for r in unpaired if r.depth == run.depth]
        if not pool:
            report.notes.append(
                f"the rerun started a run the recording does not have (depth {run.depth})"
            )
            continue
        best = max(pool, key=lambda r: _matches(run.history, r.history))
        unpaired.remove(best)
        pairs.append((best, run))
    pairs.extend((run, None) for run in unpaired)
    pairs.sort(key=lambda pair: old.index(pair[0]))
    for before, after in pairs:
        _compare_run(before, after, report)
    return report


def _compare_run(before: _Run, after: _Run | None, report: RerunReport) -> None:
    turns_after = [] if after is None else after.iterations

    def differs(iteration: int, block: int, name: str, expected: Any, got: Any) -> None:
        report.differences.append(
            CellDifference(before.run_id, before.depth, iteration, block, name, expected, got)
        )

    for index, turn in enumerate(before.iterations):
        blocks = turn.get("code_blocks") or []
        report.cells += len(blocks)
        number = int(turn.get("iteration", index + 1))
        if index >= len(turns_after):
            differs(number, 0, "iteration", "recorded", "not run")
            continue
        new_blocks = turns_after[index].get("code_blocks") or []
        for position in range(max(len(blocks), len(new_blocks))):
            old_block = blocks[position] if position < len(blocks) else None
            new_block = new_blocks[position] if position < len(new_blocks) else None
            if old_block is None or new_block is None:
                differs(
                    number,
                    position + 1,
                    "cell",
                    "recorded" if old_block else "absent",
                    "run" if new_block else "not run",
                )
                continue
            for name in COMPARED_FIELDS:
                if old_block.get(name) != new_block.get(name):
                    differs(number, position + 1, name, old_block.get(name), new_block.get(name))
    for index in range(len(before.iterations), len(turns_after)):
        differs(
            int(turns_after[index].get("iteration", index + 1)), 0, "iteration", "absent", "run"
        )
