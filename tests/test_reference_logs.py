"""Trajectory files that cross between us and the reference implementation (`rlms`), both ways.

The reference's logs in tests/fixtures/reference_logs were written by the reference itself
(regenerate with the `generate.py` beside them). Our exports are checked against the parsing
rules of the reference's visualizer (`visualizer/src/lib/parse-logs.ts` and `lib/types.ts` in
alexzhang13/rlm), restated in `reference_visualizer_parse` below.
"""

from __future__ import annotations

import http.client
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm import RLM
from rlm.cli import main as cli
from rlm.core.types import Message
from rlm.errors import ConfigurationError
from rlm.logger import RLMLogger
from rlm.logger.reference_format import from_reference, is_reference_log, to_reference
from rlm.logger.replay import LogFormatError, Trajectory, parse_log, read_log, render, rerun
from rlm.viewer.logs import summarize
from rlm.viewer.server import make_server

pytestmark = pytest.mark.timeout(60)

FIXTURES = Path(__file__).parent / "fixtures" / "reference_logs"
BASIC = FIXTURES / "reference_basic.jsonl"
CHILD = FIXTURES / "reference_child.jsonl"
PERSISTENT = FIXTURES / "reference_persistent.jsonl"  # two completions of one persistent RLM
FENCE = "```"
TOKEN = "test-token-0123456789"


def repl(code: str) -> str:
    return f"{FENCE}repl\n{code}\n{FENCE}"


def turn(messages: list[Message]) -> int:
    return sum(1 for m in messages if m["role"] == "assistant")


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------- the reference's rules


class ReferenceParseError(AssertionError):
    """What would throw (or be misread) in the reference's visualizer."""


def reference_visualizer_parse(text: str) -> dict[str, Any]:
    """The reference visualizer's reading of a file, rule by rule (parse-logs.ts):

    - the text is trimmed and split on "\\n"; blank lines are dropped;
    - a line that is not JSON is skipped (logged);
    - a line whose `type` is "metadata" sets the config; EVERY other line is an iteration;
    - computeMetadata then reads, per iteration, `code_blocks.length`, `iteration_time` (or
      each block's `result.execution_time`), each block's `result.stderr` and
      `result.rlm_calls.length`, and `final_answer` (a string or a [kind, text] pair);
    - extractContextQuestion reads the first iteration's `prompt` as a list of
      {role, content} and runs `.match` / `.includes` on string contents.

    Raises `ReferenceParseError` where the TypeScript would throw or misread a field.
    """
    iterations: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    for line in (x for x in text.strip().split("\n") if x.strip()):
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict) and parsed.get("type") == "metadata":
            config = {
                key: parsed.get(key)
                for key in (
                    "root_model",
                    "max_depth",
                    "max_iterations",
                    "backend",
                    "backend_kwargs",
                    "environment_type",
                    "environment_kwargs",
                    "other_backends",
                )
            }
        else:
            iterations.append(parsed)
    blocks = calls = 0
    final = None
    for n, it in enumerate(iterations):
        if not isinstance(it, dict) or not isinstance(it.get("code_blocks"), list):
            raise ReferenceParseError(f"iteration {n}: code_blocks.length throws")
        if not isinstance(it.get("iteration"), int) or not isinstance(it.get("timestamp"), str):
            raise ReferenceParseError(f"iteration {n}: iteration/timestamp missing")
        if not isinstance(it.get("response"), str):
            raise ReferenceParseError(f"iteration {n}: response is not a string")
        if it.get("iteration_time") is not None and not isinstance(
            it["iteration_time"], int | float
        ):
            raise ReferenceParseError(f"iteration {n}: iteration_time is not a number")
        prompt = it.get("prompt")
        if not isinstance(prompt, list) or not all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in prompt
        ):
            raise ReferenceParseError(f"iteration {n}: prompt is not a list of messages")
        blocks += len(it["code_blocks"])
        for b in it["code_blocks"]:
            result = b.get("result") if isinstance(b, dict) else None
            if not isinstance(b, dict) or not isinstance(b.get("code"), str):
                raise ReferenceParseError(f"iteration {n}: a block without code")
            if not isinstance(result, dict):
                raise ReferenceParseError(f"iteration {n}: a block without result")
            for key in ("stdout", "stderr"):
                if not isinstance(result.get(key), str):
                    raise ReferenceParseError(f"iteration {n}: result.{key} is not a string")
            if not isinstance(result.get("locals"), dict):
                raise ReferenceParseError(f"iteration {n}: result.locals is not an object")
            if not isinstance(result.get("rlm_calls"), list):
                raise ReferenceParseError(f"iteration {n}: result.rlm_calls.length throws")
            for call in result["rlm_calls"]:
                if not isinstance(call, dict) or not isinstance(call.get("response"), str):
                    raise ReferenceParseError(f"iteration {n}: a sub-call without response")
            calls += len(result["rlm_calls"])
        answer = it.get("final_answer")
        if answer is not None and not isinstance(answer, str | list):
            raise ReferenceParseError(f"iteration {n}: final_answer has the wrong type")
        if answer:
            final = answer[1] if isinstance(answer, list) else answer
    return {
        "config": config,
        "iterations": iterations,
        "total_iterations": len(iterations),
        "total_code_blocks": blocks,
        "total_sub_lm_calls": calls,
        "final_answer": final,
    }


