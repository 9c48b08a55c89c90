"""ProcessREPL specifics: scrubbed environment, privileges, rlimits, process-group kills, and
the worker's channel protocol (token, forged frames, forked children)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_kinds import DAEMON, require_confinement

from rlm.environments.process import ProcessREPL
from rlm.errors import ConfigurationError, SandboxError
from rlm.runtime.bundle import WORKER_MODULE, build_bundle_dir, bundle_files, bundle_zip
from rlm.runtime.channel import ChannelDecoder, MessageAssembler, message_frames

pytestmark = pytest.mark.timeout(120)


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


@pytest.fixture
def env() -> Iterator[ProcessREPL]:
    environment = ProcessREPL(timeout=20)
    yield environment
    environment.cleanup()


def run(environment: ProcessREPL, code: str) -> str:
    result = environment.execute(code)
    assert result.error is None, result.stderr
    return result.stdout


def test_environment_is_scrubbed_and_the_token_is_not_in_argv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-canary-1234")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "canary-5678")
    with ProcessREPL(timeout=20) as environment:
        out = run(
            environment,
            "import os, json\n"
            "env = dict(os.environ)\n"
            "raw = open('/proc/self/environ', 'rb').read().decode()\n"
            "cmd = open('/proc/self/cmdline', 'rb').read().decode()\n"
            "print(json.dumps([sorted(env), raw, cmd, os.getcwd(), os.environ['HOME']]))",
        )
        names, raw, cmdline, cwd, home = json.loads(out)
        token = environment.channel_token
    assert "canary" not in raw and "OPENAI_API_KEY" not in names
    assert set(names) <= {
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "LC_ALL",
        "PYTHONPATH",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        "PYTHONIOENCODING",
        "PYTHONSAFEPATH",
    }
    assert token not in cmdline and WORKER_MODULE in cmdline
    assert cwd == home and not Path(cwd).exists()  # the session dir is gone after cleanup


@pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop applies to a root host")
def test_a_root_host_runs_the_worker_as_nobody_with_binding_rlimits(env: ProcessREPL) -> None:
    info = env.worker_info
    assert info["uid"] not in (None, 0)
    limits = info["limits"]
    assert limits["memory_bytes"] == 2**30 and limits["core"] == 0
    assert limits["max_open_files"] == 256 and limits["cpu_seconds"] == 3600
    assert isinstance(limits["max_processes"], int)
    out = run(
        env,
        "import resource\n"
        "print([resource.getrlimit(r)[0] for r in (resource.RLIMIT_AS, resource.RLIMIT_CORE,"
        " resource.RLIMIT_NOFILE)])",
    )
    assert out == f"{[2**30, 0, 256]}\n"
    # The worker cannot touch the host's staging dir, nor another user's files.
    assert env._staging is not None
    stage = env._staging.path
    result = env.execute(f"open({str(stage)!r} + '/x', 'w')")
    assert result.error is not None and result.error.startswith("PermissionError")


def test_user_none_keeps_the_host_user_and_bad_options_fail_early() -> None:
    with ProcessREPL(user=None, timeout=20) as environment:
        assert environment.worker_info["uid"] == os.getuid()
    with pytest.raises(ConfigurationError, match="persistent"):
        ProcessREPL(persistent=True)
    with pytest.raises(ConfigurationError, match="memory_mb"):
        ProcessREPL(memory_mb=-1)
    with pytest.raises(ConfigurationError, match="timeout"):
        ProcessREPL(timeout=0)


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid` (the worker and what its cells started)."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            members.append(int(name))
    return members


def others_in_group(environment: ProcessREPL) -> list[int]:
    assert environment.pgid is not None
    return [pid for pid in group_members(environment.pgid) if pid != environment.pgid]


def wait_for(predicate: Callable[[], Any], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_swallowed_timeout_gets_the_whole_process_group_killed() -> None:
    environment = ProcessREPL(timeout=1, kill_grace=1)
    code = (
        "import subprocess\n"
        "sw_child = subprocess.Popen(['sleep', '300'])\n"
        "while True:\n"
        "    try:\n"
        "        while True:\n"
        "            pass\n"
        "    except BaseException:\n"
        "        pass"
    )
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(environment.execute, code)
            assert wait_for(lambda: others_in_group(environment)), "the cell started nothing"
            with pytest.raises(SandboxError, match="did not stop within its timeout"):
                running.result(timeout=30)  # a hang guard: the cell itself never ends
        assert wait_for(lambda: not group_members(environment.pgid or 0))
        with pytest.raises(SandboxError, match="did not stop"):
            environment.execute("1")
    finally:
        environment.cleanup()


def test_processes_a_cell_leaves_running_are_killed_when_it_ends(env: ProcessREPL) -> None:
    result = env.execute(
        "import subprocess\n"
        "lo_done = subprocess.Popen(['true'])\n"
        "lo_done.wait()\n"
        "lo_left = subprocess.Popen(['sleep', '300'])\n"
        "lo_shell = subprocess.Popen('sleep 300 & sleep 300 & wait', shell=True)"
    )
    assert result.error is None, result.stderr
    assert "process(es) the cell left running were killed]" in result.stderr
    assert others_in_group(env) == []
    # Their exit status is still there for the code to collect.
    assert run(env, "lo_done.returncode, lo_left.wait(), lo_shell.wait()") == "(0, -9, -9)\n"
    # A cell that starts nothing says nothing.
    assert env.execute("lo_x = 1").stderr == ""


def stat_field(pid: int, index: int) -> int:
    """A numeric field of /proc/<pid>/stat after the name (1: ppid, 3: session); -1 if gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[index])
    except (OSError, IndexError, ValueError):
        return -1


