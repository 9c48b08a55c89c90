"""`rlm replay`: rendering a recorded run, and `--rerun` reproducing (or not) its cells."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from rlm import RLM
from rlm.cli import main as cli
from rlm.core.types import Message
from rlm.logger import RLMLogger
from rlm.logger.replay import LogFormatError, compare, parse_log, read_log, rerun

pytestmark = pytest.mark.timeout(60)

FENCE = "```"


def repl(code: str) -> str:
    return f"{FENCE}repl\n{code}\n{FENCE}"


def turn(messages: list[Message]) -> int:
    return sum(1 for m in messages if m["role"] == "assistant")


def record(
    tmp_path: Path,
    root: Any,
    sub: Any,
    context: Any = "hello world",
    observers: list[Any] | None = None,
    **kwargs: Any,
) -> Path:
    """Run a scripted RLM with a logger and return its log file."""
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"model_name": "root", "responses": root},
        other_backends=["scripted"],
        other_backend_kwargs=[{"model_name": "sub", "responses": sub}],
        environment="local",
        logger=RLMLogger(tmp_path / "logs"),
        observers=observers or [],
        **kwargs,
    )
    with rlm:
        out = rlm.completion(context, root_prompt="What is in it?")
    return Path(out.metadata["log_file"])  # type: ignore[index]


def file_reading_run(tmp_path: Path, data: Path) -> Path:
    data.write_text("version one")
    root = [
        repl(f"text = open({str(data)!r}).read()\nprint(text)\nprint(len(context))"),
        repl("summary = llm_query('Summarise: ' + text)\nprint(summary)"),
        repl("FINAL(summary)"),
    ]
    return record(tmp_path, root, lambda m: "summary of " + m[-1]["content"][-11:])


def test_render_shows_the_run_as_verbose_showed_it(tmp_path: Path) -> None:
    pytest.importorskip("rich")
    from rich.console import Console

    from rlm.logger import VerbosePrinter
    from rlm.logger.replay import render

    live = io.StringIO()
    path = record(
        tmp_path,
        [
            repl("print(context.upper())\nprint(llm_query('two words'))"),
            "Thinking about it.\n" + repl("x = 1 / 0"),
            repl("FINAL('HELLO')"),
        ],
        lambda m: "sub answer",
        observers=[VerbosePrinter(Console(file=live, width=100))],
    )
    replayed = io.StringIO()
    render(read_log(path), Console(file=replayed, width=100))
    text = replayed.getvalue()
    for expected in ("HELLO WORLD", "sub answer", "ZeroDivisionError", "Thinking about it."):
        assert expected in text
    assert "Final answer" in text and "HELLO" in text
    # Line for line what the live console printed, after the "replaying <file>" line.
    assert text.split("\n", 1)[1] == live.getvalue()


def test_render_of_an_interrupted_log_says_so(tmp_path: Path) -> None:
    pytest.importorskip("rich")
    from rich.console import Console

    from rlm.logger.replay import render

    path = record(tmp_path, [repl("print(1)"), repl("FINAL(2)")], lambda m: "")
    lines = path.read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(lines[:3]) + lines[3][:20])  # killed while writing line 4
    log = read_log(cut)
    assert log.truncated and len(log.records) == 3
    out = io.StringIO()
    render(log, Console(file=out, width=100))
    assert "interrupted" in out.getvalue()


def test_rerun_reproduces_a_recorded_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = file_reading_run(tmp_path, tmp_path / "data.txt")
    report = rerun(read_log(path))
    assert report.reproduced, report.format()
    assert report.cells == 3
    assert report.completion is not None and report.completion.response == "summary of version one"
    assert cli(["replay", "--rerun", str(path)]) == 0
    assert "all 3 recorded cells reproduced" in capsys.readouterr().out


def test_rerun_reports_a_changed_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data.txt"
    path = file_reading_run(tmp_path, data)
    data.write_text("version two")  # the world the code reads has changed
    assert cli(["replay", "--rerun", str(path)]) == 1
    out = capsys.readouterr().out
    assert "1 of 3 recorded cells differ" in out
    assert "iteration 1 block 1: stdout differs" in out
    assert "expected: 'version one\\n11\\n'" in out
    assert "got:      'version two\\n11\\n'" in out
    # The sub-call prompt changed too, so its reply was served by order and said so.
    assert "served in order" in out


def test_rerun_with_child_runs_and_tools(tmp_path: Path) -> None:
    def root(messages: list[Message]) -> str:
        return [
            repl(
                "xs = rlm_query_batched(['first', 'second'], contexts=['AAAA', 'BBBBBB'])\n"
                "print(xs, lookup('k'))"
            ),
            repl("FINAL(' '.join(xs))"),
        ][turn(messages)]

    def sub(messages: list[Message]) -> str:
        if messages[0]["role"] == "system":  # a child RLM's own turns
            return [
                repl("print(llm_query('leaf ' + context))"),
                repl("FINAL(context.lower())"),
            ][turn(messages)]
        return messages[-1]["content"].upper()

    calls: list[str] = []

    def lookup(key: str) -> dict[str, str]:
        calls.append(key)
        return {"key": key}

    path = record(tmp_path, root, sub, max_depth=2, custom_tools={"lookup": lookup})
    log = read_log(path)
    assert len(log.of_type("run_start")) == 3
    report = rerun(log)
    assert report.reproduced, report.format()
    assert report.cells == 2 + 2 * 2
    assert report.completion is not None and report.completion.response == "aaaa bbbbbb"
    assert calls == ["k"]  # the rerun answered the tool from the recording


def test_rerun_of_a_log_without_context_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": [repl("FINAL(1)")]},
        environment="local",
        logger=RLMLogger(tmp_path, log_context=False),
    )
    with rlm:
        out = rlm.completion("secret document")
    path = out.metadata["log_file"]  # type: ignore[index]
    assert "secret document" not in Path(path).read_text()
    assert cli(["replay", "--rerun", path]) == 2
    assert "log_context=False" in capsys.readouterr().err


def test_bad_logs_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    newer = tmp_path / "newer.jsonl"
    newer.write_text(
        json.dumps({"type": "header", "schema": "rlm-trajectory", "version": 99}) + "\n"
    )
    with pytest.raises(LogFormatError, match="newer"):
        read_log(newer)
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("not json\n{}\n")
    for path in (newer, garbage, tmp_path / "missing.jsonl"):
        assert cli(["replay", str(path)]) == 2
    assert "error" in capsys.readouterr().err


def test_compare_reports_missing_and_extra_cells() -> None:
    def log(blocks: list[list[str]]) -> str:
        lines = [
            {"type": "header", "schema": "rlm-trajectory", "version": 1, "root_run_id": "r"},
            {"type": "run_start", "run_id": "r", "parent_id": "", "depth": 0},
        ]
        for n, outputs in enumerate(blocks, start=1):
            lines.append(
                {
                    "type": "iteration",
                    "run_id": "r",
                    "iteration": n,
                    "prompt": [],
                    "response": "",
                    "code_blocks": [{"code": "c", "stdout": o} for o in outputs],
                }
            )
        return "".join(json.dumps(line) + "\n" for line in lines)

    report = compare(parse_log(log([["a", "b"], ["c"]])), parse_log(log([["a"], ["X"], ["d"]])))
    found = {(d.iteration, d.block, d.field) for d in report.differences}
    assert found == {(1, 2, "cell"), (2, 1, "stdout"), (3, 0, "iteration")}
    assert report.cells == 3 and not report.reproduced