def test_the_rules_reject_our_own_format() -> None:
    """Why an export is needed at all: the reference reads our header as an iteration."""
    native = '{"type": "header", "schema": "rlm-trajectory", "version": 1}\n'
    with pytest.raises(ReferenceParseError, match="code_blocks"):
        reference_visualizer_parse(native)


# ------------------------------------------------------------------------- reading theirs


def test_reference_fixtures_are_what_the_reference_wrote() -> None:
    """The fixtures are the reference's own output, and its own visualizer rules accept them."""
    for path in (BASIC, CHILD):
        records = lines(path)
        assert records[0]["type"] == "metadata" and records[0]["root_model"] == "sim-root"
        assert is_reference_log(records)
        reference_visualizer_parse(path.read_text())


def test_replay_reads_a_reference_log() -> None:
    log = read_log(BASIC)
    assert log.from_reference
    root = log.root_run_id
    start = log.run_start(root)
    assert start is not None and start["root_prompt"] == "How many words?"
    assert start["context_type"] == "str" and start["context_total_length"] == 135
    iterations = log.iterations(root)
    theirs = [r for r in lines(BASIC) if r["type"] == "iteration"]
    assert len(iterations) == len(theirs) == 3
    assert [i["response"] for i in iterations] == [r["response"] for r in theirs]
    # Each of our iterations holds only the messages it added; together they are the history.
    history: list[Any] = []
    for ours, ref in zip(iterations, theirs, strict=True):
        history.extend(ours["prompt"])
        assert history == ref["prompt"]
        history.append({"role": "assistant", "content": ours["response"]})
    first, second, third = (i["code_blocks"][0] for i in iterations)
    assert first["stdout"].startswith("135 The quick brown fox")
    assert second["error"] == "ZeroDivisionError: division by zero" and second["stderr"] == ""
    assert third["final_answer"] == "27" and iterations[-1]["final_answer"] == "27"
    calls = log.subcalls(root)
    assert [c["prompt"] for c in calls] == [
        "Summarise: The quick brown fox jumps over the lazy ",
        "Capital of France?",
        "Capital of Peru?",
    ]
    assert second["subcalls"] == [calls[1]["id"], calls[2]["id"]]
    assert calls[1]["response"] == "sub-answer to: Capital of France?"
    assert calls[0]["usage"]["input_tokens"] == 13
    end = log.run_end(root)
    assert end is not None and end["answer"] == "27" and end["stop_reason"] == "final_answer"
    assert log.complete


def test_replay_reads_the_child_run_nested_in_a_reference_sub_call() -> None:
    log = read_log(CHILD)
    starts = log.of_type("run_start")
    assert len(starts) == 2
    child = starts[1]
    assert child["parent_id"] == log.root_run_id and child["depth"] == 1
    assert child["root_prompt"] == "Count the words in: alpha beta gamma"
    (call,) = log.subcalls(log.root_run_id)
    assert call["kind"] == "rlm" and call["child_run_id"] == child["run_id"]
    assert [i["code_blocks"][0]["stdout"] for i in log.iterations(child["run_id"])] == ["3\n", ""]
    child_end = log.run_end(child["run_id"])
    assert child_end is not None and child_end["answer"] == "three"
    root_end = log.run_end(log.root_run_id)
    assert root_end is not None and root_end["answer"] == "the child said: three"


def test_each_completion_in_a_reference_file_is_its_own_run() -> None:
    """The reference appends every completion of an RLM to one file, restarting the count."""
    log = read_log(PERSISTENT)
    starts = log.of_type("run_start")
    assert [(s["root_prompt"], s["parent_id"]) for s in starts] == [
        ("First question.", ""),
        ("Second question.", ""),
    ]
    answers = [log.run_end(s["run_id"]) for s in starts]
    assert [a["answer"] for a in answers if a] == ["first: hello", "second: more"]
    assert [len(log.iterations(s["run_id"])) for s in starts] == [1, 2]
    second = log.iterations(starts[1]["run_id"])
    assert second[0]["code_blocks"][0]["stdout"] == "more\n"
    # the second run's first turn starts its own history
    assert second[0]["prompt"][0]["role"] == "system"


