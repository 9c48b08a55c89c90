"""One behavioural suite for every environment: "local" (the reference), "process", "docker".

Each test runs against a live LMHandler with a fake client. The docker cases need an engine
and the rlm sandbox image (scripts/docker_setup.sh); without them they are skipped, unless
RLM_REQUIRE_DOCKER=1, where a missing engine is a failure. Cells that cannot be run in-process
(os._exit, fork and memory bombs) run for the isolated environments only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_kinds import environment_of, require_kind

from rlm import RLM
from rlm.clients.base import BaseLM
from rlm.core.lm_handler import LMHandler
from rlm.core.types import LMResponse, Message, REPLResult
from rlm.environments import environment_class
from rlm.environments.base import BaseEnv, ToolSpec
from rlm.environments.local import LocalREPL
from rlm.errors import CancellationError, ContextLoadError, ProviderError
from rlm.logger import RLMLogger
from rlm.runtime.jsondata import to_jsonable

pytestmark = pytest.mark.timeout(300)

KINDS = [
    "local",
    "process",
    "ipython",
    "ipython-kernel",
    pytest.param("docker", marks=pytest.mark.docker),
]
ISOLATED = ["process", pytest.param("docker", marks=pytest.mark.docker)]
FENCE = "```"


class EchoLM(BaseLM):
    """Echoes the prompt; prompts containing 'fail' raise a provider error."""

    provider = "fake"

    async def _acomplete(self, messages: list[Message], sampling: dict[str, Any]) -> LMResponse:
        text = str(messages[-1]["content"])
        if "fail" in text:
            raise ProviderError("simulated outage", provider="fake", status_code=500)
        return LMResponse(text=f"echo:{text}", model=self.model_name)


TOOL_CALLS: list[tuple[Any, ...]] = []


def add(a: int, b: int = 0) -> int:
    TOOL_CALLS.append((a, b))
    return a + b


TOOLS = {
    "add": ToolSpec("add", "adds two numbers"),
    "limits": ToolSpec("limits", "a value", callable=False, value={"max": 3}),
}


@pytest.fixture(scope="module")
def handler() -> Iterator[LMHandler]:
    lm_handler = LMHandler(EchoLM("echo", max_retries=0))
    lm_handler.start()
    yield lm_handler
    lm_handler.stop()


def make_env(kind: str, lm_handler: LMHandler, **kwargs: Any) -> BaseEnv:
    session = lm_handler.open_session(depth=0, max_depth=1, tools={"add": add})
    name, extra = environment_of(kind)
    cls = environment_class(name)
    return cls(handler=lm_handler.endpoint(session), tools=TOOLS, **extra, **kwargs)


@pytest.fixture(scope="module", params=KINDS)
def env(request: pytest.FixtureRequest, handler: LMHandler) -> Iterator[BaseEnv]:
    """One environment per kind for the whole module (containers start once)."""
    require_kind(request.param)
    environment = make_env(request.param, handler, timeout=60)
    yield environment
    environment.cleanup()


@pytest.fixture(scope="module", params=ISOLATED)
def isolated(request: pytest.FixtureRequest, handler: LMHandler) -> Iterator[BaseEnv]:
    """A second, separate environment per isolated kind for the destructive cells."""
    require_kind(request.param)
    environment = make_env(request.param, handler, timeout=60)
    yield environment
    environment.cleanup()


@contextlib.contextmanager
def cell_timeout(environment: BaseEnv, seconds: float) -> Iterator[None]:
    """Change the per-cell timeout of a live environment for a few cells."""
    old = environment.timeout
    environment.timeout = seconds
    if isinstance(environment, LocalREPL):
        environment._repl.timeout = seconds  # type: ignore[attr-defined]
    try:
        yield
    finally:
        environment.timeout = old
        if isinstance(environment, LocalREPL):
            environment._repl.timeout = old  # type: ignore[attr-defined]


def in_kernel(environment: BaseEnv) -> bool:
    """An IPython environment whose cells run in an ipykernel subprocess."""
    return getattr(environment, "kernel_mode", None) == "subprocess"


def ok(environment: BaseEnv, code: str) -> REPLResult:
    result = environment.execute(code)
    assert result.error is None, result.stderr
    return result


def repl(code: str) -> str:
    return f"{FENCE}repl\n{code}\n{FENCE}"


# ------------------------------------------------------------------------------ namespace


def test_namespace_persists_functions_see_later_globals_and_errors_keep_assignments(
    env: BaseEnv,
) -> None:
    ok(env, "def ns_f():\n    return ns_g() + ns_later")
    ok(env, "def ns_g():\n    return 1")
    ok(env, "ns_later = 41")
    assert ok(env, "ns_f()").stdout == "42\n"
    failed = env.execute("ns_partial = [1, 2]\nraise ValueError('boom')\nns_never = 1")
    assert failed.error == "ValueError: boom"
    assert "raise ValueError('boom')" in failed.stderr
    assert "ns_partial" in failed.locals and "ns_never" not in failed.locals
    assert ok(env, "ns_partial, 'ns_never' in globals()").stdout == "([1, 2], False)\n"
    ok(env, "del ns_partial")
    assert ok(env, "'ns_partial' in globals()").stdout == "False\n"


PARITY_CELLS = [
    "p_x = 20\np_x + 22",
    "print('out')\nimport sys\nprint('err', file=sys.stderr)",
    "def p_f():\n    return p_later\np_later = 5\np_f()",
    "raise ValueError('boom')",
    "import sys\nsys.exit(3)",
    "x = (1,\n",
    "p_s = {'k': [1, 2.5, None, True], 't': (1, 'x'), 'set': {3}}\nFINAL_VAR('p_s')",
    "FINAL(42)",
    "FINAL_VAR('p_missing')",
    "answer['content'] = 'draft'",
    "answer['ready'] = True",
    "answer = {'content': '', 'ready': False}",
    "llm_query = 'oops'",
    "p_r = llm_query('hello')\np_r",
    "p_b = llm_query_batched(['a', 'please fail'])\np_b[0], p_b[1][:22]",
    "add(2, b=3), limits['max']",
    "llm_query(123)",
    "print('ü\\x00\"', end='')",
]


def _normalised(result: REPLResult) -> dict[str, Any]:
    cells = re.compile(r"<cell \d+>")
    return {
        "stdout": result.stdout,
        "stderr": cells.sub("<cell>", result.stderr),
        "error": None if result.error is None else cells.sub("<cell>", result.error),
        "final_answer": result.final_answer,
        "final_value": to_jsonable(result.final_value),
        "timed_out": result.timed_out,
        "locals": {k: v for k, v in result.locals.items() if k.startswith("p_")},
    }


def test_results_match_the_local_reference_cell_by_cell(env: BaseEnv, handler: LMHandler) -> None:
    reference = make_env("local", handler, timeout=60)
    try:
        for code in PARITY_CELLS:
            expected = _normalised(reference.execute(code))
            got = _normalised(env.execute(code))
            assert got == expected, code
    finally:
        reference.cleanup()


@pytest.mark.parametrize(
    ("code", "value", "text"),
    [
        (
            "FINAL_VAR({'a': [1, 2], 'b': None})",
            {"a": [1, 2], "b": None},
            "{'a': [1, 2], 'b': None}",
        ),
        ("FINAL_VAR([1, 'two', 3.5])", [1, "two", 3.5], "[1, 'two', 3.5]"),
        ("fv = 7\nFINAL_VAR('fv')", 7, "7"),
        ("FINAL_VAR(True)", True, "True"),
        ("FINAL_VAR((1, 2))", [1, 2], "(1, 2)"),
        ("FINAL_VAR(None)", None, "None"),
    ],
)
def test_final_var_of_non_str_values(env: BaseEnv, code: str, value: Any, text: str) -> None:
    result = ok(env, code)
    assert result.final_answer == text
    assert to_jsonable(result.final_value) == value
    if env.isolated:
        assert result.final_value == value  # the JSON copy crossed the boundary


# ------------------------------------------------------------------------- sub-calls, tools


def test_sub_calls_and_custom_tools_go_through_the_handler(env: BaseEnv) -> None:
    TOOL_CALLS.clear()
    code = (
        "sc_one = llm_query('hello')\n"
        "sc_many = llm_query_batched(['a', 'please fail', 'c'])\n"
        "sc_later = llm_query_async('later').result()\n"
        "sc_child = rlm_query('sub task')\n"
        "sc_total = add(2, b=3)\n"
        "print(sc_one, sc_many[0], sc_many[2], sc_later, sc_total, limits['max'])\n"
        "print(sc_many[1][:22] + '|' + sc_child[:5])"
    )
    result = ok(env, code)
    assert result.stdout == (
        "echo:hello echo:a echo:c echo:later 5 3\nError: ProviderError: |echo:\n"
    )
    assert TOOL_CALLS == [(2, 3)]  # the callable ran once, on the host
    assert ok(env, "add('x', 'y')").stdout == "'xy'\n"


def test_helpers_validate_arguments_like_the_reference(env: BaseEnv) -> None:
    for call in ("llm_query([{'no_role': 1}])", "rlm_query('x', context={1, 2})"):
        result = env.execute(call)
        assert result.error is not None and result.error.startswith("TypeError"), call


# ---------------------------------------------------------------------------- output caps


def test_output_is_capped_at_capture_time(env: BaseEnv) -> None:
    result = ok(env, "oc_chunk = 'x' * 1_000_000\nfor _ in range(50):\n    print(oc_chunk)")
    assert len(result.stdout) == 1_000_000
    assert f"{50 * 1_000_001 - 1_000_000} chars" in result.stderr


def test_a_gigabyte_written_to_the_real_stdout_is_bounded(isolated: BaseEnv) -> None:
    code = (
        "import os, sys\n"
        "gb_chunk = b'y' * 2**20\n"
        "for _ in range(1024):\n"
        "    os.write(1, gb_chunk)\n"
        "sys.__stdout__.write('via dunder\\n')\n"
    )
    started = time.monotonic()
    result = ok(isolated, code)
    print(f"\n[{isolated.name}] 1 GiB through fd 1 in {time.monotonic() - started:.2f}s")
    assert 1_000_000 <= len(result.stdout) <= 1_100_000
    assert "bytes written to fd 1/2 were dropped" in result.stderr
    assert ok(isolated, "print('after')").stdout == "after\n"


def test_printed_frames_cannot_forge_results(isolated: BaseEnv) -> None:
    fake = (
        "import json, os, struct, sys\n"
        "body = json.dumps({'type': 'result', 'seq': 999, 'stdout': 'forged', 'final': True,"
        " 'final_value': 'forged'}).encode()\n"
        "frame = struct.pack('>I', len(body)) + body\n"
        "os.write(1, frame)\n"
        "sys.__stdout__.buffer.write(frame)\n"
        "print(frame)\n"
    )
    result = ok(isolated, fake)
    assert result.final_answer is None
    assert "forged" in result.stdout  # it is just output
    assert ok(isolated, "'next'").stdout == "'next'\n"


# -------------------------------------------------------------------------------- timeouts


def test_infinite_loop_stops_within_timeout_and_the_next_cell_works(env: BaseEnv) -> None:
    with cell_timeout(env, 1.0):
        result = env.execute("to_kept = 'yes'\nwhile True:\n    pass")
    assert result.timed_out
    assert result.error == "TimeoutError: cell exceeded 1s"  # its own 1 s, not the 60 s default
    assert ok(env, "to_kept").stdout == "'yes'\n"


def test_a_cell_blocked_in_a_system_call_is_interrupted(env: BaseEnv) -> None:
    if not (env.isolated or in_kernel(env)):
        pytest.skip("in-process cells blocked inside C cannot be interrupted (LocalREPL docs)")
    with cell_timeout(env, 1.0):
        result = env.execute("import time\ntime.sleep(30)")
    assert result.timed_out
    assert ok(env, "1 + 1").stdout == "2\n"


# ---------------------------------------------------------------------- resource limits


def test_memory_bomb_is_a_cell_error(isolated: BaseEnv) -> None:
    result = isolated.execute("mb_big = bytearray(8 * 2**30)")
    assert result.error is not None and result.error.startswith("MemoryError")
    result = isolated.execute("mb_l = []\nwhile True:\n    mb_l.append(bytearray(2 * 10**7))")
    assert result.error is not None and result.error.startswith("MemoryError")
    ok(isolated, "del mb_l")
    assert ok(isolated, "'survived'").stdout == "'survived'\n"


def test_os_exit_ends_the_cell_not_the_sandbox(isolated: BaseEnv) -> None:
    ok(isolated, "ex_before = 1")
    result = isolated.execute("import os\nos._exit(3)")
    assert result.error == "SystemExit: 3"
    assert ok(isolated, "ex_before + 1").stdout == "2\n"


def test_fork_bomb_hits_the_process_limit(isolated: BaseEnv) -> None:
    code = (
        "import os, time\n"
        "fb_pids, fb_error = [], None\n"
        "try:\n"
        "    for _ in range(5000):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        fb_pids.append(pid)\n"
        "except OSError as exc:\n"
        "    fb_error = type(exc).__name__\n"
        "for pid in fb_pids:\n"
        "    os.kill(pid, 9)\n"
        "    os.waitpid(pid, 0)\n"
        "print(len(fb_pids), fb_error)"
    )
    result = ok(isolated, code)
    count, error = result.stdout.split()
    assert error == "BlockingIOError"  # EAGAIN from RLIMIT_NPROC / the pids cgroup
    assert 0 < int(count) < 1000
    assert ok(isolated, "'after the bomb'").stdout == "'after the bomb'\n"


@pytest.mark.parametrize("kind", ISOLATED)
def test_a_fork_bomb_that_catches_oserror_ends_with_a_timeout_error(
    kind: str, handler: LMHandler
) -> None:
    """The timer repeats (and os.fork checks the deadline) until the cell has ended, and the
    bomb's processes are killed: a cell error, not the host's kill of the whole sandbox."""
    require_kind(kind)
    limits: dict[str, Any] = {"max_processes": 8} if kind == "process" else {"pids_limit": 64}
    environment = make_env(kind, handler, timeout=2, kill_grace=30, memory_mb=512, **limits)
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    try:
        started = time.monotonic()
        result = environment.execute(bomb)
        assert result.error == "TimeoutError: cell exceeded 2s", result.stderr[-2000:]
        assert time.monotonic() - started < 2 + 15  # long before the kill at 2 + 30 s
        assert "process(es) the cell left running were killed" in result.stderr
        assert ok(environment, "print('after the bomb')").stdout == "after the bomb\n"
    finally:
        environment.cleanup()


def test_processes_a_cell_leaves_running_are_killed_when_it_ends(isolated: BaseEnv) -> None:
    result = ok(isolated, "import subprocess\nkl_child = subprocess.Popen(['sleep', '300'])")
    assert "[1 process(es) the cell left running were killed]" in result.stderr
    assert ok(isolated, "kl_child.wait()").stdout == "-9\n"


def test_only_the_cells_own_thread_is_captured(env: BaseEnv) -> None:
    """As in the local reference: what other threads print, even threads the cell started
    and joined, is not the cell's output (the isolated environments count it)."""
    code = (
        "import threading\n"
        "th = threading.Thread(target=lambda: print('FROM-THREAD'))\n"
        "th.start()\n"
        "th.join()\n"
        "print('own')"
    )
    result = ok(env, code)
    if in_kernel(env):  # ipykernel sends a thread's output to the cell running at the time
        assert result.stdout == "FROM-THREAD\nown\n"
        return
    assert result.stdout == "own\n"
    if env.isolated:
        assert "[12 characters printed by threads other than the cell's own" in result.stderr


