"""The JSON-lines trajectory logger, the verbose console and secret scrubbing."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rlm.core.events import Observer, RunInfo
from rlm.core.types import (
    CodeBlock,
    ModelUsageSummary,
    REPLResult,
    RLMChatCompletion,
    RLMIteration,
    SubcallRecord,
    Usage,
    UsageSummary,
)
from rlm.errors import ConfigurationError, MissingDependencyError
from rlm.logger import RLMLogger
from rlm.logger.redact import REDACTED, Redactor, is_sensitive_key
from rlm.logger.replay import parse_log, read_log

pytestmark = pytest.mark.timeout(60)

FENCE = "```"
PLANTED = "sk-plantedKEY0123456789abcdefXYZ"
PLANTED_PLAIN = "plain-planted-secret-4711-zzz"  # no credential shape: caught by env value


def repl(code: str) -> str:
    return f"{FENCE}repl\n{code}\n{FENCE}"


def run_info(run_id: str = "root1", parent_id: str = "", depth: int = 0, **kw: Any) -> RunInfo:
    return RunInfo(
        run_id=run_id,
        parent_id=parent_id,
        depth=depth,
        root_model=kw.pop("root_model", "gpt-test"),
        environment="local",
        root_prompt=kw.pop("root_prompt", "What is it?"),
        context_type="str",
        context_total_length=11,
        context_lengths=[11],
        settings=kw.pop("settings", {"max_depth": 2, "max_iterations": 5, "other_models": []}),
        context=kw.pop("context", "hello world"),
    )


def subcall(parent_id: str, n: int = 0, **kw: Any) -> SubcallRecord:
    return SubcallRecord(
        kind=kw.pop("kind", "llm"),
        depth=kw.pop("depth", 1),
        model="sub-model",
        prompt_preview=kw.pop("prompt", f"prompt {n}"),
        response=kw.pop("response", f"answer {n}"),
        usage=Usage(input_tokens=10, output_tokens=3, cost=0.001),
        started=1000.0 + n,
        ended=1000.5 + n,
        id=f"call{n}",
        parent_id=parent_id,
        **kw,
    )


def iteration(n: int, calls: list[SubcallRecord] = (), **kw: Any) -> RLMIteration:  # type: ignore[assignment]
    result = REPLResult(
        stdout=kw.pop("stdout", f"out {n}\n"),
        stderr=kw.pop("stderr", ""),
        locals={"x": "int"},
        execution_time=0.25,
        rlm_calls=list(calls),
    )
    return RLMIteration(
        prompt=kw.pop("prompt", [{"role": "user", "content": f"turn {n}"}]),
        response=kw.pop("response", repl(f"print('out {n}')")),
        code_blocks=[CodeBlock(f"print('out {n}')", result)],
        final_answer=kw.pop("final_answer", None),
        iteration_time=0.5,
        usage=Usage(input_tokens=100 * n, output_tokens=7),
    )


def completion(run: RunInfo, answer: str = "42", stop: str = "final_answer") -> RLMChatCompletion:
    summary = UsageSummary(
        {
            "gpt-test": ModelUsageSummary(2, 300, 14, 0.01),
            "sub-model": ModelUsageSummary(1, 10, 3),
        }
    )
    return RLMChatCompletion(
        root_model=run.root_model,
        prompt=run.context,
        response=answer,
        usage_summary=summary,
        execution_time=1.5,
        metadata={"run_metadata": run.to_dict(), "iterations": []},
        stop_reason=stop,  # type: ignore[arg-type]
        run_id=run.run_id,
        iterations=2,
    )


def drive(logger: Observer, root: RunInfo | None = None) -> RLMChatCompletion:
    """A root run with one child run, as the core would report it."""
    root = root or run_info()
    child = run_info("child1", parent_id=root.run_id, depth=1, context="chunk")
    logger.on_run_start(root)
    logger.on_iteration_start(root, 1)
    call = subcall(root.run_id, 0)
    logger.on_subcall_start(root, call)
    logger.on_subcall(root, call)
    logger.on_iteration(root, 1, iteration(1, [call]))
    logger.on_run_start(child)
    child_call = subcall(child.run_id, 1, depth=2)
    logger.on_subcall(child, child_call)
    logger.on_iteration(child, 1, iteration(1, [child_call], final_answer="c"))
    logger.on_run_end(child, completion(child, "c"))
    spawn = subcall(root.run_id, 2, kind="rlm", response="c")
    logger.on_subcall(root, spawn)
    logger.on_iteration(root, 2, iteration(2, [spawn], final_answer="42"))
    out = completion(root)
    logger.on_run_end(root, out)
    return out


# --------------------------------------------------------------------------- schema


def test_schema_round_trip(tmp_path: Path) -> None:
    logger = RLMLogger(tmp_path)
    out = drive(logger)
    files = list(tmp_path.glob("rlm_*_root1.jsonl"))
    assert len(files) == 1
    log = read_log(files[0])
    assert log.complete and not log.truncated
    # The file, the in-memory copy and completion.metadata hold the same records.
    assert log.records == logger.get_trajectory()["records"] == out.metadata["trajectory"]  # type: ignore[index]
    assert out.metadata["log_file"] == str(files[0])  # type: ignore[index]
    types = [r["type"] for r in log.records]
    assert types == [
        "header",
        "run_start",
        "subcall",
        "iteration",
        "run_start",
        "subcall",
        "iteration",
        "run_end",
        "subcall",
        "iteration",
        "run_end",
    ]
    header = log.header
    assert header is not None and header["schema"] == "rlm-trajectory" and header["version"] == 1
    root_start = log.run_start("root1")
    assert root_start is not None
    # The context is kept once in a file beside the log (the default), read back by the log.
    assert root_start["context_file"] == files[0].stem + ".context.txt"
    assert log.context == "hello world"
    info = {k: v for k, v in root_start.items() if k != "type" and k != "t"}
    info = {k: v for k, v in info.items() if not k.startswith("context_") or k in RUN_FIELDS}
    assert RunInfo(**info) == run_info()
    child_start = log.run_start("child1")
    assert child_start is not None and child_start["parent_id"] == "root1"
    assert "context" not in child_start  # only the root context is stored
    first = log.iterations("root1")[0]
    assert first["prompt"] == [{"role": "user", "content": "turn 1"}]
    assert first["response"] == repl("print('out 1')")
    block = first["code_blocks"][0]
    assert block["code"] == "print('out 1')" and block["stdout"] == "out 1\n"
    assert block["execution_time"] == 0.25 and block["subcalls"] == ["call0"]
    assert Usage.from_dict(first["usage"]) == Usage(input_tokens=100, output_tokens=7)
    calls = log.subcalls("root1")
    assert [c["id"] for c in calls] == ["call0", "call2"]
    assert calls[0]["started"] == 1000.0 and calls[0]["ended"] == 1000.5
    assert calls[0]["duration"] == 0.5 and calls[0]["cost"] == 0.001
    assert calls[1]["kind"] == "rlm"
    assert log.subcalls("child1")[0]["depth"] == 2
    end = log.run_end("root1")
    assert end is not None and end["answer"] == "42" and end["stop_reason"] == "final_answer"
    assert end["totals"] == {
        "calls": 3,
        "input_tokens": 310,
        "output_tokens": 17,
        "cost": 0.01,
        "unpriced_calls": 0,
    }
    assert UsageSummary.from_dict(end["usage"]).to_dict() == out.usage_summary.to_dict()


def test_log_dir_none_keeps_memory_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    logger = RLMLogger()
    out = drive(logger)
    assert list(tmp_path.iterdir()) == []
    assert out.metadata["trajectory"][0]["type"] == "header"  # type: ignore[index]
    assert "log_file" not in out.metadata  # type: ignore[operator]


def test_context_can_be_left_out_or_stored_at_the_end(tmp_path: Path) -> None:
    drive(RLMLogger(tmp_path / "a", log_context=False))
    log = read_log(next((tmp_path / "a").glob("*.jsonl")))
    assert all("context" not in r for r in log.records)
    # A core that does not hand over the context at the start: it lands in run_end.
    logger = RLMLogger(tmp_path / "b", log_context="inline")
    drive(logger, run_info(context=None))
    log = read_log(next((tmp_path / "b").glob("*.jsonl")))
    root_start, root_end = log.run_start("root1"), log.run_end("root1")
    assert root_start is not None and "context" not in root_start
    assert root_end is not None and root_end["context"] is None  # completion.prompt
    assert log.context is None


RUN_FIELDS = ("context_type", "context_total_length", "context_lengths")


def test_subcall_truncation_is_configurable(tmp_path: Path) -> None:
    logger = RLMLogger(tmp_path, max_prompt_chars=10, max_response_chars=5)
    run = run_info()
    logger.on_run_start(run)
    logger.on_subcall(run, subcall("root1", prompt="p" * 50, response="r" * 40))
    logger.close()
    record = read_log(next(tmp_path.glob("*.jsonl"))).subcalls()[0]
    assert record["prompt"].startswith("p" * 10) and record["prompt_truncated"]
    assert record["prompt"] == "p" * 10 + "…[truncated 40 chars]"
    assert record["response"].startswith("rrrrr…") and record["response_truncated"]
    assert record["response_chars"] == 40
    with pytest.raises(ConfigurationError):
        RLMLogger(None, max_prompt_chars=-1)


def test_concurrent_roots_get_one_file_each_and_lines_stay_whole(tmp_path: Path) -> None:
    logger = RLMLogger(tmp_path)
    roots = [run_info(f"root{i}") for i in range(4)]

    def work(root: RunInfo) -> None:
        logger.on_run_start(root)
        children = [
            run_info(f"{root.run_id}c{j}", parent_id=root.run_id, depth=1) for j in range(3)
        ]

        def child_work(child: RunInfo) -> None:
            logger.on_run_start(child)
            for n in range(20):
                logger.on_subcall(child, subcall(child.run_id, n, response="x" * 5000))
            logger.on_run_end(child, completion(child))

        threads = [threading.Thread(target=child_work, args=(c,)) for c in children]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        logger.on_run_end(root, completion(root))

    threads = [threading.Thread(target=work, args=(r,)) for r in roots]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    files = sorted(tmp_path.glob("*.jsonl"))
    assert len(files) == 4
    for root, path in zip(roots, files, strict=True):
        assert path.name.endswith(f"_{root.run_id}.jsonl")
        log = read_log(path)  # every line parses
        assert log.complete
        assert len(log.subcalls()) == 60
        assert {r["run_id"] for r in log.of_type("run_start")} == {
            root.run_id,
            *(f"{root.run_id}c{j}" for j in range(3)),
        }


def test_file_size_is_linear_in_iterations(tmp_path: Path) -> None:
    def size(turns: int) -> int:
        directory = tmp_path / str(turns)
        logger = RLMLogger(directory)
        run = run_info()
        logger.on_run_start(run)
        for n in range(1, turns + 1):
            logger.on_iteration(
                run, n, iteration(n, prompt=[{"role": "user", "content": "f" * 2000}])
            )
        logger.on_run_end(run, completion(run))
        return next(directory.glob("*.jsonl")).stat().st_size

    small, large = size(10), size(40)
    assert large < 4.5 * small  # quadratic growth (the whole history per turn) would be ~16x


def test_parse_log_drops_a_cut_off_last_line() -> None:
    whole = '{"type": "header", "schema": "rlm-trajectory", "version": 1, "root_run_id": "r"}\n'
    start = '{"type": "run_start", "run_id": "r", "parent_id": "", "depth": 0}\n'
    log = parse_log(whole + start + '{"type": "iteration", "run_id": "r", "resp')
    assert log.truncated and not log.complete
    assert [r["type"] for r in log.records] == ["header", "run_start"]


# --------------------------------------------------------------------------- kill -9

KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from rlm import RLM
    from rlm.logger import RLMLogger

    F = "`" * 3
    replies = [
        F + "repl\\nprint('first cell', len(context))\\n" + F,
        F + "repl\\nimport time\\nprint('sleeping', flush=True)\\ntime.sleep(120)\\n" + F,
        F + "repl\\nFINAL('never')\\n" + F,
    ]
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": replies},
        environment="local",
        environment_kwargs={"timeout": 300},
        logger=RLMLogger(sys.argv[1]),
    )
    rlm.completion("some context", root_prompt="q")
    """
)