def test_rlm_replay_renders_a_reference_log(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["replay", str(CHILD), "--max-chars", "500"]) == 0
    out = capsys.readouterr().out
    assert "written by the reference implementation" in out
    assert "Ask a child RLM." in out
    assert "child = rlm_query('Count the words in: alpha beta gamma')" in out
    assert "child run reference.1" in out and "final answer: three" in out
    assert "the child said: three" in out
    assert "interrupted" not in out


def test_a_cut_off_reference_log_renders_as_interrupted() -> None:
    text = BASIC.read_text()
    cut = text[: text.rindex('{"type": "iteration"')] + '{"type": "itera'
    log = parse_log(cut)
    assert log.from_reference and log.truncated and not log.complete
    assert len(log.iterations(log.root_run_id)) == 2
    console = _console()
    render(log, console)
    assert "interrupted" in console.file.getvalue()  # type: ignore[attr-defined]


def test_a_reference_log_cannot_be_rerun(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(LogFormatError, match="reference implementation"):
        rerun(read_log(BASIC))
    assert cli(["replay", "--rerun", str(BASIC)]) == 2
    assert "not re-run" in capsys.readouterr().err


def test_old_reference_logs_without_metadata_are_recognised() -> None:
    records = [r for r in lines(BASIC) if r["type"] != "metadata"]
    assert is_reference_log(records)
    log = parse_log("".join(json.dumps(r) + "\n" for r in records))
    assert log.from_reference and len(log.iterations(log.root_run_id)) == 3
    # ...while a file of ours without a header is still ours (and still needs a run_start).
    with pytest.raises(LogFormatError, match="no header and no run_start"):
        parse_log('{"type": "iteration", "run_id": "x", "code_blocks": []}\n')


# ------------------------------------------------------------------------- rlm view


@pytest.fixture
def viewer(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    logs = tmp_path / "logs"
    logs.mkdir()
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html>")
    server = make_server(logs, 0, token=TOKEN, static_dir=static)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield logs, server.port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"X-RLM-Token": TOKEN, "Host": f"127.0.0.1:{port}"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_rlm_view_lists_and_serves_reference_logs(viewer: tuple[Path, int]) -> None:
    logs, port = viewer
    (logs / "theirs.jsonl").write_bytes(CHILD.read_bytes())
    status, _, body = _get(port, "/api/logs")
    assert status == 200
    (entry,) = json.loads(body)["logs"]
    summary = entry["summary"]
    assert summary["problem"] is None, summary
    assert summary["source"] == "reference"
    assert summary["question"] == "Ask a child RLM."
    assert summary["answer"] == "the child said: three"
    assert summary["runs"] == 2 and summary["complete"]
    status, headers, body = _get(port, "/api/logs/theirs.jsonl")
    assert status == 200 and headers["X-RLM-Converted-From"] == "reference"
    assert int(headers["Content-Length"]) == len(body)
    served = parse_log(body.decode())
    assert served.header is not None and served.header["source"] == "reference"
    assert len(served.of_type("run_start")) == 2
    assert len(served.iterations(served.root_run_id)) == 2


def test_summaries_of_our_logs_say_no_source(tmp_path: Path) -> None:
    path = _our_run(tmp_path)
    with path.open("rb") as handle:
        summary = summarize(handle)
    assert summary["problem"] is None and summary["source"] is None
    assert summary["answer"] == "alpha bravo"


# ------------------------------------------------------------------------- writing theirs


def _root(messages: list[Message]) -> str:
    return [
        repl("x = llm_query('name a letter')\nprint('got', x)"),
        repl("ys = rlm_query_batched(['first', 'second'], contexts=['AAAA', 'BBB'])\nprint(ys)"),
        repl("print(undefined_name)"),
        repl("FINAL(x + ' ' + ys[1])"),
    ][turn(messages)]


def _sub(messages: list[Message]) -> str:
    if messages[0]["role"] == "system":  # a child RLM's own turns
        return [repl("print(len(context))"), repl("FINAL('bravo' if len(context) == 3 else 'x')")][
            turn(messages)
        ]
    return "alpha"


def _our_run(tmp_path: Path, log_format: str = "rlm") -> Path:
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"model_name": "root-model", "responses": _root},
        other_backends=["scripted"],
        other_backend_kwargs=[{"model_name": "sub-model", "responses": _sub}],
        environment="local",
        max_depth=2,
        logger=RLMLogger(tmp_path / f"logs-{log_format}", log_format=log_format),
    )
    with rlm:
        out = rlm.completion("some context", root_prompt="Say two words.")
    assert out.response == "alpha bravo"
    return Path(out.metadata["log_file"])  # type: ignore[index]