def test_a_cell_that_replaces_sys_stdout_affects_only_itself(env: BaseEnv) -> None:
    ok(env, "import io, sys\nrs_old = sys.stdout\nsys.stdout = io.StringIO()\nprint('hidden')")
    try:
        assert ok(env, "print('shown')").stdout == "shown\n"
    finally:
        ok(env, "sys.stdout = rs_old")


def test_a_very_deep_recursion_is_a_quick_recursion_error(env: BaseEnv) -> None:
    code = (
        "import sys\nrd_old = sys.getrecursionlimit()\nsys.setrecursionlimit(100_100)\n"
        "def rd_deep(n):\n    return rd_deep(n + 1)\n"
        "try:\n    rd_deep(0)\nfinally:\n    sys.setrecursionlimit(rd_old)"
    )
    started = time.monotonic()
    result = env.execute(code)
    assert time.monotonic() - started < 30  # a hang guard: formatting used to take ~15 s
    assert result.error == "RecursionError: maximum recursion depth exceeded", result.stderr
    assert "frames omitted ..." in result.stderr


# ---------------------------------------------------------------------------- contexts


def _big_context() -> str:
    unit = "line \"quoted\" 'single' \\ back\x00nul é ü 中 🙂\n"
    return (unit * (100_000_000 // len(unit.encode()) + 1))[:100_000_000]


def test_100mb_context_round_trip_is_byte_exact(env: BaseEnv) -> None:
    big = _big_context()
    digest = hashlib.sha256(big.encode("utf-8")).hexdigest()
    started = time.monotonic()
    env.load_context(big, 7)
    loaded = time.monotonic() - started
    check = "import hashlib\nhashlib.sha256(context_7.encode('utf-8')).hexdigest(), len(context_7)"
    assert ok(env, check).stdout == f"{(digest, len(big))!r}\n"
    started = time.monotonic()
    result = ok(env, "FINAL_VAR('context_7')")
    back = time.monotonic() - started
    assert result.final_value == big and result.final_answer == big
    print(f"\n[{env.name}] 100 MB context: load {loaded:.2f}s, back as FINAL_VAR {back:.2f}s")
    env.load_context("", 7)  # free the memory


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "quotes \" ' \\ and NUL \x00 and non-ASCII é 中 🙂",
        {"title": "t", "pages": ["p1", "p2"], "n": 3, "f": 0.5},
        [{"role": "user", "content": "hello"}],
        42,
        None,
    ],
)
def test_context_values_arrive_exactly(env: BaseEnv, value: Any) -> None:
    env.load_context(value)
    assert ok(env, "repr(context) == repr(context_0)").stdout == "True\n"
    assert ok(env, "print(repr(context))").stdout == f"{value!r}\n"