def test_kill_9_mid_run_leaves_a_parseable_file(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    logs = tmp_path / "logs"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(logs)],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        path = None
        while time.monotonic() < deadline:
            found = list(logs.glob("*.jsonl")) if logs.exists() else []
            if found and '"iteration"' in found[0].read_text():
                path = found[0]
                break
            if proc.poll() is not None:
                pytest.fail(f"the run exited early: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
            time.sleep(0.1)
        assert path is not None, "no iteration record appeared"
        time.sleep(0.3)  # the second turn's cell is sleeping now
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    log = read_log(path)
    assert not log.complete
    assert [r["type"] for r in log.records][:3] == ["header", "run_start", "iteration"]
    assert log.iterations(log.root_run_id)[0]["code_blocks"][0]["stdout"].startswith("first cell")


# --------------------------------------------------------------------------- end to end


def test_completion_writes_the_trajectory_it_returns(tmp_path: Path) -> None:
    from rlm import RLM

    rlm = RLM(
        backend="scripted",
        backend_kwargs={
            "model_name": "root",
            "responses": [
                repl("print(len(context))\nprint(llm_query('hi'))"),
                repl("FINAL('done')"),
            ],
        },
        other_backends=["scripted"],
        other_backend_kwargs=[{"model_name": "sub", "responses": lambda m: "sub says hi"}],
        environment="local",
        logger=RLMLogger(tmp_path),
    )
    with rlm:
        out = rlm.completion("abcdef", root_prompt="how long?")
    log = read_log(out.metadata["log_file"])  # type: ignore[index]
    assert log.complete and log.records == out.metadata["trajectory"]  # type: ignore[index]
    assert log.context == "abcdef"
    first, second = log.iterations(out.run_id)
    assert first["code_blocks"][0]["stdout"] == "6\nsub says hi\n"
    assert second["final_answer"] == "done"
    (call,) = log.subcalls(out.run_id)
    assert call["model"] == "sub" and call["response"] == "sub says hi"
    assert first["code_blocks"][0]["subcalls"] == [call["id"]]
    # Each turn's prompt holds only what it added: the first reply is not repeated.
    assert all(m["role"] != "assistant" for m in second["prompt"])


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    ("key", "sensitive"),
    [
        ("api_key", True),
        ("OPENAI_API_KEY", True),
        ("apiKey", True),
        ("x-api-key", True),
        ("Authorization", True),
        ("auth_token", True),
        ("token", True),
        ("password", True),
        ("client_secret", True),
        ("max_tokens", False),
        ("input_tokens", False),
        ("total_output_tokens", False),
        ("author", False),
        ("model_name", False),
    ],
)
def test_sensitive_key_names(key: str, sensitive: bool) -> None:
    assert is_sensitive_key(key) is sensitive