def _comparable(log: Trajectory, run_id: str) -> list[dict[str, Any]]:
    """What a reader shows of a run's iterations: the turns, their cells and sub-calls."""
    calls = {c["id"]: c for c in log.subcalls()}
    shown = []
    for it in log.iterations(run_id):
        blocks = []
        for b in it["code_blocks"]:
            blocks.append(
                {
                    "code": b["code"],
                    "stdout": b["stdout"],
                    "stderr": b["stderr"],
                    "error": b["error"],
                    "final_answer": b["final_answer"],
                    "calls": sorted(  # concurrent calls finish in any order
                        (calls[i]["kind"], calls[i]["prompt"], calls[i]["response"])
                        for i in b["subcalls"]
                    ),
                }
            )
        shown.append(
            {
                "iteration": it["iteration"],
                "response": it["response"],
                "prompt": it["prompt"],
                "final_answer": it["final_answer"],
                "blocks": blocks,
            }
        )
    return shown


def _children(log: Trajectory) -> list[list[dict[str, Any]]]:
    runs = [_comparable(log, s["run_id"]) for s in log.of_type("run_start") if s["parent_id"]]
    return sorted(runs, key=lambda run: json.dumps(run))  # concurrent children: any order


def test_round_trip_ours_to_reference_and_back_shows_the_same_iterations(tmp_path: Path) -> None:
    ours = read_log(_our_run(tmp_path))
    exported = to_reference(ours.records)
    back = parse_log("".join(json.dumps(r) + "\n" for r in exported))
    assert back.from_reference
    assert _comparable(back, back.root_run_id) == _comparable(ours, ours.root_run_id)
    assert _children(back) == _children(ours)
    assert len(_children(ours)) == 2
    errors = [b["error"] for i in _comparable(ours, ours.root_run_id) for b in i["blocks"]]
    assert "NameError: name 'undefined_name' is not defined" in errors
    end = back.run_end(back.root_run_id)
    assert end is not None and end["answer"] == "alpha bravo"


def test_export_parses_under_the_reference_visualizer_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _our_run(tmp_path)
    assert cli(["export", "--format", "reference", str(path)]) == 0
    text = capsys.readouterr().out
    seen = reference_visualizer_parse(text)
    assert seen["config"]["root_model"] == "root-model"
    assert seen["config"]["environment_type"] == "local" and seen["config"]["max_depth"] == 2
    assert seen["total_iterations"] == 4  # the root's turns only: children are nested
    assert seen["total_code_blocks"] == 4
    assert seen["total_sub_lm_calls"] == 3  # one llm_query, two child RLMs
    assert seen["final_answer"] == "alpha bravo"
    first = seen["iterations"][0]
    assert [m["role"] for m in first["prompt"]][:2] == ["system", "user"]
    # Every turn carries the whole history so far, as the reference's do.
    assert len(seen["iterations"][1]["prompt"]) > len(first["prompt"])
    calls = seen["iterations"][1]["code_blocks"][0]["result"]["rlm_calls"]
    (child,) = [c for c in calls if c["prompt"] == "second"]
    nested = child["metadata"]
    assert nested["run_metadata"]["root_model"] == "sub-model"
    assert [i["code_blocks"][0]["result"]["stdout"] for i in nested["iterations"]] == ["3\n", ""]
    failing = seen["iterations"][2]["code_blocks"][0]["result"]["stderr"]
    assert failing.endswith("\nNameError: name 'undefined_name' is not defined")


def test_the_logger_writes_the_reference_format_as_it_goes(tmp_path: Path) -> None:
    path = _our_run(tmp_path, "reference")
    text = path.read_text()
    written = lines(path)
    assert written[0]["type"] == "metadata"
    assert [r["type"] for r in written[1:]] == ["iteration"] * 4
    seen = reference_visualizer_parse(text)
    assert seen["final_answer"] == "alpha bravo" and seen["total_sub_lm_calls"] == 3
    # Our reader opens it too, and sees the same turns as a log of ours.
    ours = read_log(_our_run(tmp_path))
    theirs = read_log(path)
    assert theirs.from_reference
    assert _comparable(theirs, theirs.root_run_id) == _comparable(ours, ours.root_run_id)