@pytest.mark.parametrize(
    "value",
    [{1, 2}, object(), ["ok", {"k": b"bytes"}], {1: "int key"}, float("inf")],
    ids=["set", "object", "nested-bytes", "int-key", "inf"],
)
def test_non_json_context_is_a_context_load_error(env: BaseEnv, value: Any) -> None:
    with pytest.raises(ContextLoadError):
        env.load_context(value)
    assert ok(env, "'usable'").stdout == "'usable'\n"


def test_histories_bind_history_and_history_n(env: BaseEnv) -> None:
    env.add_history([{"role": "user", "content": "q1"}], 0)
    env.add_history([{"role": "user", "content": "q2"}], 1)
    assert ok(env, "history[0]['content'], history_0[0]['content']").stdout == "('q2', 'q1')\n"


# ------------------------------------------------------------------------- through RLM


def _no_leftovers(kind: str, before: set[str]) -> None:
    """Every sandbox started since `before` is gone (poll a little: cleanup may be async)."""
    deadline = time.monotonic() + 20
    while True:
        if kind == "docker":
            from rlm.environments.docker import sandbox_containers

            alive = set(sandbox_containers(host_pid=os.getpid())) - before
        else:
            alive = {p for p in _worker_pids() if p not in before}
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not alive, f"sandboxes left behind: {alive}"


