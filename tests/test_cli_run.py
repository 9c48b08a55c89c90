"""`rlm run`: a completion from the command line, its output and its exit codes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlm.cli import main as cli
from rlm.logger.replay import read_log

pytestmark = pytest.mark.timeout(60)

FENCE = "```"
PLANTED = "sk-plantedCLI0123456789abcdefXYZ"


def repl(code: str) -> str:
    return f"{FENCE}repl\n{code}\n{FENCE}"


def replies(*items: str) -> str:
    return "responses=" + json.dumps(list(items))


def scripted(*items: str) -> list[str]:
    return ["--backend", "scripted", "--backend-arg", replies(*items)]


@pytest.fixture
def context_file(tmp_path: Path) -> Path:
    path = tmp_path / "context.txt"
    path.write_text("alpha beta gamma")
    return path


def test_answer_is_printed_and_exit_is_0(
    context_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli(
        [
            "run",
            *scripted(repl("print(len(context.split()))"), repl("FINAL(context.split()[1])")),
            "--context",
            str(context_file),
            "-p",
            "Second word?",
        ]
    )
    out = capsys.readouterr()
    assert code == 0
    assert out.out == "beta\n"
    assert out.err == ""


def test_context_from_stdin_as_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO('["a", "bb", "ccc"]'))
    code = cli(["run", *scripted(repl("FINAL(str(sum(len(x) for x in context)))")), "--json"])
    assert code == 0
    assert capsys.readouterr().out == "6\n"


def test_sub_backend_and_model(context_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli(
        [
            "run",
            *scripted(repl("FINAL(llm_query('hi'))")),
            "--sub-backend",
            "scripted",
            "--sub-model",
            "little",
            "--sub-backend-arg",
            replies("from the sub model"),
            "--context",
            str(context_file),
        ]
    )
    assert code == 0
    assert capsys.readouterr().out == "from the sub model\n"


def test_a_limit_exits_1_with_the_answer_so_far(
    context_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli(
        [
            "run",
            *scripted("Still thinking.", "Best guess: gamma"),
            "--max-iterations",
            "1",
            "--context",
            str(context_file),
        ]
    )
    out = capsys.readouterr()
    assert code == 1
    assert out.out == "Best guess: gamma\n"
    assert "stopped: max_iterations" in out.err


@pytest.mark.parametrize(
    "args",
    [
        ["--backend", "no-such-backend"],
        [*scripted("x"), "--environment", "no-such-env"],
        [*scripted("x"), "--max-depth", "0"],
        [*scripted("x"), "--backend-arg", "nonsense"],
        [*scripted("x"), "--context", "/no/such/file"],
        [*scripted("x"), "--json"],  # the context file is not JSON
    ],
)
def test_bad_usage_exits_2(
    args: list[str], context_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if "--context" not in args:
        args = [*args, "--context", str(context_file)]
    assert cli(["run", *args]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("rlm: error:")


@pytest.mark.parametrize(
    "arg",
    [
        f"api_key={PLANTED}",
        'default_headers={"Authorization": "Bearer abcdefghijkl0123"}',
        f"base_url=https://example.invalid/?key={PLANTED}",
    ],
)
def test_keys_are_refused_on_the_command_line(
    arg: str, context_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli(["run", *scripted("x"), "--backend-arg", arg, "-c", str(context_file)])
    err = capsys.readouterr().err
    assert code == 2
    assert "environment variable" in err
    assert PLANTED not in err and "abcdefghijkl0123" not in err


def test_log_dir_verbose_and_no_key_anywhere(
    tmp_path: Path,
    context_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("rich")
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED)
    logs = tmp_path / "logs"
    code = cli(
        [
            "run",
            *scripted(
                repl("import os\nprint(os.environ['OPENAI_API_KEY'])"),
                repl("import os\nFINAL('key: ' + os.environ['OPENAI_API_KEY'])"),
            ),
            "--context",
            str(context_file),
            "--log-dir",
            str(logs),
            "--verbose",
        ]
    )
    out = capsys.readouterr()
    assert code == 0
    assert out.out == "key: [REDACTED]\n"
    assert "Iteration 1" in out.err and "Final answer" in out.err  # verbose goes to stderr
    assert "\x1b[" not in out.err  # not a terminal: no escape codes
    (path,) = logs.glob("*.jsonl")
    assert f"trajectory written to {path}" in out.err
    log = read_log(path)
    assert log.complete and log.context == "alpha beta gamma"
    assert PLANTED not in out.out + out.err + path.read_text()


def test_no_context_given_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    assert cli(["run", *scripted("x")]) == 2
    assert "no context" in capsys.readouterr().err


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli(["run", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "exit status:" in text and "130" in text and "--api-key" not in text


def test_the_command_runs_as_a_process(context_file: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlm.cli",
            "run",
            *scripted(repl("FINAL(context[:5])")),
            "--context",
            "-",
        ],
        input="hello there",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\n"