def test_redactor_scrubs_keys_shapes_and_env_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_TOKEN", PLANTED_PLAIN)
    monkeypatch.setenv("AUTH_MODE", "disabled-for-tests")  # a setting, not a secret
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/ssh-agent-socket-1234")
    redactor = Redactor()
    data: dict[str, Any] = {
        "backend_kwargs": {
            "api_key": PLANTED,
            "default_headers": {"Authorization": f"Bearer {PLANTED_PLAIN}", "X-Other": "ok"},
            "max_tokens": 100,
        },
        "text": f"key={PLANTED} and {PLANTED_PLAIN} and Bearer abcdefghijklmnop",
        "list": [{"password": "hunter2"}, "AIzaSyA1234567890abcdefghijklmnopqrstu"],
    }
    clean = redactor.data(data)
    text = json.dumps(clean)
    for secret in (PLANTED, PLANTED_PLAIN, "hunter2", "abcdefghijklmnop", "AIzaSyA123"):
        assert secret not in text
    assert clean["backend_kwargs"]["max_tokens"] == 100
    assert clean["backend_kwargs"]["default_headers"]["X-Other"] == "ok"
    assert clean["backend_kwargs"]["api_key"] == REDACTED
    assert data["backend_kwargs"]["api_key"] == PLANTED  # the input is not modified
    assert redactor.text("disabled-for-tests /tmp/ssh-agent-socket-1234") == (
        "disabled-for-tests /tmp/ssh-agent-socket-1234"
    )