def test_a_daemon_that_left_the_group_is_killed_when_the_cell_ends(env: ProcessREPL) -> None:
    result = env.execute(DAEMON + "import os\nprint(os.getsid(dm_pid) != os.getsid(0))")
    assert result.error is None, result.stderr
    daemon, left = result.stdout.split()
    assert left == "True"  # it really is in a session (and group) of its own
    assert wait_for(lambda: not alive(int(daemon)))
    assert "process(es) the cell left running were killed]" in result.stderr
    # Adopted by the worker and killed, it is collected too: no zombie holds its process slot.
    assert not Path(f"/proc/{daemon}").exists()


def test_a_daemon_is_killed_with_a_worker_the_host_has_to_kill() -> None:
    environment = ProcessREPL(timeout=1, kill_grace=1)
    code = (
        DAEMON
        + "while True:\n    try:\n        while True:\n            pass\n"
        + "    except BaseException:\n        pass"
    )
    daemons: list[int] = []

    def daemon_started() -> bool:
        worker = environment.pgid or 0
        daemons[:] = [
            int(name)
            for name in os.listdir("/proc")
            if name.isdigit()
            and int(name) != worker
            and alive(int(name))
            and stat_field(int(name), 1) == worker
            and stat_field(int(name), 3) not in (worker, -1)
        ]
        return bool(daemons)

    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(environment.execute, code)
            assert wait_for(daemon_started), "the cell started no daemon"
            with pytest.raises(SandboxError, match="did not stop within its timeout"):
                running.result(timeout=30)
        assert wait_for(lambda: not any(alive(pid) for pid in daemons))
    finally:
        environment.cleanup()


def test_a_daemon_dies_with_a_worker_that_kills_itself() -> None:
    """Once a known gap: the daemon went to init. The sandbox's cgroup is killed as a whole
    when the host sees its worker die."""
    require_confinement()
    marker = f"time.sleep({300 + os.getpid() % 1000 / 1000:.3f})"  # finds this test's daemon
    code = DAEMON.replace("time.sleep(300)", marker) + (
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"
    )

    def daemons() -> list[int]:
        found = []
        for name in os.listdir("/proc"):
            try:
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            except OSError:
                continue
            if name.isdigit() and marker.encode() in cmdline and alive(int(name)):
                found.append(int(name))
        return found

    environment = ProcessREPL(timeout=20)
    try:
        with pytest.raises(SandboxError):
            environment.execute(code)
        assert wait_for(lambda: not daemons(), seconds=3)
    finally:
        environment.cleanup()
        for pid in daemons():
            os.kill(pid, 9)


def test_processes_started_between_cells_are_killed_at_cleanup() -> None:
    environment = ProcessREPL(timeout=20)
    try:
        run(
            environment,
            "import subprocess, threading, time\n"
            "def bg_spawn():\n"
            "    time.sleep(0.3)\n"
            "    subprocess.Popen(['sleep', '300'])\n"
            "threading.Thread(target=bg_spawn, daemon=True).start()",
        )
        assert wait_for(lambda: others_in_group(environment)), "the thread started nothing"
        (child,) = others_in_group(environment)
        worker = environment.pgid or 0
        environment.cleanup()
        environment.cleanup()
        assert wait_for(lambda: not alive(child) and not alive(worker))
        with pytest.raises(SandboxError, match="cleaned up"):
            environment.execute("1")
    finally:
        environment.cleanup()


