"""Everyday use (issue #16): pipes, Ctrl-C, answers left intact, a cheap log, rough edges.

The command-line cases run the real `rlm` in a subprocess, as a user's shell would, with the
`scripted` backend or the provider simulator so no key is needed.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm import RLM, aio
from rlm.core.events import Observer, RunInfo
from rlm.core.types import RLMIteration
from rlm.errors import ConfigurationError, RLMError
from rlm.logger.jsonl import RLMLogger
from rlm.logger.replay import read_log
from rlm.testing import FaultPlan, ProviderSimulator

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
FENCE = "```"
WAIT = 60  # seconds a command may take before the test calls it hung


def repl(code: str) -> str:
    return f"{FENCE}repl\n{code}\n{FENCE}"


def scripted(*replies: str) -> list[str]:
    return ["--backend", "scripted", "--backend-arg", "responses=" + json.dumps(list(replies))]


def env(**extra: str) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    values["PYTHONPATH"] = str(ROOT) + os.pathsep + values.get("PYTHONPATH", "")
    values.update(extra)
    return values


def rlm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlm", *args]


@pytest.fixture
def context_file(tmp_path: Path) -> Path:
    path = tmp_path / "context.txt"
    path.write_text("alpha beta gamma\n" * 20)
    return path


@pytest.fixture
def sim_sleepy() -> Iterator[ProviderSimulator]:
    """A root model whose first turn runs a long cell: time to press Ctrl-C."""

    def reply(request: Any) -> str:
        turns = sum(1 for m in request.messages if m["role"] == "assistant")
        if turns == 0:
            return repl("print(llm_query('first'))")
        return repl("import time\ntime.sleep(60)")

    with ProviderSimulator(reply) as sim:
        yield sim


def openai_args(sim: ProviderSimulator) -> list[str]:
    return [
        "--backend",
        "openai",
        "--model",
        "m",
        "--backend-arg",
        f"base_url={sim.openai_base_url}",
    ]


# ----------------------------------------------------------------- 3. closed pipes, the loop


LOUD = repl("for i in range(200): print('line', i)")


def test_verbose_run_into_head_ends_quietly(context_file: Path) -> None:
    """`rlm run -v ... 2>&1 | head -3`: it used to hang forever (Rich's SystemExit killed the
    event loop thread, the main thread waited on its future)."""
    proc = subprocess.Popen(
        rlm_cmd("run", *scripted(LOUD, LOUD, repl("FINAL('done')")), "-c", str(context_file), "-v"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env(COLUMNS="80"),
        cwd=ROOT,
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(3)]
    proc.stdout.close()  # what `head -3` does after its third line
    try:
        code = proc.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("rlm run -v did not end after its reader closed the pipe")
    assert all(lines)
    assert code == 141  # 128 + SIGPIPE, as for `yes | head`


def test_verbose_run_into_head_through_a_shell(context_file: Path) -> None:
    script = (
        f"{sys.executable} -m rlm run {' '.join(map(quote, scripted(LOUD, LOUD)))} "
        f"-c {context_file} -p q -v 2>&1 | head -3; echo status=${{PIPESTATUS[0]}}"
    )
    shell = subprocess.Popen(
        ["bash", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        cwd=ROOT,
        start_new_session=True,  # a hung rlm is killed with the shell's whole group
    )
    try:
        out, err = shell.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        os.killpg(shell.pid, signal.SIGKILL)
        shell.communicate()
        pytest.fail("rlm run -v | head -3 did not end")
    assert out.strip().endswith("status=141"), out + err
    assert "Traceback" not in out + err


def quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def test_closed_stdout_without_verbose_is_quiet(context_file: Path) -> None:
    """`rlm run ... | true` printed a BrokenPipeError traceback."""
    proc = subprocess.Popen(
        rlm_cmd("run", *scripted(repl("FINAL('x' * 100000)")), "-c", str(context_file)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(),
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the answer comes
    code = proc.wait(timeout=WAIT)
    err = proc.stderr.read().decode()
    assert code == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err


class ExitingObserver(Observer):
    """An observer that raises SystemExit from the loop thread (as Rich does on EPIPE)."""

    def on_iteration(self, run: RunInfo, iteration: int, record: RLMIteration) -> None:
        raise SystemExit(1)


def test_a_system_exit_on_the_loop_thread_answers_the_waiter_and_the_loop_lives_on() -> None:
    replies = [repl("print(1)"), repl("FINAL('x')")]
    with RLM(backend="scripted", backend_kwargs={"responses": replies}) as rlm:
        rlm.observers.append(ExitingObserver())
        with pytest.raises(SystemExit):
            rlm.completion("ctx")  # used to wait forever
    with RLM(backend="scripted", backend_kwargs={"responses": [repl("FINAL('ok')")]}) as rlm:
        assert rlm.completion("ctx").response == "ok"


def test_a_dead_loop_fails_every_pending_future_and_a_new_one_starts() -> None:
    loop = aio.get_loop()

    async def forever() -> None:
        await asyncio.sleep(3600)

    loop.call_soon_threadsafe(loop.call_later, 0.2, loop.stop)
    with pytest.raises(RLMError, match="event loop ended"):
        aio.run_sync(forever(), timeout=WAIT)  # used to wait the full timeout (or forever)
    assert aio.run_sync(asyncio.sleep(0, "alive")) == "alive"
    assert aio.get_loop() is not loop


def test_verbose_console_on_a_broken_pipe_goes_quiet_and_the_run_finishes() -> None:
    pytest.importorskip("rich")
    from rich.console import Console

    from rlm.logger.verbose import VerbosePrinter

    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    closed: list[bool] = []
    printer = VerbosePrinter(Console(file=Broken()), on_closed=lambda: closed.append(True))
    replies = [repl("print(1)"), repl("FINAL('done')")]
    with RLM(backend="scripted", backend_kwargs={"responses": replies}, observers=[printer]) as r:
        assert r.completion("ctx").response == "done"
    assert closed and printer.console.quiet


# ----------------------------------------------------------------- 4. Ctrl-C and lost work


def wait_for_line(path: Path, needle: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    pytest.fail(f"{needle!r} never appeared in {path}")


def test_ctrl_c_on_run_ends_the_log_and_prints_its_path(
    tmp_path: Path, context_file: Path, sim_sleepy: ProviderSimulator
) -> None:
    logs = tmp_path / "logs"
    err_path = tmp_path / "err"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            rlm_cmd(
                "run", *openai_args(sim_sleepy), "-c", str(context_file), "--log-dir", str(logs)
            ),
            stdout=subprocess.PIPE,
            stderr=err,
            env=env(OPENAI_API_KEY="sk-test-not-a-real-key-000"),
            cwd=ROOT,
        )
        deadline = time.monotonic() + WAIT
        while len(sim_sleepy.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # the root asked twice and the sub-call ran: the long cell is next
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=WAIT)
    text = err_path.read_text()
    (log_path,) = logs.glob("*.jsonl")
    assert code == 130
    assert f"trajectory written to {log_path}" in text and "Traceback" not in text
    log = read_log(log_path)
    end = log.run_end(log.root_run_id)
    assert log.complete and end is not None
    assert end["stop_reason"] == "cancelled"
    assert end["totals"]["calls"] >= 2  # the turns and the sub-call that did happen


def bench_args(sim: ProviderSimulator, out: Path, n: int) -> list[str]:
    # The key comes from OPENAI_API_KEY: no spelling of the options takes it on the command line.
    kwargs = json.dumps({"base_url": sim.openai_base_url, "max_retries": 0})
    return [
        "bench",
        "sniah",
        "--backend",
        "openai",
        "--model",
        "m",
        "--backend-kwargs",
        kwargs,
        "--n",
        str(n),
        "--lengths",
        "1024",
        "--out",
        str(out),
    ]


def test_ctrl_c_on_bench_keeps_every_finished_task(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    with ProviderSimulator(repl("FINAL('no idea')"), latency=0.3) as sim:
        proc = subprocess.Popen(
            rlm_cmd(*bench_args(sim, out, 50)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env(OPENAI_API_KEY="x"),
            cwd=ROOT,
        )
        wait_for_line(out, '"task_id"')  # a task finished: the file has it already
        while json.loads(out.read_text())["tasks"].__len__() < 2:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=WAIT)
    results = json.loads(out.read_text())
    assert proc.returncode == 130
    assert b"Traceback" not in stderr and b"interrupted after" in stderr
    assert 2 <= len(results["tasks"]) < 50 and results["complete"] is False
    assert results["summary"] and b"sniah" in stdout  # the table of what finished


def test_bench_where_every_task_failed_exits_1(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    faults = FaultPlan(rate=1.0, kinds=("400",))
    with ProviderSimulator("x", faults=faults) as sim:
        done = subprocess.run(
            rlm_cmd(*bench_args(sim, out, 2)),
            capture_output=True,
            text=True,
            timeout=WAIT,
            env=env(OPENAI_API_KEY="x"),
            cwd=ROOT,
        )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "every task failed" in done.stderr
    assert json.loads(out.read_text())["complete"] is True


# ----------------------------------------------------------------- 5. answers left intact


def test_an_address_in_a_git_variable_is_not_redacted_from_the_answer(
    tmp_path: Path, context_file: Path
) -> None:
    address = "Alice.Smith@Corp.com"
    answer = f"write to {address}; header Bearer abcdefghijklmnop"
    code = f"FINAL({answer.replace('Bearer', 'Bear')!r}.replace('Bear', 'Bearer'))"
    logs = tmp_path / "logs"
    done = subprocess.run(
        rlm_cmd(
            "run",
            *scripted(repl(code)),
            "-c",
            str(context_file),
            "--log-dir",
            str(logs),
        ),
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=env(GIT_AUTHOR_EMAIL=address, GIT_COMMITTER_EMAIL=address),
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == answer + "\n"  # the user's answer, unaltered
    (log_path,) = logs.glob("*.jsonl")
    assert address in log_path.read_text()  # an address is not a secret in the log either


def test_a_known_key_is_still_taken_out_of_the_answer(context_file: Path) -> None:
    key = "plainsecretvalue1234567890"  # no recognisable shape: known from its variable's name
    done = subprocess.run(
        rlm_cmd(
            "run",
            *scripted(repl("import os\nFINAL('k=' + os.environ['MY_SERVICE_TOKEN'])")),
            "-c",
            str(context_file),
        ),
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=env(MY_SERVICE_TOKEN=key),
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "k=[REDACTED]\n"


# ----------------------------------------------------------------- 6. a cheap context log


def test_the_context_is_stored_once_beside_the_log_and_reruns(tmp_path: Path) -> None:
    context = "needle 42 " + "hay " * 50_000
    replies = [repl("FINAL(context.split()[1])")]
    logger = RLMLogger(tmp_path)
    with RLM(backend="scripted", backend_kwargs={"responses": replies}, logger=logger) as rlm:
        out = rlm.completion(context)
    assert out.response == "42"
    (log_path,) = tmp_path.glob("*.jsonl")
    (side,) = tmp_path.glob("*.context.txt")
    assert side.read_text() == context and oct(side.stat().st_mode & 0o777) == "0o600"
    assert log_path.stat().st_size < len(context) / 10  # not inline
    assert read_log(log_path).context == context
    done = subprocess.run(
        rlm_cmd("replay", "--rerun", str(log_path)),
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=env(),
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_json_contexts_inline_and_none(tmp_path: Path) -> None:
    data = {"rows": [1, 2, 3]}
    replies = [repl("FINAL(str(sum(context['rows'])))")]
    for mode in ("file", "inline", "none"):
        folder = tmp_path / mode
        logger = RLMLogger(folder, log_context=mode)
        with RLM(backend="scripted", backend_kwargs={"responses": replies}, logger=logger) as r:
            assert r.completion(data).response == "6"
        log = read_log(next(folder.glob("*.jsonl")))
        if mode == "none":
            with pytest.raises(ConfigurationError):
                log.context  # noqa: B018
        else:
            assert log.context == data
    with pytest.raises(ConfigurationError):
        RLMLogger(tmp_path, log_context="sometimes")


# ----------------------------------------------------------------- 7. rough edges


def test_an_unusable_log_dir_is_a_configuration_error(context_file: Path) -> None:
    with pytest.raises(ConfigurationError, match="/proc/nope"):
        RLMLogger(log_dir="/proc/nope")
    done = subprocess.run(
        rlm_cmd(
            "run", *scripted(repl("FINAL(1)")), "-c", str(context_file), "--log-dir", "/proc/nope"
        ),
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=env(),
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "log directory" in done.stderr


def test_an_empty_context_on_stdin_is_refused() -> None:
    with open(os.devnull) as devnull:
        done = subprocess.run(
            rlm_cmd("run", *scripted(repl("FINAL(1)")), "-p", "q"),
            stdin=devnull,
            capture_output=True,
            text=True,
            timeout=WAIT,
            env=env(),
            cwd=ROOT,
        )
    assert done.returncode == 2 and done.stdout == ""
    assert "context from stdin is empty" in done.stderr


def test_python_dash_m_rlm() -> None:
    done = subprocess.run(
        rlm_cmd("--version"), capture_output=True, text=True, timeout=WAIT, env=env(), cwd=ROOT
    )
    assert done.returncode == 0 and done.stdout.startswith("rlm ")


def test_readme_install_line_brings_rich() -> None:
    install = next(
        line for line in (ROOT / "README.md").read_text().splitlines() if "pip install" in line
    )
    assert "rich" in install.split("#")[0]


def test_run_cache_answers_a_repeated_sub_call_from_the_file(
    tmp_path: Path, context_file: Path
) -> None:
    cache = tmp_path / "cache.sqlite3"

    def run(sub_answer: str) -> str:
        done = subprocess.run(
            rlm_cmd(
                "run",
                *scripted(repl("FINAL(llm_query('same question'))")),
                "--sub-backend",
                "scripted",
                "--sub-backend-arg",
                "responses=" + json.dumps([sub_answer]),
                "-c",
                str(context_file),
                "--cache",
                str(cache),
            ),
            capture_output=True,
            text=True,
            timeout=WAIT,
            env=env(),
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert run("first") == "first\n"
    assert cache.exists()
    assert run("second") == "first\n"  # answered from the cache


def test_failed_calls_keep_their_model_in_the_usage_table() -> None:
    pytest.importorskip("rich")
    from rich.console import Console

    from rlm.logger.verbose import VerbosePrinter

    buffer = io.StringIO()
    printer = VerbosePrinter(Console(file=buffer, width=120))
    code = repl("r = llm_query('hi')\nFINAL('done')")
    with (
        ProviderSimulator("x", faults=FaultPlan(rate=1.0, kinds=("400",))) as sim,
        RLM(
            backend="scripted",
            backend_kwargs={"responses": [code]},
            other_backends=["openai"],
            other_backend_kwargs=[
                {"model_name": "failing-sub", "base_url": sim.openai_base_url, "api_key": "x"}
            ],
            observers=[printer],
        ) as rlm,
    ):
        assert rlm.completion("ctx").response == "done"
    table = buffer.getvalue().split("Usage", 1)[1]
    assert "failing-sub" in table and "failed" in table
    row = next(line for line in table.splitlines() if "failing-sub" in line)
    assert re.search(r"\b1\s*│?\s*$", row.strip("│ ")), row  # one failed call


def test_demo_picks_a_free_port_when_the_default_is_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rlm.commands import demo

    with socket.socket() as squatter:  # another program holds the port; it is no model server
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        monkeypatch.setattr(demo, "DEFAULT_MODEL_PORT", taken)
        monkeypatch.delenv("RLM_LOCAL_MODEL_URL", raising=False)
        monkeypatch.delenv("RLM_MODEL_PORT", raising=False)
        url, server_env = demo._server_ports()
    port = int(server_env["RLM_MODEL_PORT"])
    assert port != taken and url == f"http://127.0.0.1:{port}/v1"
    assert server_env["RLM_PROXY_PORT"] != str(taken)


# ----------------------------------------------------------------- 8. the README's API example


def test_readme_api_example_runs_as_documented() -> None:
    text = (ROOT / "README.md").read_text()
    block = text.split("### More of the API", 1)[1].split("```python\n", 1)[1]
    code = block.split("\n```\n", 1)[0]
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=env(),
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    # The callbacks print from the rlm loop's thread while the events print from the main
    # one, so lines of the two may interleave: look for each piece, not for whole lines.
    out = done.stdout
    for kind in ("run_start", "iteration_start", "subcall", "iteration", "run_end", "completion"):
        assert kind in out
    assert "HI FROM THE SUB-MODEL" in out and "turn 1 done" in out
    assert "sub-call to sub" in out  # depth_backends routed the sub-call