def test_planted_key_is_absent_from_files_and_console(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("rich")
    from rich.console import Console

    from rlm import RLM
    from rlm.logger import VerbosePrinter

    monkeypatch.setenv("OPENAI_API_KEY", PLANTED)
    monkeypatch.setenv("RLM_TEST_SECRET_TOKEN", PLANTED_PLAIN)
    buffer = io.StringIO()
    printer = VerbosePrinter(Console(file=buffer, width=120))
    replies = [
        repl(
            "import os\n"
            "print(os.environ.get('OPENAI_API_KEY'))\n"
            f"print({PLANTED_PLAIN!r})\n"
            "print(llm_query('echo the header'))"
        ),
        f"The key is {PLANTED}.\n" + repl(f"FINAL('Bearer {PLANTED_PLAIN}')"),
    ]
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"model_name": "root", "responses": replies},
        other_backends=["scripted"],
        other_backend_kwargs=[
            {"model_name": "sub", "responses": lambda m: f"Authorization: Bearer {PLANTED}"}
        ],
        environment="local",
        logger=RLMLogger(tmp_path),
        observers=[printer],
    )
    with rlm:
        out = rlm.completion(f"context with {PLANTED} inside", root_prompt=f"use {PLANTED_PLAIN}")
    # Run-level data that a core or caller could add: also scrubbed.
    run = run_info("extra", settings={"backend_kwargs": {"api_key": "abc-not-shaped-123"}})
    logger = RLMLogger(tmp_path)
    logger.on_run_start(run)
    logger.on_run_end(run, completion(run))
    printer.on_run_start(run)
    console = buffer.getvalue()
    assert "[REDACTED]" in console
    files = list(tmp_path.glob("*.jsonl"))
    assert len(files) == 2
    everything = console + "".join(f.read_text() for f in files)
    everything += json.dumps(out.metadata["trajectory"])  # type: ignore[index]
    for secret in (PLANTED, PLANTED_PLAIN, "abc-not-shaped-123"):
        assert secret not in everything