def test_a_fork_bomb_ends_with_a_timeout_error_and_leaves_no_process() -> None:
    """The lost one-shot alarm: a fork loop that catches OSError ran until the host's kill."""
    environment = ProcessREPL(timeout=2, kill_grace=30, max_processes=8)
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    try:
        started = time.monotonic()
        result = environment.execute(bomb)
        assert result.error == "TimeoutError: cell exceeded 2s", result.stderr[-2000:]
        assert time.monotonic() - started < 2 + 10  # not the host's kill at 2 + 30 s
        assert others_in_group(environment) == []
        assert run(environment, "print('after the bomb')") == "after the bomb\n"
    finally:
        environment.cleanup()


def test_a_forked_child_that_finishes_the_cell_never_replies(env: ProcessREPL) -> None:
    result = env.execute(
        "import os\nfk_pid = os.fork()\nprint('child' if fk_pid == 0 else 'parent')"
    )
    assert result.stdout == "parent\n" and result.error is None
    assert run(env, "os.waitpid(fk_pid, 0)[0] == fk_pid").strip() == "True"
    assert run(env, "'one reply per cell'") == "'one reply per cell'\n"
    # A child's helpers fail fast: it has no channel to the host.
    code = (
        "fk_pid = os.fork()\n"
        "if fk_pid == 0:\n"
        "    os.write(1, llm_query('x').encode())\n"
        "    os._exit(0)\n"
        "_ = os.waitpid(fk_pid, 0)\n"
    )
    assert run(env, code).startswith("Error: ProtocolError: a forked child process has no channel")


def test_large_contexts_are_staged_once_and_removed(env: ProcessREPL) -> None:
    assert env._staging is not None
    stage = env._staging.path
    value = "é" * (2**20)  # over the inline limit once encoded
    env.load_context(value)
    assert list(stage.iterdir()) == []  # the host removed the file after the load
    assert run(env, "len(context), context[:2]") == "(1048576, 'éé')\n"


# --------------------------------------------------------------------- the worker itself