def _worker_pids() -> set[str]:
    """Processes running the sandbox worker that are children of this test process."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid = re.search(r"PPid:\s+(\d+)", status)
        state = re.search(r"State:\s+(\w)", status)
        if (
            (b"rlm.runtime.worker" in cmdline or b"ipykernel_launcher" in cmdline)
            and ppid is not None
            and int(ppid.group(1)) == os.getpid()
            and not (state and state.group(1) == "Z")
        ):
            found.add(entry.name)
    return found


def _snapshot(kind: str) -> set[str]:
    if kind == "docker":
        from rlm.environments.docker import sandbox_containers

        return set(sandbox_containers(host_pid=os.getpid()))
    return _worker_pids()


@pytest.mark.parametrize("kind", KINDS)
def test_rlm_timeout_kwarg_and_rlm_query_from_inside_the_sandbox(kind: str) -> None:
    require_kind(kind)
    before = _snapshot(kind)
    name, extra = environment_of(kind)

    def model(messages: list[Message]) -> str:
        if "ROOT-TASK" in messages[1]["content"]:  # the root
            if len(messages) == 2:
                return repl("kept = 41\nwhile True:\n    pass")
            return repl("r = rlm_query('Return the square of 7')\nFINAL(f'{kept + 1}:{r}')")
        return repl("n = int(context.split()[-1])\nFINAL(n * n)")  # the child

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"model_name": "m", "responses": model},
        environment=name,
        environment_kwargs={"timeout": 2, **extra},
        max_depth=2,
        logger=RLMLogger(),
    )
    with rlm:
        out = rlm.completion("ignored", root_prompt="ROOT-TASK")
    assert out.response == "42:49", out
    first = out.metadata["iterations"][0]["code_blocks"][0]["result"]  # type: ignore[index]
    assert first["timed_out"] is True
    _no_leftovers(kind, before)


@pytest.mark.parametrize("kind", KINDS)
def test_persistent_sessions_keep_the_sandbox_contexts_and_histories(kind: str) -> None:
    require_kind(kind)
    before = _snapshot(kind)
    name, extra = environment_of(kind)
    rlm = RLM(
        backend="scripted",
        backend_kwargs={
            "responses": [
                repl("import os\nkept, pid0 = context, os.getpid()\nFINAL('first')"),
                repl("FINAL(f'{kept}|{context_1}|{len(history_0) > 0}|{os.getpid() == pid0}')"),
            ]
        },
        environment=name,
        environment_kwargs=extra,
        persistent=True,
    )
    with rlm:
        assert rlm.completion("one").response == "first"
        assert rlm.completion("two").response == "one|two|True|True"
    _no_leftovers(kind, before)


@pytest.mark.parametrize("kind", ISOLATED)
def test_keyboard_interrupt_during_completion_leaves_no_sandbox(kind: str) -> None:
    require_kind(kind)
    before = _snapshot(kind)
    started = threading.Event()

    def cell_started() -> bool:  # a custom tool: runs on the host when the cell calls it
        started.set()
        return True

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": [repl("cell_started()\nimport time\ntime.sleep(60)")]},
        environment=kind,
        custom_tools={"cell_started": cell_started},
    )
    main = threading.main_thread().ident
    assert main is not None and threading.current_thread().ident == main

    def interrupt() -> None:
        if started.wait(120):
            signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    try:
        with pytest.raises(CancellationError) as caught:  # Ctrl-C, as the reference raises it
            rlm.completion("ctx")
    finally:
        rlm.close()
    assert caught.value.completion.stop_reason == "cancelled"
    _no_leftovers(kind, before)


@pytest.mark.parametrize("kind", ISOLATED)
def test_a_worker_that_dies_is_a_terminal_sandbox_error(kind: str, handler: LMHandler) -> None:
    require_kind(kind)
    from rlm.errors import SandboxError

    before = _snapshot(kind)
    environment = make_env(kind, handler, timeout=30)
    try:
        ok(environment, "import os, signal")
        with pytest.raises(SandboxError, match=r"exit|killed|SIGKILL|status"):
            environment.execute("os.kill(os.getpid(), signal.SIGKILL)")
        with pytest.raises(SandboxError):
            environment.execute("1")
    finally:
        environment.cleanup()
    _no_leftovers(kind, before)


# Last: it closes the worker's fd 0 and 1 for good.
def test_closing_stdout_does_not_break_the_channel(isolated: BaseEnv) -> None:
    ok(isolated, "import os, sys\nsys.stdout.flush()\nos.close(1)\nos.close(0)")
    assert ok(isolated, "print('still here')\n21 * 2").stdout == "still here\n42\n"
    ok(isolated, "import sys\nsys.__stdout__.close()")
    assert ok(isolated, "'alive'").stdout == "'alive'\n"


def test_output_tail_keeps_the_end_and_whole_characters() -> None:
    from rlm.environments.sandbox_base import OutputTail

    tail = OutputTail(limit=16)
    tail.add("é".encode()[:1])  # a character split across two chunks
    tail.add("é".encode()[1:] + b"!")
    assert tail.text() == "é!"
    for i in range(20):
        tail.add(f"line{i}\n")
    assert tail.text() == "line18\nline19\n"  # the oldest chunks went, the newest stayed