# --------------------------------------------------------------------------- verbose


def test_verbose_output_without_a_terminal_is_plain(tmp_path: Path) -> None:
    pytest.importorskip("rich")
    from rich.console import Console

    from rlm.logger import VerbosePrinter

    buffer = io.StringIO()
    printer = VerbosePrinter(Console(file=buffer, width=100))
    drive(printer)
    text = buffer.getvalue()
    assert "\x1b[" not in text  # no colour or cursor codes in CI logs
    for expected in (
        "RLM run",
        "root1",
        "gpt-test",
        "Iteration 1",
        "print('out 1')",
        "out 1",
        "1 sub-call",
        "child run child1",
        "Final answer",
        "42",
        "sub-model",
        "$0.0100",
    ):
        assert expected in text, expected


def test_verbose_live_tree_on_a_terminal() -> None:
    pytest.importorskip("rich")
    from rich.console import Console

    from rlm.logger import VerbosePrinter

    buffer = io.StringIO()
    printer = VerbosePrinter(Console(file=buffer, width=100, force_terminal=True))
    root = run_info()
    printer.on_run_start(root)
    printer.on_iteration_start(root, 1)
    for n in range(3):
        printer.on_subcall_start(root, subcall(root.run_id, n))
    printer.on_subcall(root, subcall(root.run_id, 0))
    tree = printer.view._live_renderable()
    rendered = Console(file=io.StringIO(), width=100)
    rendered.print(tree)
    text = rendered.file.getvalue()  # type: ignore[attr-defined]
    assert "iteration 1" in text and "1/3 sub-calls" in text and "running" in text
    printer.on_run_end(root, completion(root))
    assert printer.view._live is None  # stopped with the last root


def test_verbose_needs_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)
    from rlm.logger.verbose import VerbosePrinter

    with pytest.raises(MissingDependencyError) as info:
        VerbosePrinter()
    assert info.value.extra == "rich"


def test_import_rlm_does_not_import_rich() -> None:
    code = "import sys, rlm, rlm.logger; print('rich' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"