def start_worker(tmp_path: Path, token: str) -> subprocess.Popen[bytes]:
    bundle = build_bundle_dir(tmp_path / "bundle")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(bundle), "RLM_CHANNEL_TOKEN": token}
    return subprocess.Popen(
        [sys.executable, "-m", WORKER_MODULE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )


def read_replies(data: bytes) -> list[dict[str, object]]:
    assembler = MessageAssembler()
    messages = []
    for item in ChannelDecoder().feed(data):
        message = assembler.feed(item)
        if message is not None:
            messages.append(message)
    return messages


def test_worker_refuses_a_hello_with_the_wrong_token(tmp_path: Path) -> None:
    proc = start_worker(tmp_path, "right-token")
    hello = {"type": "hello", "version": 1, "token": "wrong", "seq": 1, "config": {}}
    out, _ = proc.communicate(b"".join(message_frames(hello)), timeout=30)
    assert proc.returncode == 2
    (reply,) = read_replies(out)
    assert reply["type"] == "fatal" and "token" in json.dumps(reply)


def test_worker_serves_a_session_and_exits_on_shutdown(tmp_path: Path) -> None:
    proc = start_worker(tmp_path, "tok")
    script = [
        {"type": "hello", "version": 1, "token": "tok", "seq": 1, "config": {"depth": 2}},
        {"type": "load", "seq": 2, "kind": "context", "index": 0, "value": {"k": [1]}},
        {"type": "exec", "seq": 3, "code": "print(context['k'])\nFINAL_VAR({'x': 1})"},
        {"type": "shutdown"},
    ]
    data = b"".join(b"".join(message_frames(m)) for m in script)
    out, _ = proc.communicate(data, timeout=30)
    assert proc.returncode == 0
    replies = read_replies(out)
    ready, loaded, progress, result = replies
    assert progress == {"type": "progress", "seq": 3}  # a final value may be large
    assert ready["type"] == "ready" and ready["seq"] == 1
    assert loaded == {"type": "loaded", "seq": 2}
    assert result["seq"] == 3 and result["stdout"] == "[1]\n"
    assert result["final"] is True and result["final_value"] == {"x": 1}


def test_bundle_shapes_hold_the_same_runtime(tmp_path: Path) -> None:
    files = bundle_files()
    assert files["rlm/__init__.py"] == b""
    assert {"rlm/errors.py", "rlm/runtime/worker.py", "rlm/runtime/repl.py"} <= set(files)
    archive = tmp_path / "rlm.zip"
    archive.write_bytes(bundle_zip())
    probe = "import rlm.runtime.worker as w, rlm; print(w.CHANNEL_VERSION, rlm.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(archive)},
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert out.startswith("1 ") and str(archive) in out


def test_a_host_killed_without_cleanup_leaves_no_worker_behind(tmp_path: Path) -> None:
    script = tmp_path / "host.py"
    script.write_text(
        "import os, signal\n"
        "from rlm.environments.process import ProcessREPL\n"
        "env = ProcessREPL(timeout=20)\n"
        'out = env.execute(\'import subprocess\\nprint(subprocess.Popen(["sleep", "300"]).pid)\')\n'
        "print(env.pgid, out.stdout.strip(), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    worker, child = (int(x) for x in done.stdout.split())
    deadline = time.monotonic() + 15
    while (alive(worker) or alive(child)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(worker) and not alive(child)


def worker_children(pid: int) -> list[int]:
    found: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            found += [int(p) for p in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            continue
    return found


SWALLOWING_CELL = (
    "import subprocess, time\n"
    "subprocess.Popen(['sleep', '300'])\n"
    "while True:\n"
    "    try:\n"
    "        time.sleep(60)\n"
    "    except BaseException:\n"
    "        pass"
)


def test_a_worker_whose_host_goes_away_mid_cell_stops_at_once(tmp_path: Path) -> None:
    """The channel closes without a shutdown (the host died): nobody will read the reply, so
    the worker kills its process group instead of waiting for a cell that may never end."""
    proc = start_worker(tmp_path, "tok")
    assert proc.stdin is not None
    script: list[dict[str, Any]] = [
        {"type": "hello", "version": 1, "token": "tok", "seq": 1, "config": {}},
        {"type": "exec", "seq": 2, "code": SWALLOWING_CELL, "timeout": 60},
    ]
    try:
        proc.stdin.write(b"".join(b"".join(message_frames(m)) for m in script))
        proc.stdin.flush()
        assert wait_for(lambda: worker_children(proc.pid)), "the cell never started"
        (child,) = worker_children(proc.pid)
        proc.stdin.close()
        proc.wait(timeout=30)  # not the cell's 60 s timeout, nor never
        assert wait_for(lambda: not alive(child))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_an_orderly_close_still_bounds_a_cell_that_swallows_its_timeout(tmp_path: Path) -> None:
    """After a shutdown the host may close its end early (all requests sent): queued cells
    still run, each within its timeout plus a short grace."""
    proc = start_worker(tmp_path, "tok")
    script: list[dict[str, Any]] = [
        {"type": "hello", "version": 1, "token": "tok", "seq": 1, "config": {}},
        {"type": "exec", "seq": 2, "code": SWALLOWING_CELL, "timeout": 1},
        {"type": "shutdown"},
    ]
    # A hang guard only: the cell swallows every timeout, so without the kill it never ends.
    out, _ = proc.communicate(b"".join(b"".join(message_frames(m)) for m in script), timeout=60)
    assert [m["type"] for m in read_replies(out)] == ["ready"]  # the cell never finished


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="the host does not run in a venv")
def test_python_venv_runs_the_hosts_virtualenv_and_the_default_does_not() -> None:
    """By default the sandbox runs a base interpreter (the standard library only); with
    python="venv" it runs this process's interpreter and imports the venv's packages. A venv
    the sandbox user cannot reach is refused with the reason, not silently replaced."""
    probe = (
        "import importlib.util, sys\n"
        "print(sys.prefix, importlib.util.find_spec('httpx') is not None)\n"
    )
    with ProcessREPL(timeout=30) as default:
        prefix, _ = run(default, probe).split()
    assert prefix != sys.prefix
    try:
        venv = ProcessREPL(python="venv", timeout=30)
    except ConfigurationError as exc:  # e.g. a venv under /root, with a sandbox uid
        assert "cannot run" in str(exc) and "user=None" in str(exc)
        venv = ProcessREPL(python="venv", user=None, timeout=30)
    with venv:
        assert run(venv, probe).split() == [sys.prefix, "True"]


def test_a_machine_without_cgroups_degrades_or_refuses_as_asked(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where the kernel offers no cgroup (simulated: creating one fails as it does without
    cgroup2), confine="auto" starts anyway and says what is missing; "required" refuses."""
    from rlm.environments import confine, process

    def unavailable(*args: Any) -> Any:
        raise confine.ConfinementUnavailable("no cgroup2 hierarchy is mounted")

    monkeypatch.setattr(confine.SandboxCgroup, "create", classmethod(unavailable))
    monkeypatch.setattr(process, "_warned", set())
    with pytest.raises(SandboxError, match="no cgroup for the sandbox: no cgroup2"):
        ProcessREPL(confine="required", timeout=20)
    with caplog.at_level("WARNING"), ProcessREPL(timeout=20) as degraded:
        assert run(degraded, "print(1)") == "1\n"
        assert "unavailable (no cgroup2" in degraded.confinement["cgroup"]
    assert "weaker isolation" in caplog.text
    with ProcessREPL(confine="off", timeout=20) as plain:
        assert plain.confinement["cgroup"] is None
    with pytest.raises(ConfigurationError, match="confine"):
        ProcessREPL(confine="sometimes")