def test_export_to_a_file_and_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _our_run(tmp_path)
    target = tmp_path / "for_them.jsonl"
    assert cli(["export", "--format", "reference", str(path), "-o", str(target)]) == 0
    assert target.stat().st_mode & 0o077 == 0  # logs may hold the context
    assert cli(["export", "--format", "reference", str(path), "-o", str(target)]) == 2
    assert "exists" in capsys.readouterr().err
    assert cli(["export", "--format", "reference", str(path), "-o", str(target), "--force"]) == 0
    ours_again = tmp_path / "ours_again.jsonl"
    assert cli(["export", "--format", "rlm", str(target), "-o", str(ours_again)]) == 0
    back = read_log(ours_again)
    assert back.header is not None and back.header["source"] == "reference"
    assert len(back.iterations(back.root_run_id)) == 4
    assert cli(["export", "--format", "reference", str(tmp_path / "missing.jsonl")]) == 2


def test_logger_rejects_an_unknown_format() -> None:
    with pytest.raises(ConfigurationError, match="log_format"):
        RLMLogger(None, log_format="refrence")


def test_from_reference_keeps_old_pair_answers_and_cuts_big_locals() -> None:
    records = [
        {"type": "metadata", "root_model": "m", "max_iterations": 1},
        {
            "type": "iteration",
            "iteration": 1,
            "prompt": "a bare string prompt",
            "response": "r",
            "code_blocks": [
                {
                    "code": "x = 1",
                    "result": {"stdout": "", "stderr": "", "locals": {"big": "y" * 10_000}},
                }
            ],
            "final_answer": ["FINAL", "done"],
        },
    ]
    out = from_reference(records)
    (it,) = [r for r in out if r["type"] == "iteration"]
    assert it["prompt"] == [{"role": "user", "content": "a bare string prompt"}]
    assert it["final_answer"] == "done"
    assert len(it["code_blocks"][0]["locals"]["big"]) <= 501


def _console() -> Any:
    from rich.console import Console

    return Console(file=io.StringIO(), width=120, color_system=None)


def test_rlm_run_log_format_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rlm run --log-format reference` writes a file the reference's visualizer reads, with
    secrets scrubbed as in our own format."""
    planted = "sk-plantedKEY0123456789abcdefXYZ"
    monkeypatch.setenv("OPENAI_API_KEY", planted)
    context = tmp_path / "context.txt"
    context.write_text("alpha beta gamma")
    replies = [
        repl("import os\nprint(os.environ['OPENAI_API_KEY'], len(context))"),
        repl("FINAL('done')"),
    ]
    logs = tmp_path / "logs"
    code = cli(
        [
            "run",
            "--backend",
            "scripted",
            "--backend-arg",
            "responses=" + json.dumps(replies),
            "--context",
            str(context),
            "--log-dir",
            str(logs),
            "--log-format",
            "reference",
        ]
    )
    assert code == 0 and capsys.readouterr().out == "done\n"
    (path,) = logs.glob("*.jsonl")
    text = path.read_text()
    assert planted not in text
    seen = reference_visualizer_parse(text)
    assert seen["total_iterations"] == 2 and seen["final_answer"] == "done"
    stdout = seen["iterations"][0]["code_blocks"][0]["result"]["stdout"]
    assert stdout == "[REDACTED] 16\n"
    assert read_log(path).from_reference


@pytest.mark.parametrize(
    "damage",
    [
        {"code_blocks": {"not": "a list"}},
        {"code_blocks": [{"code": 1, "result": {"rlm_calls": 7, "stderr": None}}]},
        {"code_blocks": ["text", {"result": "x"}]},
        {"prompt": None, "response": None, "iteration": "one", "timestamp": 5},
        {"prompt": [1, {"role": "user", "content": ["part"]}], "final_answer": {"x": 1}},
        {
            "code_blocks": [
                {"code": "x", "result": {"rlm_calls": [{"metadata": {"iterations": "no"}}]}}
            ]
        },
    ],
)
def test_a_damaged_reference_log_is_read_as_far_as_it_goes(damage: dict[str, Any]) -> None:
    """A file is data: wrong types in a reference log's fields never crash the reader or the
    writer; the damaged iteration is still shown."""
    records = lines(BASIC)
    records[2] = {**records[2], **damage}
    text = "".join(json.dumps(r) + "\n" for r in records)
    log = parse_log(text)
    assert len(log.iterations(log.root_run_id)) == 3
    render(log, _console())
    reference_visualizer_parse("".join(json.dumps(r) + "\n" for r in to_reference(log.records)))
